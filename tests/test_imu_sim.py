"""Virtual IMUs against physics worked out by hand (no walking generator needed).

Motions here are built directly from smooth synthetic channels (sinusoids, constant turns),
so every expected value is analytic and independent of the sensor code.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fusion.body import BodyModel
from fusion.imu_sim import (
    ImuPlacement,
    default_placements,
    misplace,
    sensor_orientations,
    simulate_imu,
    simulate_imu_with_pose,
)
from fusion.kinematics import Motion
from fusion.skeleton import DOF_INDEX, DOFS, GRAVITY, SEGMENT_INDEX, SEGMENTS

BODY = BodyModel()


def _motion(duration: float, fs: float, dofs_fn=None, root_fn=None, heading_fn=None) -> Motion:
    t = np.arange(0.0, duration + 0.5 / fs, 1.0 / fs)
    dofs = np.zeros((len(t), len(DOFS))) if dofs_fn is None else dofs_fn(t)
    root = np.tile([0.0, 0.0, BODY.standing_root_height], (len(t), 1))
    if root_fn is not None:
        root = root_fn(t)
    heading = np.zeros(len(t)) if heading_fn is None else heading_fn(t)
    return Motion(t=t, dofs=dofs, root=root, heading=heading, body=BODY)


def _sinusoid_dofs(t: np.ndarray) -> np.ndarray:
    """Every DOF swings with its own frequency (0.6–2.2 Hz), amplitude 25° and phase."""
    k = np.arange(len(DOFS))
    freq = 0.6 + 1.6 * k / len(DOFS)
    return 25.0 * np.sin(2 * np.pi * freq[None, :] * t[:, None] + 0.7 * k[None, :])


def test_static_segment_reads_gravity_up_in_its_own_frame() -> None:
    # a static, non-neutral pose: every segment tilted differently, body turned 40°
    pose = np.zeros(len(DOFS))
    for name, v in {
        "hip_flexion_r": 35.0,
        "knee_flexion_r": 50.0,
        "ankle_dorsiflexion_r": -15.0,
        "trunk_flexion": 20.0,
        "trunk_lateral": 8.0,
        "shoulder_abduction_l": 40.0,
        "elbow_flexion_l": 70.0,
        "pelvis_obliquity": 5.0,
    }.items():
        pose[DOF_INDEX[name]] = v
    motion = _motion(
        1.0,
        100.0,
        dofs_fn=lambda t: np.tile(pose, (len(t), 1)),
        heading_fn=lambda t: np.full(len(t), np.radians(40.0)),
    )
    placements = misplace(default_placements(BODY), np.random.default_rng(3), sigma_deg=30.0)
    times = np.linspace(0.0, 1.0, 11)  # includes both ends (shifted stencil)
    imu = simulate_imu(motion, times, placements)
    R_s = sensor_orientations(motion, times, placements)
    up_in_sensor = np.einsum("nsji,j->nsi", R_s, np.array([0.0, 0.0, GRAVITY]))
    # tolerance: 1e-6 m/s² (finite differences of a constant pose are exact to rounding)
    np.testing.assert_allclose(imu[..., 3:], up_in_sensor, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(imu[..., 3:], axis=-1), GRAVITY, atol=1e-6)
    np.testing.assert_allclose(imu[..., :3], 0.0, atol=1e-9)
    # neutral pose, aligned sensors: exactly +9.81 along each sensor's own z ("up") axis
    neutral = _motion(1.0, 100.0)
    imu0 = simulate_imu(neutral, times, default_placements(BODY))
    np.testing.assert_allclose(imu0[..., 3:], np.tile([0.0, 0.0, GRAVITY], (11, 13, 1)), atol=1e-6)


def test_integrated_gyroscope_reproduces_sensor_orientation() -> None:
    motion = _motion(
        4.0,
        500.0,
        dofs_fn=_sinusoid_dofs,
        heading_fn=lambda t: 0.8 * np.sin(2 * np.pi * 0.3 * t),
    )
    placements = misplace(default_placements(BODY), np.random.default_rng(7))
    dt = 1e-3
    t_grid = np.arange(0.0, 4.0 + dt / 2, dt)
    # 4th-order Magnus step from the rate at the two Gauss-Legendre points of each interval
    g = np.sqrt(3.0) / 6.0
    w1 = simulate_imu(motion, t_grid[:-1] + (0.5 - g) * dt, placements)[..., :3]
    w2 = simulate_imu(motion, t_grid[:-1] + (0.5 + g) * dt, placements)[..., :3]
    omega = dt / 2 * (w1 + w2) + np.sqrt(3.0) / 12 * dt * dt * np.cross(w1, w2)
    steps = Rotation.from_rotvec(omega.reshape(-1, 3)).as_matrix().reshape(*omega.shape, 3)
    R_true = sensor_orientations(motion, t_grid, placements)
    R = R_true[0].copy()
    worst = 0.0
    for k in range(len(steps)):
        R = R @ steps[k]  # body-frame rate: R' = R [w]x
        if k % 100 == 99:
            err = Rotation.from_matrix(np.einsum("sji,sjk->sik", R_true[k + 1], R)).magnitude()
            worst = max(worst, float(np.degrees(err).max()))
    # tolerance: 1e-3° after 4 s of 25° swings on every joint (the integrator's own error is
    # ~2e-5°; a wrong frame, sign or scale of the gyro gives degrees)
    assert worst < 1e-3, f"integrated gyro drifted {worst:.2e}° from the true orientation"


def test_accelerometer_matches_analytic_translation_and_turn() -> None:
    # pelvis translates x = A sin(w t) and turns at a constant rate Ω; segments keep neutral pose
    A, w, Om = 0.3, 2 * np.pi * 1.0, 0.9
    z0 = BODY.standing_root_height
    motion = _motion(
        2.0,  # two whole periods: the natural-spline end conditions are exact (x'' = 0 at ends)
        1000.0,
        root_fn=lambda t: np.stack([A * np.sin(w * t), 0 * t, np.full(len(t), z0)], axis=1),
        heading_fn=lambda t: Om * t,
    )
    r = np.array([-0.1, 0.05, 0.03])  # sensor position in the pelvis frame
    mount = Rotation.from_euler("xyz", [20, -35, 60], degrees=True).as_matrix()
    placements = [ImuPlacement("pelvis", r, mount)]
    times = np.linspace(0.0, 2.0, 41)  # ends included
    imu = simulate_imu(motion, times, placements)[:, 0]
    c, s = np.cos(Om * times), np.sin(Om * times)
    Rz = np.zeros((len(times), 3, 3))
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = c, -s, s, c, 1.0
    acc = np.zeros((len(times), 3))
    acc[:, 0] = -A * w * w * np.sin(w * times)
    acc += -(Om**2) * np.einsum("nij,j->ni", Rz, np.array([r[0], r[1], 0.0]))  # centripetal
    acc[:, 2] += GRAVITY
    f_expected = np.einsum("ji,nkj,nk->ni", mount, Rz, acc)
    gyro_expected = np.tile(mount.T @ np.array([0.0, 0.0, Om]), (len(times), 1))
    # tolerance: 1e-5 m/s² and 1e-7 rad/s (spline interpolation of a 1 kHz grid; the slid
    # stencil at both ends is ~2.5e-6 m/s² off, the interior ~1e-9)
    np.testing.assert_allclose(imu[:, 3:], f_expected, atol=1e-5)
    np.testing.assert_allclose(imu[:, :3], gyro_expected, atol=1e-7)


def test_default_placements_shape_and_order() -> None:
    placements = default_placements(BODY)
    assert [p.segment for p in placements] == list(SEGMENTS)
    motion = _motion(2.0, 120.0, dofs_fn=_sinusoid_dofs)
    imu = simulate_imu(motion, np.arange(0.0, 2.0, 0.01), placements)
    assert imu.shape == (200, 13, 6)
    assert np.all(np.isfinite(imu))
    # a thigh sensor on a swinging hip sees its flexion rate about its y axis
    thigh = imu[:, SEGMENT_INDEX["thigh_r"], :3]
    assert np.abs(thigh[:, 1]).max() > 1.0


def test_misplacement_angle_spread_matches_sigma() -> None:
    base = default_placements(BODY)
    rng = np.random.default_rng(11)
    angles = []
    for _ in range(300):
        moved = misplace(base, rng, sigma_deg=13.5)
        rel = np.stack([p0.mounting.T @ p.mounting for p0, p in zip(base, moved, strict=True)])
        angles.append(Rotation.from_matrix(rel).magnitude())
        assert all(
            np.array_equal(p.position, p0.position) for p0, p in zip(base, moved, strict=True)
        )
    rms = np.degrees(np.sqrt(np.mean(np.square(angles))))
    assert abs(rms - 13.5) < 0.5, rms  # 3900 draws: the RMS is within ~2 % of sigma
    same = misplace(base, rng, sigma_deg=0.0)
    for p0, p in zip(base, same, strict=True):
        np.testing.assert_allclose(p.mounting, p0.mounting, atol=1e-15)


def test_bad_parameters_raise_clear_errors() -> None:
    motion = _motion(1.0, 100.0)
    placements = default_placements(BODY)
    with pytest.raises(ValueError, match="h=0"):
        simulate_imu(motion, np.array([0.5]), placements, h=0.0)
    with pytest.raises(ValueError, match="leave the motion"):
        simulate_imu(motion, np.array([1.5]), placements)
    with pytest.raises(ValueError, match="segment='tail'"):
        ImuPlacement("tail", np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="not a proper rotation"):
        ImuPlacement("head", np.zeros(3), np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="sigma_deg"):
        misplace(placements, np.random.default_rng(0), sigma_deg=-1.0)


def test_pose_from_the_stencil_is_the_pose_at_the_sample_times() -> None:
    motion = _motion(2.0, 120.0, dofs_fn=_sinusoid_dofs, heading_fn=lambda t: 0.3 * t)
    times = np.array([0.0, 0.0005, 0.5, 1.25, 1.9995, 2.0])  # ends: slid stencils
    imu, pose = simulate_imu_with_pose(motion, times, default_placements(BODY))
    ref = motion.pose(times)
    np.testing.assert_array_equal(pose.R, ref.R)
    np.testing.assert_array_equal(pose.keypoints, ref.keypoints)
    np.testing.assert_array_equal(imu, simulate_imu(motion, times, default_placements(BODY)))
    empty, pose0 = simulate_imu_with_pose(motion, np.zeros(0), default_placements(BODY))
    assert empty.shape == (0, 13, 6) and pose0.R.shape == (0, 13, 3, 3)
