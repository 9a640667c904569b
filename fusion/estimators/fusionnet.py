"""Registers the 'fusionnet' estimator (fusion.estimators.neural) when imported: the runtime
imports fusion.estimators.<name> for a name the registry does not know yet."""

from fusion.estimators.neural import factory
from fusion.estimators.registry import names, register

if "fusionnet" not in names():
    register("fusionnet", factory("fusionnet"))
