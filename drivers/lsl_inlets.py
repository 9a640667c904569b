"""IMU inlets: one LSL stream (one or several sensors) → chunks in contract units and layout.

What this edge owns: mapping channels by label to (segment, gyr/acc axis), converting units from
the stream's metadata, mapping remote timestamps onto the local LSL clock with time correction,
dropping non-finite samples, trimming a backlog a slow consumer would otherwise fall behind on,
and noticing (and surviving) a stream that disappears. What it leaves to the sync stage:
dejittering and clock-offset smoothing (no liblsl post-processing flags are set on purpose).

Every drop is counted in `ImuInlet.stats`; nothing is dropped silently.

`PairedImuInlet` is one sensor sent as two 3-channel streams (gyro and accelerometer, as
MuseLSL2 does): it joins them on the gyro timestamps, interpolating the accelerometer.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pylsl
from pylsl.util import LostError, handle_error
from pylsl.util import TimeoutError as LslTimeoutError

from drivers.liblsl import liblsl_function
from drivers.selectors import xpath_literal
from drivers.units import channel_meta, unit_scale
from fusion.skeleton import IMU_CHANNELS, SEGMENTS

__all__ = [
    "ImuChunk",
    "ImuInlet",
    "PairedImuInlet",
    "StreamFormatError",
    "local_clock",
    "open_all",
]

log = logging.getLogger(__name__)

#: pull through liblsl on cached buffers (pylsl's `StreamInlet.do_pull_chunk`, an internal
#: attribute: a pylsl without it falls back to the public, ~8x slower `pull_chunk`)
DIRECT_PULL = True
_add = np.add.reduce  # ndarray.sum() without its Python wrapper (pull() runs ~1300 times/s)


def _gil_held(fn: Any) -> Any:
    """pylsl's liblsl function `fn` called without releasing the GIL, or None.

    Why: a ctypes call through pylsl's CDLL drops the GIL and must win it back on return; in a
    process where another stage thread computes, that costs up to a switch interval (1 ms)
    per call, and ingest makes one per stream per round. A non-blocking pull takes a few µs in
    liblsl, far less than the wait for the GIL: it keeps the GIL. Blocking pulls still release it.
    """
    name = getattr(fn, "__name__", None)
    if not name:
        return None
    return liblsl_function(name, fn.argtypes, fn.restype, keep_gil=True)


#: How often the clock offset is refreshed (liblsl keeps estimating it in the background).
TIME_CORRECTION_REFRESH_S = 1.0


def _pick_local_clock() -> Callable[[], float]:
    """`pylsl.local_clock`, or `time.monotonic` where that is the same clock.

    Why: liblsl's clock is std::chrono::steady_clock, on Linux CLOCK_MONOTONIC like
    time.monotonic; reading it through ctypes releases the GIL, and in a process where another
    stage thread computes, every release costs this thread up to a switch interval to get the
    GIL back. The hot ingest path reads the clock a few times per packet. Used only when the
    two agree to within 0.1 ms on every one of a few reads (a different clock would differ by
    an arbitrary offset).
    """
    diffs = [pylsl.local_clock() - time.monotonic() for _ in range(5)]
    if max(abs(d) for d in diffs) < 1e-4:
        return time.monotonic
    return pylsl.local_clock


#: The LSL clock (seconds), without a ctypes call where possible (see _pick_local_clock).
local_clock: Callable[[], float] = _pick_local_clock()


class StreamFormatError(ValueError):
    """A stream whose channels cannot be mapped onto the contract layout."""


@dataclass(frozen=True)
class ImuChunk:
    """Samples pulled from one stream, already in contract units and order.

    timestamps: (N,) seconds on the local LSL clock (time correction added, no dejitter).
    data: (N, len(segments), 6) float64, per sensor gyr_x gyr_y gyr_z [rad/s] then
    acc_x acc_y acc_z [m/s², gravity included].
    clock_offset: the time correction that was added to the sender's timestamps.
    """

    stream: str
    timestamps: np.ndarray
    data: np.ndarray
    segments: tuple[str, ...]
    clock_offset: float


class ImuInlet:
    """Wraps one LSL IMU stream; `open()` then call `pull()` often (every few ms to ~100 ms).

    stats counters: samples (delivered), bad_nonfinite (samples with NaN/inf removed),
    backlog_trimmed (oldest samples dropped because more than `max_backlog_s` was queued),
    lost (times the stream went away), recovered (times it came back), reconnect_rejected
    (a stream with the lost one's identity but channels that do not map; it is not used).

    A stream counts as lost when liblsl says so (LostError: no source_id, recovery
    impossible) or, for a regular-rate stream, when no sample arrived for `lost_after_s`
    (also right after open() if the sender has not started yet). liblsl reconnects streams
    that have a source_id by itself (recover=True); for the others this class re-resolves in
    the background (never blocking pull()) and rebuilds the inlet. Samples liblsl still held
    when it raised LostError are gone (liblsl does not hand them out); `up` mirrors the state.
    """

    #: Contract channels per sensor, in output order (subclasses read one quantity only).
    LAYOUT: tuple[str, ...] = IMU_CHANNELS

    def __init__(
        self,
        info: pylsl.StreamInfo,
        segments: list[str],
        *,
        max_backlog_s: float = 0.5,
        max_buflen_s: int = 10,
        lost_after_s: float = 1.0,
        label: str | None = None,
    ) -> None:
        self.info = info
        self.segments: tuple[str, ...] = tuple(segments)
        self.max_backlog_s = float(max_backlog_s)
        self.max_buflen_s = int(max_buflen_s)
        self.lost_after_s = float(lost_after_s)
        self.name: str = label or info.name()
        self.stats: Counter[str] = Counter()
        self.notes: list[str] = []
        self.up = False
        self.last_sample_time: float | None = None  # local clock of the last good pull
        self.rate = float(info.nominal_srate())

        if not self.segments:
            raise ValueError(f"stream {self._where()}: no segments given")
        unknown = [s for s in self.segments if s not in SEGMENTS]
        if unknown or len(set(self.segments)) != len(self.segments):
            raise ValueError(
                f"stream {self._where()}: segments {list(self.segments)} must be distinct names "
                f"from fusion.skeleton.SEGMENTS (unknown: {unknown})"
            )
        if info.channel_format() == pylsl.cf_string:
            raise StreamFormatError(f"stream {self._where()}: string channels, IMU needs numbers")
        self.n_channels = info.channel_count()
        self.needed = len(self.LAYOUT) * len(self.segments)
        if self.n_channels < self.needed:
            raise StreamFormatError(
                f"stream {self._where()}: {self.n_channels} channels, but "
                f"{len(self.segments)} segment(s) {list(self.segments)} need {self.needed} "
                f"({len(self.LAYOUT)} per sensor: {' '.join(self.LAYOUT)})"
            )

        self.channel_index: np.ndarray | None = None  # (6*n_seg,) raw channel per output
        self.scale: np.ndarray | None = None  # (6*n_seg,) factor to rad/s, m/s²
        self._identity = False  # channel_index is 0..n-1 over all channels
        self._unit_scale = False  # every factor is 1
        self._inlet: pylsl.StreamInlet | None = None
        self._buf: np.ndarray | None = None
        self._ts = np.empty(0)
        self._err = ctypes.c_int()
        self._buf_addr = self._ts_addr = self._sample_bytes = 0
        self._cap = 0
        self._pull_now: Any = None  # liblsl pull_chunk keeping the GIL (non-blocking pulls)
        self._drain_args: tuple[Any, ...] = ()  # its arguments for a whole-buffer pull
        self._offset = 0.0
        self._offset_at = -math.inf
        self._lost = False
        self._lost_since = 0.0
        self._last_data = 0.0
        self._resolver: pylsl.ContinuousResolver | None = None
        self._skip_uids: set[str] = set()

    # ------------------------------------------------------------------ setup

    def _where(self) -> str:
        sid = self.info.source_id()
        return f"'{self.name}'" + (f" (source_id '{sid}')" if sid else "")

    def _build_mapping(self, full_info: pylsl.StreamInfo) -> None:
        """Map contract channels to raw channels by label, and read their units.

        Each note is recorded once (a reconnect repeats the same ones).
        """
        metas = channel_meta(full_info)
        labels = [m["label"].lower() for m in metas]
        if not any(labels):
            if self.n_channels != self.needed:
                raise StreamFormatError(
                    f"stream {self._where()}: no channel labels and {self.n_channels} channels; "
                    f"without labels exactly {self.needed} ({len(self.LAYOUT)} × "
                    f"{len(self.segments)} "
                    "segments, contract order) are accepted"
                )
            index = list(range(self.needed))
            self._note("no channel labels; assuming contract order " + " ".join(self.LAYOUT))
        else:
            where: dict[str, int] = {}
            for i, lab in enumerate(labels):
                if lab:
                    where.setdefault(lab, i)
            index, missing = [], []
            for seg in self.segments:
                for ch in self.LAYOUT:
                    names = self._label_candidates(seg, ch)
                    hit = next((where[n] for n in names if n in where), None)
                    if hit is None:
                        missing.append("/".join(names))
                    else:
                        index.append(hit)
            if missing:
                raise StreamFormatError(
                    f"stream {self._where()}: channel labels {missing} not found among "
                    f"{[m['label'] for m in metas]}"
                )
        scale, unitless = [], []
        for k, raw in enumerate(index):
            quantity = "gyr" if self.LAYOUT[k % len(self.LAYOUT)].startswith("gyr") else "acc"
            unit = metas[raw]["unit"]
            try:
                scale.append(unit_scale(unit, quantity))
            except ValueError as exc:
                raise StreamFormatError(
                    f"stream {self._where()}: channel {raw} ('{metas[raw]['label']}'): {exc}"
                ) from exc
            if not unit:
                unitless.append(metas[raw]["label"] or str(raw))
        if unitless:
            self._note(f"channels {unitless} have no unit; assuming rad/s and m/s^2")
        self.channel_index = np.asarray(index, dtype=np.intp)
        self.scale = np.asarray(scale, dtype=np.float64)
        # the usual stream (contract order and units): pull() skips the gather and the multiply
        self._identity = self.n_channels == len(index) and bool(
            np.array_equal(self.channel_index, np.arange(len(index)))
        )
        self._unit_scale = bool(np.all(self.scale == 1.0))

    def _label_candidates(self, segment: str, channel: str) -> list[str]:
        """Accepted labels (lower case) for one contract channel, preferred first."""
        return [f"{segment}_{channel}"] + ([channel] if len(self.segments) == 1 else [])

    def _note(self, text: str) -> None:
        if text in self.notes:
            return
        self.notes.append(text)
        log.warning("IMU stream %s: %s", self._where(), text)

    def _connect(self, info: pylsl.StreamInfo, timeout: float) -> None:
        """Create the inlet, read the full header, map channels and subscribe."""
        inlet = pylsl.StreamInlet(
            info, max_buflen=self.max_buflen_s, max_chunklen=0, recover=True, processing_flags=0
        )
        full = inlet.info(timeout)
        if full.channel_count() != self.n_channels:
            raise StreamFormatError(
                f"stream {self._where()}: now has {full.channel_count()} channels, "
                f"was {self.n_channels}"
            )
        self._build_mapping(full)
        inlet.open_stream(timeout)
        # liblsl's queue holds max_buflen seconds (irregular streams: x100 samples).
        per_s = self.rate if self.rate > 0 else 100.0
        cap = math.ceil(self.max_buflen_s * per_s)
        self._cap = max(64, cap + 16)
        self._buf = np.empty((self._cap, self.n_channels), dtype=inlet.np_dtype)
        self._ts = np.empty(self._cap, dtype=np.float64)
        # addresses looked up once (ndarray.ctypes builds a new object on every access)
        self._buf_addr = self._buf.ctypes.data
        self._ts_addr = self._ts.ctypes.data
        self._sample_bytes = self._buf.itemsize * self.n_channels
        direct = DIRECT_PULL and hasattr(inlet, "do_pull_chunk")
        self._pull_now = (_gil_held(inlet.do_pull_chunk) or inlet.do_pull_chunk) if direct else None
        if direct:  # the usual call (everything queued, no wait): arguments built once
            self._drain_args = (
                inlet.obj,
                ctypes.c_void_p(self._buf_addr),
                ctypes.c_void_p(self._ts_addr),
                ctypes.c_size_t(self._cap * self.n_channels),
                ctypes.c_size_t(self._cap),
                ctypes.c_double(0.0),
                ctypes.byref(self._err),
            )
        self._inlet = inlet
        self._last_data = pylsl.local_clock()

    def _first_time_correction(self, timeout: float) -> None:
        assert self._inlet is not None
        try:
            self._offset = self._inlet.time_correction(timeout)
        except LslTimeoutError as exc:
            raise TimeoutError(
                f"IMU stream {self._where()}: no clock offset estimate within {timeout} s"
            ) from exc
        self._offset_at = pylsl.local_clock()

    def open(self, timeout: float = 5.0) -> None:
        """Subscribe, get the first clock offset (~0.6 s) and flush what queued meanwhile."""
        self._connect(self.info, timeout)
        self._first_time_correction(timeout)
        self._finish_open()

    def _finish_open(self) -> None:
        assert self._inlet is not None
        self._inlet.flush()
        self.up = True
        self._last_data = pylsl.local_clock()

    @property
    def clock_offset(self) -> float:
        """The time correction currently added to the sender's timestamps (seconds)."""
        return self._offset

    def queued(self) -> int:
        """Samples liblsl holds for this inlet right now (a queue-depth gauge); 0 if closed."""
        return 0 if self._inlet is None else int(self._inlet.samples_available())

    def close(self) -> None:
        """Drop the inlet (and any background resolver)."""
        if self._inlet is not None:
            self._inlet.close_stream()
        self._inlet = None
        self._resolver = None
        self.up = False

    # ------------------------------------------------------------------ pulling

    def _refresh_offset(self, now: float) -> None:
        if now - self._offset_at < TIME_CORRECTION_REFRESH_S:
            return
        self._offset_at = now
        # Not ready (e.g. just reconnected): keep the previous offset.
        with contextlib.suppress(LslTimeoutError):
            self._offset = self._inlet.time_correction(0.0)

    @property
    def can_wait(self) -> bool:
        """Whether `pull(timeout)` can block on liblsl now (not while reconnecting)."""
        return self._inlet is not None and not self._lost

    def _pull_into(self, start: int, max_samples: int, timeout: float) -> int:
        """One liblsl chunk pull into the reused buffers from sample `start` on; samples got.

        Why not pylsl's pull_chunk: it allocates, builds ctypes array types and converts its
        arguments on every call (~30 µs), and ingest pulls each of 13 streams ~100 times a
        second for one sample; the same liblsl call on cached addresses costs ~4 µs.
        """
        inlet = self._inlet
        assert inlet is not None and self._buf is not None
        if not (DIRECT_PULL and hasattr(inlet, "do_pull_chunk")):  # else pylsl's public call
            _, ts = inlet.pull_chunk(
                timeout=timeout,
                max_samples=max_samples,
                dest_obj=self._buf[start:],
                as_numpy=True,
            )
            self._ts[start : start + len(ts)] = ts
            return len(ts)
        nch = self.n_channels
        err = self._err
        if timeout <= 0 and start == 0 and max_samples == self._cap:
            n = self._pull_now(*self._drain_args)  # the GIL is kept (see _gil_held)
            if err.value:
                handle_error(err)
            return n // nch
        fn = inlet.do_pull_chunk if timeout > 0 else self._pull_now
        n = fn(
            inlet.obj,
            ctypes.c_void_p(self._buf_addr + start * self._sample_bytes),
            ctypes.c_void_p(self._ts_addr + start * 8),
            ctypes.c_size_t(max_samples * nch),
            ctypes.c_size_t(max_samples),
            ctypes.c_double(timeout),
            ctypes.byref(err),
        )
        if err.value:
            handle_error(err)  # LostError, ... as pylsl raises them
        return n // nch

    def _drain(self, timeout: float = 0.0, full: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Pull everything queued: raw (N, n_channels) and remote timestamps (N,).

        What fits in one buffer comes back as views of the reused buffers (valid until the
        next pull; pull() converts them into arrays of its own), a longer backlog as copies.
        `full`: a pull just filled the whole buffer with that many samples; carry on from it.

        With `timeout` > 0 and nothing queued, block in liblsl (the GIL released) until the
        first sample arrives or the timeout passes, then take whatever else is there (as
        pylsl's pull_chunk(min_samples=1) does: a fixed-size liblsl pull waits until it is full).
        """
        assert self._inlet is not None and self._buf is not None
        parts_x, parts_t = [], []
        first = timeout > 0
        cap = self._cap
        if full:
            parts_x.append(self._buf[:full].copy())
            parts_t.append(self._ts[:full].copy())
        while True:
            if first:
                n = self._pull_into(0, 1, timeout)
                if n:
                    n += self._pull_into(1, cap - 1, 0.0)
                first = False
            else:
                n = self._pull_into(0, cap, 0.0)
            if n == 0:
                break
            if n < cap and not parts_t:  # the usual case: one pull got everything
                return self._buf[:n], self._ts[:n]
            parts_x.append(self._buf[:n].copy())
            parts_t.append(self._ts[:n].copy())
            if n < cap:
                break
        if not parts_t:
            return self._buf[:0], self._ts[:0]
        return np.concatenate(parts_x), np.concatenate(parts_t)

    def _trim_backlog(self, raw: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep only the newest `max_backlog_s` of what was queued; count the rest."""
        n = len(ts)
        if self.rate > 0:
            keep = max(1, math.ceil(self.max_backlog_s * self.rate))
            start = max(0, n - keep)
        else:
            start = int(np.searchsorted(ts, ts[-1] - self.max_backlog_s, side="left"))
        if start > 0:
            self.stats["backlog_trimmed"] += start
            log.debug("IMU stream %s: dropped %d backlogged samples", self._where(), start)
            return raw[start:], ts[start:]
        return raw, ts

    def pull(self, timeout: float = 0.0) -> ImuChunk | None:
        """Everything new since the last call (at most `max_backlog_s` of it), or None.

        `timeout` > 0: when nothing is queued, wait up to that long for the first sample
        (event-driven ingest: the caller wakes when the data is there, not on a timer).
        A stream being reconnected never blocks.
        """
        if self._inlet is None:
            if self._resolver is None:
                raise RuntimeError(f"IMU stream {self._where()}: pull() before open()")
            if not self._try_reconnect():
                return None
        try:
            if DIRECT_PULL and (timeout <= 0 or self._lost) and self._drain_args:
                # non-blocking: one liblsl call on cached arguments; ingest makes ~2 of these
                # per stream and round, most finding one sample or nothing
                n = self._pull_into(0, self._cap, 0.0)
                if n == 0:
                    return self._nothing_new(local_clock())
                if n < self._cap:
                    raw, ts = self._buf[:n], self._ts[:n]
                else:
                    raw, ts = self._drain(0.0, full=n)
            else:
                raw, ts = self._drain(timeout if not self._lost else 0.0)
        except LostError:
            now = local_clock()
            self._on_lost(now, "liblsl reports the stream lost and cannot recover it")
            self._start_resolver()
            return None
        now = local_clock()
        if len(ts) == 0:
            return self._nothing_new(now)
        self._refresh_offset(now)
        self._last_data = now
        if self._lost:
            self._lost = False
            self.up = True
            self.stats["recovered"] += 1
            log.warning(
                "IMU stream %s: recovered after %.2f s", self._where(), now - self._lost_since
            )
        raw, ts = self._trim_backlog(raw, ts)
        # raw and ts may be views of the reused buffers: each step below makes a new array
        if self._identity:
            data = raw.astype(np.float64)
        else:
            data = raw[:, self.channel_index].astype(np.float64, copy=False)  # (a gather copies)
        if not self._unit_scale:
            data *= self.scale
        stamps = ts + self._offset
        # one sum tells whether every value is finite (a NaN/inf, or an overflow, is not):
        # only then look at the samples one by one
        if not math.isfinite(float(_add(data, axis=None)) + float(_add(stamps, axis=None))):
            good = np.isfinite(data).all(axis=1) & np.isfinite(stamps)
            n_bad = int(len(good) - np.count_nonzero(good))
            if n_bad:
                self.stats["bad_nonfinite"] += n_bad
                data, stamps = data[good], stamps[good]
        if len(stamps) == 0:
            return None
        self.stats["samples"] += len(stamps)
        self.last_sample_time = now
        return ImuChunk(
            stream=self.name,
            timestamps=stamps,
            data=data.reshape(len(stamps), len(self.segments), len(self.LAYOUT)),
            segments=self.segments,
            clock_offset=self._offset,
        )

    def _nothing_new(self, now: float) -> None:
        """An empty pull: a regular-rate stream silent for `lost_after_s` counts as lost."""
        if not self._lost and self.rate > 0 and now - self._last_data > self.lost_after_s:
            self._on_lost(now, f"no samples for {now - self._last_data:.2f} s")

    # ------------------------------------------------------------------ loss and recovery

    def _on_lost(self, now: float, why: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._lost_since = now
        self.up = False
        self.stats["lost"] += 1
        log.warning("IMU stream %s lost (%s); waiting for it to come back", self._where(), why)

    def _start_resolver(self) -> None:
        """Watch the network for the stream again (same name/type and source or host)."""
        info = self.info
        key = "source_id" if info.source_id() else "hostname"
        sel = {"name": info.name(), "type": info.type(), key: getattr(info, key)()}
        parts = [f"channel_count={info.channel_count()}"]
        parts += [f"{k}={lit}" for k, v in sel.items() if (lit := xpath_literal(v)) is not None]
        pred = " and ".join(parts)
        self._inlet = None
        self._skip_uids = {info.uid()}
        self._resolver = pylsl.ContinuousResolver(pred=pred)

    def _try_reconnect(self) -> bool:
        """Non-blocking check of the background resolver; reconnect when the stream is back."""
        assert self._resolver is not None
        fresh = [i for i in self._resolver.results() if i.uid() not in self._skip_uids]
        if not fresh:
            return False
        info = fresh[0]
        try:
            self._connect(info, timeout=1.0)
        except StreamFormatError as exc:
            # A different stream under the same identity: never silently remap; keep waiting.
            self._skip_uids.add(info.uid())
            self.stats["reconnect_rejected"] += 1
            log.error("IMU stream %s: not reconnecting to %s: %s", self._where(), info.uid(), exc)
            return False
        except (LostError, LslTimeoutError) as exc:
            log.info("IMU stream %s: reconnect attempt failed: %s", self._where(), exc)
            self._inlet = None
            return False
        self.info = info
        self._resolver = None
        # Starts liblsl's estimate; until it is ready the old offset stays in use.
        with contextlib.suppress(LslTimeoutError):
            self._offset = self._inlet.time_correction(0.0)
        self._offset_at = pylsl.local_clock()
        return True


# ---------------------------------------------------------------------- one sensor, two streams

#: Accepted label prefixes of a 3-axis stream (lower case, before `_x`/`_y`/`_z`).
_AXIS_ALIASES: dict[str, tuple[str, ...]] = {
    "gyr": ("gyr", "gyro", "gyroscope", "angular_velocity"),
    "acc": ("acc", "accel", "accelerometer", "acceleration"),
}


class _TriaxialInlet(ImuInlet):
    """An ImuInlet for a 3-channel stream of one quantity (a MuseLSL2-style ACC or GYRO stream).

    Labels accepted per axis: `<segment>_gyr_x`, `gyr_x`, `gyro_x`, `gyroscope_x`, ... and a bare
    `x`; without labels the three channels are taken as x, y, z. Units as for ImuInlet
    (dps, g, ... converted). `pull()` returns chunks with data (N, 1, 3).
    """

    def __init__(self, info: pylsl.StreamInfo, quantity: str, segment: str, **kw: Any) -> None:
        if quantity not in _AXIS_ALIASES:
            raise ValueError(f"quantity must be 'gyr' or 'acc', got {quantity!r}")
        self.quantity = quantity
        self.LAYOUT = tuple(c for c in IMU_CHANNELS if c.startswith(quantity))
        super().__init__(info, [segment], **kw)

    def _label_candidates(self, segment: str, channel: str) -> list[str]:
        axis = channel.rsplit("_", 1)[1]
        aliases = [f"{a}_{axis}" for a in _AXIS_ALIASES[self.quantity]]
        return [f"{segment}_{channel}", *aliases, axis]


def _running_max_keep(t: np.ndarray, last: float) -> np.ndarray:
    """Mask of samples whose stamp is later than every stamp before it (and than `last`)."""
    if len(t) == 0:
        return np.zeros(0, dtype=bool)
    before = np.maximum.accumulate(np.concatenate(([last], t[:-1])))
    return t > before


class PairedImuInlet:
    """One sensor delivered as two LSL streams (gyro and accelerometer), joined into one.

    MuseLSL2 and similar devices publish ACC and GYRO as separate 3-channel streams with their
    own timestamps. This inlet pulls both (each an ImuInlet of one quantity: units, time
    correction, loss handling) and emits contract chunks (N, 1, 6) stamped with the *gyro*
    timestamps, the accelerometer linearly interpolated to each gyro time.

    A gyro sample is emitted once accelerometer data exists on both sides of it. It is dropped,
    and counted, when no accelerometer sample precedes it (`acc_missing`), when its bracketing
    accelerometer samples are more than `max_gap_s` apart (`acc_gap`), or when the accelerometer
    has not caught up within `max_wait_s` of newer gyro data (`acc_late`). Accelerometer samples
    not later than the previous one are dropped (`acc_out_of_order`; np.interp needs increasing
    times). `stats` also sums both streams' ImuInlet counters (bad_nonfinite, backlog_trimmed,
    lost, ...); `samples` counts joined samples.
    """

    def __init__(
        self,
        gyr_info: pylsl.StreamInfo,
        acc_info: pylsl.StreamInfo,
        segment: str,
        *,
        max_gap_s: float = 0.1,
        max_wait_s: float = 0.25,
        history_s: float = 2.0,
        label: str | None = None,
        **inlet_kw: Any,
    ) -> None:
        self.gyr = _TriaxialInlet(gyr_info, "gyr", segment, **inlet_kw)
        self.acc = _TriaxialInlet(acc_info, "acc", segment, **inlet_kw)
        self.segments: tuple[str, ...] = (segment,)
        self.name = label or f"{gyr_info.name()}[{gyr_info.type()}+{acc_info.type()}]"
        self.rate = self.gyr.rate
        self.max_gap_s = float(max_gap_s)
        self.max_wait_s = float(max_wait_s)
        self.history_s = float(history_s)
        self.last_sample_time: float | None = None
        self._own: Counter[str] = Counter()
        self._gt = np.empty(0)  # pending gyro stamps, local clock
        self._gx = np.empty((0, 3))
        self._at = np.empty(0)  # accelerometer history, strictly increasing stamps
        self._ax = np.empty((0, 3))
        self._last_gyr = -math.inf  # newest gyro stamp already handled (emitted or dropped)

    @property
    def parts(self) -> tuple[_TriaxialInlet, _TriaxialInlet]:
        return (self.gyr, self.acc)

    @property
    def stats(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for part in self.parts:
            for key, value in part.stats.items():
                out[f"{part.quantity}_samples" if key == "samples" else key] += value
        out.update(self._own)
        return out

    @property
    def notes(self) -> list[str]:
        return [f"{p.quantity}: {n}" for p in self.parts for n in p.notes]

    @property
    def up(self) -> bool:
        return self.gyr.up and self.acc.up

    @property
    def clock_offset(self) -> float:
        """The gyro stream's time correction (the output carries the gyro timestamps)."""
        return self.gyr.clock_offset

    def queued(self) -> int:
        return self.gyr.queued() + self.acc.queued()

    def open(self, timeout: float = 5.0) -> None:
        """Open both streams (their first time corrections run in parallel)."""
        open_all([self.gyr, self.acc], timeout)

    def close(self) -> None:
        self.gyr.close()
        self.acc.close()

    def _add_acc(self, chunk: ImuChunk) -> None:
        t = chunk.timestamps
        keep = _running_max_keep(t, self._at[-1] if len(self._at) else -math.inf)
        dropped = int(len(t) - np.count_nonzero(keep))
        if dropped:
            self._own["acc_out_of_order"] += dropped
        self._at = np.concatenate((self._at, t[keep]))
        self._ax = np.concatenate((self._ax, chunk.data[keep, 0, :]))

    def pull(self) -> ImuChunk | None:
        """Joined samples ready since the last call, or None."""
        a = self.acc.pull()
        g = self.gyr.pull()
        if a is not None:
            self._add_acc(a)
        if g is not None:
            self._gt = np.concatenate((self._gt, g.timestamps))
            self._gx = np.concatenate((self._gx, g.data[:, 0, :]))
        out = self._join()
        self._trim_history()
        return out

    def _join(self) -> ImuChunk | None:
        gt, at = self._gt, self._at
        if len(gt) == 0:
            return None
        newest = float(gt.max())
        ready = gt <= at[-1] if len(at) else np.zeros(len(gt), dtype=bool)
        expired = ~ready & (gt < newest - self.max_wait_s)
        if expired.any():
            self._own["acc_late"] += int(np.count_nonzero(expired))
        done = ready | expired
        t, x = gt[ready], self._gx[ready]
        self._gt, self._gx = gt[~done], self._gx[~done]
        if done.any():
            self._last_gyr = max(self._last_gyr, float(gt[done].max()))
        if len(t) == 0:
            return None
        j = np.searchsorted(at, t, side="left")  # at[j-1] < t <= at[j]
        exact = at[j] == t
        before_first = (j == 0) & ~exact
        gap = at[j] - at[np.maximum(j - 1, 0)]
        wide = ~exact & ~before_first & (gap > self.max_gap_s)
        if before_first.any():
            self._own["acc_missing"] += int(np.count_nonzero(before_first))
        if wide.any():
            self._own["acc_gap"] += int(np.count_nonzero(wide))
        good = ~(before_first | wide)
        t, x = t[good], x[good]
        if len(t) == 0:
            return None
        acc = np.column_stack([np.interp(t, at, self._ax[:, k]) for k in range(3)])
        self._own["samples"] += len(t)
        self.last_sample_time = pylsl.local_clock()
        return ImuChunk(
            stream=self.name,
            timestamps=t,
            data=np.concatenate((x, acc), axis=1).reshape(len(t), 1, 6),
            segments=self.segments,
            clock_offset=self.gyr.clock_offset,
        )

    def _trim_history(self) -> None:
        """Keep the accelerometer samples a future gyro sample can still need, at most history_s."""
        at = self._at
        if len(at) < 2:
            return
        oldest_needed = float(self._gt.min()) if len(self._gt) else self._last_gyr
        start = max(0, int(np.searchsorted(at, oldest_needed, side="left")) - 1)
        start = max(start, int(np.searchsorted(at, at[-1] - self.history_s, side="left")))
        start = min(start, len(at) - 1)
        if start:
            self._at, self._ax = at[start:], self._ax[start:]


def open_all(inlets: list[ImuInlet | PairedImuInlet], timeout: float = 5.0) -> None:
    """Open several inlets; their first time corrections (~0.6 s each) run in parallel."""
    inlets = [p for i in inlets for p in (i.parts if isinstance(i, PairedImuInlet) else (i,))]
    for inlet in inlets:
        inlet._connect(inlet.info, timeout)
    errors: list[BaseException] = []

    def first(inlet: ImuInlet) -> None:
        try:
            inlet._first_time_correction(timeout)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=first, args=(i,), daemon=True) for i in inlets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for inlet in inlets:
        inlet._finish_open()
