"""Publish: the live outputs on LSL and ZeroMQ, and the latency that the output paid.

Per subject an `gait-stream/angles` outlet (JointAngles, one channel per ANGLES, stamped with
the time the angles describe), `gait-stream/events` and `gait-stream/gait`; the subject is in
the source id (`<prefix>/angles/<subject>`) and in desc/subject. The same on one ZeroMQ PUB
socket (topics angles, events, gait).

End-to-end latency is measured here, at the moment of publishing: now - (tick time +
look-ahead), per tick; the stage latencies come from the message's trace.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pylsl

from drivers.lsl_outlets import AnglesOutlet, EventsOutlet, GaitOutlet
from drivers.zmq_transport import OutputPublisher, angles_payload
from fusion.skeleton import ANGLES, GAIT_PARAMS
from services.actors.messages import AnglesMsg, GaitMsg
from services.actors.stage import Stage
from services.config import OutputsConfig

__all__ = ["Publish"]

log = logging.getLogger(__name__)


class Publish(Stage):
    stage = "publish"
    idle_s = 0.05  # only timers (metrics flush): messages wake it at once

    def __init__(
        self,
        subjects: list[str],
        outputs: OutputsConfig,
        metrics: Any = None,
        *,
        rate_hz: float = 60.0,
        max_depth: int = 64,
        flush_s: float = 0.25,
    ) -> None:
        super().__init__(metrics=metrics, max_depth=max_depth, flush_s=flush_s)
        self.subjects = list(subjects)
        prefix = outputs.lsl_source_id
        self.angles: dict[str, AnglesOutlet] = {}
        self.events: dict[str, EventsOutlet] = {}
        self.gait: dict[str, GaitOutlet] = {}
        if outputs.lsl:
            for s in self.subjects:
                self.angles[s] = AnglesOutlet(s, rate=rate_hz, source_id=f"{prefix}/angles")
                self.events[s] = EventsOutlet(s, source_id=f"{prefix}/events")
                self.gait[s] = GaitOutlet(s, source_id=f"{prefix}/gait")
        self.zmq = OutputPublisher(outputs.zmq) if outputs.zmq else None
        self.counts = {"angles": 0, "events": 0, "gait": 0}

    def endpoints(self) -> dict[str, Any]:
        return {
            "lsl": {s: o.source_id for s, o in self.angles.items()},
            "zmq": self.zmq.endpoint if self.zmq else None,
        }

    def step(self, messages: list[Any]) -> None:
        for msg in messages:
            if isinstance(msg, AnglesMsg):
                self._angles(msg)
            elif isinstance(msg, GaitMsg):
                self._gait(msg)

    def _angles(self, msg: AnglesMsg) -> None:
        for subject, res in msg.results.items():
            n = len(res.t)
            if not n:
                continue
            if subject in self.angles:
                self.angles[subject].push(res.t, res.angles.astype(np.float32))
            if self.zmq is not None:
                self.zmq.publish("angles", angles_payload(subject, res.t, res.angles, ANGLES))
            now = pylsl.local_clock()
            self.counts["angles"] += n
            self.buf.inc("output", (subject, "angles"), n)
            self.buf.observe("e2e", (subject,), now - (res.t + msg.lookahead_s))
            last = res.angles[-1]
            for name, value in zip(ANGLES, last, strict=True):
                self.buf.set("angle", (subject, name), float(value))
        msg.trace.stamp("publish")
        for stage, dt in msg.trace.stage_latencies().items():
            self.buf.observe("stage_latency", (stage,), dt)

    def _gait(self, msg: GaitMsg) -> None:
        for subject, events in msg.events.items():
            if not events:
                continue
            t = [e[0] for e in events]
            labels = [e[1] for e in events]
            if subject in self.events:
                self.events[subject].push(t, labels)
            if self.zmq is not None:
                self.zmq.publish("events", {"subject": subject, "t": t, "events": labels})
            self.counts["events"] += len(events)
            self.buf.inc("output", (subject, "events"), len(events))
        for subject, (t, rows) in msg.strides.items():
            if not len(t):
                continue
            if subject in self.gait:
                self.gait[subject].push(t, rows)
            if self.zmq is not None:
                self.zmq.publish(
                    "gait",
                    {
                        "subject": subject,
                        "t": np.asarray(t).tolist(),
                        "names": list(GAIT_PARAMS),
                        "values": np.asarray(rows).tolist(),
                    },
                )
            self.counts["gait"] += len(t)
            self.buf.inc("output", (subject, "gait"), len(t))
        lat = msg.trace.stage_latencies()
        if "gait" in lat:
            self.buf.observe("stage_latency", ("gait",), lat["gait"])

    def summary(self) -> dict[str, Any]:
        return {"dropped": self.dropped, **self.counts}

    def close(self) -> None:
        for table in (self.angles, self.events, self.gait):
            for outlet in table.values():
                outlet.close()
        if self.zmq is not None:
            self.zmq.close()
