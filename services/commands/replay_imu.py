"""`gait-stream replay-imu`: replay the qmt full-body recording as 13 live LSL IMU streams.

The streams are `<prefix>-<segment>` (source id the same), one per fusion.skeleton.SEGMENTS
entry, as drivers.imu_replay publishes them; `configs/qmt_replay.yaml` is the runtime config
that consumes them. The default file is the shared data copy: `$GAIT_STREAM_SHARED_DATA` (the
data folder) or `../shared/data` beside the checkout, then
`imu/qmt_fullbody_16imu/full_body_example_data.mat`.

`--run-pipeline --config configs/qmt_replay.yaml` also runs the pipeline on the replayed
streams in this process (services.commands.replay.run_with_pipeline): it starts and connects
first, then the replay starts; the run ends when the replay does (or after `--duration`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from drivers.imu_replay import ImuArrayPublisher
from drivers.qmt_fullbody import DEFAULT_RELATIVE_PATH, QmtFormatError, load_qmt_fullbody
from services.commands.argtypes import at_least_0, positive, tcp_port
from services.commands.replay import run_with_pipeline

__all__ = ["default_file", "register", "run"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_file() -> Path:
    """The qmt recording in the shared data folder ($GAIT_STREAM_SHARED_DATA or ../shared/data)."""
    env = os.environ.get("GAIT_STREAM_SHARED_DATA")
    base = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return base / DEFAULT_RELATIVE_PATH


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay-imu",
        help="replay the qmt 16-IMU recording as 13 live LSL IMU streams",
        description=(
            "Replay a qmt full-body IMU recording (MAT-file) as one LSL IMU stream per body "
            "segment, named <prefix>-<segment>, in real time (or faster with --speed)."
        ),
    )
    p.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"MAT-file (default: {default_file()})",
    )
    p.add_argument("--start", type=at_least_0, default=0.0, help="start this many s into the file")
    p.add_argument(
        "--duration", type=positive, default=None, help="replay this many s (default: all)"
    )
    g = p.add_argument_group("pipeline on the replayed streams")
    g.add_argument(
        "--run-pipeline",
        action="store_true",
        help="also run the pipeline (config --config) on the replayed streams until the "
        "replay ends",
    )
    g.add_argument("--config", help="pipeline config for --run-pipeline (configs/qmt_replay.yaml)")
    g.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS or a local Ray)")
    g.add_argument("--metrics-port", type=tcp_port, help="Prometheus port (overrides metrics.port)")
    p.add_argument(
        "--speed",
        type=positive,
        default=1.0,
        help="replay speed factor (default 1). Values stay as recorded while timestamps are "
        "compressed, so only speed 1 is physically consistent for the estimators; use other "
        "speeds for transport and throughput tests",
    )
    p.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    p.add_argument("--prefix", default="qmt", help="stream name prefix (default: qmt)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (for logs and scripts)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, publish, show progress until done (or Ctrl-C with --loop); 0 on success."""
    path = Path(args.file) if args.file is not None else default_file()
    if not args.speed > 0:
        print(f"gait-stream replay-imu: --speed must be > 0, got {args.speed}", file=sys.stderr)
        return 2
    try:
        rec = load_qmt_fullbody(path).window(args.start, args.duration)
    except (FileNotFoundError, QmtFormatError, ValueError) as exc:
        print(f"gait-stream replay-imu: {exc}", file=sys.stderr)
        return 2
    pub = ImuArrayPublisher(
        rec.data, rec.rate, args.prefix, args.prefix, rec.segments, loop=args.loop, speed=args.speed
    )
    if args.run_pipeline:
        return _replay_into_pipeline(args, pub, path, rec.duration)
    names = ", ".join(pub.stream_names.values())
    print(
        f"replaying {path.name} {args.start:g}–{args.start + rec.duration:g} s "
        f"({rec.rate:g} Hz, speed {args.speed:g}{', loop' if args.loop else ''}) "
        f"as {len(pub.segments)} LSL streams: {names}",
        file=sys.stderr,
        flush=True,
    )
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(
            total=round(rec.duration, 2), unit="s", desc="replay", file=sys.stderr, leave=True
        )
    try:
        pub.start()
        shown_pass = 0
        while not pub.join(0.1):
            if bar is not None:
                if pub.passes != shown_pass:
                    shown_pass = pub.passes
                    bar.reset()
                    bar.set_description(f"replay (pass {shown_pass + 1})")
                bar.n = round(pub.position_s, 2)
                bar.refresh()
        if bar is not None:
            bar.n = round(pub.position_s, 2)
            bar.refresh()
        # Let inlets drain the last chunk before the outlets disappear.
        time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if bar is not None:
            bar.close()
        pub.close()
    print(
        f"sent {pub.sent} samples per stream ({pub.sent / rec.rate:.2f} s of recording, "
        f"{pub.late_pushes} late pushes)",
        file=sys.stderr,
    )
    return 0


def _replay_into_pipeline(
    args: argparse.Namespace, pub: ImuArrayPublisher, path: Path, duration: float
) -> int:
    """The replay plus the pipeline of --config, for the replay's length (or until Ctrl-C)."""
    print(
        f"replaying {path.name} {args.start:g}–{args.start + duration:g} s "
        f"(speed {args.speed:g}{', loop' if args.loop else ''}) into the pipeline of "
        f"{args.config}",
        file=sys.stderr,
        flush=True,
    )
    # --duration is the replay's length here; the pipeline stops when the replay has ended.
    run_args = argparse.Namespace(**{**vars(args), "duration": None})
    code = run_with_pipeline(
        run_args, pub.start, lambda: pub.done, pub.close, "gait-stream replay-imu"
    )
    if pub.error is not None:
        print(f"gait-stream replay-imu: replay failed: {pub.error}", file=sys.stderr)
        code = code or 1
    print(
        f"sent {pub.sent} samples per stream ({pub.sent / pub.rate:.2f} s of recording, "
        f"{pub.late_pushes} late pushes)",
        file=sys.stderr,
    )
    return code
