"""The neural estimators (VideoNet, IMUNet, FusionNet) served live: one batched step per tick.

`NeuralEstimator` keeps every subject's streaming cache (fusion.nn.models.GaitNet.step: conv
histories, per-layer keys/values of the last window-1 frames, a frame count) as one row of a
batch-indexable cache that holds exactly the subjects in use (numpy arrays for ONNX Runtime,
torch tensors otherwise). A call of `update_many` normalises all subjects' new ticks at once
(fusion.nn.features.normalise_inputs, strictly per frame),
then runs ONE `step_chunk` for each run of tick indices that the same subjects have (all of a
call's ticks at once when every subject has as many: a backlog of ticks costs little more than
one, since most of a tick is per-call overhead), in the call's order. When every subject is in
it, that is the whole cache: it goes in as it is and the step's new cache replaces it (rows
renumbered to the call's order), with no gather or scatter; otherwise the rows are gathered
and written back. A subject that appears gets a zero cache row (frame count 0) at the end;
`reset` removes its row. The output of frame
n describes frame n - lookahead, so a subject's first `lookahead` ticks return nothing and the
answer carries the time of the tick it describes. Angles for all subjects come from one call.

Video input: `batch.joints3d` when the batch has it, else the 2-D keypoints triangulated with
the cameras the factory got (fusion.triangulation, as the classical video estimator does; all
subjects' frames in one call).

Back-ends for `step`: torch, or ONNX Runtime on a graph exported with the caches as inputs and
outputs (batch axis dynamic). `backend="auto"` uses ONNX Runtime on the CPU whenever its graph
passes the check against torch, torch otherwise and on a GPU. It does not time the two at start:
on the shared CPU the timing was noise (and made two processes pick different back-ends for the
same model), while ONNX Runtime measured 1.4-3.7x faster per tick for 1-16 subjects
(`measure_speed`). Every graph, exported or loaded, is checked against torch (outputs and
caches over a few random ticks) before the ONNX path is used at all.


Exported graphs are cached on disk (fusion.estimators.onnx_graph); a cached one that cannot be
read or loaded, or that fails the check, is exported again with a log line naming it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.estimators.base import AnglesResult, Estimator, SyncedBatch
from fusion.estimators.gyro_refine import GyroRefineConfig, GyroRefiner
from fusion.estimators.onnx_graph import (
    OnnxStep,
    cache_dir,
    export_graph,
    graph_key,
    store_graph,
)
from fusion.skeleton import KEYPOINTS, SEGMENTS
from fusion.triangulation import projection_matrices, triangulate_keypoints

__all__ = ["NeuralEstimator", "factory", "measure_speed"]

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-3  # largest ONNX vs torch difference (rot6d and caches) accepted
#: most ticks in one step_chunk: a chunk's attention is T x (window - 1 + T), so a call after
#: a long stall (hundreds of ticks) goes through in pieces; a backlog rarely exceeds this
MAX_CHUNK = 16
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
        gyro_refine: bool | dict[str, Any] = False,
        name: str | None = None,
        model: Any = None,
        onnx_cache: bool = True,
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
        # ONNX Runtime's intra-op threads spin while they wait: on a small CPU shared with the
        # pipeline's other stages a second thread made a 1-subject tick 2.5x slower (2.9 vs
        # 6.5 ms p50 with one core busy elsewhere), so one thread unless told otherwise
        self.threads = int(threads or 1)
        self._keys = list(self.model.init_state(1))
        # one cache row per subject in use, in `_order` (numpy arrays for ONNX, else torch)
        self._cache: dict[str, Any] = {}
        self._order: list[str] = []
        self._rows: dict[str, int] = {}  # subject -> its index in _order
        self._times: dict[str, np.ndarray] = {}  # last lookahead+1 tick times per subject
        self._gyro: dict[str, np.ndarray] = {}  # their gyro rows, when refining
        #: the gyro refinement of the model's rotations (models that read IMUs; off: None).
        #: Off unless asked for: on 4 subjects it adds ~0.5 ms to a tick (docs/evaluation.md)
        self.refiner = _refiner(gyro_refine) if "imu" in self.modalities else None
        self._onnx: OnnxStep | None = None
        self.onnx_cache = bool(onnx_cache)
        #: where the ONNX graph came from: source cache|export, path, seconds (info())
        self.onnx_graph: dict[str, Any] = {}
        self.backend_note = ""
        t0 = time.perf_counter()
        self.backend = self._choose_backend(backend)
        self.backend_s = time.perf_counter() - t0
        self._cache = self._fresh(0)

    # -- back-end ----------------------------------------------------------------------------
    def _choose_backend(self, want: str) -> str:
        """torch, or onnx when asked or (auto) on the CPU once its graph passed the check."""
        if want == "torch" or (want == "auto" and self.device != "cpu"):
            return "torch"
        if self.device != "cpu":
            raise ValueError(f"estimator {self.name}: backend 'onnx' runs on the CPU only")
        try:
            self._onnx, err = self._load_onnx()
        except Exception as e:
            if want == "onnx":
                raise RuntimeError(f"estimator {self.name}: ONNX back-end unavailable: {e}") from e
            self.backend_note = f"onnx unavailable: {type(e).__name__}: {e}"
            self._onnx = None
            return "torch"
        if err > ONNX_TOLERANCE:
            msg = f"ONNX step differs from torch by {err:.2g}"
            if want == "onnx":
                raise RuntimeError(f"estimator {self.name}: {msg}")
            self.backend_note = msg + "; using torch"
            self._onnx = None
            return "torch"
        self.backend_note = f"onnx graph checked against torch (max difference {err:.1g})"
        return "onnx"

    def _load_onnx(self) -> tuple[OnnxStep, float]:
        """An ONNX step for this model and its difference from torch: the cached graph when
        there is a good one, else a fresh export (cached when it passes the check)."""
        path = None
        if self.onnx_cache:
            key = graph_key(self.model, self.cfg, self._keys)
            path = cache_dir() / "onnx" / f"{self.cfg.kind}-{key[:32]}.onnx"
            self.onnx_graph["path"] = str(path)
            if path.is_file():
                t0 = time.perf_counter()
                try:
                    step = OnnxStep(path.read_bytes(), self._keys, self.threads)
                    err = self._check_onnx(step)
                except Exception as e:
                    log.warning(
                        "estimator %s: ONNX graph cache file %s unusable (%s: %s); exporting again",
                        self.name,
                        path,
                        type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "",
                    )
                else:
                    if err <= ONNX_TOLERANCE:
                        self.onnx_graph.update(source="cache", load_s=time.perf_counter() - t0)
                        return step, err
                    log.warning(
                        "estimator %s: ONNX graph cache file %s differs from torch by %.2g; "
                        "exporting again",
                        self.name,
                        path,
                        err,
                    )
        t0 = time.perf_counter()
        graph = export_graph(self.model, self._keys)
        self.onnx_graph.update(source="export", export_s=time.perf_counter() - t0)
        step = OnnxStep(graph, self._keys, self.threads)
        err = self._check_onnx(step)
        if path is not None and err <= ONNX_TOLERANCE:  # never cache a graph that failed
            self.onnx_graph["stored"] = store_graph(path, graph)
        return step, err

    def _check_onnx(
        self, step: OnnxStep, B: int = 3, chunks: tuple[int, ...] = (1, 3, 1, 2, 5, 1, 1, 4)
    ) -> float:
        """Largest difference of `step` vs torch (outputs and caches) over random chunks of
        `chunks` ticks.

        The torch reference runs first, on one thread: these are tiny ops, and on the loaded
        2-core machine two torch threads made a tick take 20-1800 ms instead of ~8 ms (the
        check was most of a warm start). Then the ONNX ticks, so ONNX Runtime's spinning
        threads never compete with torch's."""
        g = torch.Generator().manual_seed(0)
        xs = [_random_inputs(B, g, T) for T in chunks]
        state_t = self.model.init_state(B)
        state_o = {k: v.numpy().copy() for k, v in state_t.items()}
        want = []  # copies: torch may reuse a cache tensor's memory on the next tick
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                for x in xs:
                    out, state_t = self.model.step_chunk(state_t, *x)
                    new = {k: v.numpy().copy() for k, v in state_t.items()}
                    want.append((out["rot6d"].numpy().copy(), new))
        finally:
            torch.set_num_threads(threads)
        worst = 0.0
        for x, (rot, state_w) in zip(xs, want, strict=True):
            r, state_o = step(state_o, [v.numpy() for v in x])
            worst = max(worst, float(np.abs(r - rot).max()))
            for k in self._keys:
                d = np.abs(state_o[k].astype(np.float64) - state_w[k]).max(initial=0.0)
                worst = max(worst, float(d))
        return worst

    def _run_step(
        self, cache: dict[str, torch.Tensor], x: Sequence[torch.Tensor], backend: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if backend == "onnx":
            r, new = self._onnx({k: v.numpy() for k, v in cache.items()}, [v.numpy() for v in x])
            return torch.from_numpy(r), {k: torch.from_numpy(v) for k, v in new.items()}
        with torch.inference_mode():
            out, new = self.model.step_chunk(cache, *x)
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
            "threads": self.threads,
            "backend_note": self.backend_note,
            "backend_s": round(self.backend_s, 3),
            "onnx_graph": dict(self.onnx_graph),
            "modalities": sorted(self.modalities),
            "gyro_refine": asdict(self.refiner.cfg) if self.refiner else None,
            "subjects": len(self._rows),
        }

    def to(self, device: str) -> NeuralEstimator:
        """Move the model and every cache (the inference actor calls this for a GPU)."""
        dev = _pick_device(device)
        if dev != self.device:
            self.device = dev
            self.model.to(dev)
            if dev != "cpu":
                self.backend, self._onnx = "torch", None
            self._cache = {k: self._as_cache(v) for k, v in self._cache.items()}
        return self

    def reset(self, subject: str | None = None) -> None:
        if subject is None:
            self._cache = self._fresh(0)
            self._order.clear()
            self._rows.clear()
            self._times.clear()
            self._gyro.clear()
            if self.refiner:
                self.refiner.reset()
            return
        row = self._rows.pop(subject, None)
        self._times.pop(subject, None)
        self._gyro.pop(subject, None)
        if self.refiner:
            self.refiner.reset(subject)
        if row is not None:  # drop its row: the cache holds exactly the subjects in use
            del self._order[row]
            self._rows = {s: i for i, s in enumerate(self._order)}
            keep = np.delete(np.arange(len(self._order) + 1), row)
            self._cache = {k: self._take(v, keep) for k, v in self._cache.items()}

    def update(self, subject: str, batch: SyncedBatch) -> AnglesResult:
        return self.update_many({subject: batch})[subject]

    def update_many(self, batches: dict[str, SyncedBatch]) -> dict[str, AnglesResult]:
        from fusion.nn.features import angles_from_output

        subjects = [s for s, b in batches.items() if len(b)]
        out = {s: AnglesResult.empty() for s in batches}
        if not subjects:
            return out
        lens = np.array([len(batches[s]) for s in subjects])
        start = np.concatenate([[0], np.cumsum(lens)[:-1]])  # subject's first frame in x
        x = self._inputs(subjects, batches)  # every subject's frames, one after the other
        for s in subjects:
            self._row(s)
        rot = np.empty((int(lens.sum()), len(SEGMENTS), 6), np.float32)
        # ticks a..b-1 of the subjects that have them all (no subject has a length between)
        for a, b in _runs(np.unique(np.concatenate([[0], lens]))):
            act = np.flatnonzero(lens >= b)
            at = (start[act][:, None] + np.arange(a, b)).ravel()  # their frames in x
            shape = (len(act), int(b - a))
            if len(at) == len(rot):  # every subject, every tick: x is (subject, tick) already
                xi = [v.reshape(*shape, *v.shape[1:]) for v in x]
            else:
                xi = [v[at].reshape(*shape, *v.shape[1:]) for v in x]
            r = self._step_rows([subjects[k] for k in act], xi)
            rot[at] = r.reshape(-1, *r.shape[2:])
        # angles for every subject's answered ticks in one call
        picks, spans = [], []
        L = self.lookahead
        for s, n, a in zip(subjects, lens, start, strict=True):
            b = batches[s]
            t_all = _extend(self._times, s, np.asarray(b.t, float), L + 1)
            n_old = len(t_all) - n
            # frames described: new tick k (overall index n_old+k) describes t_all[n_old+k-L]
            first = max(0, L - n_old)
            described = slice(n_old + first - L, len(t_all) - L)
            gyro = None
            if self.refiner:  # the described ticks' gyro rows, NaN where masked
                rows = np.where(np.asarray(b.imu_mask, bool)[..., None], b.imu[..., :3], np.nan)
                gyro = _extend(self._gyro, s, rows, L + 1)[described]
            if n > first:
                picks.append(np.arange(a + first, a + n))
                spans.append((s, t_all[described], gyro))
        if picks:
            sel = np.concatenate(picks)
            r = rot if len(sel) == len(rot) else rot[sel]
            ang = angles_from_output(self._refine(spans, r) if self.refiner else r)
            a = 0
            for s, desc, _ in spans:
                out[s] = AnglesResult(t=desc.copy(), angles=ang[a : a + len(desc)])
                a += len(desc)
        return out

    # -- helpers -----------------------------------------------------------------------------
    def _refine(self, spans: list[tuple[str, np.ndarray, Any]], rot6d: np.ndarray) -> np.ndarray:
        """The answered frames' rotations through the gyro refinement, tick by tick (all
        subjects that have a k-th answer in one step)."""
        from fusion.nn.features import rot6d_to_matrix

        assert self.refiner is not None
        mats = rot6d_to_matrix(np.asarray(rot6d, np.float64))
        counts = np.array([len(d) for _, d, _ in spans])
        offs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for k in range(int(counts.max(initial=0))):
            act = np.flatnonzero(counts > k)
            idx = offs[act] + k
            mats[idx] = self.refiner.step(
                [spans[i][0] for i in act],
                np.array([spans[i][1][k] for i in act]),
                mats[idx],
                np.stack([spans[i][2][k] for i in act]),
            )
        return mats

    def _inputs(self, subjects: list[str], batches: dict[str, SyncedBatch]) -> list[np.ndarray]:
        """Normalised model inputs of every subject's frames, concatenated in `subjects` order
        (one normalisation and one triangulation for the whole call; both are per frame)."""
        from fusion.nn.features import normalise_inputs

        bs = [batches[s] for s in subjects]
        joints, jmask = self._video(subjects, bs)
        imu = bs[0].imu if len(bs) == 1 else np.concatenate([b.imu for b in bs])
        imu_mask = bs[0].imu_mask if len(bs) == 1 else np.concatenate([b.imu_mask for b in bs])
        return list(normalise_inputs(imu, imu_mask, joints, jmask))

    def _step_rows(self, act: list[str], x: list[np.ndarray]) -> np.ndarray:
        """One chunk step for the subjects `act` (batch rows in that order), inputs
        (B, T, ...) → rot6d (B, T, 13, 6).

        When `act` is every subject the step's new caches become the cache as they are (rows
        renumbered to `act`'s order): no gather when the order is unchanged, and no scatter.
        Otherwise the subjects' rows are gathered and the new ones written back."""
        rows = np.array([self._rows[s] for s in act])
        everyone = len(act) == len(self._order)
        if everyone and (rows == np.arange(len(rows))).all():
            sub = self._cache
        else:
            sub = {k: self._take(v, rows) for k, v in self._cache.items()}
        if self.backend == "onnx":
            r, new = self._onnx(sub, x)
        else:
            xt = [torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for v in x]
            with torch.inference_mode():
                o, new = self.model.step_chunk(sub, *xt)
            r = o["rot6d"].float().cpu().numpy()
        # torch caches from a step are inference tensors: written to in inference mode only
        with torch.inference_mode() if self.backend != "onnx" else contextlib.nullcontext():
            if everyone:
                self._cache = {k: self._cast(v, self._cache[k]) for k, v in new.items()}
                self._order = list(act)
                self._rows = {s: i for i, s in enumerate(act)}
            else:
                for k, v in new.items():
                    self._put(self._cache[k], rows, self._cast(v, self._cache[k]))
        return r

    def _as_cache(self, v: Any) -> Any:
        """A cache tensor in the form the back-end wants: numpy for ONNX, else torch on the
        device."""
        if self.backend == "onnx":
            return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        t = torch.from_numpy(v) if isinstance(v, np.ndarray) else v
        return t.to(self.device)

    def _fresh(self, n: int) -> dict[str, Any]:
        """Zero caches for n new subjects (frame count 0) in the back-end's form."""
        return {k: self._as_cache(v) for k, v in self.model.init_state(n).items()}

    def _take(self, v: Any, rows: np.ndarray) -> Any:
        if isinstance(v, np.ndarray):
            return v[rows]
        return v.index_select(0, torch.as_tensor(rows, device=v.device))

    @staticmethod
    def _put(v: Any, rows: np.ndarray, new: Any) -> None:
        if isinstance(v, np.ndarray):
            v[rows] = new
        else:
            v.index_copy_(0, torch.as_tensor(rows, device=v.device), new)

    @staticmethod
    def _cast(new: Any, like: Any) -> Any:
        if new.dtype == like.dtype:
            return new
        return new.astype(like.dtype) if isinstance(new, np.ndarray) else new.to(like.dtype)

    def _row(self, subject: str) -> int:
        """The subject's cache row (a new subject gets a zeroed one at the end)."""
        row = self._rows.get(subject)
        if row is not None:
            return row
        row = len(self._order)
        fresh = self._fresh(1)
        cat = np.concatenate if self.backend == "onnx" else torch.cat
        self._cache = {k: cat([v, fresh[k]]) for k, v in self._cache.items()}
        self._order.append(subject)
        self._rows[subject] = row
        return row

    def _video(self, subjects: list[str], bs: list[SyncedBatch]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 17, 3) joint centres and mask of every subject's frames, concatenated: given,
        triangulated (all subjects' 2-D keypoints in one call), or all missing."""
        if "video" not in self.modalities:
            return _no_joints(sum(len(b) for b in bs))
        parts: list[tuple[np.ndarray, np.ndarray] | None] = []
        tri_kp, tri_mask = [], []
        for s, b in zip(subjects, bs, strict=True):
            if b.joints3d is not None:
                parts.append((b.joints3d, b.joints3d_mask))
                continue
            if b.keypoints.shape[1] == 0 or not b.keypoint_mask.any():
                parts.append(_no_joints(len(b)))
                continue
            if self._P is None:
                raise ValueError(
                    f"estimator {self.name}, subject {s}: the batch has 2-D keypoints but no "
                    "3-D joints, and the estimator was built without >= 2 calibrated cameras"
                )
            if b.keypoints.shape[1] != len(self.cameras):
                raise ValueError(
                    f"estimator {self.name}, subject {s}: {b.keypoints.shape[1]} camera views "
                    f"in the batch, the estimator was built with {len(self.cameras)} cameras"
                )
            parts.append(None)  # triangulated below, with the other subjects'
            tri_kp.append(b.keypoints)
            tri_mask.append(b.keypoint_mask)
        if tri_kp:
            tri = triangulate_keypoints(
                self.cameras,
                tri_kp[0] if len(tri_kp) == 1 else np.concatenate(tri_kp),
                tri_mask[0] if len(tri_mask) == 1 else np.concatenate(tri_mask),
                self.min_confidence,
                self.outlier_px,
                P=self._P,
            )
            pts, ok = tri.points, np.isfinite(tri.points).all(axis=-1)
            a = 0
            for k, b in enumerate(bs):
                if parts[k] is None:
                    parts[k] = (pts[a : a + len(b)], ok[a : a + len(b)])
                    a += len(b)
        if len(parts) == 1:
            return parts[0]  # type: ignore[return-value]
        return (
            np.concatenate([p[0] for p in parts]),  # type: ignore[index]
            np.concatenate([p[1] for p in parts]),  # type: ignore[index]
        )


def _extend(store: dict[str, np.ndarray], subject: str, new: np.ndarray, keep: int) -> np.ndarray:
    """The subject's remembered rows followed by `new`; the last `keep` are remembered."""
    old = store.get(subject)
    rows = new if old is None else np.concatenate([old, new])
    store[subject] = rows[-keep:]
    return rows


def _refiner(spec: bool | dict[str, Any] | None) -> GyroRefiner | None:
    """The `gyro_refine` option → a refiner: True (the defaults), a dict of
    GyroRefineConfig fields, or False / None (off)."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return GyroRefiner()
    if not isinstance(spec, dict):
        raise ValueError(f"gyro_refine={spec!r}: true, false or a mapping of its settings")
    if "segments" in spec:  # a YAML list
        spec = {**spec, "segments": tuple(spec["segments"])}
    try:
        return GyroRefiner(GyroRefineConfig(**spec))
    except TypeError as e:
        names = ", ".join(f.name for f in fields(GyroRefineConfig))
        raise ValueError(f"gyro_refine: {e}; its settings are {names}") from None


def _runs(cuts: np.ndarray) -> list[tuple[int, int]]:
    """Tick ranges [a, b) between successive `cuts`, none longer than MAX_CHUNK."""
    return [
        (int(p), int(min(p + MAX_CHUNK, b)))
        for a, b in itertools.pairwise(cuts)
        for p in range(int(a), int(b), MAX_CHUNK)
    ]


def _no_joints(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n frames without joint centres (all masked)."""
    return np.zeros((n, len(KEYPOINTS), 3), np.float32), np.zeros((n, len(KEYPOINTS)), bool)


def _random_inputs(B: int, g: torch.Generator, T: int = 1) -> list[torch.Tensor]:
    """Random step inputs of B subjects, T ticks each: (B, T, ...)."""
    return [
        torch.randn(B, T, len(SEGMENTS), 6, generator=g),
        torch.rand(B, T, len(SEGMENTS), generator=g) > 0.2,
        torch.randn(B, T, len(KEYPOINTS), 3, generator=g),
        torch.rand(B, T, len(KEYPOINTS), generator=g) > 0.2,
    ]


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def _time_steps(
    est: NeuralEstimator, backend: str, subjects: int, ticks: int, chunk: int = 1, warmup: int = 5
) -> dict[str, float]:
    """Per-tick model time of `subjects` batched (cache in, cache out), `chunk` ticks per call
    (a call's time / chunk), on random inputs."""
    g = torch.Generator().manual_seed(1)
    cache = {k: v.to(est.device) for k, v in est.model.init_state(subjects).items()}
    times = []
    for i in range(warmup + max(1, ticks // chunk)):
        x = [v.to(est.device) for v in _random_inputs(subjects, g, chunk)]
        t0 = time.perf_counter()
        _, cache = est._run_step(cache, x, backend)
        if est.device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t0) / chunk)
    return _pct(times)


def measure_speed(
    est: NeuralEstimator, subjects: Sequence[int] = (1, 4, 16), ticks: int = 200
) -> list[dict[str, Any]]:
    """Model time per tick (p50/p99 ms) by subjects and back-end, one tick per call and 4 per
    call (a backlog, as the inference stage gets when it runs behind), beside a full-window
    recompute (`forward` over the last `window` frames: what a non-incremental estimator pays
    each tick)."""
    backends = ["torch"]
    if est.device == "cpu":
        try:
            if est._onnx is None:
                est._onnx, err = est._load_onnx()
                if err > ONNX_TOLERANCE:
                    raise RuntimeError(f"ONNX step differs from torch by {err:.2g}")
            backends.append("onnx")
        except Exception as e:
            log.warning("ONNX back-end not measured: %s", e)
    rows = []
    W = est.cfg.window
    g = torch.Generator().manual_seed(2)
    for S in subjects:
        for chunk, mode in ((1, "step"), (4, "4 ticks per call")):
            for b in backends:
                per = _time_steps(est, b, S, ticks, chunk=chunk)
                rows.append({"subjects": S, "mode": f"{mode}/{b}", **per})
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
                "min_confidence, outlier_px, threads, gyro_refine, onnx_cache"
            ) from e

    return make
