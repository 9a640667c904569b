"""Synthetic motion: activities, their specification, chaining state and ground-truth labels.

`generate_motion(spec, body, rng, normative, start)` makes one block of motion:

- gait activities ("walk", "turn", "start_stop", "jog", and the pathologies) run the gait
  engine of fusion/walking.py: a subject-specific gait template, a phase that advances at the
  cadence, an amplitude that blends from the standing pose into gait (starting) and back
  (stopping), a heading that integrates the turn rate, and the root from planting the feet;
- the other activities ("stand", "sit_to_stand", "squat", "arm_movements") are procedural
  key-framed DOF curves around the subject's standing pose with both feet planted;
- "mixed" chains random blocks of the others.

Without `start` a block begins in the activity's steady state at the origin. With `start`
(the `end_state` of the previous block) it continues without jumps: same time, position,
heading, gait phase and DOFs (the DOF difference fades out over FADE_TIME with matching
rate; the root joins with matching velocity), and a walking start stops first before a
non-gait activity or a switch between walking and running, a standing one starts to walk.
Block k+1's first sample repeats block k's last one (same time): drop one when
concatenating.

The planted root is low-passed (fusion.walking.smooth_root; harder for running, whose
flights join the stance with a kink), the turn rate ramps in and out of single support with
C² ramps, and every blend (start, stop, fade) is at least C¹, so the motion is smooth at the
120 Hz grid: tests/test_motion_smoothness.py holds root, joint and virtual-IMU accelerations
to a human range.

Labels (`Motion.labels`): activity intervals, gait events at fixed phases of the template
(heel strike at 0/½, toe off at the stance fraction) while the gait amplitude is ≥ 0.5, and
strides measured on the ground-truth heel trajectories (fusion/gait_events.py). The generator
state needed to continue is kept on the motion as `motion.generator_state` (read it with
`end_state`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator

from fusion.angles import yaw_matrix
from fusion.body import BodyModel
from fusion.gait_events import strides_from_events
from fusion.kinematics import Motion, MotionLabels
from fusion.normative import CHANNEL_INDEX, SPEEDS, NormativeSet
from fusion.skeleton import DOF_INDEX, DOFS, GRAVITY, SIDES
from fusion.walking import (
    JOG_STANCE_FRACTION,
    PATHOLOGIES,
    GaitSubject,
    GaitTemplate,
    build_gait_template,
    cadence_for,
    clear_swing,
    contact_schedule,
    foot_points,
    jog_cadence,
    plant_root,
    sample_gait_subject,
    smooth_root,
)

ACTIVITIES: tuple[str, ...] = (
    "walk",
    "turn",
    "start_stop",
    "stand",
    "sit_to_stand",
    "squat",
    "jog",
    "arm_movements",
    "mixed",
)
GAIT_ACTIVITIES = ("walk", "turn", "start_stop", "jog")
__all__ = [
    "ACTIVITIES",
    "PATHOLOGIES",
    "MotionSpec",
    "MotionState",
    "end_state",
    "generate_motion",
    "stance_offsets",
]

TOUCHDOWN_SPEED = 0.3  # m/s: vertical speed of the landing foot at touchdown (running)
FADE_TIME = 0.6  # s: DOF mismatch with the start state fades out over this time
WALK_STANCE = 0.62  # stance fraction a stopping run's support schedule turns into
START_TIME = 1.2  # s: gait initiation (amplitude 0 → 1)
STOP_TIME = 1.2  # s: gait termination (amplitude 1 → 0)
EVENT_AMPLITUDE = 0.25  # gait events are labelled only where the amplitude is at least this
TURN_PEAK_RATE = 60.0  # deg/s: peak rate of the 180° turns of the "turn" activity
MAX_TURN_RATE = 120.0  # deg/s: largest accepted MotionSpec.turn_rate_deg_s
#: Hz (horizontal, vertical): running's planted root is low-passed harder than walking's
#: (fusion.walking.ROOT_CUTOFF_HZ): each landing and take-off joins a ballistic flight to the
#: stance with a kink
RUNNING_ROOT_CUTOFF_HZ = (8.0, 8.0)
TURN_GATE_EDGE = 0.08  # cycles: the turn rate ramps in/out over this after/before double support
_MAX_FS = 2000.0


@dataclass
class MotionSpec:
    """What to generate. Validated on construction (the error names the field and why)."""

    activity: str = "walk"
    duration: float = 30.0  # s
    speed: str = "Free"  # Schwartz 2008 speed class (gait activities)
    pathology: str | None = None  # gait pathology (gait activities)
    fs: float = 120.0  # Hz, rate of the motion's grid
    turn_rate_deg_s: float | None = None  # walk/turn: constant turn rate (left +)

    def __post_init__(self) -> None:
        if not isinstance(self.activity, str) or self.activity not in ACTIVITIES:
            raise ValueError(
                f"MotionSpec.activity={self.activity!r}: unknown activity, expected one of "
                f"{ACTIVITIES}"
            )
        if not isinstance(self.speed, str) or self.speed not in SPEEDS:
            raise ValueError(
                f"MotionSpec.speed={self.speed!r}: unknown speed class, expected one of {SPEEDS}"
            )
        if self.pathology is not None and self.pathology not in PATHOLOGIES:
            raise ValueError(
                f"MotionSpec.pathology={self.pathology!r}: unknown pathology, expected None or "
                f"one of {PATHOLOGIES}"
            )
        for name in ("fs", "duration"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"MotionSpec.{name}={v!r}: must be a number")
        if not np.isfinite(self.fs) or self.fs <= 0:
            raise ValueError(f"MotionSpec.fs={self.fs!r}: must be > 0 Hz")
        if self.fs > _MAX_FS:
            raise ValueError(f"MotionSpec.fs={self.fs!r}: must be at most {_MAX_FS:g} Hz")
        if not np.isfinite(self.duration) or self.duration <= 0:
            raise ValueError(f"MotionSpec.duration={self.duration!r}: must be > 0 s")
        if self.duration * self.fs < 3:
            raise ValueError(
                f"MotionSpec.duration={self.duration!r}: must span at least 4 samples at "
                f"fs={self.fs:g} Hz"
            )
        if self.turn_rate_deg_s is not None:
            r = self.turn_rate_deg_s
            if isinstance(r, bool) or not isinstance(r, (int, float, np.floating, np.integer)):
                raise ValueError(f"MotionSpec.turn_rate_deg_s={r!r}: must be a number or None")
            if not np.isfinite(r) or abs(r) > MAX_TURN_RATE:
                raise ValueError(
                    f"MotionSpec.turn_rate_deg_s={r!r}: must be finite and within "
                    f"±{MAX_TURN_RATE:g} deg/s"
                )


@dataclass
class MotionState:
    """Where a motion ended: enough to continue it without jumps.

    root (3,) m, heading rad, phase (strides since a left heel strike), dofs (len(DOFS),) deg
    and their rates (deg/s); gait_amplitude 0 = standing … 1 = walking; the subject so the
    same person carries on.
    """

    t: float = 0.0
    root: np.ndarray = field(default_factory=lambda: np.zeros(3))
    heading: float = 0.0
    phase: float = 0.0
    dofs: np.ndarray | None = None
    dofs_rate: np.ndarray | None = None
    root_velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))
    heading_rate: float = 0.0  # rad/s
    gait_amplitude: float = 0.0
    cadence: float = 0.0  # steps/min
    running: bool = False
    speed: str = "Free"
    pathology: str | None = None
    activity: str = "stand"
    subject: GaitSubject | None = None

    def __post_init__(self) -> None:
        self.root = np.asarray(self.root, float).reshape(-1)
        self.root_velocity = np.asarray(self.root_velocity, float).reshape(-1)
        if self.root.shape != (3,) or not np.all(np.isfinite(self.root)):
            raise ValueError(f"MotionState.root={self.root!r}: must be 3 finite numbers (m)")
        if self.root_velocity.shape != (3,):
            raise ValueError("MotionState.root_velocity: must be 3 numbers (m/s)")
        for name in ("t", "heading", "phase", "heading_rate", "cadence"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"MotionState.{name}={getattr(self, name)!r}: must be finite")
        if not 0.0 <= self.gait_amplitude <= 1.0:
            raise ValueError(
                f"MotionState.gait_amplitude={self.gait_amplitude!r}: must be within 0–1"
            )
        for name in ("dofs", "dofs_rate"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v, float)
                if v.shape != (len(DOFS),) or not np.all(np.isfinite(v)):
                    raise ValueError(
                        f"MotionState.{name}: must be {len(DOFS)} finite values (DOFS order)"
                    )
                setattr(self, name, v)
        if self.speed not in SPEEDS:
            raise ValueError(f"MotionState.speed={self.speed!r}: expected one of {SPEEDS}")


def end_state(motion: Motion) -> MotionState:
    """The state at the end of a generated motion (to pass as `start` of the next block)."""
    state = motion.generator_state
    if isinstance(state, MotionState):
        return state
    # a motion from elsewhere: continue from its last pose, standing
    dt = motion.t[-1] - motion.t[-2]
    return MotionState(
        t=float(motion.t[-1]),
        root=motion.root[-1].copy(),
        heading=float(motion.heading[-1]),
        dofs=motion.dofs[-1].copy(),
        dofs_rate=(motion.dofs[-1] - motion.dofs[-2]) / dt,
        root_velocity=(motion.root[-1] - motion.root[-2]) / dt,
        heading_rate=float(motion.heading[-1] - motion.heading[-2]) / dt,
    )


# -- entry point -----------------------------------------------------------------------------


def generate_motion(
    spec: MotionSpec,
    body: BodyModel,
    rng: np.random.Generator,
    normative: NormativeSet,
    start: MotionState | None = None,
) -> Motion:
    """One block of synthetic motion with labels (see the module docstring)."""
    if not isinstance(spec, MotionSpec):
        raise TypeError(f"spec: expected a MotionSpec, got {type(spec).__name__}")
    if not isinstance(body, BodyModel):
        raise TypeError(f"body: expected a BodyModel, got {type(body).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if not isinstance(normative, NormativeSet):
        raise TypeError(f"normative: expected a NormativeSet, got {type(normative).__name__}")
    if start is not None and not isinstance(start, MotionState):
        raise TypeError(f"start: expected a MotionState or None, got {type(start).__name__}")
    fresh = start is None or start.dofs is None  # no pose history: begin in steady state
    if start is None:
        start = MotionState()
    subject = start.subject or sample_gait_subject(rng, normative, spec.speed)
    if spec.activity == "mixed":
        return _mixed(spec, body, rng, normative, start, subject, fresh)
    ctx = _Context(spec, body, rng, normative, start, subject, fresh)
    block = _BUILDERS[spec.activity](ctx)
    return _finish(ctx, block)


#: subject → {(body, speed, pathology, running): template}; entries go with their subject
_TEMPLATE_CACHE: weakref.WeakKeyDictionary[GaitSubject, dict[tuple, GaitTemplate]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class _Context:
    spec: MotionSpec
    body: BodyModel
    rng: np.random.Generator
    normative: NormativeSet
    start: MotionState
    subject: GaitSubject
    fresh: bool  # no history: begin in the activity's steady state

    @property
    def t(self) -> np.ndarray:
        n = round(self.spec.duration * self.spec.fs) + 1
        return self.start.t + np.arange(n) / self.spec.fs

    def template(self, speed: str, pathology: str | None, running: bool = False) -> GaitTemplate:
        """The subject's template, cached per subject (templates cost ~0.1–0.3 s to build)."""
        key = (self.body, speed, pathology, running)
        cache = _TEMPLATE_CACHE.setdefault(self.subject, {})
        if key not in cache:
            if running:
                cache[key] = _jog_template(self.body, self.subject)
            else:
                curves = self.subject.curves(self.normative, speed)
                cache[key] = build_gait_template(curves, self.body, self.subject, pathology)
        return cache[key]


@dataclass
class _Block:
    """Per-frame control signals of one block (before the start fade and planting)."""

    t: np.ndarray
    dofs: np.ndarray
    heading: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray
    foot_weight: np.ndarray
    activity: list[tuple[float, float, str]]
    template: GaitTemplate | None = None
    running: bool = False
    cadence: float = 0.0
    speed: str = "Free"
    pathology: str | None = None
    activity_name: str = "stand"


# -- shared pieces ---------------------------------------------------------------------------


def _knots(t: np.ndarray, kt: list[float], kv: list[float]) -> np.ndarray:
    """Smooth (C¹, flat at knots) piecewise interpolation through (kt, kv), held outside."""
    kt_a, kv_a = np.asarray(kt, float), np.asarray(kv, float)
    if len(kt_a) == 1:
        return np.full(len(t), kv_a[0])
    i = np.clip(np.searchsorted(kt_a, t, side="right") - 1, 0, len(kt_a) - 2)
    span = np.maximum(kt_a[i + 1] - kt_a[i], 1e-9)
    x = np.clip((t - kt_a[i]) / span, 0.0, 1.0)
    s = x * x * (3.0 - 2.0 * x)
    return kv_a[i] + s * (kv_a[i + 1] - kv_a[i])


def _smootherstep(x: np.ndarray) -> np.ndarray:
    """C² step from 0 (x ≤ 0) to 1 (x ≥ 1)."""
    x = np.clip(x, 0.0, 1.0)
    return x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


def _integrate(t: np.ndarray, rate: np.ndarray, x0: float) -> np.ndarray:
    out = np.empty(len(t))
    out[0] = x0
    out[1:] = x0 + np.cumsum(0.5 * (rate[1:] + rate[:-1]) * np.diff(t))
    return out


def stand_pose(subject: GaitSubject, normative: NormativeSet | None = None) -> np.ndarray:
    """The subject's quiet standing pose (DOFS), feet flat, slight toe-out."""
    D = DOF_INDEX
    d = np.zeros(len(DOFS))
    tilt, fp = 11.0, -8.0
    if normative is not None:
        mean = normative.periodic_mean("Free")
        sd = normative.sd[normative.speed_index("Free")]
        zc = 0.5 * (subject.z_left + subject.z_right).mean(axis=1)
        ci = CHANNEL_INDEX
        tilt = float(
            mean[ci["pelvis_tilt"]].mean() + zc[ci["pelvis_tilt"]] * sd[ci["pelvis_tilt"]].mean()
        )
        fp = float(mean[ci["foot_progression"]].mean())
    d[D["pelvis_tilt"]] = tilt
    for s in SIDES:
        d[D[f"hip_flexion_{s}"]] = tilt  # thigh vertical
        d[D[f"knee_flexion_{s}"]] = 2.0
        d[D[f"ankle_dorsiflexion_{s}"]] = 2.0  # foot flat
        d[D[f"ankle_rotation_{s}"]] = fp
        d[D[f"shoulder_abduction_{s}"]] = 5.0
        d[D[f"shoulder_rotation_{s}"]] = 2.0
        d[D[f"elbow_flexion_{s}"]] = 10.0
    d[D["trunk_flexion"]] = subject.trunk_lean * 0.5 - tilt
    d[D["neck_flexion"]] = -0.4 * subject.trunk_lean
    if subject.stance is not None:
        d = d + subject.stance
    return d


def stance_offsets(rng: np.random.Generator, sd_deg: float) -> np.ndarray:
    """How one person's quiet stance departs from the typical one (DOFS, deg), feet flat.

    People do not stand alike: knees a few degrees flexed or hyperextended, thighs leaning,
    feet turned out more or less (σ of a few degrees in healthy adults, far more in crouch
    gait). A calibration that assumes the typical stance reads the difference as a constant
    offset, so the evaluation sweeps it. Per side: the thigh's global lean, the knee's
    flexion and the foot's turn-out, each N(0, sd_deg); the ankle follows so the foot stays
    flat (`_set_legs_flat`).
    """
    if not np.isfinite(sd_deg) or sd_deg < 0:
        raise ValueError(f"stance sd_deg={sd_deg!r}: must be a finite angle >= 0 deg")
    thigh, knee, turn = rng.normal(0.0, sd_deg, (3, len(SIDES)))
    d = np.zeros(len(DOFS))
    for k, s in enumerate(SIDES):
        d[DOF_INDEX[f"hip_flexion_{s}"]] = thigh[k]
        d[DOF_INDEX[f"knee_flexion_{s}"]] = knee[k]
        d[DOF_INDEX[f"ankle_dorsiflexion_{s}"]] = knee[k] - thigh[k]
        d[DOF_INDEX[f"ankle_rotation_{s}"]] = turn[k]
    return d


def _set_legs_flat(d: np.ndarray, thigh: np.ndarray, knee: np.ndarray, tilt: np.ndarray) -> None:
    """Sagittal leg pose from the thigh's global angle (distal forward +), knee flexion and
    pelvis tilt, with the ankle set so the foot stays flat on the floor."""
    for s in SIDES:
        d[:, DOF_INDEX[f"hip_flexion_{s}"]] = thigh + tilt
        d[:, DOF_INDEX[f"knee_flexion_{s}"]] = knee
        d[:, DOF_INDEX[f"ankle_dorsiflexion_{s}"]] = knee - thigh


def _smooth_noise(
    rng: np.random.Generator, t: np.ndarray, n: int, scale: float, corr_time: float
) -> np.ndarray:
    """Smooth random signals (T, n): random knots every corr_time s through a PCHIP."""
    span = t[-1] - t[0]
    m = max(int(np.ceil(span / corr_time)) + 2, 3)
    kt = t[0] + (np.arange(m) - 0.5) * corr_time
    kv = rng.normal(0.0, scale, (m, n))
    return PchipInterpolator(kt, kv, axis=0)(t)


# -- gait ------------------------------------------------------------------------------------


def _gait(ctx: _Context, *, running: bool = False) -> _Block:
    spec, start = ctx.spec, ctx.start
    t = ctx.t
    t0 = t[0]
    pathology = spec.pathology
    tpl = ctx.template(spec.speed, pathology, running)
    cadence = (
        jog_cadence(ctx.body, ctx.subject.cadence_factor)
        if running
        else cadence_for(spec.speed, ctx.body, ctx.subject.cadence_factor)
    )
    if pathology in ("crouch", "stiff_knee", "braced_knee"):
        cadence *= 0.9
    switch = _gait_change(ctx, running)
    walking_now = ctx.fresh or (start.gait_amplitude >= 0.5 and start.running == running)
    amp_k_t, amp_k_v = [t0], [1.0 if walking_now else start.gait_amplitude]
    if switch:  # from the other gait: it stops first (see _switch_lead_in), then this starts
        amp_k_t, amp_k_v = [t0, t0 + STOP_TIME, t0 + STOP_TIME + START_TIME], [0.0, 0.0, 1.0]
    elif not walking_now:  # start from standing
        amp_k_t += [t0 + START_TIME]
        amp_k_v += [1.0]
    cad0 = cadence if ctx.fresh or start.cadence <= 0 else start.cadence
    # turning
    omega0 = 0.0 if ctx.fresh else start.heading_rate
    omega = _turn_profile(ctx, t, omega0)
    # start/stop schedule
    names: list[tuple[float, float, str]] = []
    if spec.activity == "start_stop":
        a0 = 0.0 if switch else (1.0 if walking_now else start.gait_amplitude)
        amp_k_t, amp_k_v, names = _start_stop_schedule(ctx, t, a0)
    amp = _knots(t, amp_k_t, amp_k_v)
    cad = _knots(t, [t0, t0 + 1.5], [cad0, cadence])
    rate = np.clip(amp / 0.35, 0.0, 1.0)  # the phase moves once the legs do
    rate = rate * rate * (3 - 2 * rate)
    phase0 = float(ctx.rng.uniform(0, 1)) if ctx.fresh else start.phase
    phase = _integrate(t, cad / 120.0 * rate, phase0)
    heading = _integrate(t, omega * _turn_gate(tpl, phase, amp), start.heading)
    dofs = _gait_dofs(ctx, tpl, phase, amp)
    weight = tpl.foot_weights(phase)
    if switch:
        n_lead, lead_dofs, lead_weight = _switch_lead_in(ctx, t)
        dofs[:n_lead], weight[:n_lead] = lead_dofs, lead_weight
        t_stop = float(t[n_lead - 1])
        later = names or [(float(t0), float(t[-1]), spec.activity)]
        names = [(float(t0), t_stop, "start_stop")]
        names += [(max(a, t_stop), b, n) for a, b, n in later if b > t_stop]
    if not names:
        names = [(float(t0), float(t[-1]), spec.activity)]
    return _Block(
        t=t,
        dofs=dofs,
        heading=heading,
        phase=phase,
        amplitude=amp,
        foot_weight=weight,
        activity=names,
        template=tpl,
        running=running,
        cadence=cadence,
        speed=spec.speed,
        pathology=pathology,
        activity_name=spec.activity,
    )


def _gait_change(ctx: _Context, running: bool) -> bool:
    """Whether this block switches between walking and running in stride."""
    start = ctx.start
    return (
        not ctx.fresh
        and start.dofs is not None
        and start.gait_amplitude > 0.0
        and start.running != running
    )


def _switch_lead_in(ctx: _Context, t: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Walking ⇄ running: the old gait stops over STOP_TIME (its template blended toward
    standing, like a stop before a non-gait activity) before the new one starts, because
    fading one gait's joint angles into the other's within a stride leaves the feet where
    neither gait's contact schedule expects them. A run's flights shrink to nothing as it
    slows (its stance fraction grows towards a walk's), so the body lands instead of being
    dropped. Returns (lead-in samples, their DOFs, their support weights)."""
    start = ctx.start
    t_stop = float(t[0]) + STOP_TIME
    ts = t[t <= t_stop]
    tpl = ctx.template(start.speed, start.pathology, start.running)
    amp = _knots(ts, [ts[0], t_stop], [start.gait_amplitude, 0.0])
    cad = start.cadence if start.cadence > 0 else cadence_for(start.speed, ctx.body)
    rate = np.clip(amp / 0.35, 0.0, 1.0)
    phase = _integrate(ts, cad / 120.0 * rate * rate * (3 - 2 * rate), start.phase)
    dofs = _gait_dofs(ctx, tpl, phase, amp)
    stance = tpl.stance + (WALK_STANCE - tpl.stance) * (1.0 - amp) if tpl.running else tpl.stance
    return len(ts), dofs, contact_schedule(phase, stance)


def _gait_dofs(ctx: _Context, tpl: GaitTemplate, phase: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Template DOFs at the phase, blended toward standing by the amplitude. Turning needs no
    extra DOFs: the heading only changes in single support (see _turn_gate), where the stance
    foot pivots about its contact point."""
    stand = stand_pose(ctx.subject, ctx.normative)
    dofs = stand + amp[:, None] * (tpl.dofs_at(phase) - stand)
    if not tpl.running:
        dofs = clear_swing(ctx.body, dofs, phase, tpl.stance, amp, sigma=0.02 * ctx.spec.fs)
    return dofs


def _turn_gate(tpl: GaitTemplate, phase: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Turn in single support: the heading rate is scaled down through double support (both
    feet planted, the body cannot yaw without dragging one) and up in single support, with
    the same mean over a cycle; blended to 1 as the amplitude falls (stepping in place)."""

    def raw(ph: np.ndarray) -> np.ndarray:
        ds = max(tpl.stance - 0.5, 0.0)
        if ds == 0.0:
            return np.ones_like(ph)
        edge = TURN_GATE_EDGE
        u = np.mod(ph, 0.5)  # cycles since the last heel strike (either foot)
        # C² ramps (the heading's angular acceleration swings the root about the stance
        # foot, so a kink in the rate would jerk the pelvis)
        return _smootherstep((u - ds) / edge) * _smootherstep((0.5 - u) / edge)

    gate = raw(phase) / max(float(np.mean(raw(tpl.phase))), 1e-3)
    return 1.0 + np.clip(amp, 0.0, 1.0) * (gate - 1.0)


def _turn_profile(ctx: _Context, t: np.ndarray, omega0: float) -> np.ndarray:
    """Heading rate (rad/s): constant turn (with a 1 s ramp), or 180° turns for "turn"."""
    spec = ctx.spec
    t0 = t[0]
    if spec.turn_rate_deg_s is not None:
        return _knots(t, [t0, t0 + 1.0], [omega0, np.radians(spec.turn_rate_deg_s)])
    base = _knots(t, [t0, t0 + 1.0], [omega0, 0.0])
    if spec.activity != "turn":
        return base
    # walkway: straight 3–6 s, then a 180° turn with a sin² rate profile, alternating sides
    out = base.copy()
    peak = np.radians(TURN_PEAK_RATE)
    T_turn = np.pi / peak * 2.0  # ∫ peak·sin² = peak·T/2 = π
    tc = t0 + 1.0 + ctx.rng.uniform(2.0, 4.0)
    sign = float(ctx.rng.choice([-1.0, 1.0]))
    while tc < t[-1]:
        sel = (t >= tc) & (t < tc + T_turn)
        out[sel] += sign * peak * np.sin(np.pi * (t[sel] - tc) / T_turn) ** 2
        tc += T_turn + ctx.rng.uniform(3.0, 6.0)
        sign = -sign if ctx.rng.uniform() < 0.7 else sign
    return out


def _start_stop_schedule(
    ctx: _Context, t: np.ndarray, a0: float
) -> tuple[list[float], list[float], list[tuple[float, float, str]]]:
    """Amplitude knots and activity names: stand – start – walk – stop – stand …"""
    rng = ctx.rng
    t0, t1 = float(t[0]), float(t[-1])
    kt, kv = [t0], [a0]
    names: list[tuple[float, float, str]] = []
    now = t0
    if a0 > 0.5:  # walking already: walk a little, then stop
        walk = rng.uniform(2.0, 5.0)
        kt += [now + walk, now + walk + STOP_TIME]
        kv += [1.0, 0.0]
        names.append((now, now + walk + STOP_TIME, "start_stop"))
        now += walk + STOP_TIME
    elif a0 > 0.0:
        kt += [now + STOP_TIME]
        kv += [0.0]
        now += STOP_TIME
    while now < t1:
        stand = rng.uniform(1.0, 2.5)
        walk = rng.uniform(3.0, 7.0)
        names.append((now, min(now + stand, t1), "stand"))
        kt += [now + stand, now + stand + START_TIME, now + stand + START_TIME + walk]
        kv += [0.0, 1.0, 1.0]
        end = now + stand + START_TIME + walk + STOP_TIME
        kt += [end]
        kv += [0.0]
        if now + stand < t1:
            names.append((now + stand, min(end, t1), "start_stop"))
        now = end
    # merge into a strictly increasing knot list
    kt_a, idx = np.unique(np.asarray(kt), return_index=True)
    return list(kt_a), list(np.asarray(kv)[idx]), [(a, b, n) for a, b, n in names if b > a]


def _jog_template(body: BodyModel, subject: GaitSubject) -> GaitTemplate:
    """A procedural running cycle (no normative source): key points of typical jogging
    kinematics (hip −10…35°, knee 15/40/90°, ankle 20/−20°), periodic cubic, stance 36 %."""
    from fusion.walking import TEMPLATE_POINTS, _make_consistent, _upper_body

    M = TEMPLATE_POINTS
    phase = np.arange(M) / M
    st = JOG_STANCE_FRACTION
    # (phase, value) keys over a side's own cycle
    keys = {
        "hip_flexion": [(0.0, 32), (0.15, 20), (st, -8), (0.5, 0), (0.8, 38), (0.95, 35)],
        "knee_flexion": [(0.0, 18), (0.14, 40), (st, 20), (0.55, 75), (0.7, 92), (0.9, 30)],
        "ankle_dorsiflexion": [(0.0, 2), (0.16, 20), (st, -18), (0.5, -8), (0.75, 4), (0.92, 5)],
        "hip_adduction": [(0.0, 2), (0.15, 6), (0.4, 0), (0.7, -4), (0.9, 0)],
    }
    dofs = np.zeros((M, len(DOFS)))
    from scipy.interpolate import CubicSpline

    for k, s in enumerate(SIDES):
        u = np.mod(phase - 0.5 * k, 1.0)
        for name, pts in keys.items():
            x = np.array([p for p, _ in pts] + [1.0])
            y = np.array([v for _, v in pts] + [pts[0][1]], float)
            dofs[:, DOF_INDEX[f"{name}_{s}"]] = CubicSpline(x, y, bc_type="periodic")(u)
        dofs[:, DOF_INDEX[f"ankle_rotation_{s}"]] = -6.0
    w = 2 * np.pi * phase
    dofs[:, DOF_INDEX["pelvis_tilt"]] = 14.0 + 2.0 * np.cos(2 * w)
    dofs[:, DOF_INDEX["pelvis_obliquity"]] = 4.0 * np.sin(w + 0.6)
    dofs[:, DOF_INDEX["pelvis_rotation"]] = -6.0 * np.cos(w)
    _upper_body(dofs, phase, subject, speed_gain=2.0)
    for s in SIDES:
        dofs[:, DOF_INDEX[f"elbow_flexion_{s}"]] = 85.0 + 10.0 * np.sin(w)
        dofs[:, DOF_INDEX[f"shoulder_abduction_{s}"]] = 12.0
    cycle_time = 120.0 / jog_cadence(body, subject.cadence_factor)
    dofs = _make_consistent(body, dofs, phase, st, set(), running=True, cycle_time=cycle_time)
    return GaitTemplate(phase=phase, dofs=dofs, stance=st, running=True, speed="VeryFast")


# -- non-gait activities ----------------------------------------------------------------------


def _lead_in(ctx: _Context) -> tuple[np.ndarray, np.ndarray, float, list[tuple[float, float, str]]]:
    """If the start state walks, a stop first: (dofs, amplitude, end time, names) for the
    lead-in frames (empty when the start is already standing)."""
    t = ctx.t
    start = ctx.start
    if ctx.fresh or start.gait_amplitude <= 0.0:
        return np.zeros((0, len(DOFS))), np.zeros(0), float(t[0]), []
    t_end = float(t[0]) + STOP_TIME
    sel = t <= t_end
    ts = t[sel]
    tpl = ctx.template(start.speed, start.pathology, start.running)
    amp = _knots(ts, [ts[0], t_end], [start.gait_amplitude, 0.0])
    cad = start.cadence if start.cadence > 0 else cadence_for(start.speed, ctx.body)
    rate = np.clip(amp / 0.35, 0.0, 1.0)
    phase = _integrate(ts, cad / 120.0 * rate, start.phase)
    dofs = _gait_dofs(ctx, tpl, phase, amp)
    ctx.__dict__["_lead_phase"] = phase
    ctx.__dict__["_lead_template"] = tpl
    return dofs, amp, t_end, [(float(ts[0]), t_end, "start_stop")]


def _static_block(ctx: _Context, name: str, pose_fn: Any) -> _Block:
    """A both-feet-planted activity: pose_fn(ctx, t_active) -> DOFs (n, len(DOFS))."""
    t = ctx.t
    lead_dofs, lead_amp, _, names = _lead_in(ctx)
    n_lead = len(lead_amp)
    dofs = np.empty((len(t), len(DOFS)))
    dofs[:n_lead] = lead_dofs
    dofs[n_lead:] = pose_fn(ctx, t[n_lead:])
    amp = np.zeros(len(t))
    amp[:n_lead] = lead_amp
    phase = np.full(len(t), ctx.start.phase)
    weight = np.full((len(t), 2), 0.5)
    tpl = None
    if n_lead:
        phase[:n_lead] = ctx.__dict__["_lead_phase"]
        phase[n_lead:] = phase[n_lead - 1]
        tpl = ctx.__dict__["_lead_template"]
        weight[:n_lead] = contact_schedule(phase[:n_lead], tpl.stance)
    if t[n_lead:].size:
        t_act = float(t[n_lead]) if n_lead else float(t[0])
        names = [(a, t_act, n) for a, _, n in names]  # the lead-in runs up to the activity
        names = [*names, (t_act, float(t[-1]), name)]
    return _Block(
        t=t,
        dofs=dofs,
        heading=np.full(len(t), ctx.start.heading),
        phase=phase,
        amplitude=amp,
        foot_weight=weight,
        activity=names,
        template=tpl,
        speed=ctx.start.speed,
        pathology=ctx.start.pathology,
        activity_name=name,
    )


def _stand_dofs(ctx: _Context, t: np.ndarray) -> np.ndarray:
    """Quiet standing: ankle-strategy sway, small weight shifts, head and arm drift."""
    rng = ctx.rng
    D = DOF_INDEX
    d = np.tile(stand_pose(ctx.subject, ctx.normative), (len(t), 1))
    if len(t) < 2:
        return d
    sway = _smooth_noise(rng, t, 2, 1.0, 2.5)  # deg: sagittal lean, lateral shift
    d[:, D["pelvis_tilt"]] += sway[:, 0]
    for s in SIDES:
        d[:, D[f"ankle_dorsiflexion_{s}"]] += sway[:, 0]
    # lateral: a parallelogram (both thighs roll the same way, feet stay flat)
    d[:, D["hip_adduction_r"]] += sway[:, 1]
    d[:, D["hip_adduction_l"]] -= sway[:, 1]
    d[:, D["ankle_inversion_r"]] -= sway[:, 1]
    d[:, D["ankle_inversion_l"]] += sway[:, 1]
    head = _smooth_noise(rng, t, 3, 6.0, 3.0)
    for k, n in enumerate(("neck_flexion", "neck_lateral", "neck_rotation")):
        d[:, D[n]] += head[:, k] * (0.5 if k < 2 else 1.5)
    arms = _smooth_noise(rng, t, 4, 3.0, 2.0)
    for k, s in enumerate(SIDES):
        d[:, D[f"shoulder_flexion_{s}"]] += arms[:, 2 * k]
        d[:, D[f"elbow_flexion_{s}"]] += np.abs(arms[:, 2 * k + 1]) * 2
    trunk = _smooth_noise(rng, t, 2, 1.5, 3.0)
    d[:, D["trunk_flexion"]] += trunk[:, 0]
    d[:, D["trunk_rotation"]] += trunk[:, 1]
    return _fade_to_rest(d, t, stand_pose(ctx.subject, ctx.normative))


def _fade_to_rest(d: np.ndarray, t: np.ndarray, rest: np.ndarray, width: float = 0.8) -> np.ndarray:
    """Blend the first and last `width` seconds to the rest pose so blocks chain cleanly."""
    if len(t) < 2:
        return d
    x = np.minimum(t - t[0], t[-1] - t) / width
    w = np.clip(x, 0.0, 1.0)
    w = (w * w * (3 - 2 * w))[:, None]
    return rest + w * (d - rest)


def _keyframed(ctx: _Context, t: np.ndarray, cycle: Any) -> np.ndarray:
    """Repeat `cycle(rng) -> (durations, poses dict of arrays)` until the time is used, ending
    at rest; interpolate every channel with a shape-preserving cubic."""
    rng = ctx.rng
    rest_time = 0.5
    kt: list[float] = [float(t[0])]
    kv: list[dict[str, float]] = [{}]
    now = float(t[0]) + rest_time
    while True:
        times, poses = cycle(rng)
        if now + sum(times) > t[-1] - rest_time:
            break
        for dt, pose in zip(times, poses, strict=True):
            now += dt
            kt.append(now)
            kv.append(pose)
        now += float(rng.uniform(0.3, 1.5))
    kt.append(max(float(t[-1]), kt[-1] + 1e-3))
    kv.append({})
    channels = sorted({k for pose in kv for k in pose})
    out: dict[str, np.ndarray] = {}
    for ch in channels:
        vals = np.array([pose.get(ch, 0.0) for pose in kv])
        out[ch] = PchipInterpolator(np.array(kt), vals)(t)
    return out  # type: ignore[return-value]


def _sit_to_stand_dofs(ctx: _Context, t: np.ndarray) -> np.ndarray:
    """Stand → sit → rise cycles (chair implied by the planted feet), ending standing."""

    def cycle(rng: np.random.Generator) -> tuple[list[float], list[dict[str, float]]]:
        sit = {"thigh": 85.0, "knee": 92.0, "tilt": -10.0, "trunk": 8.0, "arms": 10.0}
        lean = {"thigh": 85.0, "knee": 92.0, "tilt": -2.0, "trunk": 40.0, "arms": 25.0}
        up_mid = {"thigh": 45.0, "knee": 50.0, "tilt": 2.0, "trunk": 30.0, "arms": 15.0}
        stand = {"thigh": 0.0, "knee": 0.0, "tilt": 0.0, "trunk": 0.0, "arms": 0.0}
        down_mid = {"thigh": 50.0, "knee": 60.0, "tilt": 0.0, "trunk": 32.0, "arms": 20.0}
        times = [
            rng.uniform(0.8, 1.2),
            rng.uniform(0.6, 0.9),
            rng.uniform(1.5, 3.0),
            rng.uniform(0.4, 0.6),
            rng.uniform(0.6, 0.9),
            rng.uniform(1.5, 3.0),
        ]
        times = [times[0], times[1], times[2], times[3], times[4], times[5]]
        poses = [down_mid, sit, sit, lean, up_mid, stand]
        return times, poses

    return _assemble_keyframed(ctx, t, cycle)


def _squat_dofs(ctx: _Context, t: np.ndarray) -> np.ndarray:
    """Body-weight squats of random depth, ending standing."""

    def cycle(rng: np.random.Generator) -> tuple[list[float], list[dict[str, float]]]:
        depth = rng.uniform(0.6, 1.0)
        bottom = {
            "thigh": 90.0 * depth,
            "knee": 115.0 * depth,
            "tilt": 15.0 * depth,
            "trunk": 40.0 * depth,
            "arms": 75.0 * depth,
        }
        stand = {"thigh": 0.0, "knee": 0.0, "tilt": 0.0, "trunk": 0.0, "arms": 0.0}
        return [rng.uniform(1.0, 1.6), rng.uniform(0.2, 0.6), rng.uniform(1.0, 1.5)], [
            bottom,
            bottom,
            stand,
        ]

    return _assemble_keyframed(ctx, t, cycle)


def _assemble_keyframed(ctx: _Context, t: np.ndarray, cycle: Any) -> np.ndarray:
    D = DOF_INDEX
    stand = stand_pose(ctx.subject, ctx.normative)
    d = np.tile(stand, (len(t), 1))
    if len(t) < 2:
        return d
    ch = _keyframed(ctx, t, cycle)
    zero = np.zeros(len(t))
    tilt = stand[D["pelvis_tilt"]] + ch.get("tilt", zero)
    thigh = ch.get("thigh", zero)
    knee = stand[D["knee_flexion_l"]] + ch.get("knee", zero)
    _set_legs_flat(d, thigh, knee, tilt)
    d[:, D["pelvis_tilt"]] = tilt
    trunk_pitch = ctx.subject.trunk_lean * 0.5 + ch.get("trunk", zero)
    d[:, D["trunk_flexion"]] = trunk_pitch - tilt
    d[:, D["neck_flexion"]] = -0.6 * trunk_pitch
    for s in SIDES:
        d[:, D[f"shoulder_flexion_{s}"]] = ch.get("arms", zero)
        d[:, D[f"elbow_flexion_{s}"]] = 10.0 + 0.4 * ch.get("arms", zero)
    return d


def _arm_dofs(ctx: _Context, t: np.ndarray) -> np.ndarray:
    """Standing with reaching, raising, abducting and elbow-flexing arm movements."""
    D = DOF_INDEX
    d = _stand_dofs(ctx, t)
    rest = stand_pose(ctx.subject, ctx.normative)

    def cycle(rng: np.random.Generator) -> tuple[list[float], list[dict[str, float]]]:
        both = rng.uniform() < 0.4
        kind = rng.integers(4)
        poses = []
        for s in SIDES:
            if not both and rng.uniform() < 0.5:
                poses.append({})
                continue
            if kind == 0:  # raise forward
                p = {
                    "flex": rng.uniform(60, 160),
                    "abd": rng.uniform(0, 20),
                    "elbow": rng.uniform(0, 30),
                }
            elif kind == 1:  # abduct
                p = {
                    "flex": rng.uniform(-10, 20),
                    "abd": rng.uniform(40, 100),
                    "elbow": rng.uniform(0, 40),
                }
            elif kind == 2:  # reach across / rotate
                p = {
                    "flex": rng.uniform(30, 90),
                    "abd": rng.uniform(0, 30),
                    "rot": rng.uniform(10, 60),
                    "elbow": rng.uniform(20, 80),
                }
            else:  # elbow curl
                p = {
                    "flex": rng.uniform(-5, 25),
                    "abd": rng.uniform(0, 15),
                    "elbow": rng.uniform(60, 130),
                }
            poses.append({f"{k}_{s}": v for k, v in p.items()})
        pose = {**poses[0], **poses[1]}
        hold = rng.uniform(0.2, 0.8)
        return [rng.uniform(0.8, 1.5), hold, rng.uniform(0.8, 1.5)], [pose, pose, {}]

    ch = _keyframed(ctx, t, cycle)
    zero = np.zeros(len(t))
    for s in SIDES:
        d[:, D[f"shoulder_flexion_{s}"]] += ch.get(f"flex_{s}", zero)
        d[:, D[f"shoulder_abduction_{s}"]] += ch.get(f"abd_{s}", zero)
        d[:, D[f"shoulder_rotation_{s}"]] += ch.get(f"rot_{s}", zero)
        d[:, D[f"elbow_flexion_{s}"]] += ch.get(f"elbow_{s}", zero)
    return rest + (d - rest)


def _build_walk(ctx: _Context) -> _Block:
    return _gait(ctx)


def _build_jog(ctx: _Context) -> _Block:
    return _gait(ctx, running=True)


_BUILDERS = {
    "walk": _build_walk,
    "turn": _build_walk,
    "start_stop": _build_walk,
    "jog": _build_jog,
    "stand": lambda ctx: _static_block(ctx, "stand", _stand_dofs),
    "sit_to_stand": lambda ctx: _static_block(ctx, "sit_to_stand", _sit_to_stand_dofs),
    "squat": lambda ctx: _static_block(ctx, "squat", _squat_dofs),
    "arm_movements": lambda ctx: _static_block(ctx, "arm_movements", _arm_dofs),
}


# -- finishing: fade, planting, labels ---------------------------------------------------------


def _finish(ctx: _Context, block: _Block) -> Motion:
    start, body = ctx.start, ctx.body
    t = block.t
    dofs = block.dofs
    if not ctx.fresh and start.dofs is not None:
        dofs = _fade_from(t, dofs, start)
    root, G = _root(ctx, block, dofs)
    labels = _labels(block, t, dofs, root, G)
    motion = Motion(t=t, dofs=dofs, root=root, heading=block.heading, body=body, labels=labels)
    motion.generator_state = _state_at_end(ctx, block, motion)
    return motion


def _fade_from(t: np.ndarray, dofs: np.ndarray, start: MotionState) -> np.ndarray:
    """Add an offset that starts at (start − block) with matching rate and fades out."""
    assert start.dofs is not None
    dt = t[1] - t[0]
    rate_new = (dofs[1] - dofs[0]) / dt
    d0 = start.dofs - dofs[0]
    v0 = (start.dofs_rate if start.dofs_rate is not None else rate_new) - rate_new
    tau = (t - t[0])[:, None]
    x = np.clip(tau / FADE_TIME, 0.0, 1.0)
    fade = 1.0 - x * x * (3 - 2 * x)
    return dofs + (d0 + v0 * np.minimum(tau, FADE_TIME)) * fade


def _root(ctx: _Context, block: _Block, dofs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plant the feet; fill flight phases (running) with ballistic-like Hermite arcs; low-pass
    the result, joined to the start state's root and velocity."""
    P = foot_points(ctx.body, dofs)
    root, G = plant_root(
        ctx.body, dofs, block.heading, block.foot_weight, ctx.start.root[:2], P, ctx.spec.fs
    )
    flight = ~np.isfinite(root[:, 0])
    if np.any(flight):
        root = _fill_flight(block.t, root, flight, block, G, ctx.start)
    chained = not ctx.fresh and ctx.start.dofs is not None
    root = smooth_root(
        root,
        G,
        ctx.spec.fs,
        ctx.start.root if chained else None,
        ctx.start.root_velocity if chained else None,
        RUNNING_ROOT_CUTOFF_HZ if np.any(flight) else None,
    )
    return root, G


def _fill_flight(
    t: np.ndarray,
    root: np.ndarray,
    flight: np.ndarray,
    block: _Block,
    G: np.ndarray,
    start: MotionState,
) -> np.ndarray:
    """Fill running flights. Horizontal: the velocity blends from take-off to landing.
    Vertical: a ballistic arc from the take-off height and vertical velocity, with the height
    error at the labelled landing spread linearly over the flight so the landing foot meets
    the floor then."""
    T = len(t)
    dt = np.diff(t)
    inc = np.diff(root[:, :2], axis=0)
    z = root[:, 2].copy()
    for i, j in _runs(flight):  # flight frames i..j inclusive
        a, b = i - 1, j + 1
        if b >= T:  # the block ends in flight: keep the last supported motion going
            b = None
        if a >= 1:
            v0 = (root[a] - root[a - 1]) / dt[a - 1]
            z0 = root[a, 2]
            ta = t[a]
        else:  # the block starts in flight
            ta = t[0]
            a = 0
            if start.dofs is not None:  # continuing: from the previous block's state
                v0 = start.root_velocity.copy()
                z0 = start.root[2]
            else:  # fresh: a symmetric arc into the first landing
                v0 = np.zeros(3)
                z0 = root[b, 2] if b is not None else 0.0
                if b is not None:
                    v0[2] = 0.5 * GRAVITY * (t[b] - ta)
        if b is not None and b < T - 1 and np.isfinite(root[b + 1, 0]):
            v1 = (root[b + 1] - root[b]) / dt[b]
            tb = t[b]
            if a == 0 and start.dofs is None:  # fresh: already running at the landing speed
                v0[:2] = v1[:2]
        else:
            v1, tb = v0.copy(), t[-1] + dt[-1]
        span = max(tb - ta, 1e-6)
        sel = np.arange(a, min(b if b is not None else T - 1, T - 1))
        x = (t[sel] + 0.5 * dt[sel] - ta) / span
        inc[sel] = ((1 - x)[:, None] * v0[:2] + x[:, None] * v1[:2]) * dt[sel, None]
        frames = np.arange(i, j + 1)
        tau = t[frames] - ta
        ballistic = z0 + v0[2] * tau - 0.5 * GRAVITY * tau**2
        if b is not None:  # land exactly: spread the height error linearly over the flight
            miss = (z0 + v0[2] * span - 0.5 * GRAVITY * span**2) - root[b, 2]
            ballistic -= miss * tau / span
        z[frames] = ballistic
    out = np.empty_like(root)
    out[0, :2] = start.root[:2]
    out[1:, :2] = start.root[:2] + np.cumsum(inc, axis=0)
    out[:, 2] = z
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    idx = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(idx[::2], idx[1::2], strict=True)]


def _labels(
    block: _Block, t: np.ndarray, dofs: np.ndarray, root: np.ndarray, G: np.ndarray
) -> MotionLabels:
    events: list[tuple[float, str]] = []
    tpl = block.template
    if tpl is not None:
        phase = block.phase
        for label, offset in tpl.event_phases().items():
            k0 = np.floor(phase[0] - offset) + 1
            k1 = np.floor(phase[-1] - offset)
            for k in np.arange(k0, k1 + 1):
                target = k + offset
                i = int(np.searchsorted(phase, target, side="left"))
                if i <= 0 or i >= len(t):
                    continue
                p0, p1 = phase[i - 1], phase[i]
                te = t[i - 1] + (target - p0) / max(p1 - p0, 1e-12) * (t[i] - t[i - 1])
                if np.interp(te, t, block.amplitude) >= EVENT_AMPLITUDE:
                    events.append((float(te), label))
        events.sort()
    heel = root[:, None, :] + G[:, :, 0, :]
    knee = dofs[:, [DOF_INDEX["knee_flexion_l"], DOF_INDEX["knee_flexion_r"]]]
    strides = strides_from_events(events, t, heel, knee, block.heading) if events else []
    return MotionLabels(activity=list(block.activity), events=events, strides=strides)


def _state_at_end(ctx: _Context, block: _Block, motion: Motion) -> MotionState:
    t = motion.t
    dt = t[-1] - t[-2]
    return MotionState(
        t=float(t[-1]),
        root=motion.root[-1].copy(),
        heading=float(motion.heading[-1]),
        phase=float(block.phase[-1]),
        dofs=motion.dofs[-1].copy(),
        dofs_rate=(motion.dofs[-1] - motion.dofs[-2]) / dt,
        root_velocity=(motion.root[-1] - motion.root[-2]) / dt,
        heading_rate=float(motion.heading[-1] - motion.heading[-2]) / dt,
        gait_amplitude=float(np.clip(block.amplitude[-1], 0.0, 1.0)),
        cadence=float(block.cadence) if block.amplitude[-1] > 0 else 0.0,
        running=block.running,
        speed=block.speed,
        pathology=block.pathology,
        activity=block.activity_name,
        subject=ctx.subject,
    )


# -- mixed -------------------------------------------------------------------------------------


def _mixed(
    spec: MotionSpec,
    body: BodyModel,
    rng: np.random.Generator,
    normative: NormativeSet,
    start: MotionState,
    subject: GaitSubject,
    fresh: bool,
) -> Motion:
    """Random blocks (5–15 s) of the other activities, chained through their end states."""
    choices = [a for a in ACTIVITIES if a != "mixed"]
    probs = np.array([0.3, 0.12, 0.1, 0.1, 0.1, 0.08, 0.08, 0.12])
    probs /= probs.sum()
    n_total = round(spec.duration * spec.fs)
    state = replace(start, subject=subject) if not fresh else MotionState(subject=subject)
    parts: list[Motion] = []
    done = 0
    while done < n_total:
        n = round(rng.uniform(5.0, 15.0) * spec.fs)
        if n_total - done - n < int(3.0 * spec.fs):
            n = n_total - done
        activity = str(rng.choice(choices, p=probs))
        speed = spec.speed if rng.uniform() < 0.6 else str(rng.choice(SPEEDS[1:4]))
        sub = MotionSpec(
            activity=activity,
            duration=n / spec.fs,
            speed=speed,
            pathology=spec.pathology,
            fs=spec.fs,
            turn_rate_deg_s=None,
        )
        m = generate_motion(sub, body, rng, normative, state)
        state = end_state(m)
        parts.append(m)
        done += n
    return _concatenate(parts, body)


def stand_then_walk(
    stand_s: float,
    walk_s: float,
    body: BodyModel,
    rng: np.random.Generator,
    normative: NormativeSet,
) -> Motion:
    """A stand, then a walk from where it ended: what a functional calibration needs."""
    m1 = generate_motion(MotionSpec("stand", stand_s), body, rng, normative)
    m2 = generate_motion(MotionSpec("walk", walk_s), body, rng, normative, start=end_state(m1))
    return _concatenate([m1, m2], body)


def _concatenate(parts: list[Motion], body: BodyModel) -> Motion:
    t = np.concatenate([parts[0].t] + [p.t[1:] for p in parts[1:]])
    dofs = np.concatenate([parts[0].dofs] + [p.dofs[1:] for p in parts[1:]])
    root = np.concatenate([parts[0].root] + [p.root[1:] for p in parts[1:]])
    heading = np.concatenate([parts[0].heading] + [p.heading[1:] for p in parts[1:]])
    activity = [a for p in parts for a in p.labels.activity]
    events = sorted({e for p in parts for e in p.labels.events})
    G = foot_points(body, dofs)
    heel = root[:, None, :] + np.einsum("tij,tsj->tsi", yaw_matrix(heading), G[:, :, 0, :])
    knee = dofs[:, [DOF_INDEX["knee_flexion_l"], DOF_INDEX["knee_flexion_r"]]]
    strides = strides_from_events(events, t, heel, knee, heading) if events else []
    labels = MotionLabels(activity=activity, events=events, strides=strides)
    motion = Motion(t=t, dofs=dofs, root=root, heading=heading, body=body, labels=labels)
    motion.generator_state = end_state(parts[-1])
    return motion
