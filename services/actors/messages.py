"""What the stages send each other (pickled by Ray). Every message carries a Trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from fusion.estimators.base import AnglesResult, SyncedBatch
from services.trace import Trace

__all__ = ["AnglesMsg", "GaitMsg", "ImuMsg", "ImuPart", "KeypointPart", "KeypointsMsg", "TickMsg"]


class ImuPart(NamedTuple):
    """New samples of one IMU stream of one subject, local LSL clock, contract units.

    A NamedTuple: ingest builds one per stream and pull (~1300 a second per subject).
    """

    subject: str
    stream: str  # stream label used in metrics and logs
    segments: tuple[str, ...]
    t: np.ndarray  # (N,)
    data: np.ndarray  # (N, len(segments), 6)
    rate: float  # nominal rate (0: irregular)
    received: float  # local clock when pulled


@dataclass
class ImuMsg:
    """One ingest round: every stream's new samples, packed into a few flat arrays.

    Why packed: Ray pickles every message, and a list of 13 small dataclasses with 26 small
    arrays costs ~5x more to pickle and unpickle than the same numbers in 2 arrays.
    Build with `ImuMsg.pack(parts, trace)`; `msg.parts` gives the ImuPart views back.
    """

    subjects: list[str]
    streams: list[str]
    segments: list[tuple[str, ...]]
    rates: list[float]
    counts: np.ndarray  # (P,) samples per part
    t: np.ndarray  # (sum of counts,)
    data: np.ndarray  # (sum of counts × segments, 6)
    received: float
    trace: Trace

    @classmethod
    def pack(cls, parts: list[ImuPart], trace: Trace) -> ImuMsg:
        return cls(
            subjects=[p.subject for p in parts],
            streams=[p.stream for p in parts],
            segments=[tuple(p.segments) for p in parts],
            rates=[float(p.rate) for p in parts],
            counts=np.array([len(p.t) for p in parts], dtype=np.int64),
            t=np.concatenate([p.t for p in parts]) if parts else np.zeros(0),
            data=np.concatenate([p.data.reshape(-1, 6) for p in parts])
            if parts
            else np.zeros((0, 6)),
            received=max((p.received for p in parts), default=0.0),
            trace=trace,
        )

    @property
    def parts(self) -> list[ImuPart]:
        out = []
        i = j = 0
        for k, n in enumerate(self.counts.tolist()):
            segs = self.segments[k]
            rows = n * len(segs)
            out.append(
                ImuPart(
                    self.subjects[k],
                    self.streams[k],
                    segs,
                    self.t[i : i + n],
                    self.data[j : j + rows].reshape(n, len(segs), 6),
                    self.rates[k],
                    self.received,
                )
            )
            i += n
            j += rows
        return out


@dataclass
class KeypointPart:
    """New keypoint frames of one camera of one subject."""

    subject: str
    camera: str
    t: np.ndarray  # (M,)
    joints: np.ndarray  # (M, 17, 3) pixel x, y, confidence
    received: float


@dataclass
class KeypointsMsg:
    parts: list[KeypointPart]
    trace: Trace


@dataclass
class TickMsg:
    """Synced model ticks for one or more subjects (one estimator call's worth)."""

    batches: dict[str, SyncedBatch]
    trace: Trace


@dataclass
class AnglesMsg:
    results: dict[str, AnglesResult]
    lookahead_s: float
    trace: Trace
    #: per subject (M, 2, 3) foot_l/foot_r gyro at the results' times (NaN where masked),
    #: for gait events from the foot sensors
    foot_gyro: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class GaitMsg:
    """Gait events (t, label) and per-stride rows (t, GAIT_PARAMS values) per subject."""

    events: dict[str, list[tuple[float, str]]]
    strides: dict[str, tuple[np.ndarray, np.ndarray]]
    trace: Trace
