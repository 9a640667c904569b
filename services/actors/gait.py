"""Gait: joint angles (and foot IMUs) → gait events and per-stride parameters, per subject.

The computation is fusion.gait's streaming GaitTracker (one per subject); this stage only feeds
it the estimated angles and the foot gyroscopes of the same ticks (NaN where masked: it then
falls back to the joint-angle method), and forwards the events and strides it confirms to the
publish stage. If fusion.gait is not importable the stage says so once and forwards nothing:
the angles path does not depend on it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from services.actors.messages import AnglesMsg, GaitMsg
from services.actors.stage import Stage, call

__all__ = ["Gait"]

log = logging.getLogger(__name__)


class Gait(Stage):
    stage = "gait"
    idle_s = 0.05

    def __init__(
        self,
        subjects: list[str],
        publish: Any = None,
        metrics: Any = None,
        *,
        rate_hz: float = 60.0,
        bodies: dict[str, Any] | None = None,
        max_depth: int = 32,
        flush_s: float = 0.25,
    ) -> None:
        super().__init__(metrics=metrics, max_depth=max_depth, flush_s=flush_s)
        self.publish = publish
        self.rate = rate_hz
        self.trackers: dict[str, Any] = {}
        self.available = True
        self.events = 0
        self.strides = 0
        try:
            from fusion.gait import GaitTracker
        except Exception as exc:
            self.available = False
            log.warning("gait stage: fusion.gait is not available (%s); no gait events", exc)
            return
        for s in subjects:
            # the subject's BodyModel (segment lengths) when known: step length depends on it
            body = (bodies or {}).get(s)
            self.trackers[s] = GaitTracker(body=body) if body is not None else GaitTracker()

    def step(self, messages: list[Any]) -> None:
        if not self.available:
            return
        events: dict[str, list[tuple[float, str]]] = {}
        strides: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        trace = None
        for msg in messages:
            if not isinstance(msg, AnglesMsg):
                continue
            trace = msg.trace
            for subject, res in msg.results.items():
                tracker = self.trackers.get(subject)
                if tracker is None:
                    continue
                up = tracker.update(res.t, res.angles, msg.foot_gyro.get(subject))
                if up.events:
                    events.setdefault(subject, []).extend(up.events)
                    self.events += len(up.events)
                if len(up.stride_t):
                    t_old, r_old = strides.get(
                        subject, (np.zeros(0), np.zeros((0, up.strides.shape[1])))
                    )
                    strides[subject] = (
                        np.concatenate([t_old, up.stride_t]),
                        np.concatenate([r_old, up.strides]),
                    )
                    self.strides += len(up.stride_t)
        if trace is None or not (events or strides):
            return
        call(self.publish, "put", GaitMsg(events, strides, trace.stamp("gait")))

    def summary(self) -> dict[str, Any]:
        if not self.available:
            return {"dropped": self.dropped, "available": False}
        return {"dropped": self.dropped, "events": self.events, "strides": self.strides}
