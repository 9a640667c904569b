"""`gait-stream synth`: write a sharded synthetic dataset (fusion.dataset) with a progress bar.

    gait-stream synth --hours 10 --out runs/synth10h --seed 1 --workers 2

The files are byte-identical for a seed whatever `--workers` is; docs/dataset_format.md
describes them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic IMU + video dataset with ground truth",
        description="Generate a sharded synthetic dataset (see docs/dataset_format.md).",
    )
    p.add_argument("--hours", type=float, required=True, help="hours of data at 60 Hz")
    p.add_argument(
        "--out", required=True, help="output directory (created; an old dataset there is replaced)"
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="generator processes (default: min(2, CPUs)); does not change the output",
    )
    p.add_argument(
        "--sequence-seconds", type=float, default=20.0, help="length of each sequence (20 s)"
    )
    p.add_argument("--shard-sequences", type=int, default=16, help="sequences per shard file (16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fusion.dataset import DatasetSpec, write_dataset

    try:
        spec = DatasetSpec(
            hours=args.hours,
            seed=args.seed,
            sequence_seconds=args.sequence_seconds,
            sequences_per_shard=args.shard_sequences,
        )
        if args.workers < 1:
            raise ValueError(f"--workers={args.workers}: need at least one process")
    except ValueError as e:
        print(f"gait-stream synth: {e}", file=sys.stderr)
        return 2

    bar = tqdm(
        total=round(spec.hours_generated, 4),
        unit="h",
        desc="synth",
        disable=args.no_progress,
        bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h [{elapsed}<{remaining}]",
    )
    last = 0.0

    def progress(hours_done: float) -> None:
        nonlocal last
        bar.update(hours_done - last)
        last = hours_done

    start = time.perf_counter()
    try:
        manifest = write_dataset(
            args.out, args.hours, args.seed, progress=progress, workers=args.workers, spec=spec
        )
    except ValueError as e:
        bar.close()
        print(f"gait-stream synth: {e}", file=sys.stderr)
        return 2
    bar.close()
    elapsed = time.perf_counter() - start
    hours = manifest["hours"]
    size = sum(s["bytes"] for s in manifest["shards"])
    print(
        f"wrote {manifest['n_sequences']} sequences, {manifest['n_frames']} frames "
        f"({hours:.3f} h) in {len(manifest['shards'])} shards, {size / 1e6:.1f} MB, to "
        f"{args.out} in {elapsed:.1f} s ({hours * 60 / max(elapsed, 1e-9):.2f} h of data per "
        f"minute, {args.workers} workers)"
    )
    return 0
