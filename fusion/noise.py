"""Sensor noise models: what real joint detectors, IMUs, cameras and clocks do to clean data.

Every knob is a field of `NoiseParams`. The 3-D joint-centre values are those Shin, Li &
Halilaj (TBME) harden VideoNet/FusionNet with (jitter σ 12 mm, high-peak σ 250 mm on 3 % of
joint-frames, per-joint bias ~25 mm; IMU misplacement σ 13.5°). The rest are typical of the
hardware a gait lab uses:

- IMU white noise is given per sample at the sensor rate. 0.005 rad/s (0.3 °/s) and
  0.05 m/s² are a consumer-grade MEMS unit (noise density ~0.01 °/s/√Hz, ~300 µg/√Hz) over a
  ~100 Hz band, with margin; biases are what is left after a factory calibration
  (~0.6 °/s, ~5 mg). Wireless IMUs lose samples in short bursts (0.5 %, mean 3 samples).
- Saturation at ±2000 °/s and ±16 g, the usual full-scale ranges.
- 2-D keypoints: σ 4 px (a good detector on 1080p video), 3 % missed detections; cameras
  lose 1 % of frames.
- Clocks: each device starts with an offset (σ 0.2 s), drifts (σ 20 ppm) and stamps with
  jitter (0.5 ms IMU, 2 ms camera).

All σ are per axis. Distances inside the arrays are metres; the parameters for them are in mm
because that is how the paper states them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from fusion.records import check_known_fields

__all__ = [
    "DeviceClock",
    "NoiseParams",
    "add_imu_noise",
    "add_joint_noise",
    "add_keypoint2d_noise",
    "burst_drop_mask",
    "draw_clocks",
    "draw_imu_bias",
    "joint_bias",
    "joint_high_peak",
    "joint_jitter",
]

_FRACTIONS = {"high_peak_fraction", "imu_drop_rate", "keypoint_miss_rate", "camera_drop_rate"}
_POSITIVE = {"imu_drop_mean_len", "gyro_range", "acc_range", "keypoint_conf_min"}


@dataclass(frozen=True)
class NoiseParams:
    """Every noise knob, defaults as stated in the module docstring."""

    # 3-D joint centres (Shin et al.)
    joint_jitter_mm: float = 12.0  # white noise on every joint-frame
    high_peak_mm: float = 250.0  # outlier noise ...
    high_peak_fraction: float = 0.03  # ... on this fraction of joint-frames
    joint_bias_mm: float = 25.0  # constant per-joint offset, drawn once per sequence
    # IMUs
    imu_misplacement_deg: float = 13.5  # per sensor per sequence (fusion.imu_sim.misplace)
    imu_misplacement_mm: float = 0.0  # position shift of the sensor on its segment
    gyro_noise: float = 0.005  # rad/s per sample
    acc_noise: float = 0.05  # m/s² per sample
    gyro_bias: float = 0.01  # rad/s, constant per sensor per sequence
    acc_bias: float = 0.05  # m/s², constant per sensor per sequence
    gyro_range: float = np.radians(2000.0)  # rad/s full scale (saturation)
    acc_range: float = 16 * 9.81  # m/s² full scale
    imu_drop_rate: float = 0.005  # fraction of samples lost (NaN, mask False)
    imu_drop_mean_len: float = 3.0  # mean burst length, samples
    # 2-D keypoints and cameras
    keypoint_noise_px: float = 4.0
    keypoint_miss_rate: float = 0.03  # detections lost (confidence 0)
    keypoint_conf_min: float = 0.5  # detected points get confidence ~ U(min, 1)
    camera_drop_rate: float = 0.01  # whole frames lost
    # clocks (simulated lab)
    clock_offset_s: float = 0.2  # σ of each device's clock offset
    clock_drift_ppm: float = 20.0  # σ of each device's rate error
    imu_jitter_s: float = 0.0005  # σ of IMU timestamp jitter
    camera_jitter_s: float = 0.002  # σ of camera timestamp jitter

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"NoiseParams.{f.name}={v!r}: must be a number")
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"NoiseParams.{f.name}={v!r}: must be finite and >= 0")
            if f.name in _FRACTIONS and v > 1:
                raise ValueError(f"NoiseParams.{f.name}={v!r}: is a fraction, must be in [0, 1]")
            if f.name in _POSITIVE and v <= 0:
                raise ValueError(f"NoiseParams.{f.name}={v!r}: must be > 0")
        if self.keypoint_conf_min > 1:
            raise ValueError(
                f"NoiseParams.keypoint_conf_min={self.keypoint_conf_min!r}: a confidence, "
                "must be in (0, 1]"
            )
        if self.imu_drop_rate >= 1 and self.imu_drop_mean_len > 0:
            raise ValueError("NoiseParams.imu_drop_rate=1: would drop every IMU sample")

    @classmethod
    def clean(cls) -> NoiseParams:
        """No noise at all (ranges kept): the ideal sensors."""
        zero = {f.name: 0.0 for f in fields(cls) if f.name not in _POSITIVE}
        return cls(**zero, keypoint_conf_min=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseParams:
        check_known_fields(cls, d, "parameters")
        return cls(**d)


# -- 3-D joint centres -----------------------------------------------------------------------
def _check_points(points: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim < 2 or p.shape[-1] != 3:
        raise ValueError(f"{what}: expected (..., joints, 3) metres, got shape {p.shape}")
    return p


def joint_jitter(points: np.ndarray, rng: np.random.Generator, sigma_m: float) -> np.ndarray:
    """White noise on every coordinate of (T, J, 3) joint centres."""
    p = _check_points(points, "joint_jitter points")
    return p + sigma_m * rng.standard_normal(p.shape)


def joint_high_peak(
    points: np.ndarray, rng: np.random.Generator, sigma_m: float, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Large errors (a detector latching onto the wrong limb) on a random `fraction` of
    joint-frames; returns the points and the (T, J) mask of hit joint-frames."""
    p = _check_points(points, "joint_high_peak points")
    hit = rng.random(p.shape[:-1]) < fraction
    out = p + np.where(hit[..., None], sigma_m * rng.standard_normal(p.shape), 0.0)
    return out, hit


def joint_bias(points: np.ndarray, rng: np.random.Generator, sigma_m: float) -> np.ndarray:
    """A constant offset per joint (the detector's systematic error on this subject)."""
    p = _check_points(points, "joint_bias points")
    return p + sigma_m * rng.standard_normal(p.shape[-2:])


def add_joint_noise(
    points: np.ndarray, rng: np.random.Generator, params: NoiseParams
) -> np.ndarray:
    """Jitter + high-peak + bias on (T, J, 3) joint centres in metres (Shin et al.)."""
    p = joint_jitter(points, rng, params.joint_jitter_mm / 1000)
    p, _ = joint_high_peak(p, rng, params.high_peak_mm / 1000, params.high_peak_fraction)
    return joint_bias(p, rng, params.joint_bias_mm / 1000)


# -- 2-D keypoints ---------------------------------------------------------------------------
def add_keypoint2d_noise(
    uv: np.ndarray, visible: np.ndarray, rng: np.random.Generator, params: NoiseParams
) -> np.ndarray:
    """Projected keypoints (..., J, 2) px + visibility (..., J) → detections (..., J, 3):
    x, y with pixel noise and a confidence; points not visible or missed are (0, 0, 0),
    the convention of OpenPose-style detectors."""
    uv = np.asarray(uv, dtype=float)
    visible = np.asarray(visible, dtype=bool)
    if uv.shape[-1] != 2 or visible.shape != uv.shape[:-1]:
        raise ValueError(
            f"add_keypoint2d_noise: uv {uv.shape} must be (..., J, 2) with visible (..., J), "
            f"got visible {visible.shape}"
        )
    out = np.zeros((*uv.shape[:-1], 3))
    noisy = uv + params.keypoint_noise_px * rng.standard_normal(uv.shape)
    conf = rng.uniform(params.keypoint_conf_min, 1.0, size=uv.shape[:-1])
    detected = visible & (rng.random(uv.shape[:-1]) >= params.keypoint_miss_rate)
    detected &= np.all(np.isfinite(noisy), axis=-1)
    out[..., :2] = np.where(detected[..., None], noisy, 0.0)
    out[..., 2] = np.where(detected, conf, 0.0)
    return out


# -- IMUs ------------------------------------------------------------------------------------
def burst_drop_mask(
    n: int, n_streams: int, rng: np.random.Generator, rate: float, mean_len: float
) -> np.ndarray:
    """(n, n_streams) bool, True = kept. Losses come in bursts of geometric length with mean
    `mean_len`, started so that about `rate` of all samples are lost."""
    if rate <= 0 or n == 0:
        return np.ones((n, n_streams), dtype=bool)
    p_start = rate / (mean_len * (1 - rate) + rate)
    starts = rng.random((n, n_streams)) < p_start
    lengths = rng.geometric(1.0 / max(mean_len, 1.0), size=(n, n_streams))
    idx = np.arange(n)[:, None]
    ends = np.maximum.accumulate(np.where(starts, idx + lengths, 0), axis=0)
    keep = idx >= ends  # inside a burst while the latest burst end lies ahead
    return keep


def draw_imu_bias(n_sensors: int, rng: np.random.Generator, params: NoiseParams) -> np.ndarray:
    """(n_sensors, 6) constant biases, gyro then accelerometer: one draw per sensor per
    sequence (or per session in the live lab)."""
    scale = np.array([params.gyro_bias] * 3 + [params.acc_bias] * 3)
    return scale * rng.standard_normal((n_sensors, 6))


def add_imu_noise(
    imu: np.ndarray,
    rng: np.random.Generator,
    params: NoiseParams,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Clean (T, S, 6) gyro + specific force → (noisy readings, (T, S) mask of kept samples).

    Per sensor: a constant bias per channel (drawn here unless `bias` (S, 6) is given), white
    noise per sample, saturation at the full scale, then dropped samples (NaN in the
    readings, False in the mask)."""
    imu = np.asarray(imu, dtype=float)
    if imu.ndim != 3 or imu.shape[-1] != 6:
        raise ValueError(f"add_imu_noise: expected (T, sensors, 6), got shape {imu.shape}")
    T, S, _ = imu.shape
    if bias is None:
        bias = draw_imu_bias(S, rng, params)
    elif np.shape(bias) != (S, 6):
        raise ValueError(f"add_imu_noise: bias has shape {np.shape(bias)}, expected ({S}, 6)")
    sig = np.array([params.gyro_noise] * 3 + [params.acc_noise] * 3)
    full = np.array([params.gyro_range] * 3 + [params.acc_range] * 3)
    out = imu + bias + sig * rng.standard_normal(imu.shape)
    out = np.clip(out, -full, full)
    mask = burst_drop_mask(T, S, rng, params.imu_drop_rate, params.imu_drop_mean_len)
    out[~mask] = np.nan
    return out, mask


# -- clocks ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceClock:
    """One device's clock: device time = (1 + drift_ppm·1e-6)·t + offset + jitter."""

    offset: float = 0.0  # s
    drift_ppm: float = 0.0
    jitter_s: float = 0.0  # σ of the per-sample timestamp noise

    def __post_init__(self) -> None:
        for name in ("offset", "drift_ppm", "jitter_s"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"DeviceClock.{name}={getattr(self, name)!r}: must be finite")
        if self.jitter_s < 0:
            raise ValueError(f"DeviceClock.jitter_s={self.jitter_s!r}: must be >= 0")

    def stamp(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """True sample times (s) → the timestamps this device writes on them."""
        t = np.asarray(t, dtype=float)
        jitter = self.jitter_s * rng.standard_normal(t.shape) if self.jitter_s > 0 else 0.0
        return (1.0 + self.drift_ppm * 1e-6) * t + self.offset + jitter

    def to_true(self, stamped: np.ndarray) -> np.ndarray:
        """Inverse of `stamp` without the jitter (what an ideal time sync recovers)."""
        return (np.asarray(stamped, dtype=float) - self.offset) / (1.0 + self.drift_ppm * 1e-6)


def draw_clocks(
    n: int, rng: np.random.Generator, params: NoiseParams, kind: str = "imu"
) -> list[DeviceClock]:
    """`n` independent device clocks; `kind` ("imu" | "camera") picks the jitter."""
    if kind not in ("imu", "camera"):
        raise ValueError(f"draw_clocks kind={kind!r}: must be 'imu' or 'camera'")
    jitter = params.imu_jitter_s if kind == "imu" else params.camera_jitter_s
    off = params.clock_offset_s * rng.standard_normal(n)
    drift = params.clock_drift_ppm * rng.standard_normal(n)
    return [DeviceClock(float(o), float(d), jitter) for o, d in zip(off, drift, strict=True)]
