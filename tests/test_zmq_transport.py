"""ZeroMQ camera and output transport over real loopback TCP sockets.

PUB/SUB drops what is sent before the subscription reaches the publisher ("slow joiner"), so
each test first sends probes until one arrives, then counts from there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from drivers.zmq_transport import (
    FramePublisher,
    FrameReceiver,
    KeypointPublisher,
    KeypointReceiver,
    OutputPublisher,
    OutputSubscriber,
    angles_payload,
    free_tcp_endpoint,
)
from fusion.skeleton import ANGLES, KEYPOINTS

K = len(KEYPOINTS)


def _joints(seed: float) -> np.ndarray:
    j = np.empty((K, 3))
    j[:, 0] = 100 + seed + np.arange(K)
    j[:, 1] = 200 - seed + 2 * np.arange(K)
    j[:, 2] = 0.9
    return j


def _sync(send: Callable[[int], None], poll: Callable[[], list], timeout: float = 5.0) -> int:
    """Send probes (seq 0, 1, ...) until one is received; return the next free seq."""
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        send(seq)
        seq += 1
        if poll():
            time.sleep(0.02)  # let in-flight probes land, then swallow them
            poll()
            return seq
    raise AssertionError("subscriber never connected")


def _poll_until(rx: KeypointReceiver | FrameReceiver, n: int, timeout: float = 3.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += rx.poll(50)
    return got


def test_free_tcp_endpoint_is_bindable_loopback() -> None:
    ep = free_tcp_endpoint()
    assert ep.startswith("tcp://127.0.0.1:")
    with OutputPublisher(ep) as pub:
        assert pub.endpoint == ep


def test_output_publisher_round_trip_with_numpy_payload() -> None:
    with (
        OutputPublisher("tcp://127.0.0.1:*") as pub,
        OutputSubscriber(pub.endpoint, ["angles", "gait"]) as sub,
    ):
        values = np.arange(2 * len(ANGLES), dtype=np.float32).reshape(2, len(ANGLES))
        payload = angles_payload("s1", np.array([10.0, 10.02]), values, ANGLES)
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            pub.publish("angles", payload)
            got = sub.recv(50)
        assert got is not None
        topic, msg = got
        assert topic == "angles"
        assert msg["subject"] == "s1" and msg["names"] == list(ANGLES)
        assert msg["t"] == [10.0, 10.02]
        np.testing.assert_array_equal(np.array(msg["values"]), values)
        pub.publish("events", {"t": 1.0, "label": "heel_strike_l"})  # not subscribed
        pub.publish("gait", {"cadence": np.float64(110.0), "side": np.int64(1)})
        while (got := sub.recv(1000)) is not None and got[0] == "angles":
            pass  # drain duplicates from the probe loop
        assert got == ("gait", {"cadence": 110.0, "side": 1})
        with pytest.raises(ValueError, match="topic"):
            pub.publish("video", {})


def test_keypoints_round_trip_and_seq_gap() -> None:
    with (
        KeypointPublisher("tcp://127.0.0.1:*", "cam0", "gait-stream17") as pub,
        KeypointReceiver([pub.endpoint], expected_joints=K) as rx,
    ):
        seq = _sync(lambda s: pub.send(s, 0.0, _joints(s)), lambda: rx.poll(20))
        base = rx.stats.copy()
        for k in range(5):
            pub.send(seq + k, 1000.0 + k / 30, _joints(k))
        pub.send(seq + 8, 1001.0, _joints(8))  # seq + 5..7 never sent
        got = _poll_until(rx, 6)
        assert [m.seq for m in got] == [*range(seq, seq + 5), seq + 8]
        m = got[2]
        assert (m.camera, m.layout, m.t) == ("cam0", "gait-stream17", 1000.0 + 2 / 30)
        assert m.joints.dtype == np.float32 and m.joints.shape == (K, 3)
        np.testing.assert_allclose(m.joints, _joints(2), rtol=1e-6)
        assert rx.stats["received"] - base["received"] == 6
        assert rx.stats["seq_gap"] - base["seq_gap"] == 3


def test_keypoints_from_two_cameras_into_one_receiver() -> None:
    with (
        KeypointPublisher("tcp://127.0.0.1:*", "left", "L") as a,
        KeypointPublisher("tcp://127.0.0.1:*", "right", "L") as b,
        KeypointReceiver([a.endpoint, b.endpoint], expected_joints=K) as rx,
    ):
        sa = _sync(lambda s: a.send(s, 0.0, _joints(0)), lambda: rx.poll(20))
        sb = _sync(lambda s: b.send(s, 0.0, _joints(0)), lambda: rx.poll(20))
        a.send(sa, 5.0, _joints(1))
        b.send(sb, 5.0, _joints(2))
        got = _poll_until(rx, 2)
        assert sorted(m.camera for m in got) == ["left", "right"]
        assert rx.stats["seq_gap"] == 0


@pytest.mark.parametrize("encoding", ["jpeg", "bgr8"])
def test_frames_round_trip(encoding: str) -> None:
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)
    with (
        FramePublisher("tcp://127.0.0.1:*", "cam1") as pub,
        FrameReceiver([pub.endpoint]) as rx,
    ):
        seq = _sync(lambda s: pub.send(s, 0.0, image, encoding), lambda: rx.poll(20))
        pub.send(seq, 12.5, image, encoding)
        (msg,) = _poll_until(rx, 1)
        assert (msg.camera, msg.seq, msg.t, msg.encoding) == ("cam1", seq, 12.5, encoding)
        assert msg.image.shape == (h, w, 3) and msg.image.dtype == np.uint8
        if encoding == "bgr8":
            np.testing.assert_array_equal(msg.image, image)
        else:
            err = np.abs(msg.image.astype(int) - image.astype(int)).mean()
            assert err < 3.0, f"JPEG round trip mean error {err}"
            assert msg.image[..., 0].mean() == pytest.approx(image[..., 0].mean(), abs=2)


def _raw_pub() -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    return sock


def _kp(seq: int, joints: object, **over: object) -> bytes:
    msg = {"camera": "camX", "seq": seq, "t": 1.0, "joints": joints, "layout": "L"}
    msg.update(over)
    return msgpack.packb({k: v for k, v in msg.items() if v is not None})


def test_malformed_keypoints_counted_by_reason_and_good_ones_still_arrive() -> None:
    pub = _raw_pub()
    ep = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    good = _joints(0).tolist()
    try:
        with KeypointReceiver([ep], expected_joints=K) as rx:
            seq = _sync(lambda s: pub.send(_kp(s, good)), lambda: rx.poll(20))
            base = rx.stats.copy()
            pub.send(b"\xc1\xff garbage")  # 0xc1 is never valid msgpack
            pub.send(msgpack.packb([1, 2, 3]))  # msgpack, not a map
            pub.send(_kp(seq, good, layout=None))  # missing key
            pub.send(_kp(seq, good, t="soon"))  # wrong type
            pub.send(_kp(seq, good[:-1]))  # wrong joint count
            pub.send_multipart([_kp(seq, good), b"extra"])  # wrong number of frames
            holes = [row[:] for row in good]
            holes[3][0] = math.nan
            holes[4] = [None, None, None]
            pub.send(_kp(seq, holes))  # kept, with confidence 0 on the two joints
            pub.send(_kp(seq + 1, good))  # good
            got = _poll_until(rx, 2)
            delta = rx.stats - base
            assert dict(delta) == {
                "not_msgpack": 1,
                "not_a_map": 1,
                "missing_key": 1,
                "wrong_type": 1,
                "wrong_joint_count": 1,
                "wrong_parts": 1,
                "nonfinite_joints": 1,
                "received": 2,
            }
            assert [m.seq for m in got] == [seq, seq + 1]
            assert got[0].joints[3].tolist() == [0, 0, 0] and got[0].joints[4].tolist() == [0] * 3
            assert got[0].joints[5, 2] == pytest.approx(0.9)
            assert rx.bad_by_sender[("camX", "wrong_joint_count")] == 1
            assert rx.bad_by_sender[(ep, "not_msgpack")] == 1  # unknown camera: the endpoint
    finally:
        pub.close(linger=0)


def test_malformed_frames_counted_by_reason_and_good_ones_still_arrive() -> None:
    pub = _raw_pub()
    ep = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    h, w = 8, 10
    image = np.full((h, w, 3), 77, np.uint8)

    def head(seq: int, enc: str, **over: object) -> bytes:
        d = {"camera": "camF", "seq": seq, "t": 2.0, "width": w, "height": h, "encoding": enc}
        d.update(over)
        return msgpack.packb(d)

    try:
        with FrameReceiver([ep]) as rx:
            seq = _sync(
                lambda s: pub.send_multipart([head(s, "bgr8"), image.tobytes()]),
                lambda: rx.poll(20),
            )
            base = rx.stats.copy()
            pub.send_multipart([head(seq, "bgr8"), image.tobytes()[:-5]])  # truncated
            pub.send_multipart([head(seq, "jpeg"), b"\xff\xd8 not really a jpeg"])
            ok, jpg = cv2.imencode(".jpg", image)
            assert ok
            pub.send_multipart([head(seq, "jpeg", width=w + 1), jpg.tobytes()])  # size lie
            pub.send_multipart([head(seq, "png"), b"x"])
            pub.send_multipart([b"\xc1", image.tobytes()])
            pub.send_multipart([head(seq, "bgr8", height=None), image.tobytes()])
            pub.send(head(seq, "bgr8"))  # header without payload
            pub.send_multipart([head(seq, "bgr8"), image.tobytes()])  # good
            pub.send_multipart([head(seq + 1, "jpeg"), jpg.tobytes()])  # good
            got = _poll_until(rx, 2)
            delta = rx.stats - base
            assert dict(delta) == {
                "bad_payload_size": 1,
                "bad_image": 2,
                "unknown_encoding": 1,
                "not_msgpack": 1,
                "wrong_type": 1,
                "wrong_parts": 1,
                "received": 2,
            }
            assert [m.encoding for m in got] == ["bgr8", "jpeg"]
            np.testing.assert_array_equal(got[0].image, image)
    finally:
        pub.close(linger=0)
