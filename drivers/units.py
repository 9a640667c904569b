"""Channel metadata and unit conversion for IMU streams.

Senders describe their channels in the LSL stream header (`desc/channels/channel` with
`label`, `unit`, `type`, the XDF convention). The contract units are rad/s and m/s²; anything
else a real device sends (deg/s, g, mg) is converted here, and a unit we do not know is an
error rather than a silent factor of 1.
"""

from __future__ import annotations

import math
from typing import Literal

import pylsl

__all__ = ["STANDARD_GRAVITY", "channel_meta", "unit_scale"]

#: The unit "g" is defined by standard gravity (CGPM 1901), not by local gravity.
STANDARD_GRAVITY = 9.80665

Quantity = Literal["gyr", "acc"]

_DEG = math.pi / 180.0

# Keys are normalised spellings (see _normalise); values are the factor to the contract unit.
_GYR_UNITS: dict[str, float] = {
    "rad/s": 1.0,
    "rad/sec": 1.0,
    "rads^-1": 1.0,
    "deg/s": _DEG,
    "deg/sec": _DEG,
    "degrees/s": _DEG,
    "degree/s": _DEG,
    "degs^-1": _DEG,
    "dps": _DEG,
    "°/s": _DEG,
}
_ACC_UNITS: dict[str, float] = {
    "m/s^2": 1.0,
    "m/s2": 1.0,
    "m/s²": 1.0,
    "m/s/s": 1.0,
    "ms^-2": 1.0,
    "g": STANDARD_GRAVITY,
    "mg": STANDARD_GRAVITY / 1000.0,
}
_TABLES: dict[str, dict[str, float]] = {"gyr": _GYR_UNITS, "acc": _ACC_UNITS}


def _normalise(unit: str) -> str:
    """Lower-case, drop blanks and the '**' power spelling: 'Deg / s' -> 'deg/s'."""
    return unit.strip().lower().replace(" ", "").replace("**", "^")


def unit_scale(unit: str, quantity: Quantity) -> float:
    """Factor that turns a value in `unit` into rad/s ('gyr') or m/s² ('acc').

    An empty unit returns 1.0 (the contract unit is assumed); callers that have a stream name
    should report that assumption. Unknown units, or a unit of the
    wrong quantity (deg/s on an accelerometer channel), raise ValueError naming the unit.
    """
    if quantity not in _TABLES:
        raise ValueError(f"quantity must be 'gyr' or 'acc', got {quantity!r}")
    key = _normalise(unit)
    if key == "":
        return 1.0
    table = _TABLES[quantity]
    if key in table:
        return table[key]
    other = "acc" if quantity == "gyr" else "gyr"
    if key in _TABLES[other]:
        raise ValueError(
            f"unit {unit!r} is a {other} unit but the channel carries {quantity} "
            f"(expected one of {sorted(table)})"
        )
    raise ValueError(f"unknown {quantity} unit {unit!r} (known: {sorted(table)})")


def channel_meta(info: pylsl.StreamInfo) -> list[dict[str, str]]:
    """Per-channel {'label', 'unit', 'type'} from `desc/channels/channel`; missing → ''.

    Always returns `info.channel_count()` entries (a short channel list is padded, a long one
    cut), so index i is channel i. Note that StreamInfo objects from the resolver have an empty
    desc: pass the full info from `StreamInlet.info()`.
    """
    n = info.channel_count()
    out: list[dict[str, str]] = []
    channels = info.desc().child("channels")
    ch = channels.child("channel") if not channels.empty() else None
    while ch is not None and not ch.empty() and len(out) < n:
        out.append({key: ch.child_value(key).strip() for key in ("label", "unit", "type")})
        ch = ch.next_sibling("channel")
    out.extend({"label": "", "unit": "", "type": ""} for _ in range(n - len(out)))
    return out
