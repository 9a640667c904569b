"""Re-publish an XDF recording as live LSL streams, with its metadata and relative timing.

Each selected stream gets an outlet whose StreamInfo carries the original name, type, channel
count, nominal rate, format, source id (optionally suffixed, so several replays can coexist)
and the whole `<desc>` tree of the recorded header. Samples are pushed when their time comes,
each with an explicit timestamp: `t_start + (t − t0) / speed` (+ one recording length per
loop), where `t` is pyxdf's synchronised timestamp and `t0` the earliest sample of the
selection — so relative timing between streams is the recording's, rebased to now on
`pylsl.local_clock()`. At `speed` ≠ 1 the stamps are compressed but headers keep the recorded
nominal rate (the metadata is the recording's). Empty streams get an outlet too (a consumer
sees that the stream exists) unless `skip_empty`. Each stream's samples go out in recorded
order (a stamp that steps backwards is sent after its predecessor, as it was received).

Stamps: clock offsets applied, *not* dejittered by default (`dejitter=False`), i.e. what a
live inlet received: a consumer that dejitters (the pipeline's sync stage does) sees the same
input it saw live. pyxdf's dejitter (`dejitter=True`) fits one straight line of stamp on sample
index per segment, which is wrong for a stream that lost samples: every loss shifts the later
samples' indices, and the fit moved the simulated lab's lossy streams (0.5 % of samples lost
in bursts) by up to 90 ms: the right leg came back ~10° off
(tests/test_record_replay_roundtrip.py, issue #5).

`verify_replay` is the timing measurement: replay over real LSL, receive on real inlets, and
compare what arrives with pyxdf's synchronised timestamps (the ≤ 1 ms target).
"""

from __future__ import annotations

import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pylsl

from drivers.background import BackgroundWorker
from drivers.selectors import StreamSelector
from drivers.xdf_reader import XdfRecording, XdfStream, load_xdf, parse_selector, select_streams

__all__ = [
    "ReplayCheckRow",
    "XdfReplayer",
    "stream_info_for",
    "verify_replay",
]

ProgressFn = Callable[[float, float, int], None]  # (position s in the file, duration s, pass)


def stream_info_for(stream: XdfStream, source_id_suffix: str = "") -> pylsl.StreamInfo:
    """A pylsl StreamInfo with the recorded header's fields and its full `<desc>` tree."""
    info = pylsl.StreamInfo(
        stream.name or "unnamed",
        stream.type,
        stream.channel_count,
        stream.nominal_srate,
        stream.channel_format,
        stream.source_id + source_id_suffix,
    )
    desc = stream.desc()
    if desc is not None:
        _copy_children(desc, info.desc())
    return info


def _copy_children(src: ET.Element, dst: Any) -> None:
    for child in src:
        if len(child):
            _copy_children(child, dst.append_child(child.tag))
        else:
            dst.append_child_value(child.tag, (child.text or "").strip())


@dataclass
class _Out:
    stream: XdfStream
    outlet: pylsl.StreamOutlet | None
    values: Any
    sent: int = 0


class XdfReplayer(BackgroundWorker):
    """Replays a recording's streams on LSL outlets from a thread (`start`) or inline (`run`).

    Outlets exist from construction (so inlets can connect before the first sample); `close()`
    removes them. `t_start` is the local time that corresponds to the recording's first sample.
    `dejitter` applies when `recording` is a path (see the module docstring for why it is off
    by default); an `XdfRecording` is replayed with the stamps it was loaded with.
    """

    def __init__(
        self,
        recording: XdfRecording | str | Path,
        select: Sequence[StreamSelector | str] | None = None,
        *,
        speed: float = 1.0,
        loop: bool = False,
        dejitter: bool = False,
        max_seconds: float | None = None,
        progress: ProgressFn | None = None,
        source_id_suffix: str = "",
        skip_empty: bool = False,
    ) -> None:
        if not (speed > 0 and np.isfinite(speed)):
            raise ValueError(f"replay speed must be a positive number, got {speed}")
        if not isinstance(recording, XdfRecording):
            recording = load_xdf(recording, select, dejitter_timestamps=dejitter)
            select = None
        self.recording = recording
        self.speed = float(speed)
        self.loop = loop
        self.progress = progress
        self.skip_empty = skip_empty
        self.skipped: list[str] = []
        chosen = recording.streams if not select else _select(recording, select)
        self._outs: list[_Out] = []
        for s in chosen:
            if s.channel_count < 1:
                self.skipped.append(f"{s.key}: {s.channel_count} channels, cannot be published")
                continue
            if skip_empty and len(s) == 0:
                self.skipped.append(f"{s.key}: no samples")
                continue
            suffix = source_id_suffix.replace("{stream_id}", str(s.stream_id))
            outlet = pylsl.StreamOutlet(stream_info_for(s, suffix))
            values = s.time_series
            if s.channel_format != "string":
                values = np.ascontiguousarray(values)
            self._outs.append(_Out(s, outlet, values))
        if not self._outs:
            raise ValueError(f"{recording.path}: nothing to replay ({'; '.join(self.skipped)})")
        firsts = [o.stream.time_stamps[0] for o in self._outs if len(o.stream)]
        lasts = [o.stream.time_stamps[-1] for o in self._outs if len(o.stream)]
        self.t0 = float(min(firsts)) if firsts else 0.0
        end = float(max(lasts)) - self.t0 if lasts else 0.0
        self.duration = min(end, max_seconds) if max_seconds is not None else end
        # Merged schedule over all streams: when a sample is due (relative time; a stamp that
        # steps back is due with its predecessor, so a stream keeps its recorded order), its
        # own relative stamp, output index, sample index.
        due, rel, which, idx = [], [], [], []
        for k, o in enumerate(self._outs):
            r = np.asarray(o.stream.time_stamps, dtype=float) - self.t0
            keep = np.flatnonzero(r <= self.duration + 1e-12)
            rel.append(r[keep])
            due.append(np.maximum.accumulate(r[keep]) if len(keep) else r[keep])
            which.append(np.full(len(keep), k))
            idx.append(keep)
        order = np.argsort(np.concatenate(due), kind="stable")
        self._due = np.concatenate(due)[order]
        self._rel = np.concatenate(rel)[order]
        self._which = np.concatenate(which)[order]
        self._idx = np.concatenate(idx)[order]
        periods = [1.0 / o.stream.nominal_srate for o in self._outs if o.stream.nominal_srate > 0]
        self.loop_period = self.duration + (min(periods) if periods else 0.1)
        self.t_start = np.nan
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ---- introspection -----------------------------------------------------------------
    @property
    def streams(self) -> list[XdfStream]:
        return [o.stream for o in self._outs]

    @property
    def outlet_infos(self) -> list[pylsl.StreamInfo]:
        return [o.outlet.get_info() for o in self._outs if o.outlet is not None]

    @property
    def sent(self) -> dict[str, int]:
        return {o.stream.key: o.sent for o in self._outs}

    def rebase(self, t: np.ndarray | float, pass_index: int = 0) -> np.ndarray | float:
        """Recording time → the local time at which it is (was) replayed."""
        return self.t_start + (np.asarray(t) - self.t0 + pass_index * self.loop_period) / self.speed

    def wait_for_consumers(self, timeout: float) -> bool:
        """Wait until every outlet has a consumer (or the timeout); True if all have."""
        deadline = time.monotonic() + timeout
        return all(
            o.outlet.wait_for_consumers(max(0.0, deadline - time.monotonic()))
            for o in self._outs
            if o.outlet is not None
        )

    # ---- running -----------------------------------------------------------------------
    def start(self, t_start: float | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("replay already started")
        self._thread = threading.Thread(
            target=self._run_safe, args=(t_start,), name="xdf-replay", daemon=True
        )
        self._thread.start()

    def _run_safe(self, t_start: float | None) -> None:
        try:
            self.run(t_start)
        except BaseException as e:  # reported to whoever joins
            self.error = e

    def run(self, t_start: float | None = None) -> None:
        """Replay until done (or forever with loop) or `stop()`; blocking."""
        self.t_start = pylsl.local_clock() if t_start is None else float(t_start)
        n = len(self._rel)
        last_report = -np.inf
        pass_index = 0
        while not self._stop.is_set():
            i = 0
            base = self.t_start + pass_index * self.loop_period / self.speed
            while i < n and not self._stop.is_set():
                now = pylsl.local_clock()
                due = (now - base) * self.speed
                j = int(np.searchsorted(self._due, due, side="right"))
                if j > i:
                    self._push(i, j, base)
                    i = j
                if self.progress is not None and (now - last_report > 0.1 or i == n):
                    last_report = now
                    self.progress(min(max(due, 0.0), self.duration), self.duration, pass_index)
                if i < n:
                    wait = (self._due[i] / self.speed + base) - pylsl.local_clock()
                    if wait > 0:
                        self._stop.wait(min(wait, 0.05))
            self.passes = pass_index + 1
            if not self.loop or self._stop.is_set():
                break
            pass_index += 1
            # Wait out the rest of the loop period (one sample interval after the last one).
            rest = base + self.loop_period / self.speed - pylsl.local_clock()
            if rest > 0:
                self._stop.wait(rest)

    def _push(self, i: int, j: int, base: float) -> None:
        which = self._which[i:j]
        for k in np.unique(which):
            sel = which == k
            o = self._outs[int(k)]
            rows = self._idx[i:j][sel]
            stamps = (base + self._rel[i:j][sel] / self.speed).tolist()
            if o.stream.channel_format == "string":
                chunk = [list(o.values[r]) for r in rows]
            else:
                chunk = o.values[rows]
            if o.outlet is not None:
                o.outlet.push_chunk(chunk, stamps)
                o.sent += len(rows)

    def _release(self) -> None:
        """Remove the outlets."""
        for o in self._outs:
            o.outlet = None  # pylsl destroys the outlet with its last reference


def _select(recording: XdfRecording, select: Sequence[StreamSelector | str]) -> list[XdfStream]:
    sels = [parse_selector(s) if isinstance(s, str) else s for s in select]
    chosen = select_streams(recording.streams, sels)
    if not chosen:
        raise ValueError(
            f"{recording.path}: no stream matches {' or '.join(s.describe() for s in sels)}"
        )
    return chosen


# ---- measurement ---------------------------------------------------------------------------


@dataclass
class ReplayCheckRow:
    key: str
    expected: int
    received: int
    values_ok: bool
    err_median_ms: float = np.nan
    err_p99_ms: float = np.nan
    err_max_ms: float = np.nan
    lag_median_ms: float = np.nan
    lag_p99_ms: float = np.nan
    notes: list[str] = field(default_factory=list)


def verify_replay(
    path: str | Path,
    select: Sequence[StreamSelector | str] | None = None,
    *,
    speed: float = 1.0,
    max_seconds: float | None = None,
    progress: ProgressFn | None = None,
    connect_timeout: float = 5.0,
    dejitter: bool = False,
) -> list[ReplayCheckRow]:
    """Replay `path` over LSL, receive it on inlets, compare with pyxdf's synchronised stamps
    (dejittered too with `dejitter`, as the replayer's option).

    Error: received stamp (+ the inlet's time correction), mapped back to recording time,
    minus pyxdf's `load_xdf(...)` time stamp of the same sample. Lag: local receive time minus
    the sample's stamp (how late the replay delivers). Both in ms.
    """
    rec = load_xdf(path, select, dejitter_timestamps=dejitter)
    suffix = f"#verify-{uuid.uuid4().hex[:8]}-{{stream_id}}"
    rep = XdfReplayer(
        rec, speed=speed, max_seconds=max_seconds, progress=progress, source_id_suffix=suffix
    )
    try:
        inlets = []
        for s in rep.streams:
            sid = s.source_id + suffix.replace("{stream_id}", str(s.stream_id))
            found = pylsl.resolve_byprop("source_id", sid, minimum=1, timeout=connect_timeout)
            if not found:
                raise RuntimeError(f"replayed stream {s.key} not found on LSL (source_id {sid!r})")
            inlet = pylsl.StreamInlet(found[0], max_buflen=360, recover=False)
            inlet.open_stream(timeout=connect_timeout)
            inlets.append(inlet)
        rep.wait_for_consumers(connect_timeout)
        tcs = [inlet.time_correction(timeout=connect_timeout) for inlet in inlets]
        got_t: list[list[np.ndarray]] = [[] for _ in inlets]
        got_x: list[list[Any]] = [[] for _ in inlets]
        got_at: list[list[np.ndarray]] = [[] for _ in inlets]
        rep.start()
        idle_since = None
        while True:
            any_data = False
            for k, inlet in enumerate(inlets):
                x, ts = inlet.pull_chunk(timeout=0.0, max_samples=4096)
                if ts:
                    now = pylsl.local_clock()
                    got_t[k].append(np.asarray(ts))
                    if rep.streams[k].channel_format == "string":
                        got_x[k].extend(x)
                    else:
                        got_x[k].append(np.asarray(x))
                    got_at[k].append(np.full(len(ts), now))
                    any_data = True
            done = rep.join(0)
            if any_data:
                idle_since = None
            elif done:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 0.5:
                    break
            if not any_data:
                time.sleep(0.0005)
    finally:
        rep.close()
    rows = []
    for k, s in enumerate(rep.streams):
        expected = int(np.sum(np.asarray(s.time_stamps) - rep.t0 <= rep.duration + 1e-12))
        t = np.concatenate(got_t[k]) + tcs[k] if got_t[k] else np.zeros(0)
        row = ReplayCheckRow(s.key, expected, len(t), True)
        if len(t) != expected:
            row.notes.append(f"{expected - len(t)} samples lost")
        n = min(len(t), expected)
        if n:
            back = rep.t0 + (t[:n] - rep.t_start) * rep.speed
            err = np.abs(back - np.asarray(s.time_stamps[:n])) * 1e3
            lag = (np.concatenate(got_at[k])[:n] - t[:n]) * 1e3
            row.err_median_ms = float(np.median(err))
            row.err_p99_ms = float(np.percentile(err, 99))
            row.err_max_ms = float(err.max())
            row.lag_median_ms = float(np.median(lag))
            row.lag_p99_ms = float(np.percentile(lag, 99))
            if s.channel_format == "string":
                want = [list(v) for v in s.time_series[:n]]
                row.values_ok = [list(v) for v in got_x[k][:n]] == want
            else:
                got = np.concatenate(got_x[k])[:n]
                row.values_ok = bool(np.array_equal(got, np.asarray(s.time_series)[:n]))
        rows.append(row)
    return rows
