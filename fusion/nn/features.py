"""What the neural models eat and what their outputs mean, shared by training and streaming.

One function, `normalise_inputs`, turns contract-unit inputs into model inputs; training and
the live estimator both call it, so a model never sees data prepared two ways. It is strictly
per frame (no history), so normalising a stream frame by frame gives the same numbers as
normalising a whole window.

Frames. The models output segment orientations in a *heading-free* frame: the global frame
turned about the vertical so that x points along the direction of progression (training
targets are `yaw(-heading) @ R`). Joint angles are relative orientations of two segments, so
they do not care about the heading at all; the only angles that do are the pelvis angles and
foot progression, which are defined against the direction of progression — in the heading-free
frame that direction is x, so `angles_from_output` passes heading 0 and gets them right as long
as the model's yaw is right. IMU inputs are in sensor frames and carry no heading; joint inputs
are turned by the yaw of the (noisy) hip and shoulder lines of the same frame, so the network
learns pelvis rotation and foot progression relative to the trunk's facing direction (the
progression direction is not observable from one frame; the temporal layers average it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fusion.angles import angles_from_rotations, yaw_matrix
from fusion.skeleton import GRAVITY, KEYPOINT_INDEX, KEYPOINTS, SEGMENTS

__all__ = [
    "ACC_SCALE",
    "GYRO_SCALE",
    "JOINT_SCALE",
    "angles_from_output",
    "heading_free_rotations",
    "matrix_to_rot6d",
    "normalise_inputs",
    "normalise_joints",
    "rot6d_to_matrix",
]

GYRO_SCALE = 5.0  # rad/s: gyro inputs are divided by this (gait peaks ~ 5-10 rad/s)
ACC_SCALE = GRAVITY  # m/s²: specific force in g
JOINT_SCALE = 0.5  # m: root-relative joint centres divided by this
_CLIP = 10.0  # normalised inputs are clipped to ±this (saturated or wild outliers)

_HIP_L, _HIP_R = KEYPOINT_INDEX["hip_l"], KEYPOINT_INDEX["hip_r"]
_SH_L, _SH_R = KEYPOINT_INDEX["shoulder_l"], KEYPOINT_INDEX["shoulder_r"]


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _check(name: str, x: Any, tail: tuple[int, ...]) -> None:
    shape = tuple(x.shape)
    if len(shape) < len(tail) + 1 or shape[-len(tail) :] != tail:
        raise ValueError(f"normalise_inputs: {name} has shape {shape}, expected (..., {tail})")


_SCALE = np.array([GYRO_SCALE] * 3 + [ACC_SCALE] * 3, np.float32)
_UP = np.array([0.0, 1.0], np.float32)


def normalise_inputs(
    imu: Any, imu_mask: Any, joints: Any, joints_mask: Any
) -> tuple[Any, Any, Any, Any]:
    """Contract inputs → model inputs (numpy in, numpy out; torch in, torch out).

    imu (..., 13, 6) gyro rad/s + specific force m/s² in the sensor frame; joints (..., 17, 3)
    m in any world frame with z up and any origin; masks (..., 13) / (..., 17) bool, False =
    missing. Returns float32 (imu, imu_mask, joints, joints_mask): gyro / GYRO_SCALE, force in
    g, joints relative to the mid-hip and turned so the hip+shoulder line points along y
    (heading-free), divided by JOINT_SCALE; non-finite samples become masked; masked entries
    are zero. A frame without both hips loses all its joints (no root to be relative to).
    """
    _check("imu", imu, (len(SEGMENTS), 6))
    _check("imu_mask", imu_mask, (len(SEGMENTS),))
    _check("joints", joints, (len(KEYPOINTS), 3))
    _check("joints_mask", joints_mask, (len(KEYPOINTS),))
    if not _is_torch(imu):
        return _normalise(imu, imu_mask, joints, joints_mask)
    out = _normalise(*(v.detach().cpu().numpy() for v in (imu, imu_mask, joints, joints_mask)))
    return tuple(torch.from_numpy(v).to(imu.device) for v in out)  # type: ignore[return-value]


def _normalise(
    imu: np.ndarray, imu_mask: np.ndarray, joints: np.ndarray, joints_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`normalise_inputs` in float32 numpy (the live estimator calls it every tick: no small
    torch ops)."""
    imu = np.asarray(imu, np.float32)
    imu_mask = np.asarray(imu_mask, bool) & np.isfinite(imu).all(-1)
    imu = np.where(imu_mask[..., None], imu, np.float32(0.0)) / _SCALE
    np.clip(imu, -_CLIP, _CLIP, out=imu)
    return (imu, imu_mask, *normalise_joints(joints, joints_mask))


def normalise_joints(joints: Any, joints_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """The joints' half of `normalise_inputs`, numpy only (training draws fresh joint noise
    per window and normalises only the joints). The length of the facing vector is torch's
    `vector_norm`, as when the shipped models were trained (numpy's sum of squares rounds
    differently: torch fuses a multiply-add)."""
    _check("joints", joints, (len(KEYPOINTS), 3))
    _check("joints_mask", joints_mask, (len(KEYPOINTS),))
    joints = np.asarray(joints, np.float32)
    joints_mask = np.asarray(joints_mask, bool) & np.isfinite(joints).all(-1)
    zero = np.float32(0.0)
    j = np.where(joints_mask[..., None], joints, zero)
    hips_ok = joints_mask[..., _HIP_L] & joints_mask[..., _HIP_R]
    root = np.float32(0.5) * (j[..., _HIP_L, :] + j[..., _HIP_R, :])
    j = j - root[..., None, :]
    # facing: the left-pointing horizontal direction of the hip line plus the shoulder line
    lat = j[..., _HIP_L, :2] - j[..., _HIP_R, :2]
    sh_ok = (joints_mask[..., _SH_L] & joints_mask[..., _SH_R])[..., None]
    lat = lat + np.where(sh_ok, j[..., _SH_L, :2] - j[..., _SH_R, :2], zero)
    norm = torch.linalg.vector_norm(torch.from_numpy(lat), dim=-1, keepdim=True).numpy()
    big = norm > 1e-6
    lat = np.where(big, lat / np.maximum(norm, np.float32(1e-6)), zero)
    lat = lat + np.where(big, zero, np.float32(1.0)) * _UP
    # rotate so that `lat` becomes +y: x' = lat_y x - lat_x y, y' = lat_x x + lat_y y
    ly, lx = lat[..., 1:2], lat[..., 0:1]
    x, y, z = j[..., 0], j[..., 1], j[..., 2]
    xr = ly * x - lx * y
    yr = lx * x + ly * y
    j = np.stack([xr, yr, z], axis=-1) / np.float32(JOINT_SCALE)
    joints_mask = joints_mask & hips_ok[..., None]
    j = np.where(joints_mask[..., None], j, zero)
    np.clip(j, -_CLIP, _CLIP, out=j)
    return j, joints_mask


def heading_free_rotations(rotations: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Global segment rotations (T, 13, 3, 3) → the training target frame: yaw(-heading) @ R."""
    yaw = yaw_matrix(-np.asarray(heading, np.float64))
    return np.einsum("tij,tsjk->tsik", yaw, rotations).astype(np.float32)


def rot6d_to_matrix(r6: Any) -> Any:
    """6-D rotation (Zhou et al. 2019: the first two columns) (..., 6) → matrices (..., 3, 3).

    Gram-Schmidt on the two columns; numpy (in the input's float type: the live estimator
    calls it every tick, where torch's per-op cost showed) or torch (differentiable)."""
    if not _is_torch(r6):
        r6 = np.asarray(r6)
        r6 = r6 if r6.dtype in (np.float32, np.float64) else r6.astype(np.float32)
        a1, a2 = r6[..., 0:3], r6[..., 3:6]
        tiny = r6.dtype.type(1e-8)
        b1 = a1 / np.maximum(np.sqrt(np.einsum("...i,...i->...", a1, a1)), tiny)[..., None]
        a2 = a2 - np.einsum("...i,...i->...", b1, a2)[..., None] * b1
        b2 = a2 / np.maximum(np.sqrt(np.einsum("...i,...i->...", a2, a2)), tiny)[..., None]
        return np.stack([b1, b2, np.cross(b1, b2)], axis=-1)
    a1, a2 = r6[..., 0:3], r6[..., 3:6]
    b1 = a1 / torch.linalg.vector_norm(a1, dim=-1, keepdim=True).clamp_min(1e-8)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / torch.linalg.vector_norm(a2, dim=-1, keepdim=True).clamp_min(1e-8)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(R: Any) -> Any:
    """Rotation matrices (..., 3, 3) → 6-D representation (first two columns, column-major)."""
    if _is_torch(R):
        return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)
    R = np.asarray(R)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def angles_from_output(rot: Any) -> np.ndarray:
    """Heading-free segment rotations (T, 13, 3, 3) (or rot6d (T, 13, 6)) → (T, len(ANGLES))
    degrees via fusion.angles.angles_from_rotations with heading 0 (see the module docstring
    for why the pelvis angles and foot progression come out right)."""
    r = rot.detach().cpu().numpy() if _is_torch(rot) else np.asarray(rot)
    if r.shape[-1] == 6 and r.ndim >= 2:
        r = rot6d_to_matrix(r.astype(np.float32))
    if r.shape[-3:] != (len(SEGMENTS), 3, 3):
        raise ValueError(f"angles_from_output: rot has shape {r.shape}, expected (T, 13, 3, 3)")
    return angles_from_rotations(r.astype(np.float64), np.zeros(r.shape[:-3]))
