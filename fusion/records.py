"""Dataclasses read back from dicts (JSON metadata, checkpoints, configs) strictly.

Why: a misspelt or stale key in a saved file must be an error naming it, not silently dropped
or a bare TypeError from the constructor.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

__all__ = ["check_known_fields"]


def check_known_fields(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise ValueError naming `what` and every key of `d` that `cls` has no field for."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown {what} {unknown}")
