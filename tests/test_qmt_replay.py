"""The real qmt 16-IMU recording: loading, segment mapping, live replay over real LSL.

The replay tests publish with drivers.imu_replay and receive on real drivers.lsl_inlets.ImuInlet
objects (one per segment), under uuid-named streams so no two tests see each other's outlets.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pylsl
import pytest
import scipy.io

from drivers.imu_replay import ImuArrayPublisher, stream_names
from drivers.lsl_inlets import ImuInlet, open_all
from drivers.qmt_fullbody import (
    DEFAULT_RELATIVE_PATH,
    DROPPED,
    QmtFormatError,
    QmtRecording,
    load_qmt_fullbody,
)
from drivers.selectors import StreamSelector, resolve
from fusion.skeleton import GRAVITY, SEGMENT_INDEX, SEGMENTS
from services.commands import replay_imu

QMT_SENSORS = 16


@pytest.fixture(scope="module")
def qmt_path(shared_data: Path) -> Path:
    path = shared_data / DEFAULT_RELATIVE_PATH
    assert path.is_file(), f"qmt recording missing: {path}"
    return path


@pytest.fixture(scope="module")
def rec(qmt_path: Path) -> QmtRecording:
    return load_qmt_fullbody(qmt_path)


@pytest.fixture(scope="module")
def raw(qmt_path: Path) -> dict:
    """The file read independently of the driver (scipy, MATLAB structs as records)."""
    return scipy.io.loadmat(qmt_path)


def _raw(raw: dict, sensor: str, field: str) -> np.ndarray:
    return np.asarray(raw[sensor][0, 0][field], dtype=np.float64)


# --------------------------------------------------------------------------- loading, mapping


def test_real_file_maps_13_distinct_sensors_in_contract_order(rec: QmtRecording, raw: dict):
    sensors_in_file = [k for k in raw if not k.startswith("__") and k != "t"]
    assert len(sensors_in_file) == QMT_SENSORS
    assert rec.data.shape == (10000, len(SEGMENTS), 6)
    assert rec.quat.shape == (10000, len(SEGMENTS), 4)
    assert rec.rate == 100.0
    assert rec.duration == pytest.approx(100.0)
    assert rec.t[0] == pytest.approx(40.0) and rec.t[-1] == pytest.approx(139.99)
    assert rec.segments == SEGMENTS
    assert len(set(rec.sensors)) == len(SEGMENTS)
    assert set(rec.sensors) | set(DROPPED) == set(sensors_in_file)
    # The mapping, spelled out here rather than read back from the driver.
    expected = {
        "head": "head",
        "sternum": "upper_back",
        "pelvis": "hip",
        "upperarm_l": "upper_arm_left",
        "forearm_r": "forearm_right",
        "thigh_l": "upper_leg_left",
        "shank_r": "lower_leg_right",
        "foot_l": "foot_left",
    }
    for seg, sensor in expected.items():
        i = SEGMENT_INDEX[seg]
        np.testing.assert_array_equal(rec.data[:, i, :3], _raw(raw, sensor, "gyr"), err_msg=seg)
        np.testing.assert_array_equal(rec.data[:, i, 3:], _raw(raw, sensor, "acc"), err_msg=seg)
        np.testing.assert_array_equal(rec.quat[:, i], _raw(raw, sensor, "quat"), err_msg=seg)
    # 13 distinct signals: no segment got a copy of another's sensor.
    flat = rec.data[:1000].reshape(1000, len(SEGMENTS) * 6)
    assert len({flat[:, i * 6 : i * 6 + 6].tobytes() for i in range(len(SEGMENTS))}) == 13


def test_real_data_is_plausible_in_contract_units(rec: QmtRecording):
    still = rec.window(0.5, 3.5).data  # the subject stands still for the first ~4.5 s
    acc_norm = np.linalg.norm(still[:, :, 3:], axis=2).mean(axis=0)
    gyr_norm = np.linalg.norm(still[:, :, :3], axis=2).mean(axis=0)
    np.testing.assert_allclose(acc_norm, GRAVITY, atol=0.4)  # m/s², not g
    assert (gyr_norm < 0.1).all(), gyr_norm  # rad/s at rest: bias only
    walk = rec.window(60.0, 40.0).data
    feet = [SEGMENT_INDEX["foot_l"], SEGMENT_INDEX["foot_r"]]
    foot_gyr = np.linalg.norm(walk[:, feet, :3], axis=2)
    assert (foot_gyr.max(axis=0) > 5.0).all()  # foot swing: several rad/s (deg/s would be ~500)
    assert (foot_gyr.max(axis=0) < 30.0).all()
    assert np.isfinite(rec.data).all()


def test_window_selects_by_seconds(rec: QmtRecording):
    w = rec.window(55.0, 2.0)
    assert w.data.shape == (200, 13, 6)
    assert w.t[0] == pytest.approx(95.0)
    np.testing.assert_array_equal(w.data, rec.data[5500:5700])
    assert rec.window(99.5).data.shape[0] == 50
    with pytest.raises(ValueError, match="past the end"):
        rec.window(100.0)
    with pytest.raises(ValueError, match="duration"):
        rec.window(0.0, 0.0)


def _save_mat(path: Path, raw: dict, drop: str | None = None, **override: dict) -> Path:
    """A v5 MAT-file with the real file's first 300 samples, minus/with changed sensors."""
    n = 300
    out: dict = {"t": raw["t"][:n]}
    for key in raw:
        if key.startswith("__") or key == "t" or key == drop:
            continue
        out[key] = {f: _raw(raw, key, f)[:n] for f in ("acc", "gyr", "quat")}
    for key, fields in override.items():
        out[key] = {**out[key], **fields}
    scipy.io.savemat(path, out)
    return path


def test_bad_files_fail_naming_file_and_key(tmp_path: Path, raw: dict):
    with pytest.raises(FileNotFoundError, match=r"nope\.mat"):
        load_qmt_fullbody(tmp_path / "nope.mat")
    not_mat = tmp_path / "text.mat"
    not_mat.write_text("hello")
    with pytest.raises(QmtFormatError, match=r"text\.mat"):
        load_qmt_fullbody(not_mat)
    no_hip = _save_mat(tmp_path / "nohip.mat", raw, drop="hip")
    with pytest.raises(QmtFormatError, match=r"nohip\.mat.*'hip'"):
        load_qmt_fullbody(no_hip)
    short = _save_mat(tmp_path / "short.mat", raw, head={"acc": np.zeros((299, 3))})
    with pytest.raises(QmtFormatError, match=r"short\.mat.*'head\.acc'.*\(300, 3\)"):
        load_qmt_fullbody(short)
    in_g = _save_mat(
        tmp_path / "in_g.mat", raw, foot_left={"acc": _raw(raw, "foot_left", "acc")[:300] / 9.81}
    )
    with pytest.raises(QmtFormatError, match=r"'foot_left\.acc'.*units"):
        load_qmt_fullbody(in_g)
    no_t = tmp_path / "no_t.mat"
    scipy.io.savemat(no_t, {"hip": {"acc": np.zeros((3, 3))}})
    with pytest.raises(QmtFormatError, match=r"no_t\.mat.*'t'"):
        load_qmt_fullbody(no_t)


def test_matlab_v73_hdf5_layout_reads_the_same(tmp_path: Path, raw: dict, rec: QmtRecording):
    """A v7.3 file (HDF5, column-major: arrays stored transposed) gives the same arrays."""
    n = 300
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["t"] = raw["t"][:n].T
        for key in raw:
            if key.startswith("__") or key == "t":
                continue
            g = f.create_group(key)
            for field in ("acc", "gyr", "quat"):
                g[field] = _raw(raw, key, field)[:n].T
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with path.open("r+b") as fh:  # the 128-byte MAT header in the HDF5 user block
        fh.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")
    v73 = load_qmt_fullbody(path)
    np.testing.assert_array_equal(v73.data, rec.data[:n])
    np.testing.assert_array_equal(v73.t, rec.t[:n])
    assert v73.rate == 100.0


# --------------------------------------------------------------------------- live replay


def _open_inlets(names: dict[str, str]) -> list[ImuInlet]:
    sels = {seg: StreamSelector(name=name, type="IMU") for seg, name in names.items()}
    found = resolve(list(sels.values()), timeout=5.0, minimum=len(sels))
    inlets = []
    for seg, sel in sels.items():
        assert len(found[sel]) == 1, f"stream {sel.describe()}: found {len(found[sel])}"
        inlets.append(ImuInlet(found[sel][0], [seg], max_backlog_s=2.0))
    open_all(inlets, timeout=5.0)
    return inlets


def _collect(
    inlets: list[ImuInlet], n: int, timeout: float
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pull all inlets until each has n samples: per inlet (stamps, data, arrival times)."""
    got: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in inlets]
    counts = [0] * len(inlets)
    deadline = time.monotonic() + timeout
    while min(counts) < n and time.monotonic() < deadline:
        for k, inlet in enumerate(inlets):
            chunk = inlet.pull()
            if chunk is not None:
                now = pylsl.local_clock()
                got[k].append((chunk.timestamps, chunk.data, np.full(len(chunk.timestamps), now)))
                counts[k] += len(chunk.timestamps)
        time.sleep(0.002)
    out = []
    for k, parts in enumerate(got):
        assert parts, f"no samples on {inlets[k].name}"
        out.append(tuple(np.concatenate([p[i] for p in parts]) for i in range(3)))
    return out


def test_live_replay_reaches_13_imu_inlets_with_units_and_timing(rec: QmtRecording):
    speed, seconds = 4.0, 6.0  # 6 s of walking in 1.5 s
    w = rec.window(60.0, seconds)
    n = len(w.t)
    prefix = f"qmt-test-{uuid.uuid4().hex[:10]}"
    with ImuArrayPublisher(w.data, w.rate, prefix, prefix, speed=speed) as pub:
        assert pub.stream_names["pelvis"] == f"{prefix}-pelvis"
        inlets = _open_inlets(pub.stream_names)
        try:
            assert pub.wait_for_consumers(5.0)
            t_begin = pylsl.local_clock()
            pub.start()
            got = _collect(inlets, n, timeout=seconds / speed + 5.0)
            assert pub.join(2.0)
            wall = pylsl.local_clock() - t_begin
        finally:
            for inlet in inlets:
                inlet.close()
    assert pub.sent == n and pub.passes == 1 and pub.position_s == pytest.approx(seconds)
    # real time at 4x (a dump would take ~0 s); the upper bound leaves room for a busy machine
    assert seconds / speed - 0.01 <= wall <= seconds / speed + 1.0, wall
    period = 1.0 / (w.rate * speed)
    for inlet, (ts, data, arrival) in zip(inlets, got, strict=True):
        seg = inlet.segments[0]
        assert inlet.rate == pytest.approx(w.rate * speed)
        # Units came from the header: rad/s and m/s^2 need no conversion, nothing assumed.
        np.testing.assert_array_equal(inlet.scale, np.ones(6))
        assert inlet.notes == [], inlet.notes
        assert inlet.stats["samples"] == n and inlet.stats["bad_nonfinite"] == 0
        assert len(ts) == n, f"{seg}: {len(ts)} of {n} samples"
        expected = w.data[:, SEGMENT_INDEX[seg]].astype(np.float32)
        np.testing.assert_array_equal(data[:, 0, :].astype(np.float32), expected, err_msg=seg)
        # Sample spacing preserved (scaled by the speed) within 1 ms, stamps rebased to now.
        np.testing.assert_allclose(np.diff(ts), period, atol=1e-3, err_msg=seg)
        want = pub.timestamp(np.arange(n)) + inlet.clock_offset
        np.testing.assert_allclose(ts, want, atol=1e-3, err_msg=seg)
        # Sent when due, not ahead of time nor in one burst (a burst: median lag ~0.75 s).
        lag = arrival - ts
        assert np.median(lag) < 0.1 and lag.min() > -1e-3, (seg, np.median(lag), lag.min())


def test_loop_wraps_without_gap_and_stop_ends_it():
    rng = np.random.default_rng(3)
    n = 20
    data = rng.normal(size=(n, 2, 6))
    prefix = f"qmt-loop-{uuid.uuid4().hex[:10]}"
    segs = ("foot_l", "foot_r")
    with ImuArrayPublisher(data, 100.0, prefix, prefix, segs, loop=True, speed=4.0) as pub:
        inlets = _open_inlets(pub.stream_names)
        try:
            pub.start()
            ts, got, _ = _collect(inlets[:1], 3 * n, timeout=5.0)[0]
            assert pub.passes >= 3
            pub.stop()
            assert pub.join(2.0)
        finally:
            for inlet in inlets:
                inlet.close()
    k = np.arange(len(ts))
    np.testing.assert_array_equal(got[:, 0], data[k % n, 0].astype(np.float32))
    np.testing.assert_allclose(np.diff(ts), 1 / 400.0, atol=1e-3)  # no gap at the wrap
    assert 0.0 <= pub.position_s < n / 100.0


def test_publisher_rejects_bad_arrays():
    good = np.zeros((10, 13, 6))
    with pytest.raises(ValueError, match=r"shape \(10, 12, 6\)"):
        ImuArrayPublisher(good[:, :12], 100.0, "x", "x")
    with pytest.raises(ValueError, match="unknown"):
        ImuArrayPublisher(good[:, :1], 100.0, "x", "x", segments=["tail"])
    with pytest.raises(ValueError, match="speed"):
        ImuArrayPublisher(good, 100.0, "x", "x", speed=0.0)
    with pytest.raises(ValueError, match="rate"):
        ImuArrayPublisher(good, float("nan"), "x", "x")


# --------------------------------------------------------------------------- command line


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command's own register() on a bare parser, as services.cli calls it."""
    parser = argparse.ArgumentParser(prog="gait-stream")
    replay_imu.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_replays_window_with_progress(qmt_path: Path, capsys: pytest.CaptureFixture[str]):
    prefix = f"qmt-cli-{uuid.uuid4().hex[:8]}"
    args = _parse(
        ["replay-imu", str(qmt_path), "--start", "60", "--duration", "0.4", "--speed", "4"]
        + ["--prefix", prefix]
    )
    assert args.func is replay_imu.run
    assert replay_imu.run(args) == 0
    err = capsys.readouterr().err
    assert f"{prefix}-sternum" in err and f"{prefix}-foot_r" in err
    assert "sent 40 samples per stream" in err
    assert "replay" in err and "100%" in err  # the tqdm bar reached the end


def test_cli_default_file_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("GAIT_STREAM_SHARED_DATA", str(tmp_path))
    assert replay_imu.default_file() == tmp_path / DEFAULT_RELATIVE_PATH
    args = _parse(["replay-imu", "--no-progress"])
    assert args.file is None and args.speed == 1.0 and args.prefix == "qmt" and not args.loop
    assert replay_imu.run(args) == 2
    assert str(tmp_path / DEFAULT_RELATIVE_PATH) in capsys.readouterr().err


def test_runtime_config_maps_every_segment_to_the_replayed_streams():
    """configs/qmt_replay.yaml validates and names exactly what `replay-imu` publishes."""
    from services.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "qmt_replay.yaml")
    assert not cfg.simulate.enabled
    (subject,) = cfg.subjects
    assert subject.cameras == [] and cfg.sync.wait_for == ["imu"]
    assert cfg.model.estimator == "classical"
    published = stream_names(_parse(["replay-imu"]).prefix)
    assert {seg: s.name for seg, s in subject.imu.items()} == published
    assert all(s.type == "IMU" and s.segments is None for s in subject.imu.values())
