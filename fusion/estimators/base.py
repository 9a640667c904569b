"""The one small interface every estimator (classical or neural) sits behind.

The runtime feeds an estimator the inputs of one subject already aligned on the model clock
(`SyncedBatch`); the estimator returns the joint angles it can state so far (`AnglesResult`).
Estimators are streaming and stateful: a causal one (`lookahead == 0`) answers for every tick it
is given; one with look-ahead L answers for the tick L frames before the newest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np

from fusion.skeleton import ANGLES, KEYPOINTS, SEGMENTS


@dataclass
class SyncedBatch:
    """N consecutive model-clock ticks for one subject.

    Missing data is NaN in the values and False in the mask: the mask is the truth.
    """

    t: np.ndarray  # (N,) tick times, s on the sync stage's LSL clock
    imu: np.ndarray  # (N, 13, 6) gyr rad/s + specific force m/s², sensor frame, SEGMENTS order
    imu_mask: np.ndarray  # (N, 13) bool
    keypoints: np.ndarray  # (N, C, 17, 3) pixel x, y, confidence, KEYPOINTS order
    keypoint_mask: np.ndarray  # (N, C) bool
    #: optional 3-D joint centres (N, 17, 3) m, KEYPOINTS order, world axes (z up), any origin:
    #: given when a lab (or an evaluation) has them already; otherwise estimators that need
    #: them triangulate `keypoints` with their calibrated cameras
    joints3d: np.ndarray | None = None
    joints3d_mask: np.ndarray | None = None  # (N, 17) bool; None with joints3d = all present

    def __post_init__(self) -> None:
        n = len(self.t)
        checks = {
            "imu": (self.imu.shape, (n, len(SEGMENTS), 6)),
            "imu_mask": (self.imu_mask.shape, (n, len(SEGMENTS))),
        }
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"SyncedBatch.{name} has shape {got}, expected {want}")
        if (
            self.keypoints.ndim != 4
            or self.keypoints.shape[0] != n
            or self.keypoints.shape[2:]
            != (
                len(KEYPOINTS),
                3,
            )
        ):
            raise ValueError(
                f"SyncedBatch.keypoints has shape {self.keypoints.shape}, "
                f"expected ({n}, cameras, {len(KEYPOINTS)}, 3)"
            )
        if self.keypoint_mask.shape != self.keypoints.shape[:2]:
            raise ValueError(
                f"SyncedBatch.keypoint_mask has shape {self.keypoint_mask.shape}, "
                f"expected {self.keypoints.shape[:2]}"
            )
        if self.joints3d is not None:
            want = (n, len(KEYPOINTS), 3)
            if self.joints3d.shape != want:
                raise ValueError(
                    f"SyncedBatch.joints3d has shape {self.joints3d.shape}, expected {want}"
                )
            if self.joints3d_mask is None:
                self.joints3d_mask = np.isfinite(self.joints3d).all(axis=-1)
            elif self.joints3d_mask.shape != want[:2]:
                raise ValueError(
                    f"SyncedBatch.joints3d_mask has shape {self.joints3d_mask.shape}, "
                    f"expected {want[:2]}"
                )
        elif self.joints3d_mask is not None:
            raise ValueError("SyncedBatch.joints3d_mask given without joints3d")

    def __len__(self) -> int:
        return len(self.t)

    def slice(self, a: int, b: int) -> SyncedBatch:
        """Ticks a..b-1 (views, no copies)."""
        j3, jm = self.joints3d, self.joints3d_mask
        return replace(
            self,
            t=self.t[a:b],
            imu=self.imu[a:b],
            imu_mask=self.imu_mask[a:b],
            keypoints=self.keypoints[a:b],
            keypoint_mask=self.keypoint_mask[a:b],
            joints3d=None if j3 is None else j3[a:b],
            joints3d_mask=None if jm is None else jm[a:b],
        )

    @classmethod
    def concat(cls, batches: list[SyncedBatch]) -> SyncedBatch:
        """Consecutive batches of one subject as one (joints3d kept only if all have it)."""
        if len(batches) == 1:
            return batches[0]
        has3d = all(b.joints3d is not None for b in batches)
        return cls(
            t=np.concatenate([b.t for b in batches]),
            imu=np.concatenate([b.imu for b in batches]),
            imu_mask=np.concatenate([b.imu_mask for b in batches]),
            keypoints=np.concatenate([b.keypoints for b in batches]),
            keypoint_mask=np.concatenate([b.keypoint_mask for b in batches]),
            joints3d=np.concatenate([b.joints3d for b in batches]) if has3d else None,
            joints3d_mask=np.concatenate([b.joints3d_mask for b in batches]) if has3d else None,
        )

    @classmethod
    def empty(cls, n_cameras: int) -> SyncedBatch:
        return cls(
            t=np.zeros(0),
            imu=np.zeros((0, len(SEGMENTS), 6)),
            imu_mask=np.zeros((0, len(SEGMENTS)), bool),
            keypoints=np.zeros((0, n_cameras, len(KEYPOINTS), 3)),
            keypoint_mask=np.zeros((0, n_cameras), bool),
        )


@dataclass
class AnglesResult:
    """Angles for the ticks an estimator could state: times are the instants described."""

    t: np.ndarray  # (M,)
    angles: np.ndarray  # (M, len(ANGLES)) degrees, ANGLES order; NaN where not estimable

    @classmethod
    def empty(cls) -> AnglesResult:
        return cls(t=np.zeros(0), angles=np.zeros((0, len(ANGLES))))


class Estimator(ABC):
    """Synced windows + masks in, named joint angles out."""

    name: str = "estimator"
    #: frames between the newest input tick and the tick an answer describes (0 = causal)
    lookahead: int = 0
    #: which modalities it reads: a subset of {"imu", "video"}
    modalities: frozenset[str] = frozenset()

    @abstractmethod
    def update(self, subject: str, batch: SyncedBatch) -> AnglesResult:
        """Consume one subject's next ticks; return the angles now known for that subject.

        One instance serves many subjects and keeps a separate state per subject key.
        """

    def update_many(self, batches: dict[str, SyncedBatch]) -> dict[str, AnglesResult]:
        """Several subjects at once; neural estimators override this to batch on the device."""
        return {subject: self.update(subject, b) for subject, b in batches.items()}

    @abstractmethod
    def reset(self, subject: str | None = None) -> None:
        """Forget one subject's history (or all): a subject restarted, a clock reset."""
