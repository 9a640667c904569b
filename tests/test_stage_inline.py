"""Inline hand-off between co-hosted stages (services.actors.stage.Inline): the downstream's
step runs on the upstream's thread, once at a time with its own worker, and its CPU is its own."""

from __future__ import annotations

import threading
import time
from typing import Any

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
