"""The classical video estimator: triangulated 3-D joint centres → segment frames → angles.

Per tick: the 2-D keypoints of all calibrated cameras are triangulated
(`fusion.triangulation`, confidence-weighted DLT with outlier rejection), segment frames are
built from the 3-D points, and the published angles come from the same closed-form Cardan
decomposition as the IMU estimator (`fusion.angles`, via `classical.angles_from_segments`).

Segment frames (world: x forward, y left, z up; fusion/skeleton.py):

- pelvis: y along the hip line (right → left hip), x horizontal and perpendicular to it, then
  tilted forward by a prior (`pelvis_tilt_deg`, default the normative mean pelvis tilt of
  Schwartz 2008, ≈ 11.6°): 17 keypoints have no ASIS/PSIS, so **pelvis tilt is not observable**
  and is reported NaN; obliquity and rotation come from the hip line.
- trunk (sternum): y along the shoulder line, z from the lumbosacral point (the hip midpoint
  plus 0.2 thigh lengths along the pelvis z) to the shoulder midpoint.
- thigh: z from knee to hip; y the normal of the hip–knee–ankle plane when the knee is
  flexed (blended in between 10° and 30° of flexion), else the pelvis y made orthogonal.
- shank: z from ankle to knee, y the thigh's y made orthogonal. foot: x from heel to toe, y the
  shank's made orthogonal.
- upper arm / forearm: as thigh / shank with the shoulder–elbow–wrist plane and the trunk y.

What video cannot observe well and how it is reported: pelvis tilt (no pelvic landmarks) →
NaN; hip and shoulder rotation (rotation about the segment's own long axis: only visible
through the plane of a flexed knee or elbow, undefined when it is straight) → NaN unless
`long_axis="estimate"` (then the plane-normal estimate above); the head has one keypoint, so
no neck angles (they are not published). Hip flexion and trunk flexion are relative to the
pelvis, so they inherit the tilt prior's error (the subject's own tilt − the prior).

Heading (direction of progression): the pelvis yaw through the same causal two-pole low-pass
as the IMU estimator (`heading_tau_s`). Camera rigs that follow the subject (fusion/synth.py)
make positions relative, so the walking velocity is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from fusion.estimators.base import AnglesResult, Estimator, SyncedBatch
from fusion.estimators.classical import angles_from_segments
from fusion.estimators.heading import HeadingLowpass
from fusion.skeleton import ANGLE_INDEX, KEYPOINT_INDEX, KEYPOINTS, SEGMENT_INDEX, SIDES
from fusion.triangulation import Triangulation, projection_matrices, triangulate_keypoints

#: angles video cannot observe (always NaN) and long-axis angles (NaN unless estimated)
UNOBSERVABLE: tuple[str, ...] = ("pelvis_tilt",)
LONG_AXIS: tuple[str, ...] = tuple(f"{j}_rotation_{s}" for s in SIDES for j in ("hip", "shoulder"))

_LUMBAR_PER_THIGH = 0.05 / (0.530 - 0.285)  # lumbosacral height over thigh length (body.py)


@dataclass(frozen=True)
class ClassicalVideoConfig:
    min_confidence: float = 0.1
    outlier_px: float | None = 25.0  # drop a view whose reprojection error exceeds this
    pelvis_tilt_deg: float | None = None  # None: the normative mean (standing_pose_dofs)
    long_axis: str = "nan"  # or "estimate"
    plane_min_deg: float = 10.0  # knee/elbow flexion where the limb plane starts to count
    plane_full_deg: float = 30.0  # ... and where it is trusted fully
    heading_tau_s: float = 0.5
    rate: float = 60.0

    def __post_init__(self) -> None:
        if self.long_axis not in ("nan", "estimate"):
            raise ValueError(f"long_axis={self.long_axis!r}: 'nan' or 'estimate'")
        if not 0 <= self.plane_min_deg < self.plane_full_deg:
            raise ValueError("plane_min_deg must be >= 0 and below plane_full_deg")


def _unit(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _ortho(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """v made orthogonal to the unit `axis` and normalised (rows)."""
    return _unit(v - np.sum(v * axis, axis=-1, keepdims=True) * axis)


def _frame_zy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rotation with columns (x, y, z) from a z axis and an approximate y (rows)."""
    z = _unit(z)
    y = _ortho(y, z)
    return np.stack([np.cross(y, z), y, z], axis=-1)


def _plane_axis(
    upper: np.ndarray,
    lower: np.ndarray,
    fallback: np.ndarray,
    sign: float,
    lo: float,
    hi: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Flexion axis of a limb from its two bone vectors (joint→proximal `upper`,
    joint→distal `lower`): the plane normal sign·(upper × lower) where the joint is flexed,
    the fallback where it is straight. Returns (axis (N, 3), flexion angle deg (N,))."""
    u, d = _unit(upper), _unit(lower)
    flex = 180.0 - np.degrees(np.arccos(np.clip(np.sum(u * d, axis=-1), -1.0, 1.0)))
    normal = _unit(sign * np.cross(u, d))
    w = np.clip((flex - lo) / (hi - lo), 0.0, 1.0)[..., None]
    fb = _ortho(fallback, u)
    normal = np.where(np.isfinite(normal), normal, fb)
    # keep the normal on the fallback's side (a noisy, almost straight limb can flip it)
    normal = np.where(np.sum(normal * fb, axis=-1, keepdims=True) < 0, -normal, normal)
    return _unit(w * normal + (1.0 - w) * fb), flex


def segment_rotations_from_keypoints(
    kp: np.ndarray,
    pelvis_tilt_deg: float,
    plane_deg: tuple[float, float] = (10.0, 30.0),
) -> np.ndarray:
    """3-D keypoints (N, 17, 3) (KEYPOINTS order, world) → segment rotations (N, 13, 3, 3),
    NaN where a needed keypoint is missing. The head gets the trunk's orientation."""
    P = {name: kp[:, KEYPOINT_INDEX[name]] for name in KEYPOINTS}
    N = len(kp)
    lo, hi = plane_deg
    R = np.full((N, 13, 3, 3), np.nan)
    up = np.broadcast_to([0.0, 0.0, 1.0], (N, 3))
    # pelvis: hip line + the tilt prior
    y_p = _unit(P["hip_l"] - P["hip_r"])
    x_p0 = _unit(np.cross(y_p, up))
    R_p0 = np.stack([x_p0, y_p, np.cross(x_p0, y_p)], axis=-1)
    a = np.radians(pelvis_tilt_deg)
    Ry = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    R_p = R_p0 @ Ry
    R[:, SEGMENT_INDEX["pelvis"]] = R_p
    mid_hip = 0.5 * (P["hip_l"] + P["hip_r"])
    thigh_len = 0.5 * (
        np.linalg.norm(P["hip_l"] - P["knee_l"], axis=-1)
        + np.linalg.norm(P["hip_r"] - P["knee_r"], axis=-1)
    )
    lumbar = mid_hip + (_LUMBAR_PER_THIGH * thigh_len)[:, None] * R_p[..., 2]
    mid_sh = 0.5 * (P["shoulder_l"] + P["shoulder_r"])
    R_t = _frame_zy(mid_sh - lumbar, P["shoulder_l"] - P["shoulder_r"])
    R[:, SEGMENT_INDEX["sternum"]] = R_t
    R[:, SEGMENT_INDEX["head"]] = R_t
    for s in SIDES:
        # legs: the knee flexes backwards, so the left-pointing normal is lower × upper
        y_th, _ = _plane_axis(
            P[f"hip_{s}"] - P[f"knee_{s}"], P[f"ankle_{s}"] - P[f"knee_{s}"], y_p, -1.0, lo, hi
        )
        R_th = _frame_zy(P[f"hip_{s}"] - P[f"knee_{s}"], y_th)
        R_sh = _frame_zy(P[f"knee_{s}"] - P[f"ankle_{s}"], R_th[..., 1])
        x_f = _unit(P[f"toe_{s}"] - P[f"heel_{s}"])
        y_f = _ortho(R_sh[..., 1], x_f)
        R_ft = np.stack([x_f, y_f, np.cross(x_f, y_f)], axis=-1)
        # arms: the elbow flexes forwards, so the normal is upper × lower
        y_ua, _ = _plane_axis(
            P[f"shoulder_{s}"] - P[f"elbow_{s}"],
            P[f"wrist_{s}"] - P[f"elbow_{s}"],
            R_t[..., 1],
            1.0,
            lo,
            hi,
        )
        R_ua = _frame_zy(P[f"shoulder_{s}"] - P[f"elbow_{s}"], y_ua)
        R_fa = _frame_zy(P[f"elbow_{s}"] - P[f"wrist_{s}"], R_ua[..., 1])
        for seg, Rs in (
            ("thigh", R_th),
            ("shank", R_sh),
            ("foot", R_ft),
            ("upperarm", R_ua),
            ("forearm", R_fa),
        ):
            R[:, SEGMENT_INDEX[f"{seg}_{s}"]] = Rs
    return R


class ClassicalVideoEstimator(Estimator):
    """Triangulation + geometric segment frames; stateless but for the heading filter."""

    name = "classical_video"
    lookahead = 0
    modalities = frozenset({"video"})

    def __init__(
        self,
        cameras: Sequence[Any],
        config: ClassicalVideoConfig | None = None,
        **options: Any,
    ) -> None:
        if not cameras or len(cameras) < 2:
            raise ValueError(
                "ClassicalVideoEstimator needs at least two calibrated cameras "
                f"(got {0 if not cameras else len(cameras)})"
            )
        try:
            cfg = replace(config or ClassicalVideoConfig(), **options)
        except TypeError as e:
            known = [f.name for f in fields(ClassicalVideoConfig)]
            raise ValueError(f"classical_video estimator: {e}; options are {known}") from e
        self.config = cfg
        self.cameras = list(cameras)
        self._P = projection_matrices(self.cameras)
        if cfg.pelvis_tilt_deg is None:
            from fusion.calibration import standing_pose_dofs
            from fusion.skeleton import DOF_INDEX

            self.pelvis_tilt_deg = float(standing_pose_dofs("typical")[DOF_INDEX["pelvis_tilt"]])
        else:
            self.pelvis_tilt_deg = float(cfg.pelvis_tilt_deg)
        nan = list(UNOBSERVABLE) + (list(LONG_AXIS) if cfg.long_axis == "nan" else [])
        self._nan_cols = np.array([ANGLE_INDEX[a] for a in nan], int)
        self._states: dict[str, HeadingLowpass] = {}  # per subject: its heading filter
        #: the last triangulation per subject (for inspection and tests)
        self.last_triangulation: dict[str, Triangulation] = {}

    def reset(self, subject: str | None = None) -> None:
        if subject is None:
            self._states.clear()
            self.last_triangulation.clear()
        else:
            self._states.pop(subject, None)
            self.last_triangulation.pop(subject, None)

    def update(self, subject: str, batch: SyncedBatch) -> AnglesResult:
        cfg = self.config
        N = len(batch.t)
        if N == 0:
            return AnglesResult.empty()
        if batch.keypoints.shape[1] != len(self.cameras):
            raise ValueError(
                f"subject {subject}: {batch.keypoints.shape[1]} camera views in the batch, "
                f"the estimator was built with {len(self.cameras)} cameras"
            )
        heading_of = self._states.get(subject)
        if heading_of is None:
            heading_of = self._states[subject] = HeadingLowpass(cfg.heading_tau_s, cfg.rate)
        points = self._points(subject, batch)
        R = segment_rotations_from_keypoints(
            points, self.pelvis_tilt_deg, (cfg.plane_min_deg, cfg.plane_full_deg)
        )
        available = np.isfinite(R).all(axis=(-1, -2))
        pelvis = SEGMENT_INDEX["pelvis"]
        R_p = R[:, pelvis]
        heading = heading_of(np.arctan2(R_p[:, 1, 0], R_p[:, 0, 0]), available[:, pelvis])
        angles = angles_from_segments(R, heading, available)
        angles[:, self._nan_cols] = np.nan
        return AnglesResult(t=np.asarray(batch.t, float).copy(), angles=angles)

    def _points(self, subject: str, batch: SyncedBatch) -> np.ndarray:
        """3-D joint centres: the batch's own when it has them, else triangulated."""
        if batch.joints3d is not None:
            return np.where(batch.joints3d_mask[..., None], batch.joints3d, np.nan)
        cfg = self.config
        tri = triangulate_keypoints(
            self.cameras,
            batch.keypoints,
            batch.keypoint_mask,
            cfg.min_confidence,
            cfg.outlier_px,
            P=self._P,
        )
        self.last_triangulation[subject] = tri
        return tri.points


__all__ = [
    "LONG_AXIS",
    "UNOBSERVABLE",
    "ClassicalVideoConfig",
    "ClassicalVideoEstimator",
    "segment_rotations_from_keypoints",
]
