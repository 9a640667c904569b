"""The bench's verdicts (services/commands/bench.py): tick gaps and the per-minute hold."""

from __future__ import annotations

import numpy as np
import pytest

from services.commands.bench import _arrival_gap_ms, _hold_report, _tick_gaps

RATE = 60.0


def _ticks(k0: int, n: int) -> np.ndarray:
    return (k0 + np.arange(n)) / RATE


def test_tick_gaps_count_missing_and_duplicates() -> None:
    t = _ticks(60_000, 120)
    assert _tick_gaps(t, RATE) == (0, 0, pytest.approx(1e3 / RATE, abs=0.01))
    holed = np.delete(t, [10, 11, 50])
    missing, dup, gap = _tick_gaps(holed, RATE)
    assert (missing, dup) == (3, 0)
    assert gap == pytest.approx(3e3 / RATE, abs=0.01)
    assert _tick_gaps(np.concatenate([t, t[:5] + 1e-6]), RATE)[:2] == (0, 5)
    assert _tick_gaps(np.zeros(0), RATE)[:2] == (0, 0)


def test_arrival_gap() -> None:
    assert _arrival_gap_ms(np.array([1.0, 1.01, 1.01, 1.05])) == pytest.approx(40.0)
    assert np.isnan(_arrival_gap_ms(np.array([1.0])))
    assert np.isnan(_arrival_gap_ms(np.array([2.0, 2.0, 2.0])))  # one pull only


def test_hold_report_judges_each_minute() -> None:
    """Three minutes: the second loses ticks, the third drops a message in a stage."""
    n = int(3 * 60 * RATE)
    t = _ticks(60_000, n)
    arrival = t + 0.01
    t0 = float(arrival[0])
    keep = np.ones(n, bool)
    keep[int(90 * RATE) : int(90 * RATE) + 4] = False  # 4 ticks lost at 1:30
    sq = np.full((keep.sum(), 2), 4.0)  # 2 deg on both angles, 3 deg in the last minute
    sq[t[keep] >= t[0] + 120.0] = 9.0
    sq[0, 1] = np.nan  # a tick without truth is left out
    feeds = [(t[keep], arrival[keep], sq)]
    marks = [
        (t0, {"dropped": {"sync|queue_full": 0.0}}),
        (t0 + 60.0, {"dropped": {"sync|queue_full": 0.0}}),
        (t0 + 120.0, {"dropped": {"sync|queue_full": 0.0}}),
        (t0 + 180.0, {"dropped": {"sync|queue_full": 2.0}}),
    ]
    rep = _hold_report(feeds, marks, RATE, lookahead_s=0.0)
    m1, m2, m3 = rep["minutes"]
    assert m1["held"] and m1["missing_ticks"] == 0 and m1["dropped"] == 0
    assert m1["rate_hz"] == pytest.approx(RATE, abs=0.1)
    assert m1["p99_ms"] == pytest.approx(10.0, abs=0.01)
    assert not m2["held"] and m2["missing_ticks"] == 4
    assert m2["max_output_gap_ms"] == pytest.approx(5e3 / RATE, abs=0.1)
    assert not m3["held"] and m3["dropped"] == 2 and m3["missing_ticks"] == 0
    assert rep["minutes_held"] == 1
    assert [m["rmse_lower_limb_deg"] for m in rep["minutes"]] == pytest.approx([2.0, 2.0, 3.0])
    no_truth = _hold_report([(t, arrival, None)], marks[:2], RATE, lookahead_s=0.0)
    assert np.isnan(no_truth["minutes"][0]["rmse_lower_limb_deg"])


def test_moved_counters_by_label() -> None:
    from services.commands.bench import _moved

    a = {"masked": {"s0|imu": 3.0, "s0|video": 10.0}}
    b = {"masked": {"s0|imu": 3.0, "s0|video": 25.0, "s1|video": 2.0}}
    assert _moved(a, b, "masked") == {"s0|video": 15, "s1|video": 2}
    assert _moved(a, b, "dropped") == {}


def test_report_names_the_estimator_its_backend_and_model_time(
    capsys: pytest.CaptureFixture,
) -> None:
    """The text report says which estimator ran (and on what) and its model time per call,
    and the JSON report is the result itself."""
    import json

    from services.commands.bench import _report

    res = {
        "subjects": 1,
        "seconds": 30.0,
        "estimator": "fusionnet",
        "estimator_info": {"backend": "onnx", "device": "cpu", "threads": 1},
        "estimator_ms": {"fusionnet": {"p50": 2.5, "p99": 7.25}},
        "estimator_ms_per_tick": {"fusionnet": {"p50": 2.5, "p99": 3.5}},
        "latency_ms": {"p50": 20.0, "p99": 90.0, "max": 120.0},
        "lookahead_ms": 0.0,
        "stages_ms": {},
        "rate_hz": 60.0,
        "missing_ticks": 0,
        "dropped": 0,
        "late": 0,
        "masked": 0,
        "max_output_gap_ms": 40.0,
        "cpu": {"machine_cores_busy": 1.2, "machine_cores": 2, "process_cores": {}},
        "load_average": [1.0, 1.0, 1.0],
        "hold": {"minutes": []},
        "held": True,
        "rmse_deg": {},
    }
    _report(res, as_json=False)
    out = capsys.readouterr().out
    assert "estimator fusionnet (onnx)" in out
    assert "model time per call: p50 2.50 ms, p99 7.25 ms; per tick p50 2.50 ms, p99 3.50" in out
    assert "gyro refinement" not in out
    _report({**res, "estimator_info": {"backend": "onnx", "gyro_refine": {"tau_s": 0.5}}}, False)
    assert "estimator fusionnet (onnx) with the gyro refinement" in capsys.readouterr().out
    _report({**res, "estimator": "classical", "estimator_info": {"backend": None}}, False)
    out = capsys.readouterr().out
    assert "estimator classical\n" in out and "model time" not in out
    _report(res, as_json=True)
    assert json.loads(capsys.readouterr().out)["estimator"] == "fusionnet"


def test_observer_arrays_keep_rows_matched_while_a_feed_is_appended() -> None:
    """The placement run reads a feed while its thread still appends (t, then x, then
    arrival): a read between those appends must not pair 905 tick times with 853 arrival
    times (it failed a CI run with an IndexError)."""
    from services.commands.bench import Observer, _Feed

    feed = _Feed("s0", None)  # type: ignore[arg-type]  (no inlet: only the lists are read)
    for k in range(3):
        feed.t.append(np.arange(k * 4, k * 4 + 4, dtype=float))
        feed.x.append(np.zeros((4, 2)))
        feed.arrival.append(np.full(4, 100.0 + k))
    feed.t.append(np.arange(12, 64, dtype=float))  # the thread is between its appends
    t, x, arrival = Observer.arrays(feed)
    assert len(t) == len(x) == len(arrival) == 12
    np.testing.assert_array_equal(t, np.arange(12.0))
