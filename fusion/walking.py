"""The gait engine: normative joint-angle curves → a walking body whose stance foot stays put.

How a walking motion is made (fusion/activities.py strings these together):

1. A subject (`GaitSubject`): smooth, correlated deviations from the Schwartz 2008 means in SD
   units (fusion/normative.py) plus a few personal factors (cadence, arm swing, trunk lean).
2. A gait template (`build_gait_template`): one periodic gait cycle of every DOF on a phase
   grid. Phase φ counts strides from left heel strike (the right side is the left shifted by
   50 %). Legs and pelvis come from the sampled curves (periodic cubic interpolation of the 51
   points); pathologies edit them; the trunk counter-rotates, the head stays level, the arms
   swing opposite the legs. Then the template is made *geometrically consistent* with our
   rigid body model, because curves averaged over other bodies never close the kinematic
   chain exactly:
   - the ankle's long-axis rotation is fitted (low-order Fourier, weighted to the level
     stance foot) so the foot-progression angle follows its curve;
   - the stance foot rolls heel → flat → toe (`_pitch_target`): the curves' toe-up pitch in
     loading response (never heel-up), the sole flat, then the curves' heel rise back in
     over 25–50 % of the cycle, all through C² ramps and smooth minima, so the contact
     passes from heel to toe without a kink (reached by the fit below);
   - one smooth least-squares fit (`_make_consistent`): corrections of hip flexion/
     adduction/rotation, knee flexion and ankle dorsiflexion that are periodic cubic
     B-splines in phase (CORRECTION_KNOTS per cycle, size and curvature penalised), fitted
     by Levenberg–Marquardt so that in double support both feet are on the floor and their
     contact points move together with the (low-passed) root velocity of the uncorrected
     template (the landing heel may slide for ≈ 30 ms), the stance foot keeps its pitch, the
     root height does not bend sharply, the swing foot clears `clearance_profile`
     (SWING_CLEARANCE mid-swing, 0 at toe off and heel strike) and the landing heel keeps
     descending. Every residual weight is a smooth function of phase, so the corrections
     are C² by construction: per-frame corrections left 10⁵ deg/s² at 120 Hz;
   - toe off is labelled where the template's trailing foot actually leaves the floor.
   The rigid foot pivots on its toe tip (our skeleton has no toe joint), so push-off
   plantarflexion comes out some 5–10° smaller than Plug-in Gait's, whose foot excludes the
   toes. Running (activities.py's jog) uses the same fit with a spring-mass stance height
   between ballistic flights (`_running_height`) instead of double support.
3. Timing: cadence comes from the speed class and leg length (Schwartz's classes are
   dimensionless speeds v* = v/√(gL); we pick cadence f* = √(v*/WALK_RATIO)·√(g/L) and let
   speed emerge from the planted feet).
4. Planting (`plant_root`): the root's horizontal motion is minus the motion of the support's
   contact material points relative to the root (heel/toe weighted by a soft minimum of
   their heights, feet by the phase-based weights that hand over through double support);
   root height puts that contact point on the floor; where a foot without weight would still
   dip below the floor (gait starting and stopping) the body is lifted smoothly. Heading
   integrates the turn rate; activities.py gates turning to single support (C² ramps), where
   the stance foot pivots about its contact point. `smooth_root` then low-passes the root
   (zero phase, ROOT_CUTOFF_HZ) and lifts it where a foot would go through the floor: a
   rigid-body root bends at every contact hand-over, which a virtual IMU reads as g's.

Everything per frame is vectorised; only per-stride bookkeeping loops in Python.

Skating (tests/test_walking.py): the stance contact point's horizontal speed stays below
SKATING_TOLERANCE in single support (measured 0.001–0.011 m/s at the 99th percentile, up to
0.022 m/s while turning at 40 deg/s); in double support 0.007–0.016 m/s at the 95th
percentile. Smoothness (tests/test_motion_smoothness.py): root acceleration, joint angular
acceleration and virtual trunk IMUs stay in a human range at 120 Hz.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.signal import butter, sosfiltfilt
from scipy.sparse import coo_matrix, csr_matrix, diags, identity, kron
from scipy.sparse.linalg import spsolve

from fusion.angles import JOINTS, local_rotations, yaw_matrix
from fusion.body import BodyModel
from fusion.kinematics import forward_kinematics
from fusion.normative import CHANNEL_INDEX, NormativeSet, SubjectCurves
from fusion.skeleton import DOF_INDEX, DOFS, GRAVITY, KEYPOINTS, SEGMENT_INDEX, SIDES

#: Dimensionless speed v* = v/√(g·leg length) at the centre of each Schwartz 2008 speed class.
DIMENSIONLESS_SPEED: dict[str, float] = {
    "VerySlow": 0.20,
    "Slow": 0.30,
    "Free": 0.42,
    "Fast": 0.52,
    "VeryFast": 0.64,
}
#: Walk ratio in leg-length units: (step length / L) / (step frequency / √(g/L)). Adults walk
#: with a roughly constant walk ratio across speeds (Sekiya & Nagasaki 1998), ≈ 1.4 here.
WALK_RATIO = 1.4
#: Stance fraction of the gait cycle (toe off) per class: ≈ 2–3 % before the ankle's peak
#: plantarflexion in the Schwartz curves; stance shortens as speed rises.
STANCE_FRACTION: dict[str, float] = {
    "VerySlow": 0.645,
    "Slow": 0.63,
    "Free": 0.61,
    "Fast": 0.595,
    "VeryFast": 0.58,
}
#: Running (the "jog" activity): dimensionless step frequency and stance fraction.
JOG_STEP_FREQUENCY = 0.84  # steps per √(L/g): ≈ 165 steps/min at L = 0.9 m
JOG_STANCE_FRACTION = 0.36

SWING_CLEARANCE = 0.015  # m, minimum height of the swing foot's lowest point
CONTACT_SOFTNESS = 0.002  # m, temperature of the soft minimum over heel/toe heights
TOE_OFF_HEIGHT = 0.0005  # m: the toe has left the floor (labels; detection uses velocity)
SKATING_TOLERANCE = 0.02  # m/s: stance contact-point horizontal speed in steady gait
TEMPLATE_POINTS = 200  # phase samples per gait cycle in a template
ROOT_CUTOFF_HZ = (16.0, 20.0)  # Hz, horizontal and vertical: low-pass of the planted root
ROOT_FADE_TIME = 0.4  # s: a chained block's root joins the previous one's over this time
FLOOR_SLACK = 0.0005  # m: foot points may dip this far below the floor before a lift

PATHOLOGIES: tuple[str, ...] = ("crouch", "stiff_knee", "equinus", "braced_knee", "trendelenburg")


# -- leg kinematics ---------------------------------------------------------------------------


_LEG_SEGMENTS = ("pelvis", "thigh_l", "thigh_r", "shank_l", "shank_r", "foot_l", "foot_r")


_HEEL = [KEYPOINTS.index(f"heel_{s}") for s in SIDES]
_TOE = [KEYPOINTS.index(f"toe_{s}") for s in SIDES]


def _local_rotation(dofs: np.ndarray, joint: str) -> np.ndarray:
    return local_rotations(dofs, joints=(joint,))[joint]


def foot_points(body: BodyModel, dofs: np.ndarray, sides: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Heel and toe positions relative to the root in the heading frame: (N, 2 sides, 2, 3).

    Axis 1 is SIDES (l, r); axis 2 is (heel, toe). Only the leg chains are computed (this is
    the hot path of planting and of the template solver); `sides` limits it further (the
    others are NaN).
    """
    dofs = np.atleast_2d(np.asarray(dofs, dtype=float))
    off, kp = _offsets(body)
    Rp = _local_rotation(dofs, "pelvis")
    out = np.full((dofs.shape[0], 2, 2, 3), np.nan)
    for k in sides:
        s = SIDES[k]
        Rt = Rp @ _local_rotation(dofs, f"hip_{s}")
        Rs = Rt @ _local_rotation(dofs, f"knee_{s}")
        Rf = Rs @ _local_rotation(dofs, f"ankle_{s}")
        ankle = Rp @ off[f"thigh_{s}"] + Rt @ off[f"shank_{s}"] + Rs @ off[f"foot_{s}"]
        out[:, k, 0] = ankle + Rf @ kp[f"heel_{s}"][1]
        out[:, k, 1] = ankle + Rf @ kp[f"toe_{s}"][1]
    return out


def foot_points_jacobian(
    body: BodyModel, dofs: np.ndarray, side: int, names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Heel and toe of one foot relative to the root (N, 2, 3) and their derivatives
    (len(names), N, 2, 3) per degree of the leg DOFs `names` (hip flexion/adduction/rotation,
    knee flexion, ankle dorsiflexion, without the side suffix), in closed form: a Cardan angle
    turns everything distal about its axis (Ry(a)·Rx(b)·Rz(c): a about the parent's y, b about
    Ry(a)'s x, c about the child's z) through the joint centre."""
    dofs = np.atleast_2d(np.asarray(dofs, dtype=float))
    s = SIDES[side]
    off, kp = _offsets(body)
    Rp = _local_rotation(dofs, "pelvis")
    Rt = Rp @ _local_rotation(dofs, f"hip_{s}")
    Rs = Rt @ _local_rotation(dofs, f"knee_{s}")
    Rf = Rs @ _local_rotation(dofs, f"ankle_{s}")
    hip = Rp @ off[f"thigh_{s}"]
    knee = hip + Rt @ off[f"shank_{s}"]
    ankle = knee + Rs @ off[f"foot_{s}"]
    P = np.stack([ankle + Rf @ kp[f"heel_{s}"][1], ankle + Rf @ kp[f"toe_{s}"][1]], axis=1)
    signs = JOINTS[f"hip_{s}"][3]
    a = np.radians(signs[0] * dofs[:, DOF_INDEX[f"hip_flexion_{s}"]])
    ry_x = np.stack([np.cos(a), np.zeros_like(a), -np.sin(a)], axis=1)  # Ry(a)·x
    axes = {  # (axis in the heading frame (N, 3), joint centre (N, 3), sign of the angle)
        "hip_flexion": (Rp[..., :, 1], hip, signs[0]),
        "hip_adduction": (np.einsum("nij,nj->ni", Rp, ry_x), hip, signs[1]),
        "hip_rotation": (Rt[..., :, 2], hip, signs[2]),
        "knee_flexion": (Rt[..., :, 1], knee, JOINTS[f"knee_{s}"][3][0]),
        "ankle_dorsiflexion": (Rs[..., :, 1], ankle, JOINTS[f"ankle_{s}"][3][0]),
    }
    dP = np.empty((len(names), len(dofs), 2, 3))
    for j, name in enumerate(names):
        axis, centre, sign = axes[name]
        dP[j] = np.cross(axis[:, None, :], P - centre[:, None, :]) * (sign * np.pi / 180.0)
    return P, dP


def _offsets(body: BodyModel) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, np.ndarray]]]:
    cached = _OFFSETS.get(body)
    if cached is None:
        cached = _OFFSETS[body] = (body.joint_offsets(), body.keypoint_offsets())
    return cached


_OFFSETS: dict[BodyModel, tuple[dict[str, np.ndarray], dict[str, tuple[str, np.ndarray]]]] = {}


def soft_contact(
    z: np.ndarray, softness: float = CONTACT_SOFTNESS
) -> tuple[np.ndarray, np.ndarray]:
    """Soft minimum over the last axis (heel, toe heights) and its weights (softmax of −z).

    The soft minimum is ≤ the true minimum, so a point grounded this way never goes below the
    floor; the weights say which material point carries the contact (heel rocker → toe).
    """
    zmin = z.min(axis=-1, keepdims=True)
    e = np.exp(-(z - zmin) / softness)
    s = e.sum(axis=-1, keepdims=True)
    return (zmin - softness * np.log(s))[..., 0], e / s


# -- subjects and cadence --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GaitSubject:
    """Who walks: deviations from the normative means (SD units) and personal factors.

    The same subject can walk at every speed class: `curves()` applies the deviations to that
    class's mean and SD.
    """

    z_left: np.ndarray  # (len(CHANNELS), 51)
    z_right: np.ndarray
    cadence_factor: float = 1.0
    arm_swing: float = 1.0  # × the speed-dependent default amplitude
    trunk_lean: float = 4.0  # deg, global forward lean of the thorax
    affected_side: str = "r"  # the side a one-sided pathology affects
    #: (len(DOFS),) deg added to the quiet standing pose (fusion.activities.stance_offsets);
    #: None = the typical stance
    stance: np.ndarray | None = None

    def curves(self, normative: NormativeSet, speed: str) -> SubjectCurves:
        mean = normative.periodic_mean(speed)
        sd = normative.periodic_sd(speed)
        return SubjectCurves(
            speed=speed,
            left=mean + self.z_left * sd,
            right=mean + self.z_right * sd,
            z_left=self.z_left,
            z_right=self.z_right,
        )


def sample_gait_subject(
    rng: np.random.Generator, normative: NormativeSet, speed: str = "Free"
) -> GaitSubject:
    """A random subject: normative deviations plus cadence/arm-swing/lean factors."""
    c = normative.sample_subject(rng, speed)
    return GaitSubject(
        z_left=c.z_left,
        z_right=c.z_right,
        cadence_factor=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        arm_swing=float(np.clip(rng.normal(1.0, 0.2), 0.5, 1.5)),
        trunk_lean=float(np.clip(rng.normal(4.0, 2.0), 0.0, 9.0)),
        affected_side=str(rng.choice(SIDES)),
    )


def mean_subject(normative: NormativeSet) -> GaitSubject:
    """The normative mean walker (no deviations), for references and tests."""
    z = np.zeros((len(normative.channels), len(normative.pct)))
    return GaitSubject(z_left=z, z_right=z)


def cadence_for(speed: str, body: BodyModel, factor: float = 1.0) -> float:
    """Walking cadence (steps/min) for a speed class and leg length: f = √(v*/WR)·√(g/L)."""
    if speed not in DIMENSIONLESS_SPEED:
        raise ValueError(f"speed={speed!r}: unknown speed class {tuple(DIMENSIONLESS_SPEED)}")
    f_star = np.sqrt(DIMENSIONLESS_SPEED[speed] / WALK_RATIO)
    return float(60.0 * factor * f_star * np.sqrt(GRAVITY / body.leg_length))


def jog_cadence(body: BodyModel, factor: float = 1.0) -> float:
    """Jogging cadence (steps/min) scaled by leg length."""
    return float(60.0 * factor * JOG_STEP_FREQUENCY * np.sqrt(GRAVITY / body.leg_length))


# -- gait template ---------------------------------------------------------------------------


@dataclass
class GaitTemplate:
    """One periodic gait cycle of every DOF, geometrically consistent with the body."""

    phase: np.ndarray  # (M,) in [0, 1)
    dofs: np.ndarray  # (M, len(DOFS)) deg
    stance: float  # toe-off phase of each side's own cycle
    running: bool = False
    speed: str = "Free"
    pathology: str | None = None
    foot_progression_target: np.ndarray | None = None  # (M, 2) deg, l/r
    toe_off: float | None = None  # measured toe-off phase of the left foot (see event_phases)
    _spline: CubicSpline | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        closed = np.concatenate([self.phase, [1.0]])
        values = np.concatenate([self.dofs, self.dofs[:1]], axis=0)
        self._spline = CubicSpline(closed, values, axis=0, bc_type="periodic")

    def dofs_at(self, phase: np.ndarray) -> np.ndarray:
        """DOFs (N, len(DOFS)) at any phase (strides; wraps)."""
        assert self._spline is not None
        return self._spline(np.mod(phase, 1.0))

    def event_phases(self) -> dict[str, float]:
        """Phase (mod 1, left-cycle reference) of each gait event.

        Heel strike is at 0 / ½ by construction (the closure lands the heel there); toe off is
        where the template's trailing foot actually leaves the floor (`toe_off`, within a
        couple of percent before the stance fraction that schedules the weight transfer).
        """
        to = self.stance if self.toe_off is None else self.toe_off
        return {
            "heel_strike_l": 0.0,
            "toe_off_l": to % 1.0,
            "heel_strike_r": 0.5,
            "toe_off_r": (0.5 + to) % 1.0,
        }

    def foot_weights(self, phase: np.ndarray) -> np.ndarray:
        """Phase-based share of support per foot (N, 2): smooth hand-over in double support."""
        return contact_schedule(phase, self.stance)


def contact_schedule(phase: np.ndarray, stance: float | np.ndarray) -> np.ndarray:
    """Support weights (N, 2) for l/r: 1 in single support, blended through double support.

    With stance < 0.5 (running) there is a flight phase where both are 0. `stance` may vary
    per sample (a run slowing into a walk).
    """
    phase = np.asarray(phase, float)
    stance = np.broadcast_to(np.asarray(stance, float), phase.shape)
    ds = np.maximum(stance - 0.5, 1e-9)
    walking = stance > 0.5
    out = np.zeros((*phase.shape, 2))
    for k, offset in enumerate((0.0, 0.5)):
        u = np.mod(phase - offset, 1.0)  # this side's own cycle
        rise = _smoothstep(u / ds)  # loading response: weight comes in
        fall = 1.0 - _smoothstep((u - 0.5) / ds)  # pre-swing: weight goes out
        walk = np.where(u < ds, rise, np.where(u < 0.5, 1.0, np.where(u < stance, fall, 0.0)))
        out[..., k] = np.where(walking, walk, (u < stance).astype(float))
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _stance_window(u: np.ndarray, stance: float, width: float = 0.04) -> np.ndarray:
    """Smooth periodic indicator (0..1) of stance for a side's own cycle phase u."""
    half_swing = (1.0 - stance) / 2.0
    v = np.mod(u + half_swing, 1.0) - half_swing  # cut the circle in mid-swing
    rise = 1.0 / (1.0 + np.exp(-v / width))
    fall = 1.0 / (1.0 + np.exp((v - stance) / width))
    return rise * fall


def _softplus(x: np.ndarray, width: float) -> np.ndarray:
    """Smooth max(x, 0) (C∞; off by width·ln 2 at 0): clipping an angle leaves a kink."""
    return width * np.logaddexp(0.0, x / width)


def _wrap(x: np.ndarray) -> np.ndarray:
    return np.mod(x + 0.5, 1.0) - 0.5


def _periodic_curves(curves: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Evaluate (C, 51) periodic curves at `phase` (cycles) by periodic cubic interpolation."""
    x = np.linspace(0.0, 1.0, curves.shape[-1])
    curves = np.concatenate([curves[..., :-1], curves[..., :1]], axis=-1)  # exact wrap
    spline = CubicSpline(x, curves, axis=-1, bc_type="periodic")
    return spline(np.mod(phase, 1.0))


def build_gait_template(
    curves: SubjectCurves,
    body: BodyModel,
    subject: GaitSubject,
    pathology: str | None = None,
    points: int = TEMPLATE_POINTS,
) -> GaitTemplate:
    """A consistent periodic walking cycle for this subject/speed/pathology (see module doc)."""
    if pathology is not None and pathology not in PATHOLOGIES:
        raise ValueError(f"pathology={pathology!r}: unknown, expected one of {PATHOLOGIES}")
    phase = np.arange(points) / points
    stance = STANCE_FRACTION[curves.speed]
    if pathology == "crouch":
        stance += 0.03
    side_phase = {"l": phase, "r": phase - 0.5}
    ch = {s: _periodic_curves(curves.side(s), side_phase[s]) for s in SIDES}  # (C, M)
    dofs = np.zeros((points, len(DOFS)))
    legs = ("hip_flexion", "hip_adduction", "hip_rotation", "knee_flexion", "knee_adduction")
    for s in SIDES:
        for name in (*legs, "knee_rotation", "ankle_dorsiflexion"):
            dofs[:, DOF_INDEX[f"{name}_{s}"]] = ch[s][CHANNEL_INDEX[name]]
    # pelvis: the right curve is right-side-up/forward positive as-is; the left one negated
    ci = CHANNEL_INDEX
    dofs[:, DOF_INDEX["pelvis_tilt"]] = 0.5 * (
        ch["l"][ci["pelvis_tilt"]] + ch["r"][ci["pelvis_tilt"]]
    )
    for name in ("pelvis_obliquity", "pelvis_rotation"):
        dofs[:, DOF_INDEX[name]] = 0.5 * (ch["r"][ci[name]] - ch["l"][ci[name]])
    fp_target = np.stack([ch[s][ci["foot_progression"]] for s in SIDES], axis=1)
    speed_gain = DIMENSIONLESS_SPEED[curves.speed] / DIMENSIONLESS_SPEED["Free"]
    _upper_body(dofs, phase, subject, speed_gain)
    frozen: set[str] = set()
    if pathology is not None:
        frozen = _apply_pathology(dofs, phase, stance, pathology, subject.affected_side)
    dofs = _match_foot_progression(body, dofs, fp_target)
    dofs = _make_consistent(body, dofs, phase, stance, frozen)
    return GaitTemplate(
        phase=phase,
        dofs=dofs,
        stance=stance,
        speed=curves.speed,
        pathology=pathology,
        foot_progression_target=fp_target,
        toe_off=_measured_toe_off(body, dofs, phase, stance),
    )


def _measured_toe_off(body: BodyModel, dofs: np.ndarray, phase: np.ndarray, stance: float) -> float:
    """Phase where the trailing (left) foot's lowest point rises TOE_OFF_HEIGHT above the
    floor, searched from mid double support to the scheduled toe off; sub-sample by a
    periodic spline of the clearance."""
    _, c, _ = _contact(body, dofs)
    floor = np.einsum("nk,nk->n", contact_schedule(phase, stance), c)
    h = CubicSpline(
        np.append(phase, 1.0), np.append(c[:, 0] - floor, c[0, 0] - floor[0]), bc_type="periodic"
    )
    fine = np.linspace(0.5 + 0.5 * (stance - 0.5), stance, 200)
    above = np.flatnonzero(h(fine) > TOE_OFF_HEIGHT)
    return float(fine[above[0]]) if len(above) else float(stance)


def _upper_body(
    dofs: np.ndarray, phase: np.ndarray, subject: GaitSubject, speed_gain: float
) -> None:
    """Trunk upright and counter-rotating, head stabilised, arms swinging opposite the legs."""
    D = DOF_INDEX
    tilt = dofs[:, D["pelvis_tilt"]]
    obl = dofs[:, D["pelvis_obliquity"]]
    rot = dofs[:, D["pelvis_rotation"]]
    w = 2 * np.pi * phase
    lean = subject.trunk_lean + 1.5 * (speed_gain - 1.0)
    bob = 1.0 * np.cos(2 * w)  # thorax pitches twice per stride
    thorax_pitch = lean + bob
    thorax_roll = 0.3 * obl
    thorax_yaw = -0.6 * rot  # thorax rotates against the pelvis
    dofs[:, D["trunk_flexion"]] = thorax_pitch - tilt
    dofs[:, D["trunk_lateral"]] = obl - thorax_roll  # cancel most of the pelvic obliquity
    dofs[:, D["trunk_rotation"]] = thorax_yaw - rot
    dofs[:, D["neck_flexion"]] = -0.8 * thorax_pitch
    dofs[:, D["neck_lateral"]] = 0.8 * thorax_roll
    dofs[:, D["neck_rotation"]] = -0.8 * thorax_yaw
    amp = subject.arm_swing * np.clip(14.0 * speed_gain, 4.0, 30.0)
    for s, other in zip(SIDES, SIDES[::-1], strict=True):
        hip = dofs[:, D[f"hip_flexion_{other}"]]
        shape = (hip - hip.mean()) / max(np.ptp(hip) / 2, 1e-6)
        shape = gaussian_filter1d(shape, sigma=len(phase) * 0.03, mode="wrap")
        dofs[:, D[f"shoulder_flexion_{s}"]] = -2.0 + amp * shape
        dofs[:, D[f"shoulder_abduction_{s}"]] = 7.0 + 1.5 * np.cos(2 * w)
        dofs[:, D[f"shoulder_rotation_{s}"]] = 2.0
        dofs[:, D[f"elbow_flexion_{s}"]] = 18.0 + 0.6 * amp * (shape + 1.0) / 2.0


def _apply_pathology(
    dofs: np.ndarray, phase: np.ndarray, stance: float, pathology: str, affected: str
) -> set[str]:
    """Edit the cycle for a gait pathology; returns DOFs the consistency step must not move."""
    D = DOF_INDEX
    sides = SIDES if pathology == "crouch" else (affected,)
    frozen: set[str] = set()
    for s in sides:
        u = phase if s == "l" else phase - 0.5
        st = _stance_window(u, stance)
        sw = 1.0 - st
        # compensations (hike, circumduction, vaulting) begin before toe off
        sw_early = 1.0 - _stance_window(u, stance - 0.06)
        other = "r" if s == "l" else "l"
        up = 1.0 if s == "r" else -1.0  # pelvis obliquity sign: this side up
        if pathology == "crouch":
            dofs[:, D[f"knee_flexion_{s}"]] += 20.0 + 8.0 * st
            dofs[:, D[f"hip_flexion_{s}"]] += 14.0
            dofs[:, D[f"ankle_dorsiflexion_{s}"]] += 10.0 * st + 3.0
        elif pathology == "stiff_knee":
            k = dofs[:, D[f"knee_flexion_{s}"]]
            dofs[:, D[f"knee_flexion_{s}"]] = k - 0.65 * _softplus(k - 15.0, 4.0) * sw
            dofs[:, D[f"hip_adduction_{s}"]] -= 6.0 * sw_early  # circumduction
            dofs[:, D["pelvis_obliquity"]] += up * 3.0 * sw_early  # hip hiking
            dofs[:, D[f"ankle_dorsiflexion_{other}"]] -= 6.0 * sw_early  # vaulting
            dofs[:, D[f"ankle_dorsiflexion_{s}"]] += 5.0 * sw
            frozen.add(f"knee_flexion_{s}")
        elif pathology == "equinus":
            # toe walking: plantarflexed throughout, knee a little flexed at initial contact
            # so the forefoot lands first, heel off the floor in stance (no foot flat)
            contact = np.exp(-((_wrap(u) / 0.08) ** 2))
            dofs[:, D[f"ankle_dorsiflexion_{s}"]] -= 20.0 + 6.0 * st
            dofs[:, D[f"knee_flexion_{s}"]] += 8.0 * contact - 2.0 * st
            frozen.add(f"toe_walking_{s}")
        elif pathology == "braced_knee":
            dofs[:, D[f"knee_flexion_{s}"]] = 3.0 + 1.0 * np.cos(2 * np.pi * u)
            dofs[:, D[f"hip_adduction_{s}"]] -= 9.0 * sw_early  # circumduction
            dofs[:, D[f"hip_flexion_{s}"]] += 4.0 * sw
            dofs[:, D["pelvis_obliquity"]] += up * 6.0 * sw_early  # hip hiking
            dofs[:, D[f"ankle_dorsiflexion_{other}"]] -= 10.0 * sw_early  # vaulting
            dofs[:, D[f"ankle_dorsiflexion_{s}"]] += 8.0 * sw
            frozen.add(f"knee_flexion_{s}")
        elif pathology == "trendelenburg":
            drop = 6.0 * st  # the other side drops while this side stands
            dofs[:, D["pelvis_obliquity"]] += up * drop
            dofs[:, D[f"hip_adduction_{s}"]] += drop
            dofs[:, D[f"hip_adduction_{other}"]] -= drop
            dofs[:, D["trunk_lateral"]] += -up * 0.5 * drop + up * 8.0 * st  # lean over stance
    return frozen


def _foot_yaw(body: BodyModel, dofs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foot progression (N, 2) deg, toe-in positive, for heading 0, and how horizontal the
    foot's long axis is (N, 2) in 0..1 (the yaw of a steeply pitched foot is meaningless)."""
    pose = forward_kinematics(body, dofs, segments=_LEG_SEGMENTS)
    out = np.empty((dofs.shape[0], 2))
    flat = np.empty((dofs.shape[0], 2))
    for k, (s, m) in enumerate(zip(SIDES, (-1.0, 1.0), strict=True)):
        fwd = pose.R[:, SEGMENT_INDEX[f"foot_{s}"], :, 0]
        out[:, k] = m * np.degrees(np.arctan2(fwd[:, 1], fwd[:, 0]))
        flat[:, k] = np.hypot(fwd[:, 0], fwd[:, 1])
    return out, flat


def _match_foot_progression(body: BodyModel, dofs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Set the ankle's long-axis rotation so the foot-progression angle follows the curve.

    The correction is a low-order Fourier series fitted with weights that favour a level
    foot (stance), so the ill-defined yaw of the steeply pitched swing foot cannot make it
    jump.
    """
    dofs = dofs.copy()
    M = dofs.shape[0]
    phase = np.arange(M) / M
    basis = np.stack(
        [np.ones(M)] + [f(2 * np.pi * k * phase) for k in (1, 2, 3) for f in (np.cos, np.sin)], 1
    )
    for _ in range(3):
        yaw, flat = _foot_yaw(body, dofs)
        for k, s in enumerate(SIDES):
            w = np.clip(flat[:, k], 0.0, 1.0) ** 8
            A = basis * w[:, None]
            coef = np.linalg.lstsq(
                A.T @ basis + 1e-3 * np.eye(basis.shape[1]),
                A.T @ (target[:, k] - yaw[:, k]),
                rcond=None,
            )[0]
            dofs[:, DOF_INDEX[f"ankle_rotation_{s}"]] += basis @ coef
    return dofs


# -- geometric consistency -------------------------------------------------------------------

#: DOFs the consistency solver may move, with their relative freedom (larger moves more).
_SOLVER_DOFS = {
    "hip_flexion": 1.0,
    "hip_adduction": 0.35,
    "hip_rotation": 1.0,
    "knee_flexion": 1.35,
    "ankle_dorsiflexion": 1.0,
}
#: Knots per gait cycle of the periodic cubic B-splines that carry the consistency
#: corrections: the corrections are C² in phase by construction (≈ 27 ms between knots at a
#: 1.1 s stride), so no per-sample kink reaches the joint angles or the planted root.
CORRECTION_KNOTS = 40
# Weights of the fit's residuals, as the size of an error that costs one unit:
_TOL_ANGLE = 15.0  # deg: a correction of a DOF (× its _SOLVER_DOFS freedom)
_ROUGHNESS = 100.0  # × its size: the corrections' second differences (per knot)
_TOL_HEIGHT = 0.0005  # m: the height gap between the feet in double support
_TOL_VELOCITY = 0.01  # m/cycle: a contact point's speed off the reference, double support
_TOL_STANCE_VELOCITY = 0.05  # m/cycle: the same in single support (and running stance)
_TOL_PITCH = 0.002  # m: the stance foot's heel − toe height off its uncorrected value
_ROOT_BEND = 4.0  # m/cycle²: curvature of the root height left free (walking)
_TOL_ROOT_BEND = 4.0  # m/cycle²: curvature of the root height beyond that
_TOL_RUN_HEIGHT = 0.003  # m: running: the stance contact off the spring-mass profile
_TOL_CLEARANCE = 0.00025  # m: a swing foot point below its clearance
_TOL_LANDING = 0.005  # m/cycle: the landing heel descending slower than _LANDING_SPEED
_VREF_SIGMA = 0.025  # cycles: Gaussian low-pass of the reference root velocity
_CONSTRAINT_TAPER = 0.02  # cycles over which residual weights fade in and out (C²)
_HEEL_GRIP = 0.3  # weight of the landing heel's velocity rows at heel strike, relative
_HEEL_SETTLE = 0.03  # cycles after heel strike until the lead foot must be planted
_APPROACH = 0.25  # cycles before heel strike in which the clearance is followed, not bounded
_LANDING_TIME = 0.1  # cycles: the end of swing over which the heel must keep descending
_LANDING_SPEED = 0.1  # m/cycle: at least this fast (≈ 0.06–0.16 m/s)
_SOLVE_STRIDE = 2  # the fit uses every this-many template samples (a spline is smooth)
_LM_RELAX = 3.0  # the damping falls by this factor after an accepted step
_LM_STOP = 0.05  # stop when two iterations lower the cost by less than this share


def periodic_bspline_basis(phase: np.ndarray, knots: int) -> np.ndarray:
    """Uniform periodic cubic B-spline basis (N, knots) at `phase` (cycles): rows sum to 1."""
    x = np.mod(np.asarray(phase, float), 1.0)[:, None] * knots - np.arange(knots)[None, :]
    a = np.abs(np.mod(x + knots / 2.0, knots) - knots / 2.0)
    return np.where(
        a < 1.0, 2.0 / 3.0 - a**2 + 0.5 * a**3, np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0)
    )


def _contact(body: BodyModel, dofs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foot points (N,2,2,3), soft-lowest height per foot (N,2), heel/toe weights (N,2,2)."""
    P = foot_points(body, dofs)
    c, w = soft_contact(P[..., 2])
    return P, c, w


def _running_height(phase: np.ndarray, stance: float, cycle_time: float) -> np.ndarray:
    """Root height (M,) m relative to take-off for running with `stance` < ½ per side:
    ballistic flights (take-off speed g·T_f/2) joined C¹ by a sine-shaped stance dip (a
    spring-mass stance: its peak acceleration is g·π·T_f/(2·T_s), ≈ 0.6 g at a jog)."""
    T_s = stance * cycle_time
    T_f = (0.5 - stance) * cycle_time
    v = 0.5 * GRAVITY * T_f
    t = np.mod(phase, 0.5) * cycle_time  # since the last landing of either foot
    tf = t - T_s
    return np.where(
        t < T_s, -(v * T_s / np.pi) * np.sin(np.pi * t / T_s), v * tf - 0.5 * GRAVITY * tf**2
    )


def _make_consistent(
    body: BodyModel,
    dofs: np.ndarray,
    phase: np.ndarray,
    stance: float,
    frozen: set[str],
    running: bool = False,
    cycle_time: float | None = None,
    iterations: int = 12,
) -> np.ndarray:
    """Double-support closure and swing clearance as one smooth least-squares problem.

    The corrections of the solver DOFs (hip flexion/adduction/rotation, knee flexion, ankle
    dorsiflexion; `frozen` ones excepted) are periodic cubic B-splines in phase
    (CORRECTION_KNOTS per cycle), fitted by Levenberg–Marquardt to:
    - closure (walking): over each double support both feet's soft-lowest points are at the
      same height, and both feet's contact material points move (relative to the root) with
      the low-passed root velocity of the uncorrected template, so they stay planted
      relative to each other (the landing heel may slide for _HEEL_SETTLE); in single
      support the stance foot follows that velocity loosely;
    - stance: from heel strike through heel off the foot takes the pitch `_pitch_target`
      gives it, and the root height (the support-weighted contact height) does not bend
      sharply;
    - landing: over the last _LANDING_TIME of swing the heel keeps descending at least at
      _LANDING_SPEED (a heel that levels off just above the floor reads as an early contact);
    - running (`cycle_time` s per stride): the stance foot's contact height follows
      `_running_height` (a spring-mass stance between ballistic flights), so the flights
      that activities.py fills in join the stance without a kink;
    - clearance: the swing foot's heel and toe stay at least `clearance_profile` above the
      stance foot's contact height (running: SWING_CLEARANCE while the other foot stands);
    - small, smooth corrections (size and second differences penalised).
    Every residual weight is a smooth function of phase and the unknowns are splines, so the
    result has no per-sample kinks (per-sample solvers left 10⁵ deg/s² spikes at 120 Hz).
    """
    if running and cycle_time is None:
        raise ValueError("_make_consistent: running needs the cycle time")
    pitch = None if running else _pitch_target(body, dofs, phase, stance, frozen)
    sub = slice(None, None, _SOLVE_STRIDE)
    problem = _Consistency(
        body,
        dofs[sub],
        phase[sub],
        stance,
        frozen,
        running,
        cycle_time,
        None if pitch is None else pitch[sub],
    )
    coef = problem.solve(iterations)
    out = dofs.copy()
    basis = periodic_bspline_basis(phase, CORRECTION_KNOTS)
    out[:, problem.idx] += basis @ coef.reshape(len(problem.cols), -1).T
    return out


class _Consistency:
    """The least-squares problem of `_make_consistent` on a phase grid (the fit needs fewer
    rows than the template has: every _SOLVE_STRIDE-th sample)."""

    def __init__(
        self,
        body: BodyModel,
        dofs: np.ndarray,
        phase: np.ndarray,
        stance: float,
        frozen: set[str],
        running: bool,
        cycle_time: float | None,
        pitch: np.ndarray | None = None,
    ) -> None:
        self.body, self.dofs, self.phase = body, dofs, phase
        self.stance, self.running = stance, running
        M = self.M = len(phase)
        nb = self.nb = CORRECTION_KNOTS
        self.cols = [
            (k, DOF_INDEX[f"{n}_{s}"], f, n)
            for k, s in enumerate(SIDES)
            for n, f in _SOLVER_DOFS.items()
            if f"{n}_{s}" not in frozen
        ]
        self.idx = np.array([c[1] for c in self.cols])
        self.side = np.array([c[0] for c in self.cols])
        self.n = len(self.cols) * nb
        self.B = periodic_bspline_basis(phase, nb)
        # each sample's 4 non-zero basis functions (a cubic B-spline spans 4 knot intervals)
        self.knot = np.argsort(-self.B, axis=1)[:, :4]
        self.bval = np.take_along_axis(self.B, self.knot, axis=1)
        # regularisation (sparse, like everything the solver touches: dense LAPACK calls on
        # these sizes spend more time starting BLAS threads than computing)
        scale = 1.0 / (_TOL_ANGLE * np.array([c[2] for c in self.cols]))
        D2 = diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(nb, nb), format="lil")
        D2[0, nb - 1] = D2[nb - 1, 0] = 1.0  # periodic
        block = identity(nb) + _ROUGHNESS * (D2.T @ D2)
        self.R = kron(diags(scale**2 / _SOLVE_STRIDE), block, format="csc")
        self.prev, self.next = np.roll(np.arange(M), 1), np.roll(np.arange(M), -1)
        P0 = foot_points(body, dofs)
        c0, w0 = soft_contact(P0[..., 2])
        self.pitch0 = P0[:, :, 0, 2] - P0[:, :, 1, 2] if pitch is None else pitch
        # the speed profile the feet keep, low-passed (no kinks to follow); running: flights
        # (no support) interpolated linearly
        v_ref = -_root_velocity(P0, w0, contact_schedule(phase, stance))
        ok = np.all(np.isfinite(v_ref), axis=1)
        for d in range(2):
            v_ref[:, d] = np.interp(phase, phase[ok], v_ref[ok, d], period=1.0)
        self.v_ref = gaussian_filter1d(v_ref, _VREF_SIGMA * M, axis=0, mode="wrap")
        self._rows(c0, cycle_time, frozen)

    def _rows(self, c0: np.ndarray, cycle_time: float | None, frozen: set[str]) -> None:
        """Which samples each group of residuals uses, and their (smooth) weights."""
        phase, stance, tau = self.phase, self.stance, _CONSTRAINT_TAPER
        ds = stance - 0.5
        self.gap, self.vel, self.pitch, self.height = [], [], [], []
        self.land: list[np.ndarray] = []
        self.approach: list[np.ndarray] = []
        self.clear: list[tuple[np.ndarray, np.ndarray]] = []
        for k in range(2):
            u = np.mod(phase - 0.5 * k, 1.0)  # this foot's own cycle
            if self.running:
                on = np.flatnonzero(u < stance)
                self.height.append((on, np.full(len(on), 1.0 / _TOL_RUN_HEIGHT)))
                self.vel.append((on, np.full(len(on), 1.0 / _TOL_STANCE_VELOCITY)))
                other_stands = np.mod(phase - 0.5 * (1 - k), 1.0) < stance
                self.clear.append((other_stands, np.full(self.M, SWING_CLEARANCE)))
                self.approach.append(np.zeros(self.M, bool))
                continue
            # double support led by this foot: both soft-lowest points at the same height,
            # fading out into toe off
            sel = np.flatnonzero(u <= ds + 0.5 * tau)
            a = 1.0 - _smootherstep((u[sel] - ds + 0.5 * tau) / tau)
            self.gap.append((sel, a / _TOL_HEIGHT))
            # velocity through the whole stance: tight in double support (the landing heel
            # may slide for a moment before it sticks, the trailing foot's rows fade into toe
            # off), loose in single support (where the root follows whatever the foot does)
            sel = np.flatnonzero(u < stance + 0.5 * tau)
            us = u[sel]
            single = _smootherstep((us - ds + 0.5 * tau) / tau) * (
                1.0 - _smootherstep((us - 0.5 + 0.5 * tau) / tau)
            )
            tol = _TOL_VELOCITY * (_TOL_STANCE_VELOCITY / _TOL_VELOCITY) ** single
            grip = _HEEL_GRIP + (1.0 - _HEEL_GRIP) * _smootherstep(us / _HEEL_SETTLE)
            fade = 1.0 - _smootherstep((us - stance + 0.5 * tau) / tau)
            self.vel.append((sel, grip * fade / tol))
            # from heel strike through heel off the stance foot takes its target pitch (heel −
            # toe height: the heel rocker, flat foot, the start of the heel rise)
            us = np.where(u > 0.9, u - 1.0, u)
            sel = np.flatnonzero((us > -tau) & (us < 0.5 + tau))
            a = _smootherstep((us[sel] + tau) / tau) * (1.0 - _smootherstep((us[sel] - 0.5) / tau))
            self.pitch.append((sel, a / _TOL_PITCH))
            self.clear.append((u >= stance, clearance_profile(u, stance)))
            # a swing foot that once dipped below its clearance is held to it only while it
            # comes down to land (its approach); elsewhere the clearance is a lower bound
            self.approach.append(u > 1.0 - _APPROACH)
            # landing: over the end of swing the heel keeps coming down at least at
            # _LANDING_SPEED (a heel that levels off just above the floor reads as an early
            # contact); a toe walker's forefoot lands as it will
            landing = u > 1.0 - _LANDING_TIME
            if f"toe_walking_{SIDES[k]}" in frozen:
                landing[:] = False
            self.land.append(landing)
        # walking: the support-weighted contact height (minus the root's) should not bend
        # sharply (a pelvis does not bounce at the hand-over between feet)
        self.support = np.zeros((self.M, 2))
        if not self.running:
            w = contact_schedule(phase, stance)
            self.support = w / w.sum(axis=1, keepdims=True)
        self.z_ref = np.zeros(self.M)
        if self.running:
            assert cycle_time is not None
            z = _running_height(phase, stance, cycle_time)
            on = np.stack([np.mod(phase - 0.5 * k, 1.0) < stance for k in range(2)], axis=1)
            self.z_ref = z - np.mean((c0 + z[:, None])[on])  # the level the template stands at

    def solve(self, iterations: int) -> np.ndarray:
        """Levenberg–Marquardt on a growing set of one-sided rows: the coefficients."""
        R = self.R
        coef = np.zeros(self.n)
        sticky = np.zeros((2, 3, self.M), bool)  # one-sided rows once violated stay in
        r, J, low = self.residuals(coef, sticky)
        damping = 1e-3
        history: list[float] = []
        for _ in range(iterations):
            grew = not np.array_equal(sticky | low, sticky)
            if grew:
                sticky = sticky | low
                r, J, low = self.residuals(coef, sticky)
            if len(r) == 0:
                break
            cost = r @ r + coef @ (R @ coef)
            H = (J.T @ J + R).tocsc()
            grad = J.T @ r + R @ coef
            for _ in range(5):
                step = spsolve(H + damping * diags(H.diagonal()), -grad)
                r_try = self.residuals(coef + step, sticky, jacobian=False)[0]
                cost_try = r_try @ r_try + (coef + step) @ (R @ (coef + step))
                if cost_try < cost:
                    break
                damping *= 10.0
            else:
                break
            coef += step
            damping = max(damping / _LM_RELAX, 1e-6)
            history.append(cost_try)
            # converged: two iterations (long and short steps alternate) gained little
            if not grew and len(history) > 2 and history[-3] - cost_try < _LM_STOP * history[-3]:
                break
            r, J, low = self.residuals(coef, sticky)
        return coef

    def residuals(
        self, coef: np.ndarray, sticky: np.ndarray, jacobian: bool = True
    ) -> tuple[np.ndarray, csr_matrix | None, np.ndarray]:
        """Residuals at `coef`, their sparse Jacobian (None without `jacobian`) and where a
        swing row is violated (2 feet, (heel clearance, toe clearance, landing descent), M);
        the swing rows used are those in `sticky` (once violated, kept)."""
        M, nb, cols, side = self.M, self.nb, self.cols, self.side
        x = self.dofs.copy()
        x[:, self.idx] += self.B @ coef.reshape(len(cols), nb).T
        dP = np.zeros((len(cols), M, 2, 3))  # d(the col's own foot points)/d(DOF), per deg
        if jacobian:
            P = np.empty((M, 2, 2, 3))
            for k in range(2):
                js = np.flatnonzero(side == k)
                P[:, k], dP[js] = foot_points_jacobian(
                    self.body, x, k, tuple(cols[j][3] for j in js)
                )
        else:
            P = foot_points(self.body, x)
        c, w = soft_contact(P[..., 2])
        V = _dphase(P)  # material-point velocities (M, 2, 2, 3), per cycle
        res: list[np.ndarray] = []
        entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # rows, columns, values
        count = [0]

        def emit(r: np.ndarray, terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
            """Residual rows r (R,); each term (samples (R,), columns (C,), gradient (R, C))
            adds gradient × the samples' basis functions to the Jacobian."""
            rows = count[0] + np.arange(len(r))
            res.append(r)
            count[0] += len(r)
            if not jacobian:
                return
            for samples, cs, grad in terms:
                vals = grad[:, :, None] * self.bval[samples][:, None, :]
                where = cs[None, :, None] * nb + self.knot[samples][:, None, :]
                entries.append(
                    (
                        np.broadcast_to(rows[:, None, None], vals.shape).ravel(),
                        where.ravel(),
                        vals.ravel(),
                    )
                )

        both = np.arange(len(cols))
        mine = [np.flatnonzero(side == k) for k in range(2)]
        for k, (sel, a) in enumerate(self.gap):  # c_lead − c_trail (soft-min gradient: w)
            o = 1 - k
            g = np.where(
                (side == k)[None, :],
                np.einsum("nk,jnk->nj", w[sel, k], dP[:, sel][..., 2]),
                -np.einsum("nk,jnk->nj", w[sel, o], dP[:, sel][..., 2]),
            )
            emit((c[sel, k] - c[sel, o]) * a, [(sel, both, g * a[:, None])])
        for k, (sel, a) in enumerate(self.vel):  # the contact points move with v_ref
            vc = np.einsum("nk,nkd->nd", w[sel, k], V[sel, k, :, :2]) - self.v_ref[sel]
            for d in range(2):
                up = np.einsum("nk,jnk->nj", w[sel, k], dP[mine[k]][:, self.next[sel]][..., d])
                dn = np.einsum("nk,jnk->nj", w[sel, k], dP[mine[k]][:, self.prev[sel]][..., d])
                s = (0.5 * M * a)[:, None]
                emit(
                    vc[:, d] * a,
                    [(self.next[sel], mine[k], up * s), (self.prev[sel], mine[k], -dn * s)],
                )
        for k, (sel, a) in enumerate(self.pitch):  # heel − toe height as targeted
            g = (dP[mine[k]][:, sel, 0, 2] - dP[mine[k]][:, sel, 1, 2]).T
            r = P[sel, k, 0, 2] - P[sel, k, 1, 2] - self.pitch0[sel, k]
            emit(r * a, [(sel, mine[k], g * a[:, None])])
        if not self.running:  # the root height (support-weighted contact) bending sharply
            z = np.einsum("ns,ns->n", self.support, c)
            d2 = (z[self.next] - 2.0 * z + z[self.prev]) * (M * M)
            sel = np.flatnonzero(np.abs(d2) > _ROOT_BEND)  # a pelvis's own sway is left alone
            g = np.zeros((len(sel), len(cols)))
            if len(sel):
                for k in range(2):
                    g[:, mine[k]] = (
                        self.support[sel, k, None]
                        * np.einsum("nk,jnk->nj", w[:, k], dP[mine[k]][..., 2])[sel]
                    )
            g *= M * M / _TOL_ROOT_BEND
            gn = np.zeros((len(sel), len(cols)))
            gp = np.zeros((len(sel), len(cols)))
            if len(sel):
                for k in range(2):
                    full = np.einsum("nk,jnk->nj", w[:, k], dP[mine[k]][..., 2])
                    gn[:, mine[k]] = self.support[self.next[sel], k, None] * full[self.next[sel]]
                    gp[:, mine[k]] = self.support[self.prev[sel], k, None] * full[self.prev[sel]]
            gn *= M * M / _TOL_ROOT_BEND
            gp *= M * M / _TOL_ROOT_BEND
            excess = (d2[sel] - np.sign(d2[sel]) * _ROOT_BEND) / _TOL_ROOT_BEND
            emit(
                excess,
                [(self.next[sel], both, gn), (sel, both, -2.0 * g), (self.prev[sel], both, gp)],
            )
        for k, (sel, a) in enumerate(self.height):  # running: c_stance = −z_ref
            g = np.einsum("nk,jnk->nj", w[sel, k], dP[mine[k]][:, sel][..., 2])
            emit((c[sel, k] + self.z_ref[sel]) * a, [(sel, mine[k], g * a[:, None])])
        low = np.zeros((2, 3, M), bool)
        for k, rows in enumerate(self.land):  # the landing heel descends fast enough
            h = P[:, k, 0, 2] - c[:, 1 - k]  # the other foot's contact held fixed
            vz = (h[self.next] - h[self.prev]) * (0.5 * M)
            low[k, 2] = rows & (vz > -_LANDING_SPEED)
            sel = np.flatnonzero(sticky[k, 2])
            if len(sel):
                s = 0.5 * M / _TOL_LANDING
                up = dP[mine[k]][:, self.next[sel], 0, 2].T * s
                dn = dP[mine[k]][:, self.prev[sel], 0, 2].T * s
                emit(
                    (vz[sel] + _LANDING_SPEED) / _TOL_LANDING,
                    [(self.next[sel], mine[k], up), (self.prev[sel], mine[k], -dn)],
                )
        for k, (rows, gmin) in enumerate(self.clear):  # heel, toe above the other's contact
            for p in range(2):
                h = P[:, k, p, 2] - c[:, 1 - k]
                low[k, p] = rows & (h < gmin)
                sel = np.flatnonzero(sticky[k, p])
                if len(sel):  # one-sided, but the approach to a landing is followed
                    on = (h[sel] < gmin[sel]) | self.approach[k][sel]
                    g = dP[mine[k]][:, sel, p, 2].T / _TOL_CLEARANCE * on[:, None]
                    emit((h[sel] - gmin[sel]) * on / _TOL_CLEARANCE, [(sel, mine[k], g)])
        r = np.concatenate(res) if res else np.zeros(0)
        if not jacobian:
            return r, None, low
        if not entries:
            return r, csr_matrix((len(r), self.n)), low
        rr, cc, vv = (np.concatenate(e) for e in zip(*entries, strict=True))
        return r, coo_matrix((vv, (rr, cc)), shape=(len(r), self.n)).tocsr(), low


def _solve_foot(
    body: BodyModel,
    dofs: np.ndarray,
    side: int,
    target: np.ndarray,
    mask: np.ndarray | None,
    rows: np.ndarray,
    frozen: set[str],
    weights: np.ndarray | None = None,
    iterations: int = 3,
) -> np.ndarray:
    """Move one foot toward a target on `rows` by damped least squares over a few leg DOFs.

    With `mask` (3,) the target (N, 3) is for the foot's contact point (heel/toe mixed by
    `weights` (N, 2), default the soft-lowest point) on the masked axes; with mask=None the
    target (N, 2) is the heights of heel and toe (so a rotation of the foot cannot lift one
    point by lowering the other).
    """
    s = SIDES[side]
    names = [f"{n}_{s}" for n in _SOLVER_DOFS if f"{n}_{s}" not in frozen]
    cols = [DOF_INDEX[n] for n in names]
    freedom = np.array([_SOLVER_DOFS[n[:-2]] for n in names])
    dofs = dofs.copy()
    if not np.any(rows):
        return dofs
    sub = dofs[rows]
    eps = 0.25
    for _ in range(iterations):
        stacked = np.concatenate([sub] + [sub + eps * np.eye(len(DOFS))[c] for c in cols], axis=0)
        P = foot_points(body, stacked, (side,))[:, side]  # (n*(1+k), 2, 3)
        if mask is None:
            f = P[..., 2].reshape(1 + len(cols), -1, 2)
            r = target[rows] - f[0]
        else:
            if weights is None:
                _, w = soft_contact(P[..., 2])
            else:
                w = np.tile(weights[rows], (1 + len(cols), 1))
            ax = np.flatnonzero(mask)
            f = np.einsum("nk,nkd->nd", w, P).reshape(1 + len(cols), -1, 3)[..., ax]
            r = target[rows][:, ax] - f[0]
        J = (f[1:] - f[0]) / eps  # (k, n, a)
        Jn = np.transpose(J, (1, 2, 0))  # (n, a, k)
        A = np.einsum("nak,k,nbk->nab", Jn, freedom, Jn) + 1e-5 * np.eye(Jn.shape[1])
        x = np.linalg.solve(A, r[..., None])[..., 0]
        dq = freedom * np.einsum("nak,na->nk", Jn, x)
        sub[:, cols] += np.clip(dq, -15.0, 15.0)
    dofs[rows] = sub
    return dofs


def clearance_profile(u: np.ndarray, stance: float) -> np.ndarray:
    """Minimum height of a swing foot's points over the floor: 0 at toe off and heel strike,
    leaving the floor at 0.15 m/cycle and meeting it at 0.12 m/cycle (so the foot lifts off
    and lands with a vertical speed the event detector sees) along parabolas that level off
    at SWING_CLEARANCE (C¹, so the swing foot is not jerked); 0 in stance."""
    rise = np.clip((u - stance) * 0.15 / (2.0 * SWING_CLEARANCE), 0.0, 1.0)
    fall = np.clip((1.0 - u) * 0.12 / (2.0 * SWING_CLEARANCE), 0.0, 1.0)
    g = SWING_CLEARANCE * np.minimum(rise * (2.0 - rise), fall * (2.0 - fall))
    return np.where(u >= stance, g, 0.0)


def _raise_swing(
    body: BodyModel,
    dofs: np.ndarray,
    k: int,
    level: np.ndarray,
    g: np.ndarray,
    rows: np.ndarray,
    frozen: set[str],
    sigma: float,
    iterations: int = 3,
) -> np.ndarray:
    """Lift heel and toe of foot k to at least level + g on `rows` (smoothed requirement)."""
    z = foot_points(body, dofs, (k,))[:, k, :, 2]  # (N, 2)
    need = np.where(rows[:, None], np.maximum(level[:, None] + g[:, None] - z, 0.0), 0.0)
    if not np.any(need > 1e-4):
        return dofs
    need = gaussian_filter1d(need, sigma=sigma, axis=0, mode="nearest")
    sel = rows & np.any(need > 1e-5, axis=1)
    return _solve_foot(body, dofs, k, z + need, None, sel, frozen, iterations=iterations)


def _pitch_target(
    body: BodyModel, dofs: np.ndarray, phase: np.ndarray, stance: float, frozen: set[str]
) -> np.ndarray:
    """Heel − toe height (M, 2) m the stance foot should have so it rolls heel → flat → toe
    without rocking back: the curves' toe-up pitch in loading response (never heel-up: a
    smooth maximum with 0), flat from there (Plug-in Gait's foot axis is not our sole line,
    so the curves leave the sole a few degrees off), then the curves' heel-up pitch back in
    over 25–50 % of the cycle (never toe-up: a smooth minimum), through C² ramps, so contact
    passes from heel to toe without a kink. `_make_consistent` reaches it with the whole leg
    (hip, knee and ankle share the change), not the ankle alone; a toe walker's foot and a
    frozen ankle keep their pitch."""
    P = foot_points(body, dofs)
    d = P[:, :, 1] - P[:, :, 0]  # heel → toe (M, 2, 3)
    length = np.linalg.norm(d, axis=-1)
    out = -d[..., 2].copy()
    scale = stance / 0.61
    beta = 4.0  # deg: width of the smooth minimum/maximum
    for k, s in enumerate(SIDES):
        if f"ankle_dorsiflexion_{s}" in frozen or f"toe_walking_{s}" in frozen:
            continue
        u = np.mod(phase - 0.5 * k, 1.0)
        pitch = np.degrees(np.arcsin(d[:, k, 2] / length[:, k]))
        v = np.where(u < 0.85, u, u - 1.0) / scale  # terminal swing: v < 0
        flat = _smootherstep(v / 0.12)
        rise = _smootherstep((v - 0.25) / 0.25)
        target = (1.0 - flat) * _soft_positive(pitch, 2.0 * beta) - rise * _soft_positive(
            -pitch, beta
        )
        out[:, k] = -length[:, k] * np.sin(np.radians(target))
    return out


def _soft_positive(x: np.ndarray, width: float) -> np.ndarray:
    """Smooth max(x, 0): exact at 0 and far from it, within 0.15·width below 0 near it."""
    r = np.sqrt(x * x + width * width)
    return 0.5 * (x + r) - 0.5 * width * width / r


def _smootherstep(x: np.ndarray) -> np.ndarray:
    """C² step from 0 (x ≤ 0) to 1 (x ≥ 1)."""
    x = np.clip(x, 0.0, 1.0)
    return x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


def _root_velocity(P: np.ndarray, w: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Horizontal root velocity (N, 2) per cycle that keeps the support-weighted contact
    material points still, from template foot points P (N, 2, 2, 3) and heel/toe weights w."""
    vc = np.einsum("nsk,nskd->nsd", w, _dphase(P[..., :2]))
    total = support.sum(axis=1, keepdims=True)
    share = np.where(total > 0, support / np.where(total > 0, total, 1.0), np.nan)
    return -np.einsum("ns,nsd->nd", share, vc)


def _dphase(x: np.ndarray) -> np.ndarray:
    """d/dphase of periodic samples along axis 0 (central differences, cycles⁻¹)."""
    M = x.shape[0]
    return (np.roll(x, -1, axis=0) - np.roll(x, 1, axis=0)) * (M / 2.0)


def plant_root(
    body: BodyModel,
    dofs: np.ndarray,
    heading: np.ndarray,
    foot_weight: np.ndarray,
    root_xy0: np.ndarray,
    points: np.ndarray | None = None,
    fs: float = 120.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Root trajectory (T, 3) that keeps the supporting contact points still.

    foot_weight (T, 2): share of support per foot (sums to 1 where the body is supported).
    Horizontal: each step the root moves by minus the weighted displacement of the contact
    material points relative to the root (in the global frame, so heading changes pivot the
    body about the planted point). Vertical: the weighted soft-lowest point is on the floor;
    where a foot that carries no weight would still go below the floor (gait starting and
    stopping, turns, blends between activities) the body is lifted by a smooth envelope of
    that penetration, so nothing goes through the floor.
    Frames with no support (flight) get NaN root; the caller fills them.
    Returns (root, foot points relative to the root in the global frame (T, 2, 2, 3)).
    """
    P = foot_points(body, dofs) if points is None else points
    G = np.einsum("tij,tskj->tski", yaw_matrix(heading), P)
    c, w = soft_contact(G[..., 2])
    support = foot_weight.sum(axis=1)
    Wn = foot_weight / np.where(support > 0, support, 1.0)[:, None]
    share = Wn[..., None] * w  # (T, 2, 2)
    mid = 0.5 * (share[1:] + share[:-1])
    step = -np.einsum("tsk,tskd->td", mid, np.diff(G[..., :2], axis=0))
    root = np.empty((len(heading), 3))
    root[0, :2] = root_xy0
    root[1:, :2] = root_xy0 + np.cumsum(step, axis=0)
    root[:, 2] = -np.einsum("ts,ts->t", Wn, c)
    below = -(root[:, 2] + G[..., 2].min(axis=(1, 2))) - 0.0005
    below = np.where(support > 0, np.maximum(below, 0.0), 0.0)
    if np.any(below > 0):
        sigma = max(1.0, 0.02 * fs)
        env = maximum_filter1d(below, size=int(4 * sigma) | 1, mode="nearest")
        root[:, 2] += gaussian_filter1d(env, sigma=sigma, mode="nearest")
    root[support <= 0] = np.nan
    return root, G


def smooth_root(
    root: np.ndarray,
    G: np.ndarray,
    fs: float,
    start: np.ndarray | None = None,
    start_velocity: np.ndarray | None = None,
    cutoff: tuple[float, float] | None = None,
) -> np.ndarray:
    """Zero-phase low-pass of a planted root (T, 3), lifted so no foot point goes below the
    floor.

    Planting makes the root a rigid-body consequence of the joint angles: every hand-over of
    the contact (heel → toe, one foot → the other, a turn pivoting about a rolling foot, the
    floor lifts) bends its velocity within a few milliseconds, which a virtual IMU at 120 Hz
    reads as g's. A pelvis does not move like that (its acceleration stays within about ±1 g
    of gravity), so the root keeps only what is below `cutoff` = (horizontal, vertical) Hz
    (default ROOT_CUTOFF_HZ; second-order Butterworth run forwards and backwards, so the gait
    cycle's first harmonics pass unchanged). With `start` (and `start_velocity`) the result
    begins exactly there (the difference fades out with matching rate over ROOT_FADE_TIME),
    so chained blocks join without a jump. The price is a small slip of the stance foot where
    the raw root bent (tests/test_walking.py measures it) and, vertically, the lift (G: foot
    points relative to the root (T, 2, 2, 3)) floating the feet by a millimetre or so where
    the low-pass lowered the root.
    """
    T = len(root)
    out = np.array(root, dtype=float)
    horizontal, vertical = ROOT_CUTOFF_HZ if cutoff is None else cutoff
    for axes, fc in (((0, 1), horizontal), ((2,), vertical)):
        if T >= 16 and fc < 0.45 * fs:
            cols = list(axes)
            out[:, cols] = _lowpass_extrapolated(out[:, cols], fs, fc)
    out = _lift_above_floor(out, G, fs)
    t = np.arange(T) / fs
    x = np.clip(t / ROOT_FADE_TIME, 0.0, 1.0)[:, None]
    fade = 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)  # C² smootherstep
    tau = np.minimum(t, ROOT_FADE_TIME)[:, None]
    target = np.array(root[0], float) if start is None else np.asarray(start, float)
    if start is None:
        target[2] = out[0, 2]  # a fresh block: keep the smoothed height, anchor x/y
    d0 = target - out[0]
    v0 = np.zeros(3)
    if start_velocity is not None and T >= 3:
        v0 = np.asarray(start_velocity, float) - (out[1] - out[0]) * fs
    out += (d0 + v0 * tau) * fade
    # the fade may push a foot into the floor; lift again, leaving the joined start alone
    return _lift_above_floor(out, G, fs, keep_start=start is not None)


def _lowpass_extrapolated(x: np.ndarray, fs: float, cutoff: float) -> np.ndarray:
    """Zero-phase second-order Butterworth low-pass of x (T, C) along time, padded at each
    end with the quadratic that fits its last 0.1 s (position, velocity and acceleration
    carry on, so a root that ends in a ballistic flight or mid-stride is not bent at the
    edge, as odd or even reflection would)."""
    T = len(x)
    n_fit = int(np.clip(round(0.1 * fs), 3, T))
    n_pad = round(3.0 * fs / cutoff)
    u = np.arange(n_fit, dtype=float)
    head = np.polyfit(u, x[:n_fit], 2)  # (3, C), u from the first sample on
    tail = np.polyfit(u, x[T - n_fit :], 2)
    uh = -np.arange(n_pad, 0, -1.0)[:, None]
    ut = (n_fit - 1 + np.arange(1, n_pad + 1.0))[:, None]
    before = head[0] * uh**2 + head[1] * uh + head[2]
    after = tail[0] * ut**2 + tail[1] * ut + tail[2]
    padded = np.concatenate([before, x, after], axis=0)
    sos = butter(2, cutoff, fs=fs, output="sos")
    return sosfiltfilt(sos, padded, axis=0, padlen=0)[n_pad : n_pad + T]


def _lift_above_floor(
    root: np.ndarray, G: np.ndarray, fs: float, keep_start: bool = False
) -> np.ndarray:
    """Raise the root by a smooth envelope of any foot point's penetration of the floor
    (with `keep_start` the lift fades in over 0.1 s from 0 at the first frame)."""
    sigma = max(1.0, 0.025 * fs)
    ramp = np.ones(len(root))
    if keep_start:
        ramp = _smootherstep(np.arange(len(root)) / (0.1 * fs))
    for _ in range(2):
        below = -(root[:, 2] + G[..., 2].min(axis=(1, 2))) - FLOOR_SLACK
        below = np.maximum(below, 0.0)
        if not np.any(below > 0):
            break
        env = maximum_filter1d(below, size=int(4 * sigma) | 1, mode="nearest")
        root = root.copy()
        root[:, 2] += ramp * gaussian_filter1d(env, sigma=sigma, mode="nearest")
    return root


def clear_swing(
    body: BodyModel,
    dofs: np.ndarray,
    phase: np.ndarray,
    stance: float,
    amplitude: np.ndarray,
    sigma: float = 2.0,
) -> np.ndarray:
    """Where gait blends with the standing pose (0 < amplitude < 1: starting and stopping,
    where the blend undoes the template's consistency) raise any foot that dips below the
    support level set by the phase-based weights, plus the swing clearance profile scaled by
    the amplitude (so the requirement, and the correction, fade in and out with the gait
    instead of switching on at some amplitude). The correction is Gaussian-smoothed in time
    (`sigma` samples) so it adds no kinks."""
    rows = (amplitude > 1e-3) & (amplitude < 1.0 - 1e-3)
    if not np.any(rows):
        return dofs
    before = dofs
    W = contact_schedule(phase, stance)
    for _ in range(2):
        _, c, _ = _contact(body, dofs)
        level = np.einsum("nk,nk->n", W, c)
        for k in range(2):
            g = amplitude * clearance_profile(np.mod(phase - 0.5 * k, 1.0), stance)
            dofs = _raise_swing(body, dofs, k, level, g, rows, set(), sigma, iterations=2)
    return before + gaussian_filter1d(dofs - before, sigma, axis=0, mode="nearest")


def contact_point_speed(
    body: BodyModel, t: np.ndarray, dofs: np.ndarray, root: np.ndarray, heading: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal speed (T, 2) m/s of each foot's contact material point (heel/toe weighted by
    the soft minimum of their heights) and that point's height (T, 2) m: the skating measure."""
    P = foot_points(body, dofs)
    G = np.einsum("tij,tskj->tski", yaw_matrix(heading), P) + root[:, None, None, :]
    c, w = soft_contact(G[..., 2])
    v = np.gradient(G[..., :2], t, axis=0)  # (T, 2, 2, 2)
    speed = np.linalg.norm(np.einsum("tsk,tskd->tsd", w, v), axis=-1)
    return speed, c
