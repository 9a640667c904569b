"""Segment frames from markers (fusion/markers.py) and the conventions check against OpenSim."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fusion.angles import angles_from_rotations
from fusion.body import BodyModel, BodyShape
from fusion.kinematics import forward_kinematics
from fusion.markers import (
    CALIBRATED,
    LATERAL,
    compare_series,
    frames_from_markers,
    frames_to_angles,
    harrington_hjc,
    opensim_to_lab,
    rigid_fit,
)
from fusion.skeleton import ANGLE_INDEX, ANGLES, DOF_INDEX, DOFS, SEGMENT_INDEX
from services.commands import conventions

BODY = BodyModel(BodyShape(height=1.70))
KNEE_W, ANKLE_W, RADIUS = 0.10, 0.07, 0.007


def _virtual_markers(pose, lateral_only: bool) -> dict[str, np.ndarray]:
    """Markers fixed in the segments of an FK pose, placed so that every anatomical rule in
    fusion.markers reproduces the body's own frames (Harrington-consistent pelvis markers)."""
    hw = BODY.hip_width
    pw = (hw / 2 - 0.0073) / 0.33  # so that Harrington's lateral offset lands on the hip
    pd = 0.16
    back = 0.24 * pd + 0.0099
    up = 0.30 * pw + 0.0109
    local: dict[str, tuple[str, np.ndarray]] = {
        "R.ASIS": ("pelvis", np.array([back, -pw / 2, up])),
        "L.ASIS": ("pelvis", np.array([back, pw / 2, up])),
        "V.Sacral": ("pelvis", np.array([back - pd, 0.0, up])),
    }
    for s, S, lat in (("l", "L", 1.0), ("r", "R", -1.0)):
        th, sh = BODY.thigh_length, BODY.shank_length
        local[f"{S}.Thigh.Upper"] = (f"thigh_{s}", np.array([0.03, lat * 0.06, -0.12]))
        local[f"{S}.Thigh.Front"] = (f"thigh_{s}", np.array([0.07, lat * 0.02, -0.25]))
        local[f"{S}.Thigh.Rear"] = (f"thigh_{s}", np.array([-0.04, lat * 0.05, -0.28]))
        local[f"{S}.Shank.Upper"] = (f"shank_{s}", np.array([0.04, lat * 0.05, -0.10]))
        local[f"{S}.Shank.Front"] = (f"shank_{s}", np.array([0.06, lat * 0.01, -0.22]))
        local[f"{S}.Shank.Rear"] = (f"shank_{s}", np.array([-0.05, lat * 0.04, -0.25]))
        k_off = KNEE_W / 2 + (RADIUS if lateral_only else 0.0)
        a_off = ANKLE_W / 2 + (RADIUS if lateral_only else 0.0)
        local[f"{S}.Knee.Lat"] = (f"thigh_{s}", np.array([0.0, lat * k_off, -th]))
        local[f"{S}.Knee.Med"] = (f"thigh_{s}", np.array([0.0, -lat * k_off, -th]))
        local[f"{S}.Ankle.Lat"] = (f"shank_{s}", np.array([0.0, lat * a_off, -sh]))
        local[f"{S}.Ankle.Med"] = (f"shank_{s}", np.array([0.0, -lat * a_off, -sh]))
        local[f"{S}.Heel"] = (f"foot_{s}", np.array([-0.05, 0.0, -0.04]))
        local[f"{S}.Toe.Tip"] = (f"foot_{s}", np.array([0.18, 0.0, -0.04]))
        local[f"{S}.Toe.Lat"] = (f"foot_{s}", np.array([0.14, lat * 0.04, -0.04]))
        local[f"{S}.Toe.Med"] = (f"foot_{s}", np.array([0.14, -lat * 0.04, -0.04]))
    out = {}
    for name, (seg, p) in local.items():
        i = SEGMENT_INDEX[seg]
        out[name] = pose.origin[:, i] + pose.R[:, i] @ p
    return out


def _walk_pose(n: int = 120, knee_rotation: float = 0.0):
    t = np.linspace(0.0, 2.0, n)
    ph = 2 * np.pi * t / 1.1
    dofs = np.zeros((n, len(DOFS)))
    sets = {
        "pelvis_tilt": 10 + 3 * np.sin(2 * ph),
        "pelvis_obliquity": 4 * np.sin(ph),
        "pelvis_rotation": 6 * np.cos(ph),
        "hip_flexion": 20 * np.sin(ph),
        "hip_adduction": 5 * np.sin(ph + 0.4),
        "hip_rotation": 8 * np.cos(ph),
        "knee_flexion": 30 + 30 * np.sin(ph - 1.0),
        "ankle_dorsiflexion": 10 * np.sin(ph + 2.0),
        "ankle_rotation": -5 + 3 * np.sin(ph),
    }
    for name, v in sets.items():
        for s, sign in (("l", -1.0), ("r", 1.0)):
            key = name if name.startswith("pelvis") else f"{name}_{s}"
            dofs[:, DOF_INDEX[key]] = v if name.startswith("pelvis") else sign * v
    for s in ("l", "r"):
        dofs[:, DOF_INDEX[f"knee_flexion_{s}"]] = 30 + 30 * np.sin(ph - (1.0 if s == "r" else 4.1))
        dofs[:, DOF_INDEX[f"knee_rotation_{s}"]] = knee_rotation
    heading = np.full(n, 0.3)
    root = np.stack([1.2 * t * np.cos(0.3), 1.2 * t * np.sin(0.3), np.full(n, 0.9)], axis=1)
    return t, forward_kinematics(BODY, dofs, root, heading)


_COMPARED = [
    a for a in ANGLES if a.startswith(("pelvis_", "hip_", "knee_", "ankle_", "foot_progression"))
]


def test_calibrated_protocol_recovers_the_bodys_own_angles() -> None:
    """Markers on a posed body → frames → angles equal the body's angles (knee rotation too)."""
    static_pose = forward_kinematics(BODY, np.zeros((5, len(DOFS))), [0, 0, 0.9], np.zeros(5))
    t, pose = _walk_pose(knee_rotation=7.0)
    frames = frames_from_markers(
        _virtual_markers(pose, False), t, CALIBRATED, static=_virtual_markers(static_pose, False)
    )
    ours = frames_to_angles(frames)
    truth = angles_from_rotations(pose.R, pose.heading)
    for a in _COMPARED:
        i = ANGLE_INDEX[a]
        np.testing.assert_allclose(ours[:, i], truth[:, i], atol=1e-6, err_msg=a)
    np.testing.assert_allclose(frames.heading, 0.3, atol=1e-9)
    np.testing.assert_allclose(frames.joint_centres["hip_r"], pose.origin[:, SEGMENT_INDEX["thigh_r"]], atol=1e-9)  # fmt: skip


def test_lateral_protocol_finds_the_knee_axis_functionally() -> None:
    """Only lateral knee/ankle markers, no static trial: the functional axis + half widths
    recover a hinge knee's angles (the iteration on the centres converges exactly)."""
    t, pose = _walk_pose()
    protocol = replace(
        LATERAL,
        sacrum=("V.Sacral",),
        thigh_cluster=CALIBRATED.thigh_cluster,
        shank_cluster=CALIBRATED.shank_cluster,
        knee_lat="{s}.Knee.Lat",
        ankle_lat="{s}.Ankle.Lat",
        toe="{s}.Toe.Tip",
    )
    markers = _virtual_markers(pose, True)
    frames = frames_from_markers(
        markers, t, protocol, knee_width=KNEE_W, ankle_width=ANKLE_W, marker_radius=RADIUS
    )
    ours = frames_to_angles(frames)
    truth = angles_from_rotations(pose.R, pose.heading)
    for a in _COMPARED:
        err = np.abs(ours[:, ANGLE_INDEX[a]] - truth[:, ANGLE_INDEX[a]]).max()
        assert err < 1e-6, f"{a}: max error {err:.3g}°"


def test_opensim_axes_and_units() -> None:
    """X forward, Y up, Z right in mm → x forward, y left, z up in m."""
    np.testing.assert_allclose(opensim_to_lab(np.array([1.0, 2.0, 3.0]), 1e-3), [1e-3, -3e-3, 2e-3])
    R = opensim_to_lab(np.eye(3), 1.0)
    assert np.isclose(np.linalg.det(R), 1.0)  # a proper rotation: handedness kept


def test_rigid_fit_recovers_a_motion() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 3))
    Rt = Rotation.random(10, random_state=1).as_matrix()
    p = rng.normal(size=(10, 3))
    cur = np.einsum("tij,kj->tki", Rt, ref) + p[:, None]
    R, q = rigid_fit(ref, cur)
    np.testing.assert_allclose(R, Rt, atol=1e-9)
    np.testing.assert_allclose(q, p, atol=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        rigid_fit(ref[:2], cur[:, :2])


def test_harrington_offsets() -> None:
    """Hip centres: symmetric, posterior, inferior and lateral of the mid-ASIS point."""
    ra, la, sac = np.array([[0.0, -0.12, 1.0]]), np.array([[0.0, 0.12, 1.0]]), np.array([[-0.16, 0, 1.0]])  # fmt: skip
    hl, hr, R = harrington_hjc(ra, la, sac)
    np.testing.assert_allclose(R[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(hl[0], [-(0.24 * 0.16 + 0.0099), 0.33 * 0.24 + 0.0073, 1.0 - (0.30 * 0.24 + 0.0109)])  # fmt: skip
    np.testing.assert_allclose(hr[0] * [1, -1, 1], hl[0])


def test_compare_series_reads_sign_and_offset() -> None:
    x = np.sin(np.linspace(0, 6, 100)) * 20
    c = compare_series(x + 5, x)
    assert c["r"] > 0.999 and abs(c["offset"] - 5) < 1e-9 and c["rmse_centred"] < 1e-9
    assert compare_series(-x, x)["r"] < -0.999
    with pytest.raises(ValueError, match="finite"):
        compare_series(np.full(5, np.nan), x[:5])


@pytest.fixture(scope="module")
def check(shared_data):
    return conventions.conventions_check(shared_data)


def test_conventions_agree_with_opensim_ik(check) -> None:
    """Real markers (OpenSim subject01) vs that trial's IK: sagittal angles agree in sign and
    shape (r ≥ 0.95, offset-removed RMSE ≤ 4°); nothing is anti-correlated."""
    assert check["reference"]["samples"] >= 50
    for block in ("calibrated", "lateral"):
        rows = {r["angle"]: r for r in check[block]["rows"]}
        for s in ("l", "r"):
            for a in (f"hip_flexion_{s}", f"knee_flexion_{s}"):
                assert rows[a]["r"] > 0.98 and rows[a]["rmse_centred"] < 4.0, (block, rows[a])
            ank = rows[f"ankle_dorsiflexion_{s}"]
            assert ank["r"] > 0.8 and ank["rmse_centred"] < 4.0, (block, ank)
            assert rows[f"hip_adduction_{s}"]["r"] > 0.75
        assert rows["pelvis_rotation"]["r"] > 0.9
        assert not any(r["r"] < -0.8 for r in rows.values())
        assert abs(rows["knee_flexion_r"]["offset"]) < 10
    assert check["ok"]


def test_knee_sign_mapping_is_needed(check, shared_data) -> None:
    """OpenSim's knee_angle is negative in flexion: without the −1 our knee anti-correlates."""
    row = next(r for r in check["calibrated"]["rows"] if r["angle"] == "knee_flexion_r")
    assert row["sign"] == -1.0 and row["r"] > 0.98


def test_markers_walk_is_another_trial_with_normal_kinematics(check) -> None:
    mw = check["markers_walk"]
    assert mw["pelvis_travel_m"] > 2.0  # overground, unlike the IK trial (walking in place)
    assert check["reference"]["ik_pelvis_tx_range_m"] < 0.1
    rows = {r["angle"]: r for r in mw["rows"]}
    assert rows["hip_flexion_r"]["r"] > 0.95 and rows["knee_flexion_r"]["r"] > 0.95


def test_command_prints_tables_and_json(shared_data, capsys) -> None:
    rc = conventions.run(argparse.Namespace(json=False, data=shared_data))
    out = capsys.readouterr().out
    assert rc == 0 and "| knee_flexion_r | knee_angle_r (×-1) |" in out
    rc = conventions.run(argparse.Namespace(json=True, data=shared_data))
    assert rc == 0 and json.loads(capsys.readouterr().out)["ok"] is True


def test_command_missing_data_is_a_clear_error(tmp_path, capsys) -> None:
    rc = conventions.run(argparse.Namespace(json=False, data=tmp_path))
    assert rc == 2 and "opensim_core_walking" in capsys.readouterr().err


def test_missing_marker_is_named() -> None:
    t, pose = _walk_pose(n=10)
    markers = _virtual_markers(pose, False)
    del markers["R.ASIS"]
    with pytest.raises(KeyError, match=r"no marker 'R\.ASIS'"):
        frames_from_markers(markers, t, CALIBRATED, static=markers)
    with pytest.raises(ValueError, match="needs a static trial"):
        frames_from_markers(_virtual_markers(pose, False), t, CALIBRATED)
