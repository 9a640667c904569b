"""ZeroMQ edges: camera keypoints and frames in, angles/events/gait out (msgpack payloads).

Wire formats are the contract in DESIGN.md:
- keypoints: one frame, msgpack `{camera, seq, t, joints: [[x, y, conf], ...], layout}`;
- frames: two frames, `[msgpack {camera, seq, t, width, height, encoding}, payload]` with
  encoding `jpeg` or `bgr8` (rows of B, G, R bytes, no padding);
- outputs: two frames, `[topic, msgpack payload]` on topics `angles`, `events`, `gait`.

Publishers bind, receivers connect (one receiver can listen to many cameras). Receivers never
raise on what arrives: a malformed message is counted by reason in `stats`, logged once per
reason and sender (then at most once a minute with a count), and dropped; the next message is
read as usual.

What cannot be counted here: ZeroMQ PUB/SUB silently discards messages when a high-water mark
(sender's SNDHWM or receiver's RCVHWM) is reached, and a subscriber misses whatever was sent
before its subscription reached the publisher ("slow joiner"). Neither is visible on the
socket. Camera messages carry `seq`, so such losses show up here as `seq_gap` (the number of
sequence numbers skipped); output messages carry no sequence number.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import msgpack
import numpy as np
import zmq

__all__ = [
    "OUTPUT_TOPICS",
    "FrameMsg",
    "FramePublisher",
    "FrameReceiver",
    "KeypointMsg",
    "KeypointPublisher",
    "KeypointReceiver",
    "OutputPublisher",
    "OutputSubscriber",
    "angles_payload",
    "free_tcp_endpoint",
]

log = logging.getLogger(__name__)

OUTPUT_TOPICS: tuple[str, ...] = ("angles", "events", "gait")
FRAME_ENCODINGS: tuple[str, ...] = ("jpeg", "bgr8")
KEYPOINT_KEYS: tuple[str, ...] = ("camera", "seq", "t", "joints", "layout")
FRAME_KEYS: tuple[str, ...] = ("camera", "seq", "t", "width", "height", "encoding")

#: After the first log line for a (sender, reason), repeat at most this often (with a count).
BAD_INPUT_LOG_INTERVAL_S = 60.0

# plain ints: pyzmq turns its enum constants into enum objects on every use (~3x the cost of
# the option read itself, and the receiver reads one per message)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_add = np.add.reduce


def free_tcp_endpoint() -> str:
    """`tcp://127.0.0.1:<port>` for a port that was free a moment ago.

    Binding to `tcp://127.0.0.1:*` and reading the publisher's `.endpoint` is race-free; use
    this helper when the port must be known before the socket exists (e.g. in a config).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _np_default(obj: Any) -> Any:
    """Let numpy arrays and scalars go through msgpack as lists and Python numbers."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot msgpack {type(obj).__name__}")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_np_default, use_bin_type=True)


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class _Socketed:
    """Close-on-exit for classes that own sockets in `self._sockets`."""

    _sockets: list[zmq.Socket]

    def _open_pub(self, endpoint: str, sndhwm: int, context: zmq.Context | None) -> None:
        """A bound PUB socket as `self._sock`; `self.endpoint` is the address it really got."""
        ctx = context or zmq.Context.instance()
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.endpoint = _bind(self._sock, endpoint)
        self._sockets = [self._sock]

    def close(self) -> None:
        """Close the sockets now, dropping anything unsent (linger 0)."""
        for s in self._sockets:
            s.close(linger=0)
        self._sockets = []

    def __enter__(self) -> _Socketed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- outputs


def angles_payload(
    subject: str, t: Sequence[float] | np.ndarray, values: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """The `angles` payload: {subject, t: [...], names: [...], values: [[...], ...]}."""
    return {
        "subject": subject,
        "t": np.asarray(t, dtype=np.float64).tolist(),
        "names": list(names),
        "values": np.asarray(values, dtype=np.float64).tolist(),
    }


class OutputPublisher(_Socketed):
    """PUB socket for the live outputs; `publish(topic, payload)` never blocks.

    Payload shapes: angles {subject, t, names, values}; events and gait are dicts the gait
    stage defines. numpy arrays/scalars in a payload are converted to lists/numbers.
    """

    def __init__(
        self, endpoint: str, *, sndhwm: int = 10_000, context: zmq.Context | None = None
    ) -> None:
        self._open_pub(endpoint, sndhwm, context)
        self.sent: Counter[str] = Counter()

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Send [topic, msgpack(payload)]; unknown topics are a programming error."""
        if topic not in OUTPUT_TOPICS:
            raise ValueError(f"topic must be one of {OUTPUT_TOPICS}, got {topic!r}")
        self._sock.send_multipart([topic.encode(), _pack(payload)])
        self.sent[topic] += 1


class OutputSubscriber(_Socketed):
    """SUB side of OutputPublisher, for tests, dashboards and downstream consumers."""

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = OUTPUT_TOPICS,
        *,
        context: zmq.Context | None = None,
    ) -> None:
        ctx = context or zmq.Context.instance()
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self.endpoint = endpoint
        self._sockets = [self._sock]
        self.stats: Counter[str] = Counter()

    def recv(self, timeout_ms: int = 1000) -> tuple[str, dict[str, Any]] | None:
        """Next (topic, payload) within `timeout_ms`, or None; malformed messages are skipped."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            left = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(left):
                return None
            parts = self._sock.recv_multipart()
            if len(parts) == 2:
                try:
                    payload = msgpack.unpackb(parts[1], raw=False)
                except Exception:
                    payload = None
                if isinstance(payload, dict):
                    self.stats["received"] += 1
                    return parts[0].decode(errors="replace"), payload
            self.stats["malformed"] += 1
            log.warning("output subscriber %s: dropped a malformed message", self.endpoint)


# ----------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class KeypointMsg:
    """One camera's 2-D keypoints for one frame; joints (K, 3) float32 [x, y, conf].

    Joints whose coordinates or confidence were not finite arrive with x = y = conf = 0.
    """

    camera: str
    seq: int
    t: float
    joints: np.ndarray
    layout: str


@dataclass(frozen=True)
class FrameMsg:
    """One decoded camera frame: image (H, W, 3) uint8 BGR (read-only for bgr8)."""

    camera: str
    seq: int
    t: float
    image: np.ndarray
    encoding: str


class KeypointPublisher(_Socketed):
    """Sends a camera's keypoints (what an external 2-D detector would send)."""

    def __init__(
        self,
        endpoint: str,
        camera: str,
        layout: str,
        *,
        sndhwm: int = 1000,
        context: zmq.Context | None = None,
    ) -> None:
        self._open_pub(endpoint, sndhwm, context)
        self.camera = camera
        self.layout = layout

    def send(self, seq: int, t: float, joints: np.ndarray) -> None:
        """joints (K, 3) [x, y, conf] in pixels; t on the sender's LSL clock."""
        arr = np.asarray(joints, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"camera {self.camera!r}: joints shape {arr.shape}, need (K, 3)")
        msg = {
            "camera": self.camera,
            "seq": int(seq),
            "t": float(t),
            "joints": arr.tolist(),
            "layout": self.layout,
        }
        self._sock.send(_pack(msg))


class FramePublisher(_Socketed):
    """Sends a camera's frames as [msgpack header, jpeg or raw bgr8 payload]."""

    def __init__(
        self,
        endpoint: str,
        camera: str,
        *,
        jpeg_quality: int = 90,
        sndhwm: int = 16,
        context: zmq.Context | None = None,
    ) -> None:
        self._open_pub(endpoint, sndhwm, context)
        self.camera = camera
        self.jpeg_quality = int(jpeg_quality)

    def send(self, seq: int, t: float, image: np.ndarray, encoding: str = "jpeg") -> None:
        """image (H, W, 3) uint8 BGR (OpenCV order)."""
        img = np.asarray(image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"camera {self.camera!r}: image {img.shape} {img.dtype}, need (H, W, 3) uint8"
            )
        if encoding == "jpeg":
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise ValueError(f"camera {self.camera!r}: JPEG encoding failed")
            payload = buf.tobytes()
        elif encoding == "bgr8":
            payload = np.ascontiguousarray(img).tobytes()
        else:
            raise ValueError(f"encoding must be one of {FRAME_ENCODINGS}, got {encoding!r}")
        header = {
            "camera": self.camera,
            "seq": int(seq),
            "t": float(t),
            "width": int(img.shape[1]),
            "height": int(img.shape[0]),
            "encoding": encoding,
        }
        self._sock.send_multipart([_pack(header), payload])


class _BadMessageError(Exception):
    """Internal: a message is dropped for `reason`; `sender` names the camera if known."""

    def __init__(self, reason: str, detail: str, sender: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.sender = sender


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class _Receiver(_Socketed):
    """SUB sockets (one per endpoint, so errors can name the sender) and the drop accounting.

    stats: Counter of 'received' (accepted messages) and of every drop/anomaly reason.
    bad_by_sender: Counter of (camera or endpoint, reason), for per-stream metrics.
    """

    kind = "message"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        rcvhwm: int,
        max_messages: int,
        context: zmq.Context | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        ctx = context or zmq.Context.instance()
        self.endpoints = list(endpoints)
        self.max_messages = max_messages
        self.stats: Counter[str] = Counter()
        self.bad_by_sender: Counter[tuple[str, str]] = Counter()
        self._poller = zmq.Poller()
        self._sockets = []
        self._endpoint_of: dict[zmq.Socket, str] = {}
        for ep in self.endpoints:
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(ep)
            self._poller.register(sock, zmq.POLLIN)
            self._sockets.append(sock)
            self._endpoint_of[sock] = ep
        self._last_seq: dict[str, int] = {}
        self._log_state: dict[tuple[str, str], tuple[float, int]] = {}

    def close(self) -> None:
        for sock in self._sockets:
            self._poller.unregister(sock)
        super().close()

    def _count(self, sender: str, reason: str, detail: str, n: int = 1) -> None:
        """Count a drop/anomaly; log the first per (sender, reason), then once a minute."""
        self.stats[reason] += n
        self.bad_by_sender[(sender, reason)] += n
        key = (sender, reason)
        now = time.monotonic()
        last, since = self._log_state.get(key, (-math.inf, 0))
        since += n
        if now - last >= BAD_INPUT_LOG_INTERVAL_S:
            extra = "" if last == -math.inf else f" ({since} since the last report)"
            log.warning("%s from %s: %s: %s%s", self.kind, sender, reason, detail, extra)
            self._log_state[key] = (now, 0)
        else:
            self._log_state[key] = (last, since)

    def _check_seq(self, camera: str, seq: int) -> None:
        last = self._last_seq.get(camera)
        if last is not None:
            if seq > last + 1:
                self._count(camera, "seq_gap", f"seq jumped {last} -> {seq}", seq - last - 1)
            elif seq <= last:
                self._count(camera, "seq_backwards", f"seq went {last} -> {seq} (restart?)")
        self._last_seq[camera] = seq

    def _header(self, raw: bytes, keys: Sequence[str]) -> dict[str, Any]:
        """Unpack and type-check the common fields {camera, seq, t}."""
        try:
            msg = msgpack.unpackb(raw, raw=False)
        except Exception as exc:
            raise _BadMessageError(
                "not_msgpack", f"{len(raw)} bytes: {type(exc).__name__} {exc}".rstrip()
            ) from None
        if not isinstance(msg, dict):
            raise _BadMessageError("not_a_map", f"payload is a {type(msg).__name__}")
        camera = msg.get("camera")
        sender = camera if isinstance(camera, str) and camera else None
        missing = [k for k in keys if k not in msg]
        if missing:
            raise _BadMessageError("missing_key", f"missing {missing}", sender)
        if sender is None:
            raise _BadMessageError("wrong_type", f"camera must be a non-empty str, got {camera!r}")
        if not _is_int(msg["seq"]):
            raise _BadMessageError("wrong_type", f"seq must be an int, got {msg['seq']!r}", sender)
        if not _is_real(msg["t"]) or not math.isfinite(msg["t"]):
            raise _BadMessageError(
                "wrong_type", f"t must be a finite number, got {msg['t']!r}", sender
            )
        return msg

    def _decode(self, parts: list[zmq.Frame], endpoint: str) -> Any:
        raise NotImplementedError

    @staticmethod
    def _recv_parts(sock: zmq.Socket) -> list[zmq.Frame]:
        """One message's frames (recv_multipart without its per-frame enum lookups)."""
        parts = [sock.recv(_NOBLOCK, copy=False)]
        while parts[-1].more:  # the rest of a multipart message is there already
            parts.append(sock.recv(copy=False))
        return parts

    def poll(self, timeout_ms: int = 0) -> list[Any]:
        """Wait up to `timeout_ms` for traffic, then return everything queued (oldest first)."""
        out: list[Any] = []
        for sock, _ in self._poller.poll(timeout_ms):  # only the sockets with traffic
            endpoint = self._endpoint_of[sock]
            # ask the socket whether another message is there instead of reading until
            # zmq.Again: that exception costs more than the check, once per socket and poll
            while len(out) < self.max_messages and sock.getsockopt(_EVENTS) & _POLLIN:
                try:
                    parts = self._recv_parts(sock)
                except zmq.Again:
                    break
                try:
                    msg = self._decode(parts, endpoint)
                except _BadMessageError as bad:
                    self._count(bad.sender or endpoint, bad.reason, bad.detail)
                    continue
                self.stats["received"] += 1
                out.append(msg)
        return out


class KeypointReceiver(_Receiver):
    """Keypoints from one or more cameras; `poll()` → list[KeypointMsg]."""

    kind = "keypoints"

    def __init__(
        self,
        endpoints: Sequence[str],
        expected_joints: int,
        *,
        rcvhwm: int = 1000,
        max_messages: int = 10_000,
        context: zmq.Context | None = None,
    ) -> None:
        super().__init__(endpoints, rcvhwm=rcvhwm, max_messages=max_messages, context=context)
        self.expected_joints = int(expected_joints)

    def _decode(self, parts: list[zmq.Frame], endpoint: str) -> KeypointMsg:
        if len(parts) != 1:
            raise _BadMessageError("wrong_parts", f"{len(parts)} frames, keypoints use 1")
        msg = self._header(parts[0].bytes, KEYPOINT_KEYS)
        camera = msg["camera"]
        if not isinstance(msg["layout"], str):
            raise _BadMessageError(
                "wrong_type", f"layout must be str, got {msg['layout']!r}", camera
            )
        joints = msg["joints"]
        if not isinstance(joints, list):
            raise _BadMessageError(
                "wrong_type", f"joints must be a list, got {type(joints)}", camera
            )
        if len(joints) != self.expected_joints:
            raise _BadMessageError(
                "wrong_joint_count",
                f"{len(joints)} joints, expected {self.expected_joints} (layout {msg['layout']!r})",
                camera,
            )
        try:
            arr = np.array(joints, dtype=np.float32)
        except (TypeError, ValueError):
            arr = self._joints_with_nulls(joints, camera)
        if arr.shape != (self.expected_joints, 3):
            raise _BadMessageError("wrong_type", f"joints shape {arr.shape}, need (K, 3)", camera)
        # one sum says whether every value is finite (an overflow only sends it the slow way)
        if not math.isfinite(float(_add(arr, axis=None))):
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                arr[bad] = 0.0  # confidence 0 marks the joint missing; keep the message
                n_bad = int(bad.sum())
                self._count(camera, "nonfinite_joints", f"{n_bad} joint(s) set to conf 0")
        self._check_seq(camera, msg["seq"])
        return KeypointMsg(camera, msg["seq"], float(msg["t"]), arr, msg["layout"])

    @staticmethod
    def _joints_with_nulls(joints: list[Any], camera: str) -> np.ndarray:
        """Detectors write null for a missing coordinate: read it as NaN (→ conf 0)."""
        try:
            rows = [
                [math.nan if v is None else float(v) for v in row]
                if isinstance(row, list | tuple) and len(row) == 3
                else None
                for row in joints
            ]
        except (TypeError, ValueError):
            raise _BadMessageError("wrong_type", "joints hold non-numbers", camera) from None
        if any(r is None for r in rows):
            raise _BadMessageError("wrong_type", "every joint must be [x, y, conf]", camera)
        return np.array(rows, dtype=np.float32)


class FrameReceiver(_Receiver):
    """Frames from one or more cameras; `poll()` → list[FrameMsg] with BGR images.

    The default receive high-water mark is small on purpose: a frame that waited behind 16
    others is too old to be useful live; what the HWM drops shows up as `seq_gap`.
    """

    kind = "frame"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        rcvhwm: int = 16,
        max_messages: int = 256,
        context: zmq.Context | None = None,
    ) -> None:
        super().__init__(endpoints, rcvhwm=rcvhwm, max_messages=max_messages, context=context)

    def _decode(self, parts: list[zmq.Frame], endpoint: str) -> FrameMsg:
        if len(parts) != 2:
            raise _BadMessageError("wrong_parts", f"{len(parts)} frames, frames use 2")
        head = self._header(parts[0].bytes, FRAME_KEYS)
        camera = head["camera"]
        w, h, enc = head["width"], head["height"], head["encoding"]
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            raise _BadMessageError("wrong_type", f"width/height {w!r}x{h!r}", camera)
        payload = parts[1].buffer
        if enc == "bgr8":
            if len(payload) != w * h * 3:
                raise _BadMessageError(
                    "bad_payload_size",
                    f"bgr8 {w}x{h} needs {w * h * 3} bytes, got {len(payload)}",
                    camera,
                )
            image = np.frombuffer(payload, dtype=np.uint8).reshape(h, w, 3)
        elif enc == "jpeg":
            image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise _BadMessageError("bad_image", f"{len(payload)} bytes are not a JPEG", camera)
            if image.shape != (h, w, 3):
                raise _BadMessageError(
                    "bad_image",
                    f"JPEG is {image.shape[1]}x{image.shape[0]}, header {w}x{h}",
                    camera,
                )
        else:
            raise _BadMessageError("unknown_encoding", f"encoding {enc!r}", camera)
        self._check_seq(camera, head["seq"])
        return FrameMsg(camera, head["seq"], float(head["t"]), image, enc)
