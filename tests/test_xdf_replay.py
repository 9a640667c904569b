"""Replay real XDF files over real LSL on this machine and receive them."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest

from drivers.xdf_reader import XdfFormatError
from drivers.xdf_replay import XdfReplayer, verify_replay
from services.commands import replay as replay_cmd

MUSE = "xdf/muselsl2_muse_imu"
P031 = f"{MUSE}/sub-P031_ses-S001_task-Default_run-001_eeg.xdf"  # 5 s, four streams
P003 = f"{MUSE}/sub-P003_ses-S001_task-Default_run-001_eeg.xdf"  # three empty streams
MINIMAL = "xdf/xdf_modules_example_files/minimal.xdf"  # int16 + strings, 0.9 s


def _suffix() -> str:
    return f"#test-{uuid.uuid4().hex[:8]}"


@pytest.mark.timeout(60)
def test_replay_timing_matches_pyxdf_over_lsl(shared_data: Path) -> None:
    rows = verify_replay(shared_data / P031, speed=4.0)
    assert sorted(r.key.split("#")[0] for r in rows) == [
        "Muse/ACC",
        "Muse/EEG",
        "Muse/GYRO",
        "Muse/PPG",
    ]
    for r in rows:
        assert r.received == r.expected > 200, r
        assert r.values_ok, r
        assert r.err_max_ms < 1.0, r  # the ≤ 1 ms target
        # Delivery: never ahead of the stamps (all pushed at once would be), and not stalled.
        # Lateness itself depends on machine load (tens of ms on a busy CI box), so loose.
        assert -1.0 < r.lag_median_ms < 250.0, r
        assert r.lag_p99_ms < 1000.0, r


@pytest.mark.timeout(60)
def test_strings_and_integers_replay(shared_data: Path) -> None:
    rows = verify_replay(shared_data / MINIMAL, speed=2.0)
    assert {r.key.split("/")[0] for r in rows} == {"SendDataC", "SendDataString"}
    for r in rows:
        assert r.received == r.expected == 9 and r.values_ok and r.err_max_ms < 1.0, r


@pytest.mark.timeout(60)
def test_selected_stream_keeps_its_metadata(shared_data: Path) -> None:
    suffix = _suffix()
    with XdfReplayer(shared_data / P031, ["type=GYRO"], speed=20.0, source_id_suffix=suffix) as rep:
        assert [s.type for s in rep.streams] == ["GYRO"]
        found = pylsl.resolve_byprop("source_id", "Muse_00:55:DA:B7:E8:C3" + suffix, timeout=5)
        assert len(found) == 1  # only the selected stream is published
        inlet = pylsl.StreamInlet(found[0])
        full = inlet.info(timeout=5)
        assert (full.name(), full.type(), full.channel_count()) == ("Muse", "GYRO", 3)
        assert full.nominal_srate() == 52.0 and full.channel_format() == pylsl.cf_float32
        assert full.get_channel_labels() == ["GYRO_X", "GYRO_Y", "GYRO_Z"]
        assert full.desc().child_value("manufacturer") == "Muse"
        assert full.get_channel_units() == ["dps"] * 3
        inlet.close_stream()


@pytest.mark.timeout(60)
def test_empty_streams_are_published_too(shared_data: Path) -> None:
    suffix = _suffix()
    with XdfReplayer(shared_data / P003, speed=50.0, source_id_suffix=suffix) as rep:
        assert sorted(len(s) for s in rep.streams)[:3] == [0, 0, 0]
        found = pylsl.resolve_byprop(
            "source_id", "Muse_00:55:DA:B7:E8:C3" + suffix, minimum=4, timeout=5
        )
        assert sorted(i.type() for i in found) == ["ACC", "EEG", "GYRO", "PPG"]


@pytest.mark.timeout(60)
def test_loop_progress_and_stop(shared_data: Path) -> None:
    seen: list[tuple[float, int]] = []
    two_passes = threading.Event()

    def progress(pos: float, duration: float, pass_index: int) -> None:
        seen.append((pos, pass_index))
        if pass_index >= 2:
            two_passes.set()

    rep = XdfReplayer(
        shared_data / MINIMAL, speed=8.0, loop=True, progress=progress, source_id_suffix=_suffix()
    )
    try:
        rep.start()
        assert two_passes.wait(10.0)
        rep.stop()
        assert rep.join(5.0)
    finally:
        rep.close()
    assert rep.passes >= 2
    assert all(n >= 18 for n in rep.sent.values())  # nine samples a pass, twice at least
    first = [p for p, k in seen if k == 0]
    assert first == sorted(first) and first[-1] == pytest.approx(rep.duration)
    # Loop passes continue the timeline: the second pass starts one period after the first.
    assert rep.loop_period == pytest.approx(rep.duration + 0.1)
    assert float(rep.rebase(rep.t0, 1) - rep.rebase(rep.t0, 0)) == pytest.approx(
        rep.loop_period / 8.0
    )


@pytest.mark.timeout(60)
def test_cli_verify_prints_the_table_and_passes(shared_data: Path, capsys) -> None:
    rc = replay_cmd.main(
        [str(shared_data / P031), "--verify", "--speed", "8", "--max-seconds", "2", "--no-progress"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "err p99" in out and "PASS" in out and out.count("Muse/") == 4


def test_cli_bad_file_is_a_clear_error(shared_data: Path, capsys) -> None:
    rc = replay_cmd.main([str(shared_data / "xdf/xdf_rs_edge_cases/chunk_length_lie.xdf")])
    err = capsys.readouterr().err
    assert rc == 2 and "chunk_length_lie.xdf" in err and "StreamHeader" in err
    with pytest.raises(ValueError, match="speed"):
        XdfReplayer(shared_data / MINIMAL, speed=0)
    with pytest.raises(XdfFormatError):
        XdfReplayer(shared_data / "xdf/missing.xdf")


def test_rebase_preserves_relative_timing(shared_data: Path) -> None:
    with XdfReplayer(shared_data / P031, speed=2.0, source_id_suffix=_suffix()) as rep:
        rep.t_start = 1000.0
        s = rep.streams[0]
        new = np.asarray(rep.rebase(s.time_stamps))
        np.testing.assert_allclose(np.diff(new), np.diff(s.time_stamps) / 2.0, rtol=1e-9)
        assert (
            min(float(np.asarray(rep.rebase(x.time_stamps[:1]))[0]) for x in rep.streams if len(x))
            == 1000.0
        )


def _lossy_recording(path: Path, source_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A 100 Hz IMU stream, 4 s, 25 samples lost in bursts and one stamp a little backwards,
    written as the recorder writes (4-sample chunks, clock offsets of 0). Returns what was
    written: (stamps, values)."""
    from drivers.xdf_writer import XdfWriter

    rng = np.random.default_rng(2)
    keep = np.ones(400, bool)
    keep[[*range(60, 70), *range(200, 210), *range(300, 305)]] = False
    k = np.flatnonzero(keep)
    t = 5000.0 + k * 0.01 + rng.normal(0.0, 5e-4, len(k))
    t[150] = t[149] - 0.002  # a stamp that steps back (as in the MuseLSL2 files)
    x = np.repeat(k[:, None].astype(np.float32), 6, axis=1)  # value: the true sample index
    header = (
        "<?xml version='1.0'?><info><name>lossy</name><type>IMU</type>"
        "<channel_count>6</channel_count><nominal_srate>100</nominal_srate>"
        f"<channel_format>float32</channel_format><source_id>{source_id}</source_id></info>"
    )
    with XdfWriter(path) as w:
        w.add_stream(1, header)
        w.write_clock_offset(1, float(t[0]) - 1.0, 0.0)
        for i in range(0, len(t), 4):
            w.write_samples(1, t[i : i + 4], x[i : i + 4])
        w.write_clock_offset(1, float(t[-1]) + 1.0, 0.0)
    return t, x


@pytest.mark.timeout(60)
def test_lossy_stream_is_replayed_on_its_recorded_stamps(tmp_path: Path) -> None:
    """Issue #5: pyxdf's dejitter fits one line of stamp on sample index, so after each loss
    the later samples are put early or late by up to half the losses (here tens of ms).
    By default the replayer sends the recorded stamps, in recorded order, as a live inlet
    received them; the values arrive unchanged."""
    path = tmp_path / "lossy.xdf"
    t, x = _lossy_recording(path, f"lossy-{uuid.uuid4().hex[:8]}")
    with XdfReplayer(path, source_id_suffix=_suffix()) as rep:
        np.testing.assert_allclose(rep.streams[0].time_stamps, t, rtol=0, atol=1e-9)
    with XdfReplayer(path, dejitter=True, source_id_suffix=_suffix()) as rep:
        off = np.abs(rep.streams[0].time_stamps - (5000.0 + x[:, 0] * 0.01))
        assert off.max() > 0.03  # the line fit the replayer no longer sends by default
    (row,) = verify_replay(path, speed=4.0)
    assert row.received == row.expected == len(t), row
    assert row.values_ok, row  # in recorded order, the step back included
    assert row.err_max_ms < 1.0, row  # the recorded stamps, to the LSL clock's precision
