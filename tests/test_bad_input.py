"""Bad input keeps the pipeline running: it is logged once (naming the stream) and counted.

These tests drive the real stage classes (services/actors) over real LSL and ZeroMQ on
loopback, without Ray: each stage's Ray actor is the same class, and `Local` stands in for an
actor handle. Streams get names unique to this test process, so parallel runs cannot collide.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

import msgpack
import numpy as np
import pylsl
import pytest
import zmq

from drivers.lsl_outlets import make_stream_info
from drivers.zmq_transport import free_tcp_endpoint
from fusion.skeleton import IMU_CHANNELS, IMU_UNITS, KEYPOINTS, SEGMENT_INDEX, SEGMENTS
from services.actors.ingest_imu import ImuIngest
from services.actors.ingest_keypoints import KeypointIngest
from services.actors.messages import ImuMsg, ImuPart, TickMsg
from services.actors.metrics import Metrics
from services.actors.stage import Local
from services.actors.sync import Sync
from services.config import CameraConfig, ImuStreamConfig, SubjectConfig, SyncConfig
from services.trace import Trace

TAG = f"badin{os.getpid()}"


class Collector:
    """Stands in for the next stage: keeps what it is sent."""

    def __init__(self) -> None:
        self.msgs: list = []
        self.lock = threading.Lock()

    def put(self, msg: object) -> None:
        with self.lock:
            self.msgs.append(msg)

    def take(self) -> list:
        with self.lock:
            out, self.msgs = self.msgs, []
        return out


def wait_until(cond: Callable[[], bool], timeout: float, step: Callable[[], None] | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if cond():
            return True
        time.sleep(0.005)
    return False


def subject(imu: dict[str, str | None], cameras: list[CameraConfig] | None = None) -> SubjectConfig:
    table = {seg: None for seg in SEGMENTS}
    for seg, name in imu.items():
        table[seg] = None if name is None else ImuStreamConfig(name=name, source_id=name)
    return SubjectConfig(id="s0", imu=table, cameras=cameras or [])


def imu_outlet(name: str, channels: int = 6) -> pylsl.StreamOutlet:
    if channels == 6:
        labels, units = IMU_CHANNELS, IMU_UNITS
    else:
        labels = [f"ch{i}" for i in range(channels)]
        units = ["rad/s"] * channels
    info = make_stream_info(name, "IMU", labels, units, 100.0, "float32", name)
    return pylsl.StreamOutlet(info, chunk_size=0)


def totals(metrics: Metrics, key: str) -> dict[str, float]:
    return metrics.snapshot()["totals"].get(key, {})


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(port=None)
    yield m
    m.stop()


# --------------------------------------------------------------------------- ZeroMQ


def test_malformed_zmq_messages_are_counted_and_skipped(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ep = free_tcp_endpoint()
    cam = f"{TAG}-camA"
    sink = Collector()
    ing = KeypointIngest(
        [subject({}, [CameraConfig(cam, ep)])], Local(sink), Local(metrics), flush_s=0.0
    )
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ep)
    joints = np.tile([100.0, 200.0, 0.9], (len(KEYPOINTS), 1))

    def valid(seq: int) -> bytes:
        msg = {"camera": cam, "seq": seq, "t": 10.0 + seq, "joints": joints.tolist(), "layout": "x"}
        return msgpack.packb(msg)

    def step() -> None:
        ing.step([])

    try:
        # ZeroMQ drops what is sent before the subscription lands: send until one arrives
        seq = 0
        while not sink.msgs and seq < 400:
            pub.send(valid(seq))
            seq += 1
            step()
        assert sink.take(), "no valid keypoints received at all"
        bad_joints = joints.copy()
        bad_joints[3] = np.nan
        pub.send(b"\x00\x01 not msgpack")
        pub.send(msgpack.packb([1, 2, 3]))
        pub.send(
            msgpack.packb(
                {"camera": cam, "seq": seq, "t": 1.0, "joints": [[1, 2, 3]] * 5, "layout": "x"}
            )
        )
        pub.send(
            msgpack.packb(
                {
                    "camera": cam,
                    "seq": seq + 1,
                    "t": 11.0,
                    "joints": bad_joints.tolist(),
                    "layout": "x",
                }
            )
        )
        pub.send(
            msgpack.packb(
                {
                    "camera": "stranger",
                    "seq": 0,
                    "t": 11.0,
                    "joints": joints.tolist(),
                    "layout": "x",
                }
            )
        )
        pub.send(valid(seq + 2))
        t_last = 10.0 + seq + 2
        got: list = []

        def stamps() -> np.ndarray:
            return np.concatenate([p.t for p in got]) if got else np.zeros(0)

        # warm-up frames still held by the ingest may come first: find ours by their stamps
        assert wait_until(
            lambda: {11.0, t_last} <= set(stamps().tolist()),
            3.0,
            lambda: (step(), got.extend(p for m in sink.take() for p in m.parts)),
        )
    finally:
        pub.close(linger=0)
        ing.close()
    ing.flush(force=True)
    # the NaN joint and the good message after the garbage went through; NaN became conf 0
    frames = np.concatenate([p.joints for p in got])
    t = stamps()
    assert np.isfinite(frames).all()
    assert frames[t == 11.0][0, 3, 2] == 0.0
    assert frames[t == t_last][0, 3, 2] == pytest.approx(0.9)
    bad = totals(metrics, "bad_input")
    assert bad[f"{ep}|not_msgpack"] == 1
    assert bad[f"{ep}|not_a_map"] == 1
    assert bad[f"{cam}|wrong_joint_count"] == 1
    assert bad[f"{cam}|nonfinite_joints"] == 1
    assert bad["stranger|unknown_camera"] == 1
    assert bad[f"{cam}|seq_gap"] == 1  # the dropped wrong-count message is a gap in camA's seq
    text = caplog.text
    assert cam in text and "wrong_joint_count" in text
    assert "stranger" in text


# --------------------------------------------------------------------------- LSL inputs


def test_wrong_channel_count_and_missing_stream_leave_the_rest_running(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    good, bad, absent = f"{TAG}-good", f"{TAG}-five", f"{TAG}-absent"
    quiet = f"{TAG}-quiet"  # found and open, but it never sends a sample
    out_good = imu_outlet(good)
    out_bad = imu_outlet(bad, channels=5)
    out_quiet = imu_outlet(quiet)
    sink = Collector()
    ing = ImuIngest(
        [subject({"pelvis": good, "head": bad, "sternum": absent, "foot_l": quiet})],
        Local(sink),
        Local(metrics),
        resolve_timeout_s=1.0,
        flush_s=0.0,
    )
    try:
        status = ing.open()
        assert sorted(status["up"]) == sorted([good, quiet])
        assert status["missing"] == {bad: "format", absent: "not_found"}
        t0 = pylsl.local_clock()
        out_good.push_chunk(np.ones((5, 6), np.float32), (t0 + np.arange(5) * 0.01).tolist())
        assert wait_until(lambda: bool(sink.msgs), 3.0, lambda: ing.step([]))
    finally:
        ing.close()
        del out_good, out_bad, out_quiet
    assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.text
    part = sink.msgs[0].parts[0]
    assert part.stream == good and part.segments == ("pelvis",)
    ing.flush(force=True)
    bad_in = totals(metrics, "bad_input")
    assert bad_in[f"{bad}|format"] == 1 and bad_in[f"{absent}|not_found"] == 1
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(bad in m and "5 channels" in m for m in msgs), msgs
    assert any(absent in m and "not found" in m for m in msgs), msgs


def test_nan_samples_are_dropped_counted_and_logged_once(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    name = f"{TAG}-nan"
    outlet = imu_outlet(name)
    sink = Collector()
    ing = ImuIngest([subject({"foot_l": name})], Local(sink), Local(metrics), flush_s=0.0)
    try:
        assert ing.open()["up"] == [name]
        for k in range(2):
            x = np.ones((10, 6), np.float32)
            x[[2, 5], 1] = np.nan
            x[7, 4] = np.inf
            t0 = pylsl.local_clock()
            outlet.push_chunk(x, (t0 + np.arange(10) * 0.001).tolist())
            n_want = 7 * (k + 1)
            assert wait_until(
                lambda n=n_want: sum(len(p.t) for m in sink.msgs for p in m.parts) >= n,
                3.0,
                lambda: ing.step([]),
            )
        ing.flush(force=True)
    finally:
        ing.close()
    data = np.concatenate([p.data for m in sink.msgs for p in m.parts])
    assert data.shape == (14, 1, 6) and np.isfinite(data).all()
    assert totals(metrics, "bad_input")[f"{name}|nonfinite"] == 6
    assert totals(metrics, "input")[f"s0|{name}|imu"] == 14
    lines = [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()]
    assert len(lines) == 1 and name in lines[0]


def test_clock_jump_is_reanchored_logged_and_counted(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    name = f"{TAG}-jump"
    outlet = imu_outlet(name)
    sink = Collector()
    ing = ImuIngest(
        [subject({"pelvis": name})], Local(sink), Local(metrics), clock_jump_s=1.0, flush_s=0.0
    )
    received: list[np.ndarray] = []

    def pull() -> None:
        ing.step([])
        received.extend(p.t for m in sink.take() for p in m.parts)

    try:
        ing.open()
        for jump in (0.0, 3600.0, 3600.0):  # in sync, then the sender's clock jumps an hour
            t0 = pylsl.local_clock() + jump
            outlet.push_chunk(np.ones((3, 6), np.float32), (t0 + np.arange(3) * 0.01).tolist())
            n = len(received)
            assert wait_until(lambda n=n: len(received) > n, 3.0, pull)
            time.sleep(0.05)
    finally:
        ing.close()
    now = pylsl.local_clock()
    stamps = np.concatenate(received)
    assert np.all(np.abs(stamps - now) < 2.0), "timestamps must stay on the local clock"
    assert np.all(np.diff(stamps) > 0)
    ing.flush(force=True)
    assert totals(metrics, "bad_input")[f"{name}|clock_jump"] == 1  # re-anchored once
    lines = [r.getMessage() for r in caplog.records if "clock jump" in r.getMessage()]
    assert len(lines) == 1 and name in lines[0] and "+3600" in lines[0]


def test_vanishing_imu_stream_is_masked_then_comes_back(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """Real LSL, real clock: ingest → sync keep 60 Hz while one sensor is away and back."""
    caplog.set_level(logging.WARNING)
    names = {"thigh_l": f"{TAG}-thigh", "shank_l": f"{TAG}-shank"}
    infos = {
        seg: make_stream_info(n, "IMU", IMU_CHANNELS, IMU_UNITS, 100.0, "float32", n)
        for seg, n in names.items()
    }
    outlets: dict[str, pylsl.StreamOutlet | None] = {
        seg: pylsl.StreamOutlet(info, chunk_size=0) for seg, info in infos.items()
    }
    lock = threading.Lock()
    stop = threading.Event()

    def sensors() -> None:
        k0 = pylsl.local_clock()
        k = 0
        while not stop.is_set():
            k += 1
            due = k0 + k * 0.01
            time.sleep(max(0.0, due - pylsl.local_clock()))
            with lock:
                for out in outlets.values():
                    if out is not None:
                        out.push_sample(np.zeros(6, np.float32), due)

    ticks = Collector()
    subj = subject(names)
    sync = Sync(
        [subj],
        Local(ticks),
        Local(metrics),
        cfg=SyncConfig(max_wait_ms=30.0, stale_after_ms=150.0),
        flush_s=0.05,
    )
    ing = ImuIngest([subj], Local(sync), Local(metrics), lost_after_s=0.5, flush_s=0.05)
    feeder = threading.Thread(target=sensors, daemon=True)
    feeder.start()
    phases: dict[str, list[TickMsg]] = {}
    try:
        ing.open()
        sync.start()
        ing.start()
        for phase, action in (("both", None), ("away", "drop"), ("back", "restore")):
            if action == "drop":
                with lock:
                    outlets["shank_l"] = None
            elif action == "restore":
                with lock:
                    outlets["shank_l"] = pylsl.StreamOutlet(infos["shank_l"], chunk_size=0)
                # liblsl reconnects to the same source id; wait for samples again
                assert wait_until(
                    lambda: (
                        metrics.snapshot()["gauges"]
                        .get("stream_up", {})
                        .get(f"s0|{names['shank_l']}")
                        == 1.0
                    ),
                    8.0,
                )
            time.sleep(0.3)  # settle (stale detection, reconnection)
            ticks.take()
            time.sleep(1.0)
            phases[phase] = ticks.take()
    finally:
        stop.set()
        ing.stop()
        sync.stop()
        feeder.join(2.0)
    shank = SEGMENT_INDEX["shank_l"]
    thigh = SEGMENT_INDEX["thigh_l"]
    for phase, msgs in phases.items():
        t = np.concatenate([m.batches["s0"].t for m in msgs])
        mask = np.concatenate([m.batches["s0"].imu_mask for m in msgs])
        assert 50 <= len(t) <= 70, f"{phase}: {len(t)} ticks in 1 s (want ~60)"
        assert np.allclose(np.diff(t), 1 / 60, atol=1e-6), f"{phase}: ticks not contiguous"
        assert mask[:, thigh].mean() > 0.95, f"{phase}: the healthy sensor must stay unmasked"
        want = 0.0 if phase == "away" else 1.0
        assert abs(mask[:, shank].mean() - want) < 0.05, (
            f"{phase}: shank mask {mask[:, shank].mean()}"
        )
    snap = metrics.snapshot()
    assert snap["totals"]["masked"]["s0|imu"] >= 55
    assert snap["totals"]["bad_input"][f"{names['shank_l']}|lost"] == 1
    assert any(
        names["shank_l"] in r.getMessage() and "lost" in r.getMessage() for r in caplog.records
    )


def test_sync_masks_late_and_out_of_order_data_without_blocking(metrics: Metrics) -> None:
    """Deterministic (fake clock): max wait, masks, late and out-of-order samples."""
    import services.actors.sync as sync_mod

    clock = [100.0]

    class FakeLsl:
        @staticmethod
        def local_clock() -> float:
            return clock[0]

    names = {"pelvis": "p", "head": "h"}
    ticks = Collector()
    real = sync_mod.pylsl
    sync_mod.pylsl = FakeLsl
    try:
        sync = Sync(
            [subject(names)],
            Local(ticks),
            Local(metrics),
            cfg=SyncConfig(max_wait_ms=40.0, stale_after_ms=500.0, dejitter=False, causal=False),
        )

        def send(seg: str, t: np.ndarray) -> None:
            x = np.ones((len(t), 1, 6))
            part = ImuPart("s0", names[seg], (seg,), t, x, 100.0, clock[0])
            sync.step([ImuMsg.pack([part], Trace(float(t[-1])).stamp("ingest", clock[0]))])

        # both sensors up to 100.0 s
        send("pelvis", 99.9 + np.arange(11) * 0.01)
        send("head", 99.9 + np.arange(11) * 0.01)
        first = ticks.take()
        both = [SEGMENT_INDEX["pelvis"], SEGMENT_INDEX["head"]]
        assert first and first[-1].batches["s0"].imu_mask[:, both].all()
        assert first[0].batches["s0"].t[0] == pytest.approx(100.0)  # waited for both
        # the head stalls: the pelvis alone does not release ticks before the max wait ...
        clock[0] = 100.05
        send("pelvis", 100.01 + np.arange(5) * 0.01)
        assert not ticks.take()
        # ... after it they go out with the head masked
        clock[0] = 100.1
        sync.step([])
        late_ticks = ticks.take()
        batch = late_ticks[-1].batches["s0"]
        assert batch.t[-1] == pytest.approx(np.floor((100.1 - 0.04) * 60) / 60)
        assert batch.imu_mask[:, SEGMENT_INDEX["pelvis"]].all()
        assert not batch.imu_mask[:, SEGMENT_INDEX["head"]].any()
        # the head's samples for those ticks arrive now: late, counted, nothing re-emitted
        send("head", 100.01 + np.arange(5) * 0.01)
        # and a chunk from the past (out of order) is dropped and counted
        send("head", np.array([99.95, 99.96]))
    finally:
        sync_mod.pylsl = real
    sync.flush(force=True)
    t = metrics.snapshot()["totals"]
    assert t["late"]["s0|h"] >= 1
    assert t["bad_input"]["h|out_of_order"] == 2
    assert t["masked"]["s0|imu"] == sum(len(m.batches["s0"].t) for m in late_ticks)
