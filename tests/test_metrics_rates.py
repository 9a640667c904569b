"""The metrics actor's rates (snapshot()["rates"]), what the live view prints.

Stages report every flush_ms (500 ms). The view used to difference the totals once a second,
so a steady 60 Hz output read 30 or 90 Hz whenever a second held one or three reports."""

from __future__ import annotations

import io
import time

import pytest

from services.actors.metrics import RATE_WINDOW_S, Metrics, MetricsBuffer
from services.commands.start import LiveView

OUT = ("output", ("s0", "angles"))


def _report(m: Metrics, sender: str, t: float, n: float) -> None:
    m.report({"inc": {OUT: n}, "sender": sender, "t": t})


def test_rate_is_exact_between_reports_whatever_their_phase() -> None:
    m = Metrics(port=None)
    for k in range(5):  # 30 ticks per 0.5 s report: 60 Hz
        _report(m, "publish", 100.0 + 0.5 * k, 30)
    assert m.snapshot()["rates"]["output"]["s0|angles"] == pytest.approx(60.0)


def test_senders_on_different_clocks_add_up() -> None:
    m = Metrics(port=None)
    for k in range(4):  # two inference shards, clocks 1000 s apart, flushes out of phase
        _report(m, "a", 1000.0 + 0.5 * k, 30)
        _report(m, "b", 0.25 + 0.5 * k, 15)
    assert m.snapshot()["rates"]["output"]["s0|angles"] == pytest.approx(90.0)


def test_a_source_that_stops_reads_zero() -> None:
    buf = MetricsBuffer()
    buf.inc(*OUT, 30)
    first = buf.take()
    again = buf.take()  # nothing counted since: still sent, at 0, so the rate can fall
    assert first is not None and again is not None
    assert first["inc"] == {OUT: 30} and again["inc"] == {OUT: 0.0}
    m = Metrics(port=None)
    for k in range(3):
        _report(m, "publish", 0.5 * k, 30)
    for k in range(3, 6):
        _report(m, "publish", 0.5 * k, 0)
    assert m.snapshot()["rates"]["output"]["s0|angles"] == pytest.approx(
        24.0
    )  # 60 after the first report, in 2.5 s
    # a sender silent for a whole window (its actor died) reads 0, not its last rate
    assert m._rates(time.monotonic() + RATE_WINDOW_S + 0.1)["output"]["s0|angles"] == 0.0


class _Pipe:
    def __init__(self) -> None:
        self.info = {"subjects": ["s0"]}


def test_live_view_prints_the_snapshots_rates_and_masked_ticks_by_modality() -> None:
    out = io.StringIO()
    snap = {
        "totals": {"output": {"s0|angles": 1234.0}, "masked": {"s0|imu": 7.0, "s0|video": 2.0}},
        "rates": {
            "output": {"s0|angles": 60.0},
            "input": {"s0|sim-s0-head|imu": 100.0, "s0|s0-cam0|keypoints": 30.0},
        },
    }
    LiveView(out).update(_Pipe(), snap)
    line = out.getvalue()
    assert "in imu    100/s kp   30/s | out  60.0 Hz x1" in line, line
    assert "masked imu 7 video 2 late 0" in line, line
