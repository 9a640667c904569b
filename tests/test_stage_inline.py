"""Inline hand-off between co-hosted stages (services.actors.stage.Inline): the downstream's
step runs on the upstream's thread, once at a time with its own worker, and its CPU is its own."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import pytest

from services.actors.stage import Inline, Stage, call


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Upstream(Stage):
    stage = "sync"

    def step(self, messages: list[Any]) -> None:
        for msg in messages:
            _burn(0.005)
            call(self.inference, "put", msg)


class Downstream(Stage):
    stage = "inference"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, int]] = []
        self.busy = 0
        self.overlap = False

    def step(self, messages: list[Any]) -> None:
        self.busy += 1
        self.overlap |= self.busy > 1
        for msg in messages:
            _burn(0.02)
            self.seen.append((msg, threading.get_ident()))
        self.busy -= 1


def test_inline_downstream_runs_on_the_upstream_thread_and_keeps_its_cpu() -> None:
    up, down = Upstream(), Downstream()
    up.connect(inference=Inline(down))
    down.idle_s = 0.001  # its own worker keeps stepping (timers) meanwhile
    down.start()
    up.start()
    try:
        for i in range(10):
            up.put(i)
        deadline = time.monotonic() + 10.0
        while len(down.seen) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        up.stop()
        down.stop()
    assert [m for m, _ in down.seen] == list(range(10))
    assert {tid for _, tid in down.seen} == {up._thread.ident}  # on the upstream's thread
    assert not down.overlap  # never two steps of the downstream at once
    # 10 x 20 ms downstream, 10 x 5 ms upstream: each stage is charged its own
    assert 0.18 < down.thread_cpu() < 0.35, down.thread_cpu()
    assert up.thread_cpu() < 0.12, up.thread_cpu()


def test_gc_pauses_leave_out_the_start_up_collection(monkeypatch) -> None:
    """tune_process's own full collection (before freezing what the actor built) is a
    start-up pause; the recorder, which the bench reports as data-path pauses, starts after
    it and sees the collections that follow."""
    import gc
    import sys

    import services.actors.stage as stage

    monkeypatch.setattr(stage, "_tuned", {})
    monkeypatch.setenv("GAIT_STREAM_WAKE", "event")
    switch, threshold = sys.getswitchinterval(), gc.get_threshold()
    rec = stage.tune_process()
    try:
        assert rec.count == [0, 0, 0]
        gc.collect()
        assert rec.count[2] == 1
    finally:
        gc.callbacks.remove(rec)
        gc.unfreeze()  # tune_process froze the test process's objects
        sys.setswitchinterval(switch)
        gc.set_threshold(*threshold)


class Idle(Stage):
    stage = "inference"

    def __init__(self, nice: int | None) -> None:
        super().__init__()
        self.nice = nice
        self.tid: int | None = None

    def step(self, messages: list[Any]) -> None:
        self.tid = threading.get_native_id()


def _worker_niceness(stage: Idle) -> int:
    stage.start()
    try:
        stage.put("go")
        deadline = time.monotonic() + 5.0
        while stage.tid is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stage.tid is not None
        return os.getpriority(os.PRIO_PROCESS, stage.tid)
    finally:
        stage.stop()


def test_a_stage_runs_its_worker_thread_at_its_niceness() -> None:
    """model.nice: the inference stage's worker thread takes its own niceness (Linux: per
    thread), the process and its other threads keep theirs."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base > 16:
        pytest.skip(f"the test process already runs at niceness {base}: no room to raise it")
    assert _worker_niceness(Idle(base + 3)) == base + 3
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    assert _worker_niceness(Idle(None)) == base


def test_a_niceness_it_may_not_take_is_a_warning_not_a_failure(monkeypatch, caplog) -> None:
    """Below 0 needs CAP_SYS_NICE: without it the stage logs why and runs at its niceness."""

    def refuse(which: int, who: int, prio: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with caplog.at_level(logging.WARNING, logger="services.actors.stage"):
        assert _worker_niceness(Idle(-10)) == base
    assert "cannot set its thread's niceness to -10" in caplog.text
