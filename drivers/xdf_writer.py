"""Write XDF 1.0 files (https://github.com/sccn/xdf/wiki/Specifications) that pyxdf reads.

Layout: the magic "XDF:", then chunks `[NumLengthBytes][Length][Tag][Content]` where the
length is a variable-length int (1, 4 or 8 bytes, little endian) counting tag + content.
Tags: FileHeader=1, StreamHeader=2, Samples=3, ClockOffset=4, Boundary=5, StreamFooter=6;
all but 1 and 5 start their content with a 4-byte stream id. A sample is
`[TimeStampBytes 0|8][TimeStamp f64]` then its values: little-endian numbers for int8 … double64,
or per channel a variable-length byte count and UTF-8 bytes for strings. Every sample is written
with its timestamp (LabRecorder omits some; pyxdf reads both).

Every chunk is encoded in memory and handed to the OS in one `os.write` on an unbuffered file
descriptor, so a recorder that is killed (SIGKILL) leaves a file that ends at a chunk boundary
(or, at worst, inside the last chunk, which `drivers.xdf_reader` drops with a warning).
"""

from __future__ import annotations

import datetime as _dt
import os
import struct
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

__all__ = ["BOUNDARY_SIGNATURE", "XdfWriter", "varlen"]

BOUNDARY_SIGNATURE = bytes.fromhex("43a546dccbf5410fb30ed5467383cbe4")
_DTYPES = {
    "int8": "<i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "float32": "<f4",
    "double64": "<f8",
}


def varlen(n: int) -> bytes:
    """XDF variable-length integer: a width byte (1, 4 or 8) then the value."""
    if n < 0:
        raise ValueError(f"varlen: negative length {n}")
    if n < 1 << 8:
        return b"\x01" + struct.pack("<B", n)
    if n < 1 << 32:
        return b"\x04" + struct.pack("<I", n)
    return b"\x08" + struct.pack("<Q", n)


def _chunk(tag: int, content: bytes) -> bytes:
    return varlen(len(content) + 2) + struct.pack("<H", tag) + content


@dataclass
class _Stream:
    channel_count: int
    channel_format: str
    sample_dtype: np.dtype | None
    first: float = np.nan
    last: float = np.nan
    count: int = 0
    offsets: list[tuple[float, float]] = field(default_factory=list)
    closed: bool = False


class XdfWriter:
    """An XDF file being written; thread-safe (one lock around each chunk)."""

    def __init__(
        self, path: str | Path, *, file_info: dict[str, str] | None = None, fsync: bool = False
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        info = {
            "version": "1.0",
            "datetime": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "writer": "gait-stream",
        }
        info.update(file_info or {})
        body = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in info.items())
        self._write(b"XDF:" + _chunk(1, f'<?xml version="1.0"?><info>{body}</info>'.encode()))

    # ---- low level ---------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path}: XDF writer is closed")
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self._fsync:
                os.fsync(self._fd)

    def _stream(self, stream_id: int) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise KeyError(f"{self.path}: stream {stream_id} has no StreamHeader yet") from None

    # ---- chunks ------------------------------------------------------------------------
    def add_stream(self, stream_id: int, header_xml: str) -> None:
        """Write a StreamHeader chunk; `header_xml` is an LSL `<info>` document."""
        if stream_id in self._streams:
            raise ValueError(f"{self.path}: stream {stream_id} already has a header")
        try:
            root = ET.fromstring(header_xml)
            count = int(root.findtext("channel_count") or "")
            fmt = (root.findtext("channel_format") or "").strip()
        except (ET.ParseError, ValueError) as e:
            raise ValueError(f"stream {stream_id}: header XML is not a valid LSL info ({e})") from e
        if fmt != "string" and fmt not in _DTYPES:
            raise ValueError(f"stream {stream_id}: unsupported channel_format {fmt!r}")
        if count < 1:
            raise ValueError(f"stream {stream_id}: channel_count must be >= 1, got {count}")
        dtype = None
        if fmt != "string":
            dtype = np.dtype([("tb", "u1"), ("ts", "<f8"), ("v", _DTYPES[fmt], (count,))])
        self._streams[stream_id] = _Stream(count, fmt, dtype)
        self._write(_chunk(2, struct.pack("<I", stream_id) + header_xml.encode("utf-8")))

    def write_samples(self, stream_id: int, timestamps: Sequence[float], values: Any) -> None:
        """A Samples chunk: `values` is (n, channels) numbers or n lists of strings."""
        s = self._stream(stream_id)
        ts = np.asarray(timestamps, dtype=float).ravel()
        n = len(ts)
        if n == 0:
            return
        if s.sample_dtype is not None:
            x = np.asarray(values)
            if x.ndim == 1 and s.channel_count == 1:
                x = x[:, None]
            if x.shape != (n, s.channel_count):
                raise ValueError(
                    f"stream {stream_id}: samples of shape {x.shape}, expected ({n}, {s.channel_count})"
                )
            rec = np.empty(n, dtype=s.sample_dtype)
            rec["tb"] = 8
            rec["ts"] = ts
            rec["v"] = x
            payload = rec.tobytes()
        else:
            if len(values) != n:
                raise ValueError(f"stream {stream_id}: {n} timestamps but {len(values)} samples")
            parts = []
            for t, sample in zip(ts, values, strict=True):
                if isinstance(sample, str):
                    sample = [sample]
                if len(sample) != s.channel_count:
                    raise ValueError(
                        f"stream {stream_id}: string sample with {len(sample)} values, "
                        f"expected {s.channel_count}"
                    )
                parts.append(b"\x08" + struct.pack("<d", t))
                for v in sample:
                    b = str(v).encode("utf-8")
                    parts.append(varlen(len(b)) + b)
            payload = b"".join(parts)
        self._write(_chunk(3, struct.pack("<I", stream_id) + varlen(n) + payload))
        if s.count == 0:
            s.first = float(ts[0])
        s.last = float(ts[-1])
        s.count += n

    def write_clock_offset(self, stream_id: int, collection_time: float, offset: float) -> None:
        """A ClockOffset chunk: `collection_time` on the sender's clock (= local now − offset)."""
        s = self._stream(stream_id)
        self._write(_chunk(4, struct.pack("<Idd", stream_id, collection_time, offset)))
        s.offsets.append((float(collection_time), float(offset)))

    def write_boundary(self) -> None:
        """A Boundary chunk: a resync point for readers of damaged files."""
        self._write(_chunk(5, BOUNDARY_SIGNATURE))

    def write_footer(self, stream_id: int) -> None:
        """The StreamFooter chunk, from what was written for this stream."""
        s = self._stream(stream_id)
        if s.closed:
            return
        offs = "".join(
            f"<offset><time>{t!r}</time><value>{v!r}</value></offset>" for t, v in s.offsets
        )
        first = 0.0 if s.count == 0 else s.first
        last = 0.0 if s.count == 0 else s.last
        xml = (
            '<?xml version="1.0"?><info>'
            f"<first_timestamp>{first!r}</first_timestamp>"
            f"<last_timestamp>{last!r}</last_timestamp>"
            f"<sample_count>{s.count}</sample_count>"
            f"<clock_offsets>{offs}</clock_offsets></info>"
        )
        self._write(_chunk(6, struct.pack("<I", stream_id) + xml.encode()))
        s.closed = True

    def sample_count(self, stream_id: int) -> int:
        return self._stream(stream_id).count

    def close(self, *, footers: bool = True) -> None:
        """Write the footers still missing (unless told not to) and close the file."""
        if self._fd is None:
            return
        if footers:
            self.write_boundary()
            for sid in self._streams:
                self.write_footer(sid)
        with self._lock:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> XdfWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
