"""ImuInlet, stream selection and unit handling against real liblsl on loopback.

Every test names its streams with a fresh uuid so tests never see each other's outlets.
"""

from __future__ import annotations

import math
import time
import uuid

import numpy as np
import pylsl
import pytest

from drivers import lsl_inlets
from drivers.lsl_inlets import ImuInlet, PairedImuInlet, StreamFormatError, open_all
from drivers.lsl_outlets import make_stream_info
from drivers.selectors import StreamSelector, resolve
from drivers.units import STANDARD_GRAVITY, channel_meta, unit_scale
from fusion.skeleton import IMU_CHANNELS, IMU_UNITS

RATE = 100.0


def _uid() -> str:
    return uuid.uuid4().hex[:12]


def _outlet(
    name: str,
    source_id: str,
    labels: list[str],
    units: list[str],
    *,
    type_: str = "IMU",
    rate: float = RATE,
    bare: bool = False,
) -> pylsl.StreamOutlet:
    """A real IMU outlet; `bare` leaves out the channel metadata entirely."""
    if bare:
        info = pylsl.StreamInfo(name, type_, len(labels), rate, "float32", source_id)
    else:
        info = make_stream_info(name, type_, labels, units, rate, "float32", source_id)
    return pylsl.StreamOutlet(info)


def _resolve_one(**field: str) -> pylsl.StreamInfo:
    ((prop, value),) = field.items()
    found = pylsl.resolve_byprop(prop, value, 1, 5.0)
    assert found, f"stream with {prop}={value!r} not found"
    return found[0]


def _pull_n(inlet: ImuInlet, n: int, timeout: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Pull until n samples arrived; returns (timestamps, data) concatenated."""
    ts, data = [], []
    deadline = time.monotonic() + timeout
    while sum(len(t) for t in ts) < n and time.monotonic() < deadline:
        chunk = inlet.pull()
        if chunk is None:
            time.sleep(0.005)
            continue
        ts.append(chunk.timestamps)
        data.append(chunk.data)
    assert ts, f"no samples from {inlet.name} within {timeout} s"
    return np.concatenate(ts), np.concatenate(data)


def _wait_queued(inlet: ImuInlet, n: int, timeout: float = 3.0) -> None:
    """Wait until liblsl has n samples queued for this inlet (no pulling)."""
    deadline = time.monotonic() + timeout
    while inlet.queued() < n:
        assert time.monotonic() < deadline, "samples never reached the inlet"
        time.sleep(0.005)


# --------------------------------------------------------------------------- units


def test_unit_scale_known_and_unknown_units() -> None:
    assert unit_scale("rad/s", "gyr") == 1.0
    for deg in ("deg/s", "dps", "°/s", "Deg / s"):
        assert unit_scale(deg, "gyr") == pytest.approx(math.pi / 180)
    for ms2 in ("m/s^2", "m/s2", "m/s²"):
        assert unit_scale(ms2, "acc") == 1.0
    assert unit_scale("g", "acc") == pytest.approx(STANDARD_GRAVITY)
    assert unit_scale("mg", "acc") == pytest.approx(STANDARD_GRAVITY / 1000)
    assert unit_scale("", "acc") == 1.0  # contract unit assumed
    with pytest.raises(ValueError, match="furlongs"):
        unit_scale("furlongs/fortnight", "acc")
    with pytest.raises(ValueError, match="deg/s"):
        unit_scale("deg/s", "acc")  # a gyro unit on an accelerometer channel


def test_channel_meta_reads_desc_and_pads_missing() -> None:
    info = make_stream_info("m", "IMU", ["a", "b"], ["g", ""], 10, "float32", "x")
    assert channel_meta(info) == [
        {"label": "a", "unit": "g", "type": "IMU"},
        {"label": "b", "unit": "", "type": "IMU"},
    ]
    bare = pylsl.StreamInfo("m", "IMU", 3, 10, "float32", "y")
    assert channel_meta(bare) == [{"label": "", "unit": "", "type": ""}] * 3


# --------------------------------------------------------------------------- selection


def test_resolve_by_name_type_and_source_id_with_shared_name() -> None:
    u = _uid()
    name = f"Muse-{u}"
    a = _outlet(name, f"acc-{u}", list(IMU_CHANNELS), list(IMU_UNITS), type_=f"ACC-{u}")
    b = _outlet(name, f"gyr-{u}", list(IMU_CHANNELS), list(IMU_UNITS), type_=f"GYRO-{u}")
    by_name = StreamSelector(name=name)
    by_name_type = StreamSelector(name=name, type=f"GYRO-{u}")
    by_sid = StreamSelector(source_id=f"acc-{u}")
    nothing = StreamSelector(name=name, type=f"EEG-{u}")
    got = resolve([by_name, by_name_type, by_sid, nothing], timeout=1.0)
    assert sorted(i.source_id() for i in got[by_name]) == [f"acc-{u}", f"gyr-{u}"]
    assert [i.source_id() for i in got[by_name_type]] == [f"gyr-{u}"]
    assert [i.type() for i in got[by_sid]] == [f"ACC-{u}"]
    assert got[nothing] == []
    assert by_name_type.describe() == f"name='{name}' type='GYRO-{u}'"
    with pytest.raises(ValueError, match="at least one"):
        StreamSelector()
    del a, b


# --------------------------------------------------------------------------- mapping, units


def test_units_from_metadata_converted_and_labels_mapped_in_any_order() -> None:
    u = _uid()
    order = [3, 0, 5, 1, 4, 2]  # acc_x gyr_x acc_z gyr_y acc_y gyr_z
    labels = [IMU_CHANNELS[i] for i in order]
    units = ["g" if lab.startswith("acc") else "deg/s" for lab in labels]
    out = _outlet(f"imu-{u}", f"sid-{u}", labels, units)
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["shank_l"])
    inlet.open()
    contract = np.array([[90.0, -180.0, 45.0, 1.0, 0.0, -0.5]])  # deg/s, g in contract order
    raw = np.repeat(contract[:, order], 5, axis=0).astype(np.float32)
    out.push_chunk(raw, timestamp=(pylsl.local_clock() - np.arange(5)[::-1] / RATE).tolist())
    _, data = _pull_n(inlet, 5)
    assert data.shape == (5, 1, 6)
    expect = np.r_[np.radians(contract[0, :3]), contract[0, 3:] * STANDARD_GRAVITY]
    np.testing.assert_allclose(data[:, 0, :], np.tile(expect, (5, 1)), rtol=1e-6, atol=1e-6)
    assert inlet.notes == []
    assert inlet.stats["samples"] == 5


@pytest.mark.parametrize("direct", [True, False])
def test_pull_with_and_without_the_direct_liblsl_call(
    direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ImuInlet pulls through liblsl on cached buffers (pylsl's `do_pull_chunk`); a pylsl
    without that attribute goes through its public pull_chunk, with the same result."""
    u = _uid()
    out = _outlet(f"imu-{u}", f"sid-{u}", list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["thigh_r"])
    inlet.open()
    monkeypatch.setattr(lsl_inlets, "DIRECT_PULL", direct)
    x = np.arange(7 * 6, dtype=np.float32).reshape(7, 6) / 10
    stamps = pylsl.local_clock() - np.arange(7)[::-1] / RATE
    out.push_chunk(x, timestamp=stamps.tolist())
    t, data = _pull_n(inlet, 7)
    np.testing.assert_allclose(data[:, 0, :], x, rtol=1e-6)
    np.testing.assert_allclose(t - t[0], stamps - stamps[0], atol=1e-6)


def test_multi_sensor_stream_maps_segment_prefixed_labels() -> None:
    u = _uid()
    segs = ["thigh_r", "foot_r"]
    labels = [f"{s}_{c}" for s in reversed(segs) for c in IMU_CHANNELS]  # foot first on wire
    out = _outlet(f"imu-{u}", f"sid-{u}", labels, ["rad/s"] * 3 + ["m/s^2"] * 3 + [""] * 6)
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), segs)
    inlet.open()
    sample = np.arange(12, dtype=np.float32)  # foot channels 0..5, thigh 6..11
    out.push_chunk(sample[None, :], timestamp=[pylsl.local_clock()])
    _, data = _pull_n(inlet, 1)
    np.testing.assert_array_equal(data[0, 0], np.arange(6, 12))  # thigh_r
    np.testing.assert_array_equal(data[0, 1], np.arange(6))  # foot_r
    assert any("no unit" in n for n in inlet.notes)  # the 6 unit-less channels are reported


def test_unlabelled_stream_assumes_contract_order_and_notes_it() -> None:
    u = _uid()
    out = _outlet(f"imu-{u}", f"sid-{u}", list(IMU_CHANNELS), [], bare=True)
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["pelvis"])
    inlet.open()
    out.push_chunk(np.arange(6, dtype=np.float32)[None, :], timestamp=[pylsl.local_clock()])
    _, data = _pull_n(inlet, 1)
    np.testing.assert_array_equal(data[0, 0], np.arange(6))
    assert any("contract order" in n for n in inlet.notes)


def test_wrong_channel_count_raises_naming_stream_and_counts() -> None:
    u = _uid()
    out5 = _outlet(f"short-{u}", f"s5-{u}", ["a"] * 5, [""] * 5)
    with pytest.raises(StreamFormatError, match=rf"short-{u}.*5 channels.*need 6"):
        ImuInlet(_resolve_one(source_id=f"s5-{u}"), ["head"])
    # Without labels the count must be exactly 6 per segment (found on open, with the header).
    out7 = _outlet(f"long-{u}", f"s7-{u}", ["x"] * 7, [], bare=True)
    inlet = ImuInlet(_resolve_one(source_id=f"s7-{u}"), ["head"])
    with pytest.raises(StreamFormatError, match=rf"long-{u}.*7 channels"):
        inlet.open()
    # Labels present but not ours: name the missing ones.
    out6 = _outlet(f"odd-{u}", f"s6-{u}", [f"ch{i}" for i in range(6)], [""] * 6)
    inlet = ImuInlet(_resolve_one(source_id=f"s6-{u}"), ["head"])
    with pytest.raises(StreamFormatError, match=rf"odd-{u}.*gyr_x"):
        inlet.open()
    del out5, out7, out6


def test_unknown_unit_is_a_format_error_naming_stream_and_unit() -> None:
    u = _uid()
    units = ["rad/s"] * 3 + ["m/s^2", "m/s^2", "furlongs"]
    out = _outlet(f"imu-{u}", f"sid-{u}", list(IMU_CHANNELS), units)
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["head"])
    with pytest.raises(StreamFormatError, match=rf"imu-{u}.*furlongs"):
        inlet.open()
    del out


# --------------------------------------------------------------------------- pulling


def test_timestamps_are_local_clock_with_time_correction() -> None:
    u = _uid()
    out = _outlet(f"imu-{u}", f"sid-{u}", list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["head"])
    inlet.open()
    stamps = pylsl.local_clock() - 0.2 + np.arange(20) / RATE
    out.push_chunk(np.zeros((20, 6), np.float32), timestamp=stamps.tolist())
    _wait_queued(inlet, 20)
    chunk = inlet.pull()
    assert chunk is not None and chunk.stream == f"imu-{u}" and chunk.segments == ("head",)
    # Loopback: the offset is tiny but real, and it is exactly what was added.
    assert abs(chunk.clock_offset) < 0.01
    assert chunk.clock_offset == inlet.clock_offset
    np.testing.assert_allclose(chunk.timestamps, stamps + chunk.clock_offset, atol=1e-9)


def test_nonfinite_samples_are_dropped_and_counted() -> None:
    u = _uid()
    out = _outlet(f"imu-{u}", f"sid-{u}", list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["head"])
    inlet.open()
    x = np.tile(np.arange(10, dtype=np.float32)[:, None], (1, 6))
    x[2, 0] = np.nan
    x[5, 4] = np.inf
    x[7, :] = np.nan
    out.push_chunk(x, timestamp=(pylsl.local_clock() + np.arange(10) / RATE).tolist())
    _wait_queued(inlet, 10)
    _, data = _pull_n(inlet, 7)
    np.testing.assert_array_equal(data[:, 0, 0], [0, 1, 3, 4, 6, 8, 9])
    assert inlet.stats["bad_nonfinite"] == 3
    assert inlet.stats["samples"] == 7


def test_backlog_of_slow_consumer_is_trimmed_and_counted() -> None:
    u = _uid()
    out = _outlet(f"imu-{u}", f"sid-{u}", list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["head"], max_backlog_s=0.5)
    inlet.open()
    n = 300  # 3 s at 100 Hz queued while the consumer was busy
    x = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 6))
    out.push_chunk(x, timestamp=(pylsl.local_clock() - 3 + np.arange(n) / RATE).tolist())
    _wait_queued(inlet, n)
    chunk = inlet.pull()
    assert chunk is not None
    assert len(chunk.timestamps) == 50  # 0.5 s at 100 Hz: the newest
    np.testing.assert_array_equal(chunk.data[:, 0, 0], np.arange(n - 50, n))
    assert inlet.stats["backlog_trimmed"] == n - 50


def test_stream_that_disappears_is_counted_and_resumes_with_same_source_id() -> None:
    u = _uid()
    name, sid = f"imu-{u}", f"sid-{u}"
    out = _outlet(name, sid, list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(source_id=sid), ["foot_l"], lost_after_s=0.3)
    inlet.open()
    out.push_chunk(np.ones((5, 6), np.float32), timestamp=[pylsl.local_clock()] * 5)
    _pull_n(inlet, 5)
    del out  # the device goes away
    deadline = time.monotonic() + 3
    while inlet.stats["lost"] == 0 and time.monotonic() < deadline:
        assert inlet.pull() is None
        time.sleep(0.02)
    assert inlet.stats["lost"] == 1 and not inlet.up
    out = _outlet(name, sid, list(IMU_CHANNELS), list(IMU_UNITS))  # and comes back
    deadline = time.monotonic() + 5
    chunk = None
    while chunk is None and time.monotonic() < deadline:
        out.push_chunk(np.full((1, 6), 2, np.float32), timestamp=[pylsl.local_clock()])
        time.sleep(0.02)
        chunk = inlet.pull()
    assert chunk is not None, "stream did not resume"
    assert (chunk.data == 2).all()
    assert inlet.stats["recovered"] == 1 and inlet.stats["lost"] == 1 and inlet.up


def test_stream_without_source_id_is_re_resolved_after_lost_error() -> None:
    u = _uid()
    name = f"nosid-{u}"
    out = _outlet(name, "", list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(name=name), ["foot_r"], lost_after_s=5.0)
    inlet.open()
    del out
    deadline = time.monotonic() + 3
    while inlet.stats["lost"] == 0 and time.monotonic() < deadline:
        inlet.pull()
        time.sleep(0.02)
    assert inlet.stats["lost"] == 1  # from liblsl's LostError, well before lost_after_s
    out = _outlet(name, "", list(IMU_CHANNELS), list(IMU_UNITS))
    deadline = time.monotonic() + 5
    chunk = None
    while chunk is None and time.monotonic() < deadline:
        out.push_chunk(np.full((1, 6), 3, np.float32), timestamp=[pylsl.local_clock()])
        time.sleep(0.02)
        chunk = inlet.pull()
    assert chunk is not None, "stream without source_id was not re-resolved"
    assert (chunk.data == 3).all() and inlet.stats["recovered"] == 1


def test_reconnect_refuses_a_different_stream_under_the_same_identity() -> None:
    u = _uid()
    name = f"nosid-{u}"
    out = _outlet(name, "", list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(name=name), ["head"], lost_after_s=5.0)
    inlet.open()
    del out
    deadline = time.monotonic() + 3
    while inlet.stats["lost"] == 0 and time.monotonic() < deadline:
        inlet.pull()
        time.sleep(0.02)
    impostor = _outlet(name, "", [f"ch{i}" for i in range(6)], [""] * 6)  # unmappable labels
    deadline = time.monotonic() + 5
    while inlet.stats["reconnect_rejected"] == 0 and time.monotonic() < deadline:
        assert inlet.pull() is None
        time.sleep(0.02)
    assert inlet.stats["reconnect_rejected"] == 1 and inlet.stats["recovered"] == 0
    assert inlet.channel_index is not None and inlet.channel_index.tolist() == list(range(6))
    del impostor


def test_open_all_runs_first_time_corrections_in_parallel() -> None:
    u = _uid()
    outs = [_outlet(f"imu{k}-{u}", f"sid{k}-{u}", list(IMU_CHANNELS), [""] * 6) for k in range(3)]
    inlets = [ImuInlet(_resolve_one(source_id=f"sid{k}-{u}"), ["head"]) for k in range(3)]
    t0 = time.monotonic()
    open_all(inlets, timeout=5.0)
    elapsed = time.monotonic() - t0
    assert all(i.up for i in inlets)
    assert elapsed < 1.5, f"3 opens took {elapsed:.2f} s; first time corrections are ~0.6 s each"
    outs[1].push_chunk(np.ones((2, 6), np.float32), timestamp=[pylsl.local_clock()] * 2)
    _, data = _pull_n(inlets[1], 2)
    assert data.shape == (2, 1, 6)
    assert inlets[0].pull() is None


# --------------------------------------------------------------------------- paired ACC + GYRO

MUSE_RATE = 52.0


def _muse_pair(u: str) -> tuple[pylsl.StreamOutlet, pylsl.StreamOutlet, PairedImuInlet]:
    """MuseLSL2's layout: one name and source id, types GYRO (dps) and ACC (g), 3 ch each."""
    name, sid = f"Muse-{u}", f"Muse_{u}"
    gyr = _outlet(name, sid, ["GYRO_X", "GYRO_Y", "GYRO_Z"], ["dps"] * 3, type_="GYRO", rate=52)
    acc = _outlet(name, sid, ["ACC_X", "ACC_Y", "ACC_Z"], ["g"] * 3, type_="ACC", rate=52)
    sel_g, sel_a = StreamSelector(name=name, type="GYRO"), StreamSelector(name=name, type="ACC")
    found = resolve([sel_g, sel_a], timeout=5.0, minimum=2)
    assert len(found[sel_g]) == 1 and len(found[sel_a]) == 1, found
    return gyr, acc, (found[sel_g][0], found[sel_a][0])


def _acc_g(t: np.ndarray) -> np.ndarray:
    """A known, linear-in-time accelerometer signal (g): interpolation must be exact."""
    return np.column_stack([0.1 + 0.5 * t, -0.2 * t, np.full_like(t, 1.0)])


def test_paired_inlet_joins_gyro_and_acc_streams_on_gyro_time() -> None:
    u = _uid()
    gyr_out, acc_out, (gi, ai) = _muse_pair(u)
    inlet = PairedImuInlet(gi, ai, "head", max_backlog_s=10.0, max_wait_s=1.0)
    inlet.open(timeout=5.0)
    assert inlet.up and inlet.segments == ("head",) and inlet.rate == MUSE_RATE
    n = 104
    t0 = pylsl.local_clock() - 3.0
    rel_g = np.arange(n) / MUSE_RATE
    rel_a = rel_g + 0.007  # the ACC stream is stamped 7 ms after the GYRO one
    gyr_dps = np.column_stack([10.0 * np.arange(n), -np.arange(n), np.full(n, 3.0)])
    gyr_out.push_chunk(gyr_dps.astype(np.float32), (t0 + rel_g).tolist())
    acc_out.push_chunk(_acc_g(rel_a[:90]).astype(np.float32), (t0 + rel_a[:90]).tolist())
    _wait_queued(inlet.gyr, n)
    _wait_queued(inlet.acc, 90)
    ts1, d1 = _pull_n(inlet, 89)  # gyro 1..89 lie inside the ACC data so far
    assert inlet.pull() is None  # gyro 90..103 wait for the accelerometer
    acc_out.push_chunk(_acc_g(rel_a[90:]).astype(np.float32), (t0 + rel_a[90:]).tolist())
    ts2, d2 = _pull_n(inlet, 14)
    ts, data = np.concatenate([ts1, ts2]), np.concatenate([d1, d2])
    # gyro sample 0 precedes every ACC sample: dropped and counted, the rest all delivered
    assert inlet.stats["acc_missing"] == 1
    assert inlet.stats["samples"] == n - 1 and len(ts) == n - 1
    assert inlet.stats["gyr_samples"] == n and inlet.stats["acc_samples"] == n
    np.testing.assert_allclose(ts, t0 + rel_g[1:] + inlet.clock_offset, atol=1e-6)
    assert data.shape == (n - 1, 1, 6)
    np.testing.assert_allclose(data[:, 0, :3], np.deg2rad(gyr_dps[1:]), rtol=1e-6)
    # g → m/s², at the gyro times (each stream carries its own loopback time correction)
    want_acc = _acc_g(ts - t0 - inlet.acc.clock_offset) * STANDARD_GRAVITY
    np.testing.assert_allclose(data[:, 0, 3:], want_acc, atol=1e-4)
    inlet.close()
    del gyr_out, acc_out


def test_paired_inlet_counts_gaps_late_and_out_of_order_acc() -> None:
    u = _uid()
    gyr_out, acc_out, (gi, ai) = _muse_pair(u)
    inlet = PairedImuInlet(gi, ai, "pelvis", max_backlog_s=10.0, max_gap_s=0.1, max_wait_s=0.1)
    inlet.open(timeout=5.0)
    t0 = pylsl.local_clock() - 3.0
    rel_g = np.arange(114) / MUSE_RATE  # gyro runs 10 samples past the accelerometer
    rel_a = np.arange(104) / MUSE_RATE + 0.007
    keep = (np.arange(104) < 40) | (np.arange(104) > 50)  # ACC 40..50 lost: a 0.23 s gap
    t_acc = rel_a[keep]
    t_acc = np.insert(t_acc, 60, t_acc[59] - 0.05)  # one ACC stamp stepping backwards
    gyr_out.push_chunk(np.ones((114, 3), np.float32), (t0 + rel_g).tolist())
    acc_out.push_chunk(_acc_g(t_acc).astype(np.float32), (t0 + t_acc).tolist())
    _wait_queued(inlet.gyr, 114)
    _wait_queued(inlet.acc, len(t_acc))
    ts, data = _pull_n(inlet, 91)
    # gyro 0: before any ACC; 40..51: inside the gap; 104..107: ACC never came within
    # max_wait_s of the newest gyro (113); 108..113 still wait.
    assert inlet.stats["acc_missing"] == 1
    assert inlet.stats["acc_gap"] == 12
    assert inlet.stats["acc_late"] == 4
    assert inlet.stats["acc_out_of_order"] == 1
    delivered = np.r_[1:40, 52:104]
    assert len(ts) == len(delivered) == inlet.stats["samples"]
    np.testing.assert_allclose(ts, t0 + rel_g[delivered] + inlet.clock_offset, atol=1e-6)
    want = _acc_g(ts - t0 - inlet.acc.clock_offset) * STANDARD_GRAVITY
    np.testing.assert_allclose(data[:, 0, 3:], want, atol=1e-4)
    assert inlet.pull() is None
    inlet.close()
    del gyr_out, acc_out


def test_pull_with_timeout_wakes_on_the_first_sample_not_the_timeout() -> None:
    """The event-driven ingest blocks in liblsl: it must return as the data lands."""
    import threading

    u = _uid()
    out = _outlet(f"imu-{u}", f"sid-{u}", list(IMU_CHANNELS), list(IMU_UNITS))
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["head"])
    inlet.open()
    assert inlet.can_wait
    t0 = time.monotonic()
    assert inlet.pull(timeout=0.15) is None  # nothing sent: waits the timeout, then None
    waited = time.monotonic() - t0
    assert 0.1 <= waited < 1.0, waited

    def later() -> None:
        time.sleep(0.1)
        now = pylsl.local_clock()
        out.push_chunk(np.ones((3, 6), np.float32), (now + np.arange(3) / RATE).tolist())

    th = threading.Thread(target=later)
    t0 = time.monotonic()
    th.start()
    chunk = inlet.pull(timeout=5.0)
    waited = time.monotonic() - t0
    th.join()
    assert chunk is not None
    assert waited < 2.0, f"pull(timeout=5) took {waited:.2f} s for data sent after 0.1 s"
    # the rest of the chunk is drained with it (or right after), nothing lost
    n = len(chunk.timestamps)
    while n < 3:
        more = inlet.pull(timeout=1.0)
        assert more is not None
        n += len(more.timestamps)
    assert n == 3 and inlet.stats["samples"] == 3


def test_chunks_own_their_arrays_and_non_blocking_pulls_keep_the_gil() -> None:
    """pull() reads liblsl into reused buffers: a chunk must not change when the next pull
    overwrites them. Non-blocking pulls go through a GIL-keeping (PyDLL) liblsl function,
    blocking ones through pylsl's GIL-releasing one."""
    import ctypes

    u = _uid()  # double64: a float64 buffer, where astype(copy=False) would alias it
    info = make_stream_info(
        f"imu-{u}", "IMU", list(IMU_CHANNELS), list(IMU_UNITS), RATE, "double64", f"sid-{u}"
    )
    out = pylsl.StreamOutlet(info)
    inlet = ImuInlet(_resolve_one(source_id=f"sid-{u}"), ["pelvis"])
    inlet.open()
    assert inlet._pull_now._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # keeps the GIL
    assert not inlet._inlet.do_pull_chunk._flags_ & ctypes._FUNCFLAG_PYTHONAPI
    chunks = []
    for k in range(3):
        t = pylsl.local_clock()
        out.push_sample(np.full(6, k + 1, np.float64), t)
        _wait_queued(inlet, 1)
        time.sleep(0.02)  # stamps 20 ms apart: a chunk sharing the buffer would show it
        chunk = inlet.pull(timeout=0.5) if k == 2 else inlet.pull()
        assert chunk is not None and len(chunk.timestamps) == 1
        chunks.append((t, chunk))
    for k, (t, chunk) in enumerate(chunks):
        np.testing.assert_array_equal(chunk.data[0, 0], np.full(6, k + 1.0))
        assert abs(chunk.timestamps[0] - t) < 0.005
    assert inlet.pull() is None
