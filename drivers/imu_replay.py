"""Publish an IMU array (N samples × segments × 6) as live LSL IMU streams, one per segment.

This is how a recorded body-worn IMU set (drivers.qmt_fullbody, or any (N, 13, 6) array in
contract units) enters the pipeline exactly as live sensors would: one outlet per segment,
`<name_prefix>-<segment>`, type "IMU", channels gyr_x..acc_z labelled with rad/s and m/s^2 (the
same header as drivers.simlab's streams), float32 like real devices.

Timing: a background thread wakes every `push_period_s` (10 ms) and pushes every sample whose
time has come, each with an explicit timestamp `t_start + k / (rate * speed)` for the k-th
sample sent (looping continues k, so a loop has no gap and no repeated stamp). The stream's
nominal rate is `rate * speed`: with speed 4 a 100 Hz recording arrives as a 400 Hz stream, and
the header says so, so the consumer's dejittering and loss detection see a consistent stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import pylsl

from drivers.background import BackgroundWorker
from drivers.lsl_outlets import make_stream_info
from fusion.skeleton import IMU_CHANNELS, IMU_UNITS, SEGMENTS

__all__ = ["ImuArrayPublisher", "stream_names"]

log = logging.getLogger(__name__)

CHANNEL_TYPES = ("Gyroscope",) * 3 + ("Accelerometer",) * 3


def stream_names(prefix: str, segments: Sequence[str] = SEGMENTS) -> dict[str, str]:
    """segment -> `<prefix>-<segment>`: the names a config maps (configs/qmt_replay.yaml)."""
    return {seg: f"{prefix}-{seg}" for seg in segments}


class ImuArrayPublisher(BackgroundWorker):
    """Replays `data` (N, len(segments), 6) in real time; `start()`, then `join()`/`stop()`.

    Outlets exist from construction, so inlets can connect before the first sample. Progress
    (read from any thread): `sent` samples per stream, `position_s` within the recording,
    `passes` completed, `late_pushes` (a push that came more than one period late).
    """

    def __init__(
        self,
        data: np.ndarray,
        rate: float,
        name_prefix: str,
        source_prefix: str,
        segments: Sequence[str] = SEGMENTS,
        loop: bool = False,
        speed: float = 1.0,
        *,
        push_period_s: float = 0.01,
        subject: str | None = None,
    ) -> None:
        arr = np.asarray(data)
        segments = tuple(segments)
        if arr.ndim != 3 or arr.shape[1:] != (len(segments), len(IMU_CHANNELS)) or not len(arr):
            raise ValueError(
                f"IMU replay '{name_prefix}': data of shape {arr.shape}, expected "
                f"(N >= 1, {len(segments)}, {len(IMU_CHANNELS)}) for segments {list(segments)}"
            )
        unknown = [s for s in segments if s not in SEGMENTS]
        if unknown or len(set(segments)) != len(segments):
            raise ValueError(
                f"IMU replay '{name_prefix}': segments must be distinct names from "
                f"fusion.skeleton.SEGMENTS (unknown: {unknown})"
            )
        for what, value in (("rate", rate), ("speed", speed), ("push_period_s", push_period_s)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"IMU replay '{name_prefix}': {what} must be > 0, got {value}")
        # float32 on the wire; one contiguous block per stream so a push is a slice.
        self._data = np.ascontiguousarray(arr.astype(np.float32).transpose(1, 0, 2))
        self.rate = float(rate)
        self.speed = float(speed)
        self.loop = bool(loop)
        self.push_period_s = float(push_period_s)
        self.segments = segments
        self.n_samples = len(arr)
        self.stream_rate = self.rate * self.speed
        self.stream_names = stream_names(name_prefix, segments)
        self.source_ids = stream_names(source_prefix, segments)
        self._outlets: list[pylsl.StreamOutlet] | None = [
            pylsl.StreamOutlet(
                make_stream_info(
                    self.stream_names[seg],
                    "IMU",
                    IMU_CHANNELS,
                    IMU_UNITS,
                    self.stream_rate,
                    "float32",
                    self.source_ids[seg],
                    types=CHANNEL_TYPES,
                    subject=subject,
                ),
                chunk_size=0,
            )
            for seg in segments
        ]
        self.t_start = float("nan")
        self.sent = 0
        self.late_pushes = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ progress

    @property
    def duration_s(self) -> float:
        """Recording length in seconds of recording time (N / rate)."""
        return self.n_samples / self.rate

    @property
    def passes(self) -> int:
        """Complete passes through the data so far."""
        return self.sent // self.n_samples

    @property
    def position_s(self) -> float:
        """Recording time of the next sample to send, within the current pass."""
        if self.sent >= self.n_samples and not self.loop:
            return self.duration_s
        return (self.sent % self.n_samples) / self.rate

    @property
    def done(self) -> bool:
        """True once every sample has been sent (never with loop) or the replay stopped/failed."""
        thread = self._thread
        return thread is not None and not thread.is_alive()

    def timestamp(self, k: np.ndarray | int) -> np.ndarray | float:
        """The LSL time stamp of the k-th sample sent (k counts across loops)."""
        return self.t_start + np.asarray(k, dtype=np.float64) / self.stream_rate

    def wait_for_consumers(self, timeout: float) -> bool:
        """Wait until every outlet has an inlet (or the timeout); True if all have."""
        deadline = time.monotonic() + timeout
        outlets = self._outlets or []
        return all(o.wait_for_consumers(max(0.0, deadline - time.monotonic())) for o in outlets)

    # ------------------------------------------------------------------ running

    def start(self, t_start: float | None = None) -> ImuArrayPublisher:
        """Start the push thread; sample 0 is stamped `t_start` (default: now)."""
        if self._outlets is None:
            raise RuntimeError("IMU replay: start() after close()")
        if self._thread is not None:
            raise RuntimeError("IMU replay already started")
        self.t_start = pylsl.local_clock() if t_start is None else float(t_start)
        self._thread = threading.Thread(target=self._run_safe, name="imu-replay", daemon=True)
        self._thread.start()
        return self

    def _run_safe(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to whoever joins
            self.error = exc
            log.exception("IMU replay failed")

    def _run(self) -> None:
        total = None if self.loop else self.n_samples
        tick = 0
        while not self._stop.is_set():
            now = pylsl.local_clock()
            due = int(np.floor((now - self.t_start) * self.stream_rate)) + 1  # samples with t<=now
            if total is not None:
                due = min(due, total)
            if due > self.sent:
                if now - self.timestamp(self.sent) > self.push_period_s + 1.0 / self.stream_rate:
                    self.late_pushes += 1
                self._push(self.sent, due)
            if total is not None and self.sent >= total:
                return
            tick += 1
            wait = self.t_start + tick * self.push_period_s - pylsl.local_clock()
            if wait < 0:  # fell behind (a stall): realign the tick grid instead of bursting
                tick = int((pylsl.local_clock() - self.t_start) / self.push_period_s) + 1
                wait = self.t_start + tick * self.push_period_s - pylsl.local_clock()
            self._stop.wait(max(0.0, wait))

    def _push(self, k0: int, k1: int) -> None:
        ks = np.arange(k0, k1)
        rows = ks % self.n_samples
        stamps = self.timestamp(ks).tolist()
        with self._lock:
            if self._outlets is None:
                return
            if rows[0] + len(rows) <= self.n_samples:  # no wrap: a view
                chunks = self._data[:, rows[0] : rows[0] + len(rows)]
            else:
                chunks = self._data[:, rows]
            for outlet, chunk in zip(self._outlets, chunks, strict=True):
                outlet.push_chunk(chunk, stamps)
            self.sent = k1

    def _release(self) -> None:
        """Withdraw every stream."""
        with self._lock:
            self._outlets = None  # pylsl destroys each outlet with its last reference
