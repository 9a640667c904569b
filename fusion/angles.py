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


# the joint table as index arrays, so every joint of every frame is decomposed in one pass
_J_NAMES = tuple(JOINTS)
_J_PARENT = np.array([-1 if p is None else SEGMENT_INDEX[p] for p, _, _, _ in JOINTS.values()])
_J_CHILD = np.array([SEGMENT_INDEX[c] for _, c, _, _ in JOINTS.values()])
_J_SIGNS = np.stack([sg for _, _, _, sg in JOINTS.values()])  # (joints, 3)
_J_PROG = np.flatnonzero(_J_PARENT < 0)  # joints relative to the direction of progression
_J_SEG = np.flatnonzero(_J_PARENT >= 0)
#: (joint, Cardan axis) of every named DOF, flat over the (joints * 3) Cardan angles
_DOF_SRC = np.array(
    [
        3 * j + k
        for name in DOFS
        for j, (_, _, names, _) in enumerate(JOINTS.values())
        for k, n in enumerate(names)
        if n == name
    ]
)
_DOF_HAS = np.array(
    [any(name in names for _, _, names, _ in JOINTS.values()) for name in DOFS], bool
)
if len(_DOF_SRC) != _DOF_HAS.sum():
    raise RuntimeError("fusion.angles: a DOF is named by two joints in JOINTS")


def _all_joint_cardan(R_seg: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Signed clinical Cardan angles (..., joints, 3) in JOINTS order: the per-joint
    `matrix_to_cardan(relative_rotation(parent, child)) * signs` of every joint at once (the
    same float operations, so the same numbers, ~10x cheaper for one frame)."""
    R_seg = np.asarray(R_seg)
    Rc = R_seg[..., _J_CHILD, :, :]
    Rp = np.empty(Rc.shape, np.result_type(R_seg, float))
    Rp[..., _J_SEG, :, :] = R_seg[..., _J_PARENT[_J_SEG], :, :]
    Rp[..., _J_PROG, :, :] = yaw_matrix(np.asarray(heading))[..., None, :, :]
    return matrix_to_cardan(relative_rotation(Rp, Rc)) * _J_SIGNS


def joint_cardan(R_seg: np.ndarray, heading: np.ndarray) -> dict[str, np.ndarray]:
    """Signed clinical Cardan angles (…, 3) per joint from global segment rotations.

    R_seg: (..., 13, 3, 3) in SEGMENTS order; heading: (...,) rad, the direction of progression.
    """
    cardan = _all_joint_cardan(R_seg, heading)
    return {joint: cardan[..., j, :] for j, joint in enumerate(_J_NAMES)}


def dofs_from_rotations(R_seg: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Inverse of local_rotations + forward kinematics: global rotations → DOF angles."""
    flat = _all_joint_cardan(R_seg, heading).reshape(*R_seg.shape[:-3], -1)
    dofs = np.zeros((*R_seg.shape[:-3], len(DOFS)))
    dofs[..., _DOF_HAS] = flat[..., _DOF_SRC]
    return dofs


_FEET = np.array([SEGMENT_INDEX[f"foot_{side}"] for side in SIDES])
_FEET_SIGN = np.array([{"l": _L, "r": _R}[side] for side in SIDES])


def foot_progression(R_seg: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Foot progression angle (…, 2) for (left, right), degrees, toe-in positive."""
    fwd = R_seg[..., _FEET, :, :][..., 0]  # (..., 2, 3): each foot's long axis in global
    yaw = np.arctan2(fwd[..., 1], fwd[..., 0])
    rel = np.angle(np.exp(1j * (yaw - np.asarray(heading)[..., None])))
    return _FEET_SIGN * np.degrees(rel)


#: where each published angle comes from: a DOF column, or a foot progression side
_ANG_DOF = [(i, DOF_INDEX[n]) for n, i in ANGLE_INDEX.items() if n in DOF_INDEX]
_ANG_FP = [
    (i, SIDES.index(n[-1])) for n, i in ANGLE_INDEX.items() if n.startswith("foot_progression_")
]
if len(_ANG_DOF) + len(_ANG_FP) != len(ANGLES):
    raise RuntimeError("fusion.angles: an ANGLES name is neither a DOF nor a foot progression")
_ANG_DOF_OUT, _ANG_DOF_SRC = (np.array(v, int) for v in zip(*_ANG_DOF, strict=True))
_ANG_FP_OUT, _ANG_FP_SRC = (np.array(v, int) for v in zip(*_ANG_FP, strict=True))


def angles_from_rotations(R_seg: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Global segment rotations (…, 13, 3, 3) → published clinical angles (…, len(ANGLES))."""
    dofs = dofs_from_rotations(R_seg, heading)
    fp = foot_progression(R_seg, heading)
    out = np.zeros((*R_seg.shape[:-3], len(ANGLES)))
    out[..., _ANG_DOF_OUT] = dofs[..., _ANG_DOF_SRC]
    out[..., _ANG_FP_OUT] = fp[..., _ANG_FP_SRC]
    return out


def angles_from_dofs(dofs: np.ndarray) -> np.ndarray:
    """The published angles implied by DOF angles (foot progression needs FK: see kinematics)."""
    out = np.full((*np.shape(dofs)[:-1], len(ANGLES)), np.nan)
    for name, i in ANGLE_INDEX.items():
        if name in DOF_INDEX:
            out[..., i] = dofs[..., DOF_INDEX[name]]
    return out
