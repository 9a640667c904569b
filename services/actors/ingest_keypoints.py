"""Keypoint ingest: one actor receives every camera's 2-D keypoints over ZeroMQ.

drivers.zmq_transport.KeypointReceiver already survives malformed messages (counted by sender
and reason, logged once); this stage turns those counts into bad_input metrics, maps cameras to
subjects, and forwards what arrived within `hold_s` (8 ms) to the sync stage as one message
(four free-running cameras would otherwise cost four Ray calls per frame period). Keypoint
times are on the sender's LSL clock, which on one machine is ours; frames are not dejittered
(a camera may drop frames, DESIGN.md "Time").
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pylsl

from drivers.zmq_transport import KeypointReceiver
from fusion.skeleton import KEYPOINTS
from services.actors.messages import KeypointPart, KeypointsMsg
from services.actors.stage import Stage, call
from services.config import SubjectConfig
from services.trace import Trace

__all__ = ["KeypointIngest"]

log = logging.getLogger(__name__)


class KeypointIngest(Stage):
    stage = "ingest"
    idle_s = 0.0  # the receiver's poll is the wait
    poll_ms = 5

    def __init__(
        self,
        subjects: list[SubjectConfig],
        sync: Any = None,
        metrics: Any = None,
        *,
        stale_after_s: float = 1.0,
        hold_s: float = 0.008,
        flush_s: float = 0.25,
    ) -> None:
        super().__init__(metrics=metrics, flush_s=flush_s)
        self.sync = sync
        self.camera_subject = {c.camera: s.id for s in subjects for c in s.cameras}
        self.endpoints = sorted({c.endpoint for s in subjects for c in s.cameras})
        self.receiver = KeypointReceiver(self.endpoints, expected_joints=len(KEYPOINTS))
        self.stale_after_s = stale_after_s
        self._seen: dict[tuple[str, str], int] = {}
        self._unknown: set[str] = set()
        self._last: dict[str, float] = {}
        self._held: defaultdict[str, list] = defaultdict(list)
        self._first: float | None = None
        self.hold_s = hold_s
        self.frames = 0

    def step(self, messages: list[Any]) -> None:
        wait_ms = self.poll_ms
        if self._first is not None:  # something is held: wake up when its hold ends
            wait_ms = max(
                0, min(wait_ms, int((self._first + self.hold_s - time.monotonic()) * 1e3))
            )
        got = self.receiver.poll(wait_ms) if self.endpoints else []
        now = pylsl.local_clock()
        for msg in got:
            if msg.camera not in self.camera_subject:
                self.buf.inc("bad_input", (msg.camera, "unknown_camera"))
                if msg.camera not in self._unknown:
                    self._unknown.add(msg.camera)
                    log.warning(
                        "keypoints from camera '%s', which no subject in the config lists; "
                        "ignored (counted)",
                        msg.camera,
                    )
                continue
            self._held[msg.camera].append(msg)
            self._last[msg.camera] = now
            if self._first is None:
                self._first = time.monotonic()
        if self._first is not None and time.monotonic() - self._first >= self.hold_s:
            self._send(now)

    def _send(self, now: float) -> None:
        """One message for what arrived within `hold_s`: 4 free-running cameras would
        otherwise mean 4 Ray calls per frame period into the sync stage."""
        parts = []
        newest = -np.inf
        for cam, msgs in self._held.items():
            subject = self.camera_subject[cam]
            t = np.array([m.t for m in msgs], dtype=np.float64)
            joints = np.stack([m.joints for m in msgs]).astype(np.float64)
            parts.append(KeypointPart(subject, cam, t, joints, now))
            self.buf.inc("input", (subject, cam, "keypoints"), len(msgs))
            newest = max(newest, float(t.max()))
            self.frames += len(msgs)
        self._held = defaultdict(list)
        self._first = None
        if parts:
            call(self.sync, "put", KeypointsMsg(parts, Trace(origin=newest).stamp("ingest")))

    def _account(self, now: float) -> None:
        for (sender, reason), n in self.receiver.bad_by_sender.items():
            delta = n - self._seen.get((sender, reason), 0)
            if delta > 0:
                self._seen[(sender, reason)] = n
                self.buf.inc("bad_input", (sender, reason), delta)
        for cam, subject in self.camera_subject.items():
            last = self._last.get(cam)
            up = last is not None and now - last < self.stale_after_s
            self.buf.set("stream_up", (subject, cam), 1 if up else 0)
            if last is not None:
                self.buf.set("sample_age", (subject, cam), now - last)

    def flush(self, force: bool = False) -> None:
        if force or time.monotonic() - self._last_flush >= self.flush_s:
            self._account(pylsl.local_clock())
        super().flush(force)

    def summary(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "frames": self.frames, **dict(self.receiver.stats)}

    def close(self) -> None:
        self.receiver.close()
