"""The body model, the clinical angle conventions and forward kinematics."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.angles import angles_from_rotations, dofs_from_rotations, local_rotations
from fusion.body import BodyModel, BodyShape
from fusion.kinematics import Motion, forward_kinematics
from fusion.skeleton import ANGLE_INDEX, DOF_INDEX, DOFS, KEYPOINT_INDEX, SEGMENTS

BODY = BodyModel(BodyShape(height=1.70))


def _pose_with(**dofs: float):
    d = np.zeros((1, len(DOFS)))
    for name, value in dofs.items():
        d[0, DOF_INDEX[name]] = value
    return forward_kinematics(BODY, d, np.zeros(3), np.zeros(1))


def _kp(pose, name: str) -> np.ndarray:
    return pose.keypoints[0, KEYPOINT_INDEX[name]]


def test_angles_round_trip_through_rotations() -> None:
    """angles → rotations → angles returns the same angles (within 1e-9°)."""
    rng = np.random.default_rng(3)
    dofs = rng.uniform(-60, 60, (2000, len(DOFS)))
    for name in DOFS:  # keep the floating axis away from the gimbal lock at ±90°
        if any(k in name for k in ("adduction", "obliquity", "lateral", "abduction", "inversion")):
            dofs[:, DOF_INDEX[name]] *= 0.6
    heading = rng.uniform(-np.pi, np.pi, 2000)
    pose = forward_kinematics(BODY, dofs, rng.normal(size=(2000, 3)), heading)
    np.testing.assert_allclose(dofs_from_rotations(pose.R, heading), dofs, atol=1e-9)


@pytest.mark.parametrize(
    ("dof", "point", "axis", "direction"),
    [
        ("hip_flexion_r", "knee_r", 0, +1),  # flexion brings the knee forward
        ("hip_flexion_l", "knee_l", 0, +1),
        ("knee_flexion_r", "ankle_r", 0, -1),  # knee flexion takes the ankle back
        ("ankle_dorsiflexion_l", "toe_l", 2, +1),  # dorsiflexion lifts the toe
        ("hip_adduction_r", "knee_r", 1, +1),  # adduction moves the right knee left
        ("hip_adduction_l", "knee_l", 1, -1),  # … and the left knee right
        ("shoulder_abduction_r", "elbow_r", 1, -1),
        ("shoulder_abduction_l", "elbow_l", 1, +1),
        ("shoulder_flexion_r", "elbow_r", 0, +1),
        ("elbow_flexion_l", "wrist_l", 0, +1),
        ("pelvis_tilt", "head", 0, +1),  # anterior tilt leans the body forward
        ("pelvis_obliquity", "hip_r", 2, +1),  # right side up
        ("pelvis_rotation", "hip_r", 0, +1),  # right side forward
        ("trunk_lateral", "shoulder_l", 2, +1),  # bending right lifts the left shoulder
    ],
)
def test_angle_signs_follow_clinical_conventions(dof, point, axis, direction) -> None:
    moved = _kp(_pose_with(**{dof: 20.0}), point)[axis] - _kp(_pose_with(), point)[axis]
    assert direction * moved > 0.01, f"{dof}=+20° moved {point} by {moved:+.3f} m on axis {axis}"


@pytest.mark.parametrize("side", ["l", "r"])
def test_internal_hip_rotation_turns_toes_in(side: str) -> None:
    pose = _pose_with(**{f"hip_rotation_{side}": 15.0})
    fp = angles_from_rotations(pose.R, pose.heading)[0, ANGLE_INDEX[f"foot_progression_{side}"]]
    assert fp == pytest.approx(15.0, abs=1e-9)


def test_neutral_pose_stands_on_the_floor() -> None:
    pose = forward_kinematics(
        BODY, np.zeros((1, len(DOFS))), [0, 0, BODY.standing_root_height], np.zeros(1)
    )
    for name in ("heel_l", "heel_r", "toe_l", "toe_r"):
        assert _kp(pose, name)[2] == pytest.approx(0.0, abs=1e-12)
    assert 1.45 < _kp(pose, "head")[2] < 1.70  # head point below the vertex of a 1.70 m body
    assert np.allclose(pose.R, np.eye(3))


def test_bone_lengths_are_constant_during_motion() -> None:
    rng = np.random.default_rng(0)
    pose = forward_kinematics(
        BODY, rng.uniform(-50, 50, (500, len(DOFS))), np.zeros(3), rng.uniform(-3, 3, 500)
    )
    kp = pose.keypoints
    for a, b in [
        ("hip_l", "knee_l"),
        ("knee_r", "ankle_r"),
        ("shoulder_l", "elbow_l"),
        ("elbow_r", "wrist_r"),
        ("heel_l", "toe_l"),
        ("hip_l", "hip_r"),
    ]:
        d = np.linalg.norm(kp[:, KEYPOINT_INDEX[a]] - kp[:, KEYPOINT_INDEX[b]], axis=1)
        assert np.ptp(d) < 1e-12, f"{a}–{b} length varies by {np.ptp(d)} m"
    assert np.linalg.norm(kp[0, KEYPOINT_INDEX["hip_l"]] - kp[0, KEYPOINT_INDEX["knee_l"]]) == (
        pytest.approx(BODY.thigh_length)
    )


def test_segment_lengths_scale_with_height_and_shape() -> None:
    tall = BodyModel(BodyShape(height=1.90))
    assert tall.leg_length / BODY.leg_length == pytest.approx(1.90 / 1.70)
    long_legs = BodyModel(BodyShape(height=1.70, leg_scale=1.1))
    assert long_legs.thigh_length == pytest.approx(1.1 * BODY.thigh_length)
    assert long_legs.upper_arm_length == pytest.approx(BODY.upper_arm_length)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": -1.7}, "BodyShape.height"),
        ({"height": float("nan")}, "BodyShape.height"),
        ({"leg_scale": 2.0}, "BodyShape.leg_scale"),
    ],
)
def test_bad_body_parameters_name_the_parameter(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        BodyShape(**kwargs)


def test_local_rotations_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="DOFS"):
        local_rotations(np.zeros((3, len(DOFS) - 1)))


def test_motion_is_smooth_and_evaluable_between_grid_samples() -> None:
    t = np.arange(0, 2.0, 1 / 100)
    dofs = np.zeros((len(t), len(DOFS)))
    dofs[:, DOF_INDEX["knee_flexion_l"]] = 30 + 25 * np.sin(2 * np.pi * t)
    motion = Motion(t=t, dofs=dofs, root=np.zeros((len(t), 3)), heading=np.zeros(len(t)), body=BODY)
    tq = np.array([0.1234, 1.5678])
    knee = motion.angles(tq)[:, ANGLE_INDEX["knee_flexion_l"]]
    np.testing.assert_allclose(knee, 30 + 25 * np.sin(2 * np.pi * tq), atol=1e-3)
    with pytest.raises(ValueError, match="outside the motion"):
        motion.pose(np.array([2.5]))
    assert motion.pose(tq).R.shape == (2, len(SEGMENTS), 3, 3)
