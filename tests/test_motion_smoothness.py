"""Generated gait is physically smooth at the 120 Hz grid (fusion/walking.py, activities.py).

What a virtual IMU reads is the second derivative of the motion, so kinks that are invisible
in the joint angles (a contact point switching from heel to toe, a correction applied per
frame, a blend between activities) show up as tens of g. Real walking keeps the pelvis and
trunk within about ±1 g of gravity, the knee's angular acceleration peaks near 6000 deg/s²
and foot accelerometers see heel-strike peaks of a few g; the bounds below leave room above
that but fail on any such kink (before the smoothing work a Free walk had root accelerations
of 160–580 m/s² and 1–3 % of its IMU samples beyond 16 g).
"""

from __future__ import annotations

import numpy as np
import pytest

from fusion.activities import PATHOLOGIES, MotionSpec, MotionState, end_state, generate_motion
from fusion.body import BodyModel, BodyShape
from fusion.imu_sim import default_placements, simulate_imu
from fusion.normative import load_default_normative
from fusion.skeleton import DOFS, GRAVITY, SEGMENT_INDEX

ROOT_ACC_P999 = 20.0  # m/s², root (pelvis) acceleration, 99.9th percentile
DOF_ACC_P999 = 15000.0  # deg/s², joint angular acceleration over all DOFs, 99.9th percentile
TRUNK_SF_P999 = 30.0  # m/s², |specific force| of pelvis/sternum/head sensors, 99.9th pct
SATURATION = 16.0 * GRAVITY  # m/s², a ±16 g accelerometer's range
EDGE = 0.1  # s left out at each end: the Motion spline's natural end condition is no physics
FS = 120.0  # Hz, the rate virtual IMUs sample at

CASES = [(a, None) for a in ("walk", "turn", "start_stop", "jog")] + [
    ("walk", p) for p in PATHOLOGIES
]


@pytest.fixture(scope="module")
def normative():
    return load_default_normative()


def _motion(normative, activity: str, pathology: str | None, seed: int):
    body = BodyModel(BodyShape(height=float(np.random.default_rng(100 + seed).uniform(1.5, 1.9))))
    spec = MotionSpec(activity=activity, duration=9.0, pathology=pathology)
    return generate_motion(spec, body, np.random.default_rng(seed), normative)


@pytest.mark.parametrize(("activity", "pathology"), CASES)
def test_accelerations_are_physical(normative, activity, pathology) -> None:
    """Root and joint accelerations (the motion's own spline derivatives) and what virtual
    IMUs on the trunk read stay in a human range; walking never saturates a 16 g sensor."""
    for seed in (0, 1):
        m = _motion(normative, activity, pathology, seed)
        t = np.arange(m.t[0] + EDGE, m.t[-1] - EDGE, 1.0 / FS)
        acc = m.channels(t, 2)
        d = len(DOFS)
        root = np.linalg.norm(acc[:, d : d + 3], axis=1)
        assert np.percentile(root, 99.9) < ROOT_ACC_P999, (seed, np.percentile(root, 99.9))
        dof = np.percentile(np.abs(acc[:, :d]), 99.9)
        assert dof < DOF_ACC_P999, (seed, dof)
        imu = simulate_imu(m, t, default_placements(m.body))
        force = imu[..., 3:]  # specific force per sensor axis, m/s²
        trunk = [SEGMENT_INDEX[s] for s in ("pelvis", "sternum", "head")]
        sf = np.percentile(np.linalg.norm(force[:, trunk], axis=-1), 99.9)
        assert sf < TRUNK_SF_P999, (seed, sf)
        if activity == "walk" and pathology is None:
            assert np.abs(force).max() < SATURATION, (seed, np.abs(force).max() / GRAVITY)


def test_central_differences_agree_with_the_spline(normative) -> None:
    """The bound holds for plain 120 Hz differences of the root too (no hidden grid-scale
    roughness between spline knots)."""
    m = _motion(normative, "walk", None, 2)
    dt = m.t[1] - m.t[0]
    keep = slice(round(EDGE / dt), -round(EDGE / dt))
    d2 = np.diff(m.root, 2, axis=0)[keep] / dt**2
    assert np.percentile(np.linalg.norm(d2, axis=1), 99.9) < ROOT_ACC_P999
    assert np.percentile(np.abs(d2[:, 2]), 99) < 10.0  # vertical: was 117 m/s² at p99


def test_chained_blocks_stay_smooth(normative) -> None:
    """Blending between activities (walk → stand → jog → walk, chained by end state) adds no
    jerk at the joins."""
    body = BodyModel()
    rng = np.random.default_rng(7)
    state = None
    roots, dofs = [], []
    for activity in ("walk", "stand", "jog", "walk"):
        m = generate_motion(
            MotionSpec(activity=activity, duration=4.0), body, rng, normative, state
        )
        state = end_state(m)
        roots.append(m.root if not roots else m.root[1:])
        dofs.append(m.dofs if not dofs else m.dofs[1:])
    root, dof = np.concatenate(roots), np.concatenate(dofs)
    dt = 1.0 / FS
    keep = slice(round(EDGE / dt), -round(EDGE / dt))
    root_acc = np.linalg.norm(np.diff(root, 2, axis=0)[keep], axis=1) / dt**2
    dof_acc = np.abs(np.diff(dof, 2, axis=0)[keep]) / dt**2
    assert np.percentile(root_acc, 99.9) < ROOT_ACC_P999
    assert root_acc.max() < 2 * ROOT_ACC_P999  # no single jolt at a join
    assert np.percentile(dof_acc, 99.9) < DOF_ACC_P999


def test_template_is_built_once_per_subject_speed_and_pathology(normative, monkeypatch) -> None:
    """Repeated blocks of the same subject reuse its gait template (it costs ~0.1–0.2 s)."""
    import fusion.activities as activities

    calls: list[tuple[str, str | None]] = []
    build = activities.build_gait_template

    def counting(curves, body, subject, pathology=None, *args, **kwargs):
        calls.append((curves.speed, pathology))
        return build(curves, body, subject, pathology, *args, **kwargs)

    monkeypatch.setattr(activities, "build_gait_template", counting)
    rng = np.random.default_rng(3)
    first = generate_motion(MotionSpec(duration=2.0), BodyModel(), rng, normative)
    subject = end_state(first).subject
    for speed, pathology in (("Free", None), ("Free", None), ("Fast", None), ("Free", "crouch")):
        spec = MotionSpec(duration=2.0, speed=speed, pathology=pathology)
        generate_motion(spec, BodyModel(), rng, normative, MotionState(subject=subject))
    generate_motion(
        MotionSpec(duration=2.0, pathology="crouch"),
        BodyModel(),
        rng,
        normative,
        MotionState(subject=subject),
    )
    assert calls == [("Free", None), ("Fast", None), ("Free", "crouch")]
