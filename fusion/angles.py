"""Clinical joint-angle conventions: segment orientations ⇄ named angles.

Every joint angle set is a Cardan decomposition of the child segment's orientation relative to
its parent (the pelvis: relative to the direction of progression) in the intrinsic sequence
Y-X-Z of our frames (x forward, y left, z up): first the flexion axis (medio-lateral), then the
floating ab/adduction axis (antero-posterior), then the long axis (Plug-in Gait / Schwartz 2008
convention: flexion, adduction, rotation). Signs follow the normative curves: flexion,
adduction, internal rotation and dorsiflexion are positive; left-side angles are mirrored so
that both sides read alike.

| angles | parent → child | Y (1st) | X (2nd) | Z (3rd) |
|---|---|---|---|---|
| pelvis tilt/obliquity/rotation | progression → pelvis | +tilt (anterior) | −obliquity (right side up +) | +rotation (right side forward +) |
| hip flexion/adduction/rotation | pelvis → thigh | −flexion | +add (r) / −add (l) | +int (r) / −int (l) |
| knee flexion/adduction/rotation | thigh → shank | +flexion | +add (r) / −add (l) | +int (r) / −int (l) |
| ankle dorsiflexion/inversion/rotation | shank → foot | −dorsiflexion | +inv (r) / −inv (l) | +int (r) / −int (l) |
| trunk flexion/lateral/rotation | pelvis → sternum | +flexion | +lateral (bend right +) | +rotation (right side forward +) |
| neck flexion/lateral/rotation | sternum → head | +flexion | +lateral | +rotation |
| shoulder flexion/abduction/rotation | sternum → upper arm | −flexion | −abd (r) / +abd (l) | +int (r) / −int (l) |
| elbow flexion | upper arm → forearm | −flexion | 0 | 0 |

foot progression: yaw of the foot's long axis relative to the direction of progression,
internal (toe-in) positive, mirrored for the left foot.

The sequence has its gimbal lock at ±90° about X (adduction/abduction/obliquity), far from the
range of gait; shoulder abduction near 90° is reported with reduced accuracy there.
"""

from __future__ import annotations

import numpy as np

from fusion.skeleton import ANGLE_INDEX, ANGLES, DOF_INDEX, DOFS, SEGMENT_INDEX, SIDES

SEQUENCE = "YXZ"

# joint -> (parent segment or None for the progression frame, child segment,
#           dof names (Y, X, Z) or None, signs for (Y, X, Z) per side)
_R, _L = +1.0, -1.0


def _joint_table() -> dict[str, tuple[str | None, str, tuple[str | None, ...], np.ndarray]]:
    table: dict[str, tuple[str | None, str, tuple[str | None, ...], np.ndarray]] = {
        "pelvis": (
            None,
            "pelvis",
            ("pelvis_tilt", "pelvis_obliquity", "pelvis_rotation"),
            np.array([1.0, -1.0, 1.0]),
        ),
        "trunk": (
            "pelvis",
            "sternum",
            ("trunk_flexion", "trunk_lateral", "trunk_rotation"),
            np.array([1.0, 1.0, 1.0]),
        ),
        "neck": (
            "sternum",
            "head",
            ("neck_flexion", "neck_lateral", "neck_rotation"),
            np.array([1.0, 1.0, 1.0]),
        ),
    }
    for side, m in zip(SIDES, (_L, _R), strict=True):
        table[f"hip_{side}"] = (
            "pelvis",
            f"thigh_{side}",
            tuple(f"hip_{a}_{side}" for a in ("flexion", "adduction", "rotation")),
            np.array([-1.0, m, m]),
        )
        table[f"knee_{side}"] = (
            f"thigh_{side}",
            f"shank_{side}",
            tuple(f"knee_{a}_{side}" for a in ("flexion", "adduction", "rotation")),
            np.array([1.0, m, m]),
        )
        table[f"ankle_{side}"] = (
            f"shank_{side}",
            f"foot_{side}",
            tuple(f"ankle_{a}_{side}" for a in ("dorsiflexion", "inversion", "rotation")),
            np.array([-1.0, m, m]),
        )
        table[f"shoulder_{side}"] = (
            "sternum",
            f"upperarm_{side}",
            tuple(f"shoulder_{a}_{side}" for a in ("flexion", "abduction", "rotation")),
            np.array([-1.0, -m, m]),
        )
        table[f"elbow_{side}"] = (
            f"upperarm_{side}",
            f"forearm_{side}",
            (f"elbow_flexion_{side}", None, None),
            np.array([-1.0, 0.0, 0.0]),
        )
    return table


JOINTS = _joint_table()
#: child segment -> joint name (every segment but none is the child of exactly one joint)
JOINT_OF_SEGMENT = {child: j for j, (_, child, _, _) in JOINTS.items()}


def yaw_matrix(heading: np.ndarray) -> np.ndarray:
    """Rotations about global z by `heading` (rad), shape (..., 3, 3)."""
    c, s = np.cos(heading), np.sin(heading)
    out = np.zeros((*np.shape(heading), 3, 3))
    out[..., 0, 0], out[..., 0, 1] = c, -s
    out[..., 1, 0], out[..., 1, 1] = s, c
    out[..., 2, 2] = 1.0
    return out


def cardan_to_matrix(cardan_deg: np.ndarray) -> np.ndarray:
    """Intrinsic Y-X-Z Cardan angles (…, 3) in degrees → rotation matrices (…, 3, 3).

    Closed form of Ry(a)·Rx(b)·Rz(c): the same as scipy's from_euler("YXZ"), ~20× faster,
    and forward kinematics spends most of its time here.
    """
    a, b, c = np.radians(np.moveaxis(np.asarray(cardan_deg, float), -1, 0))
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    out = np.empty((*np.shape(a), 3, 3))
    out[..., 0, 0] = ca * cc + sa * sb * sc
    out[..., 0, 1] = -ca * sc + sa * sb * cc
    out[..., 0, 2] = sa * cb
    out[..., 1, 0] = cb * sc
    out[..., 1, 1] = cb * cc
    out[..., 1, 2] = -sb
    out[..., 2, 0] = -sa * cc + ca * sb * sc
    out[..., 2, 1] = sa * sc + ca * sb * cc
    out[..., 2, 2] = ca * cb
    return out


def matrix_to_cardan(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (…, 3, 3) → intrinsic Y-X-Z Cardan angles (…, 3) in degrees.

    Closed form of the inverse of `cardan_to_matrix` (a = atan2(r02, r22), b = −asin(r12),
    c = atan2(r10, r11)): scipy's as_euler gives the same angles ~50× slower, and this runs
    on every tick of the live estimators.
    """
    R = np.asarray(R, float)
    a = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    b = -np.arcsin(np.clip(R[..., 1, 2], -1.0, 1.0))
    c = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.degrees(np.stack([a, b, c], axis=-1))


def local_rotations(
    dofs: np.ndarray, joints: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """Clinical DOF angles (T, len(DOFS)) in degrees → each joint's child-in-parent rotation."""
    dofs = np.asarray(dofs, dtype=float)
    if dofs.shape[-1] != len(DOFS):
        raise ValueError(f"dofs has {dofs.shape[-1]} columns, expected {len(DOFS)} (DOFS)")
    out = {}
    for joint, (_, _, names, signs) in JOINTS.items():
        if joints is not None and joint not in joints:
            continue
        cardan = np.zeros((*dofs.shape[:-1], 3))
        for k, name in enumerate(names):
            if name is not None:
                cardan[..., k] = signs[k] * dofs[..., DOF_INDEX[name]]
        out[joint] = cardan_to_matrix(cardan)
    return out


def relative_rotation(R_parent: np.ndarray, R_child: np.ndarray) -> np.ndarray:
    """Child orientation expressed in the parent frame: Rpᵀ Rc, batched."""
    return np.einsum("...ji,...jk->...ik", R_parent, R_child)


def joint_cardan(R_seg: np.ndarray, heading: np.ndarray) -> dict[str, np.ndarray]:
    """Signed clinical Cardan angles (…, 3) per joint from global segment rotations.

    R_seg: (..., 13, 3, 3) in SEGMENTS order; heading: (...,) rad, the direction of progression.
    """
    out = {}
    for joint, (parent, child, _, signs) in JOINTS.items():
        Rc = R_seg[..., SEGMENT_INDEX[child], :, :]
        Rp = yaw_matrix(heading) if parent is None else R_seg[..., SEGMENT_INDEX[parent], :, :]
        out[joint] = matrix_to_cardan(relative_rotation(Rp, Rc)) * signs
    return out


def dofs_from_rotations(R_seg: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Inverse of local_rotations + forward kinematics: global rotations → DOF angles."""
    cardan = joint_cardan(R_seg, heading)
    dofs = np.zeros((*R_seg.shape[:-3], len(DOFS)))
    for joint, (_, _, names, _) in JOINTS.items():
        for k, name in enumerate(names):
            if name is not None:
                dofs[..., DOF_INDEX[name]] = cardan[joint][..., k]
    return dofs


def foot_progression(R_seg: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Foot progression angle (…, 2) for (left, right), degrees, toe-in positive."""
    out = np.zeros((*R_seg.shape[:-3], 2))
    for k, (side, m) in enumerate(zip(SIDES, (_L, _R), strict=True)):
        fwd = R_seg[..., SEGMENT_INDEX[f"foot_{side}"], :, 0]  # foot long axis in global
        yaw = np.arctan2(fwd[..., 1], fwd[..., 0])
        rel = np.angle(np.exp(1j * (yaw - heading)))
        out[..., k] = m * np.degrees(rel)
    return out


def angles_from_rotations(R_seg: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Global segment rotations (…, 13, 3, 3) → published clinical angles (…, len(ANGLES))."""
    dofs = dofs_from_rotations(R_seg, heading)
    fp = foot_progression(R_seg, heading)
    out = np.zeros((*R_seg.shape[:-3], len(ANGLES)))
    for name, i in ANGLE_INDEX.items():
        if name.startswith("foot_progression_"):
            out[..., i] = fp[..., SIDES.index(name[-1])]
        else:
            out[..., i] = dofs[..., DOF_INDEX[name]]
    return out


def angles_from_dofs(dofs: np.ndarray) -> np.ndarray:
    """The published angles implied by DOF angles (foot progression needs FK: see kinematics)."""
    out = np.full((*np.shape(dofs)[:-1], len(ANGLES)), np.nan)
    for name, i in ANGLE_INDEX.items():
        if name in DOF_INDEX:
            out[..., i] = dofs[..., DOF_INDEX[name]]
    return out
