"""Read XDF recordings with pyxdf, with clear errors and the raw view the sync code needs.

`load_xdf(path)` returns an `XdfRecording`: pyxdf's streams (with the timestamp processing
asked for: by default `synchronize_clocks`, `dejitter_timestamps` and `handle_clock_resets`,
pyxdf 1.17's defaults and algorithms), plus for each stream the raw stamps as recorded (captured
through pyxdf's `on_chunk` hook before any processing), the exact StreamHeader XML, and the
file's chunk order (`arrival`) so `fusion.align.align_recording(mode="online")` can replay the
recording as the live pipeline would have seen it.

Bad files: before pyxdf runs, a light scan walks the chunk structure (lengths, tags, stream
ids). A file that ends inside a chunk — a recorder killed mid-write — is read up to its last
complete chunk (a warning says so). Anything pyxdf cannot read raises `XdfFormatError` naming
the file and what is wrong (the scan's findings, with byte offsets); what pyxdf recovered
from (it skips to the next Boundary chunk) is kept and listed in `XdfRecording.warnings`.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyxdf

from drivers.selectors import StreamSelector
from fusion.dejitter import stream_can_drop_samples

__all__ = [
    "BOUNDARY_SIGNATURE",
    "ChunkScan",
    "XdfFormatError",
    "XdfRecording",
    "XdfStream",
    "header_matches",
    "load_xdf",
    "parse_selector",
    "scan_chunks",
    "select_streams",
]

log = logging.getLogger(__name__)

MAGIC = b"XDF:"
#: The 16 bytes of every Boundary chunk (XDF 1.0 spec).
BOUNDARY_SIGNATURE = bytes.fromhex("43a546dccbf5410fb30ed5467383cbe4")
TAG_NAMES = {
    1: "FileHeader",
    2: "StreamHeader",
    3: "Samples",
    4: "ClockOffset",
    5: "Boundary",
    6: "StreamFooter",
}
_MIN_LEN = {1: 2, 2: 6, 3: 7, 4: 22, 5: 18, 6: 6}
_FORMATS = {"int8", "int16", "int32", "int64", "float32", "double64", "string"}


class XdfFormatError(Exception):
    """The file is not a readable XDF recording; the message says which file and why."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# ---- structure scan ------------------------------------------------------------------------


@dataclass
class ChunkScan:
    """What a structural walk over the file found."""

    size: int
    chunks: list[tuple[int, int, int | None, int]] = field(default_factory=list)
    # (byte offset, tag, stream id or None, n samples for tag 3 else 0)
    headers: dict[int, str] = field(default_factory=dict)  # stream id -> StreamHeader XML
    problems: list[str] = field(default_factory=list)
    truncated_at: int | None = None  # offset of a chunk that runs past the end of the file

    @property
    def valid_end(self) -> int:
        return self.truncated_at if self.truncated_at is not None else self.size


def _varlen(buf: io.BufferedIOBase | io.BytesIO, pos: int) -> tuple[int, int]:
    """(value, bytes used) of an XDF variable-length int at pos; ValueError if malformed."""
    buf.seek(pos)
    nb = buf.read(1)
    if not nb:
        raise EOFError
    width = nb[0]
    fmt = {1: "<B", 4: "<I", 8: "<Q"}.get(width)
    if fmt is None:
        raise ValueError(
            f"invalid variable-length integer prefix 0x{width:02x} (must be 1, 4 or 8)"
        )
    raw = buf.read(width)
    if len(raw) < width:
        raise EOFError
    return struct.unpack(fmt, raw)[0], 1 + width


def scan_chunks(f: io.BufferedIOBase | io.BytesIO, size: int) -> ChunkScan:
    """Walk chunk headers from after the magic; never reads chunk payloads except headers."""
    scan = ChunkScan(size=size)
    pos = len(MAGIC)
    while pos < size:
        try:
            length, used = _varlen(f, pos)
        except EOFError:
            scan.truncated_at = pos
            break
        except ValueError as e:
            scan.problems.append(f"byte {pos}: {e}")
            nxt = _find_boundary(f, pos + 1, size)
            if nxt is None:
                break
            scan.problems.append(f"byte {pos}: skipped to the Boundary chunk ending at byte {nxt}")
            pos = nxt
            continue
        body = pos + used
        if body + length > size:
            scan.truncated_at = pos
            break
        if length < 2:
            scan.problems.append(
                f"byte {pos}: chunk declares length {length}, below the 2-byte tag"
            )
            pos = body + length
            continue
        f.seek(body)
        tag = struct.unpack("<H", f.read(2))[0]
        name = TAG_NAMES.get(tag)
        if name is None:
            scan.problems.append(f"byte {pos}: unknown chunk tag {tag} (skipped)")
            pos = body + length
            continue
        if length < _MIN_LEN[tag]:
            scan.problems.append(
                f"byte {pos}: {name} chunk declares length {length}, "
                f"less than the {_MIN_LEN[tag]} bytes it needs"
            )
            pos = body + length
            continue
        sid = None
        nsamp = 0
        if tag in (2, 3, 4, 6):
            sid = struct.unpack("<I", f.read(4))[0]
            if tag == 2:
                scan.headers.setdefault(sid, f.read(length - 6).decode("utf-8", "replace"))
            elif sid not in scan.headers:
                scan.problems.append(f"byte {pos}: {name} chunk for stream {sid} before its header")
            if tag == 3:
                try:
                    nsamp, _ = _varlen(f, body + 6)
                except (ValueError, EOFError) as e:
                    scan.problems.append(f"byte {pos}: Samples chunk with bad sample count ({e})")
        elif tag == 5 and f.read(16) != BOUNDARY_SIGNATURE:
            scan.problems.append(f"byte {pos}: Boundary chunk with a wrong signature")
        scan.chunks.append((pos, tag, sid, nsamp))
        pos = body + length
    return scan


def _find_boundary(f: io.BufferedIOBase | io.BytesIO, start: int, size: int) -> int | None:
    block = 1 << 20
    pos = start
    while pos < size:
        f.seek(pos)
        data = f.read(block + len(BOUNDARY_SIGNATURE))
        hit = data.find(BOUNDARY_SIGNATURE)
        if hit >= 0:
            return pos + hit + len(BOUNDARY_SIGNATURE)
        pos += block
    return None


# ---- streams -------------------------------------------------------------------------------


@dataclass
class XdfStream:
    """One stream of a recording. Arrays are (samples, channels); strings are lists of lists."""

    stream_id: int
    name: str
    type: str
    source_id: str
    channel_count: int
    channel_format: str
    nominal_srate: float
    effective_srate: float
    can_drop_samples: bool
    info: dict[str, Any]  # pyxdf's header dict (values are lists of strings)
    header_xml: str  # the StreamHeader chunk's XML, as written by the recorder
    footer: dict[str, Any] | None
    time_series: Any
    time_stamps: np.ndarray  # processed as asked (pyxdf): synced + dejittered by default
    raw_time_stamps: np.ndarray  # as recorded, on the sender's clock
    clock_times: np.ndarray
    clock_values: np.ndarray
    segments: list[tuple[int, int]]
    clock_segments: list[tuple[int, int]]

    @property
    def key(self) -> str:
        """Unique within a recording: names repeat (MuseLSL2 names all four streams "Muse")."""
        return f"{self.name}/{self.type}#{self.stream_id}"

    def __len__(self) -> int:
        return len(self.time_stamps)

    def raw(self) -> XdfStream:
        """This stream with its stamps as recorded (for `fusion.align.align_recording`)."""
        return replace(self, time_stamps=self.raw_time_stamps, segments=[], clock_segments=[])

    def desc(self) -> ET.Element | None:
        """The header's <desc> element (channel labels, units, synchronization, ...)."""
        try:
            return ET.fromstring(self.header_xml).find("desc")
        except ET.ParseError:
            return None

    def channel_labels(self) -> list[str] | None:
        d = self.desc()
        if d is None:
            return None
        labels = [ch.findtext("label") or "" for ch in d.iterfind("channels/channel")]
        return labels if len(labels) == self.channel_count else None


@dataclass
class XdfRecording:
    path: Path
    header: dict[str, Any] | None
    streams: list[XdfStream]
    warnings: list[str]
    #: file order of Samples/ClockOffset chunks: (index into streams, "samples"|"offset", n)
    arrival: list[tuple[int, str, int]] | None
    truncated: bool = False

    def by_key(self) -> dict[str, XdfStream]:
        return {s.key: s for s in self.streams}


# ---- selection -----------------------------------------------------------------------------


def parse_selector(text: str) -> StreamSelector:
    """`name=Muse,type=ACC`, `source_id=abc`, or a bare `Muse` (a name) → StreamSelector."""
    text = text.strip()
    if not text:
        raise ValueError("empty stream selector")
    if "=" not in text:
        return StreamSelector(name=text)
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in ("name", "type", "source_id"):
            raise ValueError(
                f"bad stream selector {text!r}: use name=..., type=..., source_id=... "
                "separated by commas"
            )
        fields[key] = value.strip()
    return StreamSelector(**fields)


class _HeaderView:
    """Lets a sibling `StreamSelector.matches` (written for pylsl.StreamInfo) read a header."""

    def __init__(self, name: str, type_: str, source_id: str) -> None:
        self._v = (name, type_, source_id)

    def name(self) -> str:
        return self._v[0]

    def type(self) -> str:
        return self._v[1]

    def source_id(self) -> str:
        return self._v[2]


def header_matches(selector: StreamSelector, name: str, type_: str, source_id: str) -> bool:
    return selector.matches(_HeaderView(name, type_, source_id))  # type: ignore[arg-type]


def select_streams(
    streams: Iterable[XdfStream], selectors: Sequence[StreamSelector] | None
) -> list[XdfStream]:
    """Streams matching any selector (all when none given), in file order."""
    streams = list(streams)
    if not selectors:
        return streams
    return [
        s
        for s in streams
        if any(header_matches(sel, s.name, s.type, s.source_id) for sel in selectors)
    ]


def _header_fields(xml: str) -> tuple[str, str, str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return "", "", ""
    return (
        root.findtext("name") or "",
        root.findtext("type") or "",
        root.findtext("source_id") or "",
    )


# ---- loading -------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_pyxdf_lock = threading.Lock()


def load_xdf(
    path: str | Path,
    select: Sequence[StreamSelector | str] | None = None,
    *,
    synchronize_clocks: bool = True,
    dejitter_timestamps: bool = True,
    handle_clock_resets: bool = True,
) -> XdfRecording:
    """Load an XDF file (see module docstring). `select`: selectors or selector strings."""
    path = Path(path)
    if not path.exists():
        raise XdfFormatError(path, "file does not exist")
    if not path.is_file():
        raise XdfFormatError(path, "not a regular file")
    selectors = [parse_selector(s) if isinstance(s, str) else s for s in (select or [])]
    warnings: list[str] = []
    with path.open("rb") as f:
        magic = f.read(4)
        if magic != MAGIC:
            raise XdfFormatError(path, f"not an XDF file: starts with {magic!r}, not {MAGIC!r}")
        size = path.stat().st_size
        scan = scan_chunks(f, size)
        source: Path | io.BytesIO = path
        if scan.truncated_at is not None:
            warnings.append(
                f"file ends inside the chunk at byte {scan.truncated_at} "
                f"({size - scan.truncated_at} bytes dropped; a recorder killed mid-write?)"
            )
            f.seek(0)
            source = io.BytesIO(f.read(scan.truncated_at))
    warnings.extend(scan.problems)
    if not any(tag == 1 for _, tag, _, _ in scan.chunks) and not scan.problems:
        raise XdfFormatError(path, "no FileHeader chunk")

    ids = None
    if selectors:
        ids = [
            sid
            for sid, xml in scan.headers.items()
            if any(header_matches(sel, *_header_fields(xml)) for sel in selectors)
        ]
        if not ids:
            have = ", ".join(
                "name={!r} type={!r} source_id={!r}".format(*_header_fields(x))
                for x in scan.headers.values()
            )
            raise ValueError(
                f"{path}: no stream matches {' or '.join(s.describe() for s in selectors)}; "
                f"streams in the file: {have or 'none'}"
            )

    raw: dict[int, list[np.ndarray]] = {}
    order: list[int] = []

    def on_chunk(values: Any, stamps: np.ndarray, info: Any, stream_id: int) -> Any:
        raw.setdefault(stream_id, []).append(np.array(stamps, dtype=float))
        order.append(stream_id)
        return values, stamps, info

    cap = _Capture()
    pl = logging.getLogger("pyxdf.pyxdf")
    with _pyxdf_lock:
        pl.addHandler(cap)
        saved = pl.propagate
        pl.propagate = False
        try:
            streams, header = pyxdf.load_xdf(
                source,
                select_streams=ids,
                on_chunk=on_chunk,
                synchronize_clocks=synchronize_clocks,
                dejitter_timestamps=dejitter_timestamps,
                handle_clock_resets=handle_clock_resets,
            )
        except Exception as e:  # pyxdf raises bare ValueError/struct.error/ParseError/KeyError
            found = "; ".join(scan.problems) or "no structural problem found before the failure"
            raise XdfFormatError(
                path, f"pyxdf cannot read it ({type(e).__name__}: {e}); structure scan: {found}"
            ) from e
        finally:
            pl.removeHandler(cap)
            pl.propagate = saved
    for w in warnings:  # structural findings: worth a warning
        log.warning("%s: %s", path, w)
    for m in cap.messages:  # pyxdf's own notices (recoveries, benign segment notes)
        warnings.append(m.splitlines()[0])
        log.info("%s: pyxdf: %s", path, m.splitlines()[0])

    out: list[XdfStream] = []
    for s in streams:
        try:
            out.append(_make_stream(s, scan, raw))
        except (KeyError, IndexError, ValueError, TypeError) as e:
            sid = s.get("info", {}).get("stream_id", "?")
            raise XdfFormatError(path, f"stream {sid}: malformed header ({e})") from e
    for st in out:
        if st.channel_count < 1:
            warnings.append(f"stream {st.key}: declares {st.channel_count} channels")
    return XdfRecording(
        path=path,
        header=header,
        streams=out,
        warnings=warnings,
        arrival=_arrival(scan, out, order),
        truncated=scan.truncated_at is not None,
    )


def _first(info: dict[str, Any], key: str, default: str = "") -> str:
    v = info.get(key)
    if isinstance(v, list) and v:
        return v[0] if isinstance(v[0], str) else default
    return default


def _make_stream(s: dict[str, Any], scan: ChunkScan, raw: dict[int, list[np.ndarray]]) -> XdfStream:
    info = s["info"]
    sid = int(info["stream_id"])
    fmt = _first(info, "channel_format")
    if fmt not in _FORMATS:
        raise ValueError(f"channel_format {fmt!r} is not one of {sorted(_FORMATS)}")
    ts = np.asarray(s["time_stamps"], dtype=float)
    rs = np.concatenate(raw[sid]) if raw.get(sid) else np.zeros(0)
    rs = rs[: len(ts)]  # pyxdf drops a trailing sample on the pylsl#67 bug; follow it
    series = s["time_series"]
    if fmt != "string":
        series = np.asarray(series).reshape(len(ts), -1) if len(ts) else np.asarray(series)
    xml = scan.headers.get(sid) or _dict_to_xml(
        "info", {k: v for k, v in info.items() if k in _XML_KEYS}
    )
    return XdfStream(
        stream_id=sid,
        name=_first(info, "name"),
        type=_first(info, "type"),
        source_id=_first(info, "source_id"),
        channel_count=int(_first(info, "channel_count", "0")),
        channel_format=fmt,
        nominal_srate=float(_first(info, "nominal_srate", "0")),
        effective_srate=float(info.get("effective_srate", 0.0) or 0.0),
        can_drop_samples=stream_can_drop_samples(info),
        info=info,
        header_xml=xml,
        footer=s.get("footer"),
        time_series=series,
        time_stamps=ts,
        raw_time_stamps=rs,
        clock_times=np.asarray(s.get("clock_times", []), dtype=float),
        clock_values=np.asarray(s.get("clock_values", []), dtype=float),
        segments=list(info.get("segments", [])),
        clock_segments=list(info.get("clock_segments", [])),
    )


_XML_KEYS = {
    "name",
    "type",
    "channel_count",
    "nominal_srate",
    "channel_format",
    "source_id",
    "version",
    "created_at",
    "uid",
    "session_id",
    "hostname",
    "desc",
}


def _dict_to_xml(tag: str, d: Any) -> str:
    """Rebuild header XML from pyxdf's dict form (used only if the raw header is missing)."""

    def build(parent: ET.Element, key: str, val: Any) -> None:
        for item in val if isinstance(val, list) else [val]:
            el = ET.SubElement(parent, key)
            if isinstance(item, dict):
                for k, v in item.items():
                    build(el, k, v)
            elif item is not None:
                el.text = str(item)

    root = ET.Element(tag)
    for k, v in d.items():
        build(root, k, v)
    return ET.tostring(root, encoding="unicode")


def _arrival(
    scan: ChunkScan, streams: list[XdfStream], order: list[int]
) -> list[tuple[int, str, int]] | None:
    """File order of sample and offset chunks, or None if the scan and pyxdf disagree."""
    index = {s.stream_id: i for i, s in enumerate(streams)}
    events: list[tuple[int, str, int]] = []
    seen: dict[int, int] = {}
    for _, tag, sid, n in scan.chunks:
        if sid not in index:
            continue
        if tag == 3:
            events.append((index[sid], "samples", n))
            seen[sid] = seen.get(sid, 0) + 1
        elif tag == 4:
            events.append((index[sid], "offset", 1))
    counts: dict[int, int] = {}
    for sid in order:
        counts[sid] = counts.get(sid, 0) + 1
    if any(seen.get(s.stream_id, 0) != counts.get(s.stream_id, 0) for s in streams):
        return None
    # Trim to what pyxdf kept (it may drop a trailing sample and clock offset, pylsl#67).
    left_s = {i: len(s.raw_time_stamps) for i, s in enumerate(streams)}
    left_o = {i: len(s.clock_times) for i, s in enumerate(streams)}
    trimmed = []
    for i, kind, n in events:
        if kind == "samples":
            n = min(n, left_s[i])
            left_s[i] -= n
            if n:
                trimmed.append((i, kind, n))
        elif left_o[i] > 0:
            left_o[i] -= 1
            trimmed.append((i, kind, 1))
    return trimmed
