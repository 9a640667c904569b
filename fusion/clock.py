"""Clock-offset mapping: remote LSL timestamps onto the sync stage's `pylsl.local_clock()`.

LSL's time correction gives, every few seconds, an offset `o` such that `t_remote + o` is local
time, measured at remote time `t_c` (XDF ClockOffset chunks store exactly `(t_c, o)`, with
`t_c = now_local - o` as LabRecorder writes it). Single measurements are noisy (network
round trips, scheduling), clocks drift (tens of ppm), and a remote machine can restart, which
resets its clock. So:

- `huber_line_fit` fits `o ≈ a + b·t_c` robustly. With `delta = 1e-4` s it minimises the same
  objective as pyxdf's `_robust_fit` (Huber loss, pyxdf's `winsor_threshold`), solved by
  iteratively reweighted least squares instead of ADMM; the two agree to well below 1 µs.
- `detect_clock_resets` / `map_timestamps_offline` reproduce pyxdf 1.17
  `_detect_clock_resets` + `_clock_sync` (reset = collection times going backwards, or a time
  glitch > max(5 s, 5 MAD) together with an offset glitch > max(1 s, 10 MAD); one fit per
  clock segment; samples assigned to segments by pyxdf's nearest-boundary rule).
- `ClockMapper` is the online form of the same thing: a robust fit over a sliding window of
  the current clock segment (a constant offset until 5 measurements, then a Theil–Sen slope
  with a Huber intercept: with few points a Huber line lets one bad measurement tilt it),
  the same reset criteria applied as each measurement arrives, and
  samples mapped through the segment whose time range contains them. A sample that belongs to
  no known segment (a new clock era whose first offset has not been measured yet) maps to NaN
  and is reported as not ok, so the caller can hold it instead of publishing a wrong time.

All times are seconds. Nothing here touches a socket or a file.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ClockCounters",
    "ClockMapper",
    "ClockSegment",
    "detect_clock_resets",
    "fit_clock_segments",
    "huber_line_fit",
    "map_timestamps_offline",
]

#: pyxdf's default winsor threshold: the Huber knee of the clock-offset fit, in seconds.
WINSOR_S = 1e-4


def huber_line_fit(
    x: np.ndarray,
    y: np.ndarray,
    delta: float = WINSOR_S,
    *,
    iters: int = 100,
    tol: float = 1e-13,
) -> tuple[float, float]:
    """Robust straight line `y ≈ a + b·x` under the Huber loss with knee `delta` (same units as y).

    Returns `(a, b)`. One point, or all x equal, gives `(median(y), 0)`: a constant offset.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"huber_line_fit: x and y must be 1-D of equal length, got {x.shape}, {y.shape}"
        )
    if len(x) == 0:
        raise ValueError("huber_line_fit: no points to fit")
    if len(x) == 1 or np.ptp(x) == 0.0:
        return float(np.median(y)), 0.0
    # Centre both axes: clock times are ~1e5..1e6 s, slopes ~1e-5.
    xc = float(np.mean(x))
    yc = float(np.median(y))
    u = x - xc
    v = y - yc
    w = np.ones_like(u)
    c0, c1 = _wls(u, v, w)
    for _ in range(iters):
        r = np.abs(v - (c0 + c1 * u))
        w = np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-300))
        n0, n1 = _wls(u, v, w)
        done = abs(n0 - c0) < tol and abs(n1 - c1) * (np.ptp(u) + 1.0) < tol
        c0, c1 = n0, n1
        if done:
            break
    return yc + c0 - c1 * xc, c1


def _wls(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    s0 = w.sum()
    su = (w * u).sum()
    suu = (w * u * u).sum()
    sv = (w * v).sum()
    suv = (w * u * v).sum()
    det = s0 * suu - su * su
    if det <= 0.0 or not np.isfinite(det):
        return float(sv / s0), 0.0
    return float((suu * sv - su * suv) / det), float((s0 * suv - su * sv) / det)


def _glitch(diff: np.ndarray, thresh_stds: float, thresh_secs: float) -> np.ndarray:
    """pyxdf `_segment_clock_diff`: MAD-standardised outliers that are also large in seconds."""
    shift = diff - np.median(diff)
    mad = np.median(np.abs(shift)) + np.finfo(float).eps
    return (np.abs(shift / mad) > thresh_stds) & (np.abs(shift) > thresh_secs)


def detect_clock_resets(
    times: np.ndarray,
    values: np.ndarray,
    *,
    threshold_stds: float = 5.0,
    threshold_seconds: float = 5.0,
    threshold_offset_stds: float = 10.0,
    threshold_offset_seconds: float = 1.0,
) -> list[tuple[int, int]]:
    """Inclusive `(start, end)` index ranges of clock-offset measurements between resets.

    Same rule and defaults as pyxdf's `load_xdf(handle_clock_resets=True)`.
    """
    times = np.asarray(times, dtype=float)
    values = np.asarray(values, dtype=float)
    n = len(times)
    if n <= 1:
        return [(0, n - 1)] if n else []
    dt = np.diff(times)
    dv = np.diff(values)
    resets = (dt < 0) | (
        _glitch(dt, threshold_stds, threshold_seconds)
        & _glitch(dv, threshold_offset_stds, threshold_offset_seconds)
    )
    cut = np.flatnonzero(resets)
    starts = np.concatenate(([0], cut + 1))
    ends = np.concatenate((cut, [n - 1]))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@dataclass
class ClockSegment:
    """One clock era of a remote stream: offset(t) = a + b·t for remote times t in it."""

    t_first: float
    t_last: float
    a: float
    b: float
    n: int

    def offset(self, t: np.ndarray | float) -> np.ndarray | float:
        return self.a + self.b * t


def fit_clock_segments(
    times: np.ndarray,
    values: np.ndarray,
    *,
    handle_clock_resets: bool = True,
    winsor_s: float = WINSOR_S,
) -> list[ClockSegment]:
    """Offline: split the measurements at resets and fit each era (pyxdf `_clock_sync`)."""
    times = np.asarray(times, dtype=float)
    values = np.asarray(values, dtype=float)
    if len(times) == 0:
        return []
    if handle_clock_resets and len(times) > 1:
        ranges = detect_clock_resets(times, values)
    else:
        ranges = [(0, len(times) - 1)]
    segs = []
    for lo, hi in ranges:
        if lo == hi:  # pyxdf: single-measurement segment → constant offset
            a, b = float(values[lo]), 0.0
        else:
            a, b = huber_line_fit(times[lo : hi + 1], values[lo : hi + 1], winsor_s)
        segs.append(ClockSegment(float(times[lo]), float(times[hi]), a, b, hi - lo + 1))
    return segs


def map_timestamps_offline(
    stamps: np.ndarray,
    times: np.ndarray,
    values: np.ndarray,
    *,
    handle_clock_resets: bool = True,
    winsor_s: float = WINSOR_S,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Map a whole recording's remote stamps to local time, as pyxdf's `synchronize_clocks`.

    Returns the mapped stamps and pyxdf's `clock_segments` (inclusive sample index ranges).
    Streams without any clock offset are returned unchanged, like pyxdf.
    """
    ts = np.array(stamps, dtype=float)
    if len(ts) == 0 or len(times) == 0:
        return ts, ([(0, len(ts) - 1)] if len(ts) and len(times) else [])
    segs = fit_clock_segments(
        times, values, handle_clock_resets=handle_clock_resets, winsor_s=winsor_s
    )
    if len(segs) == 1:
        s = segs[0]
        return ts + (s.a + s.b * ts), [(0, len(ts) - 1)]
    # pyxdf: walk the eras in order; an era ends at the first sample that is closer to the next
    # era's first measurement than to this era's last one (assumes stamps in recording order).
    out_segments = []
    start = 0
    out = ts.copy()
    for i, s in enumerate(segs):
        if i + 1 < len(segs):
            rest = ts[start:]
            closer = np.abs(rest - s.t_last) < np.abs(rest - segs[i + 1].t_first)
            stop = start + (len(closer) if closer.all() else int(np.argmin(closer)))
        else:
            stop = len(ts)
        if stop > start:
            out_segments.append((start, stop - 1))
            sl = slice(start, stop)
            out[sl] = ts[sl] + (s.a + s.b * ts[sl])
            start = stop
    return out, out_segments


@dataclass
class ClockCounters:
    """What the online mapper saw; exported as metrics by the caller."""

    measurements: int = 0
    rejected: int = 0  # non-finite offsets (LabRecorder writes inf on a time-correction timeout)
    outliers: int = 0  # measurements far (> outlier_s) from the current fit
    resets: int = 0  # new clock era detected


@dataclass
class _Era:
    times: deque = field(default_factory=deque)
    values: deque = field(default_factory=deque)
    diffs_t: deque = field(default_factory=deque)
    diffs_v: deque = field(default_factory=deque)
    t_first: float = np.nan
    t_last: float = np.nan
    a: float = 0.0
    b: float = 0.0
    n: int = 0


class ClockMapper:
    """Online robust clock mapping for one remote stream.

    Feed `add(collection_time, offset)` whenever LSL's time correction is read (pylsl's
    `inlet.time_correction()` is cheap after the first call; call it every couple of seconds)
    and `map(stamps)` for every chunk. `max_extrapolation_s` bounds how far before the first or
    after the last measurement of an era a stamp may lie and still be mapped through it.
    """

    def __init__(
        self,
        *,
        window: int = 60,
        winsor_s: float = WINSOR_S,
        handle_clock_resets: bool = True,
        reset_threshold_stds: float = 5.0,
        reset_threshold_seconds: float = 5.0,
        reset_threshold_offset_stds: float = 10.0,
        reset_threshold_offset_seconds: float = 1.0,
        max_extrapolation_s: float = 60.0,
        outlier_s: float = 1e-3,
        keep_eras: int = 4,
        min_slope_points: int = 5,
        max_drift: float = 1e-3,
    ) -> None:
        if window < 2:
            raise ValueError(f"ClockMapper window must be >= 2 measurements, got {window}")
        self.window = window
        self.winsor_s = winsor_s
        self.handle_clock_resets = handle_clock_resets
        self._thr = (
            reset_threshold_stds,
            reset_threshold_seconds,
            reset_threshold_offset_stds,
            reset_threshold_offset_seconds,
        )
        self.max_extrapolation_s = max_extrapolation_s
        self.outlier_s = outlier_s
        self.min_slope_points = min_slope_points
        self.max_drift = max_drift
        self._eras: deque[_Era] = deque(maxlen=keep_eras)
        self.counters = ClockCounters()

    @property
    def ready(self) -> bool:
        """True once at least one offset has been measured."""
        return bool(self._eras)

    @property
    def segments(self) -> list[ClockSegment]:
        """The known clock eras, oldest first."""
        return [ClockSegment(e.t_first, e.t_last, e.a, e.b, e.n) for e in self._eras]

    def offset_at(self, t: float) -> float:
        """Current estimate of the offset at remote time t (newest era)."""
        if not self._eras:
            raise RuntimeError("ClockMapper has no clock-offset measurement yet")
        e = self._eras[-1]
        return e.a + e.b * t

    def add(self, collection_time: float, offset: float) -> bool:
        """Take one measurement; returns True when it starts a new clock era (a reset)."""
        t, v = float(collection_time), float(offset)
        if not (np.isfinite(t) and np.isfinite(v)):
            self.counters.rejected += 1
            return False
        self.counters.measurements += 1
        reset = False
        if not self._eras:
            self._eras.append(_Era())
        else:
            e = self._eras[-1]
            if self.handle_clock_resets and self._is_reset(e, t, v):
                self.counters.resets += 1
                self._eras.append(_Era())
                reset = True
            elif abs(v - (e.a + e.b * t)) > self.outlier_s:
                self.counters.outliers += 1
        e = self._eras[-1]
        if e.n:
            e.diffs_t.append(t - e.times[-1])
            e.diffs_v.append(v - e.values[-1])
        e.times.append(t)
        e.values.append(v)
        while len(e.times) > self.window:
            e.times.popleft()
            e.values.popleft()
        while len(e.diffs_t) > self.window:
            e.diffs_t.popleft()
            e.diffs_v.popleft()
        e.n += 1
        e.t_first = t if e.n == 1 else min(e.t_first, t)
        e.t_last = max(e.t_last, t) if e.n > 1 else t
        e.a, e.b = self._fit(np.fromiter(e.times, float), np.fromiter(e.values, float))
        return reset

    def _fit(self, t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
        """Online fit: robust to a bad measurement even when there are only a few.

        A Huber line (the offline fit) lets one outlier at the end of a short window tilt the
        slope. So: below `min_slope_points` measurements a constant (Huber location, which is
        the median for large outliers); from there a Theil–Sen slope (median of pairwise
        slopes, bounded by `max_drift`) and a Huber intercept.
        """
        if len(t) < self.min_slope_points or np.ptp(t) == 0.0:
            a, _ = huber_line_fit(np.zeros_like(t), v, self.winsor_s)
            return a, 0.0
        i, j = np.triu_indices(len(t), k=1)
        dt = t[j] - t[i]
        ok = dt > 0
        b = float(np.median((v[j] - v[i])[ok] / dt[ok])) if ok.any() else 0.0
        b = float(np.clip(b, -self.max_drift, self.max_drift))
        a, _ = huber_line_fit(np.zeros_like(t), v - b * t, self.winsor_s)
        return a, b

    def _is_reset(self, e: _Era, t: float, v: float) -> bool:
        dt = t - e.times[-1]
        if dt < 0:
            return True
        if not e.diffs_t:  # pyxdf needs two diffs before a glitch can stand out
            return False
        stds, secs, ostds, osecs = self._thr
        dts = np.append(np.fromiter(e.diffs_t, float), dt)
        dvs = np.append(np.fromiter(e.diffs_v, float), v - e.values[-1])
        return bool(_glitch(dts, stds, secs)[-1] and _glitch(dvs, ostds, osecs)[-1])

    def map(self, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Remote stamps → local stamps; returns `(local, ok)`, NaN where not ok.

        Each stamp goes through the newest era whose measured time range (widened by
        `max_extrapolation_s` on both sides) contains it.
        """
        ts = np.asarray(stamps, dtype=float)
        out = np.full(ts.shape, np.nan)
        ok = np.zeros(ts.shape, bool)
        m = self.max_extrapolation_s
        for e in reversed(self._eras):
            sel = ~ok & (ts >= e.t_first - m) & (ts <= e.t_last + m)
            if sel.any():
                out[sel] = ts[sel] + (e.a + e.b * ts[sel])
                ok |= sel
            if ok.all():
                break
        return out, ok
