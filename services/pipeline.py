"""Wiring from a config: the simulated lab (if any), the Ray actors, the run, a clean stop.

`run_pipeline(config, duration, address)` is what `gait-stream start`, the bench and the
end-to-end tests call. It connects to Ray (`address`, else `ray.address` of the config, else
RAY_ADDRESS, else a new local Ray with `ray.num_cpus` CPUs and no dashboard), starts one actor
per role, runs until `duration` passes, `stop` is set or Ctrl-C, then stops the stages in data
order, closes every outlet and socket, and shuts Ray down if it started it.

Actor placement: every actor asks for 0 CPUs (they are I/O-bound threads, and a 2-core laptop
must hold seven of them; one pinned to a node on a cluster asks for PINNED_CPUS); the inference
actors ask for a GPU when the cluster has one and the config does not say `device: cpu`.

Scale-out (`model.inference_actors`, services/actors/shards.py): the subjects are split into
contiguous blocks over N inference actors ("inference/0" ...; "inference" when N is 1), each
pinned (soft node affinity) to its own node, worker nodes first; the other stages stay on the
driver's node, where the lab's LSL streams are seen, sharing processes as on a single node
(`stage_groups`). Sync talks to a `Shards` handle that
routes each subject's ticks to its actor. `pipe.info["placement"]` says which subject runs on
which actor and node; `update_placement` keeps it and gait_stream_subjects_per_node current.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pylsl

from services.config import Config, lab_spec, simulated_subjects

__all__ = ["Pipeline", "run_pipeline", "update_placement"]

log = logging.getLogger(__name__)

#: a neural estimator on the CPU loads its ONNX graph from the cache (~1-3 s) or, the first
#: time for its weights, exports it (~5-10 s here, far more on a loaded machine)
ACTOR_START_TIMEOUT_S = 300.0
MAX_RESTARTS = 3  # Ray restarts a crashed actor this often; supervise() resumes its work
STOP_TIMEOUT_S = 10.0
#: CPUs asked by an actor pinned to a node: Ray schedules a request for no resources at all on
#: a random node whatever its soft node affinity (ray-project/ray#25360 fixed only hard
#: affinity), so a pinned actor asks for a sliver of a CPU
PINNED_CPUS = 0.01


def pin_to(node: str) -> dict[str, Any]:
    """Actor options that place it on `node` while that node is alive and has room, else
    anywhere (soft: a restart after the node is lost still finds a home)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node, soft=True, _spill_on_unavailable=True)
    return {"num_cpus": PINNED_CPUS, "scheduling_strategy": strategy}


def connect_ray(config: Config, address: str | None) -> bool:
    """Connect to (or start) Ray; returns True when this call started it."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    addr = address or config.ray.address or os.environ.get("RAY_ADDRESS")
    if addr:
        ray.init(address=addr, log_to_driver=True)
        return False
    # Ray starts its workers at nice 15 below the driver; here the driver runs the simulated
    # lab, and the actors on the latency path lost the CPU to it (bench p99 105 -> 65 ms)
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        address="local",
        num_cpus=config.ray.num_cpus,
        include_dashboard=False,
        log_to_driver=True,
    )
    return True


@dataclass
class Pipeline:
    """The running pieces (handles), for status queries and the stop sequence."""

    config: Config
    lab: Any = None
    actors: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    started_ray: bool = False
    incarnations: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, Any] = field(default_factory=dict)  # "+"-joined roles -> Host actor
    inference_roles: list[str] = field(default_factory=list)  # "inference" or "inference/<i>"
    shards: Any = None  # services.actors.shards.Shards when there are several inference actors

    @property
    def inference(self) -> Any:
        """What sync sends its ticks to: the one inference actor, or the Shards router."""
        if self.shards is not None:
            return self.shards
        return self.actors.get(self.inference_roles[0] if self.inference_roles else "inference")

    def snapshot(self, window_s: float | None = 5.0, timeout: float = 2.0) -> dict[str, Any]:
        import ray

        metrics = self.actors.get("metrics")
        if metrics is None:
            return {}
        return ray.get(metrics.snapshot.remote(window_s), timeout=timeout)


def _check_port(host: str, port: int, what: str) -> None:
    """Fail early, in words, when a port the pipeline must bind is taken.

    SO_REUSEADDR like the servers that will bind it (prometheus_client, ZeroMQ): a connection
    of the last run, a Prometheus scrape say, waits out TIME_WAIT for a minute and must not
    block a restart; a port something still listens on is refused all the same.
    """
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ValueError(f"{what}: cannot bind {host}:{port} ({exc.strerror})") from None


def _check_ports(cfg: Config) -> None:
    if cfg.metrics.enabled:
        _check_port(
            cfg.metrics.host, cfg.metrics.port, f"{cfg.source}: metrics.port (or --metrics-port)"
        )
    ep = cfg.outputs.zmq
    if ep and ep.startswith("tcp://") and not ep.endswith(":*"):
        host, _, port = ep[len("tcp://") :].rpartition(":")
        if port.isdigit() and host in ("127.0.0.1", "localhost", "0.0.0.0", "*"):
            _check_port(
                "127.0.0.1" if host != "0.0.0.0" else host, int(port), f"{cfg.source}: outputs.zmq"
            )


def _prepare(config: Config, run_tag: str | None) -> tuple[Config, Any, list[Any]]:
    """Resolve simulated subjects/endpoints and create (not start) the simulated lab.

    Returns the config as run, the lab (or None) and the calibrated cameras: the lab's, or
    those of `calibration` (a path relative to the config file's folder).
    """
    cfg = copy.deepcopy(config)
    if not cfg.simulate.enabled:
        cameras: list[Any] = []
        if cfg.calibration:
            from fusion.camera import load_rig

            path = Path(cfg.calibration)
            if not path.is_absolute() and Path(cfg.source).is_file():
                path = Path(cfg.source).parent / path
            try:
                cameras = load_rig(path)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{cfg.source}: calibration: {exc}") from None
        return cfg, None, cameras
    from drivers.simlab import SimulatedLab, default_run_tag

    sim = cfg.simulate
    tag = run_tag or sim.run_tag or default_run_tag()
    if not cfg.subjects:
        cfg.subjects = simulated_subjects(sim, tag)
    fixed = {c.camera: c.endpoint for s in cfg.subjects for c in s.cameras if c.endpoint != "auto"}
    lab = SimulatedLab(
        lab_spec(sim),
        imu_stream_prefix=sim.imu_stream_prefix,
        zmq_endpoints=fixed,
        jitter_s=sim.jitter_ms / 1e3,
        push_period_s=sim.push_period_ms / 1e3,
        sync_outlets=sim.sync_outlets,
        run_tag=tag,
    )
    # a name alone could also match another lab on this network: pin our own streams
    own = {}
    for k in range(sim.subjects):
        names, sids = lab.imu_stream_names(k), lab.imu_source_ids(k)
        own.update({names[seg]: sids[seg] for seg in names})
    for s in cfg.subjects:
        for stream in s.imu.values():
            if stream is not None and stream.source_id is None and stream.name in own:
                stream.source_id = own[stream.name]
    bound = lab.camera_endpoints
    for s in cfg.subjects:
        for c in s.cameras:
            if c.endpoint == "auto":
                if c.camera not in bound:
                    lab.stop()
                    raise ValueError(
                        f"{cfg.source}: camera {c.camera!r} has endpoint auto but the simulated "
                        f"lab has no such camera (it has {sorted(bound)})"
                    )
                c.endpoint = bound[c.camera]
    # the lab's clock starts once the pipeline listens (start_pipeline): a subject seen from
    # its first second (standing, then walking) lets the estimator calibrate right away
    return cfg, lab, lab.cameras


def start_pipeline(
    config: Config,
    address: str | None = None,
    *,
    run_tag: str | None = None,
) -> Pipeline:
    """Start everything; the caller must call `stop_pipeline` (run_pipeline does)."""
    import ray

    from services.actors.host import Host, RoleHandle
    from services.actors.inference import Inference
    from services.actors.ingest_imu import ImuIngest
    from services.actors.ingest_keypoints import KeypointIngest
    from services.actors.metrics import Metrics
    from services.actors.publish import Publish
    from services.actors.shards import Shards
    from services.actors.sync import Sync

    if not (address or config.ray.address or os.environ.get("RAY_ADDRESS")):
        _check_ports(config)  # a local Ray: the actors bind on this machine
    # Ray first, then the simulated lab: ray.init forks its processes, and forking while another
    # thread (the lab's motion generator) holds a lock can hang the child forever
    started = connect_ray(config, address)
    pipe = Pipeline(config=config, started_ray=started)
    try:
        cfg, lab, cameras = _prepare(config, run_tag)
        pipe.config, pipe.lab = cfg, lab
        flush_s = cfg.metrics.flush_ms / 1e3
        depth = cfg.queues.max_depth
        subjects = cfg.subjects
        ids = [s.id for s in subjects]
        plan = plan_inference(cfg, ids)
        # on a cluster the stages other than inference stay on the driver's node (the lab's
        # edge: its sensor streams are seen there and its outlets are seen from there)
        edge = pin_to(plan["driver_node"]) if plan["multi_node"] else {"num_cpus": 0}

        specs: dict[str, tuple[type, tuple[Any, ...], dict[str, Any]]] = {}
        gpus_of: dict[str, float] = {}
        node_of: dict[str, str | None] = {}  # role -> node id it is (softly) pinned to

        def actor(
            name: str,
            cls: type,
            *args: Any,
            num_gpus: float = 0,
            node: str | None = None,
            **kwargs: Any,
        ) -> None:
            specs[name] = (cls, args, kwargs)
            gpus_of[name] = num_gpus
            node_of[name] = node

        a = pipe.actors
        port = cfg.metrics.port if cfg.metrics.enabled else None
        a["metrics"] = (
            ray.remote(Metrics)
            .options(max_restarts=MAX_RESTARTS, **edge)
            .remote(cfg.metrics.host, port)
        )
        actor(
            "publish",
            Publish,
            ids,
            cfg.outputs,
            rate_hz=cfg.model.rate_hz,
            max_depth=depth,
            flush_s=flush_s,
        )
        _gait_actor(actor, ids, cfg, lab, depth, flush_s)
        pipe.inference_roles = [r for r, _, _ in plan["actors"]]
        for role, _block, node in plan["actors"]:
            actor(
                role,
                Inference,
                cfg.model.estimator,
                cameras,
                options=cfg.model.options,
                device=cfg.model.device,
                rate_hz=cfg.model.rate_hz,
                lookahead=cfg.model.lookahead,
                max_depth=depth,
                flush_s=flush_s,
                report_subjects=len(plan["actors"]) == 1,
                nice=cfg.model.nice,
                num_gpus=plan["gpus_each"],
                node=node,
            )
        actor(
            "sync",
            Sync,
            subjects,
            cfg=cfg.sync,
            rate_hz=cfg.model.rate_hz,
            max_depth=max(depth, 64),
            flush_s=flush_s,
        )
        actor("ingest_keypoints", KeypointIngest, subjects, flush_s=flush_s)
        actor(
            "ingest_imu",
            ImuIngest,
            subjects,
            resolve_timeout_s=cfg.sync.resolve_timeout_s,
            clock_jump_s=cfg.sync.clock_jump_s,
            tick_rate=cfg.model.rate_hz,
            causal=cfg.sync.causal,
            hold_s=cfg.sync.peer_wait_ms / 1e3,
            flush_s=flush_s,
        )
        # a neural model's step (5-10 ms a tick) would share the chain's GIL with ingest and
        # sync: it gets a process of its own (FusionNet, 1 subject: 23 Hz in the chain, 60 Hz
        # apart, `gait-stream bench --estimator fusionnet`)
        heavy = cfg.model.estimator not in LIGHT_ESTIMATORS
        apart = tuple(pipe.inference_roles) if plan["multi_node"] or heavy else ()
        for group in stage_groups(list(specs), apart):
            # a group with any edge stage stays at the edge; an inference actor alone goes
            # to its node
            nodes = {node_of[r] for r in group}
            node = nodes.pop() if len(nodes) == 1 else None
            opts: dict[str, Any] = {
                "num_gpus": sum(gpus_of[r] for r in group),
                "max_restarts": MAX_RESTARTS,
                **(pin_to(node) if node is not None else edge),
            }
            host = ray.remote(Host).options(**opts).remote({r: specs[r] for r in group})
            pipe.hosts["+".join(group)] = host
            for r in group:
                a[r] = RoleHandle(host, r, host._actor_id.hex())
        pipe.info["stage_groups"] = list(pipe.hosts)
        if len(pipe.inference_roles) > 1:
            pipe.shards = Shards(
                [a[r] for r in pipe.inference_roles], [b for _, b, _ in plan["actors"]]
            )
        ray.get(
            [a[n].connect.remote(**wiring(pipe, n)) for n in a if n != "metrics"],
            timeout=ACTOR_START_TIMEOUT_S,
        )
        # constructors ran (or raised) once these return; surface the first error
        pipe.info["metrics_address"] = ray.get(
            a["metrics"].address.remote(), timeout=ACTOR_START_TIMEOUT_S
        )
        infos = ray.get(
            [a[r].info.remote() for r in pipe.inference_roles], timeout=ACTOR_START_TIMEOUT_S
        )
        pipe.info["estimator"] = infos[0]
        pipe.info["inference_actors"] = {
            role: {"node": inf["node"], "ip": inf["ip"], "subjects": block, "pinned": node}
            for (role, block, node), inf in zip(plan["actors"], infos, strict=True)
        }
        _placement_info(pipe)
        pipe.info["outputs"] = ray.get(
            a["publish"].endpoints.remote(), timeout=ACTOR_START_TIMEOUT_S
        )
        a["metrics"].declare.remote(_zero_series(pipe, cfg))
        downstream = ["publish", "gait", *pipe.inference_roles, "sync"]
        ray.get([a[n].start.remote() for n in downstream if a.get(n) is not None])
        pipe.info["imu"] = ray.get(a["ingest_imu"].open.remote(), timeout=ACTOR_START_TIMEOUT_S)
        if lab is not None:
            lab.start()
        ray.get([a["ingest_imu"].start.remote(), a["ingest_keypoints"].start.remote()])
        supervise(pipe)  # records every actor's incarnation
        pipe.info["started_at"] = pylsl.local_clock()
        pipe.info["subjects"] = ids
    except BaseException:
        stop_pipeline(pipe)
        raise
    return pipe


def plan_inference(cfg: Config, ids: list[str]) -> dict[str, Any]:
    """How many inference actors, which subjects each serves, which node each is pinned to.

    Returns {"actors": [(role, subjects, node id or None)], "gpus_each", "multi_node",
    "driver_node"}. Nodes come from `ray.nodes()` (services.actors.shards.inference_nodes):
    GPU nodes when the cluster has a GPU and the config allows it, else nodes with CPUs. On a
    single node nothing is pinned (every actor is on it anyway).
    """
    import ray

    from services.actors.shards import (
        inference_nodes,
        inference_role,
        resolve_inference_actors,
        shard_subjects,
    )

    all_nodes = ray.nodes()
    multi = sum(1 for n in all_nodes if n.get("Alive")) > 1
    gpus_total = float(ray.cluster_resources().get("GPU", 0))
    use_gpu = cfg.model.device != "cpu" and gpus_total >= 1
    nodes = inference_nodes(all_nodes, use_gpu)
    try:
        n = resolve_inference_actors(cfg.model.inference_actors, len(ids), len(nodes))
    except ValueError as exc:
        raise ValueError(f"{cfg.source}: {exc}") from None
    gpus_each = 0.0
    if use_gpu:  # a whole GPU each when there are enough, else an equal share
        gpus_each = 1.0 if gpus_total >= n else gpus_total / n
    actors = []
    for i, block in enumerate(shard_subjects(ids, n)):
        node = nodes[i % len(nodes)]["NodeID"] if multi and nodes else None
        actors.append((inference_role(i, n), block, node))
    driver = ray.get_runtime_context().get_node_id() if multi else None
    return {"actors": actors, "gpus_each": gpus_each, "multi_node": multi, "driver_node": driver}


def _placement_info(pipe: Pipeline) -> None:
    """pipe.info["placement"] {subject: {actor, node, ip}} and ["subjects_per_node"]."""
    placement = {}
    for role, inf in pipe.info.get("inference_actors", {}).items():
        for s in inf["subjects"]:
            placement[s] = {"actor": role, "node": inf["node"], "ip": inf["ip"]}
    pipe.info["placement"] = placement
    pipe.info["subjects_per_node"] = dict(Counter(p["node"] for p in placement.values()))


def update_placement(pipe: Pipeline, timeout: float = 2.0) -> dict[str, int] | None:
    """Refresh the placement (an actor Ray restarted may be on another node) and, with several
    inference actors, set gait_stream_subjects_running and gait_stream_subjects_per_node{node}
    from the subjects each actor served in the last 2 s (summed per node: two actors on one
    node must not overwrite each other; a lone actor reports them itself). Returns the running
    subjects per node, or None with a single actor."""
    import ray

    roles = pipe.inference_roles
    if len(roles) <= 1:
        return None
    refs = {r: pipe.actors[r].running.remote() for r in roles}
    known = pipe.info.setdefault("inference_actors", {})
    per_node: dict[str, int] = {inf["node"]: 0 for inf in known.values()}
    for role, ref in refs.items():
        try:
            got = ray.get(ref, timeout=timeout)
        except Exception:
            continue  # dead or restarting: its subjects are not running
        if role in known:
            known[role]["node"], known[role]["ip"] = got["node"], got["ip"]
        per_node[got["node"]] = per_node.get(got["node"], 0) + len(got["subjects"])
    _placement_info(pipe)
    metrics = pipe.actors.get("metrics")
    if metrics is not None:
        sets = {("subjects_per_node", (node,)): n for node, n in per_node.items()}
        sets[("subjects_running", ())] = sum(per_node.values())
        metrics.report.remote({"set": sets})
    return per_node


#: Stages that share a process on a single node: the hot chain, one hop-free path from the
#: inlets to the outlets. The gait stage (off the angles path, bursty) keeps its own process.
LOCAL_GROUPS: tuple[tuple[str, ...], ...] = (
    ("ingest_imu", "ingest_keypoints", "sync", "inference", "publish"),
    ("gait",),
)


#: estimators cheap enough (a few ms a tick, mostly numpy) to share the hot chain's process
LIGHT_ESTIMATORS: tuple[str, ...] = ("classical", "classical_video")


def stage_groups(roles: list[str], apart: tuple[str, ...] = ()) -> list[list[str]]:
    """Which stages share a process (a Host actor).

    The hot chain shares one process, which saves two Ray hops per tick (~1.5 ms CPU each,
    plus pickling) and five processes' context switches, at the cost of using at most one
    core for that chain (the GIL). Roles in `apart` get a process of their own: on a cluster
    the inference actors, which go to other nodes (the rest stays on the driver's node, so
    splitting it would only add hops); several inference actors are always apart.
    GAIT_STREAM_STAGE_GROUPS=per_role gives every role its own process; =local keeps even a
    lone inference actor in the chain.
    """
    mode = os.environ.get("GAIT_STREAM_STAGE_GROUPS", "auto")
    if mode not in ("auto", "per_role", "local"):
        raise ValueError(f"GAIT_STREAM_STAGE_GROUPS={mode!r}: expected auto, per_role or local")
    if mode == "per_role":
        return [[r] for r in roles]
    keep = set(roles) - (set(apart) if mode == "auto" else set())
    out = [[r for r in g if r in keep] for g in LOCAL_GROUPS]
    grouped = {r for g in out for r in g}
    out += [[r] for r in roles if r not in grouped]
    return [g for g in out if g]


def _zero_series(pipe: Pipeline, cfg: Config) -> list[tuple[str, tuple[str, ...]]]:
    """Counters that exist (at 0) from the start, so dashboards and alerts have data."""
    from services.actors.ingest_imu import imu_sources

    series = [("dropped", (st, "queue_full")) for st in ("sync", "inference", "gait", "publish")]
    series += [("dropped", ("sync", "behind")), ("dropped", ("ingest", "backlog"))]
    series += [("restarts", (name,)) for name in pipe.actors]
    for subj in cfg.subjects:
        series += [("masked", (subj.id, m)) for m in ("imu", "video")]
        series += [("output", (subj.id, o)) for o in ("angles", "events", "gait")]
        for cam in subj.cameras:
            series += [("input", (subj.id, cam.camera, "keypoints"))]
            series += [("late", (subj.id, cam.camera))]
            series.append(("bad_input", (cam.camera, "wrong_joint_count")))
    for src in imu_sources(cfg.subjects):
        series += [("input", (src.subject, src.label, "imu")), ("late", (src.subject, src.label))]
        series.append(("bad_input", (src.label, "nonfinite")))
    return series


def wiring(pipe: Pipeline, name: str) -> dict[str, Any]:
    """The downstream handles of actor `name` (see Stage.connect)."""
    a = pipe.actors
    role = name.split("/", 1)[0]  # inference/<i> is wired like inference
    if role == "sync":
        return {"metrics": a.get("metrics"), "inference": pipe.inference}
    down = {
        "ingest_imu": ("sync",),
        "ingest_keypoints": ("sync",),
        "sync": ("inference",),
        "inference": ("publish", "gait"),
        "gait": ("publish",),
        "publish": (),
    }[role]
    return {"metrics": a.get("metrics"), **{d: a.get(d) for d in down}}


def _gait_actor(
    actor: Callable[..., Any],
    ids: list[str],
    cfg: Config,
    lab: Any,
    depth: int,
    flush_s: float,
) -> None:
    from services.actors.gait import Gait

    bodies = None
    if lab is not None:
        try:
            bodies = {f"s{k}": b for k, b in enumerate(lab.lab.bodies)}
        except Exception:  # a lab without body models: GaitTracker's default body
            bodies = None
    actor(
        "gait",
        Gait,
        ids,
        rate_hz=cfg.model.rate_hz,
        bodies=bodies,
        max_depth=depth,
        flush_s=flush_s,
    )


def supervise(pipe: Pipeline, timeout: float = 2.0) -> list[str]:
    """Resume actors that Ray restarted after a crash; returns their names.

    A restarted actor ran its constructor again (same arguments, same downstream handles) but
    its worker thread is not running and an ingest actor has no inlets: this starts them and
    counts gait_stream_actor_restarts_total{actor}.
    """
    import ray

    refs = {name: handle.status.remote() for name, handle in pipe.actors.items()}
    resumed = []
    for name, ref in refs.items():
        try:
            st = ray.get(ref, timeout=timeout)
        except Exception:
            continue  # restarting (or gone): look again next time
        known = pipe.incarnations.get(name)
        pipe.incarnations[name] = st["incarnation"]
        if known is None or known == st["incarnation"]:
            continue
        log.warning("actor %s crashed and was restarted by Ray; resuming it", name)
        resumed.append(name)
        handle = pipe.actors[name]
        if name != "metrics":
            ray.get(handle.connect.remote(**wiring(pipe, name)), timeout=timeout)
        if name == "ingest_imu":
            ray.get(handle.open.remote(), timeout=ACTOR_START_TIMEOUT_S)
        if name != "metrics":
            handle.start.remote()
        if "metrics" in pipe.actors:
            pipe.actors["metrics"].report.remote({"inc": {("restarts", (name,)): 1}})
    return resumed


def stop_pipeline(pipe: Pipeline) -> dict[str, Any]:
    """Stop stages in data order (sources first), close outlets, release Ray if ours."""
    import ray

    summary: dict[str, Any] = {}
    if pipe.lab is not None:
        pipe.lab.halt()  # no more samples: the ingest's inlets then close on quiet streams
    order = ["ingest_imu", "ingest_keypoints", "sync", *pipe.inference_roles, "gait", "publish"]
    if not pipe.inference_roles:
        order.insert(3, "inference")
    if ray.is_initialized():
        try:
            snap = pipe.snapshot(window_s=None, timeout=STOP_TIMEOUT_S)
        except Exception:
            snap = {}
        for name in order:
            handle = pipe.actors.get(name)
            if handle is None:
                continue
            try:
                summary[name] = ray.get(handle.stop.remote(), timeout=STOP_TIMEOUT_S)
            except Exception as exc:
                log.warning("stopping %s failed: %s", name, exc)
        try:
            # the final flushes above reached the metrics actor before this call
            summary["metrics"] = pipe.snapshot(window_s=None, timeout=STOP_TIMEOUT_S) or snap
        except Exception:
            summary["metrics"] = snap
        if "metrics" in pipe.actors:
            try:
                ray.get(pipe.actors["metrics"].stop.remote(), timeout=STOP_TIMEOUT_S)
            except Exception as exc:
                log.warning("stopping metrics failed: %s", exc)
        for handle in (*pipe.hosts.values(), pipe.actors.get("metrics")):
            if handle is not None:
                with contextlib.suppress(Exception):  # already dead is fine
                    ray.kill(handle)
    pipe.actors.clear()
    pipe.hosts.clear()
    if pipe.lab is not None:
        pipe.lab.stop()
        summary["lab"] = {"pushes": pipe.lab.pushes, "late_pushes": pipe.lab.late_pushes}
        pipe.lab = None
    if pipe.started_ray and ray.is_initialized():
        ray.shutdown()
    return summary


def run_pipeline(
    config: Config,
    duration: float | None = None,
    address: str | None = None,
    *,
    on_ready: Callable[[Pipeline], None] | None = None,
    on_status: Callable[[Pipeline, dict[str, Any]], None] | None = None,
    status_every_s: float = 1.0,
    stop: threading.Event | None = None,
    run_tag: str | None = None,
) -> dict[str, Any]:
    """Run the lab until `duration` s, `stop` or Ctrl-C; returns the stop summary.

    `on_ready(pipe)` runs once everything is up; `on_status(pipe, snapshot)` every
    `status_every_s` (the live view). Ctrl-C ends the run cleanly, like the duration.
    """
    pipe = start_pipeline(config, address, run_tag=run_tag)
    interrupted = False
    try:
        if on_ready is not None:
            on_ready(pipe)
        t_end = None if duration is None else time.monotonic() + duration
        next_status = time.monotonic() + status_every_s
        while True:
            now = time.monotonic()
            if t_end is not None and now >= t_end:
                break
            if stop is not None and stop.is_set():
                break
            wake = min(next_status, t_end if t_end is not None else next_status)
            time.sleep(max(0.0, min(0.2, wake - now)))
            if time.monotonic() >= next_status:
                next_status += status_every_s
                try:
                    supervise(pipe)
                    update_placement(pipe)
                    if on_status is not None:
                        on_status(pipe, pipe.snapshot(window_s=5.0))
                except Exception as exc:
                    log.warning("status query failed: %s", exc)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        summary = stop_pipeline(pipe)
    summary["interrupted"] = interrupted
    summary["info"] = pipe.info
    return summary
