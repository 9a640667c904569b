"""Host: one Ray actor (one process) that runs one or more pipeline stages.

Why: on one machine a Ray hop costs ~0.7 ms of CPU on each side plus pickling, and with
seven processes on two cores the hops and the context switches were most of the latency.
Stages hosted together hand messages on with a plain method call (`stage.Local`), each still
on its own worker thread with its own bounded inbox; stages in different hosts use a Ray call
as before. The pipeline decides the grouping (services/pipeline.py `stage_groups`): the hot
chain shares one process on the driver's node (where the sensors' LSL streams are visible);
on a cluster only the inference actors run apart, one per node (services/actors/shards.py).

`RoleHandle` makes a stage inside a host look like an actor handle of its own
(`handle.put.remote(msg)`, `handle.status.remote()`, ...), so the wiring, the supervisor and
the stop sequence do not care how stages are grouped.
"""

from __future__ import annotations

import time
from typing import Any

from services.actors.stage import Inline, Local, inline_enabled

__all__ = ["INLINE_EDGES", "Host", "RoleHandle"]

#: (upstream, downstream) roles whose hand-off runs on the upstream's thread when co-hosted
INLINE_EDGES = {("sync", "inference"), ("inference", "publish")}


class _RoleMethod:
    def __init__(self, host: Any, role: str, method: str) -> None:
        self._host, self._role, self._method = host, role, method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self._method == "put":
            return self._host.put.remote(self._role, *args)
        return self._host.call.remote(self._role, self._method, *args, **kwargs)


class RoleHandle:
    """One stage of a Host actor, addressed like an actor handle (picklable)."""

    def __init__(self, host: Any, role: str, actor_id: str) -> None:
        self.host = host
        self.role = role
        self.actor_id = actor_id

    def __getattr__(self, name: str) -> _RoleMethod:
        if name.startswith("_") or name in ("host", "role", "actor_id"):
            raise AttributeError(name)  # unpickling looks attributes up before they exist
        return _RoleMethod(self.host, self.role, name)

    def __repr__(self) -> str:
        return f"RoleHandle({self.role!r} in actor {self.actor_id[:8]})"


def _actor_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_actor_id()
    except Exception:
        return None


class Host:
    """Builds `specs` {role: (class, args, kwargs)} in this process and dispatches to them."""

    def __init__(self, specs: dict[str, tuple[type, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.actor_id = _actor_id()
        self.stages: dict[str, Any] = {}
        for role, (cls, args, kwargs) in specs.items():
            self.stages[role] = cls(*args, **kwargs)
        self.roles = list(specs)

    def put(self, role: str, msg: Any) -> None:
        self.stages[role].put(msg)

    def call(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "connect":
            return self._connect(role, **kwargs)
        if method == "cpu":
            return self._cpu(role)
        return getattr(self.stages[role], method)(*args, **kwargs)

    def _connect(self, role: str, **handles: Any) -> bool:
        """Downstream stages hosted here are called directly, not through Ray; the sync's
        ticks go on through inference and publish on the sync's own thread (Inline)."""
        local = {}
        for name, h in handles.items():
            if isinstance(h, RoleHandle) and h.actor_id == self.actor_id and h.role in self.stages:
                on_thread = inline_enabled() and (role, name) in INLINE_EDGES
                h = (Inline if on_thread else Local)(self.stages[h.role])
            local[name] = h
        return self.stages[role].connect(**local)

    def _cpu(self, role: str) -> float:
        """CPU seconds of the role: its process when alone; else its worker thread, the first
        role also carrying what no worker thread used (Ray's threads, the actor's calls)."""
        total = time.process_time()
        if len(self.stages) == 1:
            return total
        own = {r: s.thread_cpu() for r, s in self.stages.items()}
        if role == self.roles[0]:
            return own[role] + max(0.0, total - sum(own.values()))
        return own[role]
