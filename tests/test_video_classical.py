"""The classical video estimator: 2-D keypoints from calibrated cameras → joint angles.

Measured on the synthetic engine's walker (seed 1, 4 cameras of `default_rig`, 60 fps):
lower-limb RMSE ≈ 0.7° with perfect 2-D keypoints (the error is the pelvis-tilt prior), ≈ 3.8°
with 4 px detector noise. Pelvis tilt is NaN (no pelvic landmarks); hip and shoulder rotation
are NaN by default (long-axis rotations).
"""

from __future__ import annotations

import numpy as np
import pytest

from fusion.activities import MotionSpec, end_state, generate_motion
from fusion.body import BodyModel
from fusion.camera import default_rig
from fusion.estimators.base import SyncedBatch
from fusion.estimators.registry import create
from fusion.estimators.video_classical import LONG_AXIS, ClassicalVideoEstimator
from fusion.kinematics import Motion
from fusion.noise import NoiseParams, add_keypoint2d_noise
from fusion.normative import load_default_normative
from fusion.skeleton import ANGLE_INDEX, ANGLES, KEYPOINT_INDEX, LOWER_LIMB_ANGLES

FS = 60.0


@pytest.fixture(scope="module")
def scene() -> dict:
    rng = np.random.default_rng(1)
    body, norm = BodyModel(), load_default_normative()
    m1 = generate_motion(MotionSpec("stand", 2.0), body, rng, norm)
    m2 = generate_motion(MotionSpec("walk", 8.0), body, rng, norm, start=end_state(m1))
    motion = Motion(
        t=np.concatenate([m1.t, m2.t[1:]]),
        dofs=np.concatenate([m1.dofs, m2.dofs[1:]]),
        root=np.concatenate([m1.root, m2.root[1:]]),
        heading=np.concatenate([m1.heading, m2.heading[1:]]) - 0.4,
        body=body,
    )
    t = np.arange(2.0, 9.9, 1 / FS)
    pose = motion.pose(t)
    kp = pose.keypoints.copy()
    kp[..., :2] -= pose.origin[:, 2:3, :2]  # walking on the spot, as a tracking rig sees it
    cams = default_rig(4)
    uv = np.stack([c.project(kp) for c in cams], axis=1)
    vis = np.stack([c.visible(kp) for c in cams], axis=1)
    perfect = np.concatenate([uv, vis[..., None].astype(float)], axis=-1)
    noisy = add_keypoint2d_noise(uv, vis, np.random.default_rng(2), NoiseParams())
    return {
        "t": t,
        "truth": motion.angles(t),
        "cams": cams,
        "perfect": perfect,
        "noisy": noisy,
        "joints": kp,
    }


def _run(est, t, det, cam_mask=None, chunk=20) -> np.ndarray:
    out = []
    for a in range(0, len(t), chunk):
        n = len(t[a : a + chunk])
        m = np.ones((n, det.shape[1]), bool) if cam_mask is None else cam_mask[a : a + chunk]
        b = SyncedBatch(
            t=t[a : a + chunk],
            imu=np.zeros((n, 13, 6)),
            imu_mask=np.zeros((n, 13), bool),
            keypoints=det[a : a + chunk],
            keypoint_mask=m,
        )
        out.append(est.update("s", b).angles)
    return np.concatenate(out)


def _rmse(A, truth, names, sel) -> float:
    idx = [ANGLE_INDEX[a] for a in names if np.isfinite(A[sel, ANGLE_INDEX[a]]).any()]
    return float(np.sqrt(np.nanmean((A[sel][:, idx] - truth[sel][:, idx]) ** 2)))


def test_perfect_keypoints_give_the_angles(scene: dict) -> None:
    est = create("classical_video", cameras=scene["cams"])
    A = _run(est, scene["t"], scene["perfect"])
    sel = scene["t"] > 4.0  # the heading filter has settled
    assert _rmse(A, scene["truth"], LOWER_LIMB_ANGLES, sel) < 2.0
    # what video cannot see is NaN, everything else is there
    for a in ("pelvis_tilt", *LONG_AXIS):
        assert np.isnan(A[:, ANGLE_INDEX[a]]).all(), a
    rest = [ANGLE_INDEX[a] for a in ANGLES if a not in ("pelvis_tilt", *LONG_AXIS)]
    assert np.isfinite(A[:, rest]).all()
    for a in ("knee_flexion_l", "ankle_dorsiflexion_r", "elbow_flexion_l", "trunk_rotation"):
        err = A[sel, ANGLE_INDEX[a]] - scene["truth"][sel, ANGLE_INDEX[a]]
        assert np.sqrt(np.mean(err**2)) < 1.5, a


def test_detector_noise(scene: dict) -> None:
    A = _run(ClassicalVideoEstimator(scene["cams"]), scene["t"], scene["noisy"])
    sel = scene["t"] > 4.0
    rmse = _rmse(A, scene["truth"], LOWER_LIMB_ANGLES, sel)
    assert 1.0 < rmse < 6.0, rmse


def test_long_axis_estimate_when_asked(scene: dict) -> None:
    est = ClassicalVideoEstimator(scene["cams"], long_axis="estimate")
    A = _run(est, scene["t"], scene["perfect"])
    hip = ANGLE_INDEX["hip_rotation_r"]
    assert np.isfinite(A[:, hip]).all()
    sel = scene["t"] > 4.0
    # a best estimate: bounded, not exact (the knee plane is undefined when it is straight)
    assert np.sqrt(np.mean((A[sel, hip] - scene["truth"][sel, hip]) ** 2)) < 15.0


def test_lost_views_and_joints(scene: dict) -> None:
    det = scene["perfect"].copy()
    cam_mask = np.ones(det.shape[:2], bool)
    cam_mask[:, 0] = False  # one camera down: three are plenty
    det[:60, :, KEYPOINT_INDEX["knee_l"], 2] = 0.0  # the left knee undetected for 1 s
    est = ClassicalVideoEstimator(scene["cams"])
    A = _run(est, scene["t"], det, cam_mask)
    assert np.isnan(A[:60, ANGLE_INDEX["knee_flexion_l"]]).all()
    assert np.isnan(A[:60, ANGLE_INDEX["hip_flexion_l"]]).all()
    assert np.isfinite(A[:60, ANGLE_INDEX["knee_flexion_r"]]).all()
    assert np.isfinite(A[60:, ANGLE_INDEX["knee_flexion_l"]]).all()
    tri = est.last_triangulation["s"]
    assert (tri.n_views <= 3).all()
    with pytest.raises(ValueError, match="at least two calibrated cameras"):
        ClassicalVideoEstimator(scene["cams"][:1])
    with pytest.raises(ValueError, match="camera views"):
        _run(ClassicalVideoEstimator(scene["cams"][:3]), scene["t"][:5], det[:5])


def test_given_joint_centres_are_used_instead_of_triangulation(scene: dict) -> None:
    """A batch that carries 3-D joint centres needs no 2-D views (e.g. an evaluation feeding
    the same joints the neural video models get); masked joints give NaN like lost views."""
    t, joints = scene["t"][:120], scene["joints"][:120].copy()
    mask = np.ones(joints.shape[:2], bool)
    mask[:30, KEYPOINT_INDEX["knee_l"]] = False
    n, C = len(t), len(scene["cams"])
    b = SyncedBatch(
        t=t,
        imu=np.zeros((n, 13, 6)),
        imu_mask=np.zeros((n, 13), bool),
        keypoints=np.zeros((n, C, 17, 3)),
        keypoint_mask=np.zeros((n, C), bool),  # no view at all
        joints3d=joints,
        joints3d_mask=mask,
    )
    A = ClassicalVideoEstimator(scene["cams"]).update("s", b).angles
    assert np.isnan(A[:30, ANGLE_INDEX["knee_flexion_l"]]).all()
    knee = ANGLE_INDEX["knee_flexion_r"]
    ref = _run(ClassicalVideoEstimator(scene["cams"]), t, scene["perfect"][:120], chunk=120)
    assert np.nanmax(np.abs(A[:, knee] - ref[:, knee])) < 0.5
    assert np.isfinite(A[30:, ANGLE_INDEX["knee_flexion_l"]]).all()
