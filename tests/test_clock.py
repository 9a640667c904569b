"""Clock-offset mapping: robust fit, reset detection, online mapper, against pyxdf on real files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import pyxdf

from fusion.clock import (
    ClockMapper,
    detect_clock_resets,
    huber_line_fit,
    map_timestamps_offline,
)

logging.getLogger("pyxdf").setLevel(logging.ERROR)


def _xdf(shared_data: Path, name: str) -> Path:
    sub = "muselsl2_muse_imu" if name.startswith("sub-") else "xdf_modules_example_files"
    return shared_data / "xdf" / sub / name


@pytest.fixture(scope="module")
def clock_resets(shared_data: Path) -> tuple[list[dict], list[dict]]:
    path = _xdf(shared_data, "clock_resets.xdf")
    raw, _ = pyxdf.load_xdf(path, synchronize_clocks=False, dejitter_timestamps=False)
    synced, _ = pyxdf.load_xdf(path, dejitter_timestamps=False)
    return raw, synced


def test_huber_fit_ignores_outliers_and_recovers_a_drifting_line() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(0.0, 600.0, 5.0) + 1e5
    true = -3.2 + 40e-6 * (t - 1e5)
    y = true + rng.normal(0, 2e-5, len(t))
    y[::10] += 5e-3  # 10 % of measurements delayed by network
    a, b = huber_line_fit(t, y)
    assert np.max(np.abs(a + b * t - true)) < 3e-5
    # Least squares would be dragged by the outliers by ~0.5 ms: the loss matters.
    ls = np.polyfit(t, y, 1)
    assert np.max(np.abs(np.polyval(ls, t) - true)) > 3e-4
    assert huber_line_fit(np.array([5.0]), np.array([0.25])) == (0.25, 0.0)


def test_offline_mapping_equals_pyxdf_on_clock_resets(clock_resets) -> None:
    raw, synced = clock_resets
    for r, s in zip(raw, synced, strict=True):
        mapped, segs = map_timestamps_offline(r["time_stamps"], r["clock_times"], r["clock_values"])
        assert np.max(np.abs(mapped - s["time_stamps"])) < 1e-6, s["info"]["name"]
        assert segs == s["info"]["clock_segments"]
        assert len(segs) == 2  # the reset splits the recording


def test_reset_detected_at_the_real_reset(clock_resets) -> None:
    raw, _ = clock_resets
    for r in raw:
        times = np.asarray(r["clock_times"])
        ranges = detect_clock_resets(times, r["clock_values"])
        assert len(ranges) == 2
        (a0, a1), (b0, b1) = ranges
        assert (a0, b1) == (0, len(times) - 1) and b0 == a1 + 1
        assert times[b0] < times[a1]  # the sender's clock went backwards: rebooted


def test_online_mapper_detects_the_reset_and_maps_like_offline(clock_resets) -> None:
    raw, synced = clock_resets
    for r, s in zip(raw, synced, strict=True):
        m = ClockMapper()
        resets = [m.add(t, v) for t, v in zip(r["clock_times"], r["clock_values"], strict=True)]
        assert sum(resets) == 1 and m.counters.resets == 1
        assert m.counters.measurements == len(r["clock_times"])
        local, ok = m.map(np.asarray(r["time_stamps"]))
        assert ok.all()
        # Windowed fit after all measurements vs whole-recording fit: well under a millisecond.
        assert np.max(np.abs(local - s["time_stamps"])) < 1e-3
        assert np.all(np.diff(local) > -1e-3)  # both eras land in one increasing local timeline


def test_online_mapper_holds_samples_of_an_unmeasured_era() -> None:
    m = ClockMapper()
    for k in range(10):
        m.add(1000.0 + 5 * k, -500.0)
    _, ok = m.map(np.array([1040.0, 3.0]))
    assert ok.tolist() == [True, False]  # 3.0 s: a rebooted sender, no offset measured yet
    assert m.add(5.0, 1545.0) is True
    local, ok = m.map(np.array([1040.0, 3.0]))
    assert ok.all()
    np.testing.assert_allclose(local, [540.0, 1548.0])


def test_online_mapper_counts_bad_and_outlying_measurements() -> None:
    m = ClockMapper()
    assert not m.ready
    m.add(0.0, float("inf"))  # LabRecorder writes inf on a time-correction timeout
    assert m.counters.rejected == 1 and not m.ready
    for k in range(20):
        m.add(5.0 * k, 0.010 + (0.004 if k == 12 else 0.0))
    assert m.counters.outliers == 1
    assert m.counters.resets == 0
    assert abs(m.offset_at(50.0) - 0.010) < 1e-5
