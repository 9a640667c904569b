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

from drivers.lsl_inlets import local_clock
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
    max_block_s = 0.05  # longest single wait in ZeroMQ (stop() is seen within it)
    min_block_s = 0.005  # shortest wait when nothing is held (a flush due now can wait that)

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
        """Wait in ZeroMQ for keypoints until something is due, take them, send when held long
        enough.

        Due is the end of the hold of what is held, else the next metrics flush (within
        `min_block_s`..`max_block_s`, so stop() is seen): between frames the worker sleeps instead of
        waking every few ms to find nothing. zmq waits in whole ms (rounded down, never past
        the hold); the last fraction of a ms is slept, not polled in a loop.
        """
        now_m = time.monotonic()
        if self._first is not None:  # something is held: wake up when its hold ends
            left = self._first + self.hold_s - now_m
        else:
            due = self._last_flush + self.flush_s - now_m
            left = min(self.max_block_s, max(due, self.min_block_s))
        if not self.endpoints:  # nothing to listen to: sleep until due (stop() wakes it)
            with self._cv:
                if self._running and left > 0:
                    self._cv.wait(left)
            return
        self._take(self.receiver.poll(max(0, int(left * 1e3))))
        if self._first is None:
            return
        rest = self._first + self.hold_s - time.monotonic()
        if 0 < rest < 1e-3:
            time.sleep(rest)
            self._take(self.receiver.poll(0))
            rest = 0.0
        if rest <= 0:
            self._send(local_clock())

    def _take(self, got: list[Any]) -> None:
        """Hold what arrived, by camera; count and log (once) cameras no subject lists."""
        if not got:
            return
        now = local_clock()
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

    def _send(self, now: float) -> None:
        """One message for what arrived within `hold_s`: 4 free-running cameras would
        otherwise mean 4 Ray calls per frame period into the sync stage."""
        parts = []
        newest = -np.inf
        for cam, msgs in self._held.items():
            subject = self.camera_subject[cam]
            times = [m.t for m in msgs]
            t = np.array(times, dtype=np.float64)
            joints = np.array([m.joints for m in msgs], dtype=np.float64)  # stack and widen
            parts.append(KeypointPart(subject, cam, t, joints, now))
            self.buf.inc("input", (subject, cam, "keypoints"), len(msgs))
            newest = max(newest, max(times))
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
            self._account(local_clock())
        super().flush(force)

    def summary(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "frames": self.frames, **dict(self.receiver.stats)}

    def close(self) -> None:
        self.receiver.close()
