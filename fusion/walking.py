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
   - mid-stance foot flat: the ankle takes out the sole's pitch between loading response and
     heel off;
   - double-support closure: the contact points of both feet keep their offset through
     double support (velocity mismatch integrated from heel strike, height gap closed),
     split 70/30 between trailing and leading leg by damped least squares over hip
     flexion/adduction/rotation, knee flexion and ankle dorsiflexion, faded out before heel
     strike and after toe off with cubic Hermite tapers: both feet stay planted and the
     leading heel meets the floor exactly at heel strike (φ = 0 or ½);
   - swing clearance: heel and toe of the swing foot are raised (same solver) to at least the
     clearance profile (SWING_CLEARANCE in mid-swing, 0 at toe off and heel strike);
   - toe off is labelled where the template's trailing foot actually leaves the floor.
   The rigid foot pivots on its toe tip (our skeleton has no toe joint), so push-off
   plantarflexion comes out some 5–10° smaller than Plug-in Gait's, whose foot excludes the
   toes.
3. Timing: cadence comes from the speed class and leg length (Schwartz's classes are
   dimensionless speeds v* = v/√(gL); we pick cadence f* = √(v*/WALK_RATIO)·√(g/L) and let
   speed emerge from the planted feet).
4. Planting (`plant_root`): the root's horizontal motion is minus the motion of the support's
   contact material points relative to the root (heel/toe weighted by a soft minimum of
   their heights, feet by the phase-based weights that hand over through double support);
   root height puts that contact point on the floor; where a foot without weight would still
   dip below the floor (gait starting and stopping) the body is lifted smoothly. Heading
   integrates the turn rate; activities.py gates turning to single support, where the stance
   foot pivots about its contact point.

Everything per frame is vectorised; only per-stride bookkeeping loops in Python.

Skating (tests/test_walking.py): the stance contact point's horizontal speed stays below
SKATING_TOLERANCE in single support (measured ≈ 0.001 m/s at the 95th percentile); in double
support the closure is approximate (95th percentile ≈ 0.04 m/s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

from fusion.angles import local_rotations, yaw_matrix
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


def contact_schedule(phase: np.ndarray, stance: float) -> np.ndarray:
    """Support weights (N, 2) for l/r: 1 in single support, blended through double support.

    With stance < 0.5 (running) there is a flight phase where both are 0.
    """
    phase = np.asarray(phase, float)
    out = np.zeros((*phase.shape, 2))
    for k, offset in enumerate((0.0, 0.5)):
        u = np.mod(phase - offset, 1.0)  # this side's own cycle
        if stance > 0.5:
            ds = stance - 0.5
            rise = _smoothstep(u / ds)  # loading response: weight comes in
            fall = 1.0 - _smoothstep((u - 0.5) / ds)  # pre-swing: weight goes out
            out[..., k] = np.where(
                u < ds, rise, np.where(u < 0.5, 1.0, np.where(u < stance, fall, 0.0))
            )
        else:
            out[..., k] = (u < stance).astype(float)
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
            dofs[:, D[f"knee_flexion_{s}"]] = k - 0.65 * np.maximum(k - 15.0, 0.0) * sw
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
#: Share of a double-support closure taken by the trailing (flexed) leg; the rest by the lead.
CLOSURE_SHARE = 0.7


def _contact(body: BodyModel, dofs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foot points (N,2,2,3), soft-lowest height per foot (N,2), heel/toe weights (N,2,2)."""
    P = foot_points(body, dofs)
    c, w = soft_contact(P[..., 2])
    return P, c, w


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


def _clearance_profile(u: np.ndarray, stance: float) -> np.ndarray:
    """Minimum height of a swing foot's points over the floor: 0 at toe off and heel strike,
    rising/falling at 0.15/0.12 m per cycle, capped at SWING_CLEARANCE; 0 in stance."""
    since_to = np.clip(u - stance, 0.0, None)
    to_hs = np.clip(1.0 - u, 0.0, None)
    g = np.minimum(SWING_CLEARANCE, np.minimum(0.15 * since_to, 0.12 * to_hs))
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


def _make_consistent(
    body: BodyModel, dofs: np.ndarray, phase: np.ndarray, stance: float, frozen: set[str]
) -> np.ndarray:
    """Double-support closure and swing clearance on the template grid (see module doc).

    Closure: over each double support the offset between the trailing foot's contact point
    and the leading heel must stay what it is at heel strike, with no vertical gap. The
    mismatch m(v) accumulated since heel strike is split between the feet (the trailing,
    flexed leg takes CLOSURE_SHARE of it), and faded out before heel strike and after toe off
    with cubic Hermite tapers. Clearance: in swing the foot's lowest point is raised to at
    least g(u), which is 0 at toe off and heel strike. Repeated, since each correction moves
    the floor the other one is measured from.
    """
    M = len(phase)
    ds = stance - 0.5
    taper = 0.10  # cycles over which the closure fades outside double support
    dofs = _foot_flat(body, dofs, phase, stance, frozen)
    for _ in range(4):
        P, c, w = _contact(body, dofs)
        pc = np.einsum("nsk,nskd->nsd", w, P)  # contact point per foot
        vc = np.einsum("nsk,nskd->nsd", w, _dphase(P))
        delta = np.zeros((M, 2, 3))
        for lead in range(2):
            trail = 1 - lead
            order = np.argsort(np.mod(phase - 0.5 * lead, 1.0))
            v = np.mod(phase[order] - 0.5 * lead, 1.0)  # cycles since the lead heel strike
            in_ds = v < ds
            mis = (vc[order, lead] - vc[order, trail]) / M
            m = np.zeros((M, 3))
            m[1:] = np.cumsum(0.5 * (mis[1:] + mis[:-1]) * in_ds[1:, None], axis=0)
            m[:, 2] = c[order, lead] - c[order, trail]  # vertical: close the height gap
            corr = np.where(in_ds[:, None], m, 0.0)
            last = np.flatnonzero(in_ds)[-1]
            after = (v > v[last]) & (v < v[last] + taper)
            corr[after] = _hermite_fade(
                m[last], (m[last] - m[last - 1]) * M, v[after] - v[last], taper
            )
            before = v > 1.0 - taper
            corr[before] = _hermite_fade(m[0], (m[1] - m[0]) * M, 1.0 - v[before], taper, -1.0)
            delta[order, trail] += CLOSURE_SHARE * corr
            delta[order, lead] -= (1.0 - CLOSURE_SHARE) * corr
        for k in range(2):
            rows = np.any(np.abs(delta[:, k]) > 1e-6, axis=1)
            if np.any(rows):
                target = pc[:, k] + delta[:, k]
                dofs = _solve_foot(body, dofs, k, target, np.ones(3, bool), rows, frozen, w[:, k])
        _, c, _ = _contact(body, dofs)
        for k in range(2):
            u = np.mod(phase - 0.5 * k, 1.0)
            g = _clearance_profile(u, stance)
            dofs = _raise_swing(body, dofs, k, c[:, 1 - k], g, u >= stance, frozen, 1.0)
    return dofs


def _foot_flat(
    body: BodyModel, dofs: np.ndarray, phase: np.ndarray, stance: float, frozen: set[str]
) -> np.ndarray:
    """Mid-stance foot flat: the ankle takes out the foot's pitch between loading response
    and heel off (Plug-in Gait's foot axis is not our sole line, so a few degrees differ)."""
    dofs = dofs.copy()
    scale = stance / 0.61
    for _ in range(2):
        P = foot_points(body, dofs)
        for k, s in enumerate(SIDES):
            name = f"ankle_dorsiflexion_{s}"
            if name in frozen or f"toe_walking_{s}" in frozen:
                continue
            u = np.mod(phase - 0.5 * k, 1.0) / scale
            win = _smoothstep((u - 0.06) / 0.06) * (1.0 - _smoothstep((u - 0.30) / 0.10))
            d = P[:, k, 1] - P[:, k, 0]
            pitch = np.degrees(np.arcsin(d[:, 2] / np.linalg.norm(d, axis=1)))
            dofs[:, DOF_INDEX[name]] -= win * pitch
    return dofs


def _hermite_fade(
    value: np.ndarray, slope: np.ndarray, dist: np.ndarray, width: float, direction: float = 1.0
) -> np.ndarray:
    """Cubic that starts at value with slope (per cycle, along `direction`) and reaches 0 flat."""
    x = np.clip(dist / width, 0.0, 1.0)[:, None]
    h00 = 2 * x**3 - 3 * x**2 + 1
    h10 = x**3 - 2 * x**2 + x
    return h00 * value + h10 * width * direction * slope


def _make_consistent_running(
    body: BodyModel, dofs: np.ndarray, phase: np.ndarray, stance: float
) -> np.ndarray:
    """Swing clearance for running: while one foot stands, the other's heel and toe stay at
    least SWING_CLEARANCE above it (flight phases have no floor to clear)."""
    for _ in range(3):
        _, c, _ = _contact(body, dofs)
        for k in range(2):
            other_stands = np.mod(phase - 0.5 * (1 - k), 1.0) < stance
            g = np.full(len(phase), SWING_CLEARANCE)
            dofs = _raise_swing(body, dofs, k, c[:, 1 - k], g, other_stands, set(), 2.0)
    return dofs


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


def clear_swing(
    body: BodyModel,
    dofs: np.ndarray,
    phase: np.ndarray,
    stance: float,
    rows: np.ndarray,
    sigma: float = 2.0,
) -> np.ndarray:
    """On selected frames (gait starting and stopping, where blending toward the standing
    pose undoes the template's consistency) raise any foot that dips below the support level
    set by the phase-based weights, plus the swing clearance profile for a swinging foot."""
    W = contact_schedule(phase, stance)
    for _ in range(2):
        _, c, _ = _contact(body, dofs)
        level = np.einsum("nk,nk->n", W, c)
        for k in range(2):
            g = _clearance_profile(np.mod(phase - 0.5 * k, 1.0), stance)
            dofs = _raise_swing(body, dofs, k, level, g, rows, set(), sigma, iterations=2)
    return dofs


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
