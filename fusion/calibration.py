"""Sensor-to-segment calibration from a standing pose and a few walking steps (6-D IMUs).

What has to be found, per sensor i: its mounting on the segment (a rotation: sensor axes in
segment axes, the same thing as `fusion.imu_sim.ImuPlacement.mounting`) and the yaw ψ_i that
turns the earth frame of that sensor's orientation filter into the subject's frame. Without
magnetometers every filter has its own, arbitrary heading, so ψ_i is per sensor:

    R_segment(t) = Yaw(ψ_i) · R_filter_i(t) · mountingᵢᵀ

Method ("stance + walk" functional calibration):

1. **Standing still** (≥ 1 s) in an assumed stance (`standing_pose_dofs`: by default the
   typical one — pelvis tilted forward by the normative mean, thighs and trunk vertical, feet
   turned out by the normative mean foot progression; or "neutral": every segment frame = the
   subject frame). The mean specific force is gravity: each segment's up direction in sensor
   coordinates; its norm is the sensor's g. The mean gyro reading is the gyro bias.
2. **Walking** (≈ 4 strides, any direction):
   - limbs (thighs, shanks, feet, upper arms, forearms): the segment's y axis (flexion axis)
     is the principal axis of its angular velocity (sagittal rotation dominates walking).
     Sign: a thigh's and a shank's largest rate is the forward swing, a rotation about −y; a
     foot rotates in phase with its shank, an upper arm with the opposite thigh (arm swing), a
     forearm with its upper arm. With up and y the mounting follows (TRIAD), and ψ from the
     standing pose.
   - pelvis, sternum, head (no dominant rotation axis) get ψ from the limbs: during steady
     walking the position of any body point relative to any other is periodic, so the mean
     velocity of every sensor is the same vector — the walking velocity, gait initiation
     included — up to periodic relative motion. Each sensor's
     horizontal acceleration is integrated (orientation propagated by the gyro alone from the
     standing pose, so the sustained acceleration of gait initiation is not taken for tilt),
     freed of a linear drift (tilt error); the yaw that best maps one sensor's velocity
     trajectory onto another's (2-D Procrustes over the walk) is the yaw between their
     filters' earth frames. Errors of the common motion (e.g. an aliased accelerometer) are
     common and cancel. The
     anchors are the arm sensors (close to the trunk), else the thighs, else the shanks; the
     mounting then follows from the standing pose.

Assumptions, and what breaks when they fail: the standing pose is the assumed stance (an
offset there becomes a constant angle offset); the walk is steady and roughly straight over
the calibration window (a turn still works for the limbs, the relative yaws degrade); sagittal
rotation dominates the limbs (it does in gait, not in a standing shuffle); the arms swing
(without arm swing the arms stay uncalibrated — their angles NaN — and the trunk takes its
heading from the thighs, which needs accelerometers that do not alias). After calibration
each filter's heading drifts independently (residual gyro bias); the long-axis angles (hip
rotation, foot progression) suffer first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from fusion.angles import local_rotations
from fusion.orientation import quat_multiply, quat_to_matrix
from fusion.skeleton import DOF_INDEX, DOFS, GRAVITY, PARENT, SEGMENT_INDEX, SEGMENTS, SIDES

#: segments calibrated from the principal axis of their angular velocity
FLEXION_SEGMENTS: tuple[str, ...] = tuple(
    f"{s}_{side}" for side in SIDES for s in ("thigh", "shank", "foot", "upperarm", "forearm")
)
#: segments whose filter heading comes from others' through the common walking velocity
RELATIVE_SEGMENTS: tuple[str, ...] = ("pelvis", "sternum", "head")
#: anchors for RELATIVE_SEGMENTS, in order of preference: the arms first, because the common
#: velocity is best shared by sensors near the trunk (a leg's own accelerations are large and
#: sharp: at 60 Hz they alias unless the IMU low-passes them)
ANCHORS: tuple[tuple[str, ...], ...] = (
    ("upperarm_l", "upperarm_r", "forearm_l", "forearm_r"),
    ("thigh_l", "thigh_r"),
    ("shank_l", "shank_r"),
)


def standing_pose_dofs(kind: str = "typical") -> np.ndarray:
    """Joint angles (len(DOFS),) deg assumed for the calibration stance.

    "neutral": all zero (every segment frame = the subject frame). "typical": how people
    stand in the clinical conventions of fusion/angles.py: the pelvis tilted forward by the
    normative mean pelvis tilt (Schwartz 2008 mean over the gait cycle, ≈ 11.6°: the
    ASIS–PSIS line is not horizontal even when standing), thighs and trunk vertical (hip
    flexion = tilt, trunk flexion = −tilt), knees and ankles straight, feet turned out by the
    normative mean foot progression (≈ −7.4°), arms hanging. A subject who stands
    differently from the assumed pose gets the difference as a constant angle offset.
    """
    d = np.zeros(len(DOFS))
    if kind == "neutral":
        return d
    if kind != "typical":
        raise ValueError(f"standing pose {kind!r}: 'typical' or 'neutral'")
    from fusion.normative import CHANNEL_INDEX, load_default_normative

    mean = load_default_normative().periodic_mean("Free")
    tilt = float(mean[CHANNEL_INDEX["pelvis_tilt"]].mean())
    fp = float(mean[CHANNEL_INDEX["foot_progression"]].mean())
    d[DOF_INDEX["pelvis_tilt"]] = tilt
    d[DOF_INDEX["trunk_flexion"]] = -tilt
    for side in SIDES:
        d[DOF_INDEX[f"hip_flexion_{side}"]] = tilt
        d[DOF_INDEX[f"ankle_rotation_{side}"]] = fp
    return d


@lru_cache(maxsize=4)
def stance_rotations(kind: str = "typical") -> np.ndarray:
    """standing_rotations(standing_pose_dofs(kind)), computed once per kind (it reads the
    normative curves: tens of ms that a calibration tick should not pay)."""
    R = standing_rotations(standing_pose_dofs(kind))
    R.setflags(write=False)
    return R


def standing_rotations(dofs: np.ndarray) -> np.ndarray:
    """Segment orientations (13, 3, 3) in the subject frame (heading 0) of a pose (DOFS)."""
    local = local_rotations(np.asarray(dofs, float)[None])
    R = np.empty((len(SEGMENTS), 3, 3))
    from fusion.angles import JOINT_OF_SEGMENT, JOINTS

    done: set[str] = set()
    while len(done) < len(SEGMENTS):
        for seg in SEGMENTS:
            joint = JOINT_OF_SEGMENT[seg]
            parent = JOINTS[joint][0]
            if seg in done or (parent is not None and parent not in done):
                continue
            Rl = local[joint][0]
            R[SEGMENT_INDEX[seg]] = Rl if parent is None else R[SEGMENT_INDEX[parent]] @ Rl
            done.add(seg)
    return R


def _triad(
    a_src: np.ndarray, b_src: np.ndarray, a_dst: np.ndarray, b_dst: np.ndarray
) -> np.ndarray:
    """Rotation M with M a_src = a_dst exactly and M b_src as close to b_dst as possible
    (vectors (..., 3) → rotations (..., 3, 3))."""

    def frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        e1 = _unit(a)
        e2 = _unit(_cross(a, b))
        return np.stack([e1, e2, _cross(e1, e2)], axis=-1)

    return frame(a_dst, b_dst) @ np.swapaxes(frame(a_src, b_src), -1, -2)


@dataclass
class Calibration:
    """Result for the 13 sensors (SEGMENTS order). `ok` False → that segment is unusable."""

    mounting: np.ndarray  # (13, 3, 3) sensor axes in segment axes (v_seg = mounting @ v_sensor)
    earth_yaw: np.ndarray  # (13,) rad: ψ_i, filter earth frame → subject frame
    gyro_bias: np.ndarray  # (13, 3) rad/s, from the standing phase
    gravity: np.ndarray  # (13,) m/s², |specific force| at rest per sensor
    ok: np.ndarray  # (13,) bool
    notes: dict[str, str] = field(default_factory=dict)  # segment -> why it failed / quality

    def segment_rotations(self, q: np.ndarray) -> np.ndarray:
        """Filter quaternions (..., 13, 4) → segment orientations (..., 13, 3, 3) in the subject
        frame; NaN for segments that are not calibrated."""
        R = quat_to_matrix(q)
        c, s = np.cos(self.earth_yaw), np.sin(self.earth_yaw)
        Y = np.zeros((len(SEGMENTS), 3, 3))
        Y[:, 0, 0], Y[:, 0, 1], Y[:, 1, 0], Y[:, 1, 1], Y[:, 2, 2] = c, -s, s, c, 1.0
        out = np.einsum("sij,...sjk,slk->...sil", Y, R, self.mounting)
        out[..., ~self.ok, :, :] = np.nan
        return out


@dataclass(frozen=True)
class CalibrationConfig:
    min_flexion_ratio: float = 2.0  # principal/second eigenvalue of the gyro second moment
    min_rate: float = 0.5  # rad/s: RMS angular rate a limb segment must reach while walking
    min_correlation: float = 0.3  # |corr| of rates used to fix an axis sign
    standing_pose: str = "typical"  # the assumed calibration stance (standing_pose_dofs)
    min_velocity_fit: float = 0.5  # share of a trunk sensor's velocity its anchors explain
    #: the walk must show a stride period (fusion.calibration.stride_period) in the thigh or
    #: shank rate, and the legs must not move together (`max_bilateral_correlation`); without
    #: that the whole capture is rejected (not a walk)
    require_stride: bool = True
    #: largest correlation of the left and right thighs' (else shanks') flexion rates in a
    #: walk: walking alternates the legs (negative), sit-to-stand and squats move them as one
    max_bilateral_correlation: float = 0.3


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt(np.sum(v * v, axis=-1, keepdims=True))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a × b over the last axis (np.cross costs ~20x more on 3-vectors)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def standing_estimates(
    gyr: np.ndarray, acc: np.ndarray, dt: float, edge_s: float = 0.5
) -> tuple[np.ndarray, ...]:
    """Standing window (T, 13, 3) each → (up direction in sensor frame over the window's last
    `edge_s` (13, 3), gyro bias (13, 3), g per sensor (13,)); NaN rows where a sensor had no
    data.

    Nobody stands perfectly still: a 1° sway or a drifting arm over a couple of seconds turns
    the sensor by as much as a typical gyro bias (0.01 rad/s). So the bias is the mean rate
    minus the rotation the accelerometer saw — the tilt between the gravity directions over
    the first and the last `edge_s` — on the synthetic stance that is 1–3 mrad/s off for
    the legs and pelvis where the plain mean is 6–13. The rotation about the vertical is not
    observable and is taken as none (the plain mean there).
    """
    T = len(acc)
    k = max(1, min(T // 3, round(edge_s / dt)))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN sensors: NaN rows
        u0 = _unit(np.nanmean(acc[:k], axis=0))
        up = _unit(np.nanmean(acc[-k:], axis=0))
        g = np.nanmean(np.linalg.norm(acc, axis=-1), axis=0)
        span = (T - k) * dt  # between the centres of the two edge windows
        phi = np.nanmean(gyr[k // 2 : T - k // 2], axis=0) * span  # gyro-integrated rotation
        n_ok = np.isfinite(gyr).all(axis=-1).sum(axis=0)
    # a world-fixed vector seen from a body turning by φ: u1 − u0 = u0 × φ ⇒ φ⊥ = (u1 − u0) × u0
    phi_tilt = _cross(up - u0, u0)  # ⊥ u0: the vertical part of the bias stays the mean
    bias = (phi - phi_tilt) / span if span > 0 else np.nanmean(gyr, axis=0)
    bias = np.where((n_ok >= 3)[:, None], bias, np.nan)
    return up, bias, g


def flexion_axes(gyr: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal axis of angular velocity (sign unresolved), made orthogonal to z.

    gyr (T, S, 3), z (S, 3) → (axis (S, 3), eigenvalue ratio λ1/λ2 (S,), RMS rate (S,)).
    """
    S = len(z)
    out = np.full(z.shape, np.nan)
    ratio = np.zeros(S)
    rms = np.zeros(S)
    row_ok = np.isfinite(gyr).all(axis=-1)  # (T, S)
    count = row_ok.sum(axis=0)
    use = (count >= 10) & np.isfinite(z).all(axis=1)
    if not use.any():
        return out, ratio, rms
    zz = np.where(use[:, None], z, 0.0)
    w = np.where(row_ok[..., None], gyr, 0.0)
    # remove the long-axis component: the flexion axis is perpendicular to z
    w = w - np.einsum("ts,sj->tsj", np.einsum("tsj,sj->ts", w, zz), zz)
    M = np.einsum("tsi,tsj->sij", w, w)[use] / count[use, None, None]
    lam, vec = np.linalg.eigh(M)  # all sensors at once, ascending eigenvalues
    v = vec[:, :, 2]
    zu = zz[use]
    out[use] = _unit(v - np.sum(v * zu, axis=1, keepdims=True) * zu)
    ratio[use] = lam[:, 2] / np.maximum(lam[:, 1], 1e-12)
    rms[use] = np.sqrt(np.maximum(lam[:, 2], 0.0))
    return out, ratio, rms


def fill_gaps(x: np.ndarray, period: int = 0) -> np.ndarray:
    """Fill missing (non-finite) samples along axis 0, per channel: with the sample one
    `period` (samples) earlier where there is one (gait repeats every stride, and a linear
    bridge over a 0.2 s gap misses a whole acceleration peak), else linearly; channels with
    fewer than two samples stay NaN."""
    x = np.array(x, float, copy=True)
    if period > 0:
        for i in np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)):
            if i >= period:
                bad = ~np.isfinite(x[i])
                x[i][bad] = x[i - period][bad]
    flat = x.reshape(len(x), -1)
    idx = np.arange(len(x))
    for c in range(flat.shape[1]):
        ok = np.isfinite(flat[:, c])
        if ok.all() or ok.sum() < 2:
            continue
        flat[~ok, c] = np.interp(idx[~ok], idx[ok], flat[ok, c])
    return x


def stride_period(rate: np.ndarray, dt: float, lo: float = 0.6, hi: float = 2.2) -> float:
    """Stride period (s) of a periodic rate signal (T,) from its autocorrelation peak in
    [lo, hi] s; NaN when the signal is too short or not periodic."""
    r = fill_gaps(rate)
    r = r[np.isfinite(r)]
    n_hi = int(hi / dt)
    if len(r) < 2 * n_hi:
        n_hi = len(r) // 2
    n_lo = int(lo / dt)
    if n_hi <= n_lo + 2:
        return float("nan")
    r = r - r.mean()
    ac = np.array([r[: len(r) - k] @ r[k:] / (len(r) - k) for k in range(n_lo, n_hi)])
    k = int(np.argmax(ac))
    if ac[k] <= 0.3 * (r @ r / len(r)):
        return float("nan")
    return (n_lo + k) * dt


def velocity_trajectories(
    gyr: np.ndarray, acc: np.ndarray, q0: np.ndarray, dt: float, period: float = float("nan")
) -> np.ndarray:
    """Each sensor's horizontal velocity over a walk (T, S) as complex numbers x + iy, in its
    own filter earth frame, linearly detrended.

    gyr, acc (T, S, 3) (gyro bias removed) from the first sample of the walk; q0 (S, 4): each
    filter's orientation just before it. The orientation is propagated by the gyro alone (a
    tilt filter would take the sustained acceleration of gait initiation for tilt); gaps are
    filled from one `period` (s, a stride) earlier; the acceleration is integrated; a linear
    trend (the drift a constant tilt error causes, different in every sensor) is removed. What
    remains is dominated by the motion all sensors share: it differs between two sensors by
    the yaw between their earth frames (plus their periodic relative motion).
    """
    n_per = round(period / dt) if np.isfinite(period) else 0
    g = fill_gaps(gyr, n_per)
    q = strapdown(np.where(np.isfinite(q0), q0, (1.0, 0.0, 0.0, 0.0)), g, dt)
    a = np.einsum("tsij,tsj->tsi", quat_to_matrix(q), fill_gaps(acc, n_per))[..., :2]
    a = np.where(np.isfinite(a), a, 0.0)
    v = np.cumsum(a[..., 0] + 1j * a[..., 1], axis=0) * dt
    X = np.stack([np.ones(len(v)), np.arange(len(v)) * dt], axis=1)
    coef, *_ = np.linalg.lstsq(X, v, rcond=None)
    return v - X @ coef


def strapdown(q0: np.ndarray, gyr: np.ndarray, dt: float) -> np.ndarray:
    """Orientations (T, S, 4) from q0 (S, 4) turned by the gyro alone (T, S, 3) rad/s.

    The same numbers as `OrientationFilter(gain=0, integration="exact")` stepped sample by
    sample (each step rotates by the mean of the previous and the new reading, the first by
    the first reading; a non-finite reading turns nothing), but as one parallel prefix
    product of the per-sample rotations: log2(T) vectorised quaternion products instead of T
    filter steps (≈ 1 ms instead of ≈ 100 ms for a 5 s walk of 13 sensors).
    """
    w = np.where(np.isfinite(gyr), gyr, 0.0)
    mid = w.copy()
    mid[1:] = 0.5 * (w[1:] + w[:-1])
    theta = np.linalg.norm(mid, axis=-1) * dt
    dq = np.empty((*mid.shape[:-1], 4))
    dq[..., 0] = np.cos(0.5 * theta)
    dq[..., 1:] = (0.5 * dt * np.sinc(0.5 * theta / np.pi))[..., None] * mid
    step = 1
    while step < len(dq):  # Hillis–Steele scan: P[k] = dq[0] ⊗ … ⊗ dq[k]
        dq[step:] = quat_multiply(dq[:-step], dq[step:])
        step *= 2
    q = quat_multiply(np.broadcast_to(q0, dq.shape), dq)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def relative_yaw(v: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Yaw δ (rad) with v ≈ e^{iδ}·ref (2-D Procrustes over time) and the fit quality: the
    share of v's energy the rotated ref explains (1 = identical up to the yaw)."""
    ok = np.isfinite(v) & np.isfinite(ref)
    c = np.sum(v[ok] * np.conj(ref[ok]))
    den = np.sqrt(np.sum(np.abs(v[ok]) ** 2) * np.sum(np.abs(ref[ok]) ** 2))
    return float(np.angle(c)), float(np.abs(c) / den) if den > 0 else 0.0


def calibrate(
    standing_gyr: np.ndarray,
    standing_acc: np.ndarray,
    q_standing: np.ndarray,
    walk_gyr: np.ndarray,
    walk_acc: np.ndarray,
    dt: float,
    config: CalibrationConfig | None = None,
) -> Calibration:
    """Calibrate the 13 sensors (SEGMENTS order).

    standing_gyr/acc (Ts, 13, 3): a still standing window; q_standing (13, 4): each
    orientation filter's quaternion at its end; walk_gyr/acc (Tw, 13, 3): the walk that follows
    at once (raw: the standing gyro bias is removed here), one sample every `dt` s. NaN samples
    (missing sensors) are bridged or ignored; a sensor without enough data comes out not ok,
    with the reason in `notes`.
    """
    cfg = config or CalibrationConfig()
    n = len(SEGMENTS)
    idx = SEGMENT_INDEX
    z, bias, g = standing_estimates(standing_gyr, standing_acc, dt)
    bias = np.where(np.isfinite(bias), bias, 0.0)
    wg = walk_gyr - bias[None]
    ok = np.all(np.isfinite(z), axis=1) & np.all(np.isfinite(q_standing), axis=1)
    notes: dict[str, str] = {s: "no standing data" for s in SEGMENTS if not ok[idx[s]]}
    R_stand = quat_to_matrix(np.where(np.isfinite(q_standing), q_standing, (1.0, 0, 0, 0)))
    R0 = stance_rotations(cfg.standing_pose)  # segment → subject
    e_y, e_z = np.eye(3)[1], np.eye(3)[2]
    mounting = np.tile(np.eye(3), (n, 1, 1))
    yaw = np.zeros(n)

    def drop(seg: str, why: str) -> None:
        ok[idx[seg]] = False
        notes[seg] = why

    def reject(why: str) -> None:
        """Not a walk: nothing from this capture is trusted."""
        for seg in SEGMENTS:
            if ok[idx[seg]]:
                drop(seg, why)

    # -- limbs: flexion axis, sign, mounting, filter heading -----------------------------------
    axes, ratio, rms = flexion_axes(wg, z)
    rate: dict[str, np.ndarray] = {}
    for seg in FLEXION_SEGMENTS:
        i = idx[seg]
        if not ok[i]:
            continue
        if rms[i] < cfg.min_rate or ratio[i] < cfg.min_flexion_ratio:
            drop(seg, f"no dominant flexion axis (rms {rms[i]:.2f} rad/s, ratio {ratio[i]:.1f})")
            continue
        rate[seg] = wg[:, i] @ axes[i]
    sign: dict[str, float] = {}

    def follow(seg: str, refs: tuple[str, ...]) -> None:
        """seg rotates in phase with the first calibrated ref (rates about the flexion axes
        correlate positively)."""
        if seg not in rate:
            return
        ref = next((r for r in refs if r in sign), None)
        if ref is None:
            drop(seg, f"sign needs one of {refs} calibrated")
            return
        both = np.isfinite(rate[seg]) & np.isfinite(rate[ref])
        c = np.corrcoef(rate[seg][both], rate[ref][both])[0, 1] * sign[ref]
        if not abs(c) >= cfg.min_correlation:
            drop(seg, f"rate barely correlates with {ref} ({c:+.2f})")
            return
        sign[seg] = 1.0 if c > 0 else -1.0
        notes[seg] = f"sign from {ref} (corr {abs(c):.2f})"

    for side in SIDES:
        thigh, shank = f"thigh_{side}", f"shank_{side}"
        for seg in (thigh, shank):
            if seg in rate:
                lo, hi = np.nanpercentile(rate[seg], [1.0, 99.0])
                sign[seg] = -1.0 if hi > -lo else 1.0  # the forward swing is about −y
                notes[seg] = f"sign from swing peak ({min(lo, -hi):.1f} rad/s)"
        if thigh in sign and shank in sign:
            # the shank's swing peak is unmistakable, the thigh's is not (fast gait and
            # running retract the thigh as fast as they swing it: measured on the real qmt
            # recording): the thigh's sign is the one that keeps the knee flexed. Forward
            # angle φ = −sign·∫rate; knee flexion κ = φ_thigh − φ_shank (from the stance)
            phi_t = np.cumsum(np.nan_to_num(rate[thigh])) * dt
            phi_s = -sign[shank] * np.cumsum(np.nan_to_num(rate[shank])) * dt
            p5 = {sg: float(np.percentile(-sg * phi_t - phi_s, 5.0)) for sg in (1.0, -1.0)}
            best = max(p5, key=lambda sg: p5[sg])
            if best != sign[thigh]:
                notes[thigh] = "sign from the knee staying flexed (swing peak disagreed)"
            sign[thigh] = best
        follow(f"foot_{side}", (shank, thigh))
    for side, other in zip(SIDES, SIDES[::-1], strict=True):
        # an arm swings forward with the opposite leg; a forearm with its upper arm
        follow(f"upperarm_{side}", (f"thigh_{other}", f"shank_{other}"))
        follow(f"forearm_{side}", (f"upperarm_{side}",))
    if sign:  # all limb mountings in one batched TRIAD
        segs = list(sign)
        ii = np.array([idx[seg] for seg in segs])
        y = np.array([sign[seg] for seg in segs])[:, None] * axes[ii]
        # up ↔ the segment's up in the stance; the rotation axis ↔ the joint's flexion axis,
        # which is the parent's y (Y-X-Z Cardan: a toed-out foot flexes about the shank's y)
        parent = np.stack([R0[idx[PARENT[seg]]] if PARENT[seg] else np.eye(3) for seg in segs])
        R0t = np.swapaxes(R0[ii], -1, -2)
        b_dst = (R0t @ (parent @ e_y)[..., None])[..., 0]
        mounting[ii] = _triad(z[ii], y, R0t @ e_z, b_dst)
    for seg in sign:
        i = idx[seg]
        D = R0[i] @ mounting[i] @ R_stand[i].T  # filter earth frame → subject frame (a yaw)
        yaw[i] = np.arctan2(D[1, 0], D[0, 0])
        notes[seg] += f", axis ratio {ratio[i]:.0f}"
    for seg in FLEXION_SEGMENTS:
        if seg not in sign and ok[idx[seg]]:
            drop(seg, notes.get(seg, "not calibrated"))

    if cfg.require_stride and (
        why := _legs_together(rate, sign, cfg.max_bilateral_correlation, notes)
    ):
        reject(why)
    # -- pelvis, sternum, head: filter heading from the common walking velocity --------------
    legs = [rate[k] for k in ("thigh_l", "thigh_r", "shank_l", "shank_r") if k in sign]
    period = stride_period(legs[0], dt) if legs else float("nan")
    if cfg.require_stride and legs and not np.isfinite(period):
        # sitting down, standing up, a shuffle: sagittal leg rotation without a gait cycle
        # gives flexion axes, but the stance assumptions and the common walking velocity do
        # not hold; nothing from this capture is trusted
        reject("no stride in the walk (leg rates not periodic at 0.6–2.2 s): not walking")
    anchors: tuple[str, ...] = ()
    for group in ANCHORS:
        anchors = tuple(a for a in group if a in sign)
        if anchors:
            break
    # only the sensors the relative headings need (the strapdown is the costly part)
    need = [idx[s] for s in (*RELATIVE_SEGMENTS, *anchors) if ok[idx[s]]]
    V = np.full((len(wg), n), np.nan, complex)
    if need and any(ok[idx[s]] for s in RELATIVE_SEGMENTS):
        V[:, need] = velocity_trajectories(
            wg[:, need], walk_acc[:, need], q_standing[need], dt, period
        )
    for seg in RELATIVE_SEGMENTS:
        i = idx[seg]
        if not ok[i]:
            continue
        if not anchors:
            drop(seg, "no calibrated limb sensor to take the heading from")
            continue
        fits = [relative_yaw(V[:, i], V[:, idx[a]]) for a in anchors]
        quality = float(np.mean([f[1] for f in fits]))
        if quality < cfg.min_velocity_fit:
            drop(seg, f"its velocity does not match {'+'.join(anchors)}' (fit {quality:.2f})")
            continue
        # u_i = Yaw(δ) u_a for any horizontal vector, so ψ_i = ψ_a − δ
        psi = np.array([yaw[idx[a]] - f[0] for a, f in zip(anchors, fits, strict=True)])
        yaw_i = float(np.angle(np.mean(np.exp(1j * psi))))
        S0 = _yaw_matrix(yaw_i) @ R_stand[i]  # sensor → subject frame, standing
        S0 = _triad(z[i], S0.T @ np.eye(3)[0], e_z, np.eye(3)[0])  # keep the measured up
        mounting[i] = R0[i].T @ S0
        D = R0[i] @ mounting[i] @ R_stand[i].T
        yaw[i] = np.arctan2(D[1, 0], D[0, 0])
        notes[seg] = f"heading from {'+'.join(anchors)} via walking velocity (fit {quality:.2f})"
    return Calibration(
        mounting=mounting,
        earth_yaw=yaw,
        gyro_bias=bias,
        gravity=np.where(np.isfinite(g), g, GRAVITY),
        ok=ok,
        notes=notes,
    )


def _legs_together(
    rate: dict[str, np.ndarray], sign: dict[str, float], most: float, notes: dict[str, str]
) -> str | None:
    """Why the capture is not a walk if the left and right legs flex in step (their rates'
    correlation over `most`), else None (the correlation goes into the legs' notes). A walk
    alternates them; a capture of sit-to-stand or squats has periodic, sagittal leg rates as
    a walk has, and a thigh calibrated on it reads hip flexion some 70° off (the evaluation's
    sit_to_stand and squat clips: 39° and 41° lower-limb RMSE before this rule)."""
    pair = next(
        ((f"{p}_l", f"{p}_r") for p in ("thigh", "shank") if f"{p}_l" in sign and f"{p}_r" in sign),
        None,
    )
    if pair is None:
        return None
    a, b = (sign[seg] * rate[seg] for seg in pair)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3:
        return None
    c = float(np.corrcoef(a[both], b[both])[0, 1])
    if c > most:
        return f"the legs move together ({pair[0][:-2]} rates correlate {c:+.2f}): not walking"
    for seg in pair:
        notes[seg] += f", left-right {c:+.2f}"
    return None


def _yaw_matrix(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def mounting_error_deg(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Angle (deg) between estimated and true mountings (…, 3, 3), e.g. for tests/reports."""
    D = np.einsum("...ji,...jk->...ik", estimated, true)
    c = np.clip((np.trace(D, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(c))
