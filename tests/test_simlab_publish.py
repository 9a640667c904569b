"""The simulated lab's publisher: what it sends is what the straightforward per-stream code
sent (same values, stamps, jitter draws, loss and breaking hooks), and the fast liblsl path
delivers it through real inlets."""

from __future__ import annotations

import ctypes
import time
import uuid
from dataclasses import replace

import numpy as np
import pylsl
import pytest
from lsl_helpers import open_inlet

from drivers.lsl_outlets import ChunkPusher
from drivers.simlab import SimulatedLab
from drivers.zmq_transport import KeypointPublisher
from fusion.noise import NoiseParams
from fusion.skeleton import IMU_CHANNELS, KEYPOINTS, SEGMENTS
from fusion.synth import LabSpec, SyntheticLab


def _uid() -> str:
    return uuid.uuid4().hex[:10]


# -- the reference: the per-stream, per-frame publisher the fast one replaced ----------------
class _RefStream:
    def __init__(self, name: str) -> None:
        self.name, self.offset, self.corrupt, self.paused = name, 0.0, 0, False


def _reference_publish(chunks, t0, rng, jitter_s, streams, seqs, cameras, truth_names) -> list:
    """Straight per-stream loop, one jitter draw per (push, stream block) and per frame."""
    out = []
    for k, ch in enumerate(chunks):
        n = len(ch.imu_t)
        if n:
            base = t0 + np.asarray(ch.imu_t, dtype=np.float64)
            jitter = (
                rng.normal(0.0, jitter_s, (n, len(SEGMENTS)))
                if jitter_s > 0
                else np.zeros((n, len(SEGMENTS)))
            )
            for i, st in enumerate(streams[k]):
                if st.paused:
                    continue
                sent = np.asarray(ch.imu_mask[:, i], bool)
                if not sent.any():
                    continue
                x = np.asarray(ch.imu[sent, i, :], dtype=np.float32)
                if st.corrupt:
                    m = min(st.corrupt, len(x))
                    x[:m] = np.nan
                    st.corrupt -= m
                ts = base[sent] + st.offset + jitter[sent, i]
                out.append(("lsl", st.name, x, ts))
        for c, cam in enumerate(cameras[k]):
            kps = np.asarray(ch.keypoints[c], dtype=np.float64).reshape(-1, len(KEYPOINTS), 3)
            kps = np.where(np.isfinite(kps).all(axis=-1, keepdims=True), kps, 0.0)
            for t, joints in zip(ch.cam_t[c], kps, strict=True):
                jt = rng.normal(0.0, jitter_s) if jitter_s > 0 else 0.0
                out.append(("kp", cam, seqs[k][c], t0 + float(t) + jt, joints))
                seqs[k][c] += 1
        if len(ch.truth_t):
            x = np.asarray(ch.truth_angles, dtype=np.float32)
            out.append(("lsl", truth_names[k], x, t0 + np.asarray(ch.truth_t, dtype=np.float64)))
        for t, label in ch.events:
            out.append(("event", k, label, t0 + float(t)))
    return out


class _EventsRecorder:
    def __init__(self, log: list, subject: int) -> None:
        self.log, self.subject = log, subject

    def push_sample(self, x: list, timestamp: float) -> None:
        self.log.append(("event", self.subject, x[0], timestamp))


def _record_pushes(monkeypatch: pytest.MonkeyPatch, log: list) -> None:
    """Record what reaches liblsl and the keypoint sockets (read back from the raw pointers)."""

    def push_raw(self: ChunkPusher, data: int, n_values: int, stamps: int) -> None:
        n = n_values // self.channels
        raw = (ctypes.c_char * (n_values * self.dtype.itemsize)).from_address(data)
        x = np.frombuffer(raw, dtype=self.dtype).reshape(n, self.channels).copy()
        ts = np.frombuffer((ctypes.c_char * (8 * n)).from_address(stamps), np.float64).copy()
        log.append(("lsl", self.name, x, ts))

    def send(self: KeypointPublisher, seq: int, t: float, joints: np.ndarray) -> None:
        log.append(("kp", self.camera, seq, t, np.array(joints, dtype=np.float64)))

    monkeypatch.setattr(ChunkPusher, "push_raw", push_raw)
    monkeypatch.setattr(KeypointPublisher, "send", send)


def test_publish_sends_what_the_per_stream_code_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    noise = replace(NoiseParams(), imu_drop_rate=0.08)  # plenty of lost samples
    spec = LabSpec(subjects=2, n_cameras=2, seed=11, noise=noise, initial_stand_s=1.0)
    tag = _uid()
    lab = SimulatedLab(spec, f"eq{tag}", run_tag=tag, jitter_s=0.0005)
    ref_lab = SyntheticLab(spec)
    try:
        log: list = []
        _record_pushes(monkeypatch, log)
        for s in lab.subjects:
            s.events = _EventsRecorder(log, s.index)  # type: ignore[assignment]
        lab.t0 = 4321.125
        ref_rng = np.random.default_rng(spec.seed + 7919)
        streams = [[_RefStream(n) for n in lab.imu_stream_names(k).values()] for k in range(2)]
        seqs = [[0, 0], [0, 0]]
        cameras = [[p.camera for p in s.cameras] for s in lab.subjects]
        truth_names = [lab.truth_source_id(k) for k in range(2)]
        expected: list = []

        def hook(step: int) -> None:
            if step == 20:
                lab.corrupt_imu(0, "pelvis", 4)
                streams[0][SEGMENTS.index("pelvis")].corrupt += 4
            if step == 35:
                lab.shift_clock(1, "foot_l", 0.25)
                streams[1][SEGMENTS.index("foot_l")].offset += 0.25
            if step == 50:
                lab.pause_imu(0, "thigh_r")
                streams[0][SEGMENTS.index("thigh_r")].paused = True
            if step == 80:
                lab.resume_imu(0, "thigh_r")
                streams[0][SEGMENTS.index("thigh_r")].paused = False
            if step == 90:  # corrupt across a multi-sample push with losses
                lab.corrupt_imu(1, "shank_r", 7)
                streams[1][SEGMENTS.index("shank_r")].corrupt += 7
            if step == 150:  # no jitter: no draws at all
                lab.jitter_s = 0.0

        # 10 ms pushes, late pushes carrying several samples, empty pushes; crosses the
        # stand -> walk seam (1 s) and the first block seams
        rng = np.random.default_rng(3)
        dts = [0.01] * 60 + [0.0, 0.043, 0.0021, 0.25] + list(rng.uniform(0.0, 0.04, 140))
        for step, dt in enumerate(dts):
            hook(step)
            with lab._lock:
                lab._publish(lab.lab.advance(dt))
            expected += _reference_publish(
                ref_lab.advance(dt),
                lab.t0,
                ref_rng,
                lab.jitter_s,
                streams,
                seqs,
                cameras,
                truth_names,
            )
        assert len(log) == len(expected)
        kinds = {e[0] for e in expected}
        assert kinds == {"lsl", "kp", "event"}
        for got, want in zip(log, expected, strict=True):
            assert got[0] == want[0] and got[1] == want[1], (got[:2], want[:2])
            if want[0] == "lsl":
                np.testing.assert_array_equal(got[2], want[2], err_msg=want[1])
                assert got[2].dtype == np.float32
                np.testing.assert_array_equal(got[3], want[3], err_msg=want[1])  # bit-equal
            elif want[0] == "kp":
                assert got[2] == want[2] and got[3] == want[3], (got[:4], want[:4])
                np.testing.assert_array_equal(got[4], want[4])
            else:
                assert got[2:] == want[2:]
        # the hooks and the loss model did something: NaNs, a shifted stream, a paused one,
        # lost samples, multi-sample pushes
        imu = [e for e in expected if e[0] == "lsl" and e[1].startswith(f"eq{tag}-")]
        pelvis = [e for e in imu if e[1] == lab.imu_stream_names(0)["pelvis"]]
        assert sum(int(np.isnan(e[2]).any(axis=1).sum()) for e in pelvis) == 4
        per_stream = {n: sum(len(e[3]) for e in imu if e[1] == n) for n in {e[1] for e in imu}}
        assert len(per_stream) == 26
        thigh = lab.imu_stream_names(0)["thigh_r"]
        assert per_stream[thigh] < min(v for k, v in per_stream.items() if k != thigh) - 20
        assert len(set(per_stream.values())) > 5  # streams lost different samples
        assert max(len(e[3]) for e in imu) > 1
    finally:
        lab.stop()
        ref_lab.close()


# -- through real liblsl -------------------------------------------------------------------
def _pull(inlet: pylsl.StreamInlet, n: int, timeout: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rows: list = []
    stamps: list = []
    deadline = time.monotonic() + timeout
    while len(stamps) < n and time.monotonic() < deadline:
        x, t = inlet.pull_chunk(timeout=0.05)
        rows += x
        stamps += t
    return np.array(rows), np.array(stamps)


@pytest.mark.parametrize("transport", [pylsl.transp_default, pylsl.transp_sync_blocking])
def test_chunk_pusher_delivers_what_push_chunk_delivers(transport: int) -> None:
    """Same samples and stamps at the inlet as StreamOutlet.push_chunk(values, stamp list)."""
    sid = {k: f"cp-{k}-{_uid()}" for k in ("ref", "fast")}
    outs = {
        k: pylsl.StreamOutlet(
            pylsl.StreamInfo(f"cp-{k}", "IMU", 6, 100.0, "float32", sid[k]),
            transport_flags=transport,
        )
        for k in sid
    }
    pusher = ChunkPusher(outs["fast"], "cp-fast")
    inlets = {k: open_inlet(sid[k]) for k in sid}
    time.sleep(0.2)  # open_stream returns before the outlet has the consumer (liblsl #176)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    X[5, 2] = np.nan
    T = 1000.0 + np.arange(120) * 0.01 + rng.normal(0.0, 5e-4, 120)
    i = 0
    for n in [1, 3, 1, 2, 0, 1] * 30:
        n = min(n, 120 - i)
        outs["ref"].push_chunk(X[i : i + n].astype(np.float32), T[i : i + n].tolist())
        assert pusher.push(X[i : i + n], T[i : i + n]) == n  # float64 in: converted
        i += n
    got = {k: _pull(inlets[k], i) for k in sid}
    assert len(got["ref"][1]) == i
    np.testing.assert_array_equal(got["fast"][0], got["ref"][0])
    np.testing.assert_array_equal(got["fast"][1], got["ref"][1])
    np.testing.assert_array_equal(got["fast"][1], T[:i])


def test_chunk_pusher_rejects_bad_input() -> None:
    out = pylsl.StreamOutlet(pylsl.StreamInfo("cp-bad", "IMU", 6, 100.0, "float32", _uid()))
    pusher = ChunkPusher(out, "cp-bad")
    with pytest.raises(ValueError, match=r"outlet 'cp-bad'.*\(N, 6\)"):
        pusher.push(np.zeros((2, 5)), [1.0, 2.0])
    with pytest.raises(ValueError, match="outlet 'cp-bad'"):
        pusher.push(np.zeros((2, 6)), [1.0])
    markers = pylsl.StreamOutlet(pylsl.StreamInfo("cp-m", "Markers", 1, 0, "string", _uid()))
    with pytest.raises(ValueError, match=r"outlet .cp-m.*float32 or double64"):
        ChunkPusher(markers, "cp-m")


def test_live_lab_streams_and_survives_pause_resume() -> None:
    """The running lab over sync outlets: metadata, 100 Hz stamps, and a paused stream
    that comes back under the same source id to the same inlet."""
    tag = _uid()
    lab = SimulatedLab(LabSpec(n_cameras=0, seed=2), f"live{tag}", run_tag=tag)
    assert lab.sync_outlets
    try:
        sid = lab.imu_source_ids(0)["pelvis"]
        inlet = open_inlet(sid)
        labels = inlet.info(5.0).desc().child("channels").child("channel")
        names = []
        while not labels.empty():
            names.append(labels.child_value("label"))
            labels = labels.next_sibling()
        assert names == list(IMU_CHANNELS)
        lab.start()
        x, t = _pull(inlet, 80)
        assert len(t) >= 80
        assert x.shape[1] == 6 and np.isfinite(x).all()
        step = np.median(np.diff(t))
        assert abs(step - 0.01) < 0.002
        lab.pause_imu(0, "pelvis")
        time.sleep(0.3)
        inlet.pull_chunk()
        lab.resume_imu(0, "pelvis")
        _, t2 = _pull(inlet, 20, timeout=8.0)
        assert len(t2) >= 20, "the resumed stream did not reach the inlet"
        assert t2[0] > t[-1]
        assert lab.pushes > 50
    finally:
        lab.stop()
