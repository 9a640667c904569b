"""The synthetic engine end to end: determinism, cross-modal consistency, the live lab."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fusion import synth
from fusion.activities import ACTIVITIES, MotionState
from fusion.camera import PinholeCamera
from fusion.imu_sim import simulate_imu
from fusion.kinematics import Motion
from fusion.noise import NoiseParams
from fusion.skeleton import ANGLES, DOFS, GAIT_EVENTS, GRAVITY, KEYPOINT_INDEX, SEGMENT_INDEX
from fusion.synth import (
    LabSpec,
    SequenceParams,
    SyntheticLab,
    generate_sequence,
)

SHORT = SequenceParams(duration=6.0)
CLEAN = replace(SHORT, noise=NoiseParams.clean())


@pytest.fixture(scope="module")
def clean_seq():
    return generate_sequence(CLEAN, 5)


def test_same_seed_gives_byte_identical_data() -> None:
    a = generate_sequence(SHORT, 123)
    b = generate_sequence(SHORT, 123)
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        assert a.arrays[k].dtype == b.arrays[k].dtype, k
        assert a.arrays[k].tobytes() == b.arrays[k].tobytes(), k
    c = generate_sequence(SHORT, 124)
    assert c.arrays["imu"].tobytes() != a.arrays["imu"].tobytes()
    # a noise knob changes only what it should: the motion and truth stay the same
    d = generate_sequence(replace(SHORT, noise=replace(SHORT.noise, keypoint_noise_px=9.0)), 123)
    assert d.arrays["angles"].tobytes() == a.arrays["angles"].tobytes()
    assert d.arrays["imu"].tobytes() == a.arrays["imu"].tobytes()


def test_shapes_units_and_labels(clean_seq) -> None:
    arr = clean_seq.arrays
    T = SHORT.n_frames
    assert T == 360
    assert arr["imu"].shape == (T, 13, 6) and arr["imu"].dtype == np.float32
    assert arr["imu_mask"].shape == (T, 13) and arr["imu_mask"].all()
    assert arr["keypoints3d"].shape == (T, 17, 3)
    assert arr["keypoints2d"].shape == (T, 4, 17, 3)
    assert arr["angles"].shape == (T, len(ANGLES))
    assert arr["rotations"].shape == (T, 13, 3, 3)
    np.testing.assert_allclose(np.diff(arr["t"]), 1 / 60, atol=1e-12)
    # root-relative: the true mid-hip is the origin (tolerance: float32 rounding)
    hips = arr["keypoints3d"][:, [KEYPOINT_INDEX["hip_l"], KEYPOINT_INDEX["hip_r"]]]
    np.testing.assert_allclose(hips.mean(axis=1), 0.0, atol=1e-6)
    R = arr["rotations"].astype(np.float64)
    np.testing.assert_allclose(
        R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-6
    )
    assert np.all(np.isfinite(arr["angles"]))
    assert set(np.unique(arr["event_kind"])) <= set(range(len(GAIT_EVENTS)))
    assert np.all((arr["event_t"] >= 0) & (arr["event_t"] <= arr["t"][-1]))
    assert np.all(arr["activity"] == ACTIVITIES.index("walk"))
    # stance flips to 1 at each heel strike and to 0 at each toe off
    for t, kind in zip(arr["event_t"], arr["event_kind"], strict=True):
        name = GAIT_EVENTS[kind]
        k = int(np.ceil(t * 60 - 1e-9))
        if k + 1 < T:
            side = 0 if name.endswith("_l") else 1
            assert arr["stance"][k + 1, side] == (1 if name.startswith("heel") else 0), name


def test_imu_agrees_with_stored_truth_rotations_and_mounting(clean_seq) -> None:
    """Sensor-frame specific force rotated back to global with the stored truth (segment
    rotation x stored mounting) averages to gravity-up over a walk: checks the frames."""
    arr = clean_seq.arrays
    for seg in ("pelvis", "sternum", "head"):  # segments that move with the body's mean speed
        i = SEGMENT_INDEX[seg]
        Rs = arr["rotations"][:, i].astype(float) @ arr["imu_mounting"][i].astype(float)
        f_global = np.einsum("nij,nj->ni", Rs, arr["imu"][:, i, 3:].astype(float))
        mean = f_global.mean(axis=0)
        # tolerance 0.15 m/s²: their mean acceleration over 6 s of walking (Δv / T) is small
        np.testing.assert_allclose(mean, [0.0, 0.0, GRAVITY], atol=0.15, err_msg=seg)
        # the gyro, rotated to global, matches the rotation rate of the stored orientations
        w_global = np.einsum("nij,nj->ni", Rs, arr["imu"][:, i, :3].astype(float))
        dR = Rs[2:] @ np.swapaxes(Rs[:-2], -1, -2)  # R(t+1/60) R(t-1/60)ᵀ ≈ exp(2Δt [ω]x)
        w_fd = (
            0.5
            * np.stack(
                [dR[:, 2, 1] - dR[:, 1, 2], dR[:, 0, 2] - dR[:, 2, 0], dR[:, 1, 0] - dR[:, 0, 1]],
                axis=1,
            )
            * 30.0
        )
        err = np.abs(w_fd - w_global[1:-1]).max()
        scale = np.abs(w_global).max()
        assert err < 0.05 * scale + 0.02, (seg, err, scale)  # 60 Hz difference: ~2 % error


def test_keypoints2d_are_projections_of_the_truth(clean_seq) -> None:
    arr = clean_seq.arrays
    world = arr["keypoints3d"].astype(float) + arr["root"][:, None].astype(float)
    rig_pts = world - arr["rig_origin"][:, None].astype(float)
    seen = 0
    for c in range(arr["cam_K"].shape[0]):
        cam = PinholeCamera(f"c{c}", arr["cam_K"][c], arr["cam_R"][c], arr["cam_t"][c])
        uv, vis = cam.project_visible(rig_pts)
        kp = arr["keypoints2d"][:, c]
        det = kp[..., 2] > 0
        assert np.array_equal(det, vis)  # clean: every visible point detected, conf 1
        # tolerance 0.05 px: float32 storage of keypoints and positions
        np.testing.assert_allclose(kp[det][:, :2], uv[det], atol=0.05)
        seen += det.mean()
    assert seen / arr["cam_K"].shape[0] > 0.9  # the tracking rig keeps the subject in view


def test_noise_is_applied_with_the_papers_scale() -> None:
    seq = generate_sequence(
        replace(SHORT, noise=replace(NoiseParams(), high_peak_fraction=0.0, joint_bias_mm=0.0)), 9
    )
    d = seq.arrays["keypoints3d_noisy"] - seq.arrays["keypoints3d"]
    # per-axis jitter 12 mm, plus the noise of the noisy mid-hip subtracted (σ 12/√2 mm)
    want = 0.012 * np.sqrt(1 + 0.5)
    assert abs(d.std() - want) < 0.1 * want
    assert np.isnan(seq.arrays["imu"]).any() == (~seq.arrays["imu_mask"]).any()


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"model_rate": 0.0}, "SequenceParams.model_rate=0.0: a rate must be"),
        ({"motion_rate": -5.0}, "motion_rate=-5.0"),
        ({"duration": 0.0}, "duration=0.0: too short"),
        ({"activity": "fly"}, "activity='fly': must be one of"),
        ({"speed": "Warp"}, "speed='Warp'"),
        ({"n_cameras": -1}, "n_cameras=-1"),
        ({"height_range": (2.0, 1.5)}, "height_range"),
        ({"stance_sd_deg": -1.0}, r"stance_sd_deg=-1\.0: must be in 0–30 deg"),
        ({"stance_sd_deg": float("nan")}, "stance_sd_deg=nan"),
    ],
)
def test_bad_sequence_parameters(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        SequenceParams(**kw)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"imu_rate": 0}, "LabSpec.imu_rate=0: a rate must be"),
        ({"camera_rate": 0.0}, "camera_rate=0.0"),
        ({"subjects": 0}, "subjects=0"),
        ({"volume_radius": 9.0}, "volume_radius=9.0: must be inside the camera ring"),
        ({"stance_sd_deg": 31.0}, r"LabSpec\.stance_sd_deg=31\.0: must be in 0–30 deg"),
    ],
)
def test_bad_lab_parameters(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        LabSpec(**kw)


def _run_lab(lab: SyntheticLab, steps: list[float]) -> dict:
    out: dict = {"imu_t": [], "imu": [], "truth_t": [], "cam_t": [], "kp": [], "ev": []}
    for dt in steps:
        ch = lab.advance(dt)[0]
        out["imu_t"].append(ch.imu_t)
        out["imu"].append(ch.imu)
        out["truth_t"].append(ch.truth_t)
        out["cam_t"].append(ch.cam_t[0])
        out["kp"].append(ch.keypoints[0])
        out["ev"].extend(ch.events)
    return {k: (v if k == "ev" else np.concatenate(v)) for k, v in out.items()}


def test_live_lab_is_continuous_and_independent_of_chunking() -> None:
    spec = LabSpec(seed=3, imu_rate=100.0, camera_rate=30.0, block_seconds=2.5)
    steps_a = [0.01] * 150 + [0.37, 1.2, 0.003, 0.5] + [2.427]  # 6.0 s, across 2 seams
    steps_b = [sum(steps_a)]  # the same float end time
    a = _run_lab(SyntheticLab(spec), steps_a)
    b = _run_lab(SyntheticLab(spec), steps_b)
    for k in ("imu_t", "imu", "truth_t", "cam_t", "kp"):
        assert a[k].tobytes() == b[k].tobytes(), k
    assert a["ev"] == b["ev"]
    # every IMU sample exactly once on the 100 Hz grid, truth on 60 Hz, camera on 30 Hz (drops)
    assert len(a["imu_t"]) in (600, 601) and len(a["truth_t"]) in (360, 361)
    np.testing.assert_allclose(a["imu_t"], np.arange(len(a["imu_t"])) / 100.0, atol=1e-12)
    np.testing.assert_allclose(a["truth_t"], np.arange(len(a["truth_t"])) / 60.0, atol=1e-12)
    gaps = np.diff(a["cam_t"]) * 30.0
    np.testing.assert_allclose(gaps, np.round(gaps), atol=1e-9)
    assert len(a["cam_t"]) > 170
    assert a["imu"].shape[1:] == (13, 6) and a["kp"].shape[1:] == (17, 3)
    assert all(GAIT_EVENTS.count(name) == 1 for _, name in a["ev"])
    assert len(a["ev"]) >= 8  # ~2 steps/s of walking: heel strikes and toe offs
    assert (a["kp"][..., 2] > 0).mean() > 0.8  # in view (the looped walkway)


def _analytic_channels(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth made-up motion as functions of absolute time: every DOF swings, the root
    walks at 1.2 m/s with a bounce, the heading drifts."""
    k = np.arange(len(DOFS))
    dofs = 20.0 * np.sin(2 * np.pi * (0.7 + k / len(DOFS)) * t[:, None] + k)
    root = np.stack([1.2 * t, 0.1 * np.sin(t), 0.9 + 0.02 * np.sin(2 * np.pi * 1.8 * t)], 1)
    return dofs, root, 0.2 * np.sin(0.5 * t)


def test_live_lab_seams_are_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab chains blocks (start=end_state(prev)); sampled across the seams, the IMU must
    read exactly what one continuous motion gives. Blocks come from an analytic stand-in
    generator here, so the reference is known; the real generator is exercised above."""

    def fake_generate(spec, body, rng, normative, start=None):
        t0 = 0.0 if start is None else start.t
        t = t0 + np.arange(round(spec.duration * spec.fs) + 1) / spec.fs
        return Motion(t, *_analytic_channels(t), body=body)

    monkeypatch.setattr(synth, "generate_motion", fake_generate)
    monkeypatch.setattr(synth, "end_state", lambda m: MotionState(t=float(m.t[-1])))
    spec = LabSpec(seed=1, noise=NoiseParams.clean(), block_seconds=2.0, imu_rate=200.0)
    lab = SyntheticLab(spec)
    got = [lab.advance(0.7)[0] for _ in range(10)]  # 7 s: seams at 2, 4, 6 s (2 s stand first)
    imu_t = np.concatenate([c.imu_t for c in got])
    imu = np.concatenate([c.imu for c in got])
    # the reference: one motion over the whole time (lab time 0 = motion time 0.25 s)
    t = np.arange(0.0, 8.0 + 1e-9, 1 / 120)
    whole = Motion(t, *_analytic_channels(t), body=lab.bodies[0])
    ref = simulate_imu(whole, imu_t + 0.25, lab.placements[0])
    # tolerance: 1e-4 rad/s and 1e-3 m/s² (two cubic splines through the same 120 Hz samples
    # differ this little far from their ends); unbridged blocks are ~0.15 m/s² off at seams
    np.testing.assert_allclose(imu[..., :3], ref[..., :3], atol=1e-4)
    np.testing.assert_allclose(imu[..., 3:], ref[..., 3:], atol=1e-3)
    truth = np.concatenate([c.truth_angles for c in got])
    t_truth = np.concatenate([c.truth_t for c in got])
    np.testing.assert_allclose(truth, whole.angles(t_truth + 0.25), atol=1e-6)


def test_live_lab_subjects_stay_in_view() -> None:
    spec = LabSpec(seed=4, noise=NoiseParams.clean(), block_seconds=4.0, subjects=2)
    lab = SyntheticLab(spec)
    chunks = [lab.advance(1.0) for _ in range(8)]
    for s in range(2):
        for c in range(spec.n_cameras):
            kp = np.concatenate([ch[s].keypoints[c] for ch in chunks])
            assert (kp[..., 2] > 0).mean() > 0.8, (s, c)
    assert len(lab.cameras) == 4 and lab.bodies[0] != lab.bodies[1]


def test_a_subjects_own_stance_moves_the_stands_and_nothing_else() -> None:
    """stance_sd_deg turns the legs of quiet standing only: the feet stay flat, the arms do
    not move, and a sequence that never stands does not change."""
    base = SequenceParams(activity="start_stop", duration=12.0)
    a = generate_sequence(base, 31).arrays
    b = generate_sequence(replace(base, stance_sd_deg=6.0), 31).arrays
    stand = a["activity"] == ACTIVITIES.index("stand")
    assert stand.sum() > 60
    legs = [ANGLES.index(f"{j}_{s}") for j in ("knee_flexion", "hip_flexion") for s in "lr"]
    moved = np.abs(b["angles"][stand][:, legs] - a["angles"][stand][:, legs]).mean(axis=0)
    assert moved.max() > 1.0, moved  # four N(0, 6°) offsets: all below 1° is p < 1e-4
    arms = [ANGLES.index(f"elbow_flexion_{s}") for s in "lr"]
    np.testing.assert_array_equal(a["angles"][:, arms], b["angles"][:, arms])
    for s in "lr":  # the sole's pitch: the foot's long axis stays level
        foot = SEGMENT_INDEX[f"foot_{s}"]
        pitch_a, pitch_b = (x["rotations"][stand, foot, 2, 0] for x in (a, b))
        np.testing.assert_allclose(pitch_b, pitch_a, atol=1e-6)
    walk = replace(base, activity="walk")
    w0, w1 = (
        generate_sequence(walk, 31).arrays,
        generate_sequence(replace(walk, stance_sd_deg=6.0), 31).arrays,
    )
    for k in w0:  # stand + 1·(gait − stand) rounds: float32 IMU samples may move by an ulp
        np.testing.assert_allclose(w1[k], w0[k], rtol=0, atol=1e-5, err_msg=k)


def test_the_live_labs_subjects_stand_their_own_way() -> None:
    """LabSpec.stance_sd_deg: the first stand (the calibration stand) moves the legs and
    only the legs, and each subject stands in a way of its own."""
    spec = LabSpec(subjects=2, seed=4, activity="start_stop", n_cameras=0)
    a = SyntheticLab(spec).advance(1.5)
    b = SyntheticLab(replace(spec, stance_sd_deg=6.0)).advance(1.5)
    legs = [ANGLES.index(f"knee_flexion_{s}") for s in "lr"]
    arms = [ANGLES.index(f"elbow_flexion_{s}") for s in "lr"]
    moved = []
    for ca, cb in zip(a, b, strict=True):
        np.testing.assert_allclose(cb.truth_angles[:, arms], ca.truth_angles[:, arms], atol=1e-9)
        moved.append(np.abs(cb.truth_angles[:, legs] - ca.truth_angles[:, legs]).mean(axis=0))
    assert np.max(moved) > 1.0, moved
    assert not np.allclose(moved[0], moved[1])  # each subject has a stance of its own
