"""Our own ctypes handles on the liblsl library pylsl loaded.

Why: a few hot calls (ingest's non-blocking pulls, the simulated lab's chunk pushes) are made
straight to liblsl. Function objects of our own keep pylsl's untouched (argtypes are per
object), and a PyDLL handle calls without releasing the GIL.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import pylsl.lib

__all__ = ["liblsl_function"]

_libs: dict[bool, ctypes.CDLL] = {}
_fns: dict[tuple[str, bool], Any] = {}


def liblsl_function(
    name: str, argtypes: Sequence[Any] | None, restype: Any, *, keep_gil: bool = False
) -> Any:
    """liblsl's `name` as a ctypes function of our own (cached), or None if it is not there.
    The first call for a name fixes its argtypes and restype.

    `keep_gil`: called through ctypes.PyDLL, without dropping the GIL (for calls that take
    a few µs: winning the GIL back can cost a whole switch interval).
    """
    key = (name, keep_gil)
    if key not in _fns:
        try:
            if keep_gil not in _libs:
                path = pylsl.lib.lib._name
                _libs[keep_gil] = ctypes.PyDLL(path) if keep_gil else ctypes.CDLL(path)
            fn = getattr(_libs[keep_gil], name)
            fn.argtypes = argtypes  # None: unchecked, as pylsl declares its own
            fn.restype = restype
        except (AttributeError, OSError):
            fn = None
        _fns[key] = fn
    return _fns[key]
