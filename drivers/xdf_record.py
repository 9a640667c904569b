"""Record LSL streams to XDF, the way LabRecorder does, readable by pyxdf.

For each stream: a StreamHeader with the full info XML (desc included, as the inlet receives
it), Samples chunks with the stamps exactly as sent (no inlet post-processing: the reader
synchronises, pyxdf-style), a ClockOffset chunk right after connecting and then every
`offset_interval_s` (5 s, LabRecorder's interval) from `inlet.time_correction()` stored as
`(local_now − offset, offset)`, a Boundary chunk every `boundary_interval_s` (10 s), and on a
clean stop a final offset, a Boundary and a StreamFooter (first/last stamp, sample count,
clock offsets). Chunks go to the OS one `write` each (`drivers.xdf_writer`), so a recorder
that is killed leaves a file that pyxdf and `drivers.xdf_reader` read up to its last chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl

from drivers.background import BackgroundWorker
from drivers.selectors import StreamSelector, resolve
from drivers.xdf_writer import XdfWriter

__all__ = ["XdfRecorder", "find_streams"]

log = logging.getLogger(__name__)


def find_streams(
    selectors: Sequence[StreamSelector] | None, timeout: float = 2.0
) -> list[pylsl.StreamInfo]:
    """Streams to record: those matching any selector (all visible when none), one per uid.

    Raises LookupError naming every selector that matched nothing.
    """
    if not selectors:
        found = pylsl.resolve_streams(wait_time=timeout)
        if not found:
            raise LookupError(f"no LSL stream visible within {timeout} s")
        return list({i.uid(): i for i in found}.values())
    matched = resolve(list(selectors), timeout)
    missing = [s.describe() for s, infos in matched.items() if not infos]
    if missing:
        raise LookupError(f"no LSL stream matches {', '.join(missing)} within {timeout} s")
    uniq: dict[str, pylsl.StreamInfo] = {}
    for infos in matched.values():
        for i in infos:
            uniq.setdefault(i.uid(), i)
    return list(uniq.values())


@dataclass
class _Rec:
    stream_id: int
    inlet: pylsl.StreamInlet
    name: str
    string: bool
    lost: bool = False


class XdfRecorder(BackgroundWorker):
    """Record `infos` into `path` until `stop()` or `duration_s`; `start()` runs it in a thread."""

    def __init__(
        self,
        path: str | Path,
        infos: Sequence[pylsl.StreamInfo],
        *,
        duration_s: float | None = None,
        offset_interval_s: float = 5.0,
        boundary_interval_s: float = 10.0,
        poll_s: float = 0.005,
        open_timeout_s: float = 5.0,
    ) -> None:
        if not infos:
            raise ValueError("XdfRecorder: no streams to record")
        self.path = Path(path)
        self.infos = list(infos)
        self.duration_s = duration_s
        self.offset_interval_s = offset_interval_s
        self.boundary_interval_s = boundary_interval_s
        self.poll_s = poll_s
        self.open_timeout_s = open_timeout_s
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.counts: dict[str, int] = {}

    def start(self) -> None:
        """Record in a background thread; returns once every stream is connected."""
        self._thread = threading.Thread(target=self._run_safe, name="xdf-record", daemon=True)
        self._thread.start()
        self._ready.wait(self.open_timeout_s * (len(self.infos) + 1))
        if self.error is not None:
            raise self.error

    def _run_safe(self) -> None:
        try:
            self.run()
        except BaseException as e:
            self.error = e
            self._ready.set()

    def run(self) -> None:
        """Record (blocking) until stopped or the duration has passed."""
        recs: list[_Rec] = []
        for k, info in enumerate(self.infos, start=1):
            inlet = pylsl.StreamInlet(info, max_buflen=360, recover=True, processing_flags=0)
            try:
                inlet.open_stream(timeout=self.open_timeout_s)
                full = inlet.info(timeout=self.open_timeout_s)
            except (pylsl.util.TimeoutError, pylsl.util.LostError) as e:
                raise ConnectionError(
                    f"{self.path}: cannot open LSL stream {info.name()!r} "
                    f"(type {info.type()!r}, source_id {info.source_id()!r}): {e}"
                ) from e
            recs.append(
                _Rec(
                    k,
                    inlet,
                    f"{full.name()}/{full.type()}",
                    full.channel_format() == pylsl.cf_string,
                )
            )
            self.infos[k - 1] = full
        with XdfWriter(self.path) as w:
            for r, full in zip(recs, self.infos, strict=True):
                w.add_stream(r.stream_id, full.as_xml())
            for r in recs:
                self._offset(w, r)
            self._ready.set()
            t_begin = time.monotonic()
            next_offset = t_begin + self.offset_interval_s
            next_boundary = t_begin + self.boundary_interval_s
            while not self._stop.is_set():
                got = self._pull_all(w, recs)
                now = time.monotonic()
                if now >= next_offset:
                    for r in recs:
                        self._offset(w, r)
                    next_offset = now + self.offset_interval_s
                if now >= next_boundary:
                    w.write_boundary()
                    next_boundary = now + self.boundary_interval_s
                if self.duration_s is not None and now - t_begin >= self.duration_s:
                    break
                if not got:
                    self._stop.wait(self.poll_s)
            # Clean stop: drain what has arrived, a last offset, then footers (on close).
            while self._pull_all(w, recs):
                pass
            for r in recs:
                self._offset(w, r)
                self.counts[r.name] = w.sample_count(r.stream_id)
        for r in recs:
            r.inlet.close_stream()

    def _pull_all(self, w: XdfWriter, recs: list[_Rec]) -> bool:
        got = False
        for r in recs:
            if r.lost:
                continue
            try:
                x, ts = r.inlet.pull_chunk(timeout=0.0, max_samples=4096)
            except pylsl.util.LostError:
                log.warning("%s: stream %s lost", self.path, r.name)
                r.lost = True
                continue
            if ts:
                w.write_samples(r.stream_id, np.asarray(ts), x if r.string else np.asarray(x))
                got = True
        return got

    def _offset(self, w: XdfWriter, r: _Rec) -> None:
        if r.lost:
            return
        try:
            offset = r.inlet.time_correction(timeout=2.0)
        except (pylsl.util.TimeoutError, pylsl.util.LostError) as e:
            log.warning("%s: no clock offset for %s (%s)", self.path, r.name, e)
            return
        now = pylsl.local_clock()
        w.write_clock_offset(r.stream_id, now - offset, offset)
