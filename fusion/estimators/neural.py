"""The neural estimators (VideoNet, IMUNet, FusionNet) served live: one batched step per tick.

`NeuralEstimator` keeps every subject's streaming cache (fusion.nn.models.GaitNet.step: conv
histories, per-layer keys/values of the last window-1 frames, a frame count) as one row of a
batch-indexable cache. A call of `update_many` normalises each subject's new ticks
(fusion.nn.features.normalise_inputs, strictly per frame), then for tick index i gathers the
rows of the subjects that have an i-th tick, runs ONE `step` for all of them and scatters the
new caches back. A subject that appears gets a zero cache (frame count 0); `reset` frees its
row. The output of frame n describes frame n - lookahead, so a subject's first `lookahead`
ticks return nothing and the answer carries the time of the tick it describes.

Video input: `batch.joints3d` when the batch has it, else the 2-D keypoints triangulated with
the cameras the factory got (fusion.triangulation, as the classical video estimator does).

Back-ends for `step`: torch, or ONNX Runtime on a graph exported with the caches as inputs and
outputs (batch axis dynamic). `backend="auto"` times both on the CPU when the model is loaded
and keeps the faster (`info()` says which and the times); on a GPU it uses torch. The export's
numbers are checked against torch before the ONNX path is used at all.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.estimators.base import AnglesResult, Estimator, SyncedBatch
from fusion.skeleton import KEYPOINTS, SEGMENTS
from fusion.triangulation import projection_matrices, triangulate_keypoints

__all__ = ["NeuralEstimator", "factory", "measure_speed"]

log = logging.getLogger(__name__)

_INPUTS = ("imu", "imu_mask", "joints", "joints_mask")
_MODALITIES = {
    "videonet": frozenset({"video"}),
    "imunet": frozenset({"imu"}),
    "fusionnet": frozenset({"imu", "video"}),
}


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no GPU")
    return device


class _StepModule(torch.nn.Module):
    """model.step with flat tensors in and out (the cache keys in a fixed order): what ONNX
    exports, with `rot6d` as the only output besides the new cache."""

    def __init__(self, model: torch.nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys)

    def forward(self, imu, imu_mask, joints, joints_mask, *cache):  # type: ignore[no-untyped-def]
        out, new = self.model.step(
            dict(zip(self.keys, cache, strict=True)), imu, imu_mask, joints, joints_mask
        )
        return (out["rot6d"], *[new[k] for k in self.keys])


class _OnnxStep:
    """ONNX Runtime session of `_StepModule`; same call as the torch step (numpy in/out)."""

    def __init__(self, model: torch.nn.Module, keys: Sequence[str], threads: int) -> None:
        import onnx
        import onnxruntime as ort

        self.keys = list(keys)
        wrapper = _StepModule(model, keys).eval()
        state = model.init_state(2)
        args = (
            torch.zeros(2, len(SEGMENTS), 6),
            torch.ones(2, len(SEGMENTS), dtype=torch.bool),
            torch.zeros(2, len(KEYPOINTS), 3),
            torch.ones(2, len(KEYPOINTS), dtype=torch.bool),
            *[state[k] for k in self.keys],
        )
        names_in = [*_INPUTS, *self.keys]
        names_out = ["rot6d", *[f"new_{k}" for k in self.keys]]
        buf = io.BytesIO()
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                buf,
                input_names=names_in,
                output_names=names_out,
                dynamic_axes={n: {0: "batch"} for n in names_in + names_out},
                opset_version=17,
                dynamo=False,
            )
        graph = onnx.load_from_string(buf.getvalue())
        # kernel-1 convolutions keep a zero-length history: in ONNX Reshape a 0 means "copy
        # that dimension" unless allowzero=1; the traced shapes are torch's, where 0 is 0
        for node in graph.graph.node:
            if node.op_type == "Reshape":
                attrs = [a for a in node.attribute if a.name == "allowzero"]
                if attrs:
                    attrs[0].i = 1
                else:
                    node.attribute.append(onnx.helper.make_attribute("allowzero", 1))
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(
            graph.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        self.names_in = names_in

    def __call__(
        self, cache: dict[str, np.ndarray], inputs: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feed = dict(zip(_INPUTS, inputs, strict=True))
        feed.update(cache)
        res = self.session.run(None, feed)
        return res[0], dict(zip(self.keys, res[1:], strict=True))


class NeuralEstimator(Estimator):
    """A trained GaitNet (fusion.nn) as a streaming estimator for many subjects."""

    def __init__(
        self,
        weights: str | Path = "fusionnet",
        cameras: Sequence[Any] | None = None,
        *,
        device: str = "auto",
        backend: str = "auto",
        lookahead: int | None = None,
        min_confidence: float = 0.1,
        outlier_px: float | None = 25.0,
        threads: int | None = None,
        name: str | None = None,
        model: Any = None,
    ) -> None:
        from fusion.nn.checkpoint import load_model

        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend={backend!r}: 'auto', 'torch' or 'onnx'")
        if model is None:
            model, cfg, meta = load_model(weights)  # ValueError naming the file when bad
        else:  # an already built (model, cfg, meta), e.g. an untrained one in tests
            model, cfg, meta = model
        self.cfg, self.meta = cfg, dict(meta)
        self.name = name or cfg.kind
        self.weights = str(weights)
        if lookahead is not None and int(lookahead) != cfg.lookahead:
            raise ValueError(
                f"estimator {self.name}: lookahead={lookahead} asked for, but the model in "
                f"{self.weights} was trained with lookahead={cfg.lookahead}"
            )
        self.lookahead = int(cfg.lookahead)
        self.modalities = _MODALITIES[cfg.kind]
        self.cameras = list(cameras) if cameras else []
        self._P = projection_matrices(self.cameras) if len(self.cameras) >= 2 else None
        self.min_confidence, self.outlier_px = float(min_confidence), outlier_px
        self.device = _pick_device(device)
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.threads = int(threads or torch.get_num_threads())
        self._keys = list(self.model.init_state(1))
        self._cache: dict[str, torch.Tensor] = self.model.init_state(0)
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._times: dict[str, np.ndarray] = {}  # last lookahead+1 tick times per subject
        self._onnx: _OnnxStep | None = None
        self.backend_times: dict[str, float] = {}
        self.backend_note = ""
        self.backend = self._choose_backend(backend)

    # -- back-end ----------------------------------------------------------------------------
    def _choose_backend(self, want: str) -> str:
        if want == "torch" or (want == "auto" and self.device != "cpu"):
            return "torch"
        if self.device != "cpu":
            raise ValueError(f"estimator {self.name}: backend 'onnx' runs on the CPU only")
        try:
            self._onnx = _OnnxStep(self.model, self._keys, self.threads)
            err = self._check_onnx()
        except Exception as e:
            if want == "onnx":
                raise RuntimeError(f"estimator {self.name}: ONNX back-end unavailable: {e}") from e
            self.backend_note = f"onnx unavailable: {type(e).__name__}: {e}"
            self._onnx = None
            return "torch"
        if err > 1e-3:
            msg = f"ONNX step differs from torch by {err:.2g}"
            if want == "onnx":
                raise RuntimeError(f"estimator {self.name}: {msg}")
            self.backend_note = msg + "; using torch"
            self._onnx = None
            return "torch"
        if want == "onnx":
            return "onnx"
        for b in ("torch", "onnx"):
            self.backend_times[b] = _time_steps(self, b, subjects=4, ticks=40)["p50_ms"]
        best = min(self.backend_times, key=self.backend_times.__getitem__)
        if best == "torch":
            self._onnx = None
        return best

    def _check_onnx(self, B: int = 3, ticks: int = 8) -> float:
        """Largest difference of ONNX vs torch (outputs and caches) over a few random ticks."""
        g = torch.Generator().manual_seed(0)
        state_t = self.model.init_state(B)
        state_o = {k: v.numpy() for k, v in state_t.items()}
        worst = 0.0
        for _ in range(ticks):
            x = _random_inputs(B, g)
            with torch.no_grad():
                out, state_t = self.model.step(state_t, *x)
            r, state_o = self._onnx(state_o, [v.numpy() for v in x])
            worst = max(worst, float(np.abs(r - out["rot6d"].numpy()).max()))
            for k in self._keys:
                d = np.abs(state_o[k].astype(np.float64) - state_t[k].numpy()).max(initial=0.0)
                worst = max(worst, float(d))
        return worst

    def _run_step(
        self, cache: dict[str, torch.Tensor], x: Sequence[torch.Tensor], backend: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if backend == "onnx":
            r, new = self._onnx({k: v.numpy() for k, v in cache.items()}, [v.numpy() for v in x])
            return torch.from_numpy(r), {k: torch.from_numpy(v) for k, v in new.items()}
        with torch.inference_mode():
            out, new = self.model.step(cache, *x)
        return out["rot6d"], new

    # -- public ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": self.weights,
            "kind": self.cfg.kind,
            "lookahead": self.lookahead,
            "window": self.cfg.window,
            "device": self.device,
            "backend": self.backend,
            "backend_p50_ms_4_subjects": self.backend_times,
            "backend_note": self.backend_note,
            "modalities": sorted(self.modalities),
            "subjects": len(self._rows),
        }

    def to(self, device: str) -> NeuralEstimator:
        """Move the model and every cache (the inference actor calls this for a GPU)."""
        dev = _pick_device(device)
        if dev != self.device:
            self.device = dev
            self.model.to(dev)
            self._cache = {k: v.to(dev) for k, v in self._cache.items()}
            if dev != "cpu":
                self.backend, self._onnx = "torch", None
        return self

    def reset(self, subject: str | None = None) -> None:
        if subject is None:
            self._cache = self.model.init_state(0)
            self._rows.clear()
            self._free.clear()
            self._times.clear()
            return
        row = self._rows.pop(subject, None)
        self._times.pop(subject, None)
        if row is not None:
            self._free.append(row)

    def update(self, subject: str, batch: SyncedBatch) -> AnglesResult:
        return self.update_many({subject: batch})[subject]

    def update_many(self, batches: dict[str, SyncedBatch]) -> dict[str, AnglesResult]:
        from fusion.nn.features import angles_from_output, normalise_inputs

        subjects = [s for s, b in batches.items() if len(b)]
        out = {s: AnglesResult.empty() for s in batches}
        if not subjects:
            return out
        inputs = {}
        for s in subjects:
            b = batches[s]
            joints, jmask = self._video(s, b)
            x = normalise_inputs(b.imu, b.imu_mask, joints, jmask)
            inputs[s] = [torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for v in x]
        rows = np.array([self._row(s) for s in subjects])
        lens = np.array([len(batches[s]) for s in subjects])
        rot: dict[str, list[torch.Tensor]] = {s: [] for s in subjects}
        for i in range(int(lens.max())):
            act = np.flatnonzero(lens > i)
            idx = torch.as_tensor(rows[act], device=self.device)
            sub = {k: v.index_select(0, idx) for k, v in self._cache.items()}
            x = [torch.stack([inputs[subjects[a]][j][i] for a in act]) for j in range(4)]
            r, new = self._run_step(sub, x, self.backend)
            for k, v in new.items():
                self._cache[k].index_copy_(0, idx, v.to(self._cache[k].dtype))
            for n, a in enumerate(act):
                rot[subjects[a]].append(r[n])
        # angles for every subject's answered ticks in one call
        stacks, spans = [], []
        for s in subjects:
            b = batches[s]
            t_all = np.concatenate([self._times.get(s, np.zeros(0)), np.asarray(b.t, float)])
            L = self.lookahead
            n_old = len(t_all) - len(b)
            # frames described: new tick k (overall index n_old+k) describes t_all[n_old+k-L]
            first = max(0, L - n_old)
            desc = t_all[n_old + first - L : len(t_all) - L] if len(b) > first else np.zeros(0)
            self._times[s] = t_all[-(L + 1) :] if L else t_all[-1:]
            if len(desc):
                stacks.append(torch.stack(rot[s][first:]).float().cpu())
                spans.append((s, desc))
        if stacks:
            ang = angles_from_output(torch.cat(stacks).numpy())
            a = 0
            for s, desc in spans:
                out[s] = AnglesResult(t=desc.copy(), angles=ang[a : a + len(desc)])
                a += len(desc)
        return out

    # -- helpers -----------------------------------------------------------------------------
    def _row(self, subject: str) -> int:
        """The subject's cache row (a new subject gets a zeroed one, growing the cache)."""
        row = self._rows.get(subject)
        if row is not None:
            return row
        if self._free:
            row = self._free.pop()
            fresh = self.model.init_state(1)
            for k, v in fresh.items():
                self._cache[k][row] = v[0].to(self._cache[k].dtype)
        else:
            row = len(self._rows) + len(self._free)
            if row >= self._cache["n"].shape[0]:
                grow = max(4, row)  # double (amortised)
                fresh = self.model.init_state(grow)
                self._cache = {k: torch.cat([v, fresh[k]]) for k, v in self._cache.items()}
        self._rows[subject] = row
        return row

    def _video(self, subject: str, b: SyncedBatch) -> tuple[np.ndarray, np.ndarray]:
        """(N, 17, 3) joint centres and mask: given, triangulated, or all missing."""
        n = len(b)
        if "video" not in self.modalities:
            return np.zeros((n, len(KEYPOINTS), 3), np.float32), np.zeros((n, len(KEYPOINTS)), bool)
        if b.joints3d is not None:
            return b.joints3d, b.joints3d_mask
        if b.keypoints.shape[1] == 0 or not b.keypoint_mask.any():
            return np.zeros((n, len(KEYPOINTS), 3), np.float32), np.zeros((n, len(KEYPOINTS)), bool)
        if self._P is None:
            raise ValueError(
                f"estimator {self.name}, subject {subject}: the batch has 2-D keypoints but no "
                "3-D joints, and the estimator was built without >= 2 calibrated cameras"
            )
        if b.keypoints.shape[1] != len(self.cameras):
            raise ValueError(
                f"estimator {self.name}, subject {subject}: {b.keypoints.shape[1]} camera views "
                f"in the batch, the estimator was built with {len(self.cameras)} cameras"
            )
        tri = triangulate_keypoints(
            self.cameras,
            b.keypoints,
            b.keypoint_mask,
            self.min_confidence,
            self.outlier_px,
            P=self._P,
        )
        return tri.points, np.isfinite(tri.points).all(axis=-1)


def _random_inputs(B: int, g: torch.Generator) -> list[torch.Tensor]:
    return [
        torch.randn(B, len(SEGMENTS), 6, generator=g),
        torch.rand(B, len(SEGMENTS), generator=g) > 0.2,
        torch.randn(B, len(KEYPOINTS), 3, generator=g),
        torch.rand(B, len(KEYPOINTS), generator=g) > 0.2,
    ]


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def _time_steps(
    est: NeuralEstimator, backend: str, subjects: int, ticks: int, warmup: int = 5
) -> dict[str, float]:
    """Per-tick model time of `subjects` batched (cache in, cache out), on random inputs."""
    g = torch.Generator().manual_seed(1)
    cache = {k: v.to(est.device) for k, v in est.model.init_state(subjects).items()}
    times = []
    for i in range(warmup + ticks):
        x = [v.to(est.device) for v in _random_inputs(subjects, g)]
        t0 = time.perf_counter()
        _, cache = est._run_step(cache, x, backend)
        if est.device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t0))
    return _pct(times)


def measure_speed(
    est: NeuralEstimator, subjects: Sequence[int] = (1, 4, 16), ticks: int = 200
) -> list[dict[str, Any]]:
    """Model time per tick (p50/p99 ms) by subjects and back-end, beside a full-window
    recompute (`forward` over the last `window` frames: what a non-incremental estimator pays
    each tick)."""
    backends = ["torch"]
    if est.device == "cpu":
        try:
            if est._onnx is None:
                est._onnx = _OnnxStep(est.model, est._keys, est.threads)
            backends.append("onnx")
        except Exception as e:
            log.warning("ONNX back-end not measured: %s", e)
    rows = []
    W = est.cfg.window
    g = torch.Generator().manual_seed(2)
    for S in subjects:
        for b in backends:
            rows.append({"subjects": S, "mode": f"step/{b}", **_time_steps(est, b, S, ticks)})
        x = [
            torch.randn(S, W, len(SEGMENTS), 6, generator=g),
            torch.ones(S, W, len(SEGMENTS), dtype=torch.bool),
            torch.randn(S, W, len(KEYPOINTS), 3, generator=g),
            torch.ones(S, W, len(KEYPOINTS), dtype=torch.bool),
        ]
        x = [v.to(est.device) for v in x]
        times = []
        n_full = max(5, ticks // 10)
        for i in range(2 + n_full):
            t0 = time.perf_counter()
            with torch.inference_mode():
                est.model(*x)
            if est.device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(1e3 * (time.perf_counter() - t0))
        rows.append({"subjects": S, "mode": f"full_window/torch ({W} frames)", **_pct(times)})
    return rows


def factory(kind: str):  # type: ignore[no-untyped-def]
    """The registry factory for a shipped model: create(kind, cameras, weights=..., ...)."""

    def make(cameras: Sequence[Any] | None = None, **options: Any) -> NeuralEstimator:
        weights = options.pop("weights", kind)
        try:
            return NeuralEstimator(weights, cameras, name=kind, **options)
        except TypeError as e:
            raise ValueError(
                f"estimator {kind}: {e}; options are weights, device, backend, lookahead, "
                "min_confidence, outlier_px, threads"
            ) from e

    return make
