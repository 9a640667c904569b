"""Sync: every sensor of every subject onto one model clock (60 Hz ticks on the LSL clock).

Per stream a fusion.align.StreamSync (online dejitter for regular-rate IMU streams, none for
cameras, a short buffer); ticks are the integer multiples of 1/rate, the same grid for every
subject. A tick is emitted when every live stream of the `wait_for` modalities has data at or
past it (the watermark), or when `max_wait` has passed since the tick's time and another
stream has data past it; whatever is not there is masked (NaN + False, as
fusion.estimators.base.SyncedBatch says) and counted.

Why "live": a stream that has said nothing for `stale_after` (unplugged, crashed) stops
holding the watermark, otherwise every tick would wait `max_wait` until it came back. Samples
that arrive for ticks already emitted are counted late and kept only as interpolation support.
If the sync stage ever falls more than `max_behind_s` behind, it skips ahead (counted as
dropped{stage=sync, reason=behind}) rather than publishing stale ticks.

When: every message wakes the stage and a tick goes out in that step once its watermark has
passed; with no data it sleeps exactly until the next max-wait or staleness deadline
(`wait_s`), not on a polling timer. The cheap pre-check on raw stamps allows `raw_slack_s` of
jitter, so a sample stamped a little early does not hold its tick until the next packet.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pylsl

from fusion.align import SampleWindow, StreamSync
from fusion.estimators.base import SyncedBatch
from fusion.skeleton import KEYPOINTS, SEGMENT_INDEX, SEGMENTS
from services.actors.messages import ImuMsg, KeypointsMsg, TickMsg
from services.actors.stage import Stage, call
from services.config import SubjectConfig, SyncConfig
from services.trace import Trace

__all__ = ["RawBuffer", "Sync", "interp_rows", "nearest_rows"]

log = logging.getLogger(__name__)

#: how far a raw (received) stamp may jitter around its dejittered place: the slack of the
#: sync's raw pre-check (_raw_marks) and before a causal tick's next sample counts late (_accept)
RAW_JITTER_S = 0.002
#: samples over which the sync stage judges whether a stream's dejitter fits (see _flush_imu)
DEV_WINDOW = 128


def _stack(ts: list[np.ndarray], xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad streams to (S, L) stamps (inf) and (S, L, C) values (NaN), each sorted by stamp
    (non-finite stamps last); also the (S, 1) count of finite stamps."""
    S = len(ts)
    C = xs[0].shape[1]
    L = max(len(t) for t in ts)
    T = np.full((S, L), np.inf)
    X = np.full((S, L, C), np.nan)
    for i, (t, x) in enumerate(zip(ts, xs, strict=True)):
        T[i, : len(t)] = t
        X[i, : len(t)] = x
    T[~np.isfinite(T)] = np.inf
    order = np.argsort(T, axis=1, kind="stable")
    T = np.take_along_axis(T, order, axis=1)
    X = np.take_along_axis(X, order[..., None], axis=1)
    return T, X, np.isfinite(T).sum(axis=1)[:, None]


def interp_rows(
    ts: list[np.ndarray],
    xs: list[np.ndarray],
    ticks: np.ndarray,
    max_gap_s: float,
    hold_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """fusion.align.align_imu's rule for many streams at once: (S, N, C) values, (S, N) mask.

    Why: the sync stage interpolates 13 short buffers per subject 60 times a second, and one
    align_imu call costs ~100 µs of numpy overhead whatever its size; stacked, the 13 cost
    about as much as one. Same semantics (tests/test_sync.py checks it against align_imu): a
    tick equal to a sample takes it (duplicates: the later one), a tick between two samples
    at most `max_gap_s` apart is linearly interpolated, anything else or non-finite is
    masked (NaN, False).

    With `hold_s` (the causal rule) a tick sees only the samples at or before it and takes
    the newest if it is at most `hold_s` old. Held, not extrapolated: real IMU data has
    sample-to-sample spikes (impacts) that a line through the last two samples doubles
    (qmt recording: 45 rad/s off on a thigh gyro), and an orientation filter integrates them.
    Samples after the tick never count, so the value does not depend on when it went out.
    """
    S, N = len(ts), len(ticks)
    C = xs[0].shape[1] if S else 0
    values = np.full((S, N, C), np.nan)
    if S == 0 or N == 0 or max(len(t) for t in ts) == 0:
        return values, np.zeros((S, N), bool)
    T, X, n_ok = _stack(ts, xs)  # NaN stamps sort last, like align_imu drops them
    L = T.shape[1]
    hi = (T[:, :, None] <= ticks[None, None, :]).sum(axis=1)  # (S, N): first sample > tick
    lo = hi - 1
    loc = np.clip(lo, 0, L - 1)
    t_lo = np.take_along_axis(T, loc, axis=1)
    x_lo = np.take_along_axis(X, loc[..., None], axis=1)
    if hold_s is not None:
        ok = (lo >= 0) & (ticks[None, :] - t_lo <= hold_s)
        mask = ok & np.isfinite(x_lo).all(axis=2)
        values[mask] = x_lo[mask]
        return values, mask
    hic = np.where(hi < n_ok, hi, loc)
    t_hi = np.take_along_axis(T, hic, axis=1)
    exact = (lo >= 0) & (t_lo == ticks[None, :])
    with np.errstate(invalid="ignore"):  # rows without samples: inf - inf, masked below
        span = t_hi - t_lo
        ok = exact | ((lo >= 0) & (hi < n_ok) & (span <= max_gap_s))
        good = ok & ~exact & (span > 0)
        w = np.where(good, (ticks[None, :] - t_lo) / np.where(good, span, 1.0), 0.0)
    x_hi = np.take_along_axis(X, hic[..., None], axis=1)
    interp = x_lo * (1.0 - w[..., None]) + x_hi * w[..., None]
    mask = ok & np.isfinite(interp).all(axis=2)
    values[mask] = interp[mask]
    return values, mask


def nearest_rows(
    ts: list[np.ndarray], xs: list[np.ndarray], ticks: np.ndarray, tol_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """fusion.align.align_nearest for many streams at once: (S, N, C) values, (S, N) mask.

    Why: the sync stage picks 4 cameras' frames per subject 60 times a second (see
    interp_rows). Same rule (tests/test_sync.py checks it): the nearest sample within `tol_s`,
    ties to the earlier one; non-finite values or stamps masked.
    """
    S, N = len(ts), len(ticks)
    C = xs[0].shape[1] if S else 0
    values = np.full((S, N, C), np.nan)
    if S == 0 or N == 0 or max(len(t) for t in ts) == 0:
        return values, np.zeros((S, N), bool)
    T, X, n_ok = _stack(ts, xs)
    top = np.maximum(n_ok - 1, 0)
    hi = np.minimum((T[:, :, None] < ticks[None, None, :]).sum(axis=1), top)
    lo = np.maximum(hi - 1, 0)
    t_lo = np.take_along_axis(T, lo, axis=1)
    t_hi = np.take_along_axis(T, hi, axis=1)
    with np.errstate(invalid="ignore"):
        d_lo, d_hi = np.abs(t_lo - ticks[None, :]), np.abs(t_hi - ticks[None, :])
    pick = np.where(d_lo <= d_hi, lo, hi)
    d = np.where(d_lo <= d_hi, d_lo, d_hi)
    x = np.take_along_axis(X, pick[..., None], axis=1)
    mask = (n_ok > 0) & (d <= tol_s) & np.isfinite(x).all(axis=2)
    values[mask] = x[mask]
    return values, mask


class RawBuffer:
    """The last `buffer_s` of a stream on its received stamps (what StreamSync keeps, without
    the dejitter): for cameras, and IMU streams not dejittered. Same interface as StreamSync
    as far as the sync stage uses it; appending costs a few µs instead of ~100."""

    def __init__(self, nominal_srate: float = 0.0, buffer_s: float = 1.0) -> None:
        self.nominal_srate = float(nominal_srate)
        self.buffer_s = buffer_s
        self._buf = SampleWindow(buffer_s)

    @property
    def watermark(self) -> float:
        return self._buf.newest

    def push(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._buf.append(np.asarray(t, dtype=np.float64), x)
        return t, x

    def buffered(self) -> tuple[np.ndarray, np.ndarray]:
        return self._buf.view()


@dataclass
class _Stream:
    """One input stream: raw samples wait in `pend_*` until a tick needs them.

    Why lazily: each StreamSync call has a fixed cost (~30-50 µs on the dejitter's fast path,
    a few hundred µs on its general path), so the samples of a stream go through it once per
    emitted batch, not once per packet.
    """

    label: str
    kind: str  # imu | video
    index: list[int]  # segment indices (imu) or [camera index] (video)
    sync: StreamSync | RawBuffer
    last_arrival: float = -math.inf
    raw_watermark: float = -math.inf
    pend_t: list[np.ndarray] = field(default_factory=list)
    pend_x: list[np.ndarray] = field(default_factory=list)
    bad_order_logged: bool = False
    raw_stamps: bool = False  # dejitter given up for this stream (its stamps cannot be fitted)
    raw_hist: deque[tuple[np.ndarray, np.ndarray]] = field(default_factory=lambda: deque(maxlen=48))
    #: |dejittered - received| (s) of the last DEV_WINDOW dejittered samples, a ring
    dev: np.ndarray = field(default_factory=lambda: np.zeros(DEV_WINDOW))
    n_dev: int = 0  # samples ever written to `dev`

    def flush(self) -> float:
        """Move the waiting samples through the StreamSync; returns max |dejittered - raw| (s)."""
        if not self.pend_t:
            return 0.0
        t = np.concatenate(self.pend_t) if len(self.pend_t) > 1 else self.pend_t[0]
        x = np.concatenate(self.pend_x) if len(self.pend_x) > 1 else self.pend_x[0]
        self.pend_t, self.pend_x = [], []
        out, _ = self.sync.push(t, x)
        if not isinstance(self.sync, StreamSync) or not len(out):
            return 0.0
        self.raw_hist.append((t, x))  # to re-seed the buffer if dejitter is given up
        d = np.abs(out - t[-len(out) :])[-DEV_WINDOW:]
        pos = (self.n_dev + np.arange(len(d))) % DEV_WINDOW
        self.dev[pos] = d
        self.n_dev += len(d)
        worst = float(np.fmax.reduce(d))  # NaN stamps (invalid) are no deviation
        return worst if worst == worst else 0.0

    def typical_dev(self) -> float:
        """Median |dejittered - raw| (s) over the recent window; 0 until it is half full."""
        if self.n_dev < DEV_WINDOW // 2:
            return 0.0
        d = self.dev[: min(self.n_dev, DEV_WINDOW)]
        d = d[np.isfinite(d)]
        return float(np.median(d)) if len(d) else 0.0

    @property
    def watermark(self) -> float:
        """Newest sample time as the ticks will see it (after dejitter)."""
        return self.sync.watermark


@dataclass
class _Subject:
    id: str
    imu: dict[str, _Stream]
    video: dict[str, _Stream]
    expected_segments: np.ndarray  # (13,) bool: segments with a configured stream
    k_next: int | None = None
    first_seen: float | None = None
    last_tick: float = -math.inf
    last_trace: Trace | None = None
    ticks: int = 0
    masked: dict[str, int] = field(default_factory=lambda: {"imu": 0, "video": 0})
    flushed_for: int | None = None  # the tick whose data was dejittered ahead of its time
    partial: tuple[int, float] | None = None  # (tick, when some streams had completed it)


class Sync(Stage):
    stage = "sync"
    idle_s = 0.05  # longest sleep; the max-wait and staleness deadlines wake it (wait_s)

    def __init__(
        self,
        subjects: list[SubjectConfig],
        inference: Any = None,
        metrics: Any = None,
        *,
        cfg: SyncConfig | None = None,
        rate_hz: float = 60.0,
        imu_rate_hint: float = 0.0,
        max_behind_s: float = 1.0,
        max_depth: int = 64,
        flush_s: float = 0.25,
    ) -> None:
        super().__init__(metrics=metrics, max_depth=max_depth, flush_s=flush_s)
        self.cfg = cfg or SyncConfig()
        self.inference = inference
        self.rate = float(rate_hz)
        self.max_wait = self.cfg.max_wait_ms / 1e3
        self.peer_wait = self.cfg.peer_wait_ms / 1e3
        self.max_gap = self.cfg.imu_max_gap_ms / 1e3
        self.tol = self.cfg.video_tolerance_ms / 1e3
        self.stale = self.cfg.stale_after_ms / 1e3
        self.max_behind_ticks = max(1, int(max_behind_s * self.rate))
        self.wait_for = set(self.cfg.wait_for)
        # causal: how old the newest IMU sample may be when a tick takes it (None: interpolate)
        self.hold = self.cfg.max_hold_ms / 1e3 if self.cfg.causal else None
        self.dejitter_max_dev = 0.005  # s: typical dejitter deviation tolerated, see _flush_imu
        # raw stamps jitter around the dejittered ones: a stream whose raw watermark is this
        # close below a tick may already let it out (see _ready_ticks)
        self.raw_slack_s = RAW_JITTER_S if self.event_driven else 0.0
        if not self.event_driven:
            self.idle_s = 0.004  # the timer-driven runtime polled for max_wait
        self.subjects: dict[str, _Subject] = {}
        for subj in subjects:
            imu: dict[str, _Stream] = {}
            expected = np.zeros(len(SEGMENTS), bool)
            for seg, stream in subj.imu.items():
                if stream is None:
                    continue
                label = stream.label(seg)
                segs = stream.segments or [seg]
                for s in segs:
                    expected[SEGMENT_INDEX[s]] = True
                if label not in imu:
                    imu[label] = _Stream(
                        label,
                        "imu",
                        [SEGMENT_INDEX[s] for s in segs],
                        self._imu_sync(imu_rate_hint),
                    )
            video = {
                cam.camera: _Stream(
                    cam.camera,
                    "video",
                    [i],
                    RawBuffer(0.0),
                )
                for i, cam in enumerate(subj.cameras)
            }
            self.subjects[subj.id] = _Subject(subj.id, imu, video, expected)
        self.emitted = 0
        self._judged_at = -math.inf  # the clock the last step judged the deadlines by

    def _flush_imu(self, subj: _Subject, st: _Stream) -> None:
        """Dejitter a stream's new samples, and give up dejittering a stream it cannot fit.

        fusion.dejitter puts each sample on its stream's grid, lost samples included (a loss is
        a whole number of periods). Where the stamps jitter too much to tell a loss from a late
        sample, a loss is not re-indexed and the dejittered stamps run off the truth; raw
        stamps are the better guess there. So when the *median* |dejittered − received| over
        the last DEV_WINDOW samples exceeds `dejitter_max_dev`, the stream falls back to its
        received (time-corrected) stamps for good: logged once and counted. A median, not the
        largest deviation: a loss the dejitter has not yet confirmed leaves a few samples a
        period off (seen: 3 samples 10 ms early after a loss in the first 0.3 s), and judging
        on those would switch a well-fitted stream to its jittery raw stamps depending on how
        its packets happened to be chunked — so a live run and its replay could differ.
        """
        dev = st.flush()
        if st.raw_stamps or dev <= self.dejitter_max_dev:
            return
        typical = st.typical_dev()
        if typical <= self.dejitter_max_dev:
            return  # a few samples off while a loss is confirmed: the fit is fine
        st.raw_stamps = True
        self.buf.inc("bad_input", (st.label, "dejitter_drift"))
        log.warning(
            "IMU stream '%s' (subject %s): dejittered timestamps are %.1f ms (median of the "
            "last %d samples; up to %.1f ms) from the received ones: too irregular to fit; "
            "using its received timestamps from now on",
            st.label,
            subj.id,
            typical * 1e3,
            DEV_WINDOW,
            dev * 1e3,
        )
        st.sync = RawBuffer(st.sync.nominal_srate)
        if st.raw_hist:  # the recent samples again, on their received stamps: no gap
            t_raw = np.concatenate([c[0] for c in st.raw_hist])
            x_raw = np.concatenate([c[1] for c in st.raw_hist])
            keep = np.concatenate(([True], np.diff(t_raw) > 0))
            st.sync.push(t_raw[keep], x_raw[keep])
        st.raw_hist.clear()

    def _imu_sync(self, rate: float) -> StreamSync | RawBuffer:
        if not self.cfg.dejitter or rate <= 0:
            return RawBuffer(rate)
        return StreamSync(rate, clock_sync=False, buffer_s=1.0)

    # ------------------------------------------------------------------ input

    def step(self, messages: list[Any]) -> None:
        for msg in messages:
            if isinstance(msg, ImuMsg):
                self._take_imu(msg)
            elif isinstance(msg, KeypointsMsg):
                self._take_keypoints(msg)
        self._emit(pylsl.local_clock())

    def _stream(self, subject: str, label: str, kind: str) -> tuple[_Subject, _Stream] | None:
        subj = self.subjects.get(subject)
        if subj is None:
            return None
        table = subj.imu if kind == "imu" else subj.video
        st = table.get(label)
        return None if st is None else (subj, st)

    def _take_imu(self, msg: ImuMsg) -> None:
        for part in msg.parts:
            found = self._stream(part.subject, part.stream, "imu")
            if found is None:
                continue
            subj, st = found
            if st.sync.nominal_srate == 0 and part.rate > 0 and not len(st.sync.buffered()[0]):
                # learn the nominal rate from the stream header on first contact
                st.sync = self._imu_sync(part.rate)
            # one row per sample: (N, n_segments * 6) keeps multi-sensor streams aligned
            n = len(part.t)
            values = part.data.reshape(n, len(part.segments), 6)
            self._accept(subj, st, part.t, values, part.received, "imu")
            subj.last_trace = self._later(subj.last_trace, msg.trace)

    def _take_keypoints(self, msg: KeypointsMsg) -> None:
        for part in msg.parts:
            found = self._stream(part.subject, part.camera, "video")
            if found is None:
                continue
            subj, st = found
            order = np.argsort(part.t, kind="stable")
            self._accept(subj, st, part.t[order], part.joints[order], part.received, "video")
            if "video" in self.wait_for:
                subj.last_trace = self._later(subj.last_trace, msg.trace)

    @staticmethod
    def _later(a: Trace | None, b: Trace) -> Trace:
        return b if a is None or b.last() >= a.last() else a

    def _accept(
        self, subj: _Subject, st: _Stream, t: np.ndarray, x: np.ndarray, received: float, kind: str
    ) -> None:
        if not len(t):
            return
        before = st.raw_watermark
        # a chunk that starts before what was received is out of order: keep the new part only
        if t[0] <= before - (0.5 / self.rate):
            keep = t > before
            n_old = int(len(t) - keep.sum())
            self.buf.inc("bad_input", (st.label, "out_of_order"), n_old)
            if not st.bad_order_logged:
                st.bad_order_logged = True
                log.warning(
                    "stream '%s' (subject %s): %d sample(s) older than already received; "
                    "dropped (counted)",
                    st.label,
                    subj.id,
                    n_old,
                )
            t, x = t[keep], x[keep]
            if not len(t):
                return
        # late: a sample for a tick already out. Raw stamps jitter around the grid the ticks
        # were judged on: causally the sample just after a tick may be stamped a little
        # before it (counted 6 % of all samples late before this allowance)
        margin = self.tol if kind == "video" else (RAW_JITTER_S if self.hold is not None else 0.0)
        late = int(np.count_nonzero(t < subj.last_tick - margin))
        if late:
            self.buf.inc("late", (subj.id, st.label), late)
        st.pend_t.append(t)
        st.pend_x.append(x)
        if len(st.pend_t) > 64:  # no tick for a while (nothing to wait for): keep memory bounded
            st.flush()
        st.raw_watermark = max(before, float(t[-1]))
        st.last_arrival = received

    # ------------------------------------------------------------------ output

    def _emit(self, now: float) -> None:
        self._judged_at = now
        batches: dict[str, SyncedBatch] = {}
        trace: Trace | None = None
        newest = -math.inf
        for subj in self.subjects.values():
            ticks = self._ready_ticks(subj, now)
            if ticks is None:
                continue
            batches[subj.id] = self._batch(subj, ticks)
            newest = max(newest, float(ticks[-1]))
            if subj.last_trace is not None and (
                trace is None or subj.last_trace.last() > trace.last()
            ):
                trace = subj.last_trace
        if not batches:
            return
        if trace is None:
            out = Trace(newest).stamp("ingest", newest)
        else:
            out = trace.rebase(newest)
            # a tick emitted on timeout was not completed by that chunk: charge the wait to sync
            out.stamps = [(s, max(t, newest)) for s, t in out.stamps]
        out.stamp("sync")
        self.emitted += sum(len(b.t) for b in batches.values())
        call(self.inference, "put", TickMsg(batches, out))

    def wait_s(self) -> float:
        """Sleep until the next moment a tick could go out without new data arriving.

        That is a subject's max wait running out for its next tick, or an awaited stream
        turning stale (it stops holding the watermark), or the first tick's grace period
        ending. Data arriving wakes the stage anyway (put).
        """
        if not self.event_driven:
            return self.idle_s
        now = pylsl.local_clock()
        times = []
        for subj in self.subjects.values():
            if subj.k_next is not None:
                due = subj.k_next / self.rate
                times.append(due + self.max_wait)
                if self.hold is not None and self._complete_by(subj, due):
                    times.append(due)  # causal: its data is in; it goes out on time
                if subj.partial is not None and subj.partial[0] == subj.k_next:
                    times.append(max(due, subj.partial[1] + self.peer_wait))
            elif subj.first_seen is not None:
                times.append(subj.first_seen + self.stale)
            times += [st.last_arrival + self.stale for st in self._streams_for(subj)]
        # a deadline the last step already judged cannot be helped but by data; one that
        # passed since (that step ran just before it, or took long) needs a step at once
        unjudged = [t for t in times if t > self._judged_at]
        if any(t <= now for t in unjudged):
            return 0.0
        future = [t - now for t in unjudged]
        return min(self.idle_s, max(min(future, default=self.idle_s), 0.0005))

    def _complete_by(self, subj: _Subject, due: float) -> bool:
        """Whether every awaited stream already has (raw) data that completes tick `due`."""
        marks = self._raw_marks(self._streams_for(subj))
        return bool(marks) and min(marks) >= due

    def _raw_marks(self, streams: list[_Stream]) -> list[float]:
        """How far each stream's received stamps complete ticks (the cheap pre-check)."""
        return [s.raw_watermark + self.raw_slack_s + self._lead(s) for s in streams]

    def _streams_for(self, subj: _Subject) -> list[_Stream]:
        out: list[_Stream] = []
        if "imu" in self.wait_for:
            out += subj.imu.values()
        if "video" in self.wait_for:
            out += subj.video.values()
        return out

    def _ready_ticks(self, subj: _Subject, now: float) -> np.ndarray | None:
        wait = self._streams_for(subj)
        live = [s for s in wait if now - s.last_arrival < self.stale]
        if subj.k_next is None and not self._first_tick(subj, wait, live, now):
            return None
        assert subj.k_next is not None
        # cheap test on raw stamps first; dejitter only when a tick may be due
        raw = self._raw_marks(live)
        released = self._peer_release(subj, raw, now)
        k_last = self._last_ready(subj.k_next, raw, now, released)
        if k_last < subj.k_next:
            ahead = self.hold is not None and raw and subj.flushed_for != subj.k_next
            if ahead and min(raw) >= subj.k_next / self.rate:
                # complete but not yet due: dejitter now rather than after the tick's time
                subj.flushed_for = subj.k_next
                self._flush(subj)
            return None
        self._flush(subj)
        marks = [s.watermark + self._lead(s) for s in live]
        released = max(released, self._peer_release(subj, marks, now))
        k_last = self._last_ready(subj.k_next, marks, now, released)
        if k_last < subj.k_next:
            return None
        n = k_last - subj.k_next + 1
        if n > self.max_behind_ticks:
            skipped = n - self.max_behind_ticks
            self.buf.inc("dropped", ("sync", "behind"), skipped)
            log.warning("sync: subject %s fell %d ticks behind; skipped them", subj.id, skipped)
            subj.k_next += skipped
        ticks = np.arange(subj.k_next, k_last + 1, dtype=np.float64) / self.rate
        subj.k_next = k_last + 1
        subj.last_tick = float(ticks[-1])
        return ticks

    def _flush(self, subj: _Subject) -> None:
        for st in subj.video.values():
            st.flush()
        for st in subj.imu.values():
            self._flush_imu(subj, st)

    def _lead(self, st: _Stream) -> float:
        """How far past a stream's newest sample its data is complete for a tick.

        Interpolating, a tick needs a sample at or after it (0). Causal, it needs only the
        newest sample at or before it: once a sample at w is in, nothing more before w + one
        period will come (streams arrive in order), so every tick before that is complete.
        """
        if self.hold is None or st.kind != "imu" or st.sync.nominal_srate <= 0:
            return 0.0
        return 1.0 / st.sync.nominal_srate - 1e-6

    def _first_tick(
        self, subj: _Subject, wait: list[_Stream], live: list[_Stream], now: float
    ) -> bool:
        """Pick the first tick, once every awaited stream has had a chance to show up.

        If none of the awaited streams ever arrives but others do (cameras without IMUs), the
        ticks start from those and go out on the max wait, the missing modality masked.
        """
        everything = (*subj.imu.values(), *subj.video.values())
        seen = live or [s for s in everything if now - s.last_arrival < self.stale]
        if not seen:
            subj.first_seen = None
            return False  # nothing arrived (yet): nothing to say
        if subj.first_seen is None:
            subj.first_seen = now
        if len(live) < len(wait) and now - subj.first_seen < self.stale:
            return False
        for st in seen:
            if st.kind == "imu":
                self._flush_imu(subj, st)
            else:
                st.flush()
        subj.k_next = math.floor(min(s.watermark for s in seen) * self.rate + 1e-9)
        return True

    def _last_ready(
        self, k_next: int, marks: list[float], now: float, released: float = -math.inf
    ) -> int:
        """Index of the newest tick the watermark (or the max wait) lets out.

        The max wait is for the streams that lag the others: a tick goes out masked once
        `max_wait` has passed *and* some live stream has data past it. When every stream lags
        alike (the sources or the machine are late, not one sensor), ticks wait for the data
        instead of going out empty; `stale_after` bounds that wait, as then the streams stop
        counting as live and the max wait applies from the clock alone. `released` (a tick
        time) is let out as if its max wait had passed: see _peer_release.
        """
        if not marks:
            limit = now - self.max_wait
        else:
            late = max(now - self.max_wait, min(released, now))
            limit = max(min(min(marks), now), min(late, max(marks)))
        return math.floor(limit * self.rate + 1e-9)

    def _peer_release(self, subj: _Subject, marks: list[float], now: float) -> float:
        """The next tick's time once its peers are `peer_wait` past completing it (else -inf).

        Why: the sensors of a subject arrive together (one hub, one push), so when the others
        have delivered a tick's samples and one stream has not for `peer_wait` more (the
        ingest already waited for it), its sample was lost: waiting the full `max_wait`
        for the next one only delays the tick (the lost stream's older sample is held).
        """
        assert subj.k_next is not None
        due = subj.k_next / self.rate
        if not marks or min(marks) >= due or max(marks) < due:
            return -math.inf  # complete, or nobody is there yet
        if subj.partial is None or subj.partial[0] != subj.k_next:
            subj.partial = (subj.k_next, min(now, self._completed_at(subj, due)))
        return due if now - subj.partial[1] >= self.peer_wait else -math.inf

    def _completed_at(self, subj: _Subject, due: float) -> float:
        """When the streams that complete tick `due` had arrived (their newest packet).

        The peer wait counts from there, not from when this stage saw them: the IMU ingest
        already held their round `peer_wait` for the missing packet before sending it.
        """
        streams = self._streams_for(subj)
        marks = self._raw_marks(streams)
        done = [s.last_arrival for s, m in zip(streams, marks, strict=True) if m >= due]
        return max(done, default=math.inf)

    @staticmethod
    def _recent(st: _Stream, since: float) -> tuple[np.ndarray, np.ndarray]:
        """The buffered samples from the one before `since` on (aligning 2 s costs 10x more)."""
        bt, bx = st.sync.buffered()
        if not len(bt):
            return bt, bx
        i = max(0, int(np.searchsorted(bt, since, side="right")) - 1)
        return bt[i:], bx[i:]

    def _batch(self, subj: _Subject, ticks: np.ndarray) -> SyncedBatch:
        n = len(ticks)
        imu = np.full((n, len(SEGMENTS), 6), np.nan)
        imu_mask = np.zeros((n, len(SEGMENTS)), bool)
        # every sensor of every stream in one stacked pass (a multi-sensor stream: one row per
        # sensor, so a NaN in one sensor masks only that sensor)
        ts: list[np.ndarray] = []
        xs: list[np.ndarray] = []
        idx: list[int] = []
        since = ticks[0] - (self.max_gap if self.hold is None else self.hold)
        for st in subj.imu.values():
            bt, bx = self._recent(st, since)
            if not len(bt):
                continue
            bx = bx.reshape(len(bt), len(st.index), 6)
            for j, seg in enumerate(st.index):
                ts.append(bt)
                xs.append(bx[:, j])
                idx.append(seg)
        if idx:
            vals, m = interp_rows(ts, xs, ticks, self.max_gap, self.hold)
            imu[:, idx] = vals.transpose(1, 0, 2)
            imu_mask[:, idx] = m.T
        n_cam = len(subj.video)
        kp = np.full((n, n_cam, len(KEYPOINTS), 3), np.nan)
        kp_mask = np.zeros((n, n_cam), bool)
        ts, xs, idx = [], [], []
        for st in subj.video.values():
            bt, bx = self._recent(st, ticks[0] - self.tol)
            if len(bt):
                ts.append(bt)
                xs.append(bx.reshape(len(bt), -1))
                idx.append(st.index[0])
        if idx:
            vals, m = nearest_rows(ts, xs, ticks, self.tol)
            kp[:, idx] = vals.transpose(1, 0, 2).reshape(n, len(idx), len(KEYPOINTS), 3)
            kp_mask[:, idx] = m.T
        missing_imu = int(np.count_nonzero((~imu_mask[:, subj.expected_segments]).any(axis=1)))
        if missing_imu:
            self.buf.inc("masked", (subj.id, "imu"), missing_imu)
            subj.masked["imu"] += missing_imu
        if n_cam:
            missing_video = int(np.count_nonzero((~kp_mask).any(axis=1)))
            if missing_video:
                self.buf.inc("masked", (subj.id, "video"), missing_video)
                subj.masked["video"] += missing_video
        subj.ticks += n
        return SyncedBatch(t=ticks, imu=imu, imu_mask=imu_mask, keypoints=kp, keypoint_mask=kp_mask)

    def summary(self) -> dict[str, Any]:
        return {
            "dropped": self.dropped,
            "ticks": {s.id: s.ticks for s in self.subjects.values()},
            "masked": {s.id: dict(s.masked) for s in self.subjects.values()},
        }
