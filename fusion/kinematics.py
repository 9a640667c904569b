"""Forward kinematics and the continuous-time `Motion` every synthetic sensor samples.

A motion is a handful of smooth scalar channels — root position, heading and the clinical DOF
angles — on a fine uniform grid. `Motion.pose(times)` evaluates them anywhere through cubic
splines and runs forward kinematics, so virtual sensors can take exact-in-time samples (and
numerical derivatives with a small step) at any rate without resampling artefacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

from fusion.angles import (
    JOINT_OF_SEGMENT,
    JOINTS,
    angles_from_rotations,
    local_rotations,
    yaw_matrix,
)
from fusion.body import BodyModel
from fusion.skeleton import DOFS, KEYPOINTS, SEGMENT_INDEX, SEGMENTS


@dataclass
class Pose:
    """The body at N instants: global segment frames and keypoint positions (m)."""

    R: np.ndarray  # (N, 13, 3, 3) segment orientation in global, SEGMENTS order
    origin: np.ndarray  # (N, 13, 3) segment origin (its proximal joint) in global
    keypoints: np.ndarray  # (N, 17, 3) in global, KEYPOINTS order
    heading: np.ndarray  # (N,) rad


def forward_kinematics(
    body: BodyModel,
    dofs: np.ndarray,
    root: np.ndarray | None = None,
    heading: np.ndarray | None = None,
    segments: tuple[str, ...] = SEGMENTS,
) -> Pose:
    """DOF angles (N, len(DOFS)) deg, root (N, 3) m, heading (N,) rad → Pose (vectorised).

    `segments` limits the work to a subset closed under parents (e.g. the legs, for contact
    detection); segments left out, and the keypoints they carry, are NaN.
    """
    dofs = np.atleast_2d(np.asarray(dofs, dtype=float))
    n = dofs.shape[0]
    root = np.zeros((n, 3)) if root is None else np.broadcast_to(np.asarray(root, float), (n, 3))
    heading = np.zeros(n) if heading is None else np.broadcast_to(np.asarray(heading, float), (n,))
    local = local_rotations(dofs, joints=tuple(JOINT_OF_SEGMENT[s] for s in segments))
    offsets = body.joint_offsets()
    R = np.full((n, len(SEGMENTS), 3, 3), np.nan)
    origin = np.full((n, len(SEGMENTS), 3), np.nan)
    for seg in _TREE_ORDER:
        if seg not in segments:
            continue
        i = SEGMENT_INDEX[seg]
        joint = JOINT_OF_SEGMENT[seg]
        parent = JOINTS[joint][0]
        if parent is None:
            R[:, i] = yaw_matrix(heading) @ local[joint]
            origin[:, i] = root
        else:
            if parent not in segments:
                raise ValueError(f"segments: {seg!r} needs its parent {parent!r}")
            p = SEGMENT_INDEX[parent]
            R[:, i] = R[:, p] @ local[joint]
            origin[:, i] = origin[:, p] + R[:, p] @ offsets[seg]
    keypoints = np.full((n, len(KEYPOINTS), 3), np.nan)
    for k, (seg, local_point) in enumerate(body.keypoint_offsets().values()):
        if seg in segments:
            i = SEGMENT_INDEX[seg]
            keypoints[:, k] = origin[:, i] + R[:, i] @ local_point
    return Pose(R=R, origin=origin, keypoints=keypoints, heading=np.array(heading))


def _tree_order() -> tuple[str, ...]:
    order: list[str] = []
    pending = list(SEGMENTS)
    while pending:
        for seg in list(pending):
            parent = JOINTS[JOINT_OF_SEGMENT[seg]][0]
            if parent is None or parent in order:
                order.append(seg)
                pending.remove(seg)
    return tuple(order)


_TREE_ORDER = _tree_order()


def points_in_segments(pose: Pose, points: dict[str, np.ndarray]) -> np.ndarray:
    """Global positions (N, len(points), 3) of points fixed in segments ({segment: xyz})."""
    out = np.empty((pose.R.shape[0], len(points), 3))
    for k, (seg, p) in enumerate(points.items()):
        i = SEGMENT_INDEX[seg]
        out[:, k] = pose.origin[:, i] + pose.R[:, i] @ np.asarray(p, float)
    return out


@dataclass
class Stride:
    """One stride of one side, from a heel strike to that foot's next heel strike."""

    side: str  # "l" | "r"
    t_start: float
    t_end: float
    toe_off: float
    cadence: float  # steps/min
    step_length: float  # m: heel-to-heel distance along progression at this heel strike
    stride_length: float  # m
    speed: float  # m/s
    knee_flexion_max_ext: float  # deg: minimum knee flexion in stance


@dataclass
class MotionLabels:
    """Ground truth carried with every synthetic sequence."""

    activity: list[tuple[float, float, str]] = field(default_factory=list)  # (t0, t1, name)
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, "heel_strike_l" …)
    strides: list[Stride] = field(default_factory=list)

    def activity_at(self, t: np.ndarray) -> np.ndarray:
        """Activity name per instant ("" where none is labelled)."""
        out = np.full(np.shape(t), "", dtype=object)
        for t0, t1, name in self.activity:
            out[(t >= t0) & (t < t1)] = name
        return out


@dataclass
class Motion:
    """Smooth channels on a uniform grid, evaluable at any time inside it."""

    t: np.ndarray  # (T,) s, uniform
    dofs: np.ndarray  # (T, len(DOFS)) deg
    root: np.ndarray  # (T, 3) m, mid-hip point in global
    heading: np.ndarray  # (T,) rad, unwrapped direction of progression
    body: BodyModel
    labels: MotionLabels = field(default_factory=MotionLabels)
    #: whatever the generator needs to continue this motion seamlessly (fusion.activities)
    generator_state: Any = None

    def __post_init__(self) -> None:
        T = len(self.t)
        if T < 4:
            raise ValueError(f"Motion needs at least 4 grid samples, got {T}")
        shapes = {"dofs": (T, len(DOFS)), "root": (T, 3), "heading": (T,)}
        for name, want in shapes.items():
            got = np.shape(getattr(self, name))
            if got != want:
                raise ValueError(f"Motion.{name} has shape {got}, expected {want}")

    @property
    def duration(self) -> float:
        return float(self.t[-1] - self.t[0])

    @cached_property
    def _spline(self) -> CubicSpline:
        channels = np.concatenate([self.dofs, self.root, self.heading[:, None]], axis=1)
        return CubicSpline(self.t, channels, axis=0, bc_type="natural")

    def channels(self, times: np.ndarray, derivative: int = 0) -> np.ndarray:
        times = np.asarray(times, float)
        lo, hi = self.t[0] - 1e-9, self.t[-1] + 1e-9
        if np.any((times < lo) | (times > hi)):
            raise ValueError(
                f"times outside the motion [{self.t[0]:.3f}, {self.t[-1]:.3f}] s: "
                f"[{times.min():.3f}, {times.max():.3f}]"
            )
        return self._spline(times, derivative)

    def pose(self, times: np.ndarray) -> Pose:
        ch = self.channels(times)
        d = len(DOFS)
        return forward_kinematics(self.body, ch[:, :d], ch[:, d : d + 3], ch[:, d + 3])

    def angles(self, times: np.ndarray) -> np.ndarray:
        """Ground-truth published angles (N, len(ANGLES)) in degrees."""
        return angles_from_pose(self.pose(times))


def angles_from_pose(pose: Pose) -> np.ndarray:
    """Published clinical angles (N, len(ANGLES)) of a pose, in degrees."""
    return angles_from_rotations(pose.R, pose.heading)
