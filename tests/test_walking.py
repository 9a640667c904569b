"""fusion/walking.py: the gait engine (fast kinematics, cadence, templates, planted feet)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fusion.activities import MotionSpec, generate_motion
from fusion.angles import cardan_to_matrix
from fusion.body import BodyModel, BodyShape
from fusion.kinematics import forward_kinematics
from fusion.normative import SPEEDS, load_default_normative
from fusion.skeleton import DOFS
from fusion.walking import (
    SKATING_TOLERANCE,
    SWING_CLEARANCE,
    build_gait_template,
    cadence_for,
    clearance_profile,
    contact_point_speed,
    contact_schedule,
    foot_points,
    mean_subject,
    sample_gait_subject,
    soft_contact,
)

#: double-support skating bound (m/s, 95th percentile): the template closure is not exact
#: (measured 0.007–0.016 m/s; the landing heel may slide for ≈ 30 ms)
DOUBLE_SUPPORT_SLIP_P95 = 0.03


@pytest.fixture(scope="module")
def normative():
    return load_default_normative()


def stance_slip(motion) -> tuple[np.ndarray, np.ndarray]:
    """Contact-point horizontal speeds in single support and in double support (labelled)."""
    speed, _ = contact_point_speed(motion.body, motion.t, motion.dofs, motion.root, motion.heading)
    ev = motion.labels.events
    single, double = [], []
    for k, s in enumerate("lr"):
        o = "r" if s == "l" else "l"
        hs = [t for t, lab in ev if lab == f"heel_strike_{s}"]
        to = [t for t, lab in ev if lab == f"toe_off_{s}"]
        o_to = [t for t, lab in ev if lab == f"toe_off_{o}"]
        o_hs = [t for t, lab in ev if lab == f"heel_strike_{o}"]
        for t0 in hs:
            t1 = next((x for x in to if x > t0), None)
            a = next((x for x in o_to if t0 < x < (t1 or -1)), None)
            b = next((x for x in o_hs if t0 < x < (t1 or -1)), None)
            if t1 is None or a is None or b is None:
                continue
            t = motion.t
            single.append(speed[(t > a) & (t < b), k])
            double.append(speed[((t >= t0) & (t <= a)) | ((t >= b) & (t <= t1)), k])
    return np.concatenate(single), np.concatenate(double)


def test_closed_form_rotations_and_leg_kinematics_equal_the_reference() -> None:
    rng = np.random.default_rng(1)
    cardan = rng.uniform(-80, 80, (200, 3))
    ref = Rotation.from_euler("YXZ", cardan, degrees=True).as_matrix()
    np.testing.assert_allclose(cardan_to_matrix(cardan), ref, atol=1e-12)
    body = BodyModel(BodyShape(height=1.62, leg_scale=1.1))
    dofs = rng.normal(0, 25, (100, len(DOFS)))
    root, heading = rng.normal(size=(100, 3)), rng.normal(size=100)
    full = forward_kinematics(body, dofs, root, heading)
    legs = forward_kinematics(body, dofs, root, heading, segments=_LEGS)
    np.testing.assert_allclose(legs.keypoints[:, 7:], full.keypoints[:, 7:], atol=1e-12)
    assert np.isnan(legs.keypoints[:, 0]).all()  # the head is not computed
    P = foot_points(body, dofs)  # heading frame, relative to the root
    rel = forward_kinematics(body, dofs, np.zeros(3), 0.0).keypoints
    np.testing.assert_allclose(P[:, 1, 1], rel[:, 16], atol=1e-12)  # toe_r
    np.testing.assert_allclose(P[:, 0, 0], rel[:, 13], atol=1e-12)  # heel_l


_LEGS = ("pelvis", "thigh_l", "thigh_r", "shank_l", "shank_r", "foot_l", "foot_r")


def test_cadence_scales_with_leg_length_and_speed_class() -> None:
    short, tall = BodyModel(BodyShape(height=1.5)), BodyModel(BodyShape(height=1.9))
    c = [cadence_for(s, BodyModel()) for s in SPEEDS]
    assert all(np.diff(c) > 0)
    assert 95 < cadence_for("Free", BodyModel()) < 120  # adult free walking, steps/min
    ratio = cadence_for("Free", short) / cadence_for("Free", tall)
    assert ratio == pytest.approx(np.sqrt(tall.leg_length / short.leg_length))


def test_template_feet_meet_the_floor_when_labelled(normative) -> None:
    """Double support closes (both feet on the floor) and the swing foot clears the floor."""
    body = BodyModel()
    for subject in (
        mean_subject(normative),
        sample_gait_subject(np.random.default_rng(3), normative),
    ):
        tpl = build_gait_template(subject.curves(normative, "Free"), body, subject)
        c = soft_contact(foot_points(body, tpl.dofs)[..., 2])[0]
        floor = np.einsum("nk,nk->n", contact_schedule(tpl.phase, tpl.stance), c)
        h = c - floor[:, None]
        for k in range(2):
            u = np.mod(tpl.phase - 0.5 * k, 1.0)
            assert np.abs(h[u < tpl.stance - 0.5, k]).max() < 0.002  # double support: on floor
            # the swing foot follows at least the clearance profile (full clearance mid-swing)
            g = clearance_profile(u, tpl.stance)
            swing = u >= tpl.stance
            assert np.all(h[swing, k] > 0.8 * g[swing] - 0.002)
            assert h[g > 0.95 * SWING_CLEARANCE, k].min() > 0.8 * SWING_CLEARANCE
            assert h[swing, k].min() > -0.002
        assert tpl.stance - 0.02 <= tpl.toe_off <= tpl.stance


def test_stance_foot_is_planted(normative) -> None:
    """The skating tolerance: contact-point speed in single support < SKATING_TOLERANCE."""
    body = BodyModel(BodyShape(height=1.75))
    singles, doubles = [], []
    for seed, speed, turn in ((0, "Free", None), (1, "VerySlow", None), (2, "VeryFast", 30.0)):
        spec = MotionSpec(activity="walk", duration=12.0, speed=speed, turn_rate_deg_s=turn)
        m = generate_motion(spec, body, np.random.default_rng(seed), normative)
        s, d = stance_slip(m)
        singles.append(s)
        doubles.append(d)
        feet = foot_points(body, m.dofs)[..., 2] + m.root[:, None, None, 2]
        assert feet.min() > -0.002  # nothing goes through the floor
    single, double = np.concatenate(singles), np.concatenate(doubles)
    assert np.percentile(single, 99) < SKATING_TOLERANCE
    assert np.percentile(double, 95) < DOUBLE_SUPPORT_SLIP_P95


def test_speed_emerges_from_cadence_and_planted_feet(normative) -> None:
    body = BodyModel()
    subject = mean_subject(normative)
    from fusion.activities import MotionState

    speeds = []
    for speed in SPEEDS:
        spec = MotionSpec(activity="walk", duration=8.0, speed=speed, fs=60.0)
        start = MotionState(subject=subject)
        m = generate_motion(spec, body, np.random.default_rng(0), normative, start)
        st = m.labels.strides
        assert st, f"no strides labelled at {speed}"
        v = np.mean([s.speed for s in st])
        # the labelled speed is the root's average progression speed
        dist = np.linalg.norm(m.root[-1, :2] - m.root[0, :2])
        assert v == pytest.approx(dist / m.duration, rel=0.1)
        assert np.mean([s.step_length for s in st]) == pytest.approx(
            np.mean([s.stride_length for s in st]) / 2, rel=0.1
        )
        speeds.append(v)
    assert all(np.diff(speeds) > 0), speeds
    v_star = np.array(speeds) / np.sqrt(9.81 * body.leg_length)
    assert 0.3 < v_star[SPEEDS.index("Free")] < 0.55  # Schwartz's free-speed class
