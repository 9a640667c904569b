"""Sensor-to-segment calibration from standing + walking: mountings and filter headings."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.activities import stand_then_walk as generated_stand_then_walk
from fusion.body import BodyModel
from fusion.calibration import (
    CalibrationConfig,
    calibrate,
    mounting_error_deg,
    standing_estimates,
    standing_pose_dofs,
    standing_rotations,
)
from fusion.imu_sim import default_placements, misplace, simulate_imu
from fusion.kinematics import Motion
from fusion.normative import CHANNELS, PCT, load_default_normative
from fusion.orientation import FilterConfig, OrientationFilter
from fusion.skeleton import DOF_INDEX, DOFS, SEGMENT_INDEX, SEGMENTS

FS = 60.0
FILTER = FilterConfig("mahony", k_p=0.1, k_i=0.003, integration="exact", acc_scale="gravity")


def smooth_walk(stand: float = 2.5, walk: float = 9.0, heading: float = 0.6) -> Motion:
    """Neutral stance, then a walk on the normative mean curves (smooth, no foot planting),
    arms swinging with the opposite leg, starting over 1 s."""
    body = BodyModel()
    mean = load_default_normative().periodic_mean("Free")
    t = np.arange(0.0, stand + walk, 1 / 200)
    w = np.clip((t - stand) / 1.0, 0.0, 1.0)
    w = w * w * (3 - 2 * w)
    phase = np.cumsum(w * 0.9) / 200

    def curve(name: str, ph: np.ndarray) -> np.ndarray:
        return np.interp((ph % 1.0) * 100, PCT, mean[CHANNELS.index(name)])

    d = np.zeros((len(t), len(DOFS)))
    for side, off in (("r", 0.0), ("l", 0.5)):
        ph = phase + off
        for ch in ("hip_flexion", "hip_adduction", "hip_rotation", "knee_flexion"):
            d[:, DOF_INDEX[f"{ch}_{side}"]] = w * curve(ch, ph)
        d[:, DOF_INDEX[f"ankle_dorsiflexion_{side}"]] = w * curve("ankle_dorsiflexion", ph)
        # arm forward with the opposite leg (its hip flexion peaks at this side's 50 %)
        d[:, DOF_INDEX[f"shoulder_flexion_{side}"]] = w * 15 * np.cos(2 * np.pi * (ph - 0.5))
        d[:, DOF_INDEX[f"elbow_flexion_{side}"]] = w * (15 + 10 * np.cos(2 * np.pi * (ph - 0.55)))
    for ch in ("pelvis_tilt", "pelvis_obliquity", "pelvis_rotation"):
        d[:, DOF_INDEX[ch]] = w * (
            curve(ch, phase) - (mean[CHANNELS.index(ch)].mean() if ch == "pelvis_tilt" else 0.0)
        )
    d[:, DOF_INDEX["trunk_rotation"]] = -w * curve("pelvis_rotation", phase)
    s = np.cumsum(1.2 * w) / 200
    root = np.zeros((len(t), 3))
    root[:, 0], root[:, 1] = s * np.cos(heading), s * np.sin(heading)
    root[:, 2] = body.standing_root_height - w * (0.02 - 0.015 * np.cos(4 * np.pi * phase))
    return Motion(t=t, dofs=d, root=root, heading=np.full(len(t), heading), body=body)


def stand_then_walk(seed: int, stand: float = 3.0, walk: float = 9.0) -> Motion:
    """The synthetic engine: quiet standing, then gait initiation into a walk."""
    rng = np.random.default_rng(seed)
    body, norm = BodyModel(), load_default_normative()
    return generated_stand_then_walk(stand, walk, body, rng, norm)


def _calibrate(motion: Motion, placements, t_walk: float, cfg: CalibrationConfig, walk_s=5.0):
    t = np.arange(0.0, motion.t[-1], 1 / FS)
    imu = simulate_imu(motion, t, placements)
    Q = OrientationFilter((13,), FILTER).run(imu[..., :3], imu[..., 3:], 1 / FS)
    i = round(t_walk * FS)
    s0, w1 = i - int(2.0 * FS), i + int(walk_s * FS)
    cal = calibrate(
        imu[s0:i, :, :3],
        imu[s0:i, :, 3:],
        Q[i - 1],
        imu[i:w1, :, :3],
        imu[i:w1, :, 3:],
        1 / FS,
        cfg,
    )
    return t, imu, Q, cal


def _segment_error_deg(motion: Motion, t: np.ndarray, Q: np.ndarray, cal, h0: float) -> np.ndarray:
    """Mean angle (deg) between estimated and true segment orientations, per segment."""
    R_est = cal.segment_rotations(Q)
    c, s = np.cos(-h0), np.sin(-h0)
    Yaw = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    R_true = np.einsum("ij,tsjk->tsik", Yaw, motion.pose(t).R)
    D = np.einsum("tsji,tsjk->tsik", R_true, R_est)
    ang = np.degrees(np.arccos(np.clip((np.trace(D, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
    return ang.mean(axis=0)


def test_recovers_misplaced_mountings_on_a_smooth_walk() -> None:
    motion = smooth_walk()
    placements = misplace(default_placements(motion.body), np.random.default_rng(7), 13.5)
    t, _, Q, cal = _calibrate(motion, placements, 2.5, CalibrationConfig(standing_pose="neutral"))
    assert cal.ok.all(), cal.notes
    err = mounting_error_deg(cal.mounting, np.stack([p.mounting for p in placements]))
    legs = [SEGMENT_INDEX[s] for s in SEGMENTS if s.startswith(("thigh", "shank", "foot"))]
    trunk = [SEGMENT_INDEX[s] for s in ("pelvis", "sternum", "head")]
    assert err[legs].max() < 3.0, dict(zip(SEGMENTS, err.round(1), strict=True))
    assert err[trunk].max() < 3.0, dict(zip(SEGMENTS, err.round(1), strict=True))
    assert err.max() < 12.0  # arms: the swing axis is the trunk's, mixed with elbow motion
    # and the whole chain: segment orientations in the subject frame over the walk
    seg = _segment_error_deg(motion, t[t > 8.0], Q[t > 8.0], cal, h0=0.6)
    assert seg[legs + trunk].max() < 4.0, dict(zip(SEGMENTS, seg.round(1), strict=True))


def test_generated_stand_then_walk_calibrates_legs_and_trunk() -> None:
    """The synthetic engine stands in a typical stance (pelvis tilted, feet out) and walks
    with foot planting; the legs and trunk come out calibrated, within the stance and
    functional-axis offsets the method has (a few degrees)."""
    motion = stand_then_walk(seed=1)
    placements = misplace(default_placements(motion.body), np.random.default_rng(3), 13.5)
    t, _, Q, cal = _calibrate(motion, placements, 2.7, CalibrationConfig())
    need = ["pelvis", "sternum"] + [f"{s}_{x}" for s in ("thigh", "shank", "foot") for x in "lr"]
    assert all(cal.ok[SEGMENT_INDEX[s]] for s in need), cal.notes
    seg = _segment_error_deg(motion, t[t > 9.0], Q[t > 9.0], cal, h0=0.0)
    idx = [SEGMENT_INDEX[s] for s in need]
    assert np.median(seg[idx]) < 6.0 and seg[idx].max() < 12.0, dict(
        zip(SEGMENTS, seg.round(1), strict=True)
    )


def test_standing_only_leaves_everything_but_gravity_unknown() -> None:
    motion = stand_then_walk(seed=2, stand=6.0, walk=1.0)
    placements = default_placements(motion.body)
    t = np.arange(0.0, 5.5, 1 / FS)
    imu = simulate_imu(motion, t, placements)
    Q = OrientationFilter((13,), FILTER).run(imu[..., :3], imu[..., 3:], 1 / FS)
    cal = calibrate(
        imu[:120, :, :3], imu[:120, :, 3:], Q[119], imu[120:, :, :3], imu[120:, :, 3:], 1 / FS
    )
    assert not cal.ok.any()
    assert "no dominant flexion axis" in cal.notes["thigh_l"]
    assert "limb" in cal.notes["pelvis"]


def test_a_missing_sensor_is_reported_and_the_rest_calibrates() -> None:
    motion = smooth_walk()
    placements = default_placements(motion.body)
    t = np.arange(0.0, motion.t[-1], 1 / FS)
    imu = simulate_imu(motion, t, placements)
    imu[:, SEGMENT_INDEX["shank_r"]] = np.nan
    Q = OrientationFilter((13,), FILTER).run(imu[..., :3], imu[..., 3:], 1 / FS)
    i = int(2.5 * FS)
    cal = calibrate(
        imu[:i, :, :3],
        imu[:i, :, 3:],
        Q[i - 1],
        imu[i : i + 300, :, :3],
        imu[i : i + 300, :, 3:],
        1 / FS,
        CalibrationConfig(standing_pose="neutral"),
    )
    assert not cal.ok[SEGMENT_INDEX["shank_r"]]
    assert cal.notes["shank_r"] == "no standing data"
    # a foot does not rotate in phase with its thigh: without the shank it is dropped, saying why
    assert not cal.ok[SEGMENT_INDEX["foot_r"]]
    assert "thigh_r" in cal.notes["foot_r"]
    assert cal.ok.sum() == 11
    assert np.isnan(cal.segment_rotations(Q[-1:])[0, SEGMENT_INDEX["shank_r"]]).all()


def test_gyro_bias_from_a_swaying_stance() -> None:
    """A sensor swaying by a few degrees while standing: the accelerometer's tilt change is
    taken out of the mean rate, so the bias comes out right where the plain mean does not."""
    T = 150
    t = np.arange(T) / FS
    tilt = np.radians(3.0) * np.sin(np.pi * t / t[-1] / 2)  # a slow 3° lean about x
    rate = np.zeros((T, 1, 3))
    rate[:, 0, 0] = np.gradient(tilt, t)
    bias = np.array([0.012, -0.007, 0.004])
    up = np.stack([np.zeros(T), np.sin(tilt), np.cos(tilt)], axis=1)  # gravity in sensor axes
    acc = 9.81 * up[:, None, :]
    _, est, g = standing_estimates(rate + bias, acc, 1 / FS)
    assert np.abs(est[0, :2] - bias[:2]).max() < 1e-3
    assert np.abs(rate[:, 0, 0].mean()) > 5e-3  # the plain mean would be off by this much
    assert g[0] == pytest.approx(9.81)


def test_assumed_stance_is_consistent_with_the_kinematics() -> None:
    R = standing_rotations(standing_pose_dofs("typical"))
    up = R[:, 2, 2]
    # thighs, shanks and trunk vertical; the pelvis tilted forward by the normative mean
    for seg in ("thigh_l", "shank_r", "sternum", "foot_l"):
        assert up[SEGMENT_INDEX[seg]] == pytest.approx(1.0, abs=1e-9)
    tilt = np.degrees(np.arccos(up[SEGMENT_INDEX["pelvis"]]))
    assert 8.0 < tilt < 15.0
    neutral = standing_rotations(standing_pose_dofs("neutral"))
    np.testing.assert_allclose(neutral, np.tile(np.eye(3), (13, 1, 1)), atol=1e-12)
