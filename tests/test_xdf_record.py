"""Record real LSL outlets to XDF and read the files back with pyxdf, also after a SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest
import pyxdf

from drivers.selectors import StreamSelector
from drivers.xdf_reader import load_xdf, scan_chunks
from drivers.xdf_record import XdfRecorder, find_streams
from services.commands import record as record_cmd

logging.getLogger("pyxdf").setLevel(logging.ERROR)
REPO = Path(__file__).resolve().parents[1]


def _imu_outlet(source_id: str) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo("test-imu", "IMU", 6, 100, "float32", source_id)
    chans = info.desc().append_child("channels")
    for label in ("gyr_x", "gyr_y", "gyr_z", "acc_x", "acc_y", "acc_z"):
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
    return pylsl.StreamOutlet(info)


def _pusher(outlet: pylsl.StreamOutlet, stop: threading.Event, log: list) -> threading.Thread:
    """Push 4-sample chunks at 100 Hz with explicit stamps, remembering what was sent."""

    def run() -> None:
        k = 0
        while not stop.is_set():
            t = pylsl.local_clock()
            stamps = (t - 0.03 + np.arange(4) * 0.01).tolist()
            x = np.arange(k, k + 4, dtype=np.float32)[:, None] * np.ones(6, np.float32)
            outlet.push_chunk(x, stamps)
            log.append((stamps, x))
            k += 4
            stop.wait(0.04)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


@pytest.mark.timeout(60)
def test_record_outlets_and_read_back(tmp_path: Path) -> None:
    sid = f"rec-{uuid.uuid4().hex[:8]}"
    imu = _imu_outlet(sid + "-imu")
    mk = pylsl.StreamOutlet(pylsl.StreamInfo("test-mk", "Markers", 1, 0, "string", sid + "-mk"))
    infos = find_streams(
        [StreamSelector(source_id=sid + "-imu"), StreamSelector(source_id=sid + "-mk")], 3.0
    )
    assert len(infos) == 2
    out = tmp_path / "rec.xdf"
    rec = XdfRecorder(out, infos, offset_interval_s=0.3, boundary_interval_s=0.3)
    rec.start()  # returns once both inlets are connected
    stop, sent = threading.Event(), []
    th = _pusher(imu, stop, sent)
    mk_stamps = []
    for word in ("start", "heel strike", "stop"):
        mk_stamps.append(pylsl.local_clock())
        mk.push_sample([word], mk_stamps[-1])
        time.sleep(0.4)
    stop.set()
    th.join()
    time.sleep(0.3)
    rec.stop()
    assert rec.join(10.0)

    streams, _ = pyxdf.load_xdf(out, synchronize_clocks=False, dejitter_timestamps=False)
    by = {s["info"]["type"][0]: s for s in streams}
    imu_s, mk_s = by["IMU"], by["Markers"]
    want_t = np.concatenate([s for s, _ in sent])
    want_x = np.concatenate([x for _, x in sent])
    np.testing.assert_array_equal(imu_s["time_stamps"], want_t)
    np.testing.assert_array_equal(imu_s["time_series"], want_x)
    assert [v[0] for v in mk_s["time_series"]] == ["start", "heel strike", "stop"]
    np.testing.assert_array_equal(mk_s["time_stamps"], mk_stamps)
    labels = [c["label"][0] for c in imu_s["info"]["desc"][0]["channels"][0]["channel"]]
    assert labels == ["gyr_x", "gyr_y", "gyr_z", "acc_x", "acc_y", "acc_z"]
    assert imu_s["info"]["source_id"] == [sid + "-imu"]
    # Clock offsets: one at connect, every 0.3 s, one at stop; all ~0 on one machine.
    assert len(imu_s["clock_times"]) >= 4
    assert np.all(np.abs(imu_s["clock_values"]) < 1e-3)
    assert imu_s["footer"]["info"]["sample_count"] == [str(len(want_t))]
    assert rec.counts["test-imu/IMU"] == len(want_t)
    with out.open("rb") as f:
        tags = [tag for _, tag, _, _ in scan_chunks(f, out.stat().st_size).chunks]
    assert tags.count(5) >= 3 and tags.count(6) == 2  # boundaries; one footer per stream
    synced, _ = pyxdf.load_xdf(out)  # and the default pyxdf path works on it
    assert len(synced) == 2


@pytest.mark.timeout(60)
def test_killed_recorder_leaves_a_readable_file(tmp_path: Path) -> None:
    sid = f"kill-{uuid.uuid4().hex[:8]}"
    imu = _imu_outlet(sid)
    out = tmp_path / "killed.xdf"
    stop, sent = threading.Event(), []
    th = _pusher(imu, stop, sent)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.commands.record", str(out), "--select", f"source_id={sid}",
         "--no-progress", "--wait", "3", "--boundary-interval", "0.2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        n_chunks = 0
        while time.monotonic() < deadline and n_chunks < 10:
            time.sleep(0.1)
            if out.exists():
                with out.open("rb") as f:
                    n_chunks = sum(
                        tag == 3 for _, tag, _, _ in scan_chunks(f, out.stat().st_size).chunks
                    )
            assert proc.poll() is None, proc.communicate()
        assert n_chunks >= 10, "the recorder wrote no samples"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop.set()
        th.join()
    assert proc.returncode == -signal.SIGKILL
    streams, _ = pyxdf.load_xdf(out)  # pyxdf itself reads it
    assert len(streams) == 1 and "footer" not in streams[0]
    got = len(streams[0]["time_stamps"])
    assert got >= 40
    rec = load_xdf(out, synchronize_clocks=False, dejitter_timestamps=False)
    s = rec.streams[0]
    assert len(s.clock_times) >= 1 and s.footer is None
    # What was recorded is exactly a stretch of what was sent, in order.
    all_t = np.concatenate([t for t, _ in sent])
    start = int(np.searchsorted(all_t, s.raw_time_stamps[0]))
    np.testing.assert_array_equal(s.raw_time_stamps, all_t[start : start + len(s)])


@pytest.mark.timeout(60)
def test_record_cli_with_duration(tmp_path: Path, capsys) -> None:
    sid = f"cli-{uuid.uuid4().hex[:8]}"
    imu = _imu_outlet(sid)
    stop, sent = threading.Event(), []
    th = _pusher(imu, stop, sent)
    out = tmp_path / "cli.xdf"
    try:
        rc = record_cmd.main(
            [
                str(out),
                "--select",
                f"source_id={sid}",
                "--duration",
                "0.8",
                "--wait",
                "1",
                "--no-progress",
            ]
        )
    finally:
        stop.set()
        th.join()
    assert rc == 0, capsys.readouterr().err
    s = load_xdf(out).streams[0]
    assert s.source_id == sid and 40 <= len(s) <= 200 and s.footer is not None


def test_no_matching_stream_is_a_clear_error(capsys) -> None:
    sel = StreamSelector(source_id=f"absent-{uuid.uuid4().hex}")
    with pytest.raises(LookupError, match="absent-"):
        find_streams([sel], 0.3)
    rc = record_cmd.main(
        ["/tmp/never.xdf", "--select", f"source_id={sel.source_id}", "--wait", "0.3"]
    )
    assert rc == 2 and "no LSL stream matches" in capsys.readouterr().err
