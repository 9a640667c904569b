"""`gait-stream record OUT.xdf`: record LSL streams to an XDF file pyxdf can read.

    gait-stream record out.xdf [--select type=IMU] [--duration S] [--wait S]

Streams are chosen by `--select` (`name=…,type=…,source_id=…`, repeatable; default: every
stream visible within `--wait` seconds). Stops after `--duration` seconds, on Ctrl-C or on
SIGTERM, and then writes the stream footers; a recorder that is killed outright leaves a file
that is readable up to its last chunk.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from drivers.xdf_reader import parse_selector
from drivers.xdf_record import XdfRecorder, find_streams
from services.commands.argtypes import at_least_0, positive

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "record",
        help="record LSL streams to an XDF file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="output .xdf file (overwritten)")
    p.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="SEL",
        help="stream selector: name=…,type=…,source_id=… (repeatable; default: all visible)",
    )
    p.add_argument("--duration", type=positive, help="stop after S seconds (default: Ctrl-C)")
    p.add_argument("--wait", type=at_least_0, default=2.0, help="seconds to look for streams (2)")
    p.add_argument("--offset-interval", type=positive, default=5.0, help="clock offsets every S s")
    p.add_argument("--boundary-interval", type=positive, default=10.0, help="boundaries every S s")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        selectors = [parse_selector(s) for s in args.select]
        infos = find_streams(selectors or None, args.wait)
    except (ValueError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i in infos:
        print(
            f"  recording {i.name()!r} type={i.type()!r} source_id={i.source_id()!r} "
            f"{i.channel_count()} ch @ {i.nominal_srate():g} Hz",
            file=sys.stderr,
        )
    rec = XdfRecorder(
        args.out,
        infos,
        duration_s=args.duration,
        offset_interval_s=args.offset_interval,
        boundary_interval_s=args.boundary_interval,
    )

    def on_term(signum: int, frame: FrameType | None) -> None:
        rec.stop()

    old = signal.signal(signal.SIGTERM, on_term)
    bar = tqdm(
        total=args.duration,
        unit="s",
        disable=args.no_progress,
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s"
        if args.duration
        else "recording {n:.1f} s",
        file=sys.stderr,
    )
    try:
        rec.start()
        t0 = time.monotonic()
        while not rec.join(0.2):
            bar.n = round(time.monotonic() - t0, 1)
            bar.refresh()
    except KeyboardInterrupt:
        rec.stop()
        rec.join(10.0)
    except (ConnectionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, old)
        bar.close()
    for name, n in rec.counts.items():
        print(f"  {name}: {n} samples", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m services.commands.record …`) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="gait-stream")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["record", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
