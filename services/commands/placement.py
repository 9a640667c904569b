"""`gait-stream placement`: run the simulated lab on a local multi-node Ray cluster and show
where the subjects ran.

Starts `ray.cluster_utils.Cluster` (a head and `--nodes - 1` worker nodes, each its own raylet
and object store on this machine: a real multi-node Ray, only without the network), runs the
pipeline with `model.inference_actors` (default auto: one per node, capped by the subjects)
and prints: the placement table (subject -> inference actor -> node), subjects per node (the
plan and the gait_stream_subjects_per_node gauge), the output rate of every subject read
from a separate LSL inlet, the angle error against the simulator's truth, and actor restarts.

`--kill` then kills one inference actor (`ray.kill(no_restart=False)`: a crash), lets Ray
restart it and the pipeline's supervisor resume it, and reports how long its subjects went
without output. `--compare` feeds one recorded sequence of synced ticks to an inference
actor pinned on each of two nodes and reports a digest of each node's angles (the same bytes
are expected: placement must not change results). `--address` uses an existing cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pylsl

from fusion.skeleton import ANGLE_INDEX
from services.commands.argtypes import at_least_0, at_least_1, positive
from services.config import ConfigError, load_config, simulated_subjects

__all__ = [
    "TRACKED",
    "compare_nodes",
    "digest",
    "local_cluster",
    "measure",
    "recorded_ticks",
    "register",
    "run",
]

log = logging.getLogger(__name__)

TRACKED = ("hip_flexion_l", "hip_flexion_r", "knee_flexion_l", "knee_flexion_r")
OBJECT_STORE_BYTES = 80 * 1024**2  # per node: the pipeline's messages are small
#: --compare: two subjects whose synthetic stand-and-walk lets the classical estimator
#: calibrate within the sequence (others stand too long), so the angles compared are numbers
COMPARE_SEEDS = (10, 13)
COMPARE_SECONDS = 14.0
COMPARE_CHUNK = 30  # ticks per TickMsg (0.5 s)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "placement",
        help="run the simulated lab on a local multi-node Ray cluster and show the placement",
        description="Start a local multi-node Ray cluster (ray.cluster_utils.Cluster), run "
        "the pipeline on the simulated lab and print which node served each subject, "
        "subjects per node, output rate per subject and actor restarts.",
    )
    p.add_argument(
        "--nodes", type=at_least_1, default=3, help="Ray nodes incl. the head (default 3)"
    )
    p.add_argument("--subjects", type=at_least_1, default=3, help="simulated subjects (default 3)")
    p.add_argument("--seconds", type=positive, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=at_least_0, default=2.0, help="unmeasured start (default 2 s)")
    p.add_argument(
        "--inference-actors", default=None, help="auto or N (default: the config's value)"
    )
    p.add_argument("--kill", action="store_true", help="kill one inference actor, time resume")
    p.add_argument(
        "--compare", action="store_true", help="same recorded ticks on two nodes: same angles?"
    )
    p.add_argument("--config", help="base config (default: configs/default.yaml)")
    p.add_argument("--estimator", help="estimator name (default: the config's)")
    p.add_argument("--address", help="use this Ray cluster instead of starting a local one")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- the cluster


@contextlib.contextmanager
def local_cluster(nodes: int, cpus_per_node: int = 1) -> Iterator[str]:
    """A head plus `nodes - 1` worker nodes on this machine; yields the address (connected)."""
    import ray
    from ray.cluster_utils import Cluster

    if nodes < 1:
        raise ValueError(f"placement: --nodes must be >= 1, got {nodes}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = {"num_cpus": cpus_per_node, "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**args, "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@contextlib.contextmanager
def _existing(address: str) -> Iterator[str]:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        yield address
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- measuring


def _config(base: Any, subjects: int, inference_actors: int | str | None) -> tuple[Any, str]:
    tag = f"placement-{os.getpid()}-{subjects}-{int(time.time())}"
    cfg = base.replace()
    cfg.simulate.enabled = True
    cfg.simulate.subjects = subjects
    cfg.simulate.imu_stream_prefix = f"place{os.getpid()}"
    cfg.subjects = simulated_subjects(cfg.simulate, tag)
    cfg.metrics.port = 0  # free ports: must not collide with a running lab
    cfg.outputs.zmq = "tcp://127.0.0.1:*"
    cfg.outputs.lsl = True
    cfg.outputs.lsl_source_id = f"gait-stream-{tag}"
    if inference_actors is not None:
        cfg.model.inference_actors = inference_actors
    return cfg, tag


def _rate(arrival: np.ndarray, t0: float, t1: float) -> float:
    """Samples that arrived per second in [t0, t1) (a backlog catching up reads above 60)."""
    return float(((arrival >= t0) & (arrival < t1)).sum() / max(1e-9, t1 - t0))


def _tick_rate(t: np.ndarray, t0: float, t1: float, lag: float = 1.0) -> float:
    """Distinct ticks per second of sample time in [t0 - lag, t1 - lag): a missing tick
    lowers it, a late one does not (it arrived, after `lag` at most)."""
    sel = (t >= t0 - lag) & (t < t1 - lag)
    return float(len(np.unique(np.round(t[sel], 4))) / max(1e-9, t1 - t0))


def _tracking(t: np.ndarray, x: np.ndarray, truth: tuple[np.ndarray, np.ndarray]) -> dict:
    """RMSE (deg) of the TRACKED angles against the truth, over the ticks with numbers."""
    tt, tx = truth
    if len(tt) < 2 or not len(t):
        return {"finite_ticks": 0, "rmse_deg": {}}
    cols = [ANGLE_INDEX[a] for a in TRACKED]
    sel = np.isfinite(x[:, cols]).all(axis=1) & (t >= tt[0]) & (t <= tt[-1])
    rmse = {}
    for a, i in zip(TRACKED, cols, strict=True):
        if sel.any():
            ref = np.interp(t[sel], tt, tx[:, i])
            rmse[a] = round(float(np.sqrt(np.mean((x[sel, i] - ref) ** 2))), 2)
    return {"finite_ticks": int(sel.sum()), "rmse_deg": rmse}


def _wait(pipe: Any, seconds: float) -> None:
    """Sleep `seconds`, supervising (restarts) and refreshing the placement once a second."""
    from services.pipeline import supervise, update_placement

    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        try:
            supervise(pipe)
            update_placement(pipe)
        except Exception as exc:
            log.warning("placement: status query failed: %s", exc)


def _kill_one(pipe: Any, obs: Any, timeout: float) -> dict[str, Any]:
    """Kill the last inference actor as a crash would; time until its subjects output again."""
    import ray

    from services.commands.bench import Observer
    from services.pipeline import supervise, update_placement

    role = pipe.inference_roles[-1]
    victims = set(pipe.info["inference_actors"][role]["subjects"])
    before = pipe.incarnations.get(role)
    t_kill = pylsl.local_clock()
    ray.kill(pipe.actors[role].host, no_restart=False)
    resumed_by_supervisor = False
    resumed_at: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(resumed_at) < len(victims):
        time.sleep(0.25)
        with contextlib.suppress(Exception):
            resumed_by_supervisor |= role in supervise(pipe, timeout=1.0)
        for feed in obs.angles:
            if feed.subject in victims and feed.subject not in resumed_at and feed.t:
                # a tick after the kill can only have come from the restarted actor (read
                # while the feed's thread still appends: Observer.arrays keeps rows matched)
                t, _, arrival = Observer.arrays(feed)
                new = arrival[t > t_kill + 0.5]
                if len(new):
                    resumed_at[feed.subject] = float(new[0] - t_kill)
    with contextlib.suppress(Exception):
        update_placement(pipe)
    return {
        "actor": role,
        "subjects": sorted(victims),
        "incarnation_changed": pipe.incarnations.get(role) not in (None, before),
        "resumed_by_supervisor": resumed_by_supervisor,
        "resume_s": {s: round(v, 2) for s, v in sorted(resumed_at.items())},
        "t_kill": t_kill,
    }


def measure(
    base: Any,
    subjects: int,
    seconds: float,
    *,
    warmup: float = 2.0,
    inference_actors: int | str | None = None,
    kill: bool = False,
    kill_timeout: float = 20.0,
) -> dict[str, Any]:
    """Run the pipeline on the connected Ray; the placement, rates, tracking and restarts."""
    import ray

    from services.commands.bench import Observer
    from services.pipeline import start_pipeline, stop_pipeline, update_placement

    cfg, tag = _config(base, subjects, inference_actors)
    t_start_up = time.monotonic()
    pipe = start_pipeline(cfg, run_tag=tag)
    obs = Observer()
    out: dict[str, Any] = {}
    try:
        start_up_s = time.monotonic() - t_start_up
        ids = list(pipe.info["subjects"])
        obs.open(
            pipe.info["outputs"]["lsl"],
            {s: pipe.lab.truth_source_id(k) for k, s in enumerate(ids)},
            timeout=15.0,
        )
        _wait(pipe, warmup)
        t0 = pylsl.local_clock()
        _wait(pipe, seconds)
        t1 = pylsl.local_clock()
        update_placement(pipe)
        snap = pipe.snapshot(window_s=None, timeout=10.0)
        out["gauge_subjects_per_node"] = snap.get("gauges", {}).get("subjects_per_node", {})
        out["gauge_subjects_running"] = snap.get("gauges", {}).get("subjects_running", {})
        if kill:
            out["kill"] = _kill_one(pipe, obs, kill_timeout)
            _wait(pipe, 5.0)  # the restarted actor catches up, its subjects keep going
            out["kill"]["rate_after_hz"] = {}
        out["placement"] = pipe.info["placement"]
        out["inference_actors"] = {
            r: {k: v for k, v in inf.items() if k != "pinned"}
            for r, inf in pipe.info["inference_actors"].items()
        }
        out["subjects_per_node"] = pipe.info["subjects_per_node"]
        out["stage_groups"] = pipe.info["stage_groups"]
        out["nodes"] = [
            {"node": n["NodeID"][:12], "ip": n["NodeManagerAddress"], "cpus": n["Resources"]["CPU"]}
            for n in ray.nodes()
            if n.get("Alive")
        ]
        t_end = pylsl.local_clock()
    finally:
        obs.close()
        summary = stop_pipeline(pipe)
    truth = {f.subject: Observer.arrays(f)[:2] for f in obs.truth}
    per_subject = {}
    for feed in obs.angles:
        t, x, arrival = Observer.arrays(feed)
        row = {
            "rate_hz": round(_rate(arrival, t0, t1), 2),
            "tick_rate_hz": round(_tick_rate(t, t0, t1), 2),
        }
        row.update(_tracking(t, x, truth.get(feed.subject, (np.zeros(0), np.zeros((0, 0))))))
        if kill and feed.subject in out["kill"]["subjects"]:
            # ticks per second over the last 3 s of sample time (1 s allowed to arrive)
            out["kill"]["rate_after_hz"][feed.subject] = round(
                _tick_rate(t, t_end - 3.0, t_end, lag=1.0), 2
            )
        per_subject[feed.subject] = row
    totals = summary.get("metrics", {}).get("totals", {})
    out["per_subject"] = per_subject
    out["restarts"] = {k: int(v) for k, v in totals.get("restarts", {}).items() if v}
    out["dropped"] = {k: int(v) for k, v in totals.get("dropped", {}).items() if v}
    out["seconds"] = round(t1 - t0, 2)
    out["start_up_s"] = round(start_up_s, 2)
    out["estimator"] = pipe.info.get("estimator", {}).get("estimator")
    return out


# --------------------------------------------------------------------------- same outputs


def recorded_ticks(
    seeds: tuple[int, ...] = COMPARE_SEEDS,
    seconds: float = COMPARE_SECONDS,
    chunk: int = COMPARE_CHUNK,
    t0: float = 1000.0,
) -> list[dict[str, Any]]:
    """Synced tick batches {subject: SyncedBatch} of synthetic stand-and-walk sequences
    (fusion.synth.generate_sequence: the same bytes in any process), `chunk` ticks each."""
    from fusion.estimators.base import SyncedBatch
    from fusion.synth import SequenceParams, generate_sequence

    params = SequenceParams(activity="start_stop", duration=seconds, n_cameras=0)
    arrays = {f"s{k}": generate_sequence(params, seed).arrays for k, seed in enumerate(seeds)}
    n = min(len(a["t"]) for a in arrays.values())
    out = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        out.append(
            {
                s: SyncedBatch(
                    t=t0 + arr["t"][a:b],
                    imu=arr["imu"][a:b].astype(np.float64),
                    imu_mask=arr["imu_mask"][a:b],
                    keypoints=np.zeros((b - a, 0, 17, 3)),
                    keypoint_mask=np.zeros((b - a, 0), bool),
                )
                for s, arr in arrays.items()
            }
        )
    return out


def digest(angles: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """sha256 of every subject's (t, angles) as float64 bytes, and how many rows are numbers."""
    h = hashlib.sha256()
    finite = {}
    for s in sorted(angles):
        t, x = angles[s]
        h.update(s.encode())
        h.update(np.ascontiguousarray(t, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
        finite[s] = int(np.isfinite(x).all(axis=1).sum())
    return {"sha256": h.hexdigest(), "finite_rows": finite}


class _Collect:
    """Stands in for the publish stage: keeps every AnglesMsg's results."""

    def __init__(self) -> None:
        self.results: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def put(self, msg: Any) -> None:
        for s, r in msg.results.items():
            self.results.setdefault(s, []).append((r.t, r.angles))

    def take(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            s: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            for s, parts in self.results.items()
        }


def _run_on_node(estimator: str, node: str, ticks: list[dict[str, Any]]) -> dict[str, Any]:
    """An inference actor (the pipeline's Host + Inference) pinned hard on `node`, fed `ticks`
    one message per estimator call (it waits for each call, so batching cannot differ)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from services.actors.host import Host, RoleHandle
    from services.actors.inference import Inference
    from services.actors.messages import TickMsg
    from services.trace import Trace

    pin = NodeAffinitySchedulingStrategy(node, soft=False)
    sink = ray.remote(_Collect).options(num_cpus=0, scheduling_strategy=pin).remote()
    spec = {"inference": (Inference, (estimator, []), {"max_depth": len(ticks) + 1})}
    host = ray.remote(Host).options(num_cpus=0, scheduling_strategy=pin).remote(spec)
    inf = RoleHandle(host, "inference", host._actor_id.hex())
    try:
        ray.get(inf.connect.remote(publish=sink), timeout=60)
        ray.get(inf.start.remote(), timeout=60)
        for k, batches in enumerate(ticks):
            first = next(iter(batches.values()))
            inf.put.remote(TickMsg(batches, Trace(float(first.t[-1]))))
            deadline = time.monotonic() + 30.0
            while ray.get(inf.summary.remote(), timeout=30)["calls"] < k + 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"placement --compare: node {node[:12]}: call {k} hung")
                time.sleep(0.005)
        node_seen = ray.get(inf.info.remote(), timeout=30)["node"]
        ray.get(inf.stop.remote(), timeout=30)
        angles = ray.get(sink.take.remote(), timeout=30)
    finally:
        for h in (host, sink):
            with contextlib.suppress(Exception):
                ray.kill(h)
    return {"node": node_seen, **digest(angles)}


def compare_nodes(estimator: str = "classical", n_nodes: int = 2) -> dict[str, Any]:
    """Digests of the angles of the same recorded ticks on `n_nodes` different nodes."""
    import ray

    from services.actors.shards import inference_nodes

    nodes = [n["NodeID"] for n in inference_nodes(ray.nodes(), use_gpu=False)][:n_nodes]
    if len(nodes) < 2:
        raise RuntimeError(
            f"placement --compare: needs 2 nodes with CPUs, the cluster has {len(nodes)}"
        )
    ticks = recorded_ticks()
    runs = [_run_on_node(estimator, node, ticks) for node in nodes]
    return {
        "estimator": estimator,
        "ticks": sum(len(next(iter(b.values())).t) for b in ticks),
        "runs": runs,
        "identical": len({r["sha256"] for r in runs}) == 1,
    }


# --------------------------------------------------------------------------- command


def _report(res: dict[str, Any]) -> None:
    print(f"nodes: {len(res['nodes'])} ({', '.join(n['node'] for n in res['nodes'])})")
    print(f"estimator {res['estimator']}; stage processes: {', '.join(res['stage_groups'])}")
    print(
        f"{'subject':<9}{'actor':<13}{'node':<14}{'ip':<16}{'ticks/s':>8}{'arrived/s':>10}"
        f"  RMSE deg {'/'.join(TRACKED)} (ticks with angles)"
    )
    for s, p in sorted(res["placement"].items()):
        row = res["per_subject"].get(s, {})
        rmse = " ".join(f"{v:.1f}" for v in row.get("rmse_deg", {}).values()) or "-"
        print(
            f"{s:<9}{p['actor']:<13}{p['node']:<14}{p['ip']:<16}"
            f"{row.get('tick_rate_hz', 0):>8.1f}{row.get('rate_hz', 0):>10.1f}"
            f"  {rmse} ({row.get('finite_ticks', 0)})"
        )
    print(
        "subjects per node (plan): "
        + ", ".join(f"{k}={v}" for k, v in res["subjects_per_node"].items())
    )
    gauge = res.get("gauge_subjects_per_node", {})
    print(
        "gait_stream_subjects_per_node: "
        + (", ".join(f"{k}={v:g}" for k, v in gauge.items()) or "-")
    )
    print(
        f"restarts: {res['restarts'] or 0}; dropped {res['dropped']}; measured {res['seconds']} s"
    )
    if "kill" in res:
        k = res["kill"]
        print(
            f"killed {k['actor']} (subjects {', '.join(k['subjects'])}): restarted by Ray "
            f"{'and resumed' if k['resumed_by_supervisor'] else 'but NOT resumed'}; output again "
            f"after {k['resume_s'] or 'never'} s; rate after {k['rate_after_hz']} Hz"
        )
    if "compare" in res:
        c = res["compare"]
        runs = "; ".join(f"node {r['node']}: {r['sha256'][:16]}" for r in c["runs"])
        print(
            f"same ticks on {len(c['runs'])} nodes: {'identical' if c['identical'] else 'DIFFERENT'}"
            f" angles ({c['ticks']} ticks; {runs})"
        )


def run(args: argparse.Namespace) -> int:

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"gait-stream placement: {exc}", file=sys.stderr)
        return 2
    if args.estimator:
        cfg.model.estimator = args.estimator
    actors: int | str | None = args.inference_actors
    if actors is not None and actors != "auto":
        if not actors.isdigit() or int(actors) < 1:
            print(
                f"gait-stream placement: --inference-actors must be auto or N >= 1, got {actors!r}",
                file=sys.stderr,
            )
            return 2
        actors = int(actors)
    try:
        with _existing(args.address) if args.address else local_cluster(args.nodes):
            res = measure(
                cfg,
                args.subjects,
                args.seconds,
                warmup=args.warmup,
                inference_actors=actors,
                kill=args.kill,
            )
            if args.compare:
                res["compare"] = compare_nodes(cfg.model.estimator)
    except Exception as exc:
        log.debug("placement failed", exc_info=True)
        print(f"gait-stream placement: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res))
    else:
        _report(res)
    return 0
