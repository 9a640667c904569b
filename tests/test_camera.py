"""Pinhole cameras: geometry, OpenCV agreement, calibration files (incl. a real QTM export)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fusion.body import BodyModel
from fusion.camera import (
    PinholeCamera,
    default_rig,
    load_rig,
    parse_qualisys_calibration,
    save_rig,
)
from fusion.kinematics import forward_kinematics
from fusion.skeleton import DOFS

QCA = Path("video_pose/pose2sim_demo_4cam/Calib.qca.txt")

# Pose2Sim's own conversion of this very calibration (perfanalytics/pose2sim @ a948c205cf,
# Pose2Sim/S00_Demo_Session/S00_Calibration/Calib_qualisys.toml): K, Rodrigues rvec, t (m).
# An independent implementation's output, used as the reference for ours.
POSE2SIM = {
    "cam01": (
        [[1681.244873046875, 0.0, 532.97369384375], [0.0, 1681.075439453125, 948.137390140625]],
        [1.6882754799999993, 1.0483220499999997, -0.41955852000000016],
        [0.3211048899999996, 0.9563320600000009, 2.8907130499999996],
    ),
    "cam02": (
        [[1673.729614265625, 0.0, 534.494567875], [0.0, 1673.79724121875, 963.225891109375]],
        [1.34975875, 1.5963809099999993, -1.1983285799999999],
        [-0.11152829000000014, 0.7766184800000001, 3.0675519599999994],
    ),
    "cam03": (
        [[1681.598388671875, 0.0, 513.20837403125], [0.0, 1681.509887703125, 955.005126953125]],
        [0.8109654899999995, -2.1972129299999996, 1.3760277799999996],
        [-0.7934803899999995, 0.32283594000000126, 4.353514870000001],
    ),
    "cam04": (
        [[1675.234985359375, 0.0, 540.106201171875], [0.0, 1675.204223640625, 964.0302734375]],
        [1.4045571699999995, -1.3887412699999993, 0.42535743000000026],
        [0.5030217200000007, 0.04894934000000107, 4.406564460000002],
    ),
}


def _distorted_camera(n_coeffs: int = 5) -> PinholeCamera:
    dist = np.array([-0.21, 0.08, 0.0012, -0.0009, -0.015, 0.01, -0.004, 0.002])[:n_coeffs]
    cam = PinholeCamera.look_at("d", (4.0, -3.0, 1.8), (0.0, 0.0, 1.0), fov_deg=70.0)
    K = cam.K.copy()
    K[0, 0], K[1, 1] = 1400.0, 1390.0  # non-square pixels
    K[0, 2], K[1, 2] = 950.0, 530.0
    return PinholeCamera("d", K, cam.R, cam.t, dist, 1920, 1080)


def test_optical_axis_projects_to_principal_point() -> None:
    cams = [*default_rig(4), _distorted_camera(8)]
    for cam in cams:
        pts = cam.centre + np.outer([0.3, 1.0, 7.5, 40.0], cam.optical_axis)
        uv = cam.project(pts)
        # tolerance 1e-9 px: the axis has x = y = 0, where distortion is exactly zero
        np.testing.assert_allclose(uv, np.tile(cam.principal_point, (4, 1)), atol=1e-9)
        assert cam.visible(pts).all()


def test_projection_matches_opencv() -> None:
    rng = np.random.default_rng(0)
    for n in (4, 5, 8):
        cam = _distorted_camera(n)
        pts = rng.uniform([-1.0, -1.0, 0.0], [1.0, 1.0, 2.0], size=(50, 17, 3))
        rvec, _ = cv2.Rodrigues(cam.R)
        ref, _ = cv2.projectPoints(pts.reshape(-1, 1, 3), rvec, cam.t, cam.K, cam.dist)
        # tolerance 1e-6 px: same model, double precision both sides
        np.testing.assert_allclose(cam.project(pts), ref.reshape(50, 17, 2), atol=1e-6)


def test_visibility_behind_and_outside() -> None:
    cam = PinholeCamera.look_at("c", (5.0, 0.0, 1.0), (0.0, 0.0, 1.0), fov_deg=60.0)
    behind = np.array([[8.0, 0.0, 1.0]])
    assert not cam.visible(behind).any()
    assert np.isnan(cam.project(behind)).all()
    far_side = np.array([[0.0, 20.0, 1.0]])  # 76° off axis, outside a 60° field
    assert not cam.visible(far_side).any()
    assert cam.visible(np.array([[0.0, 0.5, 1.5]])).all()
    # look_at orientation: world up is image up, the camera's right is world -y seen from +x
    uv = cam.project(np.array([[0.0, 0.0, 1.5], [0.0, 0.0, 0.5], [0.0, 1.0, 1.0]]))
    assert uv[0, 1] < cam.principal_point[1] < uv[1, 1]
    assert uv[2, 0] > cam.principal_point[0]  # +y (subject's left, facing the camera) → right


def test_distortion_fold_back_is_not_visible() -> None:
    # a strong barrel model folds far off-axis points back inside the image: not visible
    cam = PinholeCamera.look_at("c", (5.0, 0.0, 1.0), (0.0, 0.0, 1.0), fov_deg=60.0)
    cam = PinholeCamera("c", cam.K, cam.R, cam.t, np.array([-0.4, 0.0, 0.0, 0.0]), 1920, 1080)
    off_axis = np.array([[3.0, 3.0, 1.0]])  # 56° off axis: beyond the 30° half-field
    uv = cam.project(off_axis)
    assert 0 <= uv[0, 0] < 1920  # the polynomial really does fold it back in
    assert not cam.visible(off_axis).any()


def test_default_rig_sees_a_standing_person() -> None:
    body = BodyModel()
    pose = forward_kinematics(
        body, np.zeros((1, len(DOFS))), np.array([[0.0, 0.0, body.standing_root_height]]), 0.0
    )
    cams = default_rig(n=6, radius=5.0, height=2.2)
    assert len({c.name for c in cams}) == 6
    for cam in cams:
        np.testing.assert_allclose(np.linalg.norm(cam.centre[:2]), 5.0, atol=1e-12)
        np.testing.assert_allclose(cam.centre[2], 2.2, atol=1e-12)
        assert cam.visible(pose.keypoints).all(), cam.name


def test_calibration_round_trip(tmp_path: Path) -> None:
    cams = [*default_rig(3), _distorted_camera(8)]
    save_rig(tmp_path / "calib.json", cams)
    back = load_rig(tmp_path / "calib.json")
    pts = np.random.default_rng(1).uniform(-1, 1, size=(20, 3)) + [0.0, 0.0, 1.0]
    for a, b in zip(cams, back, strict=True):
        assert a.name == b.name and (a.width, a.height) == (b.width, b.height)
        np.testing.assert_array_equal(a.project(pts), b.project(pts))
    with pytest.raises(ValueError, match=r"lacks keys \['K'\]"):
        PinholeCamera.from_dict({k: v for k, v in cams[0].to_dict().items() if k != "K"})


def test_qualisys_calibration_matches_pose2sim(shared_data: Path) -> None:
    cams = parse_qualisys_calibration(shared_data / QCA)
    assert [c.name for c in cams] == ["cam01", "cam02", "cam03", "cam04"]
    for cam in cams:
        K, rvec, t = POSE2SIM[cam.name]
        assert (cam.width, cam.height) == (1088, 1920)
        # tolerances: K 1e-6 px, rotation 1e-7 rad, translation 1e-7 m (float round-off only)
        np.testing.assert_allclose(cam.K[:2], K, atol=1e-6)
        np.testing.assert_allclose(cv2.Rodrigues(cam.R)[0].ravel(), rvec, atol=1e-7)
        np.testing.assert_allclose(cam.t, t, atol=1e-7)
        assert cam.dist is not None and cam.dist[0] < 0  # raw QTM k1, OpenCV order
        # the capture volume (around the world origin, z up) is in view of every camera
        assert cam.visible(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])).all(), cam.name
        assert cam.centre[2] > 1.0


def test_bad_parameters_raise_clear_errors(tmp_path: Path) -> None:
    good = default_rig(1)[0]
    with pytest.raises(ValueError, match="width=0"):
        PinholeCamera("x", good.K, good.R, good.t, None, 0, 1080)
    with pytest.raises(ValueError, match="focal lengths"):
        PinholeCamera("x", np.diag([0.0, 1.0, 1.0]), good.R, good.t)
    with pytest.raises(ValueError, match="dist must hold"):
        PinholeCamera("x", good.K, good.R, good.t, np.zeros(3) + 0.1)
    with pytest.raises(ValueError, match="not a proper rotation"):
        PinholeCamera("x", good.K, 2 * good.R, good.t)
    with pytest.raises(ValueError, match="radius"):
        default_rig(radius=0.0)
    bad = tmp_path / "bad.qca.txt"
    bad.write_text(
        "<calibration><cameras><camera serial='c9'><fov_video left='0' top='0' right='9' "
        "bottom='9'/></camera></cameras></calibration>"
    )
    with pytest.raises(ValueError, match=r"camera 'c9': missing <transform>"):
        parse_qualisys_calibration(bad)
