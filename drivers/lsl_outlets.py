"""The LSL outputs: joint angles, gait events and per-stride gait parameters.

Each outlet carries a full header (channel labels, units, types, manufacturer, subject) so a
recorder such as LabRecorder writes self-describing XDF files. Timestamps are always given
explicitly: an output sample is stamped with the time of the movement it describes, not the
time it was published (DESIGN.md, "Outputs").
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np
import pylsl
from pylsl.util import handle_error

from drivers.liblsl import liblsl_function
from fusion.skeleton import ANGLES, GAIT_PARAMS

__all__ = [
    "AnglesOutlet",
    "ChunkPusher",
    "EventsOutlet",
    "GaitOutlet",
    "make_stream_info",
]

MANUFACTURER = "gait-stream"

#: Units of the per-stride parameters (see fusion.skeleton.GAIT_PARAMS); unknown names get "".
GAIT_PARAM_UNITS: dict[str, str] = {
    "side": "",
    "cadence": "steps/min",
    "stride_time": "s",
    "step_length": "m",
    "stride_length": "m",
    "speed": "m/s",
    "knee_flexion_max_ext": "degrees",
    "gdi": "",
}


def make_stream_info(
    name: str,
    type: str,
    channels: Sequence[str],
    units: Sequence[str],
    rate: float,
    fmt: str | int,
    source_id: str,
    *,
    types: Sequence[str] | None = None,
    subject: str | None = None,
) -> pylsl.StreamInfo:
    """A StreamInfo with desc/channels/channel{label,unit,type} and desc/acquisition.

    `types` defaults to the stream type for every channel. `subject`, when given, is written
    to desc/subject (callers decide whether it also goes into the source id).
    """
    if len(units) != len(channels):
        raise ValueError(f"stream '{name}': {len(channels)} channels but {len(units)} units given")
    if types is None:
        types = [type] * len(channels)
    if len(types) != len(channels):
        raise ValueError(f"stream '{name}': {len(channels)} channels but {len(types)} types")
    info = pylsl.StreamInfo(name, type, len(channels), float(rate), fmt, source_id)
    desc = info.desc()
    chans = desc.append_child("channels")
    for label, unit, ctype in zip(channels, units, types, strict=True):
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", ctype)
    desc.append_child("acquisition").append_child_value("manufacturer", MANUFACTURER)
    if subject is not None:
        desc.append_child_value("subject", subject)
    return info


#: liblsl's per-sample-timestamp chunk pushes, by channel format, with the numpy dtype they take
_RAW_PUSH = {
    "float32": ("lsl_push_chunk_ftnp", np.float32),
    "double64": ("lsl_push_chunk_dtnp", np.float64),
}
_FORMAT_NAMES = {pylsl.cf_float32: "float32", pylsl.cf_double64: "double64"}


def _raw_push_function(fmt: str) -> Any:
    """liblsl's chunk push for `fmt`, as a function object of our own (drivers.liblsl)."""
    argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_int]
    fn = liblsl_function(_RAW_PUSH[fmt][0], argtypes, ctypes.c_int)
    if fn is None:
        raise RuntimeError(f"liblsl has no {_RAW_PUSH[fmt][0]}")
    return fn


class ChunkPusher:
    """Numeric chunks with one timestamp per sample, handed straight to liblsl.

    Same liblsl call (`lsl_push_chunk_*tnp`, pushthrough on) and so the same samples and
    stamps as `StreamOutlet.push_chunk(values, list_of_stamps)`, without its per-call
    conversions (ctypes stamp array, dtype/shape checks): ~1.3 µs a call instead of ~7 µs.
    That matters where many outlets are pushed every few ms (the simulated lab's 13 IMUs per
    subject at 100 Hz). `push` checks its arguments; `push_raw` is the unchecked hot path.
    """

    __slots__ = ("_fn", "_handle", "channels", "dtype", "name", "outlet")

    def __init__(self, outlet: pylsl.StreamOutlet, name: str = "") -> None:
        fmt = _FORMAT_NAMES.get(outlet.channel_format)
        if fmt is None:
            raise ValueError(
                f"outlet '{name}': ChunkPusher takes float32 or double64 streams, not channel "
                f"format {outlet.channel_format}"
            )
        self.name = name
        self.outlet = outlet  # keeps the liblsl outlet alive while we hold its handle
        self.channels = int(outlet.channel_count)
        self.dtype = np.dtype(_RAW_PUSH[fmt][1])
        self._fn = _raw_push_function(fmt)
        self._handle = outlet.obj.value

    def push(self, values: np.ndarray, stamps: np.ndarray) -> int:
        """Push (N, channels) values (any numeric dtype) stamped with (N,) float64 times."""
        x = np.ascontiguousarray(values, dtype=self.dtype)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        ts = np.ascontiguousarray(stamps, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != self.channels or len(ts) != x.shape[0]:
            raise ValueError(
                f"outlet '{self.name}': values of shape {np.shape(values)} and "
                f"{len(ts)} timestamps; need (N, {self.channels}) and N"
            )
        if x.shape[0]:
            self.push_raw(x.ctypes.data, x.size, ts.ctypes.data)
        return x.shape[0]

    def push_raw(self, data: int, n_values: int, stamps: int) -> None:
        """Unchecked: `data` points at n_values C-contiguous values of `dtype` (whole
        samples), `stamps` at one float64 per sample; both must stay alive for the call."""
        rc = self._fn(self._handle, data, n_values, stamps, 1)
        if rc:
            handle_error(rc)


def _source_id(base: str, subject: str | None) -> str:
    return base if subject is None else f"{base}/{subject}"


class _Outlet:
    """Shared plumbing: owns one pylsl.StreamOutlet, validates chunks, closes cleanly."""

    def __init__(self, info: pylsl.StreamInfo, subject: str | None, max_buffered: int) -> None:
        self.subject = subject
        self.name = info.name()
        self.source_id = info.source_id()
        self.channel_count = info.channel_count()
        self._outlet: pylsl.StreamOutlet | None = pylsl.StreamOutlet(
            info, chunk_size=0, max_buffered=max_buffered
        )

    def _check_stamps(self, timestamps: np.ndarray | Sequence[float], n: int) -> list[float]:
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if len(ts) != n:
            raise ValueError(f"outlet '{self.name}': {len(ts)} timestamps for {n} samples")
        if not np.isfinite(ts).all():
            raise ValueError(f"outlet '{self.name}': non-finite timestamps {ts.tolist()}")
        return ts.tolist()

    def _live(self) -> pylsl.StreamOutlet:
        if self._outlet is None:
            raise RuntimeError(f"outlet '{self.name}' ({self.source_id}) is closed")
        return self._outlet

    def _push_numeric(self, timestamps: np.ndarray | Sequence[float], rows: np.ndarray) -> int:
        values = np.asarray(rows)
        if values.ndim == 1:
            values = values.reshape(1, -1)
        if values.ndim != 2 or values.shape[1] != self.channel_count:
            raise ValueError(
                f"outlet '{self.name}': rows of shape {np.shape(rows)}, expected "
                f"(N, {self.channel_count})"
            )
        n = values.shape[0]
        stamps = self._check_stamps(timestamps, n)
        if n:
            self._live().push_chunk(values, timestamp=stamps)
        return n

    @property
    def info(self) -> pylsl.StreamInfo:
        """The outlet's stream info as liblsl holds it (with desc)."""
        return self._live().get_info()

    def have_consumers(self) -> bool:
        """Whether any inlet is connected (pushing without one is harmless, just wasted)."""
        return self._live().have_consumers()

    def wait_for_consumers(self, timeout: float) -> bool:
        """Block up to `timeout` s until an inlet connects."""
        return self._live().wait_for_consumers(timeout)

    def close(self) -> None:
        """Withdraw the stream from the network (idempotent)."""
        self._outlet = None  # pylsl destroys the liblsl outlet in __del__

    def __enter__(self) -> _Outlet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AnglesOutlet(_Outlet):
    """`gait-stream/angles`: one float32 channel per fusion.skeleton.ANGLES, in degrees."""

    def __init__(
        self,
        subject: str | None = None,
        *,
        rate: float = 60.0,
        source_id: str = "gait-stream/angles",
        name: str = "gait-stream/angles",
        max_buffered: int = 60,
    ) -> None:
        info = make_stream_info(
            name,
            "JointAngles",
            ANGLES,
            ["degrees"] * len(ANGLES),
            rate,
            "float32",
            _source_id(source_id, subject),
            types=["JointAngle"] * len(ANGLES),
            subject=subject,
        )
        super().__init__(info, subject, max_buffered)

    def push(self, timestamps: np.ndarray | Sequence[float], angles: np.ndarray) -> int:
        """Push (N,) sample times and (N, len(ANGLES)) degrees; returns N."""
        return self._push_numeric(timestamps, angles)


class GaitOutlet(_Outlet):
    """`gait-stream/gait`: one float64 sample per stride, channels fusion.skeleton.GAIT_PARAMS."""

    def __init__(
        self,
        subject: str | None = None,
        *,
        source_id: str = "gait-stream/gait",
        name: str = "gait-stream/gait",
        max_buffered: int = 60,
    ) -> None:
        info = make_stream_info(
            name,
            "GaitParameters",
            GAIT_PARAMS,
            [GAIT_PARAM_UNITS.get(p, "") for p in GAIT_PARAMS],
            pylsl.IRREGULAR_RATE,
            "double64",
            _source_id(source_id, subject),
            types=["GaitParameter"] * len(GAIT_PARAMS),
            subject=subject,
        )
        super().__init__(info, subject, max_buffered)

    def push(self, timestamps: np.ndarray | Sequence[float], rows: np.ndarray) -> int:
        """Push (N,) stride times and (N, len(GAIT_PARAMS)) values; returns N."""
        return self._push_numeric(timestamps, np.asarray(rows, dtype=np.float64))


class EventsOutlet(_Outlet):
    """`gait-stream/events`: string markers (`heel_strike_l`, `toe_off_r`, ...), irregular."""

    def __init__(
        self,
        subject: str | None = None,
        *,
        source_id: str = "gait-stream/events",
        name: str = "gait-stream/events",
        max_buffered: int = 60,
    ) -> None:
        info = make_stream_info(
            name,
            "Markers",
            ["event"],
            [""],
            pylsl.IRREGULAR_RATE,
            "string",
            _source_id(source_id, subject),
            types=["Marker"],
            subject=subject,
        )
        super().__init__(info, subject, max_buffered)

    def push(self, timestamps: np.ndarray | Sequence[float], labels: Sequence[str]) -> int:
        """Push one marker per label, stamped with the event time; returns N."""
        labels = list(labels)
        bad = [x for x in labels if not isinstance(x, str)]
        if bad:
            raise ValueError(f"outlet '{self.name}': markers must be str, got {bad!r}")
        stamps = self._check_stamps(timestamps, len(labels))
        if labels:
            self._live().push_chunk(labels, timestamp=stamps)
        return len(labels)
