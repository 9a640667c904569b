"""The heading both classical estimators refer joint angles to: the pelvis yaw, low-passed.

Why a low-pass: the pelvis rotates ±5° at stride frequency, and the pelvis angles are stated
in the direction of progression, not in the pelvis's own yaw. Two causal poles of `tau_s`
each pass that oscillation at ~10 %. The yaw is unwrapped first (a subject who turns round
twice has a heading of 720°), and held where the pelvis is not seen.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

__all__ = ["HeadingLowpass"]


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
