"""Estimators by name: what a config's `estimator:` field picks.

`create(name, cameras=None, **options)` builds one. The classical ones are registered here;
the neural ones register themselves (`register("imunet", factory)`) when their module
`fusion.estimators.<name>` is imported, which `create` does on first use: importing this module
never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from fusion.estimators.base import Estimator

Factory = Callable[..., Estimator]
_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make `create(name, cameras, **options)` call `factory(cameras=cameras, **options)`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"estimator name {name!r}: must be a non-empty string")
    if name in _FACTORIES and not replace:
        raise ValueError(f"estimator {name!r} is already registered")
    _FACTORIES[name] = factory


def names() -> tuple[str, ...]:
    """The registered estimator names."""
    return tuple(sorted(_FACTORIES))


def create(name: str, cameras: Sequence[Any] | None = None, **options: Any) -> Estimator:
    """The estimator `name`, built with `cameras` (calibrated PinholeCameras, for the video
    estimators) and its own options; a clear error for unknown names or missing cameras."""
    if name not in _FACTORIES and isinstance(name, str) and name.isidentifier():
        module = f"fusion.estimators.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # the module exists but a dependency of it is missing: say so
    if name not in _FACTORIES:
        raise ValueError(f"unknown estimator {name!r}; registered: {', '.join(names())}")
    return _FACTORIES[name](cameras=cameras, **options)


def _classical(cameras: Sequence[Any] | None = None, **options: Any) -> Estimator:
    from fusion.estimators.classical import ClassicalImuEstimator

    return ClassicalImuEstimator(**options)  # IMU only: cameras are not used


def _classical_video(cameras: Sequence[Any] | None = None, **options: Any) -> Estimator:
    from fusion.estimators.video_classical import ClassicalVideoEstimator

    if not cameras:
        raise ValueError(
            "estimator 'classical_video' needs calibrated cameras (create(..., cameras=[...]))"
        )
    return ClassicalVideoEstimator(cameras, **options)


register("classical", _classical)
register("classical_video", _classical_video)
