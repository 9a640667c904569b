"""The synthetic data engine: motions → noisy IMU, camera and 3-D joint data with ground truth.

Two entry points share the same sensor maths (fusion.imu_sim, fusion.camera, fusion.noise):

- `generate_sequence(params, seed)`: one training sequence at the model rate (60 Hz), a
  plain function so training can generate on the fly and datasets (fusion.dataset) are just
  many calls of it. Deterministic for a seed: the seed is split (numpy SeedSequence) into
  independent streams for body, motion, IMU placement, IMU noise, cameras and video noise, so
  changing one noise knob never changes the motion.
- `SyntheticLab(spec).advance(seconds)`: the live lab. Subjects first stand still for
  `initial_stand_s` (what a lab asks for to calibrate IMUs), then do `spec.activity` forever
  (motion blocks chained with `start=end_state(prev)`); IMUs, cameras and truth are sampled
  on fixed global grids, so the data do not depend on how time is cut into `advance` calls.
  The next blocks are generated on a background thread ahead of need.

Cameras in a sequence form a "tracking rig": a random ring of cameras that follows the
subject's smoothed horizontal path (a dolly), so a subject who walks 30 m stays in view. The
2-D keypoints are what fixed cameras would see of a subject walking on the spot along that
path; `rig_origin` records the rig's position so keypoints can be triangulated. In the live
lab the rig is fixed (`SyntheticLab.cameras`); a subject who leaves the capture volume is seen
re-entering it from the opposite side (the cameras look at a looped walkway). A constant shift
changes no IMU reading, so IMU and video stay consistent between the loops.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter1d
from threadpoolctl import threadpool_limits

from fusion.activities import (
    ACTIVITIES,
    PATHOLOGIES,
    MotionSpec,
    MotionState,
    end_state,
    generate_motion,
    stance_offsets,
)
from fusion.body import BodyModel, BodyShape
from fusion.camera import PinholeCamera, default_rig
from fusion.imu_sim import (
    ImuPlacement,
    default_placements,
    misplace,
    simulate_imu,
    simulate_imu_with_pose,
)
from fusion.kinematics import Motion, MotionLabels, Pose, angles_from_pose
from fusion.noise import (
    NoiseParams,
    add_imu_noise,
    add_joint_noise,
    add_keypoint2d_noise,
    draw_imu_bias,
)
from fusion.normative import SPEEDS, NormativeSet, load_default_normative
from fusion.records import check_known_fields
from fusion.skeleton import GAIT_EVENTS, KEYPOINT_INDEX, SEGMENTS, SIDES
from fusion.walking import sample_gait_subject

__all__ = [
    "BODY_FIELDS",
    "MODEL_RATE",
    "STRIDE_FIELDS",
    "LabSpec",
    "SequenceParams",
    "SubjectChunk",
    "SynthSequence",
    "SyntheticLab",
    "generate_sequence",
]

MODEL_RATE = 60.0
#: columns of the `body` array (BodyShape fields)
BODY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BodyShape))
#: columns of the `strides` array (fusion.kinematics.Stride; side 0 = left, 1 = right)
STRIDE_FIELDS: tuple[str, ...] = (
    "side",
    "t_start",
    "t_end",
    "toe_off",
    "cadence",
    "step_length",
    "stride_length",
    "speed",
    "knee_flexion_max_ext",
)
_HIPS = [KEYPOINT_INDEX["hip_l"], KEYPOINT_INDEX["hip_r"]]
_PELVIS = SEGMENTS.index("pelvis")

#: Samples are never taken in a motion's first/last _LEAD_IN_S: the spline's (natural) end
#: conditions force zero second derivatives there, which would show in the accelerometer.
_LEAD_IN_S = 0.25
_BRIDGE_S = 0.5  # grid kept from the neighbouring motions around a live-lab block
_FIRST_BLOCKS_S = 2.0  # length of the live lab's first two motion blocks
_AHEAD = 2  # live-lab blocks computed ahead of need, per subject

_normative_cache: NormativeSet | None = None
_normative_lock = threading.Lock()


def _default_normative() -> NormativeSet:
    global _normative_cache
    with _normative_lock:
        if _normative_cache is None:
            _normative_cache = load_default_normative()
        return _normative_cache


def _check_range(owner: str, name: str, r: Any, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in r)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{name}={r!r}: must be a (low, high) pair") from None
    if not (np.isfinite(a) and np.isfinite(b)) or a > b or a < lo or b > hi:
        raise ValueError(f"{owner}.{name}={r!r}: need {lo} <= low <= high <= {hi}")
    return a, b


def _check_rate(owner: str, name: str, v: Any) -> None:
    number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if not number or not np.isfinite(v) or v <= 0:
        raise ValueError(f"{owner}.{name}={v!r}: a rate must be a finite number > 0 Hz")


def _check_choice(owner: str, name: str, v: Any, options: tuple, allow_none: bool = False):
    if v is None and allow_none:
        return
    if v not in options:
        raise ValueError(f"{owner}.{name}={v!r}: must be one of {options}")


@dataclass(frozen=True)
class SequenceParams:
    """Everything that defines one synthetic training sequence (besides its seed)."""

    activity: str = "walk"
    pathology: str | None = None
    duration: float = 20.0  # s
    speed: str = "Free"  # normative speed class (fusion.normative.SPEEDS)
    height_range: tuple[float, float] = (1.50, 1.95)  # m, stature drawn uniformly
    shape_range: tuple[float, float] = (0.92, 1.08)  # every BodyShape factor drawn uniformly
    noise: NoiseParams = field(default_factory=NoiseParams)
    n_cameras: int = 4
    model_rate: float = MODEL_RATE  # Hz: IMU, keypoints and truth all at this rate
    motion_rate: float = 120.0  # Hz: the motion generator's grid (MotionSpec.fs)
    camera_distance: tuple[float, float] = (3.5, 7.0)  # m from the subject's path
    camera_height: tuple[float, float] = (0.6, 2.6)  # m
    camera_margin: tuple[float, float] = (1.15, 1.6)  # half the vertical view at the subject, m
    image_size: tuple[int, int] = (1920, 1080)  # px (width, height)
    rig_follow_s: float = 1.0  # s, σ of the smoothing of the path the rig follows
    #: deg, σ of how the subject's quiet stance departs from the typical one
    #: (fusion.activities.stance_offsets); 0 = everyone stands alike
    stance_sd_deg: float = 0.0

    def __post_init__(self) -> None:
        o = "SequenceParams"
        _check_choice(o, "activity", self.activity, ACTIVITIES)
        _check_choice(o, "pathology", self.pathology, PATHOLOGIES, allow_none=True)
        _check_choice(o, "speed", self.speed, SPEEDS)
        _check_rate(o, "model_rate", self.model_rate)
        _check_rate(o, "motion_rate", self.motion_rate)
        d = self.duration
        number = isinstance(d, (int, float, np.integer, np.floating)) and not isinstance(d, bool)
        if not number or not np.isfinite(d):
            raise ValueError(f"{o}.duration={d!r}: must be a finite number of seconds")
        if d * self.model_rate < 4 or d * self.motion_rate < 4:
            raise ValueError(f"{o}.duration={d!r}: too short, need at least 4 frames")
        _check_range(o, "height_range", self.height_range, 0.5, 2.5)
        _check_range(o, "shape_range", self.shape_range, 0.7, 1.3)
        _check_range(o, "camera_distance", self.camera_distance, 0.5, 100.0)
        _check_range(o, "camera_height", self.camera_height, -10.0, 20.0)
        _check_range(o, "camera_margin", self.camera_margin, 0.2, 20.0)
        n = self.n_cameras
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{o}.n_cameras={n!r}: must be a whole number >= 0")
        w, h = self.image_size
        if int(w) <= 0 or int(h) <= 0:
            raise ValueError(f"{o}.image_size={self.image_size!r}: both sides must be > 0 px")
        if not np.isfinite(self.rig_follow_s) or self.rig_follow_s < 0:
            raise ValueError(f"{o}.rig_follow_s={self.rig_follow_s!r}: must be >= 0 s")
        if not np.isfinite(self.stance_sd_deg) or not 0 <= self.stance_sd_deg <= 30:
            raise ValueError(f"{o}.stance_sd_deg={self.stance_sd_deg!r}: must be in 0–30 deg")
        if not isinstance(self.noise, NoiseParams):
            raise ValueError(f"{o}.noise: must be a NoiseParams, got {type(self.noise).__name__}")

    @property
    def n_frames(self) -> int:
        return int(np.floor(self.duration * self.model_rate + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["noise"] = self.noise.to_dict()
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequenceParams:
        check_known_fields(cls, d, "parameters")
        kw = dict(d)
        if "noise" in kw and isinstance(kw["noise"], dict):
            kw["noise"] = NoiseParams.from_dict(kw["noise"])
        for k, v in kw.items():
            if isinstance(v, list):
                kw[k] = tuple(v)
        return cls(**kw)


class SynthSequence(NamedTuple):
    """One generated sequence: arrays at the model rate, the motion's labels, and metadata."""

    arrays: dict[str, np.ndarray]
    labels: MotionLabels
    meta: dict[str, Any]


# -- pieces ----------------------------------------------------------------------------------
def _random_body(rng: np.random.Generator, params: SequenceParams) -> BodyModel:
    h = rng.uniform(*params.height_range)
    scales = rng.uniform(*params.shape_range, size=len(BODY_FIELDS) - 1)
    return BodyModel(BodyShape(float(h), *(float(s) for s in scales)))


def _random_rig(rng: np.random.Generator, params: SequenceParams) -> list[PinholeCamera]:
    """Cameras around the origin of the rig frame, evenly spread in azimuth with jitter, each
    zoomed so that ±margin metres around hip-to-chest height fill its vertical view."""
    n = params.n_cameras
    w, h = (int(v) for v in params.image_size)
    az0 = rng.uniform(0, 2 * np.pi)
    cams = []
    for k in range(n):
        az = az0 + 2 * np.pi * k / n + rng.uniform(-0.35, 0.35) * (n > 1)
        dist = rng.uniform(*params.camera_distance)
        eye = (dist * np.cos(az), dist * np.sin(az), rng.uniform(*params.camera_height))
        target = (0.0, 0.0, rng.uniform(0.85, 1.05))
        margin = rng.uniform(*params.camera_margin)
        vfov = 2 * np.arctan(margin / dist)
        hfov = 2 * np.degrees(np.arctan(np.tan(vfov / 2) * w / h))
        cams.append(
            PinholeCamera.look_at(f"cam{k + 1:02d}", eye, target, fov_deg=hfov, width=w, height=h)
        )
    return cams


def _stance(times: np.ndarray, events: list[tuple[float, str]]) -> np.ndarray:
    """(T, 2) int8 per (left, right) foot: 1 stance, 0 swing, -1 unknown (no events)."""
    out = np.full((len(times), 2), -1, dtype=np.int8)
    for k, side in enumerate(SIDES):
        ev = sorted(
            (t, 1 if name.startswith("heel_strike") else 0)
            for t, name in events
            if name in (f"heel_strike_{side}", f"toe_off_{side}")
        )
        if not ev:
            continue
        te = np.array([e[0] for e in ev])
        ve = np.array([e[1] for e in ev], dtype=np.int8)
        idx = np.searchsorted(te, times, side="right") - 1
        out[:, k] = np.where(idx >= 0, ve[np.maximum(idx, 0)], 1 - ve[0])
    return out


def _label_arrays(labels: MotionLabels, times: np.ndarray, t0: float) -> dict[str, np.ndarray]:
    """Events, strides, stance and activity per frame; times in seconds from `t0`."""
    lo, hi = times[0], times[-1]
    events = [(t, n) for t, n in labels.events if lo <= t <= hi and n in GAIT_EVENTS]
    strides = [s for s in labels.strides if s.t_start >= lo and s.t_end <= hi]
    stride_arr = np.array(
        [
            [
                SIDES.index(s.side),
                s.t_start - t0,
                s.t_end - t0,
                s.toe_off - t0,
                s.cadence,
                s.step_length,
                s.stride_length,
                s.speed,
                s.knee_flexion_max_ext,
            ]
            for s in strides
        ],
        dtype=np.float64,
    ).reshape(-1, len(STRIDE_FIELDS))
    names = labels.activity_at(times)
    activity = np.array([ACTIVITIES.index(a) if a in ACTIVITIES else -1 for a in names])
    return {
        "event_t": np.array([t - t0 for t, _ in events], dtype=np.float64),
        "event_kind": np.array([GAIT_EVENTS.index(n) for _, n in events], dtype=np.int8),
        "strides": stride_arr.astype(np.float32),
        "stance": _stance(times, labels.events),
        "activity": activity.astype(np.int16),
    }


def _project_all(cams: list[PinholeCamera], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, J, 3) world points → uv (T, C, J, 2), visible (T, C, J)."""
    T, J, _ = points.shape
    uv = np.zeros((T, len(cams), J, 2))
    vis = np.zeros((T, len(cams), J), dtype=bool)
    for c, cam in enumerate(cams):
        uv[:, c], vis[:, c] = cam.project_visible(points)
    return uv, vis


def _first_state(
    rng: np.random.Generator,
    normative: NormativeSet,
    speed: str,
    stance_sd_deg: float,
    stance_seed: np.random.SeedSequence,
) -> MotionState:
    """What generate_motion starts from without a `start`: the subject it would draw from
    `rng`, drawn the same way, with that subject's own stance from a stream of its own (so a
    stance leaves every other draw as it was)."""
    subject = sample_gait_subject(rng, normative, speed)
    if stance_sd_deg > 0:
        stance = stance_offsets(np.random.default_rng(stance_seed), stance_sd_deg)
        subject = replace(subject, stance=stance)
    return MotionState(subject=subject)


# -- one sequence ----------------------------------------------------------------------------
def generate_sequence(
    params: SequenceParams, seed: int, normative: NormativeSet | None = None
) -> SynthSequence:
    """One sequence at `params.model_rate`; see docs/dataset_format.md for every array.

    Runs with one BLAS thread: threaded BLAS sums in another order, and the same seed must
    give the same bytes whichever process or thread count makes it.
    """
    with threadpool_limits(limits=1):
        return _generate_sequence(params, seed, normative)


def _generate_sequence(
    params: SequenceParams, seed: int, normative: NormativeSet | None
) -> SynthSequence:
    if not isinstance(params, SequenceParams):
        raise TypeError(f"generate_sequence params: expected SequenceParams, got {type(params)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"generate_sequence seed={seed!r}: must be a whole number >= 0")
    normative = normative or _default_normative()
    # spawn(7) gives spawn(6)'s six first: a stance stream leaves every other draw as it was
    body_ss, motion_ss, place_ss, imu_ss, rig_ss, video_ss, stance_ss = np.random.SeedSequence(
        int(seed)
    ).spawn(7)
    rngs = [np.random.default_rng(s) for s in (body_ss, motion_ss, place_ss, imu_ss)]
    rng_body, rng_motion, rng_place, rng_imu = rngs
    rng_rig, rng_video = np.random.default_rng(rig_ss), np.random.default_rng(video_ss)
    noise = params.noise

    body = _random_body(rng_body, params)
    spec = MotionSpec(
        activity=params.activity,
        duration=params.duration + 2 * _LEAD_IN_S,  # margins: see _LEAD_IN_S
        speed=params.speed,
        pathology=params.pathology,
        fs=params.motion_rate,
    )
    start = _first_state(rng_motion, normative, params.speed, params.stance_sd_deg, stance_ss)
    motion = generate_motion(spec, body, rng_motion, normative, start)
    T = params.n_frames
    times = motion.t[0] + _LEAD_IN_S + np.arange(T) / params.model_rate
    if times[-1] > motion.t[-1] + 1e-9:
        raise RuntimeError(
            f"generate_motion returned {motion.duration:.4f} s, shorter than the "
            f"{params.duration} s asked for"
        )
    placements = misplace(
        default_placements(body),
        rng_place,
        noise.imu_misplacement_deg,
        noise.imu_misplacement_mm / 1000.0,
    )
    imu_clean, pose = simulate_imu_with_pose(motion, times, placements)
    imu, imu_mask = add_imu_noise(imu_clean, rng_imu, noise)

    root = pose.origin[:, _PELVIS]
    kp_noisy = add_joint_noise(pose.keypoints, rng_video, noise)
    kp_rel = pose.keypoints - root[:, None]
    kp_noisy_rel = kp_noisy - kp_noisy[:, _HIPS].mean(axis=1, keepdims=True)

    rig_origin = np.zeros((T, 3))
    if params.rig_follow_s > 0:
        sigma = params.rig_follow_s * params.model_rate
        rig_origin[:, :2] = gaussian_filter1d(root[:, :2], sigma, axis=0, mode="nearest")
    else:
        rig_origin[:, :2] = root[:, :2]
    cams = _random_rig(rng_rig, params)
    C = len(cams)
    uv, vis = _project_all(cams, pose.keypoints - rig_origin[:, None])
    kp2d = add_keypoint2d_noise(uv, vis, rng_video, noise)
    kp2d_mask = rng_video.random((T, C)) >= noise.camera_drop_rate
    kp2d[~kp2d_mask] = 0.0

    f32 = np.float32
    arrays: dict[str, np.ndarray] = {
        "t": (times - times[0]).astype(np.float64),
        "imu": imu.astype(f32),
        "imu_mask": imu_mask,
        "keypoints3d": kp_rel.astype(f32),
        "keypoints3d_noisy": kp_noisy_rel.astype(f32),
        "keypoints2d": kp2d.astype(f32),
        "keypoints2d_mask": kp2d_mask,
        "angles": angles_from_pose(pose).astype(f32),
        "rotations": pose.R.astype(f32),
        "root": root.astype(f32),
        "heading": pose.heading.astype(f32),
        "rig_origin": rig_origin.astype(f32),
        "cam_K": np.array([c.K for c in cams], dtype=np.float64).reshape(C, 3, 3),
        "cam_R": np.array([c.R for c in cams], dtype=np.float64).reshape(C, 3, 3),
        "cam_t": np.array([c.t for c in cams], dtype=np.float64).reshape(C, 3),
        "imu_position": np.stack([p.position for p in placements]).astype(f32),
        "imu_mounting": np.stack([p.mounting for p in placements]).astype(f32),
        "body": np.array([getattr(body.shape, f) for f in BODY_FIELDS], dtype=f32),
        **_label_arrays(motion.labels, times, times[0]),
    }
    meta = {
        "seed": int(seed),
        "activity": params.activity,
        "pathology": params.pathology,
        "speed": params.speed,
        "n_frames": T,
        "image_size": [int(v) for v in params.image_size],
    }
    return SynthSequence(arrays, motion.labels, meta)


# -- the live lab ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LabSpec:
    """A simulated lab: subjects walking inside a ring of cameras, each wearing 13 IMUs."""

    subjects: int = 1
    imu_rate: float = 100.0
    camera_rate: float = 30.0
    n_cameras: int = 4
    seed: int = 0
    activity: str = "walk"
    pathology: str | None = None
    speed: str = "Free"
    noise: NoiseParams = field(default_factory=NoiseParams)
    block_seconds: float = 10.0  # motion generated this far at a time
    truth_rate: float = MODEL_RATE
    motion_rate: float = 120.0
    camera_radius: float = 6.0  # m, ring of cameras around the lab centre
    camera_height: float = 2.0  # m
    camera_fov_deg: float = 70.0  # horizontal
    volume_radius: float = 2.5  # m: a subject leaving this disc re-enters on the other side
    lane_spacing: float = 1.2  # m between the subjects' lanes
    initial_stand_s: float = 2.0  # s standing still at the start (IMU calibration), 0 = none
    stance_sd_deg: float = 0.0  # σ of each subject's stance from the typical one (SequenceParams)

    def __post_init__(self) -> None:
        o = "LabSpec"
        for name in ("subjects", "n_cameras", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{o}.{name}={v!r}: must be a whole number >= 0")
        if self.subjects < 1:
            raise ValueError(f"{o}.subjects={self.subjects!r}: need at least one subject")
        for name in ("imu_rate", "camera_rate", "truth_rate", "motion_rate"):
            _check_rate(o, name, getattr(self, name))
        _check_choice(o, "activity", self.activity, ACTIVITIES)
        _check_choice(o, "pathology", self.pathology, PATHOLOGIES, allow_none=True)
        _check_choice(o, "speed", self.speed, SPEEDS)
        if not np.isfinite(self.initial_stand_s) or not 0 <= self.initial_stand_s <= 600:
            raise ValueError(f"{o}.initial_stand_s={self.initial_stand_s!r}: must be in 0–600 s")
        if not np.isfinite(self.stance_sd_deg) or not 0 <= self.stance_sd_deg <= 30:
            raise ValueError(f"{o}.stance_sd_deg={self.stance_sd_deg!r}: must be in 0–30 deg")
        if not np.isfinite(self.block_seconds) or self.block_seconds < 1.0:
            raise ValueError(f"{o}.block_seconds={self.block_seconds!r}: must be >= 1 s")
        for name in ("camera_radius", "volume_radius", "lane_spacing"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"{o}.{name}={v!r}: must be a distance > 0 m")
        if self.volume_radius >= self.camera_radius:
            raise ValueError(
                f"{o}.volume_radius={self.volume_radius!r}: must be inside the camera ring "
                f"(camera_radius={self.camera_radius!r})"
            )
        if not isinstance(self.noise, NoiseParams):
            raise ValueError(f"{o}.noise: must be a NoiseParams, got {type(self.noise).__name__}")


@dataclass
class SubjectChunk:
    """What one subject's sensors produced in one `advance` call (times: s since lab start)."""

    subject: int
    imu_t: np.ndarray  # (N,)
    imu: np.ndarray  # (N, 13, 6) gyro rad/s + specific force m/s², sensor frame; NaN = lost
    imu_mask: np.ndarray  # (N, 13) bool, False where a sample was lost
    cam_t: list[np.ndarray]  # per camera (M_c,) frame times (dropped frames are absent)
    keypoints: list[np.ndarray]  # per camera (M_c, 17, 3): x px, y px, confidence
    truth_t: np.ndarray  # (K,) at LabSpec.truth_rate
    truth_angles: np.ndarray  # (K, len(ANGLES)) degrees
    events: list[tuple[float, str]]  # true gait events (t, "heel_strike_l" …)


def _channels(m: Motion, idx: int | np.ndarray) -> np.ndarray:
    """Grid samples of a motion's spline channels: dofs, root, heading side by side."""
    return np.concatenate(
        [
            np.atleast_2d(m.dofs[idx]),
            np.atleast_2d(m.root[idx]),
            np.atleast_1d(m.heading[idx])[:, None],
        ],
        axis=1,
    )


def _grid(rate: float, a: float, b: float, phase: float = 0.0) -> np.ndarray:
    """Times phase + k/rate inside [a, b), computed from integer k (no drift)."""
    k0 = int(np.ceil((a - phase) * rate - 1e-9))
    k1 = int(np.ceil((b - phase) * rate - 1e-9))
    return phase + np.arange(k0, k1) / rate


@dataclass
class _Block:
    """Every sensor sample of one subject in lab times [t0, t1)."""

    t0: float
    t1: float
    imu_t: np.ndarray
    imu: np.ndarray
    imu_mask: np.ndarray
    cam_t: list[np.ndarray]
    keypoints: list[np.ndarray]
    truth_t: np.ndarray
    truth_angles: np.ndarray
    events: list[tuple[float, str]]
    event_t: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.event_t = np.array([t for t, _ in self.events], dtype=np.float64)

    def events_in(self, a: float, b: float) -> list[tuple[float, str]]:
        """The block's events with a <= t < b, in the block's order."""
        if not len(self.event_t):
            return []
        idx = np.flatnonzero((self.event_t >= a) & (self.event_t < b))
        return [self.events[i] for i in idx]


class _Subject:
    def __init__(self, lab: SyntheticLab, index: int) -> None:
        spec = lab.spec
        self.index = index
        body_ss, place_ss, bias_ss = np.random.SeedSequence([spec.seed, index]).spawn(3)
        params = SequenceParams(activity=spec.activity, speed=spec.speed)
        self.body = _random_body(np.random.default_rng(body_ss), params)
        self.placements: tuple[ImuPlacement, ...] = misplace(
            default_placements(self.body),
            np.random.default_rng(place_ss),
            spec.noise.imu_misplacement_deg,
            spec.noise.imu_misplacement_mm / 1000.0,
        )
        self.bias = draw_imu_bias(len(self.placements), np.random.default_rng(bias_ss), spec.noise)
        self.lane = np.array([0.0, (index - (spec.subjects - 1) / 2) * spec.lane_spacing])
        # raw motion chain: (index, lab time of its first grid sample, motion); only the
        # generator thread touches it after construction
        self.motions: list[tuple[int, float, Motion]] = []
        self.shift = np.zeros(2)  # looped-walkway offset in effect (generator thread)
        self.blocks: list[_Block] = []  # ready blocks (main thread)
        self.pending: deque[Future] = deque()  # blocks being computed, in order
        self.next_k = 0  # the next block to compute


class SyntheticLab:
    """Subjects in a fixed camera ring, sampled on demand: `advance(seconds)` returns what
    every sensor produced since the previous call. Deterministic for `spec.seed`.

    Motion blocks are chained with `start=end_state(prev)`. Sensors for block k are sampled
    on one spline through the tail of motion k-1, motion k and the head of motion k+1, so
    nothing (not even the accelerometer, a second derivative) jumps at a seam."""

    def __init__(self, spec: LabSpec, normative: NormativeSet | None = None) -> None:
        if not isinstance(spec, LabSpec):
            raise TypeError(f"SyntheticLab spec: expected LabSpec, got {type(spec).__name__}")
        self.spec = spec
        self.normative = normative or _default_normative()
        self.cameras: list[PinholeCamera] = (
            default_rig(
                spec.n_cameras,
                radius=spec.camera_radius,
                height=spec.camera_height,
                fov_deg=spec.camera_fov_deg,
            )
            if spec.n_cameras
            else []
        )
        # each camera free-runs with its own phase (they are not hardware-synchronised)
        phase_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x7CA]))
        self.camera_phase = phase_rng.uniform(0, 1 / spec.camera_rate, size=spec.n_cameras)
        self.time = 0.0
        self._subjects = [_Subject(self, k) for k in range(spec.subjects)]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthlab")
        for s in self._subjects:
            s.blocks.append(self._make_block(s, 0))
            s.next_k = 1
            self._schedule(s)

    def close(self) -> None:
        """Stop the generator thread (the lab can no longer advance past its ready blocks)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def bodies(self) -> list[BodyModel]:
        return [s.body for s in self._subjects]

    @property
    def placements(self) -> list[tuple[ImuPlacement, ...]]:
        return [s.placements for s in self._subjects]

    # -- block generation --------------------------------------------------------------------
    def _schedule(self, s: _Subject) -> None:
        """Keep _AHEAD blocks in the making (one worker thread runs them in order)."""
        while len(s.pending) < _AHEAD:
            s.pending.append(self._pool.submit(self._make_block, s, s.next_k))
            s.next_k += 1

    def _motion(self, s: _Subject, j: int) -> None:
        """Generate raw motion j of subject s (chained on motion j-1) and place it in lab time."""
        spec = self.spec
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, s.index, j, 0xB10C]))
        stand_first = spec.initial_stand_s > 0
        if j == 0 and stand_first:  # the subject stands still first, as for a calibration
            activity, duration = "stand", spec.initial_stand_s + _LEAD_IN_S
        else:  # the first blocks are short so that the lab is ready quickly
            activity = spec.activity
            duration = spec.block_seconds if j >= 2 else min(spec.block_seconds, _FIRST_BLOCKS_S)
        mspec = MotionSpec(
            activity=activity,
            duration=duration,
            speed=spec.speed,
            pathology=spec.pathology if activity != "stand" else None,
            fs=spec.motion_rate,
        )
        if j == 0:
            stance_seed = np.random.SeedSequence([spec.seed, s.index, 0x57A])
            start = _first_state(rng, self.normative, spec.speed, spec.stance_sd_deg, stance_seed)
            m = generate_motion(mspec, s.body, rng, self.normative, start)
            s.motions.append((0, -_LEAD_IN_S, m))
            return
        _, L_prev, prev = s.motions[-1]
        m = generate_motion(mspec, s.body, rng, self.normative, start=end_state(prev))
        # does the new motion start AT the previous end state, or one grid step after it?
        a, b = _channels(prev, -1), _channels(m, 0)
        step = np.abs(_channels(prev, -1) - _channels(prev, -2)).max()
        same = np.abs(a - b).max() <= 0.25 * step + 1e-9
        dt = 0.0 if same else float(prev.t[-1] - prev.t[-2])
        s.motions.append((j, L_prev + prev.duration + dt, m))

    def _bridged(self, s: _Subject, k: int) -> tuple[Motion, float, float, list]:
        """One Motion in lab time around block k, the block's [t0, t1) and its events."""
        while len(s.motions) == 0 or s.motions[-1][0] < k + 1:
            self._motion(s, 0 if not s.motions else s.motions[-1][0] + 1)
        while s.motions[0][0] < k - 1:
            s.motions.pop(0)
        by_index = {j: (L, m) for j, L, m in s.motions}
        parts = []
        if k - 1 in by_index:
            L, m = by_index[k - 1]
            parts.append((L, m, m.t >= m.t[-1] - _BRIDGE_S))
        L_k, m_k = by_index[k]
        parts.append((L_k, m_k, np.ones(len(m_k.t), bool)))
        L_next, m_next = by_index[k + 1]
        parts.append((L_next, m_next, m_next.t <= m_next.t[0] + _BRIDGE_S))
        t_lab, chans = [], []
        last = -np.inf
        for L, m, sel in parts:
            tl = m.t[sel] - m.t[0] + L
            keep = tl > last + 0.25 * float(m.t[1] - m.t[0])
            t_lab.append(tl[keep])
            chans.append(_channels(m, np.nonzero(sel)[0][keep]))
            if len(t_lab[-1]):
                last = t_lab[-1][-1]
        ch = np.concatenate(chans)
        d = ch.shape[1] - 4
        heading = np.unwrap(ch[:, d + 3])
        bridged = Motion(
            t=np.concatenate(t_lab),
            dofs=ch[:, :d],
            root=ch[:, d : d + 3],
            heading=heading,
            body=s.body,
        )
        t0, t1 = max(L_k, 0.0), L_next
        events = [
            (float(t - m_k.t[0] + L_k), name)
            for t, name in m_k.labels.events
            if t0 <= t - m_k.t[0] + L_k < t1
        ]
        return bridged, t0, t1, events

    def _make_block(self, s: _Subject, k: int) -> _Block:
        """Block k of subject s: every sensor sample on the global grids inside it."""
        spec = self.spec
        motion, t0, t1, events = self._bridged(s, k)
        imu_ss, video_ss = np.random.SeedSequence([spec.seed, s.index, k, 0x5E45]).spawn(2)
        rng_imu, rng_video = np.random.default_rng(imu_ss), np.random.default_rng(video_ss)

        imu_t = _grid(spec.imu_rate, t0, t1)
        # small chunks: each C call holds the GIL, and the publisher thread needs it every 10 ms
        clean = simulate_imu(motion, imu_t, s.placements, chunk=256)
        imu, imu_mask = add_imu_noise(clean, rng_imu, spec.noise, bias=s.bias)

        truth_t = _grid(spec.truth_rate, t0, t1)
        truth_angles = motion.angles(truth_t)

        # cameras: every camera's frame times, one FK pass for all of them
        cam_grids = [_grid(spec.camera_rate, t0, t1, ph) for ph in self.camera_phase]
        all_t = np.concatenate(cam_grids) if cam_grids else np.zeros(0)
        kp_world = self._loop_walkway(s, motion.pose(all_t), all_t)
        cam_t, keypoints = [], []
        a = 0
        for c, cam in enumerate(self.cameras):
            n = len(cam_grids[c])
            uv, vis = cam.project_visible(kp_world[a : a + n])
            a += n
            det = add_keypoint2d_noise(uv, vis, rng_video, spec.noise)
            keep = rng_video.random(n) >= spec.noise.camera_drop_rate
            cam_t.append(cam_grids[c][keep])
            keypoints.append(det[keep].astype(np.float32))
        return _Block(t0, t1, imu_t, imu, imu_mask, cam_t, keypoints, truth_t, truth_angles, events)

    def _loop_walkway(self, s: _Subject, pose: Pose, t: np.ndarray) -> np.ndarray:
        """Keypoints in the lab (N, 17, 3), with the piecewise-constant horizontal shift that
        keeps the subject inside the capture volume (updates s.shift)."""
        shift = s.shift
        R = self.spec.volume_radius
        order = np.argsort(t, kind="stable")
        root = pose.origin[order, _PELVIS, :2] + s.lane
        shifts = np.zeros((len(t), 2))
        i = 0
        while i < len(t):
            pos = root[i:] + shift - s.lane
            out = np.nonzero(np.einsum("ij,ij->i", pos, pos) > R * R)[0]
            if len(out) == 0:
                shifts[i:] = shift
                break
            j = i + out[0]
            shifts[i:j] = shift
            # re-enter from the opposite edge (0.9 R), keeping the direction of travel
            here = pos[out[0]]
            shift = shift + (-0.9 * R * here / np.linalg.norm(here) - here)
            shifts[j] = shift
            i = j + 1
        s.shift = shift
        kp = pose.keypoints.copy()
        kp[order, :, :2] += (s.lane + shifts)[:, None, :]
        return kp

    # -- stepping ----------------------------------------------------------------------------
    def advance(self, seconds: float) -> list[SubjectChunk]:
        """Everything sampled in [now, now + seconds): one chunk per subject."""
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"SyntheticLab.advance seconds={seconds!r}: must be >= 0")
        a, b = self.time, self.time + float(seconds)
        out = []
        for s in self._subjects:
            while s.blocks[-1].t1 <= b:
                s.blocks.append(s.pending.popleft().result())
                self._schedule(s)
            while len(s.blocks) > 1 and s.blocks[0].t1 <= a:
                s.blocks.pop(0)
            out.append(self._slice(s, a, b))
        self.time = b
        return out

    def _slice(self, s: _Subject, a: float, b: float) -> SubjectChunk:
        """Samples of [a, b) from the ready blocks. The live lab calls this every few ms per
        subject: one searchsorted pair per grid, and a plain copy (no concatenation) when
        [a, b) lies inside one block, the usual case."""
        blocks = [blk for blk in s.blocks if blk.t1 > a and blk.t0 < b]
        n_cam = len(self.cameras)

        def pick(t: np.ndarray) -> slice:
            i, j = t.searchsorted((a, b))
            return slice(int(i), int(j))

        parts: dict[str, list] = {k: [] for k in ("imu_t", "imu", "mask", "tt", "ta", "ev")}
        cams_t: list[list[np.ndarray]] = [[] for _ in range(n_cam)]
        cams_k: list[list[np.ndarray]] = [[] for _ in range(n_cam)]
        for blk in blocks:
            sl = pick(blk.imu_t)
            parts["imu_t"].append(blk.imu_t[sl])
            parts["imu"].append(blk.imu[sl])
            parts["mask"].append(blk.imu_mask[sl])
            sl = pick(blk.truth_t)
            parts["tt"].append(blk.truth_t[sl])
            parts["ta"].append(blk.truth_angles[sl])
            parts["ev"].extend(blk.events_in(a, b))
            for c in range(n_cam):
                sl = pick(blk.cam_t[c])
                cams_t[c].append(blk.cam_t[c][sl])
                cams_k[c].append(blk.keypoints[c][sl])
        n_seg = len(SEGMENTS)

        def cat(xs: list[np.ndarray], shape: tuple) -> np.ndarray:
            if len(xs) == 1:  # the usual case: [a, b) inside one block
                return xs[0].copy()
            return np.concatenate(xs) if xs else np.zeros((0, *shape))

        return SubjectChunk(
            subject=s.index,
            imu_t=cat(parts["imu_t"], ()),
            imu=cat(parts["imu"], (n_seg, 6)),
            imu_mask=cat(parts["mask"], (n_seg,)).astype(bool),
            cam_t=[cat(x, ()) for x in cams_t],
            keypoints=[cat(x, (len(KEYPOINT_INDEX), 3)).astype(np.float32) for x in cams_k],
            truth_t=cat(parts["tt"], ()),
            truth_angles=cat(parts["ta"], (s.blocks[0].truth_angles.shape[1],)),
            events=parts["ev"],
        )
