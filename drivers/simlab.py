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
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pylsl

from drivers.lsl_outlets import make_stream_info
from drivers.zmq_transport import KeypointPublisher
from fusion.skeleton import ANGLES, IMU_CHANNELS, IMU_UNITS, KEYPOINTS, SEGMENTS
from fusion.synth import LabSpec, SyntheticLab

__all__ = ["KEYPOINT_LAYOUT", "TRUTH_EVENTS_NAME", "TRUTH_NAME", "SimulatedLab", "default_run_tag"]

log = logging.getLogger(__name__)

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


@dataclass
class _Subject:
    index: int
    imu: list[_ImuStream]
    cameras: list[KeypointPublisher]
    truth: pylsl.StreamOutlet
    events: pylsl.StreamOutlet
    seq: list[int] = field(default_factory=list)


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
    ) -> None:
        self.spec = spec
        self.prefix = imu_stream_prefix
        self.jitter_s = float(jitter_s)
        self.push_period_s = float(push_period_s)
        self.run_tag = run_tag or default_run_tag()
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
                imu.append(_ImuStream(k, seg, info, pylsl.StreamOutlet(info, chunk_size=0)))
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
                )
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
            self.subjects.append(_Subject(k, imu, cams, truth, events, [0] * spec.n_cameras))
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
            self.t0 = pylsl.local_clock()
            self._thread = threading.Thread(target=self._run, name="simlab", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.lab.close()
        with self._lock:
            for s in self.subjects:
                for st in s.imu:
                    st.outlet = None
                for p in s.cameras:
                    p.close()
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

    def _publish(self, chunks: list) -> None:
        t0 = self.t0
        for subj, ch in zip(self.subjects, chunks, strict=True):
            n = len(ch.imu_t)
            if n:
                base = t0 + np.asarray(ch.imu_t, dtype=np.float64)
                jitter = (
                    self._rng.normal(0.0, self.jitter_s, (n, len(subj.imu)))
                    if self.jitter_s > 0
                    else np.zeros((n, len(subj.imu)))
                )
                for i, st in enumerate(subj.imu):
                    if st.outlet is None:
                        continue
                    # a sample the synthetic radio lost is not sent at all, as with real IMUs
                    sent = np.asarray(ch.imu_mask[:, i], bool)
                    if not sent.any():
                        continue
                    x = np.asarray(ch.imu[sent, i, :], dtype=np.float32)
                    if st.corrupt:
                        m = min(st.corrupt, len(x))
                        x[:m] = np.nan
                        st.corrupt -= m
                    ts = base[sent] + st.offset + jitter[sent, i]
                    st.outlet.push_chunk(x, ts.tolist())
            for c, pub in enumerate(subj.cameras):
                # an undetected joint is sent as a detector would: confidence 0, not NaN
                kps = np.asarray(ch.keypoints[c], dtype=np.float64).reshape(-1, len(KEYPOINTS), 3)
                kps = np.where(np.isfinite(kps).all(axis=-1, keepdims=True), kps, 0.0)
                for t, joints in zip(ch.cam_t[c], kps, strict=True):
                    jt = self._rng.normal(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0
                    pub.send(subj.seq[c], t0 + float(t) + jt, joints)
                    subj.seq[c] += 1
            if len(ch.truth_t):
                subj.truth.push_chunk(
                    np.asarray(ch.truth_angles, dtype=np.float32),
                    (t0 + np.asarray(ch.truth_t, dtype=np.float64)).tolist(),
                )
            for t, label in ch.events:
                subj.events.push_sample([label], t0 + float(t))

    # ------------------------------------------------------------------ breaking things (tests)

    def _imu(self, subject: int, segment: str) -> _ImuStream:
        return self.subjects[subject].imu[SEGMENTS.index(segment)]

    def pause_imu(self, subject: int, segment: str) -> None:
        """The stream disappears from the network (outlet destroyed)."""
        with self._lock:
            self._imu(subject, segment).outlet = None

    def resume_imu(self, subject: int, segment: str) -> None:
        """It comes back: a new outlet with the same name and source id."""
        with self._lock:
            st = self._imu(subject, segment)
            if st.outlet is None:
                st.outlet = pylsl.StreamOutlet(st.info, chunk_size=0)

    def shift_clock(self, subject: int, segment: str, seconds: float) -> None:
        """From now on the stream's timestamps are off by `seconds` (a device clock jump)."""
        with self._lock:
            self._imu(subject, segment).offset += float(seconds)

    def corrupt_imu(self, subject: int, segment: str, samples: int) -> None:
        """The next `samples` samples of the stream are NaN."""
        with self._lock:
            self._imu(subject, segment).corrupt += int(samples)
