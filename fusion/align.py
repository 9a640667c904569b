"""Multi-rate streams onto the model clock (60 Hz ticks on the sync stage's LSL clock).

- `align_imu`: linear interpolation between the two samples around each tick; a tick is masked
  when it is outside the data or the two samples are more than `max_gap_s` apart (lost data is
  never bridged silently).
- `align_nearest`: the nearest sample within `tol_s`, else masked — for video frames and
  keypoints (interpolating a pose across dropped frames would invent motion) and for markers.
- `StreamSync`: the online chain for one stream — `ClockMapper` (remote → local clock),
  `Dejitterer` (regular-rate streams only), a short buffer, and the two functions above.
- `align_recording`: the same code over a whole recording (raw, unsynchronised XDF streams):
  `mode="offline"` uses the whole-recording fits, identical to pyxdf's `load_xdf(...,
  synchronize_clocks=True, dejitter_timestamps=True)`; `mode="online"` feeds the file's chunks,
  in file order, through `StreamSync` exactly as the live pipeline would.

Missing data is NaN (None for strings) in the values and False in the mask: the mask is the
truth. Times are seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fusion.clock import ClockMapper, map_timestamps_offline
from fusion.dejitter import Dejitterer, dejitter_offline

__all__ = [
    "AlignedRecording",
    "AlignedStream",
    "RawStream",
    "StreamSync",
    "align_imu",
    "align_nearest",
    "align_recording",
    "model_ticks",
]

MODEL_RATE = 60.0


def model_ticks(t_start: float, t_end: float, rate: float = MODEL_RATE) -> np.ndarray:
    """Ticks at integer multiples of 1/rate within [t_start, t_end] (one grid for everyone)."""
    if rate <= 0:
        raise ValueError(f"model rate must be > 0, got {rate}")
    if not (np.isfinite(t_start) and np.isfinite(t_end)) or t_end < t_start:
        return np.zeros(0)
    k0 = int(np.ceil(t_start * rate - 1e-9))
    k1 = int(np.floor(t_end * rate + 1e-9))
    return np.arange(k0, k1 + 1, dtype=float) / rate


def _prepare(t: np.ndarray, x: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, dtype=float).ravel()
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.shape[0] != t.shape[0]:
        raise ValueError(f"align: {t.shape[0]} timestamps but {x.shape[0]} samples")
    keep = np.isfinite(t)
    if not keep.all():
        t, x = t[keep], x[keep]
    order = np.argsort(t, kind="stable")
    return t[order], x[order]


def _blank(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "fc":
        return np.full(shape, np.nan, dtype=dtype)
    if dtype.kind in "iub":
        return np.full(shape, np.nan)
    return np.full(shape, None, dtype=object)


def align_imu(
    t: np.ndarray, x: np.ndarray, ticks: np.ndarray, max_gap_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate samples `x` (N, ...) stamped `t` (N,) at `ticks` (M,).

    Returns `(values (M, ...), mask (M,))`; masked ticks hold NaN. A tick equal to a sample
    time takes that sample; duplicated stamps take the later sample.
    """
    t, x = _prepare(t, x)
    ticks = np.asarray(ticks, dtype=float).ravel()
    xf = np.asarray(x, dtype=float)
    m = len(ticks)
    values = np.full((m, *xf.shape[1:]), np.nan)
    mask = np.zeros(m, bool)
    if len(t) == 0 or m == 0:
        return values, mask
    hi = np.searchsorted(t, ticks, side="right")  # t[hi-1] <= tick < t[hi]
    lo = hi - 1
    exact = (lo >= 0) & (t[np.clip(lo, 0, None)] == ticks)
    inside = (lo >= 0) & (hi < len(t))
    ok = inside | exact
    loc = np.clip(lo, 0, len(t) - 1)
    hic = np.where(hi < len(t), hi, loc)
    span = t[hic] - t[loc]
    ok &= exact | (span <= max_gap_s)
    w = np.where(span > 0, (ticks - t[loc]) / np.where(span > 0, span, 1.0), 0.0)
    w = np.where(exact, 0.0, w).reshape((m,) + (1,) * (xf.ndim - 1))
    interp = xf[loc] * (1.0 - w) + xf[hic] * w
    finite = np.isfinite(interp).reshape(m, -1).all(axis=1)
    mask = ok & finite
    values[mask] = interp[mask]
    return values, mask


def align_nearest(
    t: np.ndarray, x: Any, ticks: np.ndarray, tol_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest sample to each tick if within `tol_s`, else masked.

    Numeric data comes back as float (NaN where masked); other data (strings) as object
    arrays (None where masked). Ties go to the earlier sample.
    """
    t, x = _prepare(t, x)
    ticks = np.asarray(ticks, dtype=float).ravel()
    m = len(ticks)
    xa = np.asarray(x)
    out_dtype = np.dtype(float) if xa.dtype.kind in "fciub" else np.dtype(object)
    values = _blank((m, *xa.shape[1:]), out_dtype)
    if len(t) == 0 or m == 0:
        return values, np.zeros(m, bool)
    hi = np.clip(np.searchsorted(t, ticks, side="left"), 0, len(t) - 1)
    lo = np.clip(hi - 1, 0, len(t) - 1)
    pick = np.where(np.abs(t[lo] - ticks) <= np.abs(t[hi] - ticks), lo, hi)
    mask = np.abs(t[pick] - ticks) <= tol_s
    values[mask] = xa[pick[mask]]
    if out_dtype.kind == "f":
        mask &= np.isfinite(values.reshape(m, -1)).all(axis=1)
    return values, mask


# ---- online ---------------------------------------------------------------------------------


class SampleWindow:
    """The last `span_s` of a stream's (stamps, values), appended chunk by chunk, read as views.

    Why: the live sync reads every stream's recent samples 60 times a second; a list of chunks
    concatenated on each read cost more than the interpolation itself. Here a chunk is copied
    once into preallocated arrays and a read is two slices. Samples older than `span_s` behind
    the newest are left out of reads and dropped when the arrays fill, but only while the
    stamps up to there are in order (after a clock reset the older part stays until it is out
    of reach); the arrays grow when they must.
    """

    def __init__(self, span_s: float = np.inf, capacity: int = 256) -> None:
        self.span_s = span_s
        self._t = np.empty(capacity)
        self._x: np.ndarray | None = None
        self._n = 0
        self._first_break = np.inf  # first index whose stamp is not >= the one before it
        self.newest = -np.inf

    def __len__(self) -> int:
        return self._n

    def append(self, t: np.ndarray, x: np.ndarray) -> None:
        m = len(t)
        if m == 0:
            return
        x = np.asarray(x)
        if self._x is None or (self._n == 0 and self._x.shape[1:] != x.shape[1:]):
            self._x = np.empty((len(self._t), *x.shape[1:]), dtype=x.dtype)
        elif self._x.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"SampleWindow: samples of shape {x.shape[1:]} after {self._x.shape[1:]}"
            )
        if self._n + m > len(self._t):
            self._make_room(m)
        n = self._n
        self._t[n : n + m] = t
        self._x[n : n + m] = x
        if self._first_break == np.inf:
            lo = max(n - 1, 0)
            ok = self._t[lo + 1 : n + m] >= self._t[lo : n + m - 1]
            if not ok.all():
                self._first_break = lo + 1 + int(np.argmin(ok))
            elif n == 0 and not np.isfinite(self._t[0]):
                self._first_break = 0
        self._n = n + m
        top = float(np.fmax.reduce(t)) if m > 1 else float(t[0])
        if top > self.newest:  # (a NaN stamp compares False: it never becomes the newest)
            self.newest = top

    def _start(self) -> int:
        """Index of the oldest sample within `span_s` of the newest (0 where not in order)."""
        if not np.isfinite(self.span_s) or self._n == 0:
            return 0
        start = int(np.searchsorted(self._t[: self._n], self.newest - self.span_s, side="left"))
        return start if start < self._first_break else 0

    def _make_room(self, m: int) -> None:
        cut, n = self._start(), self._n
        keep = n - cut
        assert self._x is not None
        if keep + m > len(self._t) // 2:  # still crowded after the trim: grow
            size = max(2 * len(self._t), 2 * (keep + m))
            t_new, x_new = np.empty(size), np.empty((size, *self._x.shape[1:]), self._x.dtype)
        else:
            t_new, x_new = self._t, self._x
        t_new[:keep] = self._t[cut:n]
        x_new[:keep] = self._x[cut:n]
        self._t, self._x, self._n = t_new, x_new, keep
        self._first_break = self._first_break - cut if np.isfinite(self._first_break) else np.inf

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        """(stamps, values) in arrival order from `span_s` behind the newest."""
        if self._x is None or self._n == 0:
            return np.zeros(0), np.zeros((0,))
        start = self._start()
        return self._t[start : self._n], self._x[start : self._n]


class StreamSync:
    """Online timing for one stream: clock mapping, dejitter, buffer, alignment to ticks.

    `push(remote_stamps, values)` returns the local, dejittered stamps of the samples it could
    place now. Samples whose clock era has no offset measurement yet (a reset just happened, or
    no measurement at all) are held in arrival order and released by the `add_offset` that
    explains them; if `max_pending_offsets` further measurements do not, they are dropped and
    counted (`unmapped_dropped`). With `clock_sync=False` stamps are already local.
    """

    def __init__(
        self,
        nominal_srate: float,
        *,
        can_drop_samples: bool = False,
        clock_sync: bool = True,
        buffer_s: float = 10.0,
        max_pending: int = 100_000,
        max_pending_offsets: int = 3,
        clock_kwargs: dict[str, Any] | None = None,
        dejitter_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.nominal_srate = float(nominal_srate)
        self.clock = ClockMapper(**(clock_kwargs or {})) if clock_sync else None
        self.dejitter = Dejitterer(
            nominal_srate, enabled=not can_drop_samples, **(dejitter_kwargs or {})
        )
        self.buffer_s = buffer_s
        self.max_pending = max_pending
        self.max_pending_offsets = max_pending_offsets
        self._pend_t: list[np.ndarray] = []
        self._pend_x: list[np.ndarray] = []
        self._pend_age = 0
        self._buf = SampleWindow(buffer_s)
        self.pending_dropped = 0
        self.unmapped_dropped = 0

    @property
    def pending(self) -> int:
        return int(sum(len(p) for p in self._pend_t))

    @property
    def watermark(self) -> float:
        """Local time of the newest placed sample (-inf before any)."""
        return self._buf.newest

    @property
    def counters(self) -> dict[str, int]:
        c = dict(self.dejitter.counters.as_dict())
        if self.clock is not None:
            cc = self.clock.counters
            c.update(
                clock_measurements=cc.measurements,
                clock_rejected=cc.rejected,
                clock_outliers=cc.outliers,
                clock_resets=cc.resets,
            )
        c.update(
            pending=self.pending,
            pending_dropped=self.pending_dropped,
            unmapped_dropped=self.unmapped_dropped,
        )
        return c

    def add_offset(self, collection_time: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
        """One LSL time-correction measurement; returns samples it released (stamps, values)."""
        if self.clock is None:
            raise RuntimeError("StreamSync(clock_sync=False) takes no clock offsets")
        self.clock.add(collection_time, offset)
        if not self._pend_t:
            return np.zeros(0), self._empty_values()
        t = np.concatenate(self._pend_t)
        x = np.concatenate(self._pend_x)
        self._pend_t, self._pend_x = [], []
        out_t, out_x = self._place(t, x)
        if self._pend_t:
            self._pend_age += 1
            if self._pend_age >= self.max_pending_offsets:
                self.unmapped_dropped += self.pending
                self._pend_t, self._pend_x, self._pend_age = [], [], 0
        return out_t, out_x

    def push(self, stamps: np.ndarray, values: Any) -> tuple[np.ndarray, np.ndarray]:
        """One chunk in arrival order; returns the (local stamps, values) placed now."""
        t = np.asarray(stamps, dtype=float).ravel()
        x = np.asarray(values)
        if x.shape[0] != t.shape[0]:
            raise ValueError(f"StreamSync.push: {len(t)} stamps but {x.shape[0]} samples")
        if len(t) == 0:
            return np.zeros(0), x
        if self._pend_t:  # keep arrival order behind what is already waiting
            self._hold(t, x)
            return np.zeros(0), x[:0]
        return self._place(t, x)

    def _hold(self, t: np.ndarray, x: np.ndarray) -> None:
        room = self.max_pending - self.pending
        if room < len(t):
            self.pending_dropped += len(t) - max(room, 0)
            t, x = t[: max(room, 0)], x[: max(room, 0)]
        if len(t):
            self._pend_t.append(t)
            self._pend_x.append(x)

    def _place(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.clock is not None:
            local, ok = self.clock.map(t)
            if not ok.all():
                first_bad = int(np.argmin(ok))
                self._hold(t[first_bad:], x[first_bad:])
                t, x, local = t[:first_bad], x[:first_bad], local[:first_bad]
            else:
                self._pend_age = 0
        else:
            local = t
        if len(local) == 0:
            return np.zeros(0), x[:0]
        out = self.dejitter.process(local)
        self._append(out, x)
        return out, x

    def _empty_values(self) -> np.ndarray:
        return self._buf.view()[1][:0] if len(self._buf) else np.zeros((0,))

    def _append(self, t: np.ndarray, x: np.ndarray) -> None:
        self._buf.append(t, x)

    def buffered(self) -> tuple[np.ndarray, np.ndarray]:
        """The buffered (local stamps, values), oldest first."""
        return self._buf.view()

    def interpolate(self, ticks: np.ndarray, max_gap_s: float) -> tuple[np.ndarray, np.ndarray]:
        """`align_imu` over the buffer."""
        t, x = self.buffered()
        return align_imu(t, x if len(t) else np.zeros((0, 1)), ticks, max_gap_s)

    def nearest(self, ticks: np.ndarray, tol_s: float) -> tuple[np.ndarray, np.ndarray]:
        """`align_nearest` over the buffer."""
        t, x = self.buffered()
        return align_nearest(t, x if len(t) else np.zeros((0, 1)), ticks, tol_s)


# ---- offline --------------------------------------------------------------------------------


class RawStream(Protocol):
    """What `align_recording` needs from a loaded stream (drivers.xdf_reader.XdfStream has it).

    `time_stamps` are the raw stamps as recorded (remote clock, not dejittered).
    """

    key: str
    nominal_srate: float
    can_drop_samples: bool
    channel_format: str
    time_stamps: np.ndarray
    time_series: Any
    clock_times: np.ndarray
    clock_values: np.ndarray


@dataclass
class AlignedStream:
    key: str
    method: str  # "interp" or "nearest"
    timestamps: np.ndarray  # (N,) the stream's own stamps on the local clock, dejittered
    values: np.ndarray  # (M, C) on the ticks (float, or object for strings)
    mask: np.ndarray  # (M,) bool
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class AlignedRecording:
    ticks: np.ndarray
    rate: float
    streams: dict[str, AlignedStream]


def align_recording(
    streams: Sequence[RawStream],
    *,
    rate: float = MODEL_RATE,
    mode: str = "offline",
    arrival: Sequence[tuple[int, str, int]] | None = None,
    gap_periods: float = 2.5,
    handle_clock_resets: bool = True,
    synchronize_clocks: bool = True,
    dejitter_timestamps: bool = True,
) -> AlignedRecording:
    """Put every non-empty stream of a recording on one `rate` Hz tick grid.

    `mode="offline"`: whole-recording clock fits and dejitter (pyxdf's results exactly).
    `mode="online"`: `StreamSync` fed in file order; `arrival` lists `(stream_index, kind, n)`
    with kind "samples" (n samples) or "offset" (one measurement), as
    `drivers.xdf_reader.XdfRecording.arrival` gives it. Without `arrival`, each stream's
    offsets are interleaved with its samples by remote time (fine unless the clock reset).
    Regular numeric streams are interpolated (masked across gaps > `gap_periods` periods);
    others (can-drop video, irregular, strings) take the nearest sample within half a period.
    """
    if mode not in ("offline", "online"):
        raise ValueError(f"align_recording: mode must be 'offline' or 'online', got {mode!r}")
    stamps: list[np.ndarray] = []
    counters: list[dict[str, int]] = []
    if mode == "offline":
        for s in streams:
            ts = np.asarray(s.time_stamps, dtype=float)
            if synchronize_clocks:
                ts, _ = map_timestamps_offline(
                    ts, s.clock_times, s.clock_values, handle_clock_resets=handle_clock_resets
                )
            if dejitter_timestamps:
                ts, segs, _ = dejitter_offline(
                    ts, s.nominal_srate, can_drop_samples=s.can_drop_samples
                )
            else:
                segs = [(0, len(ts) - 1)] if len(ts) else []
            stamps.append(ts)
            counters.append({"samples": len(ts), "segments": len(segs)})
    else:
        stamps, counters = _online_stamps(streams, arrival, handle_clock_resets, synchronize_clocks)

    spans = [(np.nanmin(ts), np.nanmax(ts)) for ts in stamps if np.isfinite(ts).any()]
    t0 = min((a for a, _ in spans), default=np.nan)
    t1 = max((b for _, b in spans), default=np.nan)
    ticks = model_ticks(t0, t1, rate) if spans else np.zeros(0)
    out: dict[str, AlignedStream] = {}
    for s, ts, cnt in zip(streams, stamps, counters, strict=True):
        if not np.isfinite(ts).any():
            continue
        x = s.time_series
        x = np.asarray(x, dtype=object) if s.channel_format == "string" else np.asarray(x)
        regular = s.nominal_srate > 0 and not s.can_drop_samples and s.channel_format != "string"
        if regular:
            period = 1.0 / s.nominal_srate
            vals, mask = align_imu(ts, x, ticks, gap_periods * period)
            method = "interp"
        else:
            period = 1.0 / s.nominal_srate if s.nominal_srate > 0 else 1.0 / rate
            vals, mask = align_nearest(ts, x, ticks, 0.5 * period)
            method = "nearest"
        out[s.key] = AlignedStream(s.key, method, ts, vals, mask, cnt)
    return AlignedRecording(ticks, rate, out)


def _online_stamps(
    streams: Sequence[RawStream],
    arrival: Sequence[tuple[int, str, int]] | None,
    handle_clock_resets: bool,
    synchronize_clocks: bool,
) -> tuple[list[np.ndarray], list[dict[str, int]]]:
    syncs = [
        StreamSync(
            s.nominal_srate,
            can_drop_samples=s.can_drop_samples,
            # pyxdf leaves a stream without any ClockOffset chunk on its own clock.
            clock_sync=synchronize_clocks and len(s.clock_times) > 0,
            buffer_s=np.inf,
            clock_kwargs={"handle_clock_resets": handle_clock_resets},
        )
        for s in streams
    ]
    if arrival is None:
        arrival = _arrival_by_time(streams)
    pos_s = [0] * len(streams)
    pos_o = [0] * len(streams)
    for i, kind, n in arrival:
        s, sy = streams[i], syncs[i]
        if kind == "offset":
            if sy.clock is not None and pos_o[i] < len(s.clock_times):
                sy.add_offset(s.clock_times[pos_o[i]], s.clock_values[pos_o[i]])
            pos_o[i] += 1
        else:
            ts = np.asarray(s.time_stamps[pos_s[i] : pos_s[i] + n], dtype=float)
            sy.push(ts, np.arange(pos_s[i], pos_s[i] + n))  # values: sample indices
            pos_s[i] += n
    stamps, counters = [], []
    for s, sy in zip(streams, syncs, strict=True):
        t, idx = sy.buffered()
        full = np.full(len(s.time_stamps), np.nan)
        if len(t):
            full[np.asarray(idx, dtype=int)] = t
        stamps.append(full)
        counters.append(sy.counters)
    return stamps, counters


def _arrival_by_time(streams: Sequence[RawStream]) -> list[tuple[int, str, int]]:
    events: list[tuple[float, int, int, str, int]] = []
    for i, s in enumerate(streams):
        ts = np.asarray(s.time_stamps, dtype=float)
        for t in np.asarray(s.clock_times, dtype=float):
            events.append((float(t), 0, i, "offset", 1))
        for a in range(0, len(ts), 32):
            events.append(
                (float(ts[min(a + 31, len(ts) - 1)]), 1, i, "samples", min(32, len(ts) - a))
            )
    events.sort(key=lambda e: (e[0], e[1]))
    return [(i, k, n) for _, _, i, k, n in events]
