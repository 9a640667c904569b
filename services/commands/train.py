"""`gait-stream train`: train VideoNet, IMUNet or FusionNet on synthetic data (fusion.nn.train).

    gait-stream train --model videonet --preset ship --out runs/videonet --minutes 35
    gait-stream train --model fusionnet --init-video runs/videonet/videonet.pt
    gait-stream train --model fusionnet --init-video videonet --init-imu imunet --minutes 40
    gait-stream train --model imunet --resume runs/imunet/last.pt
    gait-stream train --model imunet --init imunet --minutes 50   # fine-tune the shipped one

Training seeds are 0..N-1 (N from the preset's data hours); evaluation's held-out seeds
(>= 1_000_000) are never used. Uses CUDA when torch sees a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from services.commands.argtypes import at_least_1, positive

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a neural estimator (videonet, imunet, fusionnet) on synthetic data",
        description="Train a neural estimator on synthetic data generated up front (cached).",
    )
    p.add_argument("--model", required=True, choices=("videonet", "imunet", "fusionnet"))
    p.add_argument("--preset", default="ship", help="training preset: tiny, ship (default ship)")
    p.add_argument("--out", default=None, help="output directory (default runs/train_MODEL)")
    p.add_argument("--minutes", type=positive, default=None, help="time budget (default: preset)")
    p.add_argument("--resume", default=None, help="resume from a last.pt checkpoint")
    p.add_argument("--seed", type=int, default=0, help="model/batch seed (default 0)")
    p.add_argument(
        "--init-video", default=None, help="fusionnet: warm-start its video branch from a VideoNet"
    )
    p.add_argument(
        "--init-imu",
        default=None,
        help="fusionnet: warm-start its IMU encoder, temporal layers and heads from an IMUNet "
        "('imunet' = the shipped weights)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="fine-tune this model file of the same kind ('imunet' etc. = the shipped "
        "weights); every parameter at --warm-lr-scale x the learning rate",
    )
    p.add_argument(
        "--fusion-start",
        choices=("video", "head"),
        default=None,
        help="fusionnet: refinement starts from its video branch or from a head on the fused "
        "features (default: head with --init-imu, else video)",
    )
    p.add_argument(
        "--warm-lr-scale",
        type=float,
        default=None,
        help="learning-rate factor of warm-started parameters (default: preset, 0.25)",
    )
    p.add_argument(
        "--modality-dropout",
        type=float,
        default=None,
        help="fusionnet: per-window probability of losing each whole modality (default: preset)",
    )
    p.add_argument(
        "--val-every",
        type=at_least_1,
        default=None,
        help="validate every N steps (default: preset)",
    )
    p.add_argument(
        "--pool-cache",
        default=None,
        help="where the generated training pool is cached (default runs/nn_pool/PRESET.npz)",
    )
    p.add_argument("--workers", type=at_least_1, default=min(2, os.cpu_count() or 1))
    p.add_argument("--threads", type=at_least_1, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusion.nn.checkpoint import resolve
    from fusion.nn.train import PRESETS, train

    if args.preset not in PRESETS:
        print(
            f"gait-stream train: unknown --preset {args.preset!r}, expected one of "
            f"{sorted(PRESETS)}",
            file=sys.stderr,
        )
        return 2
    overrides = {
        "warm_lr_scale": args.warm_lr_scale,
        "p_drop_modality": args.modality_dropout,
        "val_every": args.val_every,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.warm_lr_scale is not None and not 0 < args.warm_lr_scale <= 1:
        print(
            f"gait-stream train: --warm-lr-scale={args.warm_lr_scale}: need 0 < x <= 1",
            file=sys.stderr,
        )
        return 2
    if args.modality_dropout is not None and not 0 <= args.modality_dropout <= 0.5:
        print(
            f"gait-stream train: --modality-dropout={args.modality_dropout}: need 0..0.5",
            file=sys.stderr,
        )
        return 2
    preset = replace(PRESETS[args.preset], **overrides)
    out = args.out or f"runs/train_{args.model}"
    cache = args.pool_cache or f"runs/nn_pool/{preset.name}.npz"
    try:
        summary = train(
            args.model,
            preset,
            out,
            seed=args.seed,
            minutes=args.minutes,
            resume=args.resume,
            init_video=resolve(args.init_video) if args.init_video else None,
            init_imu=resolve(args.init_imu) if args.init_imu else None,
            fusion_start=args.fusion_start,
            init=resolve(args.init) if args.init else None,
            pool_cache=cache,
            workers=args.workers,
            threads=args.threads,
            progress_bar=not args.no_progress,
            log=lambda m: print(m, file=sys.stderr if args.json else sys.stdout, flush=True),
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"gait-stream train: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0
