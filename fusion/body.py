"""Body model: segment lengths from stature and a few shape parameters.

Ratios are the stature fractions of Drillis & Contini (1966) as tabulated in Winter,
*Biomechanics and Motor Control of Human Movement* (4th ed., 2009, Fig. 4.1): shoulder height
0.818 H, greater trochanter 0.530 H, knee 0.285 H, ankle 0.039 H, foot length 0.152 H,
shoulder width 0.259 H, upper arm 0.186 H, forearm 0.146 H, chin 0.870 H. The hip-joint-centre
separation (≈ 0.095 H) follows Bell, Pedersen & Brand (1990): HJC 36 % of the inter-ASIS
distance either side of the midline with inter-ASIS ≈ 0.13 H. The lumbosacral joint sits 0.05 H
above the hip centres (de Leva 1996, pelvis segment).

Every offset below is expressed in the parent segment's frame at neutral pose (x forward,
y left, z up); see fusion/skeleton.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from fusion.skeleton import KEYPOINTS, SEGMENTS, SIDES

# stature fractions (Winter 2009 / Drillis & Contini 1966)
_HIP_HEIGHT = 0.530
_KNEE_HEIGHT = 0.285
_ANKLE_HEIGHT = 0.039
_SHOULDER_HEIGHT = 0.818
_NECK_HEIGHT = 0.840  # C7, just above the acromion line
_CHIN_HEIGHT = 0.870
_FOOT_LENGTH = 0.152
_HEEL_BEHIND_ANKLE = 0.040
_SHOULDER_WIDTH = 0.259
_UPPER_ARM = 0.186
_FOREARM = 0.146
_HJC_WIDTH = 0.095
_LUMBAR_ABOVE_HJC = 0.050


@dataclass(frozen=True)
class BodyShape:
    """Stature and shape factors (1.0 = the tabulated average adult proportions)."""

    height: float = 1.70  # m
    leg_scale: float = 1.0  # lengthens thigh and shank together
    trunk_scale: float = 1.0
    arm_scale: float = 1.0
    shoulder_width_scale: float = 1.0
    hip_width_scale: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.height) or not 0.5 <= self.height <= 2.5:
            raise ValueError(f"BodyShape.height={self.height!r}: must be a stature in 0.5–2.5 m")
        for f in fields(self):
            if f.name == "height":
                continue
            v = getattr(self, f.name)
            if not np.isfinite(v) or not 0.7 <= v <= 1.3:
                raise ValueError(f"BodyShape.{f.name}={v!r}: must be a factor in 0.7–1.3")


@dataclass(frozen=True)
class BodyModel:
    """Segment geometry derived from a BodyShape."""

    shape: BodyShape = field(default_factory=BodyShape)

    # -- lengths (m) -------------------------------------------------------------------------
    @property
    def thigh_length(self) -> float:
        return (_HIP_HEIGHT - _KNEE_HEIGHT) * self.shape.height * self.shape.leg_scale

    @property
    def shank_length(self) -> float:
        return (_KNEE_HEIGHT - _ANKLE_HEIGHT) * self.shape.height * self.shape.leg_scale

    @property
    def ankle_height(self) -> float:
        return _ANKLE_HEIGHT * self.shape.height

    @property
    def leg_length(self) -> float:
        """Hip-joint centre to floor, standing: the length gait speeds are scaled by."""
        return self.thigh_length + self.shank_length + self.ankle_height

    @property
    def foot_length(self) -> float:
        return _FOOT_LENGTH * self.shape.height

    @property
    def hip_width(self) -> float:
        return _HJC_WIDTH * self.shape.height * self.shape.hip_width_scale

    @property
    def upper_arm_length(self) -> float:
        return _UPPER_ARM * self.shape.height * self.shape.arm_scale

    @property
    def forearm_length(self) -> float:
        return _FOREARM * self.shape.height * self.shape.arm_scale

    @property
    def trunk_length(self) -> float:
        """Lumbosacral joint to C7."""
        h = self.shape.height
        return (_NECK_HEIGHT - _HIP_HEIGHT - _LUMBAR_ABOVE_HJC) * h * self.shape.trunk_scale

    @property
    def standing_root_height(self) -> float:
        """Height of the mid-hip point when standing in the neutral pose."""
        return self.leg_length

    # -- offsets -----------------------------------------------------------------------------
    def joint_offsets(self) -> dict[str, np.ndarray]:
        """Each segment's origin in its parent's frame (neutral pose)."""
        h = self.shape.height
        half_hip = self.hip_width / 2
        half_sh = _SHOULDER_WIDTH * h * self.shape.shoulder_width_scale / 2
        shoulder_drop = (_NECK_HEIGHT - _SHOULDER_HEIGHT) * h
        off = {
            "pelvis": np.zeros(3),
            "sternum": np.array([0.0, 0.0, _LUMBAR_ABOVE_HJC * h]),
            "head": np.array([0.0, 0.0, self.trunk_length]),
        }
        for side, sign in zip(SIDES, (1.0, -1.0), strict=True):
            off[f"thigh_{side}"] = np.array([0.0, sign * half_hip, 0.0])
            off[f"shank_{side}"] = np.array([0.0, 0.0, -self.thigh_length])
            off[f"foot_{side}"] = np.array([0.0, 0.0, -self.shank_length])
            off[f"upperarm_{side}"] = np.array(
                [0.0, sign * half_sh, self.trunk_length - shoulder_drop]
            )
            off[f"forearm_{side}"] = np.array([0.0, 0.0, -self.upper_arm_length])
        return off

    def keypoint_offsets(self) -> dict[str, tuple[str, np.ndarray]]:
        """Each keypoint as (segment, position in that segment's frame)."""
        h = self.shape.height
        head_point = np.array([0.04 * h, 0.0, (_CHIN_HEIGHT - _NECK_HEIGHT) * h + 0.06 * h])
        kp: dict[str, tuple[str, np.ndarray]] = {"head": ("head", head_point)}
        for side in SIDES:
            kp[f"shoulder_{side}"] = (f"upperarm_{side}", np.zeros(3))
            kp[f"elbow_{side}"] = (f"forearm_{side}", np.zeros(3))
            kp[f"wrist_{side}"] = (f"forearm_{side}", np.array([0.0, 0.0, -self.forearm_length]))
            kp[f"hip_{side}"] = (f"thigh_{side}", np.zeros(3))
            kp[f"knee_{side}"] = (f"shank_{side}", np.zeros(3))
            kp[f"ankle_{side}"] = (f"foot_{side}", np.zeros(3))
            kp[f"heel_{side}"] = (
                f"foot_{side}",
                np.array([-_HEEL_BEHIND_ANKLE * h, 0.0, -self.ankle_height]),
            )
            kp[f"toe_{side}"] = (
                f"foot_{side}",
                np.array([(_FOOT_LENGTH - _HEEL_BEHIND_ANKLE) * h, 0.0, -self.ankle_height]),
            )
        return {name: kp[name] for name in KEYPOINTS}

    def segment_centres(self) -> dict[str, np.ndarray]:
        """A point inside each segment (its midpoint along the long axis): where IMUs sit."""
        h = self.shape.height
        c = {
            "pelvis": np.array([-0.06 * h, 0.0, 0.02 * h]),  # sacrum, behind the hips
            "sternum": np.array([0.07 * h, 0.0, 0.75 * self.trunk_length]),
            "head": np.array([0.0, 0.0, 0.09 * h]),
        }
        for side, sign in zip(SIDES, (1.0, -1.0), strict=True):
            c[f"thigh_{side}"] = np.array([0.03 * h, sign * 0.02 * h, -self.thigh_length / 2])
            c[f"shank_{side}"] = np.array([0.03 * h, 0.0, -self.shank_length / 2])
            c[f"foot_{side}"] = np.array([0.05 * h, 0.0, -0.6 * self.ankle_height])
            c[f"upperarm_{side}"] = np.array([0.0, sign * 0.025 * h, -self.upper_arm_length / 2])
            c[f"forearm_{side}"] = np.array([0.0, sign * 0.02 * h, -self.forearm_length * 0.7])
        return {name: c[name] for name in SEGMENTS}
