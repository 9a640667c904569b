"""Scale-out: subjects sharded over inference actors on several Ray nodes.

The sharding rules and the `Shards` router are checked in this process. The cluster itself,
`ray.cluster_utils.Cluster` with a head and two worker nodes on this machine (each its own
raylet and object store), runs in a subprocess (`gait-stream placement --json`) so the
session's Ray (tests/conftest.py) is not disturbed. One run of it is shared by the tests
below; it checks, on 2 simulated subjects:
- placement: the subjects are served by inference actors on at least 2 nodes, every subject
  by exactly one actor, and gait_stream_subjects_per_node says the same;
- output: ~60 Hz per subject (read from a separate LSL inlet; the one-node end-to-end test's
  lower bound, 55), and once a subject's estimator has calibrated its angles track the
  simulator's truth within that test's RMSE bound (tests/test_pipeline_e2e.py);
- a crash: one inference actor killed (`ray.kill(no_restart=False)`) is restarted by Ray,
  resumed by the supervisor, and its subject's angles flow again at ~60 Hz;
- the same outputs on any node: one recorded sequence of synced ticks fed to an inference
  actor pinned on node A and one on node B gives the same bytes of angles, and the same as
  the estimator run in this process without Ray.

Measured on the shared 2-core machine (load average 14-22 from other work): the whole file
110 s, of which the cluster's start ~15-35 s, the pipeline's ~15-25 s, the restart of the
killed actor ~11-15 s.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.actors.messages import TickMsg
from services.actors.shards import (
    Shards,
    inference_nodes,
    inference_role,
    resolve_inference_actors,
    shard_subjects,
)
from services.actors.stage import Local
from services.trace import Trace

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = 2
NODES = 3
SECONDS = 12.0
RUN_TIMEOUT_S = 400.0  # a loaded 2-core machine starts 3 raylets and ~8 workers slowly
TRACKING_RMSE_DEG = 10.0  # the one-node bound of tests/test_pipeline_e2e.py
MIN_TRACKED_TICKS = 60


# --------------------------------------------------------------------------- sharding rules


def test_shard_subjects_contiguous_balanced_blocks() -> None:
    ids = [f"s{k}" for k in range(7)]
    assert shard_subjects(ids, 3) == [["s0", "s1", "s2"], ["s3", "s4"], ["s5", "s6"]]
    assert shard_subjects(ids, 1) == [ids]
    assert shard_subjects(ids[:2], 2) == [["s0"], ["s1"]]
    blocks = shard_subjects(ids, 4)
    assert [s for b in blocks for s in b] == ids  # contiguous, in order, nothing lost
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError, match="at least one actor"):
        shard_subjects(ids, 0)
    with pytest.raises(ValueError, match="duplicate"):
        shard_subjects(["s0", "s0"], 1)


def test_actor_count_auto_and_explicit() -> None:
    assert resolve_inference_actors("auto", 3, 1) == 1  # one node: one actor
    assert resolve_inference_actors("auto", 3, 0) == 1  # no qualifying node: still one
    assert resolve_inference_actors("auto", 3, 5) == 3  # capped by the subjects
    assert resolve_inference_actors("auto", 8, 3) == 3
    assert resolve_inference_actors(2, 8, 1) == 2  # explicit: also on one node
    assert resolve_inference_actors(4, 2, 3) == 2
    for bad in (0, "3", True):
        with pytest.raises(ValueError, match="inference_actors"):
            resolve_inference_actors(bad, 3, 3)
    assert inference_role(0, 1) == "inference"
    assert [inference_role(i, 2) for i in range(2)] == ["inference/0", "inference/1"]


def _node(node_id: str, ip: str, cpu: float = 1, gpu: float = 0, head: bool = False) -> dict:
    res: dict[str, float] = {"CPU": cpu, f"node:{ip}": 1.0}
    if gpu:
        res["GPU"] = gpu
    if head:
        res["node:__internal_head__"] = 1.0
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": True, "Resources": res}


def test_inference_nodes_workers_first_gpu_nodes_when_asked() -> None:
    head = _node("ff01", "10.0.0.1", cpu=4, head=True)
    w2 = _node("bb02", "10.0.0.3")
    w1 = _node("cc03", "10.0.0.2")
    g1 = _node("aa04", "10.0.0.4", cpu=8, gpu=1)
    dead = {**_node("dd05", "10.0.0.5"), "Alive": False}
    no_cpu = _node("ee06", "10.0.0.6", cpu=0)
    nodes = [head, w2, dead, g1, w1, no_cpu]
    ids = [n["NodeID"] for n in inference_nodes(nodes, use_gpu=False)]
    assert ids == ["cc03", "bb02", "aa04", "ff01"]  # workers by address, the head last
    assert [n["NodeID"] for n in inference_nodes(nodes, use_gpu=True)] == ["aa04"]
    # the order Ray lists them in does not matter
    assert [n["NodeID"] for n in inference_nodes(nodes[::-1], use_gpu=False)] == ids


class _Inbox:
    def __init__(self) -> None:
        self.msgs: list[Any] = []

    def put(self, msg: Any) -> None:
        self.msgs.append(msg)

    def ping(self) -> str:
        return f"{len(self.msgs)} messages"


def _batch(t0: float, n: int = 3) -> Any:
    from fusion.estimators.base import SyncedBatch

    return SyncedBatch(
        t=t0 + np.arange(n) / 60.0,
        imu=np.zeros((n, 13, 6)),
        imu_mask=np.ones((n, 13), bool),
        keypoints=np.zeros((n, 0, 17, 3)),
        keypoint_mask=np.zeros((n, 0), bool),
    )


def test_shards_route_each_subject_to_its_actor_and_fan_out_the_rest() -> None:
    inboxes = [_Inbox(), _Inbox()]
    shards = Shards([Local(b) for b in inboxes], shard_subjects(["s0", "s1", "s2"], 2))
    batches = {s: _batch(k) for k, s in enumerate(["s0", "s1", "s2"])}
    shards.put.remote(TickMsg(batches, Trace(1.0)))
    shards.put.remote(TickMsg({"s2": _batch(5.0)}, Trace(2.0)))  # only actor 1 gets this
    got = [[sorted(m.batches) for m in b.msgs] for b in inboxes]
    assert got == [[["s0", "s1"]], [["s2"], ["s2"]]]
    assert inboxes[1].msgs[1].batches["s2"] is not None
    assert inboxes[0].msgs[0].batches["s1"] is batches["s1"]
    # each part has its own trace: a stage stamping one must not stamp the other
    inboxes[0].msgs[0].trace.stamp("inference")
    assert inboxes[1].msgs[0].trace.stamps == []
    assert shards.ping.remote() == ["1 messages", "2 messages"]
    with pytest.raises(KeyError, match="'s9'"):
        shards.put.remote(TickMsg({"s0": _batch(0.0), "s9": _batch(0.0)}, Trace(3.0)))
    assert len(inboxes[0].msgs) == 2  # the known subject was still forwarded
    # it travels to the sync actor: it must pickle, routing table and all
    again = pickle.loads(pickle.dumps(Shards(["h0", "h1"], [["s0"], ["s1", "s2"]])))
    assert again.owner == {"s0": 0, "s1": 1, "s2": 1} and again.handles == ["h0", "h1"]
    with pytest.raises(ValueError, match="2 handle"):
        Shards(["h0", "h1"], [["s0"]])
    with pytest.raises(ValueError, match="'s0'"):
        Shards(["h0", "h1"], [["s0"], ["s0"]])


# --------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `gait-stream placement` run on a head + 2 worker nodes (in a subprocess)."""
    log = tmp_path_factory.mktemp("cluster") / "placement.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "placement",
        "--nodes",
        str(NODES),
        "--subjects",
        str(SUBJECTS),
        "--seconds",
        str(SECONDS),
        "--kill",
        "--compare",
        "--json",
        # about placement, restarts and byte-identical outputs, with the calibrating estimator
        # its tracking check is written for (not the default, FusionNet)
        "--estimator",
        "classical",
    ]
    with log.open("w") as err:
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=RUN_TIMEOUT_S,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"placement run over {RUN_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        pytest.fail(
            f"placement exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{log.read_text()[-4000:]}"
        )
    return json.loads(lines[-1])


def test_subjects_are_placed_on_several_nodes(cluster_run: dict[str, Any]) -> None:
    res = cluster_run
    placement = res["placement"]
    assert sorted(placement) == [f"s{k}" for k in range(SUBJECTS)]
    nodes = {p["node"] for p in placement.values()}
    assert len(nodes) >= 2, f"all subjects on one node: {placement}"
    assert {n["node"] for n in res["nodes"]} >= nodes and len(res["nodes"]) == NODES
    # auto: one actor per node (capped by the subjects), each on its own node
    actors = res["inference_actors"]
    assert len(actors) == min(NODES, SUBJECTS)
    assert len({a["node"] for a in actors.values()}) == len(actors)
    assert sorted(s for a in actors.values() for s in a["subjects"]) == sorted(placement)
    for s, p in placement.items():
        assert s in actors[p["actor"]]["subjects"] and actors[p["actor"]]["node"] == p["node"]
    counts = res["subjects_per_node"]
    assert sum(counts.values()) == SUBJECTS and set(counts) == nodes
    # the metric, from what each actor actually served, says the same
    assert {k: int(v) for k, v in res["gauge_subjects_per_node"].items() if v} == counts
    assert res["gauge_subjects_running"] == {"": SUBJECTS}


def test_every_subject_at_the_model_rate_and_tracking_the_truth(
    cluster_run: dict[str, Any],
) -> None:
    per = cluster_run["per_subject"]
    assert sorted(per) == [f"s{k}" for k in range(SUBJECTS)]
    for s, row in per.items():
        # every tick of the measured window came out (a missing tick lowers this) ...
        assert 55.0 < row["tick_rate_hz"] < 61.5, f"{s}: {row} on the cluster"
        # ... and arrived within it (a backlog catching up reads above 60; a loaded machine)
        assert 45.0 < row["rate_hz"] < 75.0, f"{s}: {row} on the cluster"
    tracked = {s: r for s, r in per.items() if r["finite_ticks"] >= MIN_TRACKED_TICKS}
    assert tracked, f"no subject's estimator calibrated during the run: {per}"
    for s, row in tracked.items():
        # lower-limb mean as the bench reports it: a few seconds after a live calibration one
        # angle alone can be off by more on one node too (its calibration depends on timing)
        mean = float(np.mean(list(row["rmse_deg"].values())))
        assert mean < TRACKING_RMSE_DEG, (
            f"{s}: RMSE vs truth {row['rmse_deg']} deg over {row['finite_ticks']} ticks; "
            f"dropped {cluster_run['dropped']}, restarts {cluster_run['restarts']}"
        )


def test_a_killed_inference_actor_is_restarted_and_its_subjects_resume(
    cluster_run: dict[str, Any],
) -> None:
    kill = cluster_run["kill"]
    assert kill["subjects"], kill
    assert kill["incarnation_changed"] and kill["resumed_by_supervisor"], kill
    assert sorted(kill["resume_s"]) == kill["subjects"], f"no output after the restart: {kill}"
    for s, rate in kill["rate_after_hz"].items():
        assert 55.0 < rate < 61.5, f"{s} after the restart: {rate} ticks/s"
    assert cluster_run["restarts"] == {kill["actor"]: 1}


def test_same_ticks_give_the_same_angles_on_any_node(cluster_run: dict[str, Any]) -> None:
    from services.actors.inference import create_estimator
    from services.commands.placement import digest, recorded_ticks

    cmp = cluster_run["compare"]
    runs = cmp["runs"]
    assert len({r["node"] for r in runs}) == 2, runs
    # the reference: the estimator in this process, no Ray, one call per recorded message
    est = create_estimator(cmp["estimator"], [], {})
    parts: dict[str, list[Any]] = {}
    for batches in recorded_ticks():
        for s, r in est.update_many(batches).items():
            if len(r.t):
                parts.setdefault(s, []).append(r)
    ref = digest(
        {
            s: (np.concatenate([r.t for r in rs]), np.concatenate([r.angles for r in rs]))
            for s, rs in parts.items()
        }
    )
    assert all(n > 100 for n in ref["finite_rows"].values()), ref  # compared angles are numbers
    for r in runs:
        assert r["finite_rows"] == ref["finite_rows"], (r, ref)
        assert r["sha256"] == ref["sha256"], f"node {r['node']} gave other angles"
    assert cmp["identical"]


def test_start_prints_the_placement() -> None:
    from services.commands.start import placement_lines

    info = {
        "inference_actors": {
            "inference/0": {"node": "aa11", "ip": "10.0.0.2", "subjects": ["s0", "s1"]},
            "inference/1": {"node": "bb22", "ip": "10.0.0.3", "subjects": ["s2"]},
        },
        "placement": {"s0": {}, "s1": {}, "s2": {}},
        "subjects_per_node": {"aa11": 2, "bb22": 1},
    }
    text = "\n".join(placement_lines(info))
    assert "3 subject(s) on 2 inference actor(s), 2 node(s)" in text
    assert "inference/0    node aa11 (10.0.0.2): s0, s1" in text
    assert "subjects per node: aa11=2, bb22=1" in text
    assert placement_lines({}) == []
