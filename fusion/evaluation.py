"""Held-out evaluation of every estimator: accuracy, noise sensitivity and robustness.

What `gait-stream evaluate` runs and reports (docs/evaluation.md holds a committed run).

- **Held-out clips.** `fusion.synth.generate_sequence` with seeds >= HELDOUT_SEED0 (training
  never draws those) and body/camera ranges that differ from the training defaults
  (`HELDOUT_RANGES`, stated in the output). Each clip becomes one subject's `SyncedBatch`
  stream (IMU + mask; 2-D keypoints + the clip's cameras; the noisy 3-D joint centres as
  `joints3d`) fed to the estimator through `update_many` in chunks of `chunk` ticks, as the
  runtime does; several clips of a work unit are several subjects of one estimator, so the
  neural ones run batched.
- **Which clips.** The classical IMU estimator needs a standing start and a walk before it
  answers (functional calibration), so the main set is `start_stop` clips (stand 1-2.5 s,
  walk 3-7 s, repeat): every estimator can be scored on them. Pathological gait is the same
  activity with each of fusion.walking.PATHOLOGIES. The other activities are scored per
  activity (per-frame activity labels): there the classical IMU estimator usually has no
  calibration and its coverage shows it.
- **Scores.** RMSE (degrees, wrapped to ±180) per angle over the frames an estimator
  answered after `warmup_s`, pooled over clips; "lower" = hip, knee and ankle angles (no foot
  progression, as `gait-stream bench` scores), "upper" = shoulder and elbow, "trunk_pelvis";
  coverage = the fraction of (frame, angle) pairs answered. An estimator that never answers
  an angle (classical_video: pelvis tilt, hip/shoulder long-axis rotation) is scored on the
  others and lists it under `not_estimated`.
- **Noise sensitivity** (Shin et al., Fig. 7): IMU misplacement σ 0/10/20/30° and 3-D joint
  jitter σ 12 (the training default)/50/75/100 mm, all other noise at its defaults, the same
  seeds at every level (a seed fixes the motion and body whatever the noise: fusion.synth).
  A third sweep is not the paper's: the subject's quiet stance departing from the typical one
  by σ 0/3/6/9° per leg angle (`SequenceParams.stance_sd_deg`; healthy adults stand a few
  degrees apart, crouch gait far more). It is what the classical IMU calibration assumes away
  (fusion/calibration.py: the stance is assumed), and the synthetic subjects otherwise all
  stand within ~2° of that assumption.
- **Robustness**: 1, 2, 3 IMUs missing (chosen per clip at random, for the whole clip), one
  camera missing (video triangulated from the rest, beside the all-camera triangulation), no
  IMU at all, no video at all.

Models are named as the estimator registry names them, or `LABEL=PATH` for a neural model
file under a label of its own (`model_spec`), so that a candidate is scored beside the
shipped weights on the same clips in one run.

Work is split in units of a few clips over `workers` processes (spawned; one BLAS and one
torch thread each): a unit generates its clips, runs every estimator and returns sums of
squared errors, so the parent only adds them up.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusion.activities import ACTIVITIES
from fusion.camera import PinholeCamera, default_rig
from fusion.estimators.base import Estimator, SyncedBatch
from fusion.noise import NoiseParams
from fusion.skeleton import (
    ANGLE_INDEX,
    ANGLES,
    LOWER_LIMB_ANGLES,
    SEGMENTS,
    TRUNK_PELVIS_ANGLES,
    UPPER_LIMB_ANGLES,
)
from fusion.synth import SequenceParams, generate_sequence
from fusion.walking import PATHOLOGIES

__all__ = [
    "HELDOUT_RANGES",
    "HELDOUT_SEED0",
    "JOINT_NOISE_MM",
    "MISPLACEMENT_DEG",
    "MODEL_NAMES",
    "ROBUSTNESS",
    "SCORED_LOWER",
    "Clip",
    "EvalPlan",
    "batch_from_sequence",
    "cameras_from_sequence",
    "evaluate",
    "is_neural",
    "model_spec",
    "plot_noise",
    "run_unit",
    "score_angles",
]

#: held-out seeds start here; training and datasets use seeds below it
HELDOUT_SEED0 = 1_000_000
#: body and camera ranges of the held-out clips (training defaults: height 1.50-1.95 m,
#: shape factors 0.92-1.08, cameras 3.5-7 m away)
HELDOUT_RANGES: dict[str, tuple[float, float]] = {
    "height_range": (1.45, 2.00),
    "shape_range": (0.90, 1.10),
    "camera_distance": (3.0, 8.0),
}
#: lower-limb angles scored (foot progression left out, as services/commands/bench.py does)
SCORED_LOWER: tuple[str, ...] = tuple(
    a for a in LOWER_LIMB_ANGLES if not a.startswith("foot_progression")
)
GROUPS: dict[str, tuple[str, ...]] = {
    "lower": SCORED_LOWER,
    "upper": UPPER_LIMB_ANGLES,
    "trunk_pelvis": TRUNK_PELVIS_ANGLES,
}
NEURAL_NAMES: tuple[str, ...] = ("fusionnet", "imunet", "videonet")
#: the default models; "classical_nominal" = the classical IMU path with nominal mountings
#: (no functional calibration: the paper's "calibrated-orientation" baseline); "<net>_gyro" =
#: that neural model with the gyro refinement (fusion.estimators.gyro_refine)
MODEL_NAMES: tuple[str, ...] = (
    *NEURAL_NAMES,
    "fusionnet_gyro",
    "imunet_gyro",
    "classical",
    "classical_nominal",
    "classical_video",
)
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "classical_nominal": ("classical", {"mounting": "nominal"}),
    "fusionnet_gyro": ("fusionnet", {"gyro_refine": True}),
    "imunet_gyro": ("imunet", {"gyro_refine": True}),
}
MISPLACEMENT_DEG: tuple[float, ...] = (0.0, 10.0, 20.0, 30.0)
JOINT_NOISE_MM: tuple[float, ...] = (12.0, 50.0, 75.0, 100.0)
#: σ of the subject's departure from the typical standing pose (SequenceParams.stance_sd_deg)
STANCE_DEG: tuple[float, ...] = (0.0, 3.0, 6.0, 9.0)
#: the estimator whose answered frames the head-to-head scores use (`_score_paired`)
PAIRED_WITH = "classical"
#: where each model's head-to-head score goes in the report (`models.<name>.<PAIRED_KEY>`)
PAIRED_KEY = f"on_{PAIRED_WITH}_frames"
ROBUSTNESS: dict[str, str] = {
    "none": "all sensors (3-D joints given)",
    "imu_missing_1": "1 random IMU missing for the whole clip",
    "imu_missing_2": "2 random IMUs missing",
    "imu_missing_3": "3 random IMUs missing",
    "triangulated": "video from triangulating all cameras' 2-D keypoints (no 3-D joints given)",
    "camera_missing_1": "one camera missing, video triangulated from the others",
    "no_imu": "the whole IMU modality missing",
    "no_video": "the whole video modality missing",
}


# -- clips -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    """One held-out clip: how to make it and what to take away from it."""

    seed: int
    activity: str = "start_stop"
    pathology: str | None = None
    duration: float = 30.0
    noise: NoiseParams = field(default_factory=NoiseParams)
    condition: str = "none"  # a ROBUSTNESS key
    stance_sd_deg: float = 0.0  # σ of the subject's stance from the typical one
    #: where its scores go: ("heldout",), ("noise", "misplacement_deg", "30"), ...
    tags: tuple[tuple[str, ...], ...] = (("heldout",),)

    def __post_init__(self) -> None:
        if self.seed < HELDOUT_SEED0:
            raise ValueError(f"Clip.seed={self.seed}: held-out seeds are >= {HELDOUT_SEED0}")
        if self.condition not in ROBUSTNESS:
            raise ValueError(f"Clip.condition={self.condition!r}: one of {list(ROBUSTNESS)}")

    @property
    def params(self) -> SequenceParams:
        return SequenceParams(
            activity=self.activity,
            pathology=self.pathology,
            duration=self.duration,
            noise=self.noise,
            stance_sd_deg=self.stance_sd_deg,
            **HELDOUT_RANGES,
        )

    @property
    def triangulated(self) -> bool:
        return self.condition in ("triangulated", "camera_missing_1")


def cameras_from_sequence(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> list:
    """The clip's calibrated cameras (its rig frame, where its keypoints live)."""
    w, h = meta.get("image_size", (1920, 1080))
    return [
        PinholeCamera(f"cam{k + 1:02d}", K, R, t, width=int(w), height=int(h))
        for k, (K, R, t) in enumerate(
            zip(arrays["cam_K"], arrays["cam_R"], arrays["cam_t"], strict=True)
        )
    ]


def batch_from_sequence(
    arrays: dict[str, np.ndarray], condition: str = "none", seed: int = 0
) -> SyncedBatch:
    """A generated sequence as one subject's SyncedBatch, with a ROBUSTNESS condition applied
    (the random choices of missing IMUs / camera come from `seed`)."""
    try:
        imu = np.array(arrays["imu"], dtype=float)
        imu_mask = np.array(arrays["imu_mask"], dtype=bool)
        kp = np.array(arrays["keypoints2d"], dtype=float)
        kp_mask = np.array(arrays["keypoints2d_mask"], dtype=bool)
        j3 = np.array(arrays["keypoints3d_noisy"], dtype=float)
        t = np.asarray(arrays["t"], dtype=float)
    except KeyError as e:
        raise ValueError(f"batch_from_sequence: sequence arrays lack key {e}") from None
    rng = np.random.default_rng([seed, 0xE7A1])
    if condition.startswith("imu_missing_"):
        k = int(condition.rsplit("_", 1)[1])
        gone = rng.choice(len(SEGMENTS), size=k, replace=False)
        imu_mask[:, gone] = False
    elif condition == "no_imu":
        imu_mask[:] = False
    elif condition == "camera_missing_1":
        kp_mask[:, rng.integers(kp.shape[1])] = False
    elif condition == "no_video":
        kp_mask[:] = False
    elif condition not in ROBUSTNESS:
        raise ValueError(f"batch_from_sequence: unknown condition {condition!r}")
    imu[~imu_mask] = np.nan
    kp[~kp_mask] = 0.0
    with_3d = condition not in ("triangulated", "camera_missing_1")
    j3_mask = np.isfinite(j3).all(axis=-1)
    if condition == "no_video":
        j3_mask[:] = False
        j3[:] = np.nan
    return SyncedBatch(
        t=t,
        imu=imu,
        imu_mask=imu_mask,
        keypoints=kp,
        keypoint_mask=kp_mask,
        joints3d=j3 if with_3d else None,
        joints3d_mask=j3_mask if with_3d else None,
    )


# -- estimators --------------------------------------------------------------------------------
def model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A model as `evaluate` takes it → (label, options for `create_estimator`).

    "NAME" is a registered estimator or an alias here (no options); "LABEL=PATH" is the
    neural model file PATH (VideoNet, IMUNet or FusionNet, the kind read from the file)
    reported as LABEL. ValueError naming the spec or file when it cannot be used."""
    if "=" not in spec:
        return spec, {}
    label, path = (x.strip() for x in spec.split("=", 1))
    if not label.isidentifier():
        raise ValueError(f"model {spec!r}: label {label!r} must be a plain name (LABEL=PATH)")
    if not path:
        raise ValueError(f"model {spec!r}: no model file after '='")
    from fusion.nn.checkpoint import load_model

    try:
        _, cfg, _ = load_model(Path(path))
    except FileNotFoundError as e:
        raise ValueError(f"model {spec!r}: {e}") from None
    return label, {"estimator": cfg.kind, "weights": path}


def is_neural(name: str) -> bool:
    """Whether `name` (a model name or an alias here) is a neural model."""
    return _ALIASES.get(name, (name, {}))[0] in NEURAL_NAMES


def create_estimator(name: str, cameras: Sequence[Any] | None, **options: Any) -> Estimator:
    """An estimator by name (registry, neural modules imported on demand, the aliases here);
    options["estimator"] (from `model_spec`) names the registered estimator behind a label."""
    from fusion.estimators import registry

    base, opts = _ALIASES.get(name, (name, {}))
    options = dict(options)
    base = options.pop("estimator", base)
    return registry.create(base, cameras, **{**opts, **options})


def model_status(name: str, **options: Any) -> dict[str, Any]:
    """{"status": "ok", "info": ...} if `name` can be built here, else "missing" and why
    (weights not shipped yet, module absent, ...): reported, never raised."""
    try:
        cams = default_rig(2) if name == "classical_video" else None
        est = create_estimator(name, cams, **options)
    except Exception as e:
        return {"status": "missing", "reason": f"{type(e).__name__}: {e}"}
    info = getattr(est, "info", None)
    return {"status": "ok", "info": info() if callable(info) else {"name": est.name}}


# -- scoring -----------------------------------------------------------------------------------
def _wrap_deg(x: np.ndarray) -> np.ndarray:
    return (x + 180.0) % 360.0 - 180.0


def score_angles(
    pred: np.ndarray, truth: np.ndarray, labels: np.ndarray, keep: np.ndarray
) -> dict[str, np.ndarray]:
    """Squared-error sums: {"sse": (A+1, 26), "n": (A+1, 26), "frames": (A+1,)} where row a
    is per-frame activity a (ACTIVITIES) and the last row all frames; `keep` selects the
    scored frames."""
    err = _wrap_deg(np.asarray(pred, float) - np.asarray(truth, float))
    ok = np.isfinite(err) & keep[:, None]
    sq = np.where(ok, err**2, 0.0)
    A = len(ACTIVITIES)
    sse = np.zeros((A + 1, len(ANGLES)))
    n = np.zeros((A + 1, len(ANGLES)))
    frames = np.zeros(A + 1)
    lab = np.where((labels >= 0) & (labels < A), labels, A)  # unknown label: totals only
    np.add.at(sse, lab, sq)
    np.add.at(n, lab, ok)
    np.add.at(frames, lab, keep)
    sse[A], n[A], frames[A] = sq.sum(axis=0), ok.sum(axis=0), keep.sum()
    return {"sse": sse, "n": n, "frames": frames}


def _summary(sse: np.ndarray, n: np.ndarray, frames: float) -> dict[str, Any]:
    """RMSE per angle and per group, coverage, angles never answered."""
    out: dict[str, Any] = {"rmse_deg": {}, "coverage": {}}
    for g, names in GROUPS.items():
        idx = [ANGLE_INDEX[a] for a in names]
        cnt = n[idx].sum()
        out["rmse_deg"][g] = float(np.sqrt(sse[idx].sum() / cnt)) if cnt else None
        out["coverage"][g] = float(cnt / (frames * len(idx))) if frames else 0.0
    for a, i in ANGLE_INDEX.items():
        out["rmse_deg"][a] = float(np.sqrt(sse[i] / n[i])) if n[i] else None
    out["not_estimated"] = [a for a, i in ANGLE_INDEX.items() if frames and not n[i]]
    out["frames"] = int(frames)
    return out


# -- one work unit (runs in a worker process) --------------------------------------------------
def _run_estimator(
    est: Estimator, batches: dict[str, SyncedBatch], chunk: int
) -> dict[str, np.ndarray]:
    """Feed every subject's stream in chunks through update_many; answers placed by time."""
    n_max = max(len(b) for b in batches.values())
    out = {s: np.full((len(b), len(ANGLES)), np.nan) for s, b in batches.items()}
    for a in range(0, n_max, chunk):
        part = {s: b.slice(a, a + chunk) for s, b in batches.items() if a < len(b)}
        res = est.update_many(part)
        for s, r in res.items():
            if len(r.t):
                t = batches[s].t
                i = np.searchsorted(t, r.t)
                i = np.clip(i, 0, len(t) - 1)
                hit = np.abs(t[i] - r.t) < 1e-6
                out[s][i[hit]] = r.angles[hit]
    return out


def run_unit(
    clips: Sequence[Clip],
    models: Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
    chunk: int = 6,
    warmup_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Generate `clips`, run each model over all of them (as subjects of one estimator, or
    one estimator per clip where each needs its own cameras) and score them."""
    options = options or {}
    seqs = [generate_sequence(c.params, c.seed) for c in clips]
    batches = {
        f"clip{k}": batch_from_sequence(s.arrays, c.condition, c.seed)
        for k, (c, s) in enumerate(zip(clips, seqs, strict=True))
    }
    cams = {f"clip{k}": cameras_from_sequence(s.arrays, s.meta) for k, s in enumerate(seqs)}
    results: list[dict[str, Any]] = [
        {"clip": c, "models": {}, "paired": {}, "seconds": {}} for c in clips
    ]
    answers: dict[str, dict[str, np.ndarray]] = {}
    for name in models:
        t0 = time.perf_counter()
        per_clip = name == "classical_video" or any(c.triangulated for c in clips)
        preds: dict[str, np.ndarray] = {}
        if per_clip:
            for s, b in batches.items():
                est = create_estimator(name, cams[s], **options.get(name, {}))
                preds |= _run_estimator(est, {s: b}, chunk)
        else:
            est = create_estimator(name, None, **options.get(name, {}))
            preds = _run_estimator(est, batches, chunk)
        dt = time.perf_counter() - t0
        for k, (_c, s) in enumerate(zip(clips, seqs, strict=True)):
            a = s.arrays
            keep = a["t"] >= warmup_s
            results[k]["models"][name] = score_angles(
                preds[f"clip{k}"], a["angles"], a["activity"], keep
            )
            results[k]["seconds"][name] = dt / len(clips)
        answers[name] = preds
    if PAIRED_WITH in answers:
        _score_paired(results, seqs, answers, warmup_s)
    return results


def _score_paired(
    results: list[dict[str, Any]],
    seqs: Sequence[Any],
    answers: dict[str, dict[str, np.ndarray]],
    warmup_s: float,
) -> None:
    """Every model again, on only the (frame, angle) pairs PAIRED_WITH answered: a head-to-head
    on the same frames, which the plain scores are not (the classical estimator answers
    nothing before its calibration and skips angles whose sensor is lost)."""
    for k, s in enumerate(seqs):
        a = s.arrays
        asked = np.isfinite(answers[PAIRED_WITH][f"clip{k}"])
        for name, preds in answers.items():
            p = np.where(asked, preds[f"clip{k}"], np.nan)
            results[k]["paired"][name] = score_angles(
                p, a["angles"], a["activity"], a["t"] >= warmup_s
            )


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    os.environ.setdefault("MKL_NUM_THREADS", "1")  # torch reads these when first imported


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalPlan:
    """How many clips of what. `quick()` is the test-sized one."""

    seeds_main: int = 6  # start_stop clips without pathology
    duration: float = 30.0
    activities: tuple[str, ...] = (
        "walk",
        "turn",
        "jog",
        "sit_to_stand",
        "squat",
        "arm_movements",
    )
    seeds_activity: int = 2
    pathologies: tuple[str, ...] = PATHOLOGIES
    misplacement_deg: tuple[float, ...] = MISPLACEMENT_DEG
    joint_noise_mm: tuple[float, ...] = JOINT_NOISE_MM
    stance_deg: tuple[float, ...] = STANCE_DEG
    seeds_noise: int = 3
    robustness: tuple[str, ...] = tuple(ROBUSTNESS)
    seeds_robustness: int = 3
    clips_per_unit: int = 4
    chunk: int = 6
    warmup_s: float = 1.0

    @classmethod
    def quick(cls) -> EvalPlan:
        return cls(
            seeds_main=1,
            duration=30.0,
            activities=(),
            seeds_activity=1,
            pathologies=("crouch",),
            misplacement_deg=(0.0, 30.0),
            joint_noise_mm=(12.0, 100.0),
            stance_deg=(0.0, 9.0),
            seeds_noise=1,
            robustness=("none", "imu_missing_1", "no_video"),
            seeds_robustness=1,
            clips_per_unit=3,
        )

    def clips(self) -> list[Clip]:
        """Every clip; seeds disjoint between the parts (noise levels share theirs)."""
        d, s0 = self.duration, HELDOUT_SEED0
        out: list[Clip] = []
        for k in range(self.seeds_main):
            out.append(Clip(s0 + k, duration=d, tags=(("heldout",), ("normal",))))
        for k, p in enumerate(self.pathologies):
            out.append(
                Clip(s0 + 100 + k, pathology=p, duration=d, tags=(("heldout",), ("pathological",)))
            )
        for i, act in enumerate(self.activities):
            for k in range(self.seeds_activity):
                out.append(
                    Clip(s0 + 200 + 10 * i + k, activity=act, duration=d, tags=(("activity",),))
                )
        for k in range(self.seeds_noise):
            for lvl in self.misplacement_deg:
                noise = replace(NoiseParams(), imu_misplacement_deg=float(lvl))
                tag = ("noise", "misplacement_deg", f"{lvl:g}", str(k))
                out.append(Clip(s0 + 300 + k, duration=d, noise=noise, tags=(tag,)))
            for lvl in self.joint_noise_mm:
                noise = replace(NoiseParams(), joint_jitter_mm=float(lvl))
                tag = ("noise", "joint_noise_mm", f"{lvl:g}", str(k))
                out.append(Clip(s0 + 300 + k, duration=d, noise=noise, tags=(tag,)))
            for lvl in self.stance_deg:
                tag = ("noise", "stance_deg", f"{lvl:g}", str(k))
                out.append(Clip(s0 + 300 + k, duration=d, stance_sd_deg=lvl, tags=(tag,)))
        for k in range(self.seeds_robustness):
            for cond in self.robustness:
                tag = ("robustness", cond)
                out.append(Clip(s0 + 400 + k, duration=d, condition=cond, tags=(tag,)))
        return out

    def units(self) -> list[list[Clip]]:
        """Clips grouped for batching: triangulated ones alone (they need their cameras)."""
        clips = self.clips()
        solo = [[c] for c in clips if c.triangulated]
        rest = [c for c in clips if not c.triangulated]
        n = max(1, self.clips_per_unit)
        return [rest[i : i + n] for i in range(0, len(rest), n)] + solo

    def describe(self) -> dict[str, Any]:
        return {
            "seed_min": HELDOUT_SEED0,
            "ranges": {k: list(v) for k, v in HELDOUT_RANGES.items()},
            "duration_s": self.duration,
            "main_activity": "start_stop",
            "pathologies": list(self.pathologies),
            "activities": ["start_stop", *self.activities],
            "noise_default": NoiseParams().to_dict(),
            "warmup_s": self.warmup_s,
            "chunk_ticks": self.chunk,
            "rate_hz": 60.0,
        }


# -- the whole evaluation ----------------------------------------------------------------------
def evaluate(
    models: Sequence[str] = MODEL_NAMES,
    plan: EvalPlan | None = None,
    workers: int = 2,
    options: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the plan; the report (JSON-ready dict, shape in docs/evaluation.md). `models`
    may hold "LABEL=PATH" model files (`model_spec`); `options` are keyed by label."""
    plan = plan or EvalPlan()
    options = dict(options or {})
    labels: list[str] = []
    for spec in models:
        label, opts = model_spec(spec)
        if label in labels:
            raise ValueError(f"model {label!r} is named twice")
        labels.append(label)
        if opts:
            options[label] = {**opts, **options.get(label, {})}
    models = tuple(labels)
    t_start = time.perf_counter()
    status = {m: model_status(m, **options.get(m, {})) for m in models}
    ready = [m for m in models if status[m]["status"] == "ok"]
    units = plan.units()
    scored: list[dict[str, Any]] = []
    done = 0
    if progress:
        progress(0, len(units))
    if ready:
        if workers <= 1:
            for u in units:
                scored += run_unit(u, ready, options, plan.chunk, plan.warmup_s)
                done += 1
                if progress:
                    progress(done, len(units))
        else:
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
                futs = [
                    ex.submit(run_unit, u, ready, options, plan.chunk, plan.warmup_s) for u in units
                ]
                for f in futs:
                    scored += f.result()
                    done += 1
                    if progress:
                        progress(done, len(units))
    report = _report(scored, models, ready, status, plan)
    report["timing"] = {
        "seconds": round(time.perf_counter() - t_start, 1),
        "workers": workers,
        "clips": len(plan.clips()),
        "model_seconds": {
            m: round(sum(r["seconds"].get(m, 0.0) for r in scored), 1) for m in ready
        },
    }
    return report


def _acc(
    scored: list[dict[str, Any]], model: str, tag: tuple[str, ...], key: str = "models"
) -> dict[str, Any]:
    sse = np.zeros((len(ACTIVITIES) + 1, len(ANGLES)))
    n, frames = np.zeros_like(sse), np.zeros(len(ACTIVITIES) + 1)
    for r in scored:
        if tag in r["clip"].tags and model in r[key]:
            s = r[key][model]
            sse += s["sse"]
            n += s["n"]
            frames += s["frames"]
    return {"sse": sse, "n": n, "frames": frames}


def _report(
    scored: list[dict[str, Any]],
    models: Sequence[str],
    ready: Sequence[str],
    status: dict[str, dict[str, Any]],
    plan: EvalPlan,
) -> dict[str, Any]:
    A = len(ACTIVITIES)
    out: dict[str, Any] = {"heldout": plan.describe(), "models": {}}
    for m in models:
        if m not in ready:
            out["models"][m] = status[m]
            continue
        main = _acc(scored, m, ("heldout",))
        entry = {"status": "ok", **_summary(main["sse"][A], main["n"][A], main["frames"][A])}
        entry["info"] = status[m].get("info", {})
        for part in ("normal", "pathological"):
            acc = _acc(scored, m, (part,))
            entry[part] = _brief(acc, A)
        per_act: dict[str, Any] = {}
        acts = [_acc(scored, m, ("heldout",)), _acc(scored, m, ("activity",))]
        for i, act in enumerate(ACTIVITIES):
            sse = sum(a["sse"][i] for a in acts)
            n = sum(a["n"][i] for a in acts)
            fr = sum(a["frames"][i] for a in acts)
            if fr:
                per_act[act] = _brief({"sse": sse[None], "n": n[None], "frames": [fr]}, 0)
        entry["per_activity"] = per_act
        paired = _acc(scored, m, ("heldout",), key="paired")
        if paired["frames"][A]:
            entry[PAIRED_KEY] = _brief(paired, A)
        out["models"][m] = entry
    out["noise"] = _noise(scored, ready, plan)
    out["robustness"] = _robustness(scored, ready, plan)
    return out


def _brief(acc: dict[str, Any], row: int) -> dict[str, Any]:
    s = _summary(acc["sse"][row], acc["n"][row], acc["frames"][row])
    return {
        "lower": s["rmse_deg"]["lower"],
        "upper": s["rmse_deg"]["upper"],
        "coverage_lower": s["coverage"]["lower"],
        "frames": s["frames"],
    }


def _noise(scored: list[dict[str, Any]], ready: Sequence[str], plan: EvalPlan) -> dict[str, Any]:
    A = len(ACTIVITIES)
    out: dict[str, Any] = {}
    sweeps = {
        "misplacement_deg": (plan.misplacement_deg, "σ of each IMU's mounting rotation, deg"),
        "joint_noise_mm": (plan.joint_noise_mm, "σ of 3-D joint-centre jitter, mm"),
        "stance_deg": (plan.stance_deg, "σ of the subject's stance from the typical one, deg"),
    }
    for sweep, (levels, what) in sweeps.items():
        res: dict[str, Any] = {"levels": list(levels), "what": what, "models": {}}
        res["seeds"] = [HELDOUT_SEED0 + 300 + k for k in range(plan.seeds_noise)]
        for m in ready:
            per_seed = np.full((len(levels), plan.seeds_noise), np.nan)
            cover = np.zeros(len(levels))
            for i, lvl in enumerate(levels):
                for k in range(plan.seeds_noise):
                    acc = _acc(scored, m, ("noise", sweep, f"{lvl:g}", str(k)))
                    s = _summary(acc["sse"][A], acc["n"][A], acc["frames"][A])
                    v = s["rmse_deg"]["lower"]
                    per_seed[i, k] = np.nan if v is None else v
                    cover[i] += s["coverage"]["lower"] / plan.seeds_noise
            with np.errstate(invalid="ignore"), _Quiet():
                mean = np.nanmean(per_seed, axis=1)
                sd = np.nanstd(per_seed, axis=1)
            res["models"][m] = {
                "lower_mean": _list(mean),
                "lower_sd": _list(sd),
                "lower_per_seed": [_list(r) for r in per_seed],
                "coverage_lower": _list(cover),
            }
        out[sweep] = res
    return out


def _robustness(
    scored: list[dict[str, Any]], ready: Sequence[str], plan: EvalPlan
) -> dict[str, Any]:
    A = len(ACTIVITIES)
    out: dict[str, Any] = {
        "conditions": {c: ROBUSTNESS[c] for c in plan.robustness},
        "seeds": [HELDOUT_SEED0 + 400 + k for k in range(plan.seeds_robustness)],
        "models": {},
    }
    for m in ready:
        out["models"][m] = {
            c: _brief(_acc(scored, m, ("robustness", c)), A) for c in plan.robustness
        }
    return out


class _Quiet:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def _list(x: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 3) for v in np.asarray(x)]


# -- the plot ----------------------------------------------------------------------------------
def plot_noise(report: dict[str, Any], path: str) -> None:
    """Fig. 7 style: lower-limb RMSE vs each noise level, mean ± SD over seeds, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = report["noise"]
    fig, axes = plt.subplots(1, len(noise), figsize=(5.5 * len(noise), 4.2), squeeze=False)
    for ax, (sweep, res) in zip(axes[0], noise.items(), strict=True):
        x = np.asarray(res["levels"], float)
        for m, r in res["models"].items():
            mean = np.array([np.nan if v is None else v for v in r["lower_mean"]])
            sd = np.array([0.0 if v is None else v for v in r["lower_sd"]])
            if not np.isfinite(mean).any():
                continue
            ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=m)
        ax.set_xlabel(res["what"])
        ax.set_ylabel("lower-limb RMSE, deg")
        ax.set_title(sweep.replace("_", " "))
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Noise sensitivity on held-out synthetic start/stop walking")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
