"""Sharded synthetic datasets: many `generate_sequence` calls written to disk, and read back.

Layout (docs/dataset_format.md has every array): `manifest.json` (every parameter, the seed
rule, names, array descriptions, versions, per-shard SHA-256) and `shard-NNNNN.npz`, each
holding `sequences_per_shard` sequences concatenated along the frame axis with offsets.

Determinism: sequence i is a pure function of (seed, i) — its parameters are drawn from
`SeedSequence([seed, i, MIX])` and its data from `generate_sequence(params, sequence_seed(seed,
i))` — and shards are written in sequence order by the parent process, so the files are
byte-identical for a seed whatever the number of worker processes. The .npz files are plain
(uncompressed) zip archives written with fixed timestamps, so np.load reads them and equal
arrays give equal bytes. Workers run with one BLAS/OpenMP thread each.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from fusion.activities import ACTIVITIES, PATHOLOGIES
from fusion.normative import SPEEDS
from fusion.skeleton import ANGLES, GAIT_EVENTS, IMU_CHANNELS, KEYPOINTS, SEGMENTS
from fusion.synth import BODY_FIELDS, STRIDE_FIELDS, SequenceParams, generate_sequence

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DatasetReader",
    "DatasetSpec",
    "sequence_params",
    "sequence_seed",
    "write_dataset",
]

FORMAT = "gait-stream-synth"
FORMAT_VERSION = 1
_MIX = 0x313E  # salt of the per-sequence parameter draw

#: (per, unit, description) for every array in a shard. `per`: frame arrays are concatenated
#: along axis 0 (bounds in frame_offsets); sequence arrays are stacked (axis 0 = sequence);
#: event/stride arrays are concatenated (bounds in event_offsets / stride_offsets).
ARRAYS: dict[str, tuple[str, str, str]] = {
    "t": ("frame", "s", "time since the sequence start, model rate"),
    "imu": (
        "frame",
        "rad/s, m/s^2",
        "13 IMUs (SEGMENTS) x IMU_CHANNELS, sensor frame, noisy; NaN where lost",
    ),
    "imu_mask": ("frame", "bool", "True where the IMU sample was received"),
    "keypoints3d": (
        "frame",
        "m",
        "true joint centres (KEYPOINTS) minus the root (mid-hip), global axes",
    ),
    "keypoints3d_noisy": (
        "frame",
        "m",
        "joint centres with jitter/high-peak/bias noise minus their own mid-hip",
    ),
    "keypoints2d": ("frame", "px, px, 1", "per camera: x, y, confidence; (0, 0, 0) = not detected"),
    "keypoints2d_mask": ("frame", "bool", "per camera: False where the frame was lost"),
    "angles": ("frame", "deg", "true clinical joint angles (ANGLES)"),
    "rotations": ("frame", "1", "true global segment orientations (SEGMENTS), 3x3"),
    "root": ("frame", "m", "true mid-hip position, global"),
    "heading": ("frame", "rad", "direction of progression (unwrapped)"),
    "rig_origin": (
        "frame",
        "m",
        "position of the camera rig (follows the smoothed root); camera c sees X - rig_origin",
    ),
    "stance": ("frame", "1", "(left, right): 1 stance, 0 swing, -1 unknown"),
    "activity": ("frame", "index", "index into names.activities, -1 unlabelled"),
    "cam_K": ("sequence", "px", "camera intrinsics (C, 3, 3)"),
    "cam_R": ("sequence", "1", "camera rotation, rig frame -> camera (C, 3, 3)"),
    "cam_t": ("sequence", "m", "camera translation, rig frame -> camera (C, 3)"),
    "imu_position": ("sequence", "m", "sensor position on its segment (segment frame)"),
    "imu_mounting": (
        "sequence",
        "1",
        "sensor axes in the segment frame, misplacement included (13, 3, 3)",
    ),
    "body": ("sequence", "m, 1", "BodyShape fields (names.body_fields)"),
    "event_t": ("event", "s", "gait event time since the sequence start"),
    "event_kind": ("event", "index", "index into names.gait_events"),
    "strides": (
        "stride",
        "mixed",
        "per stride: names.stride_fields (times in s since the sequence start)",
    ),
}
_FRAME = [k for k, v in ARRAYS.items() if v[0] == "frame"]
_SEQ = [k for k, v in ARRAYS.items() if v[0] == "sequence"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset holds: how much, and how sequence parameters are drawn."""

    hours: float
    seed: int = 0
    sequence_seconds: float = 20.0
    sequences_per_shard: int = 16
    activities: tuple[str, ...] = ACTIVITIES  # drawn uniformly
    pathology_fraction: float = 0.3  # of sequences get a pathology (drawn uniformly)
    pathologies: tuple[str, ...] = PATHOLOGIES
    speeds: tuple[str, ...] = SPEEDS  # drawn uniformly
    base: SequenceParams = field(default_factory=SequenceParams)  # all other parameters

    def __post_init__(self) -> None:
        o = "DatasetSpec"
        h = self.hours
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not np.isfinite(h) or h <= 0:
            raise ValueError(f"{o}.hours={h!r}: must be a number of hours > 0")
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"{o}.seed={s!r}: must be a whole number >= 0")
        n = self.sequences_per_shard
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{o}.sequences_per_shard={n!r}: must be a whole number >= 1")
        if not 0 <= self.pathology_fraction <= 1:
            raise ValueError(f"{o}.pathology_fraction={self.pathology_fraction!r}: not in [0, 1]")
        for name, allowed in (
            ("activities", ACTIVITIES),
            ("pathologies", PATHOLOGIES),
            ("speeds", SPEEDS),
        ):
            v = tuple(getattr(self, name))
            bad = [x for x in v if x not in allowed]
            if not v or bad:
                raise ValueError(f"{o}.{name}={v!r}: must be a non-empty subset of {allowed}")
        if self.pathology_fraction > 0 and not self.pathologies:
            raise ValueError(f"{o}.pathologies: empty while pathology_fraction > 0")
        # validates the duration against the rates
        replace(self.base, duration=float(self.sequence_seconds))

    @property
    def sequence_frames(self) -> int:
        return replace(self.base, duration=float(self.sequence_seconds)).n_frames

    @property
    def hours_generated(self) -> float:
        """What is actually written: whole sequences of whole frames."""
        return self.n_sequences * self.sequence_frames / self.base.model_rate / 3600.0

    @property
    def n_sequences(self) -> int:
        return max(1, round(self.hours * 3600.0 / self.sequence_seconds))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base"] = self.base.to_dict()
        for k in ("activities", "pathologies", "speeds"):
            d[k] = list(d[k])
        return d


def sequence_seed(seed: int, index: int) -> int:
    """The generate_sequence seed of sequence `index` (a 63-bit number)."""
    hi, lo = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int((int(hi) << 32 | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF)


def sequence_params(spec: DatasetSpec, index: int) -> SequenceParams:
    """Sequence `index`'s parameters: activity, speed and pathology drawn from the mix."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index, _MIX]))
    activity = spec.activities[int(rng.integers(len(spec.activities)))]
    speed = spec.speeds[int(rng.integers(len(spec.speeds)))]
    pathology = None
    if rng.random() < spec.pathology_fraction:
        pathology = spec.pathologies[int(rng.integers(len(spec.pathologies)))]
    return replace(
        spec.base,
        activity=activity,
        speed=speed,
        pathology=pathology,
        duration=float(spec.sequence_seconds),
    )


def _make(spec: DatasetSpec, index: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    params = sequence_params(spec, index)
    seq = generate_sequence(params, sequence_seed(spec.seed, index))
    return seq.arrays, seq.meta


# -- deterministic .npz ----------------------------------------------------------------------
def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """An uncompressed .npz with fixed zip timestamps (np.savez stamps the current time);
    returns the file's SHA-256. Written to a temporary name and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    os.replace(tmp, path)
    return digest.hexdigest()


def _shard_arrays(
    spec: DatasetSpec, first: int, items: list[tuple[dict[str, np.ndarray], dict[str, Any]]]
) -> dict[str, np.ndarray]:
    seqs = [a for a, _ in items]
    metas = [m for _, m in items]

    def offsets(key: str) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(s[key]) for s in seqs])]).astype(np.int64)

    out: dict[str, np.ndarray] = {
        "seq_index": np.arange(first, first + len(seqs), dtype=np.int64),
        "seq_seed": np.array([m["seed"] for m in metas], dtype=np.int64),
        "seq_activity": np.array([ACTIVITIES.index(m["activity"]) for m in metas], np.int16),
        "seq_pathology": np.array(
            [-1 if m["pathology"] is None else PATHOLOGIES.index(m["pathology"]) for m in metas],
            dtype=np.int16,
        ),
        "seq_speed": np.array([SPEEDS.index(m["speed"]) for m in metas], dtype=np.int16),
        "frame_offsets": offsets("t"),
        "event_offsets": offsets("event_t"),
        "stride_offsets": offsets("strides"),
    }
    for key in _FRAME + ["event_t", "event_kind", "strides"]:
        out[key] = np.concatenate([s[key] for s in seqs])
    for key in _SEQ:
        out[key] = np.stack([s[key] for s in seqs])
    return out


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _versions() -> dict[str, str]:
    try:
        own = metadata.version("gait-stream")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {
        "gait_stream": own,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def _prepare_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"write_dataset out_dir={str(out)!r}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    entries = list(out.iterdir())
    if not entries:
        return
    ours = [p for p in entries if p.name == "manifest.json" or p.name.startswith("shard-")]
    if (out / "manifest.json").is_file() and len(ours) == len(entries):
        for p in ours:  # an older dataset here: replace it
            p.unlink()
        return
    raise ValueError(
        f"write_dataset out_dir={str(out)!r}: not empty and not a gait-stream dataset; "
        "refusing to mix files"
    )


def write_dataset(
    out_dir: str | Path,
    hours: float,
    seed: int,
    progress: Callable[[float], None] | None = None,
    workers: int = 1,
    spec: DatasetSpec | None = None,
) -> dict[str, Any]:
    """Generate `hours` of sequences into `out_dir`; returns the manifest.

    `progress(hours_done)` is called after every sequence. `workers` processes generate in
    parallel (0 = all CPUs); the output does not depend on it. `spec` overrides the mix and
    the sequence parameters (its hours/seed are replaced by the arguments)."""
    spec = replace(spec, hours=hours, seed=seed) if spec else DatasetSpec(hours=hours, seed=seed)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"write_dataset workers={workers!r}: must be a whole number >= 0")
    workers = workers or os.cpu_count() or 1
    out = Path(out_dir)
    _prepare_dir(out)
    n = spec.n_sequences
    per = spec.sequences_per_shard
    seconds_per_seq = spec.sequence_frames / spec.base.model_rate
    shards: list[dict[str, Any]] = []
    done_frames = 0
    batch: list[tuple[dict[str, np.ndarray], dict[str, Any]]] = []

    def take(i: int, item: tuple[dict[str, np.ndarray], dict[str, Any]]) -> None:
        nonlocal batch, done_frames
        batch.append(item)
        done_frames += len(item[0]["t"])
        if progress is not None:
            progress((i + 1) * seconds_per_seq / 3600.0)
        if len(batch) == per or i == n - 1:
            first = i + 1 - len(batch)
            arrays = _shard_arrays(spec, first, batch)
            name = f"shard-{len(shards):05d}.npz"
            sha = write_npz(out / name, arrays)
            shards.append(
                {
                    "file": name,
                    "first_sequence": first,
                    "sequences": len(batch),
                    "frames": int(arrays["frame_offsets"][-1]),
                    "bytes": (out / name).stat().st_size,
                    "sha256": sha,
                }
            )
            batch = []

    if workers == 1:  # in this process: no start-up cost
        for i in range(n):
            take(i, _make(spec, i))
    else:
        ctx = get_context("spawn")  # safe whatever threads the caller runs (torch, Ray)
        with _single_threaded_children(), ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            pending: deque[Future] = deque()
            next_i = 0
            for i in range(n):
                while next_i < n and len(pending) < 3 * workers:  # bounded look-ahead
                    pending.append(pool.submit(_make, spec, next_i))
                    next_i += 1
                take(i, pending.popleft().result())
    manifest = _manifest(spec, shards, done_frames)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _manifest(spec: DatasetSpec, shards: list[dict[str, Any]], frames: int) -> dict[str, Any]:
    base = spec.base
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "description": "Synthetic IMU + video + ground-truth gait sequences (gait-stream). "
        "See docs/dataset_format.md.",
        "seed": spec.seed,
        "hours_requested": spec.hours,
        "hours": frames / base.model_rate / 3600.0,
        "n_sequences": spec.n_sequences,
        "n_frames": frames,
        "model_rate": base.model_rate,
        "n_cameras": base.n_cameras,
        "spec": spec.to_dict(),
        "seed_rule": {
            "sequence_seed": "SeedSequence([seed, i]).generate_state(2, uint32) -> "
            "(hi << 32 | lo) & (2**63 - 1)",
            "sequence_params": f"default_rng(SeedSequence([seed, i, {_MIX}])): activity, "
            "speed, then pathology (if random() < pathology_fraction)",
            "generate_sequence": "SeedSequence(sequence_seed).spawn(6): body, motion, IMU "
            "placement, IMU noise, camera rig, video noise",
        },
        "names": {
            "segments": list(SEGMENTS),
            "keypoints": list(KEYPOINTS),
            "angles": list(ANGLES),
            "imu_channels": list(IMU_CHANNELS),
            "gait_events": list(GAIT_EVENTS),
            "activities": list(ACTIVITIES),
            "pathologies": list(PATHOLOGIES),
            "speeds": list(SPEEDS),
            "body_fields": list(BODY_FIELDS),
            "stride_fields": list(STRIDE_FIELDS),
        },
        "arrays": {
            k: {"per": per, "unit": unit, "description": desc}
            for k, (per, unit, desc) in ARRAYS.items()
        },
        "versions": _versions(),
        "shards": shards,
    }


class DatasetReader:
    """Sequences of a dataset written by `write_dataset`, in order, one dict each."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        mf = self.path / "manifest.json"
        try:
            self.manifest: dict[str, Any] = json.loads(mf.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"dataset {self.path}: no manifest.json") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"dataset {mf}: not JSON ({e})") from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"dataset {mf}: format {self.manifest.get('format')!r} != {FORMAT}")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"dataset {mf}: format_version {self.manifest.get('format_version')!r}, "
                f"this reader reads {FORMAT_VERSION}"
            )
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return sum(s["sequences"] for s in self.shards)

    def shard(self, k: int) -> dict[str, np.ndarray]:
        """All arrays of shard k (concatenated form, as stored)."""
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        path = self.path / self.shards[k]["file"]
        if not path.is_file():
            raise FileNotFoundError(f"dataset {self.path}: shard {path.name} is missing")
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        self._cache = (k, arrays)
        return arrays

    def _sequence(self, arrays: dict[str, np.ndarray], j: int) -> dict[str, Any]:
        names = self.manifest["names"]
        f0, f1 = arrays["frame_offsets"][j : j + 2]
        e0, e1 = arrays["event_offsets"][j : j + 2]
        s0, s1 = arrays["stride_offsets"][j : j + 2]
        seq: dict[str, Any] = {k: arrays[k][f0:f1] for k in _FRAME}
        seq.update({k: arrays[k][j] for k in _SEQ})
        seq["event_t"], seq["event_kind"] = arrays["event_t"][e0:e1], arrays["event_kind"][e0:e1]
        seq["strides"] = arrays["strides"][s0:s1]
        p = int(arrays["seq_pathology"][j])
        seq["meta"] = {
            "index": int(arrays["seq_index"][j]),
            "seed": int(arrays["seq_seed"][j]),
            "activity": names["activities"][int(arrays["seq_activity"][j])],
            "pathology": None if p < 0 else names["pathologies"][p],
            "speed": names["speeds"][int(arrays["seq_speed"][j])],
        }
        return seq

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for k, sh in enumerate(self.shards):
            arrays = self.shard(k)
            for j in range(sh["sequences"]):
                yield self._sequence(arrays, j)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"dataset {self.path}: sequence {i} of {len(self)}")
        i %= len(self)
        for k, sh in enumerate(self.shards):
            if i < sh["first_sequence"] + sh["sequences"]:
                return self._sequence(self.shard(k), i - sh["first_sequence"])
        raise IndexError(i)  # unreachable with a consistent manifest

    def verify(self) -> list[str]:
        """Names of shards whose SHA-256 does not match the manifest (empty = intact)."""
        bad = []
        for sh in self.shards:
            digest = hashlib.sha256((self.path / sh["file"]).read_bytes()).hexdigest()
            if digest != sh["sha256"]:
                bad.append(sh["file"])
        return bad
