"""Alignment to the model clock: interpolation, nearest, online StreamSync, whole recordings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from drivers.xdf_reader import load_xdf
from fusion.align import StreamSync, align_imu, align_nearest, align_recording, model_ticks
from fusion.sync_sim import SimStream, default_streams, simulate_live_alignment

MUSE = "xdf/muselsl2_muse_imu/sub-P050_ses-S001_task-Default_run-001_eeg.xdf"
RESETS = "xdf/xdf_modules_example_files/clock_resets.xdf"


def test_model_ticks_share_one_grid() -> None:
    a = model_ticks(10.001, 10.1, 60.0)
    b = model_ticks(10.02, 10.2, 60.0)
    assert a[0] == pytest.approx(601 / 60) and np.allclose(np.diff(a), 1 / 60)
    assert np.isin(np.round(b * 60), np.round(a * 60)).sum() == len(np.intersect1d(a, b))
    assert len(model_ticks(5.0, 4.0)) == 0


def test_align_imu_interpolates_and_masks() -> None:
    t = np.array([0.0, 0.01, 0.02, 0.03, 0.2, 0.21])  # a 170 ms hole
    x = np.column_stack((3 * t + 1, -t))
    ticks = np.array([-0.01, 0.0, 0.005, 0.025, 0.1, 0.205, 0.21, 0.3])
    v, m = align_imu(t[::-1], x[::-1], ticks, max_gap_s=0.05)  # unsorted input is fine
    assert m.tolist() == [False, True, True, True, False, True, True, False]
    np.testing.assert_allclose(v[m], np.column_stack((3 * ticks + 1, -ticks))[m])
    assert np.isnan(v[~m]).all()
    # A NaN sample masks the ticks that would use it.
    x2 = x.copy()
    x2[1, 0] = np.nan
    _, m2 = align_imu(t, x2, np.array([0.005, 0.015, 0.025]), 0.05)
    assert m2.tolist() == [False, False, True]


def test_align_nearest_within_tolerance_for_video_and_strings() -> None:
    t = np.array([0.0, 0.033, 0.1])  # 30 fps, the frame at 0.066 dropped
    ticks = np.arange(7) / 60
    v, m = align_nearest(t, np.arange(3.0)[:, None], ticks, tol_s=0.0175)
    assert m.tolist() == [True, True, True, True, False, True, True]
    assert v[:, 0][m].tolist() == [0, 1, 1, 1, 2, 2]
    assert np.isnan(v[4, 0])
    v, m = align_nearest(np.array([0.0, 0.5]), np.array([[1.0], [2.0]]), np.array([0.25]), 0.3)
    assert m[0] and v[0, 0] == 1.0  # a tie goes to the earlier sample
    s, ms = align_nearest(np.array([1.0, 2.0]), [["go"], ["stop"]], np.array([1.001, 1.5]), 0.008)
    assert ms.tolist() == [True, False] and s[0, 0] == "go" and s[1, 0] is None


def test_stream_sync_holds_samples_until_their_clock_is_known() -> None:
    sync = StreamSync(100.0)
    t, _ = sync.push(np.array([10.0, 10.01]), np.zeros((2, 1)))
    assert len(t) == 0 and sync.pending == 2  # no clock offset measured yet
    t, _ = sync.add_offset(10.0, 2.5)
    np.testing.assert_allclose(t, [12.5, 12.51], atol=1e-9)
    t, _ = sync.push(np.array([10.02]), np.ones((1, 1)))
    assert t[0] == pytest.approx(12.52)
    assert sync.watermark == pytest.approx(12.52)
    v, m = sync.interpolate(np.array([12.505]), 0.025)
    assert m[0] and v[0, 0] == 0.0
    assert sync.counters["clock_measurements"] == 1


def test_offline_alignment_reproduces_pyxdf(shared_data: Path) -> None:
    rec = load_xdf(shared_data / MUSE)
    al = align_recording([s.raw() for s in rec.streams], rate=60.0)
    assert len({s.name for s in rec.streams}) == 1  # four streams, one name
    assert set(al.streams) == {s.key for s in rec.streams if len(s)}
    for s in rec.streams:
        a = al.streams[s.key]
        np.testing.assert_allclose(a.timestamps, s.time_stamps, rtol=0, atol=1e-9)
        assert a.method == "interp"
        inside = (al.ticks > s.time_stamps[0]) & (al.ticks < s.time_stamps[-1])
        assert a.mask[inside].mean() > 0.97 and not a.mask[~inside].any()
        want = np.interp(al.ticks[a.mask], s.time_stamps, s.time_series[:, 0])
        np.testing.assert_allclose(a.values[a.mask, 0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.diff(al.ticks), 1 / 60)


def test_online_alignment_in_file_order_handles_the_clock_reset(shared_data: Path) -> None:
    rec = load_xdf(shared_data / RESETS)
    assert rec.arrival is not None
    raw = [s.raw() for s in rec.streams]
    online = align_recording(raw, mode="online", arrival=rec.arrival)
    plain = align_recording(raw, dejitter_timestamps=False)  # clock-mapped, jitter kept
    for s in rec.streams:
        a = online.streams[s.key]
        c = a.counters
        assert c["clock_resets"] == 1 and c["unmapped_dropped"] == 0 and c["pending"] == 0
        assert np.isfinite(a.timestamps).all()
        assert np.all(np.diff(a.timestamps) > 0)  # one local timeline across the reset
    eeg = next(s for s in rec.streams if s.type == "EEG")
    a = online.streams[eeg.key]
    assert a.counters["breaks"] == 1  # the 4.5 min without data while the sender rebooted
    # This "100 Hz" EEG really wanders 91.6-93.5 Hz; pyxdf's one line per segment sits up to
    # ~0.27 s from the data, the online fit follows the data.
    jitter = plain.streams[eeg.key].timestamps
    pyxdf_off = np.percentile(np.abs(jitter - eeg.time_stamps), 99)
    assert pyxdf_off > 0.2
    assert np.percentile(np.abs(a.timestamps - jitter), 99) < 0.6 * pyxdf_off
    # Markers (irregular) are only clock-mapped: they agree with pyxdf.
    mk = next(s for s in rec.streams if s.type == "Markers")
    assert np.max(np.abs(online.streams[mk.key].timestamps - mk.time_stamps)) < 1e-3
    assert online.streams[mk.key].method == "nearest"


def test_online_alignment_agrees_with_pyxdf_on_muse(shared_data: Path) -> None:
    rec = load_xdf(shared_data / MUSE)
    online = align_recording([s.raw() for s in rec.streams], mode="online", arrival=rec.arrival)
    for s in rec.streams:
        err = np.abs(online.streams[s.key].timestamps - s.time_stamps)
        assert np.percentile(err, 99) < 2e-3, s.key


def test_simulated_live_alignment_meets_target() -> None:
    streams = [
        replace(s, reset_at=14.0) if s.reset_at is not None else s for s in default_streams()
    ]
    res = simulate_live_alignment(seconds=22.0, warmup_s=10.0, seed=7, streams=streams)
    imu = [r for r in res.rows if r["kind"] == "imu"]
    assert len(imu) == 4 and all(r["samples"] > 500 for r in imu)
    assert res.worst_p99_ms("imu") < 2.0
    assert res.worst_p99_ms("camera") < 2.0
    reset = next(r for r in res.rows if r["stream"] == "imu_foot_r")
    assert reset["clock_resets"] == 1 and reset["unmapped_dropped"] == 0


def test_simulation_can_fail() -> None:
    # An IMU wrongly declared as able to drop samples is not dejittered: its 4 ms jitter shows.
    bad = SimStream("imu_undejittered", 100, camera=True, jitter_s=4e-3, clock_offset=3.0)
    res = simulate_live_alignment(seconds=15.0, warmup_s=5.0, seed=1, streams=[bad])
    assert res.rows[0]["stamp_p99_ms"] > 5.0
