"""Inference: one estimator (fusion.estimators) serving every subject, batched per call.

Whatever tick batches queued while the previous call ran are merged per subject and handed to
`Estimator.update_many` at once, so a neural estimator runs one device batch for all subjects
and a slow call turns into bigger batches rather than a growing queue (the inbox is still
bounded: beyond `max_depth` the oldest batches are dropped and counted).

A GPU is used when torch sees one: the pipeline reserves it for this actor (`num_gpus=1`) when
the Ray cluster has one, and the estimator is told `device="cuda"` if it takes a device.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from typing import Any

import numpy as np

from fusion.estimators.base import AnglesResult, Estimator, SyncedBatch
from fusion.skeleton import SEGMENT_INDEX
from services.actors.messages import AnglesMsg, TickMsg
from services.actors.stage import Stage, call

__all__ = ["Inference", "concat_batches", "pick_device"]

log = logging.getLogger(__name__)

_FEET = [SEGMENT_INDEX["foot_l"], SEGMENT_INDEX["foot_r"]]


def concat_batches(batches: list[SyncedBatch]) -> SyncedBatch:
    """Consecutive batches of one subject as one."""
    return SyncedBatch.concat(batches)


def create_estimator(name: str, cameras: list[Any], options: dict[str, Any]) -> Estimator:
    """fusion.estimators.registry.create(name, cameras, **options)."""
    from fusion.estimators import registry

    return registry.create(name, cameras, **options)


def pick_device(setting: str) -> str:
    """'cpu' or 'cuda' for a config value auto|cpu|cuda (auto: cuda when torch sees one).

    torch is only imported when the estimator already did (neural ones) or cuda is asked for:
    the classical estimator should not pay torch's import time and memory.
    """
    if setting == "cpu":
        return "cpu"
    if setting == "auto" and "torch" not in sys.modules:
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        log.warning("model.device is cuda but torch sees no GPU here; running on the CPU")
    return "cpu"


def _node() -> tuple[str, str]:
    """(node label, IP address) of this process: the Ray node id's first 12 hex digits (the
    {node} label of gait_stream_subjects_per_node), or the host name outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return ctx.get_node_id()[:12], ray.util.get_node_ip_address()
    except Exception:
        pass
    return socket.gethostname(), "127.0.0.1"


class Inference(Stage):
    stage = "inference"
    idle_s = 0.05  # only timers (metrics flush, gait batching): messages wake it at once

    def __init__(
        self,
        estimator: str,
        cameras: list[Any],
        publish: Any = None,
        gait: Any = None,
        metrics: Any = None,
        *,
        options: dict[str, Any] | None = None,
        device: str = "auto",
        rate_hz: float = 60.0,
        lookahead: int | None = None,
        max_depth: int = 32,
        flush_s: float = 0.25,
        report_subjects: bool = True,
        nice: int | None = None,
    ) -> None:
        super().__init__(metrics=metrics, max_depth=max_depth, flush_s=flush_s)
        self.nice = nice
        # one of several inference actors (shards.py) must not set the subjects gauges: two
        # on one node would overwrite each other's count; the pipeline sums them (running())
        self.report_subjects = report_subjects
        self.publish = publish
        self.gait = gait
        self.rate = float(rate_hz)
        opts = dict(options or {})
        if lookahead and "lookahead" not in opts:
            opts["lookahead"] = lookahead  # an estimator with a settable look-ahead takes it
        t0 = time.perf_counter()
        self.est: Estimator = create_estimator(estimator, cameras, opts)
        self.device = pick_device(device)
        # an estimator that chose its own device (a neural one picks cuda when it sees it)
        # follows the config's: `device: cpu` on a GPU machine means the CPU
        if self.device == "cuda" or getattr(self.est, "device", self.device) != self.device:
            self._to_device(self.device)
        self.start_s = time.perf_counter() - t0  # estimator load (+ ONNX export or cache load)
        self.name = getattr(self.est, "name", estimator)
        actual = int(getattr(self.est, "lookahead", 0))
        if lookahead is not None and lookahead != actual:
            log.warning(
                "model.lookahead is %d but estimator %s works with %d frames; using %d",
                lookahead,
                self.name,
                actual,
                actual,
            )
        self.lookahead_s = float(getattr(self.est, "lookahead", 0)) / self.rate
        self.node, self.ip = _node()
        self.seen: dict[str, float] = {}
        self._gyro: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._to_gait: list[AnglesMsg] = []
        self._gait_sent = 0.0
        self.gait_every_s = 0.1
        self.calls = 0
        self.buf.set("lookahead", (), self.lookahead_s)
        log.info(
            "estimator %s on %s (look-ahead %d frames), ready in %.1f s",
            self.name,
            self.device,
            self.est.lookahead,
            self.start_s,
        )

    def _to_device(self, device: str) -> None:
        for attr in ("to", "set_device"):
            fn = getattr(self.est, attr, None)
            if callable(fn):
                fn(device)
                return

    def info(self) -> dict[str, Any]:
        """What runs here; a neural estimator adds its back-end (torch/onnx), thread count,
        where its ONNX graph came from (cache or export, with the seconds it took) and its gyro
        refinement's settings."""
        detail = getattr(self.est, "info", None)
        est = detail() if callable(detail) else {}
        graph = est.get("onnx_graph") or {}
        return {
            "estimator": self.name,
            "backend": est.get("backend"),
            "threads": est.get("threads"),
            "onnx_graph": {k: graph[k] for k in ("source", "export_s", "load_s") if k in graph},
            "start_s": round(self.start_s, 2),
            "device": self.device,
            "lookahead": int(getattr(self.est, "lookahead", 0)),
            "lookahead_s": self.lookahead_s,
            "modalities": sorted(getattr(self.est, "modalities", ())),
            "gyro_refine": est.get("gyro_refine"),  # its settings, None when off
            "node": self.node,
            "ip": self.ip,
        }

    def running(self) -> dict[str, Any]:
        """Where this actor runs and the subjects it served in the last 2 s."""
        now = time.monotonic()
        subjects = sorted(s for s, t in self.seen.items() if now - t < 2.0)
        return {"node": self.node, "ip": self.ip, "subjects": subjects, "calls": self.calls}

    def step(self, messages: list[Any]) -> None:
        ticks = [m for m in messages if isinstance(m, TickMsg)]
        if not ticks:
            self._send_gait()
            return
        per_subject: dict[str, list[SyncedBatch]] = {}
        for m in ticks:
            for subject, batch in m.batches.items():
                per_subject.setdefault(subject, []).append(batch)
        batches = {s: concat_batches(b) for s, b in per_subject.items()}
        t0 = time.perf_counter()
        results = self.est.update_many(batches)
        took = time.perf_counter() - t0
        self.buf.observe("estimator", (self.name,), took)
        n_ticks = max(len(b.t) for b in batches.values())
        self.buf.observe("estimator_tick", (self.name,), took / max(n_ticks, 1))
        self.calls += 1
        now = time.monotonic()
        for s in batches:
            self.seen[s] = now
        trace = max((m.trace for m in ticks), key=lambda tr: tr.last()).stamp("inference")
        for s, b in batches.items():
            self._remember(s, b)
        results = {s: r for s, r in results.items() if len(r.t)}
        if not results:
            return
        call(self.publish, "put", AnglesMsg(results, self.lookahead_s, trace))
        if self.gait is not None:
            gyro = {s: self._foot_gyro(s, r.t) for s, r in results.items()}
            self._to_gait.append(AnglesMsg(results, self.lookahead_s, trace.branch(), gyro))
            self._send_gait()

    def _send_gait(self, force: bool = False) -> None:
        """Gait events are confirmed ~0.3 s after they happen: batching 100 ms costs nothing
        and saves 5 of 6 Ray calls (and GaitTracker calls)."""
        now = time.monotonic()
        if not self._to_gait or (not force and now - self._gait_sent < self.gait_every_s):
            return
        self._gait_sent = now
        msgs, self._to_gait = self._to_gait, []
        results: dict[str, list[AnglesResult]] = {}
        gyro: dict[str, list[np.ndarray]] = {}
        for m in msgs:
            for s, r in m.results.items():
                results.setdefault(s, []).append(r)
                gyro.setdefault(s, []).append(m.foot_gyro[s])
        merged = {
            s: AnglesResult(
                np.concatenate([r.t for r in rs]), np.concatenate([r.angles for r in rs])
            )
            for s, rs in results.items()
        }
        call(
            self.gait,
            "put",
            AnglesMsg(
                merged,
                self.lookahead_s,
                msgs[-1].trace,
                {s: np.concatenate(g) for s, g in gyro.items()},
            ),
        )

    def _remember(self, subject: str, batch: SyncedBatch) -> None:
        """Keep ~2 s of foot gyro by tick, so results for earlier ticks (look-ahead) find it."""
        g = np.where(batch.imu_mask[:, _FEET, None], batch.imu[:, _FEET, :3], np.nan)
        t_old, g_old = self._gyro.get(subject, (np.zeros(0), np.zeros((0, 2, 3))))
        t_all = np.concatenate([t_old, batch.t])
        g_all = np.concatenate([g_old, g])
        keep = t_all >= t_all[-1] - 2.0 if len(t_all) else slice(None)
        self._gyro[subject] = (t_all[keep], g_all[keep])

    def _foot_gyro(self, subject: str, t: np.ndarray) -> np.ndarray:
        out = np.full((len(t), 2, 3), np.nan)
        hist_t, hist_g = self._gyro.get(subject, (np.zeros(0), np.zeros((0, 2, 3))))
        if len(hist_t):
            i = np.clip(np.searchsorted(hist_t, t), 0, len(hist_t) - 1)
            hit = np.abs(hist_t[i] - t) < 0.25 / self.rate
            out[hit] = hist_g[i[hit]]
        return out

    def flush(self, force: bool = False) -> None:
        if self.report_subjects:
            now = time.monotonic()
            running = sum(1 for t in self.seen.values() if now - t < 2.0)
            self.buf.set("subjects_running", (), running)
            self.buf.set("subjects_per_node", (self.node,), running)
        super().flush(force)

    def close(self) -> None:
        if self.gait is not None:
            self._send_gait(force=True)

    def summary(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "calls": self.calls, **self.info()}
