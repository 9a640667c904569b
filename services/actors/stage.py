"""What every pipeline stage shares: a bounded inbox, a worker thread, batched metrics.

Why a worker thread: a Ray actor runs its methods one at a time, so a stage whose work ran
inside `put()` would make its callers queue up in Ray (unbounded, invisible). Here `put()` only
appends to a bounded deque and returns; the worker drains everything queued at once (natural
batching), and when the inbox is full the *oldest* message is dropped and counted, so a slow
stage loses data instead of making the pipeline fall behind.

Metrics are accumulated locally and sent to the metrics actor every `flush_s` (one Ray call
instead of one per sample).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any

from services.actors.metrics import MetricsBuffer

__all__ = [
    "GcPauses",
    "Inline",
    "Local",
    "Stage",
    "call",
    "event_driven",
    "inline_enabled",
    "recent_ms",
    "tune_process",
]

log = logging.getLogger(__name__)

#: GAIT_STREAM_WAKE=timer brings back the timer-driven runtime (ingest polling its inlets
#: every 2 ms, sync on a 4 ms timer, no process tuning) to compare against; default "event".
WAKE_ENV = "GAIT_STREAM_WAKE"


#: GAIT_STREAM_INLINE=0 hands ticks from the sync stage to a co-hosted inference and publish
#: stage through their inboxes and worker threads (as before) instead of on the sync's thread.
INLINE_ENV = "GAIT_STREAM_INLINE"

_current = threading.local()  # the stage whose step runs on this thread (CPU accounting)


def inline_enabled() -> bool:
    """Whether co-hosted downstream stages run on their caller's thread (default)."""
    mode = os.environ.get(INLINE_ENV, "1")
    if mode not in ("0", "1"):
        raise ValueError(f"{INLINE_ENV}={mode!r}: expected 0 or 1")
    return mode == "1"


def event_driven() -> bool:
    """Whether stages wake on data and deadlines (default) rather than on polling timers."""
    mode = os.environ.get(WAKE_ENV, "event")
    if mode not in ("event", "timer"):
        raise ValueError(f"{WAKE_ENV}={mode!r}: expected event or timer")
    return mode == "event"


class GcPauses:
    """Durations of this process's garbage collections (gc.callbacks), for status()."""

    def __init__(self) -> None:
        self.pauses: deque[tuple[int, float]] = deque(maxlen=5000)  # (generation, s)
        self.count = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = int(info.get("generation", 0))
            self.count[gen] += 1
            self.pauses.append((gen, time.perf_counter() - self._t0))

    def summary(self) -> dict[str, Any]:
        full = [d for g, d in self.pauses if g == 2]
        every = [d for _, d in self.pauses]
        return {
            "collections": list(self.count),
            "max_ms": round(max(every, default=0.0) * 1e3, 2),
            "gen2_max_ms": round(max(full, default=0.0) * 1e3, 2),
            "p99_ms": recent_ms(deque(every)).get("p99", 0.0),
        }


_tuned: dict[str, Any] = {}
_tune_lock = threading.Lock()


def tune_process(*, switch_interval_s: float | None = None) -> GcPauses:
    """Once per process, when the first stage starts: fewer and shorter pauses.

    - gc.freeze(): everything that exists once the actor is built (Ray, numpy, the
      estimator's tables: hundreds of thousands of objects) moves to the permanent generation,
      so a full collection no longer walks it (tens of ms on the data path).
    - Young collections less often (gen0 threshold 700 -> 5000): each is still well under a
      millisecond, and a tick allocates a few hundred objects.
    - sys.setswitchinterval(1 ms, default 5 ms): a stage thread woken by data (an inlet, a
      put) waits at most this long for the GIL while another stage computes.
    Timer mode (GAIT_STREAM_WAKE=timer) only records the pauses. Returns the recorder.
    """
    with _tune_lock:
        if "gc" in _tuned:
            return _tuned["gc"]
        rec = GcPauses()
        _tuned["gc"] = rec
        if event_driven():
            gc.collect()  # (before the recorder: a start-up pause, not one on the data path)
            gc.freeze()
            _, g1, g2 = gc.get_threshold()
            gc.set_threshold(5000, g1, g2)
            if switch_interval_s is None:
                ms = os.environ.get("GAIT_STREAM_SWITCH_INTERVAL_MS", "1")
                try:
                    switch_interval_s = float(ms) / 1e3
                except ValueError:
                    raise ValueError(
                        f"GAIT_STREAM_SWITCH_INTERVAL_MS={ms!r}: expected milliseconds"
                    ) from None
            sys.setswitchinterval(switch_interval_s)
        gc.callbacks.append(rec)
        return rec


class _LocalMethod:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


class Local:
    """Make a plain object look like a Ray actor handle (`obj.method.remote(...)`): tests."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self._obj, name))


class Inline(Local):
    """A co-hosted stage whose `put` runs its step on the caller's thread (`Stage.run_now`).

    Why: three worker threads handing each tick on (sync, inference, publish) each waited
    for the GIL behind the ingest threads; on the sync's thread the tick goes through in
    one stretch. A slow downstream then slows the sync, whose own bound (it skips ticks
    when it falls `max_behind_s` behind, counted) keeps the pipeline from falling behind.
    """

    def __getattr__(self, name: str) -> _LocalMethod:
        if name == "put":
            return _LocalMethod(self._obj.run_now)
        return super().__getattr__(name)


def call(handle: Any, method: str, *args: Any) -> None:
    """Fire-and-forget `handle.method.remote(*args)`; a missing downstream is allowed."""
    if handle is not None:
        getattr(handle, method).remote(*args)


def recent_ms(values: deque[float]) -> dict[str, float]:
    """p50/p99 in ms of recent durations (s), for status()."""
    if not values:
        return {}
    v = sorted(values)
    return {
        "p50": round(v[len(v) // 2] * 1e3, 2),
        "p99": round(v[min(len(v) - 1, int(len(v) * 0.99))] * 1e3, 2),
    }


class Stage:
    """Base of the pipeline stages; subclasses implement `step(messages)`."""

    stage = "stage"  # the {stage} label of the stage's metrics
    idle_s = 0.005  # longest sleep between steps when nothing arrives
    nice: int | None = None  # the worker thread's niceness (None: as the process's)

    def __init__(
        self,
        *,
        metrics: Any = None,
        max_depth: int = 32,
        flush_s: float = 0.25,
    ) -> None:
        self.metrics = metrics
        self.max_depth = int(max_depth)
        self.flush_s = float(flush_s)
        self.buf = MetricsBuffer()
        self._inbox: deque[Any] = deque()
        self._cv = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._last_flush = time.monotonic()
        self._errors: dict[str, float] = {}
        self.dropped = 0
        self.incarnation = uuid.uuid4().hex  # a new one when Ray restarts the actor
        # self-diagnosis (status()): inbox wait of the oldest message, and step durations
        self._oldest_put: float | None = None
        self._waits: deque[float] = deque(maxlen=2000)
        self._steps: deque[float] = deque(maxlen=2000)
        self._step_cpu: deque[float] = deque(maxlen=2000)
        self._thread_cpu_final = 0.0
        self._step_lock = threading.Lock()  # the worker and run_now never step at once
        self._inline_cpu = 0.0  # CPU of this stage's steps run on other stages' threads
        self._lent_cpu = 0.0  # CPU of other stages' steps run on this stage's thread
        self._gc: GcPauses | None = None
        self.event_driven = event_driven()

    # ------------------------------------------------------------------ actor API

    def put(self, msg: Any) -> None:
        """Queue a message; when `max_depth` are already waiting, drop the oldest."""
        with self._cv:
            if len(self._inbox) >= self.max_depth:
                self._inbox.popleft()
                self.dropped += 1
                self.buf.inc("dropped", (self.stage, "queue_full"))
            self._inbox.append(msg)
            if self._oldest_put is None:
                self._oldest_put = time.perf_counter()
            self._cv.notify()

    def connect(self, **handles: Any) -> bool:
        """Set the downstream handles (metrics, sync, inference, gait, publish).

        Not constructor arguments: Ray cannot restart an actor whose constructor arguments
        hold other actors' handles, so the pipeline (and its supervisor) wires them here.
        """
        for name, handle in handles.items():
            if name not in ("metrics", "sync", "inference", "gait", "publish"):
                raise ValueError(f"{self.stage}: unknown downstream {name!r}")
            setattr(self, name, handle)
        return True

    def start(self) -> bool:
        if self._thread is None:
            self._gc = tune_process()
            self._running = True
            self._thread = threading.Thread(target=self._loop, name=self.stage, daemon=True)
            self._thread.start()
        return True

    def stop(self) -> dict[str, Any]:
        """Stop the worker (after it finishes the current step), flush, release resources."""
        self._running = False
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.flush(force=True)  # while sockets and inlets are still there to report on
        try:
            self.close()
        finally:
            self.flush(force=True)
        return self.summary()

    def ping(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        """For the supervisor: which instance this is, and whether its worker runs."""
        alive = self._thread is not None and self._thread.is_alive()
        return {
            "incarnation": self.incarnation,
            "running": alive,
            "queued": len(self._inbox),
            "pid": os.getpid(),
            "inbox_wait_ms": recent_ms(self._waits),
            "step_ms": recent_ms(self._steps),
            "step_cpu_ms": recent_ms(self._step_cpu),
            "gc": self._gc.summary() if self._gc is not None else {},
        }

    def cpu(self) -> float:
        """CPU seconds this actor's process has used (for the bench)."""
        return time.process_time()

    def thread_cpu(self) -> float:
        """CPU seconds of this stage's steps (stages sharing a process, see host.py): its
        worker thread's, less what other stages' steps took on it (Inline), plus its own
        steps run on other threads."""
        return self._worker_cpu() - self._lent_cpu + self._inline_cpu

    def _worker_cpu(self) -> float:
        th = self._thread
        if th is None or th.ident is None or not th.is_alive():
            return self._thread_cpu_final
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(th.ident))
        except (OSError, AttributeError):
            return self._thread_cpu_final

    def run_now(self, msg: Any) -> None:
        """Step `msg` on the caller's thread (an upstream stage in this process: Inline)."""
        caller = getattr(_current, "stage", None)
        _current.stage = self
        c0 = time.thread_time()
        try:
            self._run([msg])
        finally:
            _current.stage = caller
            used = time.thread_time() - c0
            self._inline_cpu += used
            if caller is not None:
                caller._lent_cpu += used

    def summary(self) -> dict[str, Any]:
        return {"dropped": self.dropped}

    # ------------------------------------------------------------------ subclass API

    def step(self, messages: list[Any]) -> None:
        """Handle what arrived since the last step (may be empty: timers)."""

    def wait_s(self) -> float:
        """How long the worker may sleep when nothing arrives (a put wakes it at once).

        Subclasses with deadlines (the sync's max wait) return the time until the next one,
        so timers fire when due instead of on a polling period; at most `idle_s`.
        """
        return self.idle_s

    def close(self) -> None:
        """Release sockets/outlets; called once from stop()."""

    # ------------------------------------------------------------------ internals

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_flush < self.flush_s:
            return
        self._last_flush = now
        self.buf.set("queue_depth", (self.stage,), len(self._inbox))
        payload = self.buf.take()
        if payload and self.metrics is not None:
            payload["sender"] = self.incarnation  # rates are taken on each sender's own clock
            try:
                self.metrics.report.remote(payload)
            except Exception as exc:  # metrics must never stop the data path
                self.log_error("metrics", exc)

    def log_error(self, what: str, exc: BaseException) -> None:
        """Log a failure once per kind and minute (with a traceback the first time)."""
        key = f"{what}:{type(exc).__name__}"
        now = time.monotonic()
        last = self._errors.get(key)
        if last is None:
            log.exception("%s stage: %s failed: %s", self.stage, what, exc)
        elif now - last > 60.0:
            log.error("%s stage: %s failed again: %s", self.stage, what, exc)
        else:
            return
        self._errors[key] = now

    def _run(self, msgs: list[Any]) -> None:
        """One step, timed and guarded (an error drops and counts its messages), then flush."""
        with self._step_lock:
            t0 = time.perf_counter()
            c0 = time.thread_time()
            try:
                self.step(msgs)
            except Exception as exc:
                self.dropped += len(msgs)
                self.buf.inc("dropped", (self.stage, "error"), max(1, len(msgs)))
                self.log_error("step", exc)
            if msgs:
                self._steps.append(time.perf_counter() - t0)
                self._step_cpu.append(time.thread_time() - c0)
            self.flush()

    def _set_nice(self) -> None:
        """Give the worker thread its niceness (Linux: a thread's own; a lower value needs
        CAP_SYS_NICE, and without it the thread runs on as it was)."""
        if self.nice is None:
            return
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, self.nice)
        except OSError as exc:
            log.warning(
                "%s stage: cannot set its thread's niceness to %d (%s); it stays at %d",
                self.stage,
                self.nice,
                exc,
                os.getpriority(os.PRIO_PROCESS, tid),
            )

    def _loop(self) -> None:
        self._set_nice()
        while self._running:
            with self._cv:
                if not self._inbox:
                    wait = self.wait_s()
                    if wait > 0:
                        self._cv.wait(timeout=wait)
                msgs = list(self._inbox)
                self._inbox.clear()
                queued_at, self._oldest_put = self._oldest_put, None
            if not self._running:
                break
            if queued_at is not None:
                self._waits.append(time.perf_counter() - queued_at)
            _current.stage = self
            self._run(msgs)
        self._thread_cpu_final = time.thread_time()
