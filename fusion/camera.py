"""Pinhole cameras: world points → pixel keypoints, calibration files in and out.

Conventions are OpenCV's, so a calibration made here is usable by cv2 and by Pose2Sim-style
tools: `R`, `t` map world to camera (X_c = R X_w + t), camera axes x right, y down, z along the
optical axis; pixel (u, v) = K · distort(X_c / Z_c); `dist` is OpenCV's coefficient vector
(k1, k2, p1, p2[, k3[, k4, k5, k6]]) — radial (rational when k4..k6 are given) plus tangential.
World is the lab frame of fusion/skeleton.py (x forward, y left, z up, metres).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PinholeCamera",
    "default_rig",
    "load_rig",
    "parse_qualisys_calibration",
    "save_rig",
]

_DIST_LENGTHS = (4, 5, 8)


@dataclass(frozen=True)
class PinholeCamera:
    """One calibrated camera (OpenCV model, world → camera extrinsics)."""

    name: str
    K: np.ndarray  # (3, 3) intrinsics, pixels
    R: np.ndarray  # (3, 3) world → camera rotation
    t: np.ndarray  # (3,) world → camera translation, m
    dist: np.ndarray | None = None  # OpenCV distortion coefficients (4, 5 or 8) or None
    width: int = 1920
    height: int = 1080
    _r2_max: float = field(default=np.inf, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        who = f"PinholeCamera {self.name!r}"
        K = np.asarray(self.K, dtype=float)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise ValueError(f"{who}: K must be a finite 3x3 matrix, got shape {K.shape}")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
            raise ValueError(
                f"{who}: K must have focal lengths fx, fy > 0 and last row [0, 0, 1], got {K}"
            )
        R = np.asarray(self.R, dtype=float)
        if R.shape != (3, 3) or not np.all(np.isfinite(R)):
            raise ValueError(f"{who}: R must be a finite 3x3 rotation, got shape {R.shape}")
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError(f"{who}: R is not a proper rotation (orthonormal, det +1)")
        t = np.asarray(self.t, dtype=float).reshape(-1)
        if t.shape != (3,) or not np.all(np.isfinite(t)):
            raise ValueError(f"{who}: t must be 3 finite numbers (m), got shape {t.shape}")
        dist = None
        if self.dist is not None:
            dist = np.asarray(self.dist, dtype=float).reshape(-1)
            if dist.size not in _DIST_LENGTHS or not np.all(np.isfinite(dist)):
                raise ValueError(
                    f"{who}: dist must hold {_DIST_LENGTHS} finite OpenCV coefficients "
                    f"(k1, k2, p1, p2[, k3[, k4, k5, k6]]), got {dist.size}"
                )
            if not np.any(dist):
                dist = None
        for attr in ("width", "height"):
            v = getattr(self, attr)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{who}: {attr}={v!r} must be a positive whole number of px")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "dist", dist)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "_r2_max", self._distortion_radius_limit())

    # -- geometry ----------------------------------------------------------------------------
    @property
    def centre(self) -> np.ndarray:
        """Optical centre in world coordinates."""
        return -self.R.T @ self.t

    @property
    def optical_axis(self) -> np.ndarray:
        """Unit viewing direction in world coordinates."""
        return self.R[2].copy()

    @property
    def principal_point(self) -> np.ndarray:
        return self.K[:2, 2].copy()

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) → camera coordinates (..., 3)."""
        return np.asarray(points, dtype=float) @ self.R.T + self.t

    def _distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.dist is None:
            return x, y
        d = np.zeros(8)
        d[: self.dist.size] = self.dist
        k1, k2, p1, p2, k3, k4, k5, k6 = d
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return xd, yd

    def _project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (..., 2) (NaN at or behind the camera) and visibility (...,)."""
        Xc = self.to_camera(points)
        z = Xc[..., 2]
        front = z > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            zs = np.where(front, z, np.nan)
            x, y = Xc[..., 0] / zs, Xc[..., 1] / zs
        r2 = x * x + y * y
        xd, yd = self._distort(x, y)
        K = self.K
        uv = np.empty((*z.shape, 2))
        uv[..., 0] = K[0, 0] * xd + K[0, 1] * yd + K[0, 2]
        uv[..., 1] = K[1, 1] * yd + K[1, 2]
        with np.errstate(invalid="ignore"):
            vis = (
                front
                & (uv[..., 0] >= 0)
                & (uv[..., 0] <= self.width - 1)
                & (uv[..., 1] >= 0)
                & (uv[..., 1] <= self.height - 1)
                & (r2 <= self._r2_max)
            )
        return uv, vis

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) → pixels (..., 2); NaN for points at or behind the camera.
        Skew K[0, 1] is honoured (cv2.projectPoints ignores it; it is 0 in practice)."""
        return self._project(points)[0]

    def visible(self, points: np.ndarray) -> np.ndarray:
        """(...,) bool: in front of the camera and landing inside the image (and inside the
        field where the distortion model is still one-to-one)."""
        return self._project(points)[1]

    def project_visible(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (..., 2) and visibility (...,) in one pass."""
        return self._project(points)

    def _distortion_radius_limit(self) -> float:
        """Largest undistorted r² still seen (image corners, +25 %): beyond it a strong radial
        polynomial can fold far-off points back into the image."""
        if self.dist is None:
            return np.inf
        import cv2

        corners = np.array(
            [[0, 0], [self.width - 1, 0], [0, self.height - 1], [self.width - 1, self.height - 1]],
            dtype=np.float64,
        ).reshape(-1, 1, 2)
        und = cv2.undistortPoints(corners, self.K, self.dist).reshape(-1, 2)
        return float(1.25 * np.max(np.sum(und**2, axis=1)))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def look_at(
        cls,
        name: str,
        eye: Sequence[float],
        target: Sequence[float],
        up: Sequence[float] = (0.0, 0.0, 1.0),
        fov_deg: float = 60.0,
        width: int = 1920,
        height: int = 1080,
        dist: np.ndarray | None = None,
    ) -> PinholeCamera:
        """A camera at `eye` looking at `target` with `up` pointing up in the image;
        `fov_deg` is the horizontal field of view, square pixels, centred principal point."""
        eye_a, target_a, up_a = (np.asarray(v, dtype=float) for v in (eye, target, up))
        if not 0 < fov_deg < 180:
            raise ValueError(f"look_at {name!r}: fov_deg={fov_deg!r} must be in (0, 180)")
        z = target_a - eye_a
        if np.linalg.norm(z) < 1e-9:
            raise ValueError(f"look_at {name!r}: eye and target coincide")
        z /= np.linalg.norm(z)
        x = np.cross(z, up_a)
        if np.linalg.norm(x) < 1e-9:
            raise ValueError(f"look_at {name!r}: up={tuple(up_a)} is parallel to the view")
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R = np.stack([x, y, z])
        f = (width / 2) / np.tan(np.radians(fov_deg) / 2)
        K = np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
        return cls(name=name, K=K, R=R, t=-R @ eye_a, dist=dist, width=width, height=height)

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able calibration record."""
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "dist": None if self.dist is None else self.dist.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PinholeCamera:
        if not isinstance(d, dict):
            raise ValueError(f"camera calibration record must be a mapping, got {type(d)}")
        missing = [k for k in ("name", "K", "R", "t", "width", "height") if k not in d]
        if missing:
            raise ValueError(
                f"camera calibration record {d.get('name', '?')!r} lacks keys {missing}"
            )
        return cls(
            name=str(d["name"]),
            K=np.asarray(d["K"], dtype=float),
            R=np.asarray(d["R"], dtype=float),
            t=np.asarray(d["t"], dtype=float),
            dist=None if d.get("dist") is None else np.asarray(d["dist"], dtype=float),
            width=int(d["width"]),
            height=int(d["height"]),
        )


def save_rig(path: str | Path, cameras: Sequence[PinholeCamera]) -> None:
    """Write a calibration file: JSON `{"cameras": [camera.to_dict(), …]}`."""
    doc = {"format": "gait-stream-calibration/1", "cameras": [c.to_dict() for c in cameras]}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def load_rig(path: str | Path) -> list[PinholeCamera]:
    """Read a calibration file written by `save_rig`."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"calibration file {path}: not JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("cameras"), list):
        raise ValueError(f"calibration file {path}: expected an object with a 'cameras' list")
    return [PinholeCamera.from_dict(c) for c in doc["cameras"]]


def default_rig(
    n: int = 4,
    radius: float = 6.0,
    height: float = 2.0,
    target: Sequence[float] = (0.0, 0.0, 1.0),
    fov_deg: float = 60.0,
    width: int = 1920,
    height_px: int = 1080,
    start_deg: float = 45.0,
) -> list[PinholeCamera]:
    """`n` cameras evenly spaced on a ring of `radius` m at `height` m, all aimed at `target`
    (the middle of the walking volume); the first sits at azimuth `start_deg` from +x."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"default_rig n={n!r}: need at least one camera")
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"default_rig radius={radius!r}: must be a distance > 0 m")
    tgt = np.asarray(target, dtype=float)
    cams = []
    for k in range(int(n)):
        az = np.radians(start_deg + 360.0 * k / n)
        eye = tgt[:2] + radius * np.array([np.cos(az), np.sin(az)])
        cams.append(
            PinholeCamera.look_at(
                f"cam{k + 1:02d}",
                (eye[0], eye[1], height),
                tgt,
                fov_deg=fov_deg,
                width=width,
                height=height_px,
            )
        )
    return cams


def _attr(el: ET.Element, key: str, where: str) -> float:
    v = el.get(key)
    if v is None:
        raise ValueError(f"{where}: <{el.tag}> lacks attribute {key!r}")
    try:
        return float(v)
    except ValueError as e:
        raise ValueError(f"{where}: <{el.tag} {key}={v!r}> is not a number") from e


def parse_qualisys_calibration(path: str | Path, binning_factor: int = 1) -> list[PinholeCamera]:
    """Cameras from a Qualisys Track Manager calibration export (`*.qca.txt`, XML).

    QTM stores, per camera: `<transform>` = camera position (mm, world) and a rotation whose
    rows are the camera axes in world with y up and z pointing backwards; `<intrinsic>` in
    sub-pixel units (1/64 px) on the full sensor; `<fov_video>` the video window (px) whose
    corner offsets the principal point. We convert to OpenCV (flip y and z: rotate π about
    the camera x axis), metres, and pixels of the video window. The same conversion as
    Pose2Sim's `calib_qca_fun` (optionally scaled by `video_resolution` / 1080 as it does).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"Qualisys calibration {path}: not valid XML ({e})") from e
    cams_el = root.findall("cameras/camera")
    if not cams_el:
        raise ValueError(f"Qualisys calibration {path}: no <cameras><camera> elements")
    if binning_factor <= 0:
        raise ValueError(f"parse_qualisys_calibration binning_factor={binning_factor}: must be >0")
    flip = np.diag([1.0, -1.0, -1.0])
    cameras = []
    for i, cam in enumerate(cams_el):
        name = cam.get("serial") or f"cam{i + 1:02d}"
        where = f"Qualisys calibration {path.name}, camera {name!r}"
        res_attr = cam.get("video_resolution")
        res = int(res_attr[:-1]) if res_attr not in (None, "N/A") else 1080
        scale = res / 1080.0
        parts = {tag: cam.find(tag) for tag in ("transform", "intrinsic", "fov_video")}
        for tag, el in parts.items():
            if el is None:
                raise ValueError(f"{where}: missing <{tag}>")
        fov, intr, tr = parts["fov_video"], parts["intrinsic"], parts["transform"]
        left, top = _attr(fov, "left", where), _attr(fov, "top", where)
        w = (_attr(fov, "right", where) - left + 1) / binning_factor * scale
        h = (_attr(fov, "bottom", where) - top + 1) / binning_factor * scale
        fu = _attr(intr, "focalLengthU", where) / 64 / binning_factor * scale
        fv = _attr(intr, "focalLengthV", where) / 64 / binning_factor * scale
        cu = (_attr(intr, "centerPointU", where) / 64 / binning_factor - left) * scale
        cv = (_attr(intr, "centerPointV", where) / 64 / binning_factor - top) * scale
        K = np.array([[fu, 0.0, cu], [0.0, fv, cv], [0.0, 0.0, 1.0]])
        dist = np.array(
            [
                _attr(intr, "radialDistortion1", where),
                _attr(intr, "radialDistortion2", where),
                _attr(intr, "tangentalDistortion1", where),
                _attr(intr, "tangentalDistortion2", where),
                float(intr.get("radialDistortion3", 0.0)),
            ]
        )
        M = np.array([[_attr(tr, f"r{a}{b}", where) for b in "123"] for a in "123"])
        centre = np.array([_attr(tr, k, where) for k in "xyz"]) / 1000.0
        R = flip @ M
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-5):
            raise ValueError(f"{where}: <transform> r11..r33 is not a rotation matrix")
        # re-orthonormalise the 16-digit matrix so downstream checks see an exact rotation
        U, _, Vt = np.linalg.svd(R)
        R = U @ Vt
        cameras.append(
            PinholeCamera(
                name=name,
                K=K,
                R=R,
                t=-R @ centre,
                dist=dist,
                width=round(w),
                height=round(h),
            )
        )
    return cameras
