"""Virtual IMUs: gyroscope and accelerometer readings of sensors strapped to a moving body.

A sensor sits at a point of its segment (`ImuPlacement.position`, segment frame) with its axes
turned by `mounting` relative to the segment (a vector v in sensor axes is `mounting @ v` in
segment axes). Its readings are the physics of that point and frame:

- gyroscope: angular velocity of the sensor frame, in the sensor frame (rad/s),
  ω = vee(R_sᵀ Ṙ_s);
- accelerometer: specific force, i.e. acceleration minus gravity, in the sensor frame (m/s²),
  f = R_sᵀ (p̈ − g) with g = (0, 0, −GRAVITY), so a sensor at rest reads +9.81 along "up".

`Motion.pose` evaluates forward kinematics at any instant from smooth splines, so the
derivatives are central differences of the continuous motion with a small step `h` around each
requested sample time (5 points, 4th order), not differences of a sampled signal: the sensor
is sampled exactly at its own rate with no resampling or aliasing artefacts. Near the ends of
the motion the 5-point stencil is slid inside it (weights recomputed for the shifted nodes), so
every sample time inside the motion is valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.spatial.transform import Rotation

from fusion.body import BodyModel
from fusion.kinematics import Motion, Pose
from fusion.skeleton import GRAVITY, SEGMENT_INDEX, SEGMENTS

__all__ = [
    "ImuPlacement",
    "default_placements",
    "misplace",
    "sensor_orientations",
    "simulate_imu",
    "simulate_imu_with_pose",
]

_ORTHO_TOL = 1e-6
#: 5-point stencil nodes (units of h) and its weights at 0 for derivative orders 0, 1, 2
_NODES = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
_W_CENTRAL = np.array(
    [
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [1.0, -8.0, 0.0, 8.0, -1.0],
        [-1.0, 16.0, -30.0, 16.0, -1.0],
    ]
) / np.array([[1.0], [12.0], [12.0]])


@dataclass(frozen=True)
class ImuPlacement:
    """Where one sensor sits on its segment and how its axes are turned relative to it."""

    segment: str
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) m, segment frame
    mounting: np.ndarray = field(default_factory=lambda: np.eye(3))  # sensor axes in segment

    def __post_init__(self) -> None:
        if self.segment not in SEGMENT_INDEX:
            raise ValueError(
                f"ImuPlacement.segment={self.segment!r}: not one of SEGMENTS {SEGMENTS}"
            )
        pos = np.asarray(self.position, dtype=float)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            raise ValueError(
                f"ImuPlacement.position for {self.segment}: must be 3 finite numbers (m), "
                f"got shape {pos.shape}"
            )
        M = np.asarray(self.mounting, dtype=float)
        if M.shape != (3, 3) or not np.all(np.isfinite(M)):
            raise ValueError(
                f"ImuPlacement.mounting for {self.segment}: must be a finite 3x3 rotation, "
                f"got shape {M.shape}"
            )
        if not np.allclose(M.T @ M, np.eye(3), atol=_ORTHO_TOL) or np.linalg.det(M) < 0:
            raise ValueError(
                f"ImuPlacement.mounting for {self.segment}: not a proper rotation "
                f"(orthonormal with det +1)"
            )
        object.__setattr__(self, "position", pos)
        object.__setattr__(self, "mounting", M)


def default_placements(body: BodyModel) -> tuple[ImuPlacement, ...]:
    """One sensor per segment in SEGMENTS order, at `body.segment_centres()`, axes aligned
    with the segment (x forward, y left, z up at the neutral pose)."""
    centres = body.segment_centres()
    return tuple(ImuPlacement(seg, centres[seg], np.eye(3)) for seg in SEGMENTS)


def misplace(
    placements: Sequence[ImuPlacement],
    rng: np.random.Generator,
    sigma_deg: float = 13.5,
    sigma_pos_m: float = 0.0,
) -> tuple[ImuPlacement, ...]:
    """Each sensor turned by its own random rotation (and optionally shifted): the
    misplacement a sensor gets when strapped on by hand, drawn once per sequence.

    The rotation has a uniformly random axis and an angle ~ N(0, sigma_deg) (Shin et al.
    harden IMUNet with σ = 13.5°); it acts in the sensor frame (mounting @ R_err). The position
    shift is N(0, sigma_pos_m) per axis in the segment frame.
    """
    if not np.isfinite(sigma_deg) or sigma_deg < 0:
        raise ValueError(f"misplace sigma_deg={sigma_deg!r}: must be a finite angle >= 0")
    if not np.isfinite(sigma_pos_m) or sigma_pos_m < 0:
        raise ValueError(f"misplace sigma_pos_m={sigma_pos_m!r}: must be a finite length >= 0")
    n = len(placements)
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.radians(sigma_deg) * rng.standard_normal(n)
    R_err = Rotation.from_rotvec(axis * angle[:, None]).as_matrix()
    shift = sigma_pos_m * rng.standard_normal((n, 3))
    return tuple(
        ImuPlacement(p.segment, p.position + shift[k], p.mounting @ R_err[k])
        for k, p in enumerate(placements)
    )


def _stencil_weights(times: np.ndarray, t0: float, t1: float, h: float) -> tuple:
    """Node offsets (N, 5) in units of h and weights (3, N, 5) for derivatives 0, 1, 2 at each
    time; the stencil is shifted inside [t0, t1] where a centred one would leave it."""
    lo = (t0 - times) / h + 2.0
    hi = (t1 - times) / h - 2.0
    shift = np.minimum(np.maximum(0.0, lo), hi)
    nodes = _NODES[None, :] + shift[:, None]
    weights = np.broadcast_to(_W_CENTRAL[:, None, :], (3, len(times), 5)).copy()
    off = shift != 0.0
    if np.any(off):
        # Lagrange weights: sum_j w_j x_j^m = m! delta(m, d) for m = 0..4
        V = nodes[off][:, None, :] ** np.arange(5)[None, :, None]  # (M, 5 powers, 5 nodes)
        rhs = np.zeros((3, 5))
        rhs[0, 0], rhs[1, 1], rhs[2, 2] = 1.0, 1.0, 2.0
        sol = np.linalg.solve(V[None], np.broadcast_to(rhs[:, None, :, None], (3, *V.shape[:2], 1)))
        weights[:, off] = sol[..., 0]
    return nodes, weights


def _placement_arrays(placements: Sequence[ImuPlacement]) -> tuple:
    if len(placements) == 0:
        raise ValueError("simulate_imu: placements is empty")
    for k, p in enumerate(placements):
        if not isinstance(p, ImuPlacement):
            raise TypeError(
                f"simulate_imu: placements[{k}] is {type(p).__name__}, not ImuPlacement"
            )
    seg = np.array([SEGMENT_INDEX[p.segment] for p in placements])
    pos = np.stack([p.position for p in placements])
    mount = np.stack([p.mounting for p in placements])
    return seg, pos, mount


def simulate_imu(
    motion: Motion,
    times: np.ndarray,
    placements: Sequence[ImuPlacement],
    h: float = 1e-3,
    chunk: int = 4096,
) -> np.ndarray:
    """Ideal (noise-free) readings (N, S, 6) at `times` (s, inside the motion): gyro x, y, z
    (rad/s) then specific force x, y, z (m/s²), in each sensor's frame, S = len(placements)."""
    return simulate_imu_with_pose(motion, times, placements, h, chunk)[0]


def simulate_imu_with_pose(
    motion: Motion,
    times: np.ndarray,
    placements: Sequence[ImuPlacement],
    h: float = 1e-3,
    chunk: int = 4096,
) -> tuple[np.ndarray, Pose]:
    """`simulate_imu` plus the body's Pose at `times`, reusing the stencil's centre
    evaluations (saves one forward-kinematics pass in six)."""
    times = np.asarray(times, dtype=float)
    if times.ndim != 1:
        raise ValueError(f"simulate_imu times: must be 1-D, got shape {times.shape}")
    if not np.isfinite(h) or h <= 0:
        raise ValueError(f"simulate_imu h={h!r}: the difference step must be a time > 0 s")
    t0, t1 = float(motion.t[0]), float(motion.t[-1])
    if t1 - t0 < 4 * h:
        raise ValueError(
            f"simulate_imu h={h!r}: the motion lasts {t1 - t0:.4g} s, shorter than the "
            f"5-point stencil (4h)"
        )
    if times.size and (times.min() < t0 - 1e-9 or times.max() > t1 + 1e-9):
        raise ValueError(
            f"simulate_imu times: [{times.min():.4f}, {times.max():.4f}] s leave the motion "
            f"[{t0:.4f}, {t1:.4f}] s"
        )
    seg, pos, mount = _placement_arrays(placements)
    outs, poses = [], []
    for a in range(0, max(len(times), 1), chunk):
        o, p = _simulate_chunk(motion, times[a : a + chunk], seg, pos, mount, h)
        outs.append(o)
        poses.append(p)
    pose = Pose(*(np.concatenate([getattr(p, f.name) for p in poses]) for f in fields(Pose)))
    return np.concatenate(outs), pose


def _apply(R: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R @ v over leading axes, written out: numpy's batched 3x3 matmul is slow."""
    return (
        R[..., :, 0] * v[..., 0, None]
        + R[..., :, 1] * v[..., 1, None]
        + R[..., :, 2] * v[..., 2, None]
    )


def _apply_t(R: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rᵀ @ v over leading axes."""
    return (
        R[..., 0, :] * v[..., 0, None]
        + R[..., 1, :] * v[..., 1, None]
        + R[..., 2, :] * v[..., 2, None]
    )


def _simulate_chunk(
    motion: Motion,
    times: np.ndarray,
    seg: np.ndarray,
    pos: np.ndarray,
    mount: np.ndarray,
    h: float,
) -> tuple[np.ndarray, Pose]:
    n, S = len(times), len(seg)
    t0, t1 = float(motion.t[0]), float(motion.t[-1])
    nodes, w = _stencil_weights(times, t0, t1, h)
    at = np.clip(times[:, None] + nodes * h, t0, t1)
    if n == 0:
        return np.zeros((0, S, 6)), motion.pose(times)
    pose = motion.pose(at.reshape(-1))
    centre = Pose(*(getattr(pose, f.name)[2::5].copy() for f in fields(Pose)))
    slid = np.nonzero(nodes[:, 2] != 0.0)[0]
    if len(slid):  # the stencil's centre is not the sample time there
        exact = motion.pose(times[slid])
        for f in fields(Pose):
            getattr(centre, f.name)[slid] = getattr(exact, f.name)
    R = pose.R.reshape(n, 5, -1, 3, 3)[:, :, seg]  # (N, 5, S, 3, 3)
    p = pose.origin.reshape(n, 5, -1, 3)[:, :, seg] + _apply(R, pos)  # sensor in global

    def diff(order: int, x: np.ndarray) -> np.ndarray:  # stencil sum over the 5 nodes
        return (w[order][:, None, :] @ x.reshape(n, 5, -1)).reshape(n, *x.shape[2:])

    R0 = diff(0, R)
    Rdot = diff(1, R) / h
    acc = diff(2, p) / (h * h)

    def w_ij(i: int, j: int) -> np.ndarray:  # (R0ᵀ Ṙ)[i, j]
        return (R0[..., :, i] * Rdot[..., :, j]).sum(axis=-1)

    omega_seg = 0.5 * np.stack(
        [w_ij(2, 1) - w_ij(1, 2), w_ij(0, 2) - w_ij(2, 0), w_ij(1, 0) - w_ij(0, 1)], axis=-1
    )
    acc[..., 2] += GRAVITY  # specific force = p̈ − g, g = (0, 0, −GRAVITY)
    out = np.empty((n, S, 6))
    out[..., :3] = _apply_t(mount, omega_seg)  # sensor frame: Mᵀ ω
    out[..., 3:] = _apply_t(mount, _apply_t(R0, acc))  # (R0 M)ᵀ f
    return out, centre


def sensor_orientations(
    motion: Motion, times: np.ndarray, placements: Sequence[ImuPlacement]
) -> np.ndarray:
    """True global orientation (N, S, 3, 3) of each sensor frame (segment R @ mounting)."""
    seg, _, mount = _placement_arrays(placements)
    R = motion.pose(np.asarray(times, dtype=float)).R[:, seg]
    return np.einsum("nsij,sjk->nsik", R, mount)
