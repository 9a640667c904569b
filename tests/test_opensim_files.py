"""OpenSim TRC and MOT/STO readers: real files, and malformed ones failing with file:line."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.opensim_files import OpenSimFileError, read_mot, read_trc

FOLDER = ("markers", "opensim_core_walking")

TRC_HEAD = (
    "PathFileType\t4\t(X/Y/Z)\tx.trc\n"
    "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\n"
    "100\t100\t2\t2\tmm\n"
    "Frame#\tTime\tA\t\t\tB\t\t\n"
    "\t\tX1\tY1\tZ1\tX2\tY2\tZ2\n"
    "\n"
)


def test_reads_markers_walk(shared_data) -> None:
    trc = read_trc(shared_data.joinpath(*FOLDER, "markers_walk.trc"))
    assert trc.rate == 100.0 and trc.units == "mm" and trc.metres_per_unit == 1e-3
    assert len(trc.markers) == 41 and trc.xyz.shape == (238, 41, 3)
    assert trc.markers[:2] == ("R.Shoulder", "L.Shoulder") and "R.ASIS" in trc.markers
    np.testing.assert_allclose(trc.marker("R.Shoulder")[0], [-652.630, 1529.542, -94.520])
    assert trc.time[0] == 0.0 and np.isclose(trc.time[-1], 2.37) and trc.frame[-1] == 238
    with pytest.raises(KeyError, match=r"markers_walk\.trc: no marker 'R\.Nose'"):
        trc.marker("R.Nose")


def test_reads_ik_and_grf_tables(shared_data) -> None:
    ik = read_mot(shared_data.joinpath(*FOLDER, "subject01_walk1_ik.mot"))
    assert ik.in_degrees is True and ik.data.shape == (211, 23)
    assert ik.columns[0] == "pelvis_tilt" and "knee_angle_r" in ik.columns
    assert ik.time[0] == 0.5 and ik.time[-1] == 4.0
    assert np.isclose(ik.column("knee_angle_r")[0], -17.89026917)
    grf = read_mot(shared_data.joinpath(*FOLDER, "grf_walk.mot"))
    assert grf.in_degrees is False and grf.header["version"] == "1"
    assert grf.data.shape == (4778, 18)


def test_missing_trailing_marker_is_nan(tmp_path) -> None:
    p = tmp_path / "x.trc"
    p.write_text(TRC_HEAD + "1\t0.00\t1\t2\t3\t4\t5\t6\n2\t0.01\t1\t2\t3\n")
    trc = read_trc(p)
    assert np.isnan(trc.xyz[1, 1]).all() and trc.xyz[1, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nonsense\n" * 6, r"x.trc:1: not a TRC file"),
        (
            TRC_HEAD.replace("100\t100\t2\t2", "100\t100\t2\t3"),
            r"x.trc:4: header says NumMarkers=3",
        ),
        (TRC_HEAD + "1\t0.00\t1\t2\tabc\t4\t5\t6\n", r"x.trc:7: coordinate: 'abc' is not a number"),
        (TRC_HEAD + "1\t0.00\t1\t2\t3\t4\t5\t6\t7\t8\n", r"x.trc:7: 10 fields, expected 8"),
        (TRC_HEAD + "1\t0.01\t1\t2\t3\t4\t5\t6\n2\t0.01\t1\t2\t3\t4\t5\t6\n", "not increasing"),
        (TRC_HEAD, "no data rows"),
    ],
)
def test_bad_trc_names_file_and_line(tmp_path, text, match) -> None:
    p = tmp_path / "x.trc"
    p.write_text(text)
    with pytest.raises(OpenSimFileError, match=match):
        read_trc(p)


def test_unknown_unit_is_an_error(tmp_path) -> None:
    p = tmp_path / "x.trc"
    p.write_text(TRC_HEAD.replace("\tmm\n", "\tfurlong\n") + "1\t0\t1\t2\t3\t4\t5\t6\n")
    with pytest.raises(OpenSimFileError, match="unknown length unit 'furlong'"):
        _ = read_trc(p).metres_per_unit


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a=1\ntime\tq\n0\t1\n", "no 'endheader'"),
        ("inDegrees=yes\nendheader\nq\ttime\n0\t1\n", r"x.mot:3: first column label"),
        ("endheader\ntime\tq\n0\t1\n0.1\t2\t3\n", r"x.mot:4: 3 values, expected 2"),
        ("endheader\ntime\tq\n0\tx\n", r"x.mot:3: q: 'x' is not a number"),
        ("nRows=5\nendheader\ntime\tq\n0\t1\n", "nRows=5 but 1 data rows"),
        ("endheader\ntime\tq\tq\n0\t1\t2\n", "duplicate column labels"),
    ],
)
def test_bad_mot_names_file_and_line(tmp_path, text, match) -> None:
    p = tmp_path / "x.mot"
    p.write_text(text)
    with pytest.raises(OpenSimFileError, match=match):
        read_mot(p)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(OpenSimFileError, match=r"nope\.trc: cannot read"):
        read_trc(tmp_path / "nope.trc")
