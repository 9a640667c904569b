"""The classical estimator's steady-state tick (every subject one tick per call: segments,
relative-yaw memory and heading for all subjects at once) against its general per-subject path.

The general path (`_segments`, `HeadingLowpass.__call__`) runs whenever a call carries more than
one tick of a subject, so feeding the same ticks two at a time gives the reference numbers. One
subject loses a sensor for longer than `max_gap_s` after calibrating (it leaves the vectorised
path while re-acquiring), one is misplaced and noisy, one clean."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.activities import stand_then_walk
from fusion.body import BodyModel
from fusion.estimators.base import SyncedBatch
from fusion.estimators.classical import ClassicalImuEstimator
from fusion.estimators.heading import HeadingLowpass, heading_step_many
from fusion.imu_sim import default_placements, misplace, simulate_imu
from fusion.noise import NoiseParams, add_imu_noise
from fusion.normative import load_default_normative
from fusion.skeleton import ANGLE_INDEX, SEGMENT_INDEX

FS = 60.0


@pytest.fixture(scope="module")
def subjects() -> dict:
    rng = np.random.default_rng(3)
    body, norm = BodyModel(), load_default_normative()
    motion = stand_then_walk(3.0, 11.5, body, rng, norm)
    t = np.arange(0.0, motion.t[-1], 1 / FS)
    clean = simulate_imu(motion, t, default_placements(motion.body))
    placed = misplace(default_placements(motion.body), np.random.default_rng(5), 13.5)
    noisy, noisy_mask = add_imu_noise(
        simulate_imu(motion, t, placed), np.random.default_rng(6), NoiseParams()
    )
    gap = np.isfinite(clean).all(axis=-1)
    gap[540:585, SEGMENT_INDEX["shank_l"]] = False  # 0.75 s: lost, then re-acquired
    return {
        "t": t,
        "a": (clean, np.isfinite(clean).all(axis=-1)),
        "b": (noisy, noisy_mask),
        "c": (np.where(gap[..., None], clean, np.nan), gap),
    }


def _batch(t, imu, mask, a, b) -> SyncedBatch:
    return SyncedBatch(
        t=t[a:b],
        imu=imu[a:b],
        imu_mask=mask[a:b],
        keypoints=np.zeros((b - a, 0, 17, 3)),
        keypoint_mask=np.zeros((b - a, 0), bool),
    )


def test_one_tick_per_call_equals_the_per_subject_path(subjects: dict) -> None:
    t = subjects["t"]
    names = ("a", "b", "c")
    fast = ClassicalImuEstimator()
    got: dict[str, list] = {s: [] for s in names}
    for i in range(len(t)):
        r = fast.update_many({s: _batch(t, *subjects[s], i, i + 1) for s in names})
        for s in names:
            got[s].append(r[s].angles)
    knee = ANGLE_INDEX["knee_flexion_l"]
    for s in names:
        ref = ClassicalImuEstimator()
        want = np.concatenate(
            [ref.update(s, _batch(t, *subjects[s], a, a + 2)).angles for a in range(0, len(t), 2)]
        )
        A = np.concatenate(got[s])
        # calibrated before the gap, and answering for seconds after it
        first = int(np.argmax(np.isfinite(A[:, knee])))
        assert 0 < first < 530, (s, first)
        np.testing.assert_array_equal(np.isfinite(A), np.isfinite(want), err_msg=s)
        np.testing.assert_allclose(A, want, rtol=0, atol=1e-9, equal_nan=True, err_msg=s)
        cal, cal_ref = fast.calibration(s), ref.calibration(s)
        assert cal is not None and cal_ref is not None
        np.testing.assert_allclose(cal.earth_yaw, cal_ref.earth_yaw, atol=1e-12)
    # subject c lost shank_l (its knee went NaN) and got it back
    knee_c = np.concatenate(got["c"])[:, knee]
    assert np.isnan(knee_c[550:585]).all() and np.isfinite(knee_c[-30:]).all()


def test_heading_step_many_is_the_lowpass_one_tick_at_a_time() -> None:
    rng = np.random.default_rng(0)
    K, T = 5, 400
    # turning subjects (wraps past ±π), gaps, a subject never seen until late
    yaw = np.cumsum(rng.normal(0.02, 0.05, (T, K)), axis=0)
    yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
    ok = rng.random((T, K)) > 0.1
    ok[:150, 3] = False
    yaw[rng.random((T, K)) < 0.05] = np.nan
    one = [HeadingLowpass(0.5, FS) for _ in range(K)]
    many = [HeadingLowpass(0.5, FS) for _ in range(K)]
    for i in range(T):
        want = np.array([one[k](yaw[i, k : k + 1], ok[i, k : k + 1])[0] for k in range(K)])
        got = heading_step_many(many, yaw[i], ok[i])
        np.testing.assert_array_equal(got, want)
    for f, g in zip(one, many, strict=True):
        assert f.yaw_unwrapped == g.yaw_unwrapped and f.yaw_prev == g.yaw_prev
        np.testing.assert_array_equal(f.zi, g.zi)
    assert abs(many[0].yaw_unwrapped) > np.pi  # it did unwrap


def _filter_q(est: ClassicalImuEstimator, subject: str) -> np.ndarray:
    """A subject's filter quaternions (13, 4), from the stacked filter while it is there."""
    if subject in est._stack_key:
        return est._stack.q[est._stack_key.index(subject)]  # type: ignore[union-attr]
    return est._filters[subject].q


def test_subjects_joining_leaving_and_reset_keep_each_subjects_numbers(subjects: dict) -> None:
    """The stacked filter of the last call's subjects is reused while they stay the same and
    written back when they change: every subject's answers and filter state must be those it
    gets alone (each compared with an estimator of its own, fed the same ticks)."""
    t = subjects["t"][:560]
    plan = [  # (first tick, last tick + 1, subjects in the call, in this order)
        (0, 300, ("a", "b")),
        (300, 304, ("b",)),  # a sits out (its walk bridges a gap this short) ...
        (304, 380, ("a", "b", "c")),  # ... and comes back; c joins
        (380, 400, ("c", "a", "b")),  # the same subjects in another order
        (400, 420, ("b", "a", "c")),  # b was reset: it starts over
        (420, 560, ("a", "c")),
    ]
    est = ClassicalImuEstimator()
    alone = {s: ClassicalImuEstimator() for s in "abc"}
    got: dict[str, list] = {s: [] for s in "abc"}
    want: dict[str, list] = {s: [] for s in "abc"}
    for a, b, names in plan:
        if a == 400:
            est.reset("b")
            alone["b"] = ClassicalImuEstimator()  # what a reset must amount to
        for i in range(a, b):
            r = est.update_many({s: _batch(t, *subjects[s], i, i + 1) for s in names})
            for s in names:
                got[s].append(r[s].angles[0])
                want[s].append(alone[s].update(s, _batch(t, *subjects[s], i, i + 1)).angles[0])
        for s in names:  # the filter state of record (looked at, not written back)
            np.testing.assert_allclose(
                _filter_q(est, s), _filter_q(alone[s], s), atol=1e-12, err_msg=f"{s} at {b}"
            )
    for s in "abc":
        np.testing.assert_allclose(np.stack(got[s]), np.stack(want[s]), atol=1e-9, err_msg=s)
    assert np.isfinite(got["a"][-1]).all()  # a calibrated meanwhile
    assert est.calibration("b") is None  # 160 ticks after its reset: not yet
