"""fusion/gait_events.py: events from foot trajectories, strides from events."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.activities import MotionSpec, generate_motion
from fusion.body import BodyModel, BodyShape
from fusion.gait_events import EVENT_TOLERANCE, detect_events, match_events, strides_from_events
from fusion.normative import load_default_normative
from fusion.skeleton import DOF_INDEX, KEYPOINT_INDEX

FS = 120.0  # Hz, the rate the feet are sampled at (consumer path: Motion.pose)


@pytest.fixture(scope="module")
def normative():
    return load_default_normative()


def feet(motion, fs: float = FS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heel and toe trajectories (T, 2, 3) sampled from the motion like a sensor would."""
    t = np.arange(motion.t[0], motion.t[-1], 1.0 / fs)
    kp = motion.pose(t).keypoints
    heel = kp[:, [KEYPOINT_INDEX["heel_l"], KEYPOINT_INDEX["heel_r"]]]
    toe = kp[:, [KEYPOINT_INDEX["toe_l"], KEYPOINT_INDEX["toe_r"]]]
    return t, heel, toe


def inner(events: list[tuple[float, str]], t: np.ndarray, margin: float = 0.4) -> list:
    return [e for e in events if t[0] + margin < e[0] < t[-1] - margin]


@pytest.mark.parametrize(
    ("activity", "speed", "pathology", "turn", "seed"),
    [
        ("walk", "Free", None, None, 0),
        ("walk", "VerySlow", None, None, 1),
        ("walk", "VeryFast", None, -25.0, 2),
        ("turn", "Slow", None, None, 3),
        ("walk", "Fast", "crouch", None, 4),
        ("walk", "Free", "trendelenburg", None, 5),
    ],
)
def test_detected_heel_strikes_match_labels(
    normative, activity, speed, pathology, turn, seed
) -> None:
    body = BodyModel(BodyShape(height=float(np.random.default_rng(seed).uniform(1.5, 1.9))))
    spec = MotionSpec(
        activity=activity, duration=10.0, speed=speed, pathology=pathology, turn_rate_deg_s=turn
    )
    m = generate_motion(spec, body, np.random.default_rng(seed), normative)
    t, heel, toe = feet(m)
    detected = detect_events(t, heel, toe)
    for kind in ("heel_strike", "toe_off"):
        lab = [e for e in m.labels.events if e[1].startswith(kind)]
        det = [e for e in detected if e[1].startswith(kind)]
        assert len(inner(lab, t)) >= 10
        err, missed, _ = match_events(det, inner(lab, t), EVENT_TOLERANCE)
        assert missed == 0, f"{kind}: {missed} of {len(inner(lab, t))} labels not within 20 ms"
        assert np.abs(err).max() <= EVENT_TOLERANCE
        # nothing spurious: every detection away from the edges pairs with a label
        _, spurious, _ = match_events(lab, inner(det, t), EVENT_TOLERANCE)
        assert spurious == 0


def test_no_events_while_standing(normative) -> None:
    m = generate_motion(
        MotionSpec(activity="stand", duration=6.0), BodyModel(), np.random.default_rng(0), normative
    )
    t, heel, toe = feet(m, 60.0)
    assert detect_events(t, heel, toe) == []
    assert m.labels.events == [] and m.labels.strides == []


def _stepping(step: float, period: float, fs: float = 100.0, n_steps: int = 8):
    """Analytic feet: each foot rests, then swings one stride forward along x in 40 % of the
    stride time with a sine lift; the other foot is half a stride behind in phase."""
    stride_t = 2 * period  # period = step time
    t = np.arange(0, n_steps * period, 1 / fs)
    heel = np.zeros((len(t), 2, 3))
    heel[:, 0, 1], heel[:, 1, 1] = 0.1, -0.1
    events = []
    for k, off in enumerate((0.0, period)):
        u = (t - off) / stride_t
        n = np.floor(u)
        frac = u - n
        swing = frac > 0.6
        s = np.clip((frac - 0.6) / 0.4, 0, 1)
        heel[:, k, 0] = (
            n + np.where(swing, 0.5 - 0.5 * np.cos(np.pi * s), 0.0)
        ) * 2 * step + k * step
        heel[:, k, 2] = np.where(swing, 0.05 * np.sin(np.pi * s), 0.0)
        side = "lr"[k]
        for j in range(-1, n_steps):
            for label, at in ((f"toe_off_{side}", 0.6), (f"heel_strike_{side}", 1.0)):
                te = off + (j + at) * stride_t
                if 0.05 < te < t[-1] - 0.05:
                    events.append((te, label))
    toe = heel.copy()
    toe[..., 0] += 0.2
    return t, heel, toe, sorted(events)


def test_strides_from_known_stepping() -> None:
    step, period = 0.7, 0.55
    t, heel, toe, truth = _stepping(step, period)
    detected = detect_events(t, heel, toe)
    _, missed, extra = match_events(detected, truth, 0.011)
    assert missed == 0 and extra == 0, (detected, truth)
    knee = np.tile([[5.0, 7.0]], (len(t), 1))
    strides = strides_from_events(truth, t, heel, knee, np.zeros(len(t)))
    assert len(strides) >= 4
    for s in strides:
        assert s.cadence == pytest.approx(60.0 / period)
        assert s.step_length == pytest.approx(step, abs=1e-6)
        assert s.stride_length == pytest.approx(2 * step, abs=1e-6)
        assert s.speed == pytest.approx(step / period)
        assert s.knee_flexion_max_ext == (5.0 if s.side == "l" else 7.0)
    # progression along another heading: step length is measured along it
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    turned = strides_from_events(truth, t, heel @ rot.T, knee, np.full(len(t), np.pi / 2))
    assert [s.step_length for s in turned] == pytest.approx([s.step_length for s in strides])


def test_labelled_strides_describe_the_motion(normative) -> None:
    m = generate_motion(
        MotionSpec(activity="walk", duration=10.0, pathology="crouch"),
        BodyModel(),
        np.random.default_rng(5),
        normative,
    )
    strides = m.labels.strides
    assert len(strides) >= 10
    for s in strides:
        k = DOF_INDEX[f"knee_flexion_{s.side}"]
        sel = (m.t >= s.t_start) & (m.t <= s.toe_off)
        assert s.knee_flexion_max_ext == pytest.approx(m.dofs[sel, k].min(), abs=0.5)
        assert s.knee_flexion_max_ext > 15.0  # crouch: never extends in stance
        assert 0.5 < s.t_end - s.t_start < 2.0


def test_bad_input_is_named() -> None:
    t = np.arange(10) / 100.0
    good = np.zeros((10, 2, 3))
    with pytest.raises(ValueError, match="heel_pos: shape"):
        detect_events(t, np.zeros((10, 3)), good)
    with pytest.raises(ValueError, match="times: must be strictly increasing"):
        detect_events(t[::-1], good, good)
    bad = good.copy()
    bad[3, 0, 2] = np.nan
    with pytest.raises(ValueError, match="toe_pos: contains NaN"):
        detect_events(t, good, bad)
    with pytest.raises(ValueError, match="unknown labels"):
        strides_from_events([(0.1, "heel_bump_l")], t, good, np.zeros((10, 2)), np.zeros(10))
