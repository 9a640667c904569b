"""Subjects sharded over several inference actors, behind one handle.

Why: one inference actor serves every subject in one process (one core, one GPU). On a Ray
cluster the subjects are split into contiguous, balanced blocks, one block per inference actor,
each actor on its own node. The sync stage must not care: `Shards` looks like the single
inference handle it had (`shards.put.remote(TickMsg)`), splits each tick batch by subject and
forwards each part to the actor that owns those subjects; any other method fans out to every
actor and returns the list of their results. Publish and gait take AnglesMsg from anyone, so
they need no change either.

The pure helpers (`shard_subjects`, `inference_nodes`, `resolve_inference_actors`) decide
how many actors, which subjects each serves and which node each goes to, deterministically
from the subject list and the cluster's node table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.actors.messages import TickMsg

__all__ = [
    "Shards",
    "inference_nodes",
    "inference_role",
    "resolve_inference_actors",
    "shard_subjects",
]


def inference_role(index: int, count: int) -> str:
    """The role (actor) name of inference actor `index` of `count`: 'inference' when alone."""
    return "inference" if count == 1 else f"inference/{index}"


def shard_subjects(subjects: Sequence[str], n: int) -> list[list[str]]:
    """Contiguous balanced blocks: the first len % n blocks get one subject more."""
    if n < 1:
        raise ValueError(f"shard_subjects: need at least one actor, got {n}")
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"shard_subjects: duplicate subject ids in {list(subjects)}")
    q, r = divmod(len(subjects), n)
    out, i = [], 0
    for k in range(n):
        size = q + (1 if k < r else 0)
        out.append(list(subjects[i : i + size]))
        i += size
    return out


def inference_nodes(nodes: list[dict[str, Any]], use_gpu: bool) -> list[dict[str, Any]]:
    """The alive nodes an inference actor may go to, in placement order.

    `nodes` is `ray.nodes()`. GPU nodes when `use_gpu`, else nodes with CPUs; worker nodes
    before the head (the head already runs the driver, sync, ingest and publish), then by
    address and node id so the order does not depend on the order Ray lists them in.
    """
    key = "GPU" if use_gpu else "CPU"
    alive = [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get(key, 0) > 0]

    def order(n: dict[str, Any]) -> tuple[bool, str, str]:
        head = "node:__internal_head__" in n.get("Resources", {})
        return head, str(n.get("NodeManagerAddress", "")), str(n.get("NodeID", ""))

    return sorted(alive, key=order)


def resolve_inference_actors(setting: int | str, n_subjects: int, n_nodes: int) -> int:
    """How many inference actors: `setting` (auto | N) capped by the subjects (at least 1).

    auto: one per node that can run inference (`n_nodes`, see inference_nodes); one node (or
    none that qualifies) gives 1, the same process layout as before sharding existed.
    """
    if setting == "auto":
        want = max(1, n_nodes)
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        want = setting
    else:
        raise ValueError(
            f"model.inference_actors: must be auto or a whole number >= 1, got {setting!r}"
        )
    return max(1, min(want, n_subjects))


class _FanOut:
    def __init__(self, shards: Shards, method: str) -> None:
        self._shards, self._method = shards, method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self._method == "put" and args and isinstance(args[0], TickMsg):
            return self._shards.route(args[0])
        return [getattr(h, self._method).remote(*args, **kwargs) for h in self._shards.handles]


class Shards:
    """Several inference actors addressed like one handle (picklable: it travels to sync).

    `handles[i]` serves `blocks[i]`. `put.remote(TickMsg)` sends each actor only its own
    subjects' batches (nothing when a tick has none of them); a subject that no actor owns is
    an error naming it, after the known subjects were forwarded.
    """

    def __init__(self, handles: Sequence[Any], blocks: Sequence[Sequence[str]]) -> None:
        if len(handles) != len(blocks) or not handles:
            raise ValueError(f"Shards: {len(handles)} handle(s) for {len(blocks)} subject block(s)")
        owner: dict[str, int] = {}
        for i, block in enumerate(blocks):
            for s in block:
                if s in owner:
                    raise ValueError(f"Shards: subject {s!r} is in blocks {owner[s]} and {i}")
                owner[s] = i
        self.handles = list(handles)
        self.blocks = [list(b) for b in blocks]
        self.owner = owner

    def __getattr__(self, name: str) -> _FanOut:
        if name.startswith("_") or name in ("handles", "blocks", "owner"):
            raise AttributeError(name)  # unpickling looks attributes up before they exist
        return _FanOut(self, name)

    def route(self, msg: TickMsg) -> list[Any]:
        """Forward each actor its part of `msg`; returns what the puts returned."""
        parts: dict[int, dict[str, Any]] = {}
        unknown = []
        for subject, batch in msg.batches.items():
            i = self.owner.get(subject)
            if i is None:
                unknown.append(subject)
            else:
                parts.setdefault(i, {})[subject] = batch
        out = [
            self.handles[i].put.remote(TickMsg(batches, msg.trace.branch()))
            for i, batches in sorted(parts.items())
        ]
        if unknown:
            raise KeyError(
                f"inference shards: subject(s) {unknown} have no inference actor "
                f"(known: {sorted(self.owner)})"
            )
        return out

    def __len__(self) -> int:
        return len(self.handles)

    def __repr__(self) -> str:
        return f"Shards({self.blocks})"
