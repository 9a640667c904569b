"""The classical IMU estimator on synthetic stand-then-walk sequences, and the registry.

Measured on the synthetic engine's walker (seed 1, 15 s of walking after 3 s standing, 60 Hz):
lower-limb RMSE ≈ 1.4° clean, the same with every sensor misplaced by the paper's σ = 13.5°
(the functional calibration measures the mounting), ≈ 20° with that misplacement when the
mounting is assumed nominal (the textbook calibrated-orientation method), ≈ 3.3° with the
default sensor noise. The bounds below leave room around those.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fusion.activities import MotionSpec, end_state, generate_motion
from fusion.angles import angles_from_rotations
from fusion.body import BodyModel
from fusion.calibration import Calibration, mounting_error_deg, stance_rotations
from fusion.estimators.base import SyncedBatch
from fusion.estimators.classical import (
    ClassicalImuEstimator,
    _SubjectState,
    angles_from_segments,
)
from fusion.estimators.registry import create, names, register
from fusion.imu_sim import default_placements, misplace, simulate_imu
from fusion.kinematics import Motion, forward_kinematics
from fusion.noise import NoiseParams, add_imu_noise
from fusion.normative import load_default_normative
from fusion.skeleton import (
    ANGLE_INDEX,
    ANGLES,
    DOFS,
    LOWER_LIMB_ANGLES,
    SEGMENT_INDEX,
    SEGMENTS,
)
from fusion.synth import SequenceParams, generate_sequence

FS = 60.0
LL = [ANGLE_INDEX[a] for a in LOWER_LIMB_ANGLES]


def stand_then_walk(seed: int, stand: float = 3.0, walk: float = 15.0) -> Motion:
    rng = np.random.default_rng(seed)
    body, norm = BodyModel(), load_default_normative()
    m1 = generate_motion(MotionSpec("stand", stand), body, rng, norm)
    m2 = generate_motion(MotionSpec("walk", walk), body, rng, norm, start=end_state(m1))
    heading = np.concatenate([m1.heading, m2.heading[1:]]) + 0.7  # not along x
    c, s = np.cos(0.7), np.sin(0.7)
    root = np.concatenate([m1.root, m2.root[1:]])
    root[:, :2] = root[:, :2] @ np.array([[c, s], [-s, c]])
    return Motion(
        t=np.concatenate([m1.t, m2.t[1:]]),
        dofs=np.concatenate([m1.dofs, m2.dofs[1:]]),
        root=root,
        heading=heading,
        body=body,
    )


@pytest.fixture(scope="module")
def walk() -> dict:
    motion = stand_then_walk(seed=1)
    t = np.arange(0.0, motion.t[-1], 1 / FS)
    clean = simulate_imu(motion, t, default_placements(motion.body))
    misplaced = misplace(default_placements(motion.body), np.random.default_rng(101), 13.5)
    return {
        "t": t,
        "truth": motion.angles(t),
        "clean": clean,
        "misplaced": simulate_imu(motion, t, misplaced),
    }


def _batches(t, imu, mask=None, chunk=30):
    mask = np.isfinite(imu).all(axis=-1) if mask is None else mask
    for a in range(0, len(t), chunk):
        n = len(t[a : a + chunk])
        yield SyncedBatch(
            t=t[a : a + chunk],
            imu=imu[a : a + chunk],
            imu_mask=mask[a : a + chunk],
            keypoints=np.zeros((n, 0, 17, 3)),
            keypoint_mask=np.zeros((n, 0), bool),
        )


def _run(est, t, imu, mask=None, subject="s1") -> np.ndarray:
    out = [est.update(subject, b) for b in _batches(t, imu, mask)]
    assert np.array_equal(np.concatenate([r.t for r in out]), t)
    return np.concatenate([r.angles for r in out])


def _lower_limb_rmse(A: np.ndarray, truth: np.ndarray, t: np.ndarray, after: float) -> float:
    sel = t > after
    return float(np.sqrt(np.nanmean((A[sel][:, LL] - truth[sel][:, LL]) ** 2)))


def test_closed_form_angles_equal_the_reference_conventions() -> None:
    rng = np.random.default_rng(0)
    dofs = rng.uniform(-40.0, 40.0, (200, len(DOFS)))
    heading = rng.uniform(-np.pi, np.pi, 200)
    pose = forward_kinematics(BodyModel(), dofs, np.zeros((200, 3)), heading)
    smooth_heading = heading + rng.normal(0.0, 0.1, 200)
    np.testing.assert_allclose(
        angles_from_segments(pose.R, smooth_heading),
        angles_from_rotations(pose.R, smooth_heading),
        atol=1e-9,
    )
    # unavailable segments blank exactly the angles that need them
    avail = np.ones((200, 13), bool)
    avail[:, SEGMENT_INDEX["shank_l"]] = False
    A = angles_from_segments(pose.R, heading, avail)
    nan = {a for a in ANGLES if np.isnan(A[:, ANGLE_INDEX[a]]).all()}
    assert nan == {"knee_flexion_l", "ankle_dorsiflexion_l"}
    R = Rotation.random(13, random_state=1).as_matrix()[None]
    R[0, SEGMENT_INDEX["pelvis"]] = np.nan
    A = angles_from_segments(R, np.zeros(1))
    assert np.isnan(A[0, ANGLE_INDEX["pelvis_tilt"]]) and np.isnan(
        A[0, ANGLE_INDEX["hip_flexion_r"]]
    )
    assert np.isfinite(A[0, ANGLE_INDEX["knee_flexion_r"]])


def test_nan_until_calibrated_then_close_to_truth(walk: dict) -> None:
    est = ClassicalImuEstimator()
    A = _run(est, walk["t"], walk["clean"])
    finite = np.isfinite(A[:, ANGLE_INDEX["knee_flexion_l"]])
    t_cal = walk["t"][np.argmax(finite)]
    # standing 3 s, then 5 s of walking: calibrated about 8 s in, NaN before
    assert 7.0 < t_cal < 9.5
    assert np.isnan(A[walk["t"] < 7.0]).all()
    assert est.calibration("s1") is not None and est.calibration("s1").ok.all()
    rmse = _lower_limb_rmse(A, walk["truth"], walk["t"], t_cal + 1.0)
    assert rmse < 3.0, rmse


def test_misplacement_is_calibrated_away_but_not_by_a_nominal_mounting(walk: dict) -> None:
    functional = _run(ClassicalImuEstimator(), walk["t"], walk["misplaced"])
    nominal = _run(ClassicalImuEstimator(mounting="nominal"), walk["t"], walk["misplaced"])
    after = 9.0
    r_f = _lower_limb_rmse(functional, walk["truth"], walk["t"], after)
    r_n = _lower_limb_rmse(nominal, walk["truth"], walk["t"], after)
    assert r_f < 3.0, r_f
    assert r_n > 2.0 * r_f and r_n > 6.0, (r_f, r_n)


def test_with_sensor_noise(walk: dict) -> None:
    imu, mask = add_imu_noise(walk["misplaced"], np.random.default_rng(201), NoiseParams())
    A = _run(ClassicalImuEstimator(), walk["t"], imu, mask)
    rmse = _lower_limb_rmse(A, walk["truth"], walk["t"], 9.0)
    assert rmse < 6.0, rmse
    # dropped samples: NaN exactly where a needed sensor is masked
    sel = walk["t"] > 9.0
    knee = ANGLE_INDEX["knee_flexion_l"]
    gone = ~mask[:, SEGMENT_INDEX["shank_l"]] | ~mask[:, SEGMENT_INDEX["thigh_l"]]
    assert np.isnan(A[sel & gone, knee]).all()
    assert np.isfinite(A[sel & ~gone, knee]).all()


def test_a_sensor_going_offline_blanks_its_angles_and_comes_back(walk: dict) -> None:
    imu = walk["clean"].copy()
    mask = np.ones(imu.shape[:2], bool)
    t = walk["t"]
    off = (t > 10.0) & (t < 11.5)
    mask[off, SEGMENT_INDEX["thigh_r"]] = False
    imu[off, SEGMENT_INDEX["thigh_r"]] = np.nan
    est = ClassicalImuEstimator()
    A = _run(est, t, imu, mask)
    during = off & (t > 10.1)
    for a in ("hip_flexion_r", "knee_flexion_r"):
        assert np.isnan(A[during, ANGLE_INDEX[a]]).all()
    for a in ("hip_flexion_l", "knee_flexion_l", "ankle_dorsiflexion_r"):
        assert np.isfinite(A[during, ANGLE_INDEX[a]]).all()
    # back after settling + re-acquiring the heading, and sensible again
    back = t > 11.5 + est.config.settle_s + est.config.reacquire_s + 0.5
    hip = ANGLE_INDEX["hip_flexion_r"]
    assert np.isfinite(A[back, hip]).all()
    err = A[back, hip] - walk["truth"][back, hip]
    assert np.sqrt(np.mean(err**2)) < 8.0


def test_update_many_equals_update_per_subject(walk: dict) -> None:
    t, a, b = walk["t"][:700], walk["clean"][:700], walk["misplaced"][:700]
    many = ClassicalImuEstimator()
    outs: dict[str, list] = {"a": [], "b": []}
    for ba, bb in zip(_batches(t, a), _batches(t, b), strict=True):
        r = many.update_many({"a": ba, "b": bb})
        outs["a"].append(r["a"].angles)
        outs["b"].append(r["b"].angles)
    one = ClassicalImuEstimator()
    # the same numbers (to rounding: the stacked matmuls add in another order)
    for s, imu in (("a", a), ("b", b)):
        np.testing.assert_allclose(
            np.concatenate(outs[s]), _run(one, t, imu, subject=s), atol=1e-9, equal_nan=True
        )
    one.reset("a")
    assert one.calibration("a") is None and one.calibration("b") is not None
    one.reset()
    assert one.calibration("b") is None


def test_registry() -> None:
    assert {"classical", "classical_video"} <= set(names())
    est = create("classical", filter_gain=0.05, walking_s=4.0)
    assert isinstance(est, ClassicalImuEstimator)
    assert est.config.filter.gain == 0.05 and est.config.walking_s == 4.0
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        create("nope")
    with pytest.raises(ValueError, match="needs calibrated cameras"):
        create("classical_video")
    with pytest.raises(ValueError, match="already registered"):
        register("classical", lambda **kw: ClassicalImuEstimator())
    with pytest.raises(ValueError, match="mounting"):
        ClassicalImuEstimator(mounting="glued")
    with pytest.raises(ValueError, match="options are"):
        create("classical", filter_beta=0.1)


def _run_cut(imu, mask, t, sizes, est=None):
    """Run the stream through one estimator, cut into calls of the given sizes (cycled)."""
    est = est or ClassicalImuEstimator()
    out, a, k = [], 0, 0
    while a < len(t):
        b = min(len(t), a + sizes[k % len(sizes)])
        n = b - a
        batch = SyncedBatch(
            t=t[a:b],
            imu=imu[a:b],
            imu_mask=mask[a:b],
            keypoints=np.zeros((n, 0, 17, 3)),
            keypoint_mask=np.zeros((n, 0), bool),
        )
        out.append(est.update("s", batch).angles)
        a, k = b, k + 1
    return est, np.concatenate(out)


def _assert_same(e1, A1, e2, A2, atol=1e-6):
    c1, c2 = e1.calibration("s"), e2.calibration("s")
    assert c1 is not None and c2 is not None
    np.testing.assert_array_equal(c1.ok, c2.ok)
    for f in ("mounting", "earth_yaw", "gyro_bias"):
        np.testing.assert_allclose(getattr(c1, f), getattr(c2, f), atol=atol, err_msg=f)
    np.testing.assert_array_equal(np.isfinite(A1), np.isfinite(A2))
    np.testing.assert_allclose(A1, A2, atol=atol, equal_nan=True)


@pytest.fixture(scope="module")
def sprinkled(walk: dict) -> dict:
    """10 s of the noisy misplaced walk (calibrates at ~8 s) with masked ticks sprinkled in:
    single sensors, whole ticks (all 13: a tick the sync stage sent out empty), during the
    stand, the walk and after calibration."""
    n = 600
    t = walk["t"][:n]
    imu, mask = add_imu_noise(walk["misplaced"][:n], np.random.default_rng(7), NoiseParams())
    rng = np.random.default_rng(8)
    for i in rng.choice(n, 25, replace=False):
        mask[i, rng.integers(13)] = False
    mask[[40, 41, 150, 330, 331, 332, 470, 520]] = False  # whole ticks masked
    imu = np.where(mask[..., None], imu, np.nan)
    return {"t": t, "imu": imu, "mask": mask}


def test_the_cut_into_calls_does_not_matter(sprinkled: dict) -> None:
    """The live path cuts the same ticks into calls of 1-3 (or any) ticks: the calibration
    and every angle must not depend on it (they did: up to 4.6 deg and stated ticks before
    the calibration tick, when the calibration tick fell inside a call)."""
    t, imu, mask = sprinkled["t"], sprinkled["imu"], sprinkled["mask"]
    e1, A1 = _run_cut(imu, mask, t, [1])
    knee = ANGLE_INDEX["knee_flexion_l"]
    assert np.isfinite(A1[:, knee]).sum() > 60, "not calibrated within 10 s"
    for sizes in ([2], [7, 1, 3], [61], [600]):
        e2, A2 = _run_cut(imu, mask, t, sizes)
        _assert_same(e1, A1, e2, A2)


def test_dropped_and_late_ticks(sprinkled: dict) -> None:
    """Ticks the runtime never sent (dropped) leave gaps in time, not a shorter stand or walk;
    a repeated or late tick is answered NaN and changes nothing else."""
    t, imu, mask = sprinkled["t"], sprinkled["imu"], sprinkled["mask"]
    keep = np.ones(len(t), bool)
    keep[[30, 200, 201, 350, 480, 540]] = False  # stand, walk (2), walk, after calibration
    td, imud, maskd = t[keep], imu[keep], mask[keep]
    e1, A1 = _run_cut(imud, maskd, td, [1])
    e2, A2 = _run_cut(imud, maskd, td, [5, 2])
    _assert_same(e1, A1, e2, A2)
    # the same calibration as with every tick, up to what the lost samples carried
    e_all, A_all = _run_cut(imu, mask, t, [3])
    c1, c_all = e1.calibration("s"), e_all.calibration("s")
    assert c1 is not None and c_all is not None
    assert mounting_error_deg(c1.mounting, c_all.mounting).max() < 1.0
    t_cal = t[np.argmax(np.isfinite(A_all[:, ANGLE_INDEX["knee_flexion_l"]]))]
    t_cal_d = td[np.argmax(np.isfinite(A1[:, ANGLE_INDEX["knee_flexion_l"]]))]
    assert abs(t_cal_d - t_cal) < 0.05, (t_cal, t_cal_d)
    # a late tick (older than one already seen) and a repeated tick, inserted in the walk
    # and after calibration: NaN for them, the rest exactly as without them
    ins = [250, 560]
    tl = np.insert(td, ins, [td[240], td[559]])
    imul = np.insert(imud, ins, imud[[240, 559]], axis=0)
    maskl = np.insert(maskd, ins, maskd[[240, 559]], axis=0)
    e3, A3 = _run_cut(imul, maskl, tl, [4])
    late = np.zeros(len(tl), bool)
    late[np.array(ins) + np.arange(len(ins))] = True
    assert np.isnan(A3[late]).all()
    _assert_same(e1, A1, e3, A3[~late])


@pytest.fixture(scope="module")
def start_stop() -> dict:
    """40 s of the simulated lab's activity (walks between 1.3-2.5 s stands), with its sensor
    noise (radio losses included)."""
    a = generate_sequence(SequenceParams(activity="start_stop", duration=60.0, n_cameras=0), 0)
    n = int(40.0 * FS)
    arr = a.arrays
    return {
        "t": arr["t"][:n],
        "imu": arr["imu"][:n].astype(float),
        "mask": arr["imu_mask"][:n],
        "truth": arr["angles"][:n],
    }


@pytest.mark.parametrize(("activity", "seed"), [("sit_to_stand", 1000231), ("squat", 1000241)])
def test_sit_to_stand_and_squats_are_not_a_walk_to_calibrate_on(activity: str, seed: int) -> None:
    """Repeated sit-to-stand and squats give periodic, sagittal thigh rates, as a walk does.
    Calibrated on them, the estimator answered 35 and 38 % of these clips' lower-limb angles
    with 39° and 42° RMSE (hip flexion ~70° off). Both legs move as one: nothing is
    calibrated, nothing answered."""
    a = generate_sequence(SequenceParams(activity=activity, duration=30.0, n_cameras=0), seed)
    arr = a.arrays
    est = ClassicalImuEstimator()
    A = _run(est, arr["t"], arr["imu"].astype(float), arr["imu_mask"])
    assert not np.isfinite(A[:, LL]).any()
    notes = est._states["s1"].calib_notes
    assert "legs move together" in notes["pelvis"], notes


@pytest.mark.parametrize("start_s", [1.0, 20.0])
def test_calibrates_wherever_it_starts(start_stop: dict, start_s: float) -> None:
    """A restarted runtime (a crashed inference actor) starts the estimator mid-walk: its
    filters start from one accelerometer reading taken mid-stride, and the stand it then
    calibrates on may directly follow a stop. Started 1 s in (calibrating on the stand at
    3.4 s) and 20 s in (the 1.4 s stand at 22.9 s, right after a stop), the lower-limb RMSE
    up to 40 s was 17.6° and 12.0° on average, 119° and 64° at worst (the filters' tilt not
    yet settled at the stand; gyro biases 44-98 mrad/s off against a true 10), where starting
    at 0 s gave 2.3°. Now 1.9°, 1.9° and 2.0°, 5.1° at worst."""
    a = int(start_s * FS)
    t, imu, mask = start_stop["t"][a:], start_stop["imu"][a:], start_stop["mask"][a:]
    A = _run(ClassicalImuEstimator(), t, imu, mask)
    stated = np.isfinite(A[:, LL]).all(axis=1)
    assert stated.sum() > 5 * FS, f"calibrated for only {stated.sum()} ticks"
    err = np.sqrt(np.mean((A[stated][:, LL] - start_stop["truth"][a:][stated][:, LL]) ** 2, axis=0))
    assert err.mean() < 4.0 and err.max() < 10.0, dict(
        zip(LOWER_LIMB_ANGLES, err.round(1), strict=True)
    )


def test_a_bridged_burst_on_a_swinging_foot_is_levelled_out() -> None:
    """35 s of start_stop (seed 0): foot_r loses 10 ticks (0.17 s) in swing at 19.5 s. The
    bridge tilted it by ~40°, undone at ~1.5°/s by the base gain: ankle_dorsiflexion_r RMSE
    25° over the clip, lower-limb mean 5.7°. Re-levelled on its quiet stance ticks: 11°, 2.9°."""
    a = generate_sequence(SequenceParams(activity="start_stop", duration=35.0, n_cameras=0), 0)
    arr = a.arrays
    t, imu, mask = arr["t"], arr["imu"].astype(float), arr["imu_mask"]
    assert not mask[1172:1182, SEGMENT_INDEX["foot_r"]].any()  # the burst this is about
    A = _run(ClassicalImuEstimator(), t, imu, mask)
    stated = np.isfinite(A[:, LL]).all(axis=1)
    err = np.sqrt(np.mean((A[stated][:, LL] - arr["angles"][stated][:, LL]) ** 2, axis=0))
    errs = dict(zip(LOWER_LIMB_ANGLES, err.round(1), strict=True))
    assert errs["ankle_dorsiflexion_r"] < 15.0 and err.mean() < 4.0, errs
    # one sensor's burst is bridged, not lost: its angles go on (a lost sensor's heading is
    # re-acquired over seconds of NaN, and less exactly)
    assert np.isfinite(A[1182:1302, ANGLE_INDEX["ankle_dorsiflexion_r"]]).all()


def _stalled(data: dict, at: float, seconds: float = 0.4) -> tuple[np.ndarray, ...]:
    """The clip with `seconds` of ticks never sent from `at` (a stalled runtime skipping)."""
    t = data["t"]
    keep = ~((t >= at) & (t < at + seconds))
    return t[keep], data["imu"][keep], data["mask"][keep], data["truth"][keep]


@pytest.mark.parametrize(
    ("at", "why"),
    [(8.0, "in the calibration walk"), (10.0, "at its end"), (12.0, "after calibration")],
)
def test_a_stall_of_the_runtime_costs_no_accuracy(start_stop: dict, at: float, why: str) -> None:
    """The live cluster test once read knees 25° off on a loaded CI machine, most likely so:
    the sync skips ticks after a stall over 1 s, and 0.4 s of them skipped in the stand and
    walk the calibration is taken from (here 3.5-10.8 s) gave 6-27° mean, up to 144° on one
    angle; skipped later in the walk, the swinging legs were bridged blind: 8-22° mean, 29-97°
    max. Now the capture starts over on the next stand (calibrated at 22.2 s), and a sensor
    that may have turned more than bridge_rad across a gap of every sensor is re-acquired:
    1.7-1.9° mean."""
    t, imu, mask, truth = _stalled(start_stop, at)
    A = _run(ClassicalImuEstimator(), t, imu, mask)
    stated = np.isfinite(A[:, LL]).all(axis=1)
    assert stated.sum() > 5 * FS, f"{why}: calibrated for only {stated.sum()} ticks"
    err = np.sqrt(np.mean((A[stated][:, LL] - truth[stated][:, LL]) ** 2, axis=0))
    assert err.mean() < 3.0 and err.max() < 8.0, (
        why,
        dict(zip(LOWER_LIMB_ANGLES, err.round(1), strict=True)),
    )


def test_a_call_with_no_tick_for_anyone_answers_empty(walk: dict) -> None:
    est = ClassicalImuEstimator()
    t, imu = walk["t"], walk["clean"]
    _run(est, t[:600], imu[:600])
    empty = SyncedBatch(
        t=t[:0],
        imu=imu[:0],
        imu_mask=np.zeros((0, 13), bool),
        keypoints=np.zeros((0, 0, 17, 3)),
        keypoint_mask=np.zeros((0, 0), bool),
    )
    out = est.update_many({"s1": empty, "s2": empty})
    assert {s: r.angles.shape for s, r in out.items()} == {
        "s1": (0, len(ANGLES)),
        "s2": (0, len(ANGLES)),
    }
    # and the subject goes on as if the call had not been made
    A = _run(est, t[600:900], imu[600:900])
    assert np.isfinite(A[:, LL]).all()


def test_later_stands_refine_the_gyro_bias() -> None:
    """The calibration's one 1-2 s stand leaves the gyro bias about the vertical off by gyro
    noise alone (no gravity corrects the heading drift that makes: the lower-limb RMSE of a
    10-min live run grew from 1.8° to 8.3° a minute); every later stand refines it. Here the
    true bias is 0, so the estimate is its own error: measured 1.42 → 0.99 mrad/s on average
    after 90 s, lower-limb RMSE of the last 30 s 2.21° → 1.85°."""
    noise = NoiseParams(gyro_bias=0.0, imu_drop_rate=0.0)
    seq = generate_sequence(
        SequenceParams(activity="start_stop", duration=90.0, n_cameras=0, noise=noise), 0
    )
    arr = seq.arrays
    t, imu, mask = arr["t"], arr["imu"].astype(float), arr["imu_mask"]
    legs = [SEGMENT_INDEX[s] for s in ("pelvis", "thigh_l", "thigh_r", "shank_l", "shank_r")]
    err, rmse = {}, {}
    for memory in (0.0, 60.0):
        # (the stands' heading reset off: it also takes out the drift this bias leaves)
        est = ClassicalImuEstimator(bias_memory_s=memory, stand_heading_deg=0.0)
        A = _run(est, t, imu, mask)
        bias = est._states["s1"].bias[legs]
        err[memory] = float(np.linalg.norm(bias, axis=-1).mean())
        rmse[memory] = _lower_limb_rmse(A, arr["angles"], t, t[-1] - 30.0)
    assert err[60.0] < 0.85 * err[0.0], err
    assert rmse[60.0] < rmse[0.0], rmse


def test_a_stand_resets_a_drifted_leg_heading() -> None:
    """No magnetometer sees a leg sensor's heading: a burst of lost samples bridged over a
    swinging limb turns it a little, for good (5-min start_stop, last minute: 4.99° lower-limb
    RMSE with the synthetic losses, 2.73° without). A stand in the calibration posture sets
    each leg segment's heading relative to the pelvis back to the stance's. Here two leg
    headings are turned 12° after calibration: the hip rotation stays 12° off without the
    reset, and comes back to truth after the next stand with it (measured 12.1° → 0.4°)."""
    noise = NoiseParams(imu_drop_rate=0.0)
    seq = generate_sequence(
        SequenceParams(activity="start_stop", duration=60.0, n_cameras=0, noise=noise), 0
    )
    arr = seq.arrays
    t, imu, mask, truth = arr["t"], arr["imu"].astype(float), arr["imu_mask"], arr["angles"]
    hip = ANGLE_INDEX["hip_rotation_l"]
    err = {}
    for deg in (0.0, 20.0):
        est = ClassicalImuEstimator(stand_heading_deg=deg, bias_memory_s=0.0)
        i = 0
        while est.calibration("s1") is None:
            _run(est, t[i : i + 30], imu[i : i + 30], mask[i : i + 30])
            i += 30
        cal = est.calibration("s1")
        assert cal is not None
        for seg in ("thigh_l", "shank_r"):
            cal.earth_yaw[SEGMENT_INDEX[seg]] += np.radians(12.0)
        A = _run(est, t[i:], imu[i:], mask[i:])
        last = t[i:] > t[-1] - 15.0
        err[deg] = float(np.sqrt(np.nanmean((A[last, hip] - truth[i:][last, hip]) ** 2)))
    assert err[0.0] > 10.0, err
    assert err[20.0] < 2.0, err


def test_only_a_stand_in_the_calibration_posture_resets_a_heading() -> None:
    """Sitting or squatting is still too, but a thigh's heading relative to the pelvis is not
    the stance's there; nor is an offset larger than stand_heading_deg (a foot set down turned
    out) drift. `_stand_heading` on hand-made stands: a thigh 10° off in the stance is turned
    back; seated (flexed 85°) or 30° off, it is left alone; the others match: no shift."""
    est = ClassicalImuEstimator()
    n = len(SEGMENTS)
    st = _SubjectState(est.config)
    st.calibration = Calibration(
        mounting=np.tile(np.eye(3), (n, 1, 1)),
        earth_yaw=np.zeros(n),
        gyro_bias=np.zeros((n, 3)),
        gravity=np.full(n, 9.81),
        ok=np.ones(n, bool),
    )
    R0 = stance_rotations(est.config.calibration.standing_pose)
    thigh = SEGMENT_INDEX["thigh_l"]

    def shift_after(yaw_deg: float, flex_deg: float) -> np.ndarray:
        R = R0.copy()
        turn = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
        flex = Rotation.from_euler("y", flex_deg, degrees=True).as_matrix()
        R[thigh] = turn @ R0[thigh] @ flex
        q = Rotation.from_matrix(R).as_quat()[:, [3, 0, 1, 2]]  # (w, x, y, z)
        rows = [(k / 60.0, np.zeros((n, 3)), np.zeros((n, 3)), q) for k in range(60)]
        st.yaw_shifts = []
        est._stand_heading(st, 1.0, rows)
        return np.degrees(st.yaw_shifts[0][1]) if st.yaw_shifts else np.zeros(n)

    np.testing.assert_allclose(shift_after(10.0, 0.0)[thigh], -10.0, atol=0.01)
    np.testing.assert_allclose(np.delete(shift_after(10.0, 0.0), thigh), 0.0, atol=0.01)
    assert shift_after(10.0, 85.0)[thigh] == 0.0
    assert shift_after(30.0, 0.0)[thigh] == 0.0
