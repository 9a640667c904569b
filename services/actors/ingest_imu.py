"""IMU ingest: one actor owns every IMU inlet of every subject and pulls them all.

One actor (not one per sensor) because a Ray call costs ~0.7 ms and a process per sensor would
swamp two cores: each pass pulls all inlets (drivers.lsl_inlets.ImuInlet: units, channel
mapping, time correction, non-finite samples removed and counted) and sends everything new as
one message to the sync stage: one per round of packets, and only once the round lets a new
model tick out (see `_advances_a_tick`).

Event-driven: the worker does not poll on a timer; it blocks in liblsl (GIL released) on the
stream whose packet the round still lacks and wakes the moment it lands, so a round leaves
within microseconds of its last packet (GAIT_STREAM_WAKE=timer brings back the 2 ms poll).

What it handles beyond the inlet:
- streams not found at start, or with a wrong channel layout, are logged once with the stream
  named and counted (bad_input{reason=not_found|format}); missing ones are looked for again in
  the background; the other streams run meanwhile;
- a clock jump: timestamps suddenly more than `clock_jump_s` away from the local clock at
  arrival (a device clock reset that time correction cannot see, e.g. a sender that stamps
  with its own counter). The stream is re-anchored to arrival time, logged and counted
  (bad_input{reason=clock_jump}); the sync stage's dejitter then smooths from there.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.lsl_inlets import ImuInlet, StreamFormatError, local_clock
from drivers.selectors import StreamSelector, resolve
from services.actors.messages import ImuMsg, ImuPart
from services.actors.stage import Stage, call, recent_ms
from services.config import SubjectConfig
from services.trace import Trace

__all__ = ["ImuIngest", "ImuSource", "imu_sources"]

log = logging.getLogger(__name__)

STAT_REASONS = {"bad_nonfinite": "nonfinite", "lost": "lost"}


@dataclass
class ImuSource:
    """One configured IMU stream of one subject."""

    subject: str
    selector: StreamSelector
    segments: tuple[str, ...]
    label: str  # metrics/log name of the stream
    inlet: ImuInlet | None = None
    failed: str | None = None  # why it is not running (logged once)
    correction: float = 0.0  # added to timestamps after a clock jump
    stats_seen: dict[str, int] = field(default_factory=dict)
    last_arrival: float | None = None
    next_poll: float = 0.0  # local clock before which polling is pointless
    newest: float = -math.inf  # newest sample time delivered
    fresh: bool = False  # delivered since the last message to sync
    logged: set[str] = field(default_factory=set)
    uncounted: int = 0  # samples not yet added to the input metric (added at flush)


def imu_sources(subjects: list[SubjectConfig]) -> list[ImuSource]:
    """The distinct IMU streams the config names (a multi-sensor stream once)."""
    out: list[ImuSource] = []
    for subj in subjects:
        seen: set[StreamSelector] = set()
        for seg, stream in subj.imu.items():
            if stream is None:
                continue
            sel = StreamSelector(stream.name, stream.type, stream.source_id)
            if sel in seen:
                continue
            seen.add(sel)
            segs = tuple(stream.segments or [seg])
            label = stream.label(seg)
            out.append(ImuSource(subj.id, sel, segs, label))
    return out


class ImuIngest(Stage):
    stage = "ingest"
    idle_s = 0.0  # the worker waits in liblsl for the next packet (step), not on a timer

    def __init__(
        self,
        subjects: list[SubjectConfig],
        sync: Any = None,
        metrics: Any = None,
        *,
        resolve_timeout_s: float = 3.0,
        clock_jump_s: float = 1.0,
        retry_s: float = 2.0,
        max_backlog_s: float = 0.5,
        lost_after_s: float = 1.0,
        hold_s: float = 0.004,  # a round's wait for a stream's packet (sync.peer_wait_ms)
        tick_rate: float = 60.0,
        flush_s: float = 0.25,
        causal: bool = False,
    ) -> None:
        super().__init__(metrics=metrics, flush_s=flush_s)
        self.sync = sync
        self.sources = imu_sources(subjects)
        self.resolve_timeout_s = resolve_timeout_s
        self.clock_jump_s = clock_jump_s
        self.retry_s = retry_s
        self.max_backlog_s = max_backlog_s
        self.lost_after_s = lost_after_s
        self._lock = threading.Lock()
        self._retry_thread: threading.Thread | None = None
        self._next_retry = 0.0
        self.samples = 0
        self.hold_s = hold_s
        self.poll_skip = 0.8  # of a period after a delivery, the next poll
        self.stale_s = 0.25
        self._parts: list[ImuPart] = []
        self._newest_held = -math.inf  # newest sample time among the held parts
        self._first_part: float | None = None
        self.tick_rate = tick_rate
        #: the sync's causal rule: tick t is complete once every stream has a sample within
        #: one period before it, so a stream's data counts up to newest + 1/rate
        self.causal = bool(causal)
        self.max_defer_s = 0.015
        self._held_since = math.inf
        self._sent_tick = -(2**62)
        self.raw_slack_s = 0.002 if self.event_driven else 0.0  # see _advances_a_tick
        self.blocking = False  # the worker waits on the inlets (start()); direct step() polls
        self.max_block_s = 0.05  # longest single wait in liblsl (stop() is seen within it)
        self._last_src: ImuSource | None = None
        self._laggard: ImuSource | None = None
        # per round sent: its newest sample's age when it left (transport, lab and wake-up
        # delays; the wait for the sample after a tick is not in it), for status()
        self._ages: deque[float] = deque(maxlen=2000)

    # ------------------------------------------------------------------ opening

    def open(self) -> dict[str, Any]:
        """Resolve and open every stream (in parallel); returns which are up and which not."""
        self._open(self.sources, self.resolve_timeout_s)
        self._next_retry = time.monotonic() + self.retry_s
        return self.streams()

    def streams(self) -> dict[str, Any]:
        """Which configured streams are open, and why the others are not."""
        return {
            "up": [s.label for s in self.sources if s.inlet is not None],
            "missing": {s.label: s.failed for s in self.sources if s.inlet is None},
        }

    def _open(self, sources: list[ImuSource], timeout: float) -> None:
        if not sources:
            return
        found = resolve([s.selector for s in sources], timeout, minimum=len(sources))
        ready: list[tuple[ImuSource, ImuInlet]] = []
        for src in sources:
            infos = found.get(src.selector, [])
            if not infos:
                self._fail(
                    src, "not_found", f"not found on the network ({src.selector.describe()})"
                )
                continue
            if len(infos) > 1:
                self._log_once(
                    src,
                    "ambiguous",
                    f"{len(infos)} streams match {src.selector.describe()}; using the newest",
                )
            info = max(infos, key=lambda i: i.created_at())
            try:
                inlet = ImuInlet(
                    info,
                    list(src.segments),
                    max_backlog_s=self.max_backlog_s,
                    lost_after_s=self.lost_after_s,
                    label=src.label,
                )
            except (StreamFormatError, ValueError) as exc:
                self._fail(src, "format", str(exc))
                continue
            ready.append((src, inlet))
        if not ready:
            return

        def open_one(
            pair: tuple[ImuSource, ImuInlet],
        ) -> tuple[ImuSource, ImuInlet, Exception | None]:
            src, inlet = pair
            try:
                inlet.open(timeout=max(timeout, 2.0))
            except Exception as exc:  # StreamFormatError, TimeoutError, liblsl errors
                return src, inlet, exc
            return src, inlet, None

        # first time_correction is ~0.6 s per inlet: open them all at once
        with ThreadPoolExecutor(max_workers=min(32, len(ready))) as pool:
            results = list(pool.map(open_one, ready))
        for src, inlet, exc in results:
            if exc is not None:
                reason = "format" if isinstance(exc, StreamFormatError) else "open_failed"
                self._fail(src, reason, str(exc))
                continue
            with self._lock:
                src.inlet = inlet
                src.failed = None
                src.stats_seen = {}
                src.last_arrival = local_clock()
            if src.logged:
                log.info("IMU stream '%s' (subject %s) is up", src.label, src.subject)
            self.buf.set("stream_up", (src.subject, src.label), 1)

    def _fail(self, src: ImuSource, reason: str, text: str) -> None:
        if src.failed != reason:  # count transitions, not every retry
            self.buf.inc("bad_input", (src.label, reason))
        src.failed = reason
        self.buf.set("stream_up", (src.subject, src.label), 0)
        self._log_once(src, reason, text + "; the pipeline runs without it and keeps looking")

    def _log_once(self, src: ImuSource, key: str, text: str) -> None:
        if key in src.logged:
            return
        src.logged.add(key)
        log.warning("IMU stream '%s' (subject %s): %s", src.label, src.subject, text)

    def _retry_missing(self) -> None:
        """Look for missing streams again, in a thread so pulling never waits on it."""
        now = time.monotonic()
        if now < self._next_retry or (self._retry_thread and self._retry_thread.is_alive()):
            return
        missing = [s for s in self.sources if s.inlet is None and s.failed != "format"]
        self._next_retry = now + self.retry_s
        if not missing:
            return
        self._retry_thread = threading.Thread(
            target=self._open, args=(missing, 0.5), name="imu-resolve", daemon=True
        )
        self._retry_thread.start()

    # ------------------------------------------------------------------ pulling

    def start(self) -> bool:
        """Run the worker event-driven: it blocks on the inlets instead of a polling timer."""
        self.blocking = self.event_driven
        return super().start()

    def wait_s(self) -> float:
        # event-driven: step() itself waits in liblsl; timer mode: poll every 2 ms
        return 0.0 if self.blocking else 0.002

    def step(self, messages: list[Any]) -> None:
        """Pull what arrived; in the worker also wait (in liblsl) for the round's next packet.

        Called directly (tests) it only polls. In the worker (`blocking`) one step is one
        wait: on a stream whose packet the round still lacks (the one that came last the
        previous round first), bounded by the hold and flush timers, so a round goes out the
        moment its last packet lands instead of at the next tick of a poll timer.
        """
        self._retry_missing()
        with self._lock:
            active = [s for s in self.sources if s.inlet is not None]
        now = local_clock()
        self._pull_ready(active, now)
        if self._finish_round(active, now) or not self.blocking:
            return
        target, timeout = self._next_wait(active, now)
        if target is None:
            with self._cv:  # nothing to block on (no stream up): sleep; stop() wakes it
                if self._running:
                    self._cv.wait(timeout)
            return
        self._pull_source(target, now, timeout)
        now = local_clock()
        self._pull_ready(active, now)
        self._finish_round(active, now)

    def _pull_ready(self, active: list[ImuSource], now: float) -> None:
        """Non-blocking pull of every stream that may have something new.

        A stream the round still lacks is always asked (an empty non-blocking pull costs ~2 µs
        and keeps the GIL); one that delivered this round is skipped until ~its next period.
        """
        for src in active:
            if src.fresh and now < src.next_poll:
                continue  # delivered a moment ago: nothing new before ~its next period
            self._pull_source(src, now)

    def _pull_source(self, src: ImuSource, now: float, timeout: float = 0.0) -> None:
        """Pull one stream (waiting up to `timeout` for its first sample) and keep the part."""
        inlet = src.inlet
        if inlet is None:
            return
        try:
            chunk = inlet.pull(timeout)
        except StreamFormatError as exc:  # came back with another layout
            inlet.close()
            src.inlet = None
            self._fail(src, "format", str(exc))
            return
        except Exception as exc:
            self.log_error(f"pull {src.label}", exc)
            return
        if chunk is None:
            return
        if timeout > 0:
            now = local_clock()  # it arrived now, not when the wait began
        t = self._check_clock(src, chunk.timestamps, now)
        rate = inlet.rate
        src.last_arrival = now
        if rate > 0:
            src.next_poll = now + self.poll_skip / rate
        src.fresh = True
        last = float(t[-1])
        if last > src.newest:
            src.newest = last
        if last > self._newest_held:
            self._newest_held = last
        n = len(t)
        self.samples += n
        src.uncounted += n
        self._parts.append(
            ImuPart(src.subject, src.label, chunk.segments, t, chunk.data, rate, now)
        )
        self._last_src = src
        if self._first_part is None:
            self._first_part = now
        if self._held_since == math.inf:
            self._held_since = now

    def _finish_round(self, active: list[ImuSource], now: float) -> bool:
        """Send (or hold) a complete round; True when a round was closed."""
        if not (self._parts and self._round_complete(active, now)):
            return False
        self._laggard = self._last_src
        if self._advances_a_tick(active, now):
            self._send()
        else:  # nothing the sync could emit yet: ride along with the next round
            for src in self.sources:
                src.fresh = False
            self._first_part = None  # the next round's hold starts with its first packet
        return True

    def _live(self, src: ImuSource, now: float) -> bool:
        return src.last_arrival is not None and now - src.last_arrival < self.stale_s

    def _next_wait(self, active: list[ImuSource], now: float) -> tuple[ImuSource | None, float]:
        """Which stream to block on, and for how long at most.

        A packet the round still lacks is waited for (the stream that completed the last
        round first: it is usually the last to arrive again); between rounds any live stream
        will do. The wait ends at the latest when the hold or defer time of what is held runs
        out, or when the metrics flush or the search for missing streams is due.
        """
        timeout = self.max_block_s
        if self._first_part is not None:
            timeout = min(timeout, self._first_part + self.hold_s - now)
        if self._held_since != math.inf:
            timeout = min(timeout, self._held_since + self.max_defer_s - now)
        mono = time.monotonic()
        timeout = min(timeout, self._last_flush + self.flush_s - mono)
        if self._next_retry > mono and any(
            s.inlet is None and s.failed != "format" for s in self.sources
        ):  # (past it while a search still runs: that search's end is not worth a wake-up)
            timeout = min(timeout, self._next_retry - mono)
        timeout = max(timeout, 1e-4)
        waitable = [s for s in active if s.inlet is not None and s.inlet.can_wait]
        due = [s for s in waitable if not s.fresh and self._live(s, now)]
        if not due:  # between rounds, or nothing live: any stream's next packet
            due = [s for s in waitable if not s.fresh] or waitable
        if not due:
            return None, timeout
        lag = self._laggard
        return (lag if any(s is lag for s in due) else due[-1]), timeout

    def _advances_a_tick(self, active: list[ImuSource], now: float) -> bool:
        """Whether what is held lets the sync stage emit a new model tick.

        IMU rounds come at 100 Hz, ticks at 60 Hz: two rounds in five complete no new tick,
        and holding them for the next round costs no latency but saves 40 % of the Ray calls.
        A round held longer than `max_defer_s` goes out anyway (the sync's max-wait timer
        needs to see what did arrive).

        A live stream still missing when the round's hold ran out lost its packet (or is
        late): it does not hold the watermark here. The sync stage lets its peers' tick out
        `peer_wait` after they arrived, holding that stream's older sample; deferring the
        round for it instead kept a tick waiting for the next round (10 ms) on every lost
        sample, the largest part of the end-to-end p99 (`gait-stream bench`).
        """
        if self.tick_rate <= 0 or now - self._held_since >= self.max_defer_s:
            return True
        stale = self.stale_s
        causal = self.causal
        held_out = self._first_part is not None and now - self._first_part >= self.hold_s
        watermark = math.inf
        for s in active:
            if s.last_arrival is None or now - s.last_arrival >= stale:
                continue
            if held_out and not s.fresh:
                continue  # missing from this round (lost): the sync's peer wait decides
            w = s.newest
            if causal and s.inlet is not None and s.inlet.rate > 0:
                w += 1.0 / s.inlet.rate - 1e-6  # (as the sync: strictly within one period)
            if w < watermark:
                watermark = w
        if not math.isfinite(watermark):
            return True  # a stream without data yet, or none live: no watermark to reason about
        # raw stamps jitter: a sample due right at a tick may be stamped a little before it,
        # and the sync stage's dejittered watermark can still let that tick out; but only
        # the strict watermark counts as sent, so if it did not, the next round goes at once
        k_loose = math.floor((watermark + self.raw_slack_s) * self.tick_rate + 1e-9)
        if k_loose > self._sent_tick:
            self._sent_tick = math.floor(watermark * self.tick_rate + 1e-9)
            return True
        return False

    def _round_complete(self, active: list[ImuSource], now: float) -> bool:
        """Every live stream delivered since the last send, or the hold time ran out.

        The sync stage needs the slowest stream before a tick can go out, so forwarding the
        first streams of a round early gains nothing; one message per round saves Ray calls.
        A round held back (`_advances_a_tick`) with no packet of the next one yet is not
        re-judged every `hold_s` (a wake-up for nothing), only once `max_defer_s` is up.
        """
        if self._first_part is None:
            return now - self._held_since >= self.max_defer_s
        if now - self._first_part >= self.hold_s:
            return True
        for src in active:
            if src.fresh:
                continue
            if src.last_arrival is not None and now - src.last_arrival < self.stale_s:
                return False  # a live stream whose packet of this round is still due
        return True

    def _send(self) -> None:
        self._held_since = math.inf
        newest = self._newest_held
        trace = Trace(origin=newest).stamp("ingest")
        self._ages.append(trace.last() - newest)
        call(self.sync, "put", ImuMsg.pack(self._parts, trace))
        self._parts = []
        self._newest_held = -math.inf
        self._first_part = None
        for src in self.sources:
            src.fresh = False

    def flush(self, force: bool = False) -> None:
        if force or time.monotonic() - self._last_flush >= self.flush_s:
            now = local_clock()
            with self._lock:
                active = [s for s in self.sources if s.inlet is not None]
            for src in self.sources:  # (counted per flush, not per packet: same totals)
                if src.uncounted:
                    self.buf.inc("input", (src.subject, src.label, "imu"), src.uncounted)
                    src.uncounted = 0
            for src in active:
                self._account(src, now)
        super().flush(force)

    def _check_clock(self, src: ImuSource, t: np.ndarray, now: float) -> np.ndarray:
        """Timestamps far from arrival time: re-anchor the stream (see module docstring)."""
        if src.correction:
            t = t + src.correction
        skew = float(t[-1]) - now
        if abs(skew) > self.clock_jump_s:
            src.correction -= skew
            t = t - skew
            self.buf.inc("bad_input", (src.label, "clock_jump"))
            log.warning(
                "IMU stream '%s' (subject %s): clock jump of %+.3f s (timestamps vs arrival); "
                "re-anchored to arrival time",
                src.label,
                src.subject,
                skew,
            )
        return t

    def _account(self, src: ImuSource, now: float) -> None:
        """Turn the inlet's counters into metrics (deltas) and its state into gauges."""
        inlet = src.inlet
        for key, value in inlet.stats.items():
            delta = value - src.stats_seen.get(key, 0)
            if delta <= 0:
                continue
            src.stats_seen[key] = value
            if key == "bad_nonfinite":
                self.buf.inc("bad_input", (src.label, "nonfinite"), delta)
                self._log_once(
                    src,
                    "nonfinite",
                    f"{delta} sample(s) with NaN/inf dropped (counted from now on)",
                )
            elif key == "backlog_trimmed":
                self.buf.inc("dropped", ("ingest", "backlog"), delta)
            elif key == "lost":
                self.buf.inc("bad_input", (src.label, "lost"), delta)
        self.buf.set("stream_up", (src.subject, src.label), 1 if inlet.up else 0)
        if src.last_arrival is not None:
            self.buf.set("sample_age", (src.subject, src.label), max(0.0, now - src.last_arrival))

    def summary(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "samples": self.samples, **self.streams()}

    def status(self) -> dict[str, Any]:
        return {**super().status(), "sample_age_ms": recent_ms(self._ages)}

    def close(self) -> None:
        with self._lock:
            for src in self.sources:
                if src.inlet is not None:
                    try:
                        src.inlet.close()
                    except Exception as exc:
                        self.log_error("close", exc)
                    src.inlet = None
