"""The simulated lab: fusion.synth's subjects published in real time over the real transports.

Per subject: 13 LSL IMU outlets (`<prefix>-s<k>-<segment>`, type IMU, one sensor per stream,
channels gyr_x..acc_z in rad/s and m/s^2), one ZeroMQ keypoint publisher per camera (camera id
`s<k>-cam<c>`, 2-D keypoints of fusion.skeleton.KEYPOINTS), a ground-truth LSL stream
`gait-stream-sim/truth` (type JointAnglesTruth, ANGLES in degrees, 60 Hz) and the true gait
events on `gait-stream-sim/events` (Markers), so tests and the bench can score the pipeline.

A thread pushes every `push_period_s` (10 ms: one IMU sample per stream at 100 Hz), right after
the newest sample's time, as a real IMU hub would. Timestamps are `local_clock()` at start plus
the sample's lab time plus Gaussian jitter (σ `jitter_s`, default 0.5 ms) on the sensor streams.

Clock offsets: LSL's time correction between two programs on one machine is ~0 (loopback,
same clock), so a remote sender's clock offset cannot be faked live here; offsets, drift and
clock resets are exercised offline (fusion.clock, XDF recordings). What *can* be done live is
break a stream: `pause_imu`/`resume_imu` (the stream disappears and comes back with the same
source id), `shift_clock` (its timestamps jump), `corrupt_imu` (NaN samples) — the hooks the
bad-input tests use.

CPU: the lab shares the machine with the pipeline it feeds (a real lab's sensors would not), so
a push costs one whole-array numpy pass per subject and one liblsl call per outlet
(drivers.lsl_outlets.ChunkPusher). The numeric outlets are synchronous (`sync_outlets`,
liblsl's transp_sync_blocking): a push writes to each consumer's socket in this thread instead
of waking one liblsl sender thread per outlet and consumer, about half the lab's CPU at 4
subjects with a consumer on every stream, same bytes on the wire. The price: a consumer that
stops reading without closing (a frozen process) blocks the lab once its socket buffer is full
(megabytes: many minutes of one IMU stream); a closed or killed consumer is dropped as before.
`sync_outlets=False` restores liblsl's buffered outlets.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pylsl

from drivers.lsl_outlets import ChunkPusher, make_stream_info
from drivers.zmq_transport import KeypointPublisher
from fusion.skeleton import ANGLES, IMU_CHANNELS, IMU_UNITS, KEYPOINTS, SEGMENTS
from fusion.synth import LabSpec, SubjectChunk, SyntheticLab

__all__ = ["KEYPOINT_LAYOUT", "TRUTH_EVENTS_NAME", "TRUTH_NAME", "SimulatedLab", "default_run_tag"]

log = logging.getLogger(__name__)

#: the GIL switch interval the lab's process runs at (see SimulatedLab.start)
PUSH_SWITCH_INTERVAL_S = 0.001
TRUTH_NAME = "gait-stream-sim/truth"
TRUTH_TYPE = "JointAnglesTruth"
TRUTH_EVENTS_NAME = "gait-stream-sim/events"
#: the `layout` field of the keypoint messages: fusion.skeleton.KEYPOINTS, 17 joints
KEYPOINT_LAYOUT = "gait-stream-17"


def default_run_tag() -> str:
    """Host and process: what makes this lab's source ids unique on the network."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class _ImuStream:
    subject: int
    segment: str
    info: pylsl.StreamInfo
    outlet: pylsl.StreamOutlet | None
    offset: float = 0.0  # added to timestamps (shift_clock)
    corrupt: int = 0  # next n samples become NaN
    pusher: ChunkPusher | None = None  # the outlet's fast push (None while paused)
    transport: int = 0  # liblsl transport flags of the outlet

    def open(self) -> None:
        self.outlet = pylsl.StreamOutlet(self.info, chunk_size=0, transport_flags=self.transport)
        self.pusher = ChunkPusher(self.outlet, self.info.name())

    def close(self) -> None:
        self.outlet = None
        self.pusher = None


@dataclass
class _Subject:
    index: int
    imu: list[_ImuStream]
    cameras: list[KeypointPublisher]
    truth: pylsl.StreamOutlet
    events: pylsl.StreamOutlet
    seq: list[int] = field(default_factory=list)
    truth_pusher: ChunkPusher | None = None

    @property
    def offsets(self) -> np.ndarray:
        """Each IMU stream's clock offset (s; shift_clock)."""
        return np.array([st.offset for st in self.imu], dtype=np.float64)

    @property
    def clean(self) -> bool:
        """Every IMU outlet open and none to corrupt: the push's fast path applies."""
        return all(st.pusher is not None and not st.corrupt for st in self.imu)


class SimulatedLab:
    """Start with `start()`; `stop()` (or the context manager) withdraws every stream."""

    def __init__(
        self,
        spec: LabSpec,
        imu_stream_prefix: str = "sim",
        zmq_endpoints: Mapping[str, str] | None = None,
        *,
        jitter_s: float = 0.0005,
        push_period_s: float = 0.01,
        run_tag: str | None = None,
        sync_outlets: bool = True,
    ) -> None:
        self.spec = spec
        self.prefix = imu_stream_prefix
        self.jitter_s = float(jitter_s)
        self.push_period_s = float(push_period_s)
        self.run_tag = run_tag or default_run_tag()
        self.sync_outlets = bool(sync_outlets)
        transport = pylsl.transp_sync_blocking if self.sync_outlets else pylsl.transp_default
        self.lab = SyntheticLab(spec)
        self.cameras = list(self.lab.cameras)
        self._rng = np.random.default_rng(spec.seed + 7919)
        endpoints = dict(zmq_endpoints or {})
        self.subjects: list[_Subject] = []
        for k in range(spec.subjects):
            sid = f"s{k}"
            imu = []
            for seg in SEGMENTS:
                name = f"{self.prefix}-{sid}-{seg}"
                info = make_stream_info(
                    name,
                    "IMU",
                    IMU_CHANNELS,
                    IMU_UNITS,
                    spec.imu_rate,
                    "float32",
                    f"{name}@{self.run_tag}",
                    types=["Gyroscope"] * 3 + ["Accelerometer"] * 3,
                    subject=sid,
                )
                st = _ImuStream(k, seg, info, None, transport=transport)
                st.open()
                imu.append(st)
            cams = [
                KeypointPublisher(
                    endpoints.get(f"{sid}-cam{c}", "tcp://127.0.0.1:*"),
                    f"{sid}-cam{c}",
                    KEYPOINT_LAYOUT,
                )
                for c in range(spec.n_cameras)
            ]
            truth = pylsl.StreamOutlet(
                make_stream_info(
                    TRUTH_NAME,
                    TRUTH_TYPE,
                    ANGLES,
                    ["degrees"] * len(ANGLES),
                    60.0,
                    "float32",
                    f"{TRUTH_NAME}@{self.run_tag}/{sid}",
                    subject=sid,
                ),
                transport_flags=transport,
            )
            events = pylsl.StreamOutlet(
                make_stream_info(
                    TRUTH_EVENTS_NAME,
                    "Markers",
                    ["event"],
                    [""],
                    pylsl.IRREGULAR_RATE,
                    "string",
                    f"{TRUTH_EVENTS_NAME}@{self.run_tag}/{sid}",
                    subject=sid,
                )
            )
            subj = _Subject(k, imu, cams, truth, events, [0] * spec.n_cameras)
            subj.truth_pusher = ChunkPusher(truth, f"{TRUTH_NAME}@{self.run_tag}/{sid}")
            self.subjects.append(subj)
        self.t0: float | None = None
        self.lab_time = 0.0
        self.pushes = 0
        self.late_pushes = 0
        self.push_delays: deque[float] = deque(maxlen=6000)  # s after the due time, last ~60 s
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ description

    @property
    def camera_endpoints(self) -> dict[str, str]:
        """camera id -> the endpoint its publisher is bound to."""
        return {p.camera: p.endpoint for s in self.subjects for p in s.cameras}

    def imu_stream_names(self, subject: int = 0) -> dict[str, str]:
        return {st.segment: st.info.name() for st in self.subjects[subject].imu}

    def imu_source_ids(self, subject: int = 0) -> dict[str, str]:
        return {st.segment: st.info.source_id() for st in self.subjects[subject].imu}

    def truth_source_id(self, subject: int = 0) -> str:
        return f"{TRUTH_NAME}@{self.run_tag}/s{subject}"

    # ------------------------------------------------------------------ running

    def start(self) -> SimulatedLab:
        if self._thread is None:
            # the next motion block is generated on another thread while this one pushes;
            # at Python's default 5 ms switch interval a push waited up to 5 ms for the GIL
            # (the samples' age, and so the pipeline's latency, carried it)
            sys.setswitchinterval(min(sys.getswitchinterval(), PUSH_SWITCH_INTERVAL_S))
            # and a full garbage collection walking every object this process has built
            # (torch, Ray, the motion tables) stalled every push for tens of ms: what exists
            # now goes to the permanent generation
            gc.collect()
            gc.freeze()
            self.t0 = pylsl.local_clock()
            self._thread = threading.Thread(target=self._run, name="simlab", daemon=True)
            self._thread.start()
        return self

    def halt(self) -> None:
        """Stop pushing, outlets still open: a consumer closing its inlets after this is not
        written to any more (a synchronous outlet's write to a closed inlet makes liblsl log
        'Sync socket disconnected' once per stream)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def stop(self) -> None:
        self.halt()
        self.lab.close()
        with self._lock:
            for s in self.subjects:
                for st in s.imu:
                    st.close()
                for p in s.cameras:
                    p.close()
                s.truth_pusher = None
                s.truth = None  # type: ignore[assignment]
                s.events = None  # type: ignore[assignment]

    def __enter__(self) -> SimulatedLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self.t0 is not None
        period = self.push_period_s
        k = 0
        while not self._stop.is_set():
            k += 1
            due = self.t0 + k * period + 2e-4  # just after the k-th sample time
            wait = due - pylsl.local_clock()
            if wait > 0:
                time.sleep(wait)
            elif wait < -period:
                self.late_pushes += 1
            now = pylsl.local_clock()
            self.push_delays.append(now - due)
            target = now - self.t0
            if target <= self.lab_time:
                continue
            try:
                chunks = self.lab.advance(target - self.lab_time)
                self.lab_time = target
                with self._lock:
                    self._publish(chunks)
                self.pushes += 1
            except Exception:
                log.exception("simulated lab: publishing failed; stopping the lab")
                return

    def _publish(self, chunks: list[SubjectChunk]) -> None:
        """Send one `advance` worth of samples. Per push and subject, whole-array numpy work
        and one liblsl call per outlet; jitter is drawn in one call, in the order the
        per-stream/per-frame draws had (IMU block (n, 13) row-major, then each camera's frames)."""
        t0 = self.t0
        assert t0 is not None
        jit_s = self.jitter_s
        n_seg = len(SEGMENTS)
        for subj, ch in zip(self.subjects, chunks, strict=True):
            n = len(ch.imu_t)
            n_frames = [len(t) for t in ch.cam_t]
            n_draw = n * n_seg + sum(n_frames)
            jitter = self._rng.normal(0.0, jit_s, n_draw) if jit_s > 0 and n_draw else None
            if n:
                self._publish_imu(subj, ch, t0, None if jitter is None else jitter[: n * n_seg])
            a = n * n_seg
            for c, pub in enumerate(subj.cameras):
                m = n_frames[c]
                if not m:
                    continue
                # an undetected joint is sent as a detector would: confidence 0, not NaN
                kps = np.asarray(ch.keypoints[c], dtype=np.float64).reshape(-1, len(KEYPOINTS), 3)
                kps = np.where(np.isfinite(kps).all(axis=-1, keepdims=True), kps, 0.0)
                stamps = t0 + np.asarray(ch.cam_t[c], dtype=np.float64)
                if jitter is not None:
                    stamps = stamps + jitter[a : a + m]
                    a += m
                seq = subj.seq[c]
                for j, t in enumerate(stamps.tolist()):
                    pub.send(seq + j, t, kps[j])
                subj.seq[c] = seq + m
            if len(ch.truth_t):
                subj.truth_pusher.push(  # type: ignore[union-attr]
                    ch.truth_angles, t0 + np.asarray(ch.truth_t, dtype=np.float64)
                )
            for t, label in ch.events:
                subj.events.push_sample([label], t0 + float(t))

    def _publish_imu(
        self, subj: _Subject, ch: SubjectChunk, t0: float, jitter: np.ndarray | None
    ) -> None:
        """All 13 IMU outlets of one subject: samples the synthetic radio lost are not sent
        at all, as with real IMUs; a stream's stamps are lab time + its clock offset + jitter."""
        n, n_seg = len(ch.imu_t), len(subj.imu)
        base = t0 + np.asarray(ch.imu_t, dtype=np.float64)
        stamps = base[:, None] + subj.offsets  # (n, 13): same sums as base + offset + jitter
        if jitter is not None:
            stamps += jitter.reshape(n, n_seg)
        stamps = np.ascontiguousarray(stamps.T)  # (13, n): each stream's stamps contiguous
        values = np.ascontiguousarray(np.swapaxes(ch.imu, 0, 1), dtype=np.float32)  # (13, n, 6)
        mask = np.asarray(ch.imu_mask, dtype=bool)
        n_vals = n * values.shape[2]
        if subj.clean and mask.all():  # the common case: nothing lost, paused or corrupted
            vp, tp = values.ctypes.data, stamps.ctypes.data
            v_step, t_step = n_vals * values.itemsize, n * stamps.itemsize
            for i, st in enumerate(subj.imu):
                st.pusher.push_raw(vp + i * v_step, n_vals, tp + i * t_step)  # type: ignore[union-attr]
            return
        complete = mask.all(axis=0)
        for i, st in enumerate(subj.imu):
            if st.pusher is None:
                continue
            x, ts = values[i], stamps[i]
            if not complete[i]:
                sent = mask[:, i]
                x, ts = x[sent], ts[sent]
                if not len(ts):
                    continue
            if st.corrupt:
                k = min(st.corrupt, len(x))
                x[:k] = np.nan  # x is this push's own array (a fresh copy or view of one)
                st.corrupt -= k
            st.pusher.push_raw(x.ctypes.data, x.size, ts.ctypes.data)

    # ------------------------------------------------------------------ breaking things (tests)

    def _imu(self, subject: int, segment: str) -> _ImuStream:
        return self.subjects[subject].imu[SEGMENTS.index(segment)]

    def pause_imu(self, subject: int, segment: str) -> None:
        """The stream disappears from the network (outlet destroyed)."""
        with self._lock:
            self._imu(subject, segment).close()

    def resume_imu(self, subject: int, segment: str) -> None:
        """It comes back: a new outlet with the same name and source id."""
        with self._lock:
            st = self._imu(subject, segment)
            if st.outlet is None:
                st.open()

    def shift_clock(self, subject: int, segment: str, seconds: float) -> None:
        """From now on the stream's timestamps are off by `seconds` (a device clock jump)."""
        with self._lock:
            self._imu(subject, segment).offset += float(seconds)

    def corrupt_imu(self, subject: int, segment: str, samples: int) -> None:
        """The next `samples` samples of the stream are NaN."""
        with self._lock:
            self._imu(subject, segment).corrupt += int(samples)
