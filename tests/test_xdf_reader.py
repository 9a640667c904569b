"""XDF loading on real files: selection, empty streams, raw stamps, bad and truncated files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from drivers.selectors import StreamSelector
from drivers.xdf_reader import XdfFormatError, load_xdf, parse_selector, scan_chunks

MUSE = "xdf/muselsl2_muse_imu"
EX = "xdf/xdf_modules_example_files"
EDGE = "xdf/xdf_rs_edge_cases"


def test_muse_streams_share_a_name_and_are_told_apart(shared_data: Path) -> None:
    rec = load_xdf(shared_data / MUSE / "sub-P001_ses-S001_task-Default_run-001_eeg.xdf")
    assert [s.name for s in rec.streams] == ["Muse"] * 4
    assert sorted(s.type for s in rec.streams) == ["ACC", "EEG", "GYRO", "PPG"]
    assert len({s.key for s in rec.streams}) == 4
    acc = next(s for s in rec.streams if s.type == "ACC")
    assert acc.channel_labels() == ["ACC_X", "ACC_Y", "ACC_Z"]
    assert acc.time_series.shape == (573, 3) and acc.time_series.dtype == np.float32
    assert acc.nominal_srate == 52.0 and acc.effective_srate == pytest.approx(51.87, abs=0.01)
    # Raw stamps as recorded step backwards; pyxdf's synchronised ones do not.
    assert np.sum(np.diff(acc.raw_time_stamps) < 0) == 2
    assert np.all(np.diff(acc.time_stamps) > 0)
    ppg = next(s for s in rec.streams if s.type == "PPG")
    assert len(ppg) == 0 and ppg.time_series.shape[0] == 0 and len(ppg.raw_time_stamps) == 0
    assert rec.arrival is not None and rec.warnings == []


def test_select_by_type_source_id_and_combination(shared_data: Path) -> None:
    path = shared_data / MUSE / "sub-P032_ses-S001_task-Default_run-001_eeg.xdf"
    gyro = load_xdf(path, ["type=GYRO"])
    assert [s.type for s in gyro.streams] == ["GYRO"]
    imu = load_xdf(path, ["name=Muse,type=ACC", StreamSelector(type="GYRO")])
    assert sorted(s.type for s in imu.streams) == ["ACC", "GYRO"]
    by_src = load_xdf(path, ["source_id=Muse_00:55:DA:B7:E8:C3"])
    assert len(by_src.streams) == 4
    with pytest.raises(ValueError, match=r"no stream matches type='EMG'.*type='ACC'"):
        load_xdf(path, ["type=EMG"])


def test_parse_selector() -> None:
    assert parse_selector("Muse") == StreamSelector(name="Muse")
    assert parse_selector("type=ACC, source-id=x") == StreamSelector(type="ACC", source_id="x")
    with pytest.raises(ValueError, match="bad stream selector"):
        parse_selector("colour=red")


def test_empty_streams_file(shared_data: Path) -> None:
    rec = load_xdf(shared_data / EX / "empty_streams.xdf")
    n = {s.name: len(s) for s in rec.streams}
    assert sorted(n.values()) == [0, 0, 1, 10]
    assert all(s.footer is not None for s in rec.streams)
    empty_num = next(s for s in rec.streams if len(s) == 0 and s.channel_format != "string")
    assert empty_num.time_series.shape == (0, 1)
    data = next(s for s in rec.streams if len(s) == 10)
    assert data.time_series.dtype == np.int32


def test_clock_resets_file_has_two_clock_segments(shared_data: Path) -> None:
    rec = load_xdf(shared_data / EX / "clock_resets.xdf")
    eeg = next(s for s in rec.streams if s.type == "EEG")
    assert eeg.clock_segments == [(0, 12875), (12876, 27814)]
    assert len(eeg.clock_times) == 115
    assert np.all(np.diff(eeg.time_stamps) > 0)
    assert np.sum(np.diff(eeg.raw_time_stamps) < -1000) == 1  # the raw clock restarted


def test_minimal_values_match_upstream_docs(shared_data: Path) -> None:
    rec = load_xdf(shared_data / EX / "minimal.xdf", synchronize_clocks=False)
    num = next(s for s in rec.streams if s.channel_format == "int16")
    np.testing.assert_array_equal(num.time_series[0], [192, 255, 238])
    np.testing.assert_array_equal(num.time_series[-1], [15, 25, 35])
    np.testing.assert_allclose(num.raw_time_stamps, 5.1 + 0.1 * np.arange(9), atol=1e-9)
    txt = next(s for s in rec.streams if s.channel_format == "string")
    assert [v[0] for v in txt.time_series[1:5]] == ["Hello", "World", "from", "LSL"]
    assert txt.stream_id == 46202862


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "name",
    ["chunk_length_lie.xdf", "out_of_order_clock_offsets.xdf", "out_of_order_sample_chunk.xdf"],
)
def test_malformed_files_fail_clearly_or_recover(shared_data: Path, name: str) -> None:
    path = shared_data / EDGE / name
    try:
        rec = load_xdf(path)
    except XdfFormatError as e:
        assert name in str(e) and e.problem
        assert "byte" in e.problem  # says where
        return
    assert rec.warnings, "recovered from a malformed file without saying so"
    for s in rec.streams:
        assert len(s.raw_time_stamps) == len(s.time_stamps)


def test_chunk_length_lie_names_the_lie(shared_data: Path) -> None:
    with pytest.raises(XdfFormatError, match=r"chunk_length_lie.xdf: .*byte 64: StreamHeader"):
        load_xdf(shared_data / EDGE / "chunk_length_lie.xdf")


def test_not_xdf_and_missing(tmp_path: Path) -> None:
    with pytest.raises(XdfFormatError, match="does not exist"):
        load_xdf(tmp_path / "nope.xdf")
    bad = tmp_path / "bad.xdf"
    bad.write_bytes(b"PK\x03\x04 zip, not xdf")
    with pytest.raises(XdfFormatError, match=r"bad.xdf: not an XDF file"):
        load_xdf(bad)


def test_truncated_file_reads_up_to_its_last_chunk(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / MUSE / "sub-P050_ses-S001_task-Default_run-001_eeg.xdf"
    full = load_xdf(src)
    with src.open("rb") as f:
        scan = scan_chunks(f, src.stat().st_size)
    cut_at = scan.chunks[len(scan.chunks) // 2][0] + 9  # inside a chunk, mid-file
    part = tmp_path / "killed.xdf"
    shutil.copyfile(src, part)
    with part.open("r+b") as f:
        f.truncate(cut_at)
    rec = load_xdf(part)
    assert rec.truncated and any("ends inside the chunk" in w for w in rec.warnings)
    n_full = sum(len(s) for s in full.streams)
    n_part = sum(len(s) for s in rec.streams)
    assert 0 < n_part < n_full
    for s in rec.streams:
        f = next(x for x in full.streams if x.stream_id == s.stream_id)
        np.testing.assert_array_equal(s.raw_time_stamps, f.raw_time_stamps[: len(s)])
        assert s.footer is None  # the footers were never written
