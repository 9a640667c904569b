"""XDF writing: every format round-trips through pyxdf; a real recording survives a rewrite."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pylsl
import pytest
import pyxdf

from drivers.xdf_reader import BOUNDARY_SIGNATURE, load_xdf, scan_chunks
from drivers.xdf_writer import XdfWriter, varlen

logging.getLogger("pyxdf").setLevel(logging.ERROR)


def _info(name: str, n: int, rate: float, fmt: str) -> str:
    info = pylsl.StreamInfo(name, "Test", n, rate, fmt, f"src-{name}")
    chans = info.desc().append_child("channels")
    for i in range(n):
        ch = chans.append_child("channel")
        ch.append_child_value("label", f"{name}_{i}")
        ch.append_child_value("unit", "rad/s")
    return info.as_xml()


def test_varlen_widths() -> None:
    assert varlen(5) == b"\x01\x05"
    assert varlen(300) == b"\x04" + (300).to_bytes(4, "little")
    assert varlen(1 << 33) == b"\x08" + (1 << 33).to_bytes(8, "little")


def test_every_format_round_trips_through_pyxdf(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "all.xdf"
    data = {
        "f32": (np.float32, rng.normal(size=(50, 6))),
        "f64": (np.float64, rng.normal(size=(50, 2))),
        "i8": (np.int8, rng.integers(-128, 128, (50, 3))),
        "i16": (np.int16, rng.integers(-(1 << 15), 1 << 15, (50, 3))),
        "i32": (np.int32, rng.integers(-(1 << 31), 1 << 31, (50, 1))),
        "i64": (np.int64, rng.integers(-(1 << 62), 1 << 62, (50, 2))),
    }
    fmts = {
        "f32": "float32",
        "f64": "double64",
        "i8": "int8",
        "i16": "int16",
        "i32": "int32",
        "i64": "int64",
    }
    stamps = 1000.0 + np.arange(50) / 100
    with XdfWriter(path) as w:
        for sid, (name, (dt, x)) in enumerate(data.items(), start=1):
            w.add_stream(sid, _info(name, x.shape[1], 100, fmts[name]))
            w.write_samples(sid, stamps[:20], x[:20].astype(dt))
            w.write_clock_offset(sid, 1000.0, -0.25)
            w.write_samples(sid, stamps[20:], x[20:].astype(dt))
            w.write_clock_offset(sid, 1000.5, -0.25)
        w.add_stream(99, _info("txt", 2, 0, "string"))
        w.write_samples(99, [1000.1, 1000.2], [["start", "é ü ✓"], ["", "x" * 300]])
        w.write_boundary()
    streams, header = pyxdf.load_xdf(path, synchronize_clocks=False, dejitter_timestamps=False)
    assert header["info"]["version"] == ["1.0"]
    by_name = {s["info"]["name"][0]: s for s in streams}
    for name, (dt, x) in data.items():
        s = by_name[name]
        np.testing.assert_array_equal(s["time_series"], x.astype(dt))
        assert s["time_series"].dtype == dt
        np.testing.assert_array_equal(s["time_stamps"], stamps)
        assert s["clock_values"] == [-0.25, -0.25]
        assert s["footer"]["info"]["sample_count"] == ["50"]
        labels = s["info"]["desc"][0]["channels"][0]["channel"]
        assert labels[0]["label"] == [f"{name}_0"]
    assert by_name["txt"]["time_series"] == [["start", "é ü ✓"], ["", "x" * 300]]
    synced, _ = pyxdf.load_xdf(path, dejitter_timestamps=False)
    np.testing.assert_allclose(synced[0]["time_stamps"], stamps - 0.25)


def test_rewriting_a_real_recording_keeps_pyxdf_results(shared_data: Path, tmp_path: Path) -> None:
    src = load_xdf(shared_data / "xdf/xdf_modules_example_files/clock_resets.xdf")
    out = tmp_path / "rewritten.xdf"
    with XdfWriter(out) as w:
        for s in src.streams:
            w.add_stream(s.stream_id, s.header_xml)
        # Same chunk order as the original file, so the rewrite is a faithful copy.
        pos_s = dict.fromkeys(range(len(src.streams)), 0)
        pos_o = dict.fromkeys(range(len(src.streams)), 0)
        for i, kind, n in src.arrival:
            s = src.streams[i]
            if kind == "samples":
                a = pos_s[i]
                w.write_samples(s.stream_id, s.raw_time_stamps[a : a + n], s.time_series[a : a + n])
                pos_s[i] += n
            else:
                j = pos_o[i]
                w.write_clock_offset(s.stream_id, s.clock_times[j], s.clock_values[j])
                pos_o[i] += 1
    again = load_xdf(out)
    for a, b in zip(src.streams, again.streams, strict=True):
        assert (a.name, a.type, a.source_id) == (b.name, b.type, b.source_id)
        np.testing.assert_array_equal(a.raw_time_stamps, b.raw_time_stamps)
        np.testing.assert_allclose(a.time_stamps, b.time_stamps, rtol=0, atol=1e-9)
        assert a.clock_segments == b.clock_segments
        if a.channel_format == "string":
            assert a.time_series == b.time_series
        else:
            np.testing.assert_array_equal(a.time_series, b.time_series)


def test_each_chunk_is_on_disk_as_soon_as_written(tmp_path: Path) -> None:
    path = tmp_path / "live.xdf"
    w = XdfWriter(path)
    w.add_stream(1, _info("imu", 3, 100, "float32"))
    w.write_samples(1, [1.0, 1.01], np.ones((2, 3)))
    w.write_boundary()
    # Without close(): what a killed recorder leaves behind is complete and readable.
    with path.open("rb") as f:
        scan = scan_chunks(f, path.stat().st_size)
    assert [tag for _, tag, _, _ in scan.chunks] == [1, 2, 3, 5]
    assert scan.truncated_at is None
    assert BOUNDARY_SIGNATURE in path.read_bytes()
    streams, _ = pyxdf.load_xdf(path)
    assert len(streams[0]["time_stamps"]) == 2 and "footer" not in streams[0]
    w.close()


def test_bad_calls_name_the_stream(tmp_path: Path) -> None:
    with XdfWriter(tmp_path / "x.xdf") as w:
        w.add_stream(1, _info("imu", 3, 100, "float32"))
        with pytest.raises(ValueError, match=r"stream 1: samples of shape \(2, 2\)"):
            w.write_samples(1, [1.0, 2.0], np.zeros((2, 2)))
        with pytest.raises(KeyError, match="stream 7 has no StreamHeader"):
            w.write_samples(7, [1.0], np.zeros((1, 3)))
        with pytest.raises(ValueError, match="stream 2: header XML"):
            w.add_stream(2, "<info><channel_count>x</channel_count></info>")
