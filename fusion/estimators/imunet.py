"""Registers the 'imunet' estimator (fusion.estimators.neural) when imported: the runtime
imports fusion.estimators.<name> for a name the registry does not know yet."""

from fusion.estimators.neural import factory
from fusion.estimators.registry import names, register

if "imunet" not in names():
    register("imunet", factory("imunet"))
