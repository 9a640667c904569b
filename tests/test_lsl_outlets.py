"""The output LSL streams, read back by real pylsl inlets on loopback."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pylsl
import pytest
from lsl_helpers import open_inlet

from drivers.lsl_outlets import AnglesOutlet, EventsOutlet, GaitOutlet, make_stream_info
from drivers.units import channel_meta
from fusion.skeleton import ANGLES, GAIT_EVENTS, GAIT_PARAMS


def _uid() -> str:
    return uuid.uuid4().hex[:12]


def _pull(inlet: pylsl.StreamInlet, n: int, timeout: float = 3.0) -> tuple[list, list]:
    rows, stamps = [], []
    deadline = time.monotonic() + timeout
    while len(stamps) < n and time.monotonic() < deadline:
        x, t = inlet.pull_chunk(timeout=0.05)
        rows += x
        stamps += t
    assert len(stamps) == n, f"got {len(stamps)} of {n} samples"
    return rows, stamps


def test_make_stream_info_writes_channels_and_manufacturer() -> None:
    info = make_stream_info(
        "n", "T", ["a", "b"], ["deg", "m"], 0, "float32", "sid", types=["x", "y"], subject="s1"
    )
    assert channel_meta(info) == [
        {"label": "a", "unit": "deg", "type": "x"},
        {"label": "b", "unit": "m", "type": "y"},
    ]
    assert info.desc().child("acquisition").child_value("manufacturer") == "gait-stream"
    assert info.desc().child_value("subject") == "s1"
    with pytest.raises(ValueError, match="2 channels but 1 units"):
        make_stream_info("n", "T", ["a", "b"], ["deg"], 0, "float32", "sid")


def test_angles_outlet_metadata_and_timestamps_read_back() -> None:
    subject, base = f"subj-{_uid()}", f"gait-stream/angles-{_uid()}"
    out = AnglesOutlet(subject, rate=50.0, source_id=base)
    sid = f"{base}/{subject}"
    assert out.source_id == sid
    inlet = open_inlet(sid)
    full = inlet.info(5.0)
    assert full.name() == "gait-stream/angles"
    assert full.type() == "JointAngles"
    assert full.nominal_srate() == 50.0
    assert full.channel_format() == pylsl.cf_float32
    meta = channel_meta(full)
    assert [m["label"] for m in meta] == list(ANGLES)
    assert {m["unit"] for m in meta} == {"degrees"}
    assert full.desc().child_value("subject") == subject
    assert full.desc().child("acquisition").child_value("manufacturer") == "gait-stream"

    # Stamped with the (past) time the angles describe, not the publish time.
    t = pylsl.local_clock() - 0.25 + np.arange(4) / 50.0
    values = np.arange(4 * len(ANGLES), dtype=np.float64).reshape(4, len(ANGLES)) / 4
    assert out.push(t, values) == 4
    rows, stamps = _pull(inlet, 4)
    np.testing.assert_allclose(stamps, t, atol=1e-9)
    np.testing.assert_allclose(rows, values, rtol=1e-6)

    with pytest.raises(ValueError, match="expected"):
        out.push(t[:1], np.zeros((1, len(ANGLES) - 1)))
    with pytest.raises(ValueError, match="timestamps"):
        out.push(t[:2], np.zeros((3, len(ANGLES))))
    out.close()
    with pytest.raises(RuntimeError, match="closed"):
        out.push(t[:1], np.zeros((1, len(ANGLES))))


def test_events_outlet_sends_markers_at_event_times() -> None:
    base = f"gait-stream/events-{_uid()}"
    out = EventsOutlet("s2", source_id=base)
    inlet = open_inlet(f"{base}/s2")
    full = inlet.info(5.0)
    assert (full.name(), full.type()) == ("gait-stream/events", "Markers")
    assert full.channel_format() == pylsl.cf_string
    assert full.nominal_srate() == pylsl.IRREGULAR_RATE
    labels = [GAIT_EVENTS[0], GAIT_EVENTS[3]]
    t = [pylsl.local_clock() - 0.5, pylsl.local_clock() - 0.1]
    out.push(t, labels)
    rows, stamps = _pull(inlet, 2)
    assert [r[0] for r in rows] == labels
    np.testing.assert_allclose(stamps, t, atol=1e-9)
    with pytest.raises(ValueError, match="str"):
        out.push([1.0], [3])


def test_gait_outlet_one_double_sample_per_stride() -> None:
    base = f"gait-stream/gait-{_uid()}"
    with GaitOutlet(source_id=base) as out:
        inlet = open_inlet(base)  # no subject: the source id is the base
        full = inlet.info(5.0)
        assert (full.name(), full.type()) == ("gait-stream/gait", "GaitParameters")
        assert full.channel_format() == pylsl.cf_double64
        meta = channel_meta(full)
        assert [m["label"] for m in meta] == list(GAIT_PARAMS)
        assert meta[GAIT_PARAMS.index("cadence")]["unit"] == "steps/min"
        row = np.array([[1, 112.5, 1.07, 0.61, 1.22, 1.14, 4.2, 98.7654321]])
        t = [pylsl.local_clock() - 1.0]
        out.push(t, row)
        rows, stamps = _pull(inlet, 1)
        np.testing.assert_array_equal(rows, row)  # float64 end to end
        assert stamps == pytest.approx(t, abs=1e-9)
