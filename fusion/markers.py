"""Segment frames and joint angles from optical markers, in the project's conventions.

This is the bridge that lets our joint-angle conventions (fusion/angles.py) be checked against
a real motion-capture reference (OpenSim inverse kinematics, see docs/conventions_check.md).

Frames (fusion/skeleton.py): x forward, y left, z up; each segment frame coincides with the
global frame in the neutral standing pose and has its origin at the proximal joint. Anatomical
definitions used here (the usual gait-lab ones, as in Plug-in Gait / Schwartz 2008):

- pelvis: y from the right to the left ASIS; x forward in the ASIS–sacrum plane (from the
  sacrum / mid-PSIS towards the mid-ASIS point), z = x × y. Origin: the mid-point of the hip
  joint centres. (The ASIS–PSIS plane is tilted forward ≈ 10° in standing, which is why
  clinical pelvic tilt reads ≈ +10°, and OpenSim's model pelvis does not.)
- hip joint centre: Harrington et al. (2007) regression from pelvis width PW (inter-ASIS) and
  depth PD (mid-ASIS to mid-PSIS): 0.24 PD + 9.9 mm posterior, 0.30 PW + 10.9 mm inferior and
  0.33 PW + 7.3 mm lateral of the mid-ASIS point.
- thigh: z from the knee centre to the hip centre; y along the knee flexion axis (pointing
  left); origin the hip centre.
- shank: z from the ankle centre to the knee centre; y along the same knee flexion axis
  carried in the shank (so tibial torsion shows up at the ankle, not as knee rotation);
  origin the knee centre.
- foot: x from the heel to the toe marker; y along the forefoot's medio-lateral markers
  where present, else the shank's flexion axis; origin the ankle centre.

Two marker protocols are supported:

- `CALIBRATED` (OpenSim's subject01 Gait2354 set, static + walking trial): knee and ankle
  centres are the mid-points of the lateral and medial epicondyle / malleolus markers in the
  static trial, carried through walking by the thigh and shank marker clusters (a
  least-squares rigid fit, Söderkvist & Wedin 1993).
- `LATERAL` (the 41-marker `markers_walk.trc` set: lateral knee and ankle markers only, no
  static trial): the knee flexion axis is found functionally — the normal of the plane through
  hip centre, knee and ankle markers on flexed frames, averaged in the thigh and in the shank
  cluster — and the joint centres are the lateral markers moved medially along it by half the
  joint width plus the marker radius.

Lab frames: OpenSim's TRC convention is X forward, Y up, Z right (mm); `opensim_to_lab` turns
that into ours (x = X, y = −Z, z = Y, metres).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusion.angles import angles_from_rotations
from fusion.orientation import best_rotation
from fusion.skeleton import ANGLES, SEGMENT_INDEX, SEGMENTS, SIDES

__all__ = [
    "CALIBRATED",
    "LATERAL",
    "OPENSIM_GAIT2354_MAP",
    "OPENSIM_TO_LAB",
    "MarkerFrames",
    "MarkerProtocol",
    "carry_markers",
    "compare_series",
    "frames_from_markers",
    "frames_to_angles",
    "harrington_hjc",
    "opensim_to_lab",
    "rigid_fit",
]

#: ours = OPENSIM_TO_LAB @ opensim  (X forward, Y up, Z right  →  x forward, y left, z up)
OPENSIM_TO_LAB = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def opensim_to_lab(xyz: np.ndarray, metres_per_unit: float) -> np.ndarray:
    """Points (..., 3) in OpenSim's lab axes and file units → our axes in metres."""
    return np.asarray(xyz, float) @ OPENSIM_TO_LAB.T * metres_per_unit


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / n


def frame_z_y(z_axis: np.ndarray, y_ref: np.ndarray) -> np.ndarray:
    """Rotation (..., 3, 3) with z exactly along `z_axis` and y as close as possible to `y_ref`."""
    z = _unit(z_axis)
    x = _unit(np.cross(y_ref, z))
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)


def frame_x_y(x_axis: np.ndarray, y_ref: np.ndarray) -> np.ndarray:
    """Rotation (..., 3, 3) with x exactly along `x_axis` and y as close as possible to `y_ref`."""
    x = _unit(x_axis)
    z = _unit(np.cross(x, y_ref))
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)


def frame_y_x(y_axis: np.ndarray, x_ref: np.ndarray) -> np.ndarray:
    """Rotation (..., 3, 3) with y exactly along `y_axis` and x as close as possible to `x_ref`."""
    y = _unit(y_axis)
    z = _unit(np.cross(x_ref, y))
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=-1)


def rigid_fit(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rigid motion taking `ref` (K, 3) onto each frame of `cur` (T, K, 3).

    Returns R (T, 3, 3), p (T, 3) with cur ≈ R @ ref + p (Söderkvist & Wedin 1993 / Kabsch).
    Needs K ≥ 3 non-collinear markers.
    """
    ref = np.asarray(ref, float)
    cur = np.asarray(cur, float)
    if ref.shape[0] < 3:
        raise ValueError(f"rigid_fit needs at least 3 markers, got {ref.shape[0]}")
    rc = ref.mean(0)
    cc = cur.mean(1)
    R = best_rotation(np.einsum("tki,kj->tij", cur - cc[:, None], ref - rc))
    p = cc - np.einsum("tij,j->ti", R, rc)
    return R, p


def harrington_hjc(
    r_asis: np.ndarray, l_asis: np.ndarray, mid_psis: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hip joint centres (left, right) and the pelvis rotation, all (T, …), metres.

    Harrington, Zavatsky, Lawson, Yuan & Theologis (2007), J Biomech 40:595: relative to the
    mid-ASIS point, 0.24 PD + 9.9 mm posterior, 0.30 PW + 10.9 mm inferior and
    0.33 PW + 7.3 mm lateral, PW = inter-ASIS distance, PD = mid-ASIS to mid-PSIS distance.
    """
    R = frame_y_x(l_asis - r_asis, 0.5 * (r_asis + l_asis) - mid_psis)
    mid = 0.5 * (r_asis + l_asis)
    pw = np.linalg.norm(l_asis - r_asis, axis=-1)
    pd = np.linalg.norm(mid - mid_psis, axis=-1)
    back = -(0.24 * pd + 0.0099)
    down = -(0.30 * pw + 0.0109)
    lat = 0.33 * pw + 0.0073
    out = []
    for sign in (1.0, -1.0):  # left is +y
        local = np.stack([back, sign * lat, down], axis=-1)
        out.append(mid + np.einsum("...ij,...j->...i", R, local))
    return out[0], out[1], R


@dataclass(frozen=True)
class MarkerProtocol:
    """Which marker names play which role; `{s}` is replaced by the side letter R or L."""

    name: str
    r_asis: str
    l_asis: str
    sacrum: tuple[str, ...]  # averaged: a single sacral marker or the two PSIS
    thigh_cluster: tuple[str, ...]
    shank_cluster: tuple[str, ...]
    knee_lat: str
    ankle_lat: str
    heel: str
    toe: str
    knee_med: str | None = None  # static trial only
    ankle_med: str | None = None  # static trial only
    forefoot_lat: str | None = None  # medio-lateral forefoot pair, walking trial
    forefoot_med: str | None = None
    needs_static: bool = False

    def side(self, template: str, side: str) -> str:
        return template.replace("{s}", side.upper())


CALIBRATED = MarkerProtocol(
    name="calibrated (static medial/lateral markers + clusters; OpenSim subject01 set)",
    r_asis="R.ASIS",
    l_asis="L.ASIS",
    sacrum=("V.Sacral",),
    thigh_cluster=("{s}.Thigh.Upper", "{s}.Thigh.Front", "{s}.Thigh.Rear"),
    shank_cluster=("{s}.Shank.Upper", "{s}.Shank.Front", "{s}.Shank.Rear"),
    knee_lat="{s}.Knee.Lat",
    knee_med="{s}.Knee.Med",
    ankle_lat="{s}.Ankle.Lat",
    ankle_med="{s}.Ankle.Med",
    heel="{s}.Heel",
    toe="{s}.Toe.Tip",
    forefoot_lat="{s}.Toe.Lat",
    forefoot_med="{s}.Toe.Med",
    needs_static=True,
)

LATERAL = MarkerProtocol(
    name="lateral markers + half-width offsets (41-marker markers_walk.trc set)",
    r_asis="R.ASIS",
    l_asis="L.ASIS",
    sacrum=("R.PSIS", "L.PSIS"),
    thigh_cluster=("{s}.TH1", "{s}.TH2", "{s}.TH3"),
    shank_cluster=("{s}.SH1", "{s}.SH2", "{s}.SH3"),
    knee_lat="{s}.Knee",
    ankle_lat="{s}.Ankle",
    heel="{s}.Heel",
    toe="{s}.Toe",
)


@dataclass
class MarkerFrames:
    """Segment frames built from markers (segments not built stay identity / NaN origin)."""

    t: np.ndarray  # (T,)
    R: np.ndarray  # (T, 13, 3, 3) SEGMENTS order
    origin: np.ndarray  # (T, 13, 3)
    heading: np.ndarray  # (T,) rad, direction of progression
    joint_centres: dict[str, np.ndarray] = field(default_factory=dict)  # "hip_r" → (T, 3)
    built: tuple[str, ...] = ()


MarkerGetter = dict[str, np.ndarray]  # marker name → (T, 3) positions, our axes, metres


def _get(markers: MarkerGetter, name: str, what: str) -> np.ndarray:
    try:
        return markers[name]
    except KeyError:
        raise KeyError(f"{what}: no marker {name!r} (have {', '.join(sorted(markers))})") from None


def _mean_of(markers: MarkerGetter, names: tuple[str, ...], what: str) -> np.ndarray:
    return np.mean([_get(markers, n, what) for n in names], axis=0)


def _heading(pelvis_origin: np.ndarray, R_pelvis: np.ndarray) -> np.ndarray:
    """Direction of progression: the pelvis' travel if it travels (overground), else its
    mean forward axis (treadmill); constant over the trial."""
    travel = pelvis_origin[-1] - pelvis_origin[0]
    if np.hypot(travel[0], travel[1]) > 0.5:
        h = np.arctan2(travel[1], travel[0])
    else:
        fwd = np.nanmean(R_pelvis[:, :, 0], axis=0)
        h = np.arctan2(fwd[1], fwd[0])
    return np.full(len(pelvis_origin), h)


def _functional_knee_axis(
    hjc: np.ndarray, knee: np.ndarray, ankle: np.ndarray, left: np.ndarray, min_flexion_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame knee flexion axis (T, 3): the normal of the hip–knee–ankle plane, oriented
    like `left` (the pelvis' left axis), and the frames where the leg is bent by more than
    `min_flexion_deg` (only there is the plane well defined)."""
    a = hjc - knee
    b = ankle - knee
    n = _unit(np.cross(b, a))
    cosang = np.einsum("ti,ti->t", _unit(a), _unit(b))
    bent = np.degrees(np.pi - np.arccos(np.clip(cosang, -1, 1))) > min_flexion_deg
    bent &= np.all(np.isfinite(n), axis=1)
    sign = np.sign(np.mean(np.einsum("ti,ti->t", n[bent], left[bent]))) if bent.any() else 1.0
    return n * sign, bent


def _axis_in_cluster(axis_global: np.ndarray, R: np.ndarray, use: np.ndarray) -> np.ndarray:
    local = np.einsum("tji,tj->ti", R[use], axis_global[use])
    return _unit(local.mean(0))


def frames_from_markers(
    walk: MarkerGetter,
    t: np.ndarray,
    protocol: MarkerProtocol,
    static: MarkerGetter | None = None,
    knee_width: float = 0.105,
    ankle_width: float = 0.075,
    marker_radius: float = 0.007,
    min_flexion_deg: float = 20.0,
) -> MarkerFrames:
    """Pelvis, thigh, shank and foot frames (our conventions) from marker trajectories.

    walk/static: marker name → (T, 3) positions in our lab axes, metres (see opensim_to_lab).
    knee_width/ankle_width/marker_radius: used by the LATERAL protocol only (m);
    min_flexion_deg: LATERAL only, the knee bend above which a frame informs the knee axis.
    """
    t = np.asarray(t, float)
    T = len(t)
    if protocol.needs_static and static is None:
        raise ValueError(f"protocol {protocol.name!r} needs a static trial")
    R = np.tile(np.eye(3), (T, len(SEGMENTS), 1, 1))
    origin = np.full((T, len(SEGMENTS), 3), np.nan)
    centres: dict[str, np.ndarray] = {}

    def pelvis_of(m: MarkerGetter) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ra = _get(m, protocol.r_asis, "pelvis")
        la = _get(m, protocol.l_asis, "pelvis")
        sac = _mean_of(m, protocol.sacrum, "pelvis")
        hl, hr, Rp = harrington_hjc(ra, la, sac)
        return hl, hr, Rp, 0.5 * (hl + hr)

    hjc_l, hjc_r, R_pelvis, mid_hip = pelvis_of(walk)
    R[:, SEGMENT_INDEX["pelvis"]] = R_pelvis
    origin[:, SEGMENT_INDEX["pelvis"]] = mid_hip
    centres["hip_l"], centres["hip_r"] = hjc_l, hjc_r

    for side in SIDES:
        S = side.upper()
        hjc = centres[f"hip_{side}"]
        thigh_names = tuple(protocol.side(n, S) for n in protocol.thigh_cluster)
        shank_names = tuple(protocol.side(n, S) for n in protocol.shank_cluster)
        thigh_cur = np.stack([_get(walk, n, f"thigh_{side}") for n in thigh_names], axis=1)
        shank_cur = np.stack([_get(walk, n, f"shank_{side}") for n in shank_names], axis=1)
        knee_lat_name = protocol.side(protocol.knee_lat, S)
        ankle_lat_name = protocol.side(protocol.ankle_lat, S)
        lateral_sign = 1.0 if side == "l" else -1.0  # lateral is +y on the left leg

        if protocol.needs_static:
            if static is None or not (protocol.knee_med and protocol.ankle_med):
                raise ValueError(
                    f"protocol {protocol.name!r}: needs a static trial and medial markers"
                )
            st = {k: np.nanmean(v, axis=0) for k, v in static.items()}
            k_lat = _get(st, knee_lat_name, "static knee")
            k_med = _get(st, protocol.side(protocol.knee_med, S), "static knee")
            a_lat = _get(st, ankle_lat_name, "static ankle")
            a_med = _get(st, protocol.side(protocol.ankle_med, S), "static ankle")
            kjc_s = 0.5 * (k_lat + k_med)
            ajc_s = 0.5 * (a_lat + a_med)
            knee_axis_s = _unit(lateral_sign * (k_lat - k_med))  # points left
            ankle_axis_s = _unit(lateral_sign * (a_lat - a_med))
            thigh_ref = np.stack([_get(st, n, "static thigh cluster") for n in thigh_names])
            shank_ref = np.stack([_get(st, n, "static shank cluster") for n in shank_names])
            Rt, pt = rigid_fit(thigh_ref, thigh_cur)
            Rs, ps = rigid_fit(shank_ref, shank_cur)
            kjc = np.einsum("tij,j->ti", Rt, kjc_s) + pt
            kjc_sh = np.einsum("tij,j->ti", Rs, kjc_s) + ps
            ajc = np.einsum("tij,j->ti", Rs, ajc_s) + ps
            axis_thigh = np.einsum("tij,j->ti", Rt, knee_axis_s)
            axis_shank = np.einsum("tij,j->ti", Rs, knee_axis_s)
            axis_ankle = np.einsum("tij,j->ti", Rs, ankle_axis_s)
        else:
            k_lat_w = _get(walk, knee_lat_name, f"knee_{side}")
            a_lat_w = _get(walk, ankle_lat_name, f"ankle_{side}")
            thigh_ref = thigh_cur[0]
            shank_ref = shank_cur[0]
            Rt, pt = rigid_fit(thigh_ref, thigh_cur)
            Rs, ps = rigid_fit(shank_ref, shank_cur)
            # the plane through the joint *centres* contains no lateral offset: start from the
            # lateral markers, move them medially along the axis found, repeat (converges in
            # a few rounds for a hinge-like knee)
            kjc, ajc = k_lat_w, a_lat_w
            for _ in range(4):
                axis_g, bent = _functional_knee_axis(
                    hjc, kjc, ajc, R_pelvis[:, :, 1], min_flexion_deg
                )
                if bent.sum() < 5:
                    raise ValueError(
                        f"knee_{side}: fewer than 5 frames with the knee bent more than "
                        f"{min_flexion_deg:g}°; the functional knee axis needs a walking trial"
                    )
                axis_thigh = np.einsum("tij,j->ti", Rt, _axis_in_cluster(axis_g, Rt, bent))
                axis_shank = np.einsum("tij,j->ti", Rs, _axis_in_cluster(axis_g, Rs, bent))
                kjc = k_lat_w - lateral_sign * (knee_width / 2 + marker_radius) * axis_thigh
                ajc = a_lat_w - lateral_sign * (ankle_width / 2 + marker_radius) * axis_shank
            kjc_sh = kjc
            axis_ankle = axis_shank

        i_th, i_sh, i_ft = (SEGMENT_INDEX[f"{s}_{side}"] for s in ("thigh", "shank", "foot"))
        R[:, i_th] = frame_z_y(hjc - kjc, axis_thigh)
        origin[:, i_th] = hjc
        R[:, i_sh] = frame_z_y(kjc_sh - ajc, axis_shank)
        origin[:, i_sh] = kjc_sh
        heel = _get(walk, protocol.side(protocol.heel, S), f"foot_{side}")
        toe = _get(walk, protocol.side(protocol.toe, S), f"foot_{side}")
        if protocol.forefoot_lat and protocol.forefoot_med:
            ff_lat = _get(walk, protocol.side(protocol.forefoot_lat, S), f"foot_{side}")
            ff_med = _get(walk, protocol.side(protocol.forefoot_med, S), f"foot_{side}")
            foot_y = lateral_sign * (ff_lat - ff_med)
        else:
            foot_y = axis_ankle
        R[:, i_ft] = frame_x_y(toe - heel, foot_y)
        origin[:, i_ft] = ajc
        centres[f"knee_{side}"] = kjc
        centres[f"ankle_{side}"] = ajc

    heading = _heading(mid_hip, R_pelvis)
    built = ("pelvis",) + tuple(f"{s}_{side}" for side in SIDES for s in ("thigh", "shank", "foot"))
    return MarkerFrames(
        t=t, R=R, origin=origin, heading=heading, joint_centres=centres, built=built
    )


def carry_markers(
    static: MarkerGetter, walk: MarkerGetter, cluster: tuple[str, ...], targets: tuple[str, ...]
) -> MarkerGetter:
    """Virtual walking trajectories of static-only markers (e.g. the medial knee marker),
    carried by the rigid motion of a marker cluster from the static to the walking trial."""
    ref = np.stack([np.nanmean(_get(static, n, "static cluster"), axis=0) for n in cluster])
    cur = np.stack([_get(walk, n, "walking cluster") for n in cluster], axis=1)
    R, p = rigid_fit(ref, cur)
    return {
        n: np.einsum("tij,j->ti", R, np.nanmean(_get(static, n, "static target"), axis=0)) + p
        for n in targets
    }


#: How OpenSim Gait2354/2392 inverse-kinematics coordinates map onto our angles:
#: (our angle, OpenSim column, sign, why). `{s}` is the side letter (l/r). The model's ground
#: is X forward, Y up, Z right and each CustomJoint rotates body-fixed about the listed axes,
#: pelvis Z-X-Y (tilt, list, rotation) and hip Z-X-Y (flexion, adduction, rotation): the same
#: Cardan sequence as ours (Y-X-Z with y = −Z, x = X, z = Y), so only signs differ.
OPENSIM_GAIT2354_MAP: tuple[tuple[str, str, float, str], ...] = (
    ("pelvis_tilt", "pelvis_tilt", -1.0, "about ground +Z (right): + lifts the front = posterior"),
    ("pelvis_obliquity", "pelvis_list", -1.0, "about +X (forward): + lowers the right side"),
    ("pelvis_rotation", "pelvis_rotation", 1.0, "about +Y (up): + brings the right side forward"),
    ("hip_flexion_{s}", "hip_flexion_{s}", 1.0, "about +Z: flexion +"),
    ("hip_adduction_{s}", "hip_adduction_{s}", 1.0, "axis +X right / −X left: adduction +"),
    ("hip_rotation_{s}", "hip_rotation_{s}", 1.0, "axis +Y right / −Y left: internal +"),
    ("knee_flexion_{s}", "knee_angle_{s}", -1.0, "knee_angle is negative in flexion (−120…10°)"),
    ("ankle_dorsiflexion_{s}", "ankle_angle_{s}", 1.0, "dorsiflexion +"),
)


def frames_to_angles(frames: MarkerFrames) -> np.ndarray:
    """Published clinical angles (T, len(ANGLES)) in degrees; angles of segments that were not
    built (trunk, arms) are NaN."""
    out = angles_from_rotations(frames.R, frames.heading)
    for k, name in enumerate(ANGLES):
        if name.startswith(("trunk_", "shoulder_", "elbow_")):
            out[:, k] = np.nan
    return out


def compare_series(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Agreement of two equally-sampled angle series (degrees).

    rmse: raw; offset: mean(ours − ref) (differing frame definitions show up here);
    rmse_centred: RMSE after removing the offset; r: Pearson correlation (a flipped sign
    convention shows up as r ≈ −1); ref_range: the reference's peak-to-peak (context).
    """
    ours = np.asarray(ours, float)
    ref = np.asarray(ref, float)
    ok = np.isfinite(ours) & np.isfinite(ref)
    if ok.sum() < 3:
        raise ValueError(f"compare_series: only {int(ok.sum())} finite paired samples")
    a, b = ours[ok], ref[ok]
    d = a - b
    off = float(d.mean())
    sa, sb = a.std(), b.std()
    r = float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb)) if sa > 0 and sb > 0 else 0.0
    return {
        "n": int(ok.sum()),
        "rmse": float(np.sqrt(np.mean(d**2))),
        "offset": off,
        "rmse_centred": float(np.sqrt(np.mean((d - off) ** 2))),
        "r": r,
        "ref_range": float(np.ptp(b)),
    }
