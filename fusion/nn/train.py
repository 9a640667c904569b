"""Training VideoNet, IMUNet and FusionNet on synthetic data (fusion.synth).

Data: a pool of sequences made up front by `fusion.synth.generate_sequence` with training
seeds 0..N-1 (`TRAIN_SEED_LIMIT` guards the held-out range: evaluation uses seeds >= 1_000_000,
the validation here 500_000..), each with its own activity, speed, pathology and noise levels
(paper defaults for half, the rest drawn up to 30° IMU misplacement σ and 100 mm joint jitter
σ) and stance (half the subjects stand up to σ 10° away from the typical stance). The pool is
normalised once (fusion.nn.features.normalise_inputs, the same function the live estimator
uses) and can be cached in one .npz that several runs share.

Batches are random windows with random mask dropout: single IMUs, single joints, whole
camera frames (all joints of a frame) and whole modalities (FusionNet), so a lost sensor
degrades the output instead of breaking it. Each window's 3-D joints get their noise drawn
afresh from the clean ones (`TrainPreset.renoise_joints`): with the noise fixed in the pool,
the video side learnt the 2-hour pool's noise and not the noise model.

Losses: geodesic angle of every segment's orientation (heading-free frame), geodesic angle of
every joint's relative rotation (what the clinical angles are made of), joint positions from a
position head (L1, m; simpler and cheaper than forward kinematics through the body model,
whose segment lengths differ per subject), body size (MSE); FusionNet adds its video branch's
rotation loss (half weight). AdamW, warm-up + cosine learning rate over the step or time
budget, gradient clipping, checkpoints with resume.

Warm starts (FusionNet): `init_video` copies a VideoNet into its video branch, `init_imu` an
IMUNet into its IMU encoder, temporal layers and heads (fusion.nn.models.GaitNet.
load_imu_branch; with `fusion_start="head"` the fresh FusionNet then equals that IMUNet). The
copied parameters train at `warm_lr_scale` × the learning rate, the fusion layers at the full
rate, so that the trained single-modality paths are refined rather than overwritten while the
modality dropout keeps each of them working alone. FusionNet's validation also reports the
"no video" error (joints masked), to see whether it uses its IMUs.

Fine-tuning (any model): `init` starts from a whole model file of the same kind, with its
config, every parameter at `warm_lr_scale` × the learning rate. Its validation before the
first step is the best to beat, so the run's best weights are never worse than the file's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.activities import ACTIVITIES
from fusion.nn.checkpoint import save_model
from fusion.nn.features import (
    angles_from_output,
    heading_free_rotations,
    normalise_inputs,
    normalise_joints,
)
from fusion.nn.models import GaitNet, ModelConfig, build_model
from fusion.noise import NoiseParams, add_joint_noise
from fusion.normative import SPEEDS
from fusion.skeleton import ANGLE_INDEX, LOWER_LIMB_ANGLES, PARENT, SEGMENT_INDEX, SEGMENTS
from fusion.synth import SequenceParams, generate_sequence
from fusion.walking import PATHOLOGIES

__all__ = [
    "PRESETS",
    "TRAIN_SEED_LIMIT",
    "VAL_SEED_BASE",
    "Pool",
    "TrainPreset",
    "build_pool",
    "evaluate_model",
    "train",
]

TRAIN_SEED_LIMIT = 1_000_000  # seeds >= this are held out for evaluation: never trained on
VAL_SEED_BASE = 500_000  # validation sequences during training (never trained on either)
_POOL_FORMAT = 2  # the pool's arrays; 2 added the clean joints ("kp_world")
_GAIT_WITH_PATHOLOGY = ("walk", "turn", "start_stop")
_ACTIVITY_WEIGHTS = {
    "walk": 0.35,
    "turn": 0.10,
    "start_stop": 0.10,
    "jog": 0.08,
    "stand": 0.05,
    "sit_to_stand": 0.07,
    "squat": 0.07,
    "arm_movements": 0.08,
    "mixed": 0.10,
}
_PARENT_IDX = np.array([SEGMENT_INDEX[PARENT[s]] if PARENT[s] else -1 for s in SEGMENTS])
_CHILD_IDX = np.array([i for i, s in enumerate(SEGMENTS) if PARENT[s]])
_LOWER = [ANGLE_INDEX[a] for a in LOWER_LIMB_ANGLES]


@dataclass(frozen=True)
class TrainPreset:
    """Training recipe: model shape overrides, data size, optimisation and budget."""

    name: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    pool_hours: float = 2.0
    sequence_seconds: float = 20.0
    val_sequences: int = 6
    batch: int = 12
    chunk_extra: int = 60  # frames beyond window + lookahead per training window
    loss_skip: int = 10  # first frames of a window left out of the loss (no context yet)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 200_000
    minutes: float | None = 35.0  # time budget (None: max_steps only)
    clip: float = 1.0
    ckpt_every: int = 250
    val_every: int = 500
    p_drop_sensor: float = 0.08  # per IMU per window
    p_drop_joint: float = 0.05  # per joint per window
    p_drop_frame: float = 0.03  # per frame: all joints lost (a camera dropout)
    p_drop_modality: float = 0.1  # per window, each modality (FusionNet only)
    #: each window's joints get noise drawn afresh (augmented_noise) on the clean joints, so
    #: the video side never sees the same noise twice; False = the pool's noisy joints
    renoise_joints: bool = True
    warm_lr_scale: float = 0.25  # learning-rate factor of warm-started parameters


PRESETS: dict[str, TrainPreset] = {
    "tiny": TrainPreset(
        name="tiny",
        model={"width": 16, "layers": 1, "heads": 4, "window": 16, "time_width": 32},
        pool_hours=2 / 60,
        sequence_seconds=6.0,
        val_sequences=1,
        batch=8,
        chunk_extra=4,
        loss_skip=2,
        lr=3e-3,
        warmup_steps=5,
        max_steps=40,
        minutes=None,
        ckpt_every=20,
        val_every=40,
    ),
    "ship": TrainPreset(name="ship", model={"dropout": 0.0}),
}


# -- data --------------------------------------------------------------------------------------
def augmented_noise(rng: np.random.Generator) -> NoiseParams:
    """Half the time the paper's default noise, half its augmentation ranges beyond them."""
    noise = NoiseParams()
    if rng.random() < 0.5:
        noise = replace(
            noise,
            imu_misplacement_deg=float(rng.uniform(0.0, 30.0)),
            joint_jitter_mm=float(rng.uniform(5.0, 100.0)),
            joint_bias_mm=float(rng.uniform(0.0, 50.0)),
            high_peak_fraction=float(rng.uniform(0.0, 0.06)),
        )
    return noise


def sequence_params_for(index: int, seed: int, seconds: float) -> SequenceParams:
    """Training sequence `index` of run seed `seed`: activity, speed, pathology, noise levels."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x4E4E]))
    acts = list(_ACTIVITY_WEIGHTS)
    p = np.array([_ACTIVITY_WEIGHTS[a] for a in acts])
    activity = acts[int(rng.choice(len(acts), p=p / p.sum()))]
    assert activity in ACTIVITIES
    speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
    pathology = None
    if activity in _GAIT_WITH_PATHOLOGY and rng.random() < 0.3:
        pathology = PATHOLOGIES[int(rng.integers(len(PATHOLOGIES)))]
    noise = augmented_noise(rng)
    # people stand differently: half the subjects depart from the typical stance (drawn last,
    # so the draws above are those of pools made before it)
    stance = float(rng.uniform(0.0, 10.0)) if rng.random() < 0.5 else 0.0
    return SequenceParams(
        activity=activity,
        pathology=pathology,
        speed=speed,
        duration=seconds,
        noise=noise,
        n_cameras=0,
        stance_sd_deg=stance,
    )


def _make_sequence(args: tuple[SequenceParams, int]) -> dict[str, np.ndarray]:
    params, seed = args
    a = generate_sequence(params, seed).arrays
    imu, imu_mask, joints, joints_mask = normalise_inputs(
        a["imu"], a["imu_mask"], a["keypoints3d_noisy"], np.ones(a["imu"].shape[:1] + (17,), bool)
    )
    rot = heading_free_rotations(a["rotations"], a["heading"])
    yaw = np.stack([np.cos(-a["heading"]), np.sin(-a["heading"])], axis=-1)
    kp = a["keypoints3d"]
    kx = yaw[:, None, 0] * kp[..., 0] - yaw[:, None, 1] * kp[..., 1]
    ky = yaw[:, None, 1] * kp[..., 0] + yaw[:, None, 0] * kp[..., 1]
    T = len(imu)
    return {
        "imu": imu,
        "imu_mask": imu_mask,
        "joints": joints,
        "joints_mask": joints_mask,
        "rot": rot.reshape(T, len(SEGMENTS), 9),
        "kp": np.stack([kx, ky, kp[..., 2]], axis=-1).astype(np.float32),
        "angles": a["angles"],
        "body": np.repeat(a["body"][None], T, axis=0),
        "kp_world": a["keypoints3d"].astype(np.float32),  # clean, for fresh joint noise
    }


@dataclass
class Pool:
    """Sequences concatenated along time, with the frame offsets of each sequence."""

    arrays: dict[str, np.ndarray]
    offsets: np.ndarray  # (S + 1,)
    spec: dict[str, Any]

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])

    def sequence(self, i: int) -> dict[str, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return {k: v[a:b] for k, v in self.arrays.items()}

    def __len__(self) -> int:
        return len(self.offsets) - 1


def build_pool(
    seeds: list[int],
    params: Callable[[int], SequenceParams],
    workers: int = 2,
    cache: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Pool:
    """Generate (or read from `cache`) one sequence per seed; params(seed) gives its recipe."""
    if any(s >= TRAIN_SEED_LIMIT for s in seeds) and min(seeds) < VAL_SEED_BASE:
        raise ValueError("build_pool: training seeds must stay below 1_000_000 (held out)")
    spec = {
        "seeds": [int(s) for s in seeds],
        "params": [params(s).to_dict() for s in seeds],
        "format": _POOL_FORMAT,
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    spec["key"] = key
    if cache is not None:
        cache = Path(cache)
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    if str(z["key"]) == key:
                        arrays = {k: z[k] for k in z.files if k not in ("key", "offsets")}
                        return Pool(arrays, z["offsets"], spec)
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"pool cache {cache}: unreadable ({e}); delete it") from None
    jobs = [(params(s), int(s)) for s in seeds]
    seqs: list[dict[str, np.ndarray]] = []
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            for i, s in enumerate(ex.map(_make_sequence, jobs, chunksize=2)):
                seqs.append(s)
                if progress:
                    progress(i + 1, len(jobs))
    else:
        for i, j in enumerate(jobs):
            seqs.append(_make_sequence(j))
            if progress:
                progress(i + 1, len(jobs))
    lengths = [len(s["imu"]) for s in seqs]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = {k: np.concatenate([s[k] for s in seqs]) for k in seqs[0]}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, key=np.array(key), offsets=offsets, **arrays)
        tmp.replace(cache)
    return Pool(arrays, offsets, spec)


def train_seeds(preset: TrainPreset) -> list[int]:
    n = max(1, round(preset.pool_hours * 3600 / preset.sequence_seconds))
    if n > TRAIN_SEED_LIMIT:
        raise ValueError("pool too large: would reach the held-out seeds")
    return list(range(n))


def val_params(seconds: float) -> Callable[[int], SequenceParams]:
    """Validation: held-out seeds, walking at the paper's noise (speeds cycle)."""

    def f(seed: int) -> SequenceParams:
        speed = SPEEDS[(seed - VAL_SEED_BASE) % len(SPEEDS)]
        return SequenceParams(activity="walk", speed=speed, duration=seconds, n_cameras=0)

    return f


class Batcher:
    """Random training windows from a pool, with mask dropout, as torch tensors."""

    def __init__(self, pool: Pool, preset: TrainPreset, cfg: ModelConfig, seed: int) -> None:
        self.pool, self.p, self.cfg = pool, preset, cfg
        self.T = cfg.window + cfg.lookahead + preset.chunk_extra
        lengths = np.diff(pool.offsets)
        ok = lengths >= self.T
        if not ok.any():
            raise ValueError(f"pool sequences are shorter than a training window ({self.T})")
        self.starts = pool.offsets[:-1][ok]
        self.spans = lengths[ok] - self.T + 1
        self.rng = np.random.default_rng(seed)

    def __call__(self, device: torch.device) -> dict[str, torch.Tensor]:
        p, rng, B, T = self.p, self.rng, self.p.batch, self.T
        s = rng.integers(len(self.starts), size=B)
        t0 = self.starts[s] + (rng.random(B) * self.spans[s]).astype(np.int64)
        idx = t0[:, None] + np.arange(T)[None]
        a = self.pool.arrays
        imu_mask = a["imu_mask"][idx] & (rng.random((B, 1, 13)) >= p.p_drop_sensor)
        jm = a["joints_mask"][idx] & (rng.random((B, 1, 17)) >= p.p_drop_joint)
        jm &= rng.random((B, T, 1)) >= p.p_drop_frame
        if self.cfg.kind == "fusionnet":
            drop = rng.random(B)
            imu_mask &= (drop >= p.p_drop_modality)[:, None, None]
            jm &= ((drop < p.p_drop_modality) | (drop >= 2 * p.p_drop_modality))[:, None, None]
        joints = self._fresh_joints(idx) if p.renoise_joints else a["joints"][idx]
        out = {
            "imu": a["imu"][idx] * imu_mask[..., None],
            "imu_mask": imu_mask,
            "joints": joints * jm[..., None],
            "joints_mask": jm,
            "rot": a["rot"][idx],
            "kp": a["kp"][idx],
            "body": a["body"][idx],
        }
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}

    def _fresh_joints(self, idx: np.ndarray) -> np.ndarray:
        """The windows' clean joints with noise drawn now, one recipe per window, normalised
        as the estimator normalises them."""
        kp = self.pool.arrays["kp_world"][idx].astype(np.float64)
        noisy = np.stack([add_joint_noise(w, self.rng, augmented_noise(self.rng)) for w in kp])
        return normalise_joints(noisy, np.ones(noisy.shape[:-1], bool))[0]


# -- losses ------------------------------------------------------------------------------------
def geodesic(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """Angle (rad) between rotations (..., 3, 3), via the chord (stable gradient near 0)."""
    chord = torch.sqrt(((Ra - Rb) ** 2).sum((-1, -2)) + 1e-10)
    return 2 * torch.asin((chord / (2 * math.sqrt(2))).clamp(max=1 - 1e-6))


def _relative(R: torch.Tensor) -> torch.Tensor:
    """Child-in-parent rotation of every non-root segment (..., 12, 3, 3)."""
    child = R[..., _CHILD_IDX, :, :]
    parent = R[..., _PARENT_IDX[_CHILD_IDX], :, :]
    return parent.transpose(-1, -2) @ child


def losses(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: ModelConfig, skip: int
) -> dict[str, torch.Tensor]:
    """Loss terms on frames skip.. of each window (targets shifted by the look-ahead)."""
    from fusion.nn.features import rot6d_to_matrix

    L = cfg.lookahead
    T = batch["rot"].shape[1]
    sl_out = slice(max(skip, L), T)
    sl_tgt = slice(max(skip, L) - L, T - L)
    R_t = batch["rot"][:, sl_tgt].unflatten(-1, (3, 3))
    terms = {}

    def rot_terms(r6: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R = rot6d_to_matrix(r6[:, sl_out])
        return geodesic(R, R_t).mean(), geodesic(_relative(R), _relative(R_t)).mean()

    terms["rot"], terms["rel"] = rot_terms(out["rot6d"])
    terms["pos"] = (out["joints"][:, sl_out] - batch["kp"][:, sl_tgt]).abs().mean()
    terms["body"] = ((out["body"][:, sl_out] - batch["body"][:, sl_tgt]) ** 2).mean() * 10.0
    if "rot6d_video" in out:
        a, b = rot_terms(out["rot6d_video"])
        terms["video"] = 0.5 * (a + b)
    terms["total"] = sum(terms.values())
    return terms


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_model(
    model: GaitNet, pool: Pool, warmup: int | None = None, drop: str | None = None
) -> dict[str, Any]:
    """Joint-angle RMSE (deg) of a model on whole pool sequences, streaming-equivalent
    (causal forward over each sequence; the first `warmup` frames, default one window, left
    out), optionally with one modality (`drop`: "imu" or "video") masked throughout. Returns
    lower-limb RMSE (pooled over angles and frames) and per-angle RMSE."""
    if drop not in (None, "imu", "video"):
        raise ValueError(f"evaluate_model: drop={drop!r}, expected None, 'imu' or 'video'")
    cfg = model.cfg
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    warmup = cfg.window if warmup is None else warmup
    sq = np.zeros(len(ANGLE_INDEX))
    n = 0
    for i in range(len(pool)):
        s = pool.sequence(i)
        x = [
            torch.from_numpy(s[k][None]).to(dev)
            for k in ("imu", "imu_mask", "joints", "joints_mask")
        ]
        if drop is not None:
            i = 0 if drop == "imu" else 2
            x[i], x[i + 1] = torch.zeros_like(x[i]), torch.zeros_like(x[i + 1])
        out = model(*x)
        L = cfg.lookahead
        pred = angles_from_output(out["rot6d"][0, L:].cpu())
        truth = s["angles"][: len(s["angles"]) - L]
        err = (pred - truth + 180.0) % 360.0 - 180.0
        err = err[warmup:]
        sq += (err**2).sum(0)
        n += len(err)
    model.train(was_training)
    per = np.sqrt(sq / max(n, 1))
    names = list(ANGLE_INDEX)
    return {
        "lower_rmse_deg": float(np.sqrt((sq[_LOWER]).sum() / max(n * len(_LOWER), 1))),
        "per_angle_rmse_deg": {names[i]: round(float(per[i]), 3) for i in range(len(names))},
        "frames": n,
    }


# -- the loop ----------------------------------------------------------------------------------
def _warm_start(
    model: GaitNet,
    cfg: ModelConfig,
    init_video: str | Path | None,
    init_imu: str | Path | None,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[list[str], dict[str, str]]:
    """Copy the given VideoNet / IMUNet files into a FusionNet; (warm parameter names, the
    files used). ValueError naming the file when its kind or config does not fit."""
    from fusion.nn.checkpoint import load_model

    inits: dict[str, str] = {}
    for flag, path, want, load in (
        ("--init-video", init_video, cfg.video_branch(), model.load_video_branch),
        ("--init-imu", init_imu, cfg.imu_branch(), model.load_imu_branch),
    ):
        if path is None:
            continue
        if cfg.kind != "fusionnet":
            raise ValueError(f"{flag} only applies to fusionnet")
        net, got, _ = load_model(path)
        if got != want:
            diff = {
                k: (v, want.to_dict()[k])
                for k, v in got.to_dict().items()
                if v != want.to_dict()[k]
            }
            raise ValueError(f"{flag} {path}: its config differs from {want.kind}: {diff}")
        load(net.to(device))
        inits[flag.removeprefix("--")] = str(path)
        log(f"{flag.removeprefix('--init-')} side warm-started from {path}")
    warm = model.warm_started_parameters(video=init_video is not None, imu=init_imu is not None)
    return warm, inits


def _fine_tune_start(
    kind: str, init: str | Path, fusion_start: str | None
) -> tuple[GaitNet, ModelConfig]:
    """The model file to fine-tune and its config. ValueError naming the file when it is
    another kind of model or another refinement start than asked for."""
    from fusion.nn.checkpoint import load_model

    net, cfg, _ = load_model(init)
    if cfg.kind != kind:
        raise ValueError(f"--init {init}: a {cfg.kind} model, not a {kind}")
    if fusion_start is not None and cfg.fusion_start != fusion_start:
        raise ValueError(
            f"--init {init}: its refinement starts from the {cfg.fusion_start}, not the "
            f"{fusion_start} (--fusion-start)"
        )
    return net, cfg


def _run_config(
    kind: str,
    preset: TrainPreset,
    fusion_start: str | None,
    init: str | Path | None,
    init_imu: str | Path | None,
    ck: dict[str, Any] | None,
) -> tuple[GaitNet | None, ModelConfig]:
    """The run's model config, and the model to fine-tune (`init`): that file's config; a
    resumed fine-tune's own; else the preset's, FusionNet's refinement starting where asked
    (default: from a head with `init_imu`, from the video branch otherwise; a resumed run's
    as it was)."""
    if init is not None:
        return _fine_tune_start(kind, init, fusion_start)
    if ck is not None and "init" in ck.get("inits", {}):
        return None, ModelConfig.from_dict(ck["config"])
    if fusion_start is None and kind == "fusionnet":
        fusion_start = "head" if init_imu is not None else "video"
        if ck is not None and isinstance(ck.get("config"), dict):  # resume: as it was
            fusion_start = ck["config"].get("fusion_start", "video")
    extra = {"fusion_start": fusion_start} if fusion_start else {}
    return None, ModelConfig(kind=kind, **{**preset.model, **extra})


def _param_groups(model: GaitNet, warm: list[str], warm_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: fresh parameters at the full rate, warm-started ones at `warm_scale`."""
    named = dict(model.named_parameters())
    unknown = sorted(set(warm) - set(named))
    if unknown:
        raise ValueError(f"warm-started parameters {unknown[:3]} are not in the model")
    hot = [p for k, p in named.items() if k not in set(warm)]
    groups = [{"params": hot, "lr_scale": 1.0}] if hot else []  # (none left: fine-tuning)
    if warm:
        groups.append({"params": [named[k] for k in warm], "lr_scale": float(warm_scale)})
    return groups


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    w = min(1.0, (step + 1) / max(warmup, 1))
    return w * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(
    kind: str,
    preset: TrainPreset,
    out_dir: str | Path,
    seed: int = 0,
    minutes: float | None = None,
    resume: str | Path | None = None,
    init_video: str | Path | None = None,
    init_imu: str | Path | None = None,
    fusion_start: str | None = None,
    init: str | Path | None = None,
    pool_cache: str | Path | None = None,
    workers: int = 2,
    threads: int | None = 1,
    progress_bar: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model; writes out_dir/last.pt (resumable), out_dir/best.pt and
    out_dir/{kind}.pt (the best weights by validation lower-limb RMSE). Returns a summary.

    FusionNet: `init_video` / `init_imu` warm-start its video / IMU side from model files
    (ValueError naming the file when its config does not fit); `fusion_start` ("video" or
    "head", default "head" with `init_imu`, else "video") is where its refinement starts.
    `init`: fine-tune that model file (same kind; its config replaces the preset's)."""
    from tqdm import tqdm

    from fusion.nn.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    minutes = preset.minutes if minutes is None else minutes
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    if kind != "fusionnet" and (init_video or init_imu or fusion_start):
        raise ValueError("--init-video, --init-imu and --fusion-start only apply to fusionnet")
    if init is not None and (resume is not None or init_video or init_imu):
        raise ValueError("--init cannot be combined with --resume, --init-video or --init-imu")
    ck: dict[str, Any] | None = None
    if resume is not None:
        ck = torch.load(resume, map_location=device, weights_only=False)
    start, cfg = _run_config(kind, preset, fusion_start, init, init_imu, ck)

    t_pool = time.perf_counter()
    seeds = train_seeds(preset)
    pool = build_pool(
        seeds,
        lambda s: sequence_params_for(s, 0, preset.sequence_seconds),
        workers=workers,
        cache=pool_cache,
    )
    vseeds = list(range(VAL_SEED_BASE, VAL_SEED_BASE + preset.val_sequences))
    val = build_pool(vseeds, val_params(max(preset.sequence_seconds, 10.0)), workers=1)
    log(
        f"pool: {len(pool)} sequences, {pool.n_frames / 216000:.2f} h (seeds 0..{seeds[-1]}), "
        f"validation {len(val)} walking sequences (seeds {vseeds[0]}..), "
        f"{time.perf_counter() - t_pool:.0f} s"
    )

    model = build_model(cfg).to(device)
    step, elapsed, best = 0, 0.0, float("inf")
    history: list[dict[str, Any]] = []
    warm: list[str] = []
    inits: dict[str, str] = {}
    if ck is not None:
        cd = ck.get("config")
        try:  # older checkpoints lack newer fields: they read as the defaults
            same = isinstance(cd, dict) and ModelConfig.from_dict(cd) == cfg
        except (TypeError, ValueError):
            same = False
        if not same:
            raise ValueError(f"--resume {resume}: its config {ck.get('config')} != {cfg.to_dict()}")
        warm, inits = list(ck.get("warm_params", [])), dict(ck.get("inits", {}))
    elif start is not None:
        model.load_state_dict(start.state_dict())
        warm = [name for name, _ in model.named_parameters()]
        inits = {"init": str(init)}
        log(f"fine-tuning {init}")
    else:
        warm, inits = _warm_start(model, cfg, init_video, init_imu, device, log)
    opt = torch.optim.AdamW(
        _param_groups(model, warm, preset.warm_lr_scale),
        lr=preset.lr,
        weight_decay=preset.weight_decay,
    )
    if ck is not None:
        model.load_state_dict(ck["model"])
        scales = [g["lr_scale"] for g in opt.param_groups]
        opt.load_state_dict(ck["optimizer"])
        for g, sc in zip(opt.param_groups, scales, strict=True):
            g["lr_scale"] = sc  # older checkpoints' groups have no lr_scale
        step, elapsed, best = ck["step"], ck["elapsed"], ck["best"]
        history = ck.get("history", [])
        log(f"resumed {resume} at step {step}, {elapsed / 60:.1f} min, best {best:.2f} deg")
    batcher = Batcher(pool, preset, cfg, seed=seed * 7919 + step)
    budget_s = None if minutes is None else minutes * 60.0

    def save_last() -> None:
        torch.save(
            {
                "config": cfg.to_dict(),
                "preset": asdict(preset),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "best": best,
                "history": history,
                "seed": seed,
                "warm_params": warm,
                "inits": inits,
            },
            out_dir / "last.pt",
        )

    def meta(metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "preset": preset.name,
            "seed": seed,
            "steps": step,
            "minutes": round(elapsed / 60, 2),
            "device": str(device),
            "train_seeds": [seeds[0], seeds[-1]],
            "train_hours": round(pool.n_frames / 216000, 3),
            "val_seeds": [vseeds[0], vseeds[-1]],
            "validation": metrics,
            "recipe": {
                **{
                    k: v
                    for k, v in asdict(preset).items()
                    if k not in ("name", "model", "max_steps")
                },
                "minutes": minutes,  # the run's time budget (the preset's unless overridden)
            },
            "warm_start": inits,
            "torch": str(torch.__version__),
        }

    def validate() -> dict[str, Any]:
        """Validation metrics, one history row and a log line at the current step."""
        m = evaluate_model(model, val)
        row = {
            "step": step,
            "minutes": round(elapsed / 60, 2),
            "loss": None if ema is None else round(ema, 5),
            "val_lower_rmse_deg": round(m["lower_rmse_deg"], 3),
        }
        line = f"val lower-limb RMSE {m['lower_rmse_deg']:.2f} deg"
        if kind == "fusionnet":
            nv = evaluate_model(model, val, drop="video")["lower_rmse_deg"]
            m["no_video_lower_rmse_deg"] = nv
            row["val_no_video_lower_rmse_deg"] = round(nv, 3)
            line += f", no video {nv:.2f} deg"
        history.append(row)
        loss_txt = "-" if ema is None else f"{ema:.4f}"
        log(f"step {step} ({elapsed / 60:.1f} min) loss {loss_txt} {line}")
        return m

    ema: float | None = None
    if inits and step == 0:  # where the warm start stands before any training
        t0 = time.perf_counter()
        m0 = validate()
        best = m0["lower_rmse_deg"]
        save_model(out_dir / "best.pt", model, cfg, meta(m0))
        elapsed += time.perf_counter() - t0  # counts against the time budget
    model.train()
    bar = tqdm(desc=f"train {kind}", unit="step", disable=not progress_bar, initial=step)
    t_start = time.perf_counter() - elapsed
    while step < preset.max_steps:
        elapsed = time.perf_counter() - t_start
        if budget_s is not None and elapsed >= budget_s:
            break
        frac = max(step / preset.max_steps, 0.0 if budget_s is None else elapsed / budget_s)
        for g in opt.param_groups:
            g["lr"] = preset.lr * g["lr_scale"] * _lr_factor(frac, step, preset.warmup_steps)
        batch = batcher(device)
        out = model(batch["imu"], batch["imu_mask"], batch["joints"], batch["joints_mask"])
        terms = losses(out, batch, cfg, preset.loss_skip)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.clip)
        opt.step()
        step += 1
        loss = float(terms["total"].detach())
        if not math.isfinite(loss):
            raise RuntimeError(f"training {kind}: loss became {loss} at step {step}")
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        bar.update(1)
        bar.set_postfix(
            loss=f"{ema:.4f}", rot=f"{math.degrees(float(terms['rot'].detach())):.1f}deg"
        )
        if step % preset.val_every == 0 or step == preset.max_steps:
            elapsed = time.perf_counter() - t_start
            m = validate()
            model.train()
            if m["lower_rmse_deg"] < best:
                best = m["lower_rmse_deg"]
                save_model(out_dir / "best.pt", model, cfg, meta(m))
        if step % preset.ckpt_every == 0:
            save_last()
    bar.close()
    elapsed = time.perf_counter() - t_start
    final = validate() if not history or history[-1]["step"] != step else None
    if final is None:  # the last step was just validated
        final = {"lower_rmse_deg": history[-1]["val_lower_rmse_deg"]}
    if final["lower_rmse_deg"] < best or not (out_dir / "best.pt").is_file():
        best = final["lower_rmse_deg"]
        save_model(out_dir / "best.pt", model, cfg, meta(final))
    save_last()
    best_model, _, best_meta = load_model(out_dir / "best.pt")
    best_meta["history"] = history
    save_model(out_dir / f"{kind}.pt", best_model, cfg, best_meta)
    log(
        f"done: {step} steps, {elapsed / 60:.1f} min, best val lower-limb RMSE {best:.2f} deg "
        f"-> {out_dir / f'{kind}.pt'}"
    )
    return {
        "steps": step,
        "minutes": elapsed / 60,
        "best_val_lower_rmse_deg": best,
        "final_loss": ema,
        "history": history,
        "path": str(out_dir / f"{kind}.pt"),
    }
