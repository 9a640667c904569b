"""The heading both classical estimators refer joint angles to: the pelvis yaw, low-passed.

Why a low-pass: the pelvis rotates ±5° at stride frequency, and the pelvis angles are stated
in the direction of progression, not in the pelvis's own yaw. Two causal poles of `tau_s`
each pass that oscillation at ~10 %. The yaw is unwrapped first (a subject who turns round
twice has a heading of 720°), and held where the pelvis is not seen.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

__all__ = ["HeadingLowpass", "heading_step_many"]


def _wrap(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x) + np.pi) % (2 * np.pi) - np.pi


class HeadingLowpass:
    """Streaming state of one subject's heading (unwrapped yaw and the two poles' memory)."""

    def __init__(self, tau_s: float, rate: float) -> None:
        self.alpha = 1.0 - np.exp(-1.0 / (tau_s * rate))
        self.yaw_prev = np.nan  # last yaw seen (wrapped), rad
        self.yaw_unwrapped = np.nan  # its unwrapped value, rad
        self.zi: np.ndarray | None = None  # the poles' state; None until the first yaw

    def __call__(self, yaw: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Heading (rad) for each tick of `yaw` (rad); ticks not `ok` hold the last yaw."""
        yaw = np.asarray(yaw, float)
        valid = np.asarray(ok, bool) & np.isfinite(yaw)
        x = np.full(len(yaw), self.yaw_unwrapped)
        if valid.any():
            seen = yaw[valid]
            start = seen[0] if np.isnan(self.yaw_prev) else self.yaw_unwrapped
            prev = seen[0] if np.isnan(self.yaw_prev) else self.yaw_prev
            steps = _wrap(np.diff(np.concatenate(([prev], seen))))
            unwrapped = np.cumsum(np.concatenate(([start], steps)))[1:]
            count = np.cumsum(valid)  # valid ticks so far: the last one's value is held
            x = np.where(count > 0, unwrapped[np.maximum(count - 1, 0)], x)
            self.yaw_prev, self.yaw_unwrapped = float(seen[-1]), float(unwrapped[-1])
        if not np.isfinite(x).any():
            return np.zeros(len(x))
        first = x[np.isfinite(x)][0]
        x = np.where(np.isfinite(x), x, first)
        a = self.alpha
        if self.zi is None:
            self.zi = np.array([(1.0 - a) * first, (1.0 - a) * first])
        y1, z1 = lfilter([a], [1.0, a - 1.0], x, zi=self.zi[:1])
        y2, z2 = lfilter([a], [1.0, a - 1.0], y1, zi=self.zi[1:])
        self.zi = np.concatenate([z1, z2])
        return y2


def heading_step_many(filters: list[HeadingLowpass], yaw: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """One tick of many subjects' low-passes at once: `filters[k](yaw[k:k+1], ok[k:k+1])[0]`
    for every k, in a few array operations (the classical estimator's steady state: every
    subject one tick per call). The same arithmetic as `HeadingLowpass.__call__` (and as
    scipy's lfilter for these one-pole filters: y = z + a·x, z' = x·0 − y·(a − 1))."""
    yaw = np.asarray(yaw, float)
    valid = np.asarray(ok, bool) & np.isfinite(yaw)
    prev = np.array([f.yaw_prev for f in filters], float)
    held = np.array([f.yaw_unwrapped for f in filters], float)
    new = np.isnan(prev)
    with np.errstate(invalid="ignore"):
        unwrapped = np.where(new, yaw, held) + _wrap(yaw - np.where(new, yaw, prev))
    x = np.where(valid, unwrapped, held)
    out = np.zeros(len(filters))
    for k in np.flatnonzero(valid):
        filters[k].yaw_prev, filters[k].yaw_unwrapped = float(yaw[k]), float(unwrapped[k])
    run = np.flatnonzero(np.isfinite(x))  # the others answer 0 and keep their poles
    if not len(run):
        return out
    x = x[run]
    a = np.array([filters[k].alpha for k in run])
    z = np.empty((len(run), 2))
    for j, k in enumerate(run):
        zi = filters[k].zi
        z[j] = (1.0 - a[j]) * x[j] if zi is None else zi
    a1 = a - 1.0
    y1 = z[:, 0] + a * x
    y2 = z[:, 1] + a * y1
    z1, z2 = x * 0.0 - y1 * a1, y1 * 0.0 - y2 * a1
    for j, k in enumerate(run):
        filters[k].zi = np.array([z1[j], z2[j]])
    out[run] = y2
    return out
