"""fusion/activities.py: specs, every activity, chaining without jumps, pathologies, labels."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.activities import (
    ACTIVITIES,
    PATHOLOGIES,
    MotionSpec,
    MotionState,
    end_state,
    generate_motion,
)
from fusion.body import BodyModel, BodyShape
from fusion.normative import load_default_normative
from fusion.skeleton import DOF_INDEX, DOFS
from fusion.walking import foot_points


@pytest.fixture(scope="module")
def normative():
    return load_default_normative()


def test_bad_parameters_say_which_and_why() -> None:
    with pytest.raises(ValueError, match=r"MotionSpec\.fs=0: must be > 0 Hz"):
        MotionSpec(fs=0)
    with pytest.raises(ValueError, match=r"MotionSpec\.activity='moonwalk': unknown activity"):
        MotionSpec(activity="moonwalk")
    with pytest.raises(ValueError, match=r"MotionSpec\.duration=-1.0: must be > 0 s"):
        MotionSpec(duration=-1.0)
    with pytest.raises(ValueError, match=r"MotionSpec\.speed='Brisk'"):
        MotionSpec(speed="Brisk")
    with pytest.raises(ValueError, match=r"MotionSpec\.pathology='limp'"):
        MotionSpec(pathology="limp")
    with pytest.raises(ValueError, match=r"MotionSpec\.turn_rate_deg_s=500"):
        MotionSpec(turn_rate_deg_s=500)
    with pytest.raises(ValueError, match=r"MotionSpec\.fs=nan"):
        MotionSpec(fs=float("nan"))
    with pytest.raises(ValueError, match=r"BodyShape\.height=-1.7: must be a stature"):
        BodyShape(height=-1.7)
    with pytest.raises(ValueError, match=r"MotionState\.gait_amplitude"):
        MotionState(gait_amplitude=2.0)


def test_generate_checks_its_arguments(normative) -> None:
    with pytest.raises(TypeError, match="rng"):
        generate_motion(MotionSpec(duration=2), BodyModel(), 0, normative)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="spec"):
        generate_motion("walk", BodyModel(), np.random.default_rng(0), normative)  # type: ignore[arg-type]


@pytest.mark.parametrize("activity", ACTIVITIES)
def test_every_activity(activity, normative) -> None:
    body = BodyModel(BodyShape(height=1.66))
    duration = 16.0 if activity == "mixed" else 7.0
    spec = MotionSpec(activity=activity, duration=duration, fs=60.0)
    m = generate_motion(spec, body, np.random.default_rng(11), normative)
    assert m.t[0] == 0.0 and m.duration == pytest.approx(duration)
    assert np.allclose(np.diff(m.t), 1 / 60.0)
    for arr in (m.dofs, m.root, m.heading):
        assert np.all(np.isfinite(arr))
    feet = foot_points(body, m.dofs)[..., 2] + m.root[:, None, None, 2]
    assert feet.min() > -0.003  # nothing through the floor
    assert np.percentile(feet.min(axis=(1, 2)), 50) < 0.003  # and standing on it
    # smooth: no jumps in the root or the angles between grid samples
    assert np.abs(np.diff(m.root, axis=0)).max() < 3.5 / 60.0  # < 3.5 m/s per axis
    assert np.abs(np.diff(m.dofs, axis=0)).max() < 1000.0 / 60.0  # < 1000 deg/s
    # labels cover the motion with known activity names
    names = {a for _, _, a in m.labels.activity}
    assert names <= set(ACTIVITIES)
    covered = m.labels.activity_at(m.t[:-1])
    assert np.all(covered != "")
    gait = activity in ("walk", "turn", "start_stop", "jog")
    if gait:
        assert len(m.labels.events) >= 6
        assert all(s.cadence > 60 for s in m.labels.strides)
    elif activity != "mixed":
        assert m.labels.events == []
    if activity == "jog":
        # flight: both feet off the floor for part of each stride
        assert np.mean(feet.min(axis=(1, 2)) > 0.01) > 0.1


def test_chained_blocks_continue_without_jumps(normative) -> None:
    body = BodyModel()
    rng = np.random.default_rng(3)
    blocks = []
    state = None
    for activity, speed in (
        ("walk", "Free"),
        ("stand", "Free"),
        ("turn", "Fast"),
        ("squat", "Free"),
        ("jog", "Free"),
        ("walk", "Slow"),
    ):
        spec = MotionSpec(activity=activity, duration=5.0, speed=speed, fs=100.0)
        m = generate_motion(spec, body, rng, normative, start=state)
        if blocks:
            prev = blocks[-1]
            assert m.t[0] == pytest.approx(prev.t[-1])
            np.testing.assert_allclose(m.root[0], prev.root[-1], atol=2e-3)
            assert m.heading[0] == pytest.approx(prev.heading[-1])
            np.testing.assert_allclose(m.dofs[0], prev.dofs[-1], atol=1e-6)
            # rates carry over too: the first step looks like the last one
            d_prev = prev.dofs[-1] - prev.dofs[-2]
            d_new = m.dofs[1] - m.dofs[0]
            assert np.abs(d_new - d_prev).max() < 1.0  # deg per 10 ms
            assert end_state(prev).phase == pytest.approx(end_state(prev).phase)
        state = end_state(m)
        assert state.subject is not None and state.t == pytest.approx(m.t[-1])
        blocks.append(m)
    # the same person throughout
    assert all(end_state(b).subject is state.subject for b in blocks)


def test_start_stop_starts_and_stops(normative) -> None:
    m = generate_motion(
        MotionSpec(activity="start_stop", duration=25.0, fs=60.0),
        BodyModel(),
        np.random.default_rng(8),
        normative,
    )
    v = np.linalg.norm(np.gradient(m.root[:, :2], m.t, axis=0), axis=1)
    names = [a for _, _, a in m.labels.activity]
    assert "stand" in names and "start_stop" in names
    standing = m.labels.activity_at(m.t) == "stand"
    assert np.median(v[standing]) < 0.05 and np.percentile(v[~standing], 75) > 0.5


def test_turning_follows_the_rate(normative) -> None:
    m = generate_motion(
        MotionSpec(activity="walk", duration=10.0, turn_rate_deg_s=30.0, fs=60.0),
        BodyModel(),
        np.random.default_rng(2),
        normative,
    )
    turned = np.degrees(m.heading[-1] - m.heading[0])
    assert turned == pytest.approx(30.0 * (10.0 - 0.5), rel=0.1)  # 1 s ramp-in
    walk = generate_motion(
        MotionSpec(activity="turn", duration=20.0, fs=60.0),
        BodyModel(),
        np.random.default_rng(2),
        normative,
    )
    assert np.degrees(np.ptp(walk.heading)) > 150  # at least one ~180° walkway turn


@pytest.mark.parametrize("pathology", PATHOLOGIES)
def test_pathologies_show_their_signature(pathology, normative) -> None:
    rng = np.random.default_rng(21)
    normal = generate_motion(MotionSpec(duration=8.0, fs=60.0), BodyModel(), rng, normative)
    state = MotionState(subject=end_state(normal).subject)  # same person, fresh start
    m = generate_motion(
        MotionSpec(duration=8.0, fs=60.0, pathology=pathology), BodyModel(), rng, normative, state
    )
    side = state.subject.affected_side
    knee = m.dofs[:, DOF_INDEX[f"knee_flexion_{side}"]]
    kfme = {s.side: s.knee_flexion_max_ext for s in m.labels.strides}
    assert m.labels.strides, "pathological gait still has labelled strides"
    if pathology == "crouch":
        assert min(s.knee_flexion_max_ext for s in m.labels.strides) > 15.0
    elif pathology == "stiff_knee":
        assert knee.max() < 40.0 < normal.dofs[:, DOF_INDEX[f"knee_flexion_{side}"]].max()
    elif pathology == "braced_knee":
        assert np.ptp(knee) < 3.0
        assert kfme[side] < 5.0
    elif pathology == "equinus":
        ank = m.dofs[:, DOF_INDEX[f"ankle_dorsiflexion_{side}"]]
        assert (
            np.median(ank) < np.median(normal.dofs[:, DOF_INDEX[f"ankle_dorsiflexion_{side}"]]) - 10
        )
        # initial contact with the forefoot: the toe is below the heel at the affected strikes
        P = foot_points(m.body, m.dofs)
        k = "lr".index(side)
        strikes = [t for t, lab in m.labels.events if lab == f"heel_strike_{side}"]
        idx = np.searchsorted(m.t, strikes)
        assert np.all(P[idx, k, 1, 2] < P[idx, k, 0, 2])
    elif pathology == "trendelenburg":
        obl = np.ptp(m.dofs[:, DOF_INDEX["pelvis_obliquity"]])
        assert obl > np.ptp(normal.dofs[:, DOF_INDEX["pelvis_obliquity"]]) + 3.0


def test_same_seed_same_motion(normative) -> None:
    a = generate_motion(
        MotionSpec(activity="mixed", duration=12.0, fs=30.0),
        BodyModel(),
        np.random.default_rng(5),
        normative,
    )
    b = generate_motion(
        MotionSpec(activity="mixed", duration=12.0, fs=30.0),
        BodyModel(),
        np.random.default_rng(5),
        normative,
    )
    np.testing.assert_array_equal(a.dofs, b.dofs)
    assert a.labels.activity == b.labels.activity
    assert a.dofs.shape[1] == len(DOFS)
