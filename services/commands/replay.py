"""`gait-stream replay FILE.xdf`: re-publish a recording's streams on LSL, timing kept.

    gait-stream replay rec.xdf [--speed X] [--loop] [--select type=ACC] [--max-seconds S]
    gait-stream replay rec.xdf --verify [--speed X] [--max-seconds S]
    gait-stream replay rec.xdf --run-pipeline --config C [--duration S] [--metrics-port P]

`--select` picks streams by `name=…`, `type=…`, `source_id=…` (comma-joined fields must all
match; repeat the flag for alternatives; a bare word is a name). `--verify` is the timing
measurement: it replays over real LSL, receives on inlets and prints, per stream, the error
between the received timestamps and pyxdf's synchronised timestamps (median/p99/max, ms);
it exits 1 if any stream is over `--tolerance-ms` (1 ms), lost samples or changed values.

`--run-pipeline --config C` runs the pipeline (services.pipeline.run_pipeline, config C) on the
replayed streams in this process: the outlets exist first, the pipeline starts and connects,
then the replay starts (so the estimators see the recording from its first sample); the run
ends when the replay has finished (plus a short drain), after `--duration` s, or on Ctrl-C,
and both are shut down. C must select the replayed streams (by name/type, or by source id
including any `--source-id-suffix`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from drivers.xdf_reader import XdfFormatError, load_xdf
from drivers.xdf_replay import XdfReplayer, verify_replay
from services.commands.argtypes import positive, tcp_port

__all__ = ["add_pipeline_arguments", "register", "run", "run_with_pipeline"]

DRAIN_S = 1.5  # after the last replayed sample: let the pipeline emit its last ticks


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "replay",
        help="re-publish an XDF file's streams as LSL outlets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="XDF recording")
    p.add_argument("--speed", type=positive, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--loop", action="store_true", help="start over at the end, forever")
    p.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="SEL",
        help="stream selector: name=…,type=…,source_id=… (repeatable; default: all streams)",
    )
    p.add_argument("--max-seconds", type=positive, help="replay only the first S s of the file")
    p.add_argument(
        "--dejitter",
        action="store_true",
        help="replay pyxdf-dejittered timestamps (one straight line per segment: wrong for "
        "streams that lose samples); default: the recorded stamps, clock-synchronised",
    )
    p.add_argument("--source-id-suffix", default="", help="append to every source id")
    p.add_argument("--skip-empty", action="store_true", help="no outlet for streams with no data")
    p.add_argument("--verify", action="store_true", help="measure timing on real LSL inlets")
    p.add_argument("--tolerance-ms", type=positive, default=1.0, help="--verify pass mark (ms)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_pipeline_arguments(p)
    p.set_defaults(func=run)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """`--run-pipeline --config C [--duration S] [--address A] [--metrics-port P]`."""
    g = p.add_argument_group("pipeline on the replayed streams")
    g.add_argument(
        "--run-pipeline",
        action="store_true",
        help="also run the pipeline (config --config) on the replayed streams",
    )
    g.add_argument("--config", help="pipeline config for --run-pipeline (YAML)")
    g.add_argument(
        "--duration",
        type=positive,
        help="with --run-pipeline: stop after S s (default: when the replay ends)",
    )
    g.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS or a local Ray)")
    g.add_argument("--metrics-port", type=tcp_port, help="Prometheus port (overrides metrics.port)")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_with_pipeline(
    args: argparse.Namespace,
    start_source: Callable[[], None],
    source_done: Callable[[], bool],
    stop_source: Callable[[], None],
    prog: str,
) -> int:
    """Run the pipeline of `args.config` while a replay (already holding its outlets) plays.

    `start_source()` is called once the pipeline is up and connected; the run stops at
    `args.duration`, or DRAIN_S after `source_done()`, or on Ctrl-C/SIGTERM; then the
    pipeline is stopped and `stop_source()` called. Returns the exit status.
    """
    from services.commands.start import LiveView
    from services.config import ConfigError, load_config
    from services.pipeline import run_pipeline

    if not args.config:
        print(f"{prog}: --run-pipeline needs --config", file=sys.stderr)
        stop_source()
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        stop_source()
        return 2
    if args.metrics_port is not None:
        cfg.metrics.port = args.metrics_port
        cfg.metrics.enabled = True
    view = LiveView(sys.stdout)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not source_done():
            stop.wait(0.1)
        if not stop.wait(DRAIN_S):
            stop.set()

    def on_ready(pipe: object) -> None:
        view.ready(pipe)
        start_source()
        if args.duration is None:
            threading.Thread(target=watch, name="replay-watch", daemon=True).start()

    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = run_pipeline(
            cfg,
            args.duration,
            args.address,
            on_ready=on_ready,
            on_status=None if args.no_progress else view.update,
            stop=stop,
        )
    except KeyboardInterrupt:
        print(f"{prog}: interrupted during start-up", file=sys.stderr)
        return 130
    except Exception as exc:  # Ray that cannot start, a port taken, an estimator that fails
        print(f"{prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, old)
        stop_source()
    view.done(summary)
    return 130 if summary.get("interrupted") else 0


def _bar(duration: float, disable: bool) -> tqdm:
    return tqdm(
        total=round(duration, 1),
        unit="s",
        disable=disable,
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s {postfix}",
        file=sys.stderr,
    )


def _progress(bar: tqdm) -> Callable[[float, float, int], None]:
    def update(pos: float, duration: float, pass_index: int) -> None:
        bar.n = round(pos, 1)
        if pass_index:
            bar.set_postfix_str(f"loop {pass_index + 1}", refresh=False)
        bar.refresh()

    return update


def run(args: argparse.Namespace) -> int:
    try:
        if args.verify:
            return _verify(args)
        if args.run_pipeline:
            return _replay_into_pipeline(args)
        if args.config or args.duration is not None:
            raise ValueError("--config/--duration go with --run-pipeline")
        return _replay(args)
    except XdfFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _open_replayer(args: argparse.Namespace) -> XdfReplayer:
    """The file's selected streams, ready to publish (its load warnings printed)."""
    rec = load_xdf(args.file, args.select or None, dejitter_timestamps=args.dejitter)
    for w in rec.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return XdfReplayer(
        rec,
        speed=args.speed,
        loop=args.loop,
        max_seconds=args.max_seconds,
        source_id_suffix=args.source_id_suffix,
        skip_empty=args.skip_empty,
    )


def _replay(args: argparse.Namespace) -> int:
    bar = None
    rep = _open_replayer(args)
    for s in rep.streams:
        print(
            f"  {s.key}: {s.channel_count} ch {s.channel_format} @ {s.nominal_srate:g} Hz, "
            f"{len(s)} samples, source_id={s.source_id + args.source_id_suffix!r}",
            file=sys.stderr,
        )
    for msg in rep.skipped:
        print(f"  skipped {msg}", file=sys.stderr)
    bar = _bar(rep.duration, args.no_progress)
    rep.progress = _progress(bar)
    interrupted = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        rep.stop()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        rep.start()
        while not rep.join(0.2):
            pass
    except KeyboardInterrupt:
        interrupted = True
        rep.stop()
        rep.join(5.0)
    finally:
        signal.signal(signal.SIGTERM, old)
        bar.close()
        rep.close()
    sent = sum(rep.sent.values())
    print(f"replayed {sent} samples from {len(rep.streams)} streams", file=sys.stderr)
    return 130 if interrupted else 0


def _replay_into_pipeline(args: argparse.Namespace) -> int:
    rep = _open_replayer(args)
    print(
        f"replaying {args.file} ({len(rep.streams)} streams, {rep.duration:.1f} s at speed "
        f"{args.speed:g}{', loop' if args.loop else ''}) into the pipeline of {args.config}",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.monotonic()

    def done() -> bool:
        try:
            return rep.join(0.0)
        except Exception:  # the replay failed: stop the run, reported below
            return True

    code = run_with_pipeline(args, rep.start, done, rep.close, "gait-stream replay")
    if rep.error is not None:
        print(f"error: replay failed: {rep.error}", file=sys.stderr)
        code = code or 1
    sent = sum(rep.sent.values())
    print(
        f"replayed {sent} samples from {len(rep.streams)} streams in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
    )
    return code


def _verify(args: argparse.Namespace) -> int:
    rec = load_xdf(args.file, args.select or None, dejitter_timestamps=args.dejitter)
    end = max((s.time_stamps[-1] for s in rec.streams if len(s)), default=0.0)
    start = min((s.time_stamps[0] for s in rec.streams if len(s)), default=0.0)
    duration = end - start if args.max_seconds is None else min(end - start, args.max_seconds)
    bar = _bar(duration, args.no_progress)
    try:
        rows = verify_replay(
            args.file,
            args.select or None,
            speed=args.speed,
            max_seconds=args.max_seconds,
            progress=_progress(bar),
            dejitter=args.dejitter,
        )
    finally:
        bar.close()
    print(
        f"replay timing vs pyxdf synchronised timestamps: {args.file} "
        f"(speed {args.speed:g}, errors in recording time)"
    )
    head = (
        f"{'stream':40s} {'sent':>7s} {'recv':>7s} {'values':>6s} "
        f"{'err med':>8s} {'err p99':>8s} {'err max':>8s} {'lag med':>8s} {'lag p99':>8s}  ms"
    )
    print(head)
    ok = True
    for r in rows:
        print(
            f"{r.key[:40]:40s} {r.expected:7d} {r.received:7d} {'ok' if r.values_ok else 'BAD':>6s} "
            f"{r.err_median_ms:8.4f} {r.err_p99_ms:8.4f} {r.err_max_ms:8.4f} "
            f"{r.lag_median_ms:8.3f} {r.lag_p99_ms:8.3f}"
            + (f"  {'; '.join(r.notes)}" if r.notes else "")
        )
        if r.received != r.expected or not r.values_ok or r.err_max_ms > args.tolerance_ms:
            ok = False
    print(f"{'PASS' if ok else 'FAIL'}: max error ≤ {args.tolerance_ms} ms, no loss, same values")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m services.commands.replay …`) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="gait-stream")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["replay", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
