"""The runtime's YAML config: typed dataclasses, strictly validated.

A typo in a lab's config must not silently become a default, so every mapping is checked
against its dataclass: an unknown key, a missing required key, a missing IMU stream or a value
of the wrong type raises `ConfigError` naming the file and the dotted key
(`configs/lab.yaml: subjects[0].imu.foot_r: missing stream`).

The IMU map of a subject names every segment of fusion.skeleton.SEGMENTS: a stream selector
(name / type / source_id, plus `segments` when one stream carries several sensors) or an
explicit `null` for a segment without a sensor. Leaving a segment out is an error, because a
forgotten sensor would otherwise look like a broken one at run time.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fusion.skeleton import SEGMENTS

__all__ = [
    "DEFAULT_CONFIG",
    "CameraConfig",
    "Config",
    "ConfigError",
    "ImuStreamConfig",
    "MetricsConfig",
    "ModelConfig",
    "OutputsConfig",
    "QueuesConfig",
    "RayConfig",
    "SimulateConfig",
    "SubjectConfig",
    "SyncConfig",
    "lab_spec",
    "load_config",
    "parse_config",
    "simulated_subjects",
]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
MODALITIES = ("imu", "video")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the dotted key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray (or use RAY_ADDRESS when set)
    num_cpus: int = 2  # for a local Ray only


@dataclass
class SimulateConfig:
    """The simulated lab (drivers.simlab) started beside the pipeline."""

    enabled: bool = True
    subjects: int = 1
    imu_rate: float = 100.0
    camera_rate: float = 30.0
    n_cameras: int = 4
    seed: int = 0
    activity: str = "start_stop"  # fusion.synth activity; stand-then-walk lets IMUs calibrate
    stance_sd_deg: float = 0.0  # σ of each subject's stance from the typical one (0-30 deg)
    jitter_ms: float = 0.5  # σ of the timestamp jitter added to every sample
    push_period_ms: float = 10.0
    # the lab's thread writes each consumer's socket itself (1/3 of the lab's CPU at 4
    # subjects); a consumer that freezes without closing blocks the lab after ~4 MB per stream
    sync_outlets: bool = True
    imu_stream_prefix: str = "sim"
    run_tag: str | None = None  # part of every source id; null: host and process id


@dataclass
class ImuStreamConfig:
    """An LSL stream selector; `segments` defaults to the one segment it is listed under."""

    name: str | None = None
    type: str | None = None
    source_id: str | None = None
    segments: list[str] | None = None

    def label(self, segment: str) -> str:
        """How metrics and logs name this stream (listed under `segment`)."""
        return self.name or self.source_id or f"{self.type}:{segment}"


@dataclass
class CameraConfig:
    camera: str  # camera id as it appears in the keypoint messages
    endpoint: str  # tcp://host:port of its ZeroMQ PUB; "auto" only for the simulated lab


@dataclass
class SubjectConfig:
    id: str
    imu: dict[str, ImuStreamConfig | None]
    cameras: list[CameraConfig] = field(default_factory=list)


@dataclass
class ModelConfig:
    rate_hz: float = 60.0
    estimator: str = "fusionnet"  # fusion.estimators.registry name (configs/default.yaml)
    options: dict[str, Any] = field(default_factory=dict)  # passed to the estimator factory
    lookahead: int = 0  # frames; 0 = causal
    device: str = "auto"  # auto | cpu | cuda
    #: auto | N: inference actors the subjects are sharded over (services/actors/shards.py);
    #: auto is 1 on one node, else one per node that can run it (capped by the subjects)
    inference_actors: int | str = "auto"
    #: scheduling niceness of the inference stage's worker thread (-20..19; Linux): where
    #: the model runs in a process of its own, a full CPU then lets its call finish before the
    #: I/O stages' and the simulated lab's work (`gait-stream bench --estimator fusionnet
    #: --subjects 4`, model time per tick p99: 17-20 ms at 0, 9-10 ms at -10, 7.3-8.2 ms at
    #: -20). Below 0 needs CAP_SYS_NICE (root); without it: one warning, and the thread stays
    #: as it was
    nice: int = -20


@dataclass
class SyncConfig:
    # causal: tick t takes each IMU stream's newest sample at or before t (at most
    # max_hold_ms old), so it can go out at t; false: it interpolates between the samples
    # around t and waits for the one after it (one IMU period more latency)
    causal: bool = True
    max_hold_ms: float = 25.0
    max_wait_ms: float = 15.0  # after a tick's time, emit it with what is there
    # once the other streams of a subject have completed a tick, a stream still without its
    # sample gets this much longer, counted from their arrival (lost, not late: they arrive
    # together; the IMU ingest holds a round as long for its missing packets, then sends the
    # rest), then the tick goes out with the older sample held
    peer_wait_ms: float = 4.0
    wait_for: list[str] = field(default_factory=lambda: ["imu"])  # watermark modalities
    imu_max_gap_ms: float = 30.0  # widest IMU gap interpolated across
    video_tolerance_ms: float = 60.0  # nearest keypoint frame accepted for a tick
    stale_after_ms: float = 250.0  # a stream silent this long stops holding the watermark
    clock_jump_s: float = 1.0  # timestamps this far from arrival: re-anchor the stream
    dejitter: bool = True  # online dejitter of regular-rate IMU streams (fusion.dejitter)
    resolve_timeout_s: float = 3.0


@dataclass
class QueuesConfig:
    max_depth: int = 32  # messages waiting per stage; beyond it the oldest is dropped


@dataclass
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9310
    flush_ms: float = 500.0  # how often each stage sends its counters to the metrics actor


@dataclass
class OutputsConfig:
    lsl: bool = True
    lsl_source_id: str = "gait-stream"
    zmq: str | None = "tcp://127.0.0.1:5570"  # PUB endpoint (bound); null = off


@dataclass
class Config:
    ray: RayConfig = field(default_factory=RayConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    subjects: list[SubjectConfig] = field(default_factory=list)
    calibration: str | None = None  # camera calibration JSON (real cameras only)
    model: ModelConfig = field(default_factory=ModelConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    queues: QueuesConfig = field(default_factory=QueuesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    source: str = "<memory>"  # the file it came from (not a YAML key)

    def replace(self, **changes: Any) -> Config:
        """A deep copy with top-level fields replaced (CLI overrides)."""
        new = copy.deepcopy(self)
        for key, value in changes.items():
            setattr(new, key, value)
        return new


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "anything"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check `value` against the annotation `tp`, building dataclasses; raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, source, key)
            except ConfigError as exc:
                errors.append(exc)
        # a nested error (deeper key) is more useful than "wrong type" at this level
        deeper = [e for e in errors if e.key != key]
        if deeper:
            raise deeper[0]
        raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, key, f"expected a number, got {value!r}{_yaml_hint(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"config annotation {tp!r} not supported")  # a bug in this module


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(source, prefix, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(
                source, dotted, f"unknown key (known here: {', '.join(sorted(fields))})"
            )
        kwargs[key] = _convert(value, hints[key], source, dotted)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and (f.default_factory is dataclasses.MISSING)
        ):
            dotted = f"{prefix}.{name}" if prefix else name
            raise ConfigError(source, dotted, "missing required key")
    return cls(**kwargs)


#: numbers that may be 0 (no wait, no hold, no jitter) and those that must be positive: a
#: negative or zero tolerance, gap or period masks every camera, IMU gap or stream
_AT_LEAST_0 = (
    "sync.max_hold_ms",
    "sync.max_wait_ms",
    "sync.peer_wait_ms",
    "sync.resolve_timeout_s",
    "simulate.jitter_ms",
)
_ABOVE_0 = (
    "model.rate_hz",
    "simulate.push_period_ms",  # 0 would push in a busy loop
    "sync.imu_max_gap_ms",
    "sync.video_tolerance_ms",
    "sync.stale_after_ms",
    "sync.clock_jump_s",
    "metrics.flush_ms",
)


def _yaml_hint(value: Any) -> str:
    """YAML 1.1 (PyYAML) reads 1e9 as text; say so where that is what happened."""
    if isinstance(value, str):
        try:
            float(value)
            return " (YAML reads a number like 1e9 as text: write 1.0e9)"
        except ValueError:
            pass
    return ""


def _check_numbers(cfg: Config) -> None:
    rules = ((_AT_LEAST_0, ">= 0", lambda v: v >= 0), (_ABOVE_0, "> 0", lambda v: v > 0))
    for names, rule, ok in rules:
        for dotted in names:
            section, name = dotted.split(".")
            value = getattr(getattr(cfg, section), name)
            if not (math.isfinite(value) and ok(value)):
                raise ConfigError(
                    cfg.source, dotted, f"must be a finite number {rule}, got {value!r}"
                )


def _check(cfg: Config) -> None:
    """Cross-field rules a type check cannot express."""
    src = cfg.source
    _check_numbers(cfg)
    if cfg.model.lookahead < 0:
        raise ConfigError(src, "model.lookahead", "must be >= 0")
    if cfg.model.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            src, "model.device", f"must be auto, cpu or cuda, got {cfg.model.device!r}"
        )
    n_inf = cfg.model.inference_actors
    if (isinstance(n_inf, str) and n_inf != "auto") or (isinstance(n_inf, int) and n_inf < 1):
        raise ConfigError(
            src, "model.inference_actors", f"must be auto or a whole number >= 1, got {n_inf!r}"
        )
    if not -20 <= cfg.model.nice <= 19:
        raise ConfigError(src, "model.nice", f"must be -20..19, got {cfg.model.nice!r}")
    for i, m in enumerate(cfg.sync.wait_for):
        if m not in MODALITIES:
            raise ConfigError(src, f"sync.wait_for[{i}]", f"must be one of {MODALITIES}")
    if cfg.queues.max_depth < 1:
        raise ConfigError(src, "queues.max_depth", "must be >= 1")
    if not 0 <= cfg.metrics.port <= 65535:
        raise ConfigError(src, "metrics.port", "must be a TCP port (0-65535)")
    if cfg.ray.num_cpus < 1:
        raise ConfigError(src, "ray.num_cpus", "must be >= 1")
    sim = cfg.simulate
    if sim.enabled:
        try:
            lab_spec(sim)
        except ValueError as exc:  # LabSpec names the field: "LabSpec.<field>=…: …"
            field = re.match(r"LabSpec\.(\w+)=", str(exc))
            key = f"simulate.{field.group(1)}" if field else "simulate"
            raise ConfigError(src, key, str(exc)) from None
    if not cfg.subjects and not sim.enabled:
        raise ConfigError(src, "subjects", "missing: no subjects and no simulated lab")
    if cfg.subjects and sim.enabled and len(cfg.subjects) != sim.subjects:
        raise ConfigError(
            src,
            "subjects",
            f"{len(cfg.subjects)} subject(s) listed but simulate.subjects is {sim.subjects}",
        )
    seen_ids: set[str] = set()
    for i, subj in enumerate(cfg.subjects):
        key = f"subjects[{i}]"
        if subj.id in seen_ids:
            raise ConfigError(src, f"{key}.id", f"duplicate subject id {subj.id!r}")
        seen_ids.add(subj.id)
        covered: dict[str, str] = {}
        for seg, stream in subj.imu.items():
            if seg not in SEGMENTS:
                raise ConfigError(
                    src, f"{key}.imu.{seg}", f"unknown segment (segments: {', '.join(SEGMENTS)})"
                )
            if stream is None:
                covered.setdefault(seg, seg)
                continue
            if stream.name is None and stream.type is None and stream.source_id is None:
                raise ConfigError(
                    src, f"{key}.imu.{seg}", "a stream needs at least one of name, type, source_id"
                )
            segs = stream.segments or [seg]
            for s in segs:
                if s not in SEGMENTS:
                    raise ConfigError(src, f"{key}.imu.{seg}.segments", f"unknown segment {s!r}")
                covered[s] = seg
        for seg in SEGMENTS:
            if seg not in covered:
                raise ConfigError(
                    src, f"{key}.imu.{seg}", "missing stream (map it, or write null if absent)"
                )
        for j, cam in enumerate(subj.cameras):
            if cam.endpoint == "auto" and not sim.enabled:
                raise ConfigError(
                    src, f"{key}.cameras[{j}].endpoint", "'auto' needs the simulated lab"
                )
            if cam.endpoint != "auto" and not cam.endpoint.startswith(("tcp://", "ipc://")):
                raise ConfigError(
                    src, f"{key}.cameras[{j}].endpoint", f"not a ZeroMQ endpoint: {cam.endpoint!r}"
                )


def parse_config(data: Any, source: str = "<memory>") -> Config:
    """Validate an already-loaded mapping (e.g. from tests)."""
    if data is None:
        data = {}
    cfg = _build(Config, data, source, "")
    cfg.source = source
    _check(cfg)
    return cfg


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config; None means the embedded default."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML: {exc}") from exc
    return parse_config(data, source)


def lab_spec(sim: SimulateConfig) -> Any:
    """The fusion.synth.LabSpec that `sim` describes; it checks the values (a ValueError
    naming the field), so the config refuses at load what the lab would refuse at start."""
    from fusion.synth import LabSpec

    return LabSpec(
        subjects=sim.subjects,
        imu_rate=sim.imu_rate,
        camera_rate=sim.camera_rate,
        n_cameras=sim.n_cameras,
        seed=sim.seed,
        activity=sim.activity,
        stance_sd_deg=sim.stance_sd_deg,
    )


def simulated_subjects(sim: SimulateConfig, run_tag: str | None = None) -> list[SubjectConfig]:
    """Subject entries matching what drivers.simlab publishes for `sim` (one stream a sensor).

    `run_tag`, when given, is part of every source id the lab uses, so two labs on one machine
    cannot be confused.
    """
    subjects = []
    for k in range(sim.subjects):
        sid = f"s{k}"
        imu: dict[str, ImuStreamConfig | None] = {}
        for seg in SEGMENTS:
            name = f"{sim.imu_stream_prefix}-{sid}-{seg}"
            imu[seg] = ImuStreamConfig(
                name=name, source_id=f"{name}@{run_tag}" if run_tag else None
            )
        cams = [CameraConfig(camera=f"{sid}-cam{c}", endpoint="auto") for c in range(sim.n_cameras)]
        subjects.append(SubjectConfig(id=sid, imu=imu, cameras=cams))
    return subjects
