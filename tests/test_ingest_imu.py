"""The IMU ingest stage's worker: event-driven (blocks in liblsl) instead of a polling timer.

Real LSL on loopback, no Ray (`Local` stands in for the sync stage's handle).
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import numpy as np
import pylsl
import pytest

from drivers.lsl_outlets import make_stream_info
from fusion.skeleton import IMU_CHANNELS, IMU_UNITS, SEGMENTS
from services.actors.ingest_imu import ImuIngest
from services.actors.stage import Local
from services.config import ImuStreamConfig, SubjectConfig

TAG = f"ingest{os.getpid()}"


class Sink:
    def __init__(self) -> None:
        self.msgs: list = []
        self.at: list[float] = []
        self.lock = threading.Lock()

    def put(self, msg: object) -> None:
        with self.lock:  # the test reads without the lock: the time first, then the message
            self.at.append(pylsl.local_clock())
            self.msgs.append(msg)


class CountingIngest(ImuIngest):
    """Counts worker steps: a polling worker steps every 2 ms, an event-driven one on data."""

    steps = 0

    def step(self, messages: list) -> None:
        self.steps += 1
        super().step(messages)


def imu_outlets(names: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One 100 Hz IMU outlet per segment (name = source id), and the subject's stream table."""
    outlets = {
        seg: pylsl.StreamOutlet(
            make_stream_info(n, "IMU", IMU_CHANNELS, IMU_UNITS, 100.0, "float32", n),
            chunk_size=0,
        )
        for seg, n in names.items()
    }
    table: dict[str, Any] = {seg: None for seg in SEGMENTS}
    for seg, n in names.items():
        table[seg] = ImuStreamConfig(name=n, source_id=n)
    return outlets, table


def _setup(monkeypatch: pytest.MonkeyPatch, wake: str, tag: str):
    """Two live streams and one that never appears (its search keeps running meanwhile)."""
    monkeypatch.setenv("GAIT_STREAM_WAKE", wake)
    names = {"thigh_l": f"{TAG}-{tag}-thigh", "shank_l": f"{TAG}-{tag}-shank"}
    absent = f"{TAG}-{tag}-absent"
    outlets, table = imu_outlets(names)
    table["head"] = ImuStreamConfig(name=absent, source_id=absent)
    sink = Sink()
    ing = CountingIngest(
        [SubjectConfig(id="s0", imu=table, cameras=[])],
        Local(sink),
        None,
        resolve_timeout_s=0.3,
        retry_s=0.1,  # looked for again and again while the test runs
        tick_rate=0.0,  # no holding back of rounds that complete no tick
        hold_s=0.05,  # a round waits this long for its late packets (4 ms live: load-proof here)
        flush_s=0.25,
    )
    status = ing.open()
    assert sorted(status["up"]) == sorted(names.values())
    assert status["missing"] == {absent: "not_found"}
    return ing, sink, outlets


def _push_round(outlets: dict, t: float) -> None:
    for out in outlets.values():
        out.push_sample(np.ones(6, np.float32), t)


@pytest.mark.parametrize("wake", ["event", "timer"])
def test_worker_waits_on_data_not_on_a_timer(monkeypatch: pytest.MonkeyPatch, wake: str) -> None:
    ing, sink, outlets = _setup(monkeypatch, wake, wake)
    try:
        ing.start()
        time.sleep(0.5)  # silent streams
        idle_steps = ing.steps
        if wake == "event":
            assert ing.blocking
            assert idle_steps < 60, f"{idle_steps} steps in 0.5 s without data: polling"
        else:
            assert not ing.blocking and idle_steps > 100  # the former 2 ms poll, for contrast
        # rounds sent as their last packet lands: every round arrives, promptly
        lags = []
        for k in range(10):
            t = pylsl.local_clock()
            n_before = sum(len(p.t) for m in sink.msgs for p in m.parts)
            _push_round(outlets, t)
            deadline = time.monotonic() + 2.0
            while sum(len(p.t) for m in sink.msgs for p in m.parts) < n_before + 2:
                assert time.monotonic() < deadline, f"round {k} never reached the sync stage"
                time.sleep(0.001)
            lags.append(sink.at[-1] - t)
            time.sleep(0.01)
    finally:
        ing.stop()
    streams = {p.stream for m in sink.msgs for p in m.parts}
    assert len(streams) == 2
    assert np.median(lags) < 0.2, lags
    if wake == "event":
        # both packets of a live round travel together (one message to the sync stage)
        late = [m for m in sink.msgs[-5:] if len(m.parts) != 2]
        assert not late, [[p.stream for p in m.parts] for m in sink.msgs[-5:]]


def test_stop_ends_a_blocked_worker_promptly(monkeypatch: pytest.MonkeyPatch) -> None:
    ing, _sink, _outlets = _setup(monkeypatch, "event", "stop")
    ing.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    ing.stop()
    assert time.monotonic() - t0 < 1.0
    assert ing._thread is not None and not ing._thread.is_alive()


def _tick_ingest(
    monkeypatch: pytest.MonkeyPatch, tag: str, hold_s: float, causal: bool
) -> tuple[ImuIngest, Sink, dict[str, Any]]:
    """An event-driven ingest on two 100 Hz streams (thigh_r, shank_r) at tick rate 60."""
    monkeypatch.setenv("GAIT_STREAM_WAKE", "event")
    names = {seg: f"{TAG}-{tag}-{seg}" for seg in ("thigh_r", "shank_r")}
    outlets, table = imu_outlets(names)
    sink = Sink()
    ing = ImuIngest(
        [SubjectConfig(id="s0", imu=table, cameras=[])],
        Local(sink),
        None,
        resolve_timeout_s=2.0,
        tick_rate=60.0,
        hold_s=hold_s,
        causal=causal,
    )
    assert sorted(ing.open()["up"]) == sorted(names.values())
    return ing, sink, outlets


def _round_at(ing: ImuIngest, sink: Sink, outlets: dict[str, Any], t: float) -> int:
    """Push one sample per stream stamped t, poll once when all arrived; messages sent."""
    inlets = [s.inlet for s in ing.sources]
    queued = [i.queued() for i in inlets]
    _push_round(outlets, t)
    deadline = time.monotonic() + 2.0
    while any(i.queued() <= q for i, q in zip(inlets, queued, strict=True)):
        assert time.monotonic() < deadline, "samples never reached the inlets"
        time.sleep(0.001)
    ing.step([])
    return len(sink.msgs)


@pytest.mark.parametrize("causal", [False, True])
def test_causal_rule_sends_a_round_that_completes_a_tick_within_one_period(
    monkeypatch: pytest.MonkeyPatch, causal: bool
) -> None:
    """tick_rate 60, streams at 100 Hz. A round whose newest samples lie 5 ms before tick k+1
    completes it only under the causal rule (newest + 1/rate > tick): then it goes out at
    once; otherwise it is held (no new tick), and goes out when the defer time runs out."""
    ing, sink, outlets = _tick_ingest(monkeypatch, f"causal{int(causal)}", 0.05, causal)
    assert ing.causal is causal
    try:
        k = math.ceil(pylsl.local_clock() * 60.0) + 1
        assert _round_at(ing, sink, outlets, k / 60.0 + 0.001) == 1  # the first always goes
        # 5 ms short of tick k+1, 5 ms within a period
        n = _round_at(ing, sink, outlets, (k + 1) / 60.0 - 0.005)
        assert n == (2 if causal else 1)
        if not causal:  # held, not lost: it goes out once the defer time has passed
            time.sleep(max(ing.hold_s, ing.max_defer_s) + 0.01)
            ing.step([])
            assert len(sink.msgs) == 2
        t_sent = [float(p.t[-1]) for p in sink.msgs[-1].parts]
        np.testing.assert_allclose(t_sent, (k + 1) / 60.0 - 0.005, atol=1e-9)
    finally:
        ing.stop()


def test_a_round_that_completes_no_tick_is_held_until_a_round_that_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Causal, tick_rate 60: a complete round that lets no new tick out rides along with the
    next one; the hold time running out with nothing new neither sends it nor wakes the
    worker; with nothing more coming it goes out when the defer time is up."""
    ing, sink, outlets = _tick_ingest(monkeypatch, "ride", 0.02, True)
    ing.max_defer_s = 5.0
    try:
        k = math.ceil(pylsl.local_clock() * 60.0) + 1
        assert _round_at(ing, sink, outlets, k / 60.0 + 0.001) == 1
        # completes tick k only, already sent: held
        assert _round_at(ing, sink, outlets, k / 60.0 + 0.003) == 1
        active = [s for s in ing.sources if s.inlet is not None]
        # no wake-up at the hold time for nothing: the next one is a packet or the defer
        ing.flush(force=True)  # (the worker flushes after every step; its timer is not due)
        assert ing._next_wait(active, pylsl.local_clock())[1] > ing.hold_s
        time.sleep(ing.hold_s + 0.01)
        ing.step([])
        assert len(sink.msgs) == 1  # nothing new arrived: still held
        # completes tick k+1: both rounds go
        assert _round_at(ing, sink, outlets, (k + 1) / 60.0 - 0.005) == 2
        assert len(sink.msgs[-1].parts) == 4
        # held again, and nothing more comes: it goes out when the defer time is up
        assert _round_at(ing, sink, outlets, (k + 1) / 60.0 - 0.003) == 2
        ing.max_defer_s = 0.03
        time.sleep(0.04)
        ing.step([])
        assert len(sink.msgs) == 3
    finally:
        ing.stop()


def test_a_round_missing_a_lost_packet_goes_out_when_the_hold_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Causal, tick_rate 60: the shank's packet of a round is lost. Once the hold runs out the
    thigh's packet, which completes a new tick, goes out without it (the sync's peer wait
    decides about the shank); it used to wait for the next round or the defer time."""
    ing, sink, outlets = _tick_ingest(monkeypatch, "lost", 0.02, True)
    ing.max_defer_s = 5.0  # not what sends it
    try:
        k = math.ceil(pylsl.local_clock() * 60.0) + 1
        assert _round_at(ing, sink, outlets, k / 60.0 + 0.001) == 1
        thigh = next(s for s in ing.sources if "thigh" in s.label)
        queued = thigh.inlet.queued()
        outlets["thigh_r"].push_sample(np.ones(6, np.float32), (k + 1) / 60.0 - 0.005)
        deadline = time.monotonic() + 2.0
        while thigh.inlet.queued() <= queued:
            assert time.monotonic() < deadline, "the sample never reached the inlet"
            time.sleep(0.001)
        ing.step([])
        assert len(sink.msgs) == 1  # the shank's packet may still come: held
        time.sleep(ing.hold_s + 0.01)
        ing.step([])
        assert len(sink.msgs) == 2
        assert [p.stream for p in sink.msgs[-1].parts] == [thigh.label]
    finally:
        ing.stop()
