"""The project's shared vocabulary: segment, keypoint, degree-of-freedom and angle names.

Everything that crosses a module or process boundary indexes arrays by these tuples, so the
order here is part of the contract (DESIGN.md "The contract").

Frames: the global frame is x forward (initial walking direction), y left, z up (metres).
Every segment frame coincides with the global frame when the body stands in the anatomical
neutral pose (arms hanging, palms facing the thighs, feet pointing forward); a segment's
origin is its proximal joint.
"""

from __future__ import annotations

SIDES = ("l", "r")

#: The 13 body segments that carry an IMU, in contract order. "sternum" is the thorax.
SEGMENTS: tuple[str, ...] = (
    "head",
    "sternum",
    "pelvis",
    "upperarm_l",
    "upperarm_r",
    "forearm_l",
    "forearm_r",
    "thigh_l",
    "thigh_r",
    "shank_l",
    "shank_r",
    "foot_l",
    "foot_r",
)
SEGMENT_INDEX = {name: i for i, name in enumerate(SEGMENTS)}

#: Each segment's parent in the kinematic tree (the pelvis is the root).
PARENT: dict[str, str | None] = {
    "pelvis": None,
    "sternum": "pelvis",
    "head": "sternum",
    "upperarm_l": "sternum",
    "upperarm_r": "sternum",
    "forearm_l": "upperarm_l",
    "forearm_r": "upperarm_r",
    "thigh_l": "pelvis",
    "thigh_r": "pelvis",
    "shank_l": "thigh_l",
    "shank_r": "thigh_r",
    "foot_l": "shank_l",
    "foot_r": "shank_r",
}

#: Parents before children: the order forward kinematics walks the tree.
TREE_ORDER: tuple[str, ...] = (
    "pelvis",
    "sternum",
    "head",
    "upperarm_l",
    "upperarm_r",
    "forearm_l",
    "forearm_r",
    "thigh_l",
    "thigh_r",
    "shank_l",
    "shank_r",
    "foot_l",
    "foot_r",
)

#: 2-D/3-D keypoints: a COCO-17-style set (one head point instead of nose/eyes/ears) plus
#: heels and toes. Video estimators and cameras use this order.
KEYPOINTS: tuple[str, ...] = (
    "head",
    "shoulder_l",
    "shoulder_r",
    "elbow_l",
    "elbow_r",
    "wrist_l",
    "wrist_r",
    "hip_l",
    "hip_r",
    "knee_l",
    "knee_r",
    "ankle_l",
    "ankle_r",
    "heel_l",
    "heel_r",
    "toe_l",
    "toe_r",
)
KEYPOINT_INDEX = {name: i for i, name in enumerate(KEYPOINTS)}

#: Which segment each keypoint is rigidly attached to.
KEYPOINT_SEGMENT: dict[str, str] = {
    "head": "head",
    "shoulder_l": "upperarm_l",
    "shoulder_r": "upperarm_r",
    "elbow_l": "forearm_l",
    "elbow_r": "forearm_r",
    "wrist_l": "forearm_l",
    "wrist_r": "forearm_r",
    "hip_l": "thigh_l",
    "hip_r": "thigh_r",
    "knee_l": "shank_l",
    "knee_r": "shank_r",
    "ankle_l": "foot_l",
    "ankle_r": "foot_r",
    "heel_l": "foot_l",
    "heel_r": "foot_r",
    "toe_l": "foot_l",
    "toe_r": "foot_r",
}


def _sided(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{n}_{s}" for s in SIDES for n in names)


#: Degrees of freedom that pose the body (degrees), beside the root position and heading.
#: Each joint is (parent, child, three Cardan angles in the sequence of fusion.angles).
DOFS: tuple[str, ...] = (
    ("pelvis_tilt", "pelvis_obliquity", "pelvis_rotation")
    + _sided(
        (
            "hip_flexion",
            "hip_adduction",
            "hip_rotation",
            "knee_flexion",
            "knee_adduction",
            "knee_rotation",
            "ankle_dorsiflexion",
            "ankle_inversion",
            "ankle_rotation",
        )
    )
    + ("trunk_flexion", "trunk_lateral", "trunk_rotation")
    + ("neck_flexion", "neck_lateral", "neck_rotation")
    + _sided(("shoulder_flexion", "shoulder_abduction", "shoulder_rotation", "elbow_flexion"))
)
DOF_INDEX = {name: i for i, name in enumerate(DOFS)}

#: The published joint angles (degrees), in the order of the `gait-stream/angles` channels.
ANGLES: tuple[str, ...] = (
    ("pelvis_tilt", "pelvis_obliquity", "pelvis_rotation")
    + _sided(
        (
            "hip_flexion",
            "hip_adduction",
            "hip_rotation",
            "knee_flexion",
            "ankle_dorsiflexion",
            "foot_progression",
        )
    )
    + ("trunk_flexion", "trunk_lateral", "trunk_rotation")
    + _sided(("shoulder_flexion", "shoulder_abduction", "shoulder_rotation", "elbow_flexion"))
)
ANGLE_INDEX = {name: i for i, name in enumerate(ANGLES)}

#: Angle groups used when errors are reported.
LOWER_LIMB_ANGLES = tuple(a for a in ANGLES if a.startswith(("hip_", "knee_", "ankle_", "foot_")))
UPPER_LIMB_ANGLES = tuple(a for a in ANGLES if a.startswith(("shoulder_", "elbow_")))
TRUNK_PELVIS_ANGLES = tuple(a for a in ANGLES if a.startswith(("pelvis_", "trunk_")))
#: the segments of the legs (thighs, shanks, feet), in SEGMENTS order
LEG_SEGMENTS = tuple(s for s in SEGMENTS if s.startswith(("thigh_", "shank_", "foot_")))

#: IMU channel layout per sensor (contract default): gyro rad/s then specific force m/s².
IMU_CHANNELS: tuple[str, ...] = ("gyr_x", "gyr_y", "gyr_z", "acc_x", "acc_y", "acc_z")
IMU_UNITS: tuple[str, ...] = ("rad/s",) * 3 + ("m/s^2",) * 3

GRAVITY = 9.81  # m/s², magnitude; gravity points along -z

#: Gait events published on `gait-stream/events`.
GAIT_EVENTS: tuple[str, ...] = ("heel_strike_l", "heel_strike_r", "toe_off_l", "toe_off_r")

#: Per-stride gait parameters published on `gait-stream/gait` (one sample per stride).
GAIT_PARAMS: tuple[str, ...] = (
    "side",  # 0 = left, 1 = right stride
    "cadence",  # steps/min
    "stride_time",  # s
    "step_length",  # m
    "stride_length",  # m
    "speed",  # m/s
    "knee_flexion_max_ext",  # deg, knee flexion at maximum extension in stance
    "gdi",  # Gait Deviation Index (100 = typical)
)
