"""Dejitter: pyxdf-identical offline, online counters and accuracy, real Muse stamps."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import pyxdf

from drivers.xdf_reader import load_xdf
from fusion.align import align_recording
from fusion.clock import map_timestamps_offline
from fusion.dejitter import Dejitterer, dejitter_offline, stream_can_drop_samples

logging.getLogger("pyxdf").setLevel(logging.ERROR)


def _files(shared_data: Path) -> list[Path]:
    x = shared_data / "xdf"
    return [
        *sorted((x / "muselsl2_muse_imu").glob("*.xdf")),
        x / "xdf_modules_example_files" / "clock_resets.xdf",
        x / "xdf_modules_example_files" / "empty_streams.xdf",
    ]


def test_offline_equals_pyxdf_on_real_files(shared_data: Path) -> None:
    checked = 0
    for path in _files(shared_data):
        rec = load_xdf(path)  # one pyxdf load: its final stamps and the raw ones
        for s in rec.streams:
            mapped, _ = map_timestamps_offline(s.raw_time_stamps, s.clock_times, s.clock_values)
            ts, segs, eff = dejitter_offline(
                mapped, s.nominal_srate, can_drop_samples=s.can_drop_samples
            )
            np.testing.assert_allclose(ts, s.time_stamps, rtol=0, atol=1e-6)
            assert segs == s.segments
            assert eff == pytest.approx(s.effective_srate, rel=1e-6, abs=1e-12)
            checked += len(ts)
    assert checked > 50_000


def _regular(n: int, rate: float, rng: np.random.Generator, jitter: float = 1e-3):
    truth = 100.0 + np.arange(n) / rate
    return truth, truth + rng.normal(0, jitter, n)


def _run_chunks(dj: Dejitterer, stamps: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([dj.process(stamps[i : i + size]) for i in range(0, len(stamps), size)])


def test_online_recovers_true_times_and_counts_anomalies() -> None:
    rng = np.random.default_rng(3)
    rate = 100.0
    truth, st = _regular(6000, rate * (1 + 3e-4), rng)  # device 300 ppm fast
    st[1000:1005] = st[1004]  # a burst: five samples stamped at once
    st[2000] -= 0.015  # one stamp 1.5 periods early: steps backwards
    keep = np.ones(len(st), bool)
    keep[3000:3040] = False  # 40 samples lost in transport
    truth, st = truth[keep], st[keep]
    dj = Dejitterer(rate)
    out = _run_chunks(dj, st, 4)
    c = dj.counters
    assert c.samples == len(st)
    assert c.bursts == 1 and c.burst_samples == 4
    assert c.backwards >= 1
    assert c.gaps == 1 and c.missing == 40
    assert c.resets == 0 and c.breaks == 0 and c.segments == 1
    err = np.abs(out - truth)
    warm = truth > truth[0] + 10
    assert np.percentile(err[warm], 99) < 5e-4  # raw jitter is 1 ms σ
    assert np.percentile(np.abs(st - truth)[warm], 99) > 2e-3
    assert np.all(np.diff(out) > 0)


def test_online_starts_new_segments_on_reset_and_break() -> None:
    rng = np.random.default_rng(4)
    _, st = _regular(3000, 100.0, rng, 5e-4)
    st[1000:] -= 50.0  # stamps jump back 50 s: a clock reset not caught by the mapper
    st[2000:] += 70.0  # and later forward by 20 s net: a break
    dj = Dejitterer(100.0)
    out = _run_chunks(dj, st, 10)
    c = dj.counters
    assert (c.resets, c.breaks, c.segments) == (1, 1, 3)
    # Each segment is dejittered on its own: no sample is pulled across a discontinuity.
    assert np.max(np.abs(out - st)) < 5e-3


def test_disabled_for_cameras_passes_through_and_counts_drops() -> None:
    rng = np.random.default_rng(5)
    _, st = _regular(600, 30.0, rng, 2e-4)
    keep = np.ones(600, bool)
    keep[[100, 101, 300]] = False  # three dropped frames in two gaps
    st = st[keep]
    dj = Dejitterer(30.0, enabled=False)
    out = _run_chunks(dj, st, 1)
    np.testing.assert_array_equal(out, st)
    assert dj.counters.gaps == 2 and dj.counters.missing == 3


def test_can_drop_samples_metadata() -> None:
    info = {"desc": [{"synchronization": [{"can_drop_samples": ["true"]}]}]}
    assert stream_can_drop_samples(info)
    assert not stream_can_drop_samples({"desc": [None]})
    assert not stream_can_drop_samples({})


def test_irregular_and_invalid_stamps() -> None:
    dj = Dejitterer(0.0)  # markers: nothing to dejitter, no break rule
    out = dj.process(np.array([1.0, 5.0, 30.0, np.nan, 31.0]))
    np.testing.assert_array_equal(out[[0, 1, 2, 4]], [1.0, 5.0, 30.0, 31.0])
    assert np.isnan(out[3])
    assert dj.counters.invalid == 1 and dj.counters.breaks == 0
    with pytest.raises(ValueError, match="nominal_srate"):
        Dejitterer(-1.0)


def test_online_on_real_muse_imu_tracks_pyxdf(shared_data: Path) -> None:
    path = shared_data / "xdf/muselsl2_muse_imu/sub-P002_ses-S001_task-Default_run-001_eeg.xdf"
    raw, _ = pyxdf.load_xdf(path, synchronize_clocks=False, dejitter_timestamps=False)
    full, _ = pyxdf.load_xdf(path)
    acc = next(i for i, s in enumerate(raw) if s["info"]["type"] == ["ACC"])
    r, f = raw[acc], full[acc]
    mapped, _ = map_timestamps_offline(r["time_stamps"], r["clock_times"], r["clock_values"])
    assert np.sum(np.diff(mapped) < 0) == 2  # the real stamps step backwards twice
    dj = Dejitterer(52.0)
    out = _run_chunks(dj, mapped, 12)
    assert dj.counters.backwards == 2
    assert dj.counters.segments == 1 and dj.counters.gaps == 0
    assert np.all(np.diff(out) > 0)
    warm = f["time_stamps"] > f["time_stamps"][0] + 5
    err = np.abs(out - f["time_stamps"])[warm]
    assert np.percentile(err, 99) < 2e-3  # causal estimate vs whole-recording fit
    assert dj.effective_srate == pytest.approx(f["info"]["effective_srate"], rel=2e-3)


def _lossy_bursty(seed: int, rate: float = 100.0, dur: float = 40.0):
    """A regular stream as a radio link delivers it: 5 % of samples lost one at a time, 0.5 ms
    jitter, a 50 ppm fast device, and 3 % of packets (1-8 samples) stamped all at once with
    their last sample's arrival time. Returns (true times of the kept samples, chunks)."""
    rng = np.random.default_rng(seed)
    n = int(dur * rate)
    truth = 100.0 + np.arange(n) / (rate * (1 + 50e-6))
    st = truth + rng.normal(0, 5e-4, n)
    keep = rng.random(n) >= 0.05
    bounds = np.cumsum(rng.integers(1, 9, n))
    bounds = np.concatenate(([0], bounds[bounds < n], [n]))
    chunks = []
    for a, b in itertools.pairwise(bounds):
        if rng.random() < 0.03:
            st[a:b] = st[b - 1]
        m = keep[a:b]
        if m.any():
            chunks.append((truth[a:b][m], st[a:b][m]))
    return chunks


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_online_lossy_bursty_stream_stays_on_the_grid(seed: int) -> None:
    """A lost sample is a whole missing period, not a slower rate: after a 10 s warm-up the
    dejittered stamps stay within 2 ms (p99) of the truth, and the losses are counted."""
    chunks = _lossy_bursty(seed)
    dj = Dejitterer(100.0)
    out = np.concatenate([dj.process(st) for _, st in chunks])
    truth = np.concatenate([tr for tr, _ in chunks])
    raw = np.concatenate([st for _, st in chunks])
    warm = truth > truth[0] + 10
    err = np.abs(out - truth)[warm]
    assert np.percentile(err, 99) <= 2e-3
    assert np.median(err) < 2e-4
    assert np.percentile(np.abs(raw - truth)[warm], 99) > 1e-2  # the bursts are real
    lost = 4000 - len(truth)
    c = dj.counters
    assert abs(c.missing - lost) <= 0.1 * lost
    assert c.resets == 0 and c.segments == 1
    assert c.bursts > 10
    assert np.all(np.diff(out) > 0)
    assert dj.effective_srate == pytest.approx(100.0 * (1 + 50e-6), rel=1e-4)


def test_online_packet_jitter_is_not_taken_for_losses() -> None:
    """Samples spaced exactly inside packets whose arrival jitters by a quarter period: single
    losses cannot be told from that jitter, so nothing is re-indexed (no invented gaps)."""
    rng = np.random.default_rng(7)
    rate, n = 52.0, 3000
    truth = 10.0 + np.arange(n) / rate
    st = truth + np.repeat(rng.normal(0, 0.25 / rate, n // 3), 3)
    dj = Dejitterer(rate)
    out = _run_chunks(dj, st, 12)
    assert dj.counters.gaps == 0 and dj.counters.late == 0 and dj.counters.resets == 0
    warm = truth > truth[0] + 10
    assert np.percentile(np.abs(out - truth)[warm], 99) < 2e-3


def _wandering_eeg(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """256 Hz stamps as the Muse EEG's: the device 160 ppm slow, and stamps that wander slowly
    against its clock (-0.22 to +0.22 periods and back over 10 s) with 0.13 ms jitter."""
    rng = np.random.default_rng(seed)
    T, n = 1 / 256.0, 3000
    truth = 20.0 + np.arange(n) * T * (1 + 1.6e-4)
    wander = -0.22 * T * np.cos(2 * np.pi * (truth - truth[0]) / 10.0)
    return truth, truth + wander + rng.normal(0, 1.3e-4, n)


@pytest.mark.parametrize("lost", [0, 20])
def test_online_long_first_chunk_is_not_read_as_a_loss(lost: int) -> None:
    """A clock mapper holds samples until it has offsets, then hands over 1400 at once: they
    are indexed piece by piece, not all against a line fitted on the first ten (whose rate
    error plus the wander grew past half a period and read as a lost sample: 2.5 ms p99).
    A real loss inside that chunk is still found."""
    truth, st = _wandering_eeg(11)
    if lost:
        keep = np.ones(len(st), bool)
        keep[900 : 900 + lost] = False
        truth, st = truth[keep], st[keep]
    dj = Dejitterer(256.0)
    out = np.concatenate(
        [dj.process(st[:1400])] + [dj.process(st[a : a + 132]) for a in range(1400, len(st), 132)]
    )
    c = dj.counters
    assert (c.gaps, c.missing, c.late) == ((1, lost, 0) if lost else (0, 0, 0))
    dev = out - truth
    assert np.percentile(np.abs(dev - np.mean(dev)), 99) < 1.5e-3  # the wander is ±0.86 ms
    assert np.all(np.diff(out) > 0)


def test_online_on_real_muse_eeg_long_first_chunk(shared_data: Path) -> None:
    """`gait-stream sync-check` on P001: the online chain (clock mapping held back 1416 EEG
    samples) against pyxdf's synchronised stamps. Was 3.43 ms p99 with a sample taken for lost."""
    rec = load_xdf(
        shared_data / "xdf/muselsl2_muse_imu/sub-P001_ses-S001_task-Default_run-001_eeg.xdf"
    )
    eeg = next(s for s in rec.streams if s.key.startswith("Muse/EEG"))
    on = align_recording([s.raw() for s in rec.streams], mode="online", arrival=rec.arrival)
    res = on.streams[eeg.key]
    assert res.counters["gaps"] == 0 and res.counters["late"] == 0
    err = np.abs(res.timestamps - eeg.time_stamps)
    assert np.all(np.isfinite(err)) and len(err) == 2820
    assert np.percentile(err, 99) < 2e-3
