"""The qmt full-body IMU recording, mapped onto the 13 contract segments.

Source: dlaidig/qmt `examples/full_body_example_data.mat` (MIT; copy in
`../shared/data/imu/qmt_fullbody_16imu/`). What the file holds (MATLAB 5.0 MAT-file, read with
`scipy.io.loadmat`; a MATLAB v7.3/HDF5 copy of the same layout is read with h5py):

    t                 (10000, 1) float64   file time in s: 40.00, 40.01, ... 139.99 (100 Hz, 100 s)
    <sensor>          1x1 struct, one per IMU (16 of them), fields
        .acc          (10000, 3) float64   specific force, m/s² (gravity included: ≈ 9.8 at rest)
        .gyr          (10000, 3) float64   angular rate, rad/s
        .quat         (10000, 4) float64   unit quaternion [w x y z] (qmt convention)

Sensors: foot_left/right, lower_leg_left/right, upper_leg_left/right, hip, lower_back,
upper_back, head, hand_left/right, forearm_left/right, upper_arm_left/right. No NaNs; all axes in
each sensor's own frame (mounting differs per sensor, so no axis is "up" in general).

Content (measured from the data, seconds from the first sample; qmt's own example marks
standing 0–4 s, sitting 12–39 s, walking 55–75 s and, after a turn, 76–98.5 s): standing still
0–4.5 s, sitting down, sitting still ~12–39 s (every accelerometer norm 9.7–10.2 m/s², gyro
norms < 0.1 rad/s; the thighs 80° off their standing tilt), standing up 39.5–44.5 s, standing
44.5–48 s and 52–55 s with a shuffle between, fast walking from 55 s to the end (stride ~0.9 s,
foot gyro peaks ~12 rad/s). The classical estimator calibrates from the 52–55 s stand and the
walk that follows (configs/qmt_replay.yaml).

Mapping to fusion.skeleton.SEGMENTS (`SENSOR_FOR_SEGMENT`): upper arm, forearm, thigh
(upper_leg), shank (lower_leg), foot per side, head ← head, sternum ← upper_back (the thoracic
sensor is the thorax segment), pelvis ← hip. In qmt's own full-body box model (its
`full_body_tracking_*_example.py`, base "human") "hip" is the root pelvis segment and
"lower_back" a separate lumbar segment between pelvis and upper back, so "hip" is the sensor on
the pelvis; the lumbar sensor would also move with the trunk's flexion. Left out (`DROPPED`):
lower_back, hand_left, hand_right — the contract has no lumbar or hand segment.

Units: the file carries no unit metadata; the qmt examples feed `.gyr` and `.acc` straight into
`qmt.oriEstIMU`, which takes rad/s and m/s², i.e. already the contract units. The loader checks
that claim (resting accelerometer norms near 9.81, not near 1 as in g), so a file in other units
fails loudly instead of being replayed with a wrong scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusion.skeleton import GRAVITY, IMU_CHANNELS, SEGMENTS

__all__ = [
    "DEFAULT_RELATIVE_PATH",
    "DROPPED",
    "SENSOR_FOR_SEGMENT",
    "QmtFormatError",
    "QmtRecording",
    "load_qmt_fullbody",
]

#: Where the file lies below the shared data folder (tests/conftest.py `shared_data`).
DEFAULT_RELATIVE_PATH = Path("imu/qmt_fullbody_16imu/full_body_example_data.mat")

#: Contract segment -> the file's sensor (struct) name.
SENSOR_FOR_SEGMENT: dict[str, str] = {
    "head": "head",
    "sternum": "upper_back",
    "pelvis": "hip",
    "upperarm_l": "upper_arm_left",
    "upperarm_r": "upper_arm_right",
    "forearm_l": "forearm_left",
    "forearm_r": "forearm_right",
    "thigh_l": "upper_leg_left",
    "thigh_r": "upper_leg_right",
    "shank_l": "lower_leg_left",
    "shank_r": "lower_leg_right",
    "foot_l": "foot_left",
    "foot_r": "foot_right",
}

#: Sensors in the file with no contract segment.
DROPPED: tuple[str, ...] = ("lower_back", "hand_left", "hand_right")

_FIELDS = ("gyr", "acc", "quat")
_WIDTH = {"gyr": 3, "acc": 3, "quat": 4}
# A resting accelerometer in m/s² reads ≈ 9.81; in g it would read ≈ 1. Anything outside this
# band for the median norm means the units (or the field) are not what the file is said to hold.
_ACC_NORM_BAND = (0.5 * GRAVITY, 1.5 * GRAVITY)


class QmtFormatError(ValueError):
    """The file is not the qmt full-body layout; the message names the file and the key."""


@dataclass(frozen=True)
class QmtRecording:
    """13 sensors in contract order and units.

    data: (N, 13, 6) float64, per segment gyr_x gyr_y gyr_z [rad/s], acc_x acc_y acc_z [m/s²].
    quat: (N, 13, 4) the file's orientation quaternions [w x y z] (not needed for replay).
    t: (N,) the file's time vector in s (starts at 40 s in the qmt file).
    """

    path: Path
    data: np.ndarray
    quat: np.ndarray
    t: np.ndarray
    rate: float
    segments: tuple[str, ...]
    sensors: tuple[str, ...]

    @property
    def duration(self) -> float:
        """Length in seconds (N samples span N / rate)."""
        return len(self.t) / self.rate

    def window(self, start: float = 0.0, duration: float | None = None) -> QmtRecording:
        """The samples from `start` s after the first one, `duration` s long (None: to the end)."""
        if not np.isfinite(start) or start < 0:
            raise ValueError(f"{self.path}: start must be >= 0 s, got {start}")
        i0 = round(start * self.rate)
        if i0 >= len(self.t):
            raise ValueError(
                f"{self.path}: start {start} s is past the end of the recording "
                f"({self.duration:.2f} s)"
            )
        if duration is None:
            i1 = len(self.t)
        else:
            if not np.isfinite(duration) or duration <= 0:
                raise ValueError(f"{self.path}: duration must be > 0 s, got {duration}")
            i1 = min(len(self.t), i0 + max(1, round(duration * self.rate)))
        return replace(self, data=self.data[i0:i1], quat=self.quat[i0:i1], t=self.t[i0:i1])


def _read_v73(path: Path) -> dict[str, Any]:
    """MATLAB v7.3 (HDF5): groups for structs, arrays stored transposed (MATLAB is column-major)."""
    try:
        import h5py
    except ImportError as exc:  # h5py is a dev extra; only v7.3 files need it
        raise QmtFormatError(f"{path}: MATLAB v7.3 (HDF5) file, but h5py is not installed") from exc
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for key, item in f.items():
            if key.startswith("#"):  # '#refs#', '#subsystem#': MATLAB bookkeeping
                continue
            if isinstance(item, h5py.Group):
                out[key] = {
                    name: np.asarray(ds[()]).T
                    for name, ds in item.items()
                    if isinstance(ds, h5py.Dataset)
                }
            elif isinstance(item, h5py.Dataset):
                out[key] = np.asarray(item[()]).T
    return out


def _read_mat(path: Path) -> dict[str, Any]:
    """Top-level variables; structs become {field: array}. v5/v7 via scipy, v7.3 via h5py."""
    import scipy.io

    if not path.is_file():
        raise FileNotFoundError(f"qmt full-body recording not found: {path}")
    try:
        raw = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except NotImplementedError:  # scipy's answer to v7.3 files
        return _read_v73(path)
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError) as exc:
        raise QmtFormatError(f"{path}: not a readable MAT-file: {exc}") from exc
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("__"):
            continue
        names = getattr(getattr(value, "dtype", None), "names", None)
        if names:
            if value.size != 1:
                raise QmtFormatError(
                    f"{path}: '{key}' is a {value.shape} struct array, expected a single struct"
                )
            rec = value.reshape(-1)[0]
            out[key] = {name: np.asarray(rec[name]) for name in names}
        else:
            out[key] = value
    return out


def _column(path: Path, key: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.ndim > 2 or (arr.ndim == 2 and 1 not in arr.shape):
        raise QmtFormatError(
            f"{path}: '{key}' must be a numeric vector, got {arr.dtype} of shape {arr.shape}"
        )
    return arr.astype(np.float64).reshape(-1)


def _field(path: Path, sensor: str, struct: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    key = f"{sensor}.{name}"
    if name not in struct:
        raise QmtFormatError(f"{path}: '{key}' missing (fields: {sorted(struct)})")
    arr = np.asarray(struct[name])
    width = _WIDTH[name]
    if arr.ndim == 2 and arr.shape == (width, n) and n != width:
        arr = arr.T  # stored one row per axis
    if arr.dtype.kind not in "fiu" or arr.shape != (n, width):
        raise QmtFormatError(
            f"{path}: '{key}' has dtype {arr.dtype} and shape {arr.shape}, expected "
            f"numeric ({n}, {width}) like 't'"
        )
    return arr.astype(np.float64)


def load_qmt_fullbody(path: str | Path) -> QmtRecording:
    """Read the qmt full-body MAT-file and return its 13 contract sensors (see module doc).

    Raises FileNotFoundError for a missing file and QmtFormatError (naming the file and the
    key) when a variable is missing or has the wrong shape, the time vector is not uniform,
    or the accelerometers do not look like m/s².
    """
    path = Path(path)
    mat = _read_mat(path)
    if "t" not in mat:
        raise QmtFormatError(f"{path}: time vector 't' missing (variables: {sorted(mat)})")
    t = _column(path, "t", mat["t"])
    n = len(t)
    if n < 2:
        raise QmtFormatError(f"{path}: 't' has {n} sample(s), need at least 2")
    dt = np.diff(t)
    period = float(np.median(dt))
    if not (np.isfinite(t).all() and period > 0 and np.abs(dt - period).max() < 0.01 * period):
        raise QmtFormatError(
            f"{path}: 't' is not a uniform increasing time vector "
            f"(steps {dt.min():.6g}..{dt.max():.6g} s)"
        )
    rate = 1.0 / period
    if abs(rate - round(rate)) < 1e-6 * rate:
        rate = float(round(rate))

    missing = [s for s in SENSOR_FOR_SEGMENT.values() if s not in mat]
    if missing:
        found = sorted(k for k in mat if k != "t")
        raise QmtFormatError(f"{path}: sensor struct(s) {missing} missing (found: {found})")
    data = np.empty((n, len(SEGMENTS), len(IMU_CHANNELS)))
    quat = np.empty((n, len(SEGMENTS), 4))
    for i, seg in enumerate(SEGMENTS):
        sensor = SENSOR_FOR_SEGMENT[seg]
        struct = mat[sensor]
        if not isinstance(struct, Mapping):
            raise QmtFormatError(
                f"{path}: '{sensor}' should be a struct with fields {list(_FIELDS)}, "
                f"got {type(struct).__name__}"
            )
        data[:, i, :3] = _field(path, sensor, struct, "gyr", n)
        data[:, i, 3:] = _field(path, sensor, struct, "acc", n)
        quat[:, i] = _field(path, sensor, struct, "quat", n)
        norm = float(np.median(np.linalg.norm(data[:, i, 3:], axis=1)))
        if not _ACC_NORM_BAND[0] <= norm <= _ACC_NORM_BAND[1]:
            raise QmtFormatError(
                f"{path}: '{sensor}.acc' median norm {norm:.3g}, expected ≈ {GRAVITY} (m/s²); "
                "wrong units or wrong field"
            )
    return QmtRecording(
        path=path,
        data=data,
        quat=quat,
        t=t,
        rate=rate,
        segments=SEGMENTS,
        sensors=tuple(SENSOR_FOR_SEGMENT[s] for s in SEGMENTS),
    )
