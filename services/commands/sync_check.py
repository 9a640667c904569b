"""`gait-stream sync-check`: measure the time-sync code.

    gait-stream sync-check --simulate [--seconds 60] [--warmup 10] [--seed 0]
    gait-stream sync-check FILE.xdf [--select …]

`--simulate` runs `fusion.sync_sim.simulate_live_alignment`: streams with known clock offsets,
drift, jitter, bursts, losses and a clock reset go through the online chain (clock mapping,
dejitter, alignment to the 60 Hz model clock); it prints per-stream p50/p99/max errors after
the warm-up and exits 1 if an IMU's p99 alignment error or a camera's p99 stamp error is over
`--target-ms` (2 ms). With a FILE it aligns the recording with the same code, offline and
online (chunks in file order), and prints how far each is from pyxdf's synchronised
timestamps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from drivers.xdf_reader import XdfFormatError, load_xdf
from fusion.align import align_recording
from fusion.sync_sim import simulate_live_alignment
from services.commands.argtypes import at_least_0, positive

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sync-check",
        help="measure clock mapping, dejitter and alignment (simulated or on a file)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, nargs="?", help="XDF recording to check against pyxdf")
    p.add_argument("--simulate", action="store_true", help="simulated live streams, known truth")
    p.add_argument("--seconds", type=positive, default=60.0, help="simulated duration (60)")
    p.add_argument("--warmup", type=at_least_0, default=10.0, help="excluded warm-up seconds (10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-ms", type=positive, default=2.0, help="p99 pass mark (2 ms)")
    p.add_argument("--select", action="append", default=[], metavar="SEL")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.simulate:
        return _simulate(args)
    if args.file is None:
        print("error: give an XDF FILE or --simulate", file=sys.stderr)
        return 2
    try:
        return _file(args)
    except (XdfFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _simulate(args: argparse.Namespace) -> int:
    res = simulate_live_alignment(args.seconds, args.warmup, args.seed)
    print(
        f"live alignment, simulated: {args.seconds:g} s, warm-up {args.warmup:g} s, "
        f"seed {args.seed}; |error| in ms on the local clock"
    )
    print(
        f"{'stream':15s} {'kind':6s} {'Hz':>4s} {'stamp p50':>9s} {'p99':>7s} {'max':>7s} "
        f"{'align p50':>9s} {'p99':>7s} {'max':>7s} {'masked':>7s}  counters"
    )
    for r in res.rows:
        counters = " ".join(
            f"{k}={r[k]}"
            for k in ("bursts", "backwards", "gaps", "missing", "resets", "clock_resets")
            if r[k]
        )
        print(
            f"{r['stream']!s:15s} {r['kind']!s:6s} {r['rate']:4g} {r['stamp_p50_ms']:9.3f} "
            f"{r['stamp_p99_ms']:7.3f} {r['stamp_max_ms']:7.3f} {r['align_p50_ms']:9.3f} "
            f"{r['align_p99_ms']:7.3f} {r['align_max_ms']:7.3f} {r['masked']:>4}/{r['ticks']}"
            f"  {counters}"
        )
    imu = res.worst_p99_ms("imu")
    cam = res.worst_p99_ms("camera")
    ok = bool(imu <= args.target_ms and (np.isnan(cam) or cam <= args.target_ms))
    print(
        f"worst IMU alignment p99 {imu:.3f} ms; worst camera stamp p99 {cam:.3f} ms "
        "(camera alignment error includes up to half a frame of quantisation)"
    )
    print(f"{'PASS' if ok else 'FAIL'}: p99 ≤ {args.target_ms:g} ms after {args.warmup:g} s")
    return 0 if ok else 1


def _file(args: argparse.Namespace) -> int:
    rec = load_xdf(args.file, args.select or None)
    raw = [s.raw() for s in rec.streams]
    print(f"{args.file}: our clock mapping + dejitter vs pyxdf synchronised timestamps (ms)")
    print(
        "  offline = whole-recording fits (pyxdf's algorithm); online = chunks in file order "
        "through StreamSync;\n  raw = clock-mapped stamps before dejitter (how irregular the "
        "stream is: pyxdf's straight line is this far from the data)"
    )
    print(
        f"{'stream':36s} {'n':>6s} {'offline max':>11s} {'online p50':>10s} {'p99':>8s} "
        f"{'max':>8s} {'raw p99':>8s}"
    )
    res = {m: align_recording(raw, mode=m, arrival=rec.arrival) for m in ("offline", "online")}
    mapped = align_recording(raw, dejitter_timestamps=False)
    for s in rec.streams:
        if len(s) == 0:
            print(f"{s.key[:36]:36s} {0:6d}   (empty)")
            continue
        off = np.abs(res["offline"].streams[s.key].timestamps - s.time_stamps) * 1e3
        on = np.abs(res["online"].streams[s.key].timestamps - s.time_stamps) * 1e3
        on = on[np.isfinite(on)]
        jit = np.abs(mapped.streams[s.key].timestamps - s.time_stamps) * 1e3
        print(
            f"{s.key[:36]:36s} {len(s):6d} {np.max(off):11.6f} {np.median(on):10.4f} "
            f"{np.percentile(on, 99):8.4f} {np.max(on):8.4f} {np.percentile(jit, 99):8.3f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m services.commands.sync_check …`) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="gait-stream")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sync-check", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
