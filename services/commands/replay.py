"""`gait-stream replay FILE.xdf`: re-publish a recording's streams on LSL, timing kept.

    gait-stream replay rec.xdf [--speed X] [--loop] [--select type=ACC] [--max-seconds S]
    gait-stream replay rec.xdf --verify [--speed X] [--max-seconds S]

`--select` picks streams by `name=…`, `type=…`, `source_id=…` (comma-joined fields must all
match; repeat the flag for alternatives; a bare word is a name). `--verify` is the timing
measurement: it replays over real LSL, receives on inlets and prints, per stream, the error
between the received timestamps and pyxdf's synchronised timestamps (median/p99/max, ms);
it exits 1 if any stream is over `--tolerance-ms` (1 ms), lost samples or changed values.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from drivers.xdf_reader import XdfFormatError, load_xdf
from drivers.xdf_replay import XdfReplayer, verify_replay

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "replay",
        help="re-publish an XDF file's streams as LSL outlets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="XDF recording")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--loop", action="store_true", help="start over at the end, forever")
    p.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="SEL",
        help="stream selector: name=…,type=…,source_id=… (repeatable; default: all streams)",
    )
    p.add_argument("--max-seconds", type=float, help="replay only the first S s of the file")
    p.add_argument(
        "--no-dejitter",
        action="store_true",
        help="replay clock-synchronised but not dejittered timestamps (keep the real jitter)",
    )
    p.add_argument("--source-id-suffix", default="", help="append to every source id")
    p.add_argument("--skip-empty", action="store_true", help="no outlet for streams with no data")
    p.add_argument("--verify", action="store_true", help="measure timing on real LSL inlets")
    p.add_argument("--tolerance-ms", type=float, default=1.0, help="--verify pass mark (ms)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


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
        return _replay(args)
    except XdfFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _replay(args: argparse.Namespace) -> int:
    rec = load_xdf(args.file, args.select or None, dejitter_timestamps=not args.no_dejitter)
    for w in rec.warnings:
        print(f"warning: {w}", file=sys.stderr)
    bar = None
    rep = XdfReplayer(
        rec,
        speed=args.speed,
        loop=args.loop,
        max_seconds=args.max_seconds,
        source_id_suffix=args.source_id_suffix,
        skip_empty=args.skip_empty,
    )
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


def _verify(args: argparse.Namespace) -> int:
    rec = load_xdf(args.file, args.select or None)
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
