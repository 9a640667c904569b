"""Readers for OpenSim's text formats: marker trajectories (.trc) and tables (.mot/.sto).

Both are tab-separated text with a short header. The readers return the numbers exactly as the
file states them (units, axes and signs untouched: the TRC is in its own lab frame, usually
OpenSim's X forward, Y up, Z right, in mm); converting to the project's frames is
`fusion.markers`' job. Every problem is raised as `OpenSimFileError` naming the file and the
1-based line, because a silently mis-parsed column shifts every angle downstream.

TRC layout (OpenSim / Motion Analysis "PathFileType 4"):

    line 1  PathFileType  4  (X/Y/Z)  <name>
    line 2  DataRate CameraRate NumFrames NumMarkers Units OrigDataRate ...
    line 3  their values
    line 4  Frame#  Time  <marker 1>  ""  ""  <marker 2> ...
    line 5  ""  ""  X1  Y1  Z1  X2 ...
    then (after optional blank lines) one row per frame: frame, time, x y z per marker.
    A missing marker sample is an empty field (or NaN); it is read as NaN.

MOT/STO layout: header lines up to `endheader` (the newer ones carry `inDegrees=yes|no`, the old
ones a sentence "Angles are in degrees."), then one line of column labels, then rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MotTable", "OpenSimFileError", "TrcData", "read_mot", "read_trc"]


class OpenSimFileError(ValueError):
    """A malformed OpenSim file; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int | None, what: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {what}")
        self.path = Path(path)
        self.line = line


@dataclass(frozen=True)
class TrcData:
    """Marker trajectories as stored: positions (T, M, 3) in the file's units and axes."""

    path: Path
    rate: float  # Hz (DataRate)
    units: str  # as written, e.g. "mm"
    markers: tuple[str, ...]
    frame: np.ndarray  # (T,) int frame numbers
    time: np.ndarray  # (T,) s
    xyz: np.ndarray  # (T, M, 3), NaN where a marker is missing

    def marker(self, name: str) -> np.ndarray:
        """One marker's trajectory (T, 3); a clear KeyError naming the file if absent."""
        try:
            return self.xyz[:, self.markers.index(name)]
        except ValueError:
            raise KeyError(
                f"{self.path}: no marker {name!r}; markers are {', '.join(self.markers)}"
            ) from None

    @property
    def metres_per_unit(self) -> float:
        """Scale from the file's length unit to metres (mm, cm, m)."""
        scale = {"mm": 1e-3, "cm": 1e-2, "m": 1.0, "meters": 1.0, "millimeters": 1e-3}
        try:
            return scale[self.units.strip().lower()]
        except KeyError:
            raise OpenSimFileError(
                self.path, 3, f"unknown length unit {self.units!r} (expected mm, cm or m)"
            ) from None


@dataclass(frozen=True)
class MotTable:
    """A .mot/.sto table: a time column plus named columns."""

    path: Path
    columns: tuple[str, ...]  # without "time"
    time: np.ndarray  # (T,)
    data: np.ndarray  # (T, len(columns))
    in_degrees: bool | None  # None when the header does not say
    header: dict[str, str]  # key=value lines of the header

    def column(self, name: str) -> np.ndarray:
        try:
            return self.data[:, self.columns.index(name)]
        except ValueError:
            raise KeyError(
                f"{self.path}: no column {name!r}; columns are {', '.join(self.columns)}"
            ) from None


def _float(path: Path, lineno: int, field: str, what: str) -> float:
    field = field.strip()
    if field == "":
        return math.nan
    try:
        return float(field)
    except ValueError:
        raise OpenSimFileError(path, lineno, f"{what}: {field!r} is not a number") from None


def read_trc(path: str | Path) -> TrcData:
    """Read a .trc marker file (see the module docstring for the layout)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise OpenSimFileError(path, None, f"cannot read: {e}") from e
    if len(lines) < 5:
        raise OpenSimFileError(path, len(lines), "too short for a TRC header (needs 5 lines)")
    if not lines[0].startswith("PathFileType"):
        raise OpenSimFileError(path, 1, f"not a TRC file: starts {lines[0][:40]!r}")
    keys = [k.strip() for k in lines[1].split()]
    values = [v.strip() for v in lines[2].split()]
    if len(values) < len(keys):
        raise OpenSimFileError(
            path, 3, f"header has {len(keys)} keys on line 2 but {len(values)} values"
        )
    head = dict(zip(keys, values, strict=False))
    for key in ("DataRate", "NumMarkers", "Units"):
        if key not in head:
            raise OpenSimFileError(path, 2, f"header lacks {key!r} (has {', '.join(keys)})")
    rate = _float(path, 3, head["DataRate"], "DataRate")
    try:
        n_markers = int(head["NumMarkers"])
    except ValueError:
        raise OpenSimFileError(
            path, 3, f"NumMarkers {head['NumMarkers']!r} is not an integer"
        ) from None
    names_line = lines[3].split("\t")
    if len(names_line) < 2 or names_line[0].strip() != "Frame#":
        raise OpenSimFileError(path, 4, "expected 'Frame#<TAB>Time<TAB><marker names>'")
    markers = tuple(n.strip() for n in names_line[2:] if n.strip())
    if len(markers) != n_markers:
        raise OpenSimFileError(
            path, 4, f"header says NumMarkers={n_markers} but line 4 names {len(markers)}"
        )
    if len(set(markers)) != len(markers):
        dup = sorted({m for m in markers if markers.count(m) > 1})
        raise OpenSimFileError(path, 4, f"duplicate marker names {dup}")
    n_cols = 2 + 3 * n_markers
    frames, times, rows = [], [], []
    for lineno, line in enumerate(lines[5:], start=6):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        # trailing empty fields are missing markers at the end of the row
        if len(fields) < n_cols:
            fields += [""] * (n_cols - len(fields))
        elif len(fields) > n_cols and any(f.strip() for f in fields[n_cols:]):
            raise OpenSimFileError(
                path, lineno, f"{len(fields)} fields, expected {n_cols} (2 + 3 × {n_markers})"
            )
        frame = _float(path, lineno, fields[0], "frame number")
        t = _float(path, lineno, fields[1], "time")
        if math.isnan(t):
            raise OpenSimFileError(path, lineno, "empty time field")
        frames.append(frame)
        times.append(t)
        rows.append([_float(path, lineno, f, "coordinate") for f in fields[2:n_cols]])
    if not rows:
        raise OpenSimFileError(path, len(lines), "no data rows")
    time = np.asarray(times)
    bad = np.flatnonzero(np.diff(time) <= 0)
    if bad.size:
        raise OpenSimFileError(
            path, None, f"time is not increasing at frame {int(frames[bad[0] + 1])}"
        )
    return TrcData(
        path=path,
        rate=rate,
        units=head["Units"],
        markers=markers,
        frame=np.asarray(frames).astype(int),
        time=time,
        xyz=np.asarray(rows, float).reshape(len(rows), n_markers, 3),
    )


def read_mot(path: str | Path) -> MotTable:
    """Read an OpenSim .mot or .sto table (header up to `endheader`, then labels and rows)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise OpenSimFileError(path, None, f"cannot read: {e}") from e
    try:
        end = next(i for i, line in enumerate(lines) if line.strip().lower() == "endheader")
    except StopIteration:
        raise OpenSimFileError(path, None, "no 'endheader' line") from None
    header: dict[str, str] = {}
    in_degrees: bool | None = None
    for line in lines[:end]:
        if "=" in line:
            k, v = line.split("=", 1)
            header[k.strip()] = v.strip()
        elif "angles are in degrees" in line.lower():
            in_degrees = True
        elif "angles are in radians" in line.lower():
            in_degrees = False
    if "inDegrees" in header:
        in_degrees = header["inDegrees"].lower() in ("yes", "true", "1")
    label_idx = next((i for i in range(end + 1, len(lines)) if lines[i].strip()), None)
    if label_idx is None:
        raise OpenSimFileError(path, end + 2, "no column labels after 'endheader'")
    labels = [c.strip() for c in lines[label_idx].split("\t") if c.strip()]
    if len(labels) < 2 or labels[0].lower() != "time":
        raise OpenSimFileError(
            path, label_idx + 1, f"first column label is {labels[:1]!r}, expected 'time'"
        )
    if len(set(labels)) != len(labels):
        dup = sorted({c for c in labels if labels.count(c) > 1})
        raise OpenSimFileError(path, label_idx + 1, f"duplicate column labels {dup}")
    rows = []
    for lineno, line in enumerate(lines[label_idx + 1 :], start=label_idx + 2):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != len(labels):
            raise OpenSimFileError(
                path, lineno, f"{len(fields)} values, expected {len(labels)} (one per label)"
            )
        rows.append([_float(path, lineno, f, labels[k]) for k, f in enumerate(fields)])
    if not rows:
        raise OpenSimFileError(path, len(lines), "no data rows")
    arr = np.asarray(rows, float)
    n_cols = header.get("nColumns", "")
    if n_cols.isdigit() and int(n_cols) != len(labels):
        raise OpenSimFileError(path, None, f"header nColumns={n_cols} but {len(labels)} labels")
    n_rows = header.get("nRows", "")
    if n_rows.isdigit() and int(n_rows) != len(rows):
        raise OpenSimFileError(path, None, f"header nRows={n_rows} but {len(rows)} data rows")
    return MotTable(
        path=path,
        columns=tuple(labels[1:]),
        time=arr[:, 0],
        data=arr[:, 1:],
        in_degrees=in_degrees,
        header=header,
    )
