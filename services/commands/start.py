"""`gait-stream start`: run the live lab (default: the simulated lab on a local Ray).

Shows a compact live view once a second (input and output rates, end-to-end latency,
masked/late/dropped counts, a few joint angles). Ctrl-C, SIGTERM or `--duration` end it
cleanly: sources stopped, outlets closed, Ray shut down if this command started it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any, TextIO

from services.commands.argtypes import positive, tcp_port
from services.config import ConfigError, load_config

__all__ = ["LiveView", "estimator_details", "placement_lines", "register", "run"]

log = logging.getLogger(__name__)

VIEW_ANGLES = ("hip_flexion_l", "knee_flexion_l", "knee_flexion_r", "ankle_dorsiflexion_l")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "start",
        help="run the live lab end to end (default: simulated lab on a local Ray)",
        description="Run the live lab: IMUs (LSL) and cameras (ZeroMQ) in, joint angles out "
        "on LSL gait-stream/angles and ZeroMQ, Prometheus metrics on 127.0.0.1:9310.",
    )
    p.add_argument("--config", help="YAML config (default: the embedded configs/default.yaml)")
    p.add_argument("--duration", type=positive, help="stop after this many seconds (default: run)")
    p.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--metrics-port", type=tcp_port, help="Prometheus port (overrides metrics.port)")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.set_defaults(func=run)


def _sum(table: dict[str, float], pred: Any = None) -> float:
    return sum(v for k, v in table.items() if pred is None or pred(k.split("|")))


class LiveView:
    """One line per second: rates over the last 2 s of reports, latency over the last 5 s."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()

    def ready(self, pipe: Any) -> None:
        self.t0 = time.monotonic()
        info = pipe.info
        host, port = info.get("metrics_address", ("127.0.0.1", None))
        est = info.get("estimator", {})
        outs = info.get("outputs", {})
        lines = [
            f"gait-stream: {len(info.get('subjects', []))} subject(s), estimator "
            f"{est.get('estimator')} on {est.get('device')} ({estimator_details(est)})",
            "  out: LSL gait-stream/angles (JointAngles), gait-stream/events, gait-stream/gait"
            + (f"; ZeroMQ PUB {outs['zmq']}" if outs.get("zmq") else ""),
        ]
        if port:
            lines.append(f"  metrics: http://{host}:{port}/metrics")
        lines += placement_lines(info)
        missing = info.get("imu", {}).get("missing") or {}
        if missing:
            lines.append(f"  IMU streams not (yet) found: {', '.join(sorted(missing))}")
        print("\n".join(lines), file=self.out, flush=True)

    def update(self, pipe: Any, snap: dict[str, Any]) -> None:
        if not snap:
            return
        totals = snap.get("totals", {})
        now = time.monotonic()
        per_s = snap.get("rates", {})
        rates = {
            "imu": _sum(per_s.get("input", {}), lambda k: k[-1] == "imu"),
            "kp": _sum(per_s.get("input", {}), lambda k: k[-1] == "keypoints"),
            "angles": _sum(per_s.get("output", {}), lambda k: k[-1] == "angles"),
        }
        n_sub = max(1, len(pipe.info.get("subjects", [])))
        lat = snap.get("latency_ms", {}).get("end_to_end", {})
        masked = totals.get("masked", {})  # ticks, by subject|modality
        gauges = snap.get("gauges", {}).get("angle", {})
        first = pipe.info.get("subjects", ["s0"])[0]
        angles = " ".join(
            f"{a}={gauges.get(f'{first}|{a}', float('nan')):6.1f}" for a in VIEW_ANGLES
        )
        line = (
            f"[{now - self.t0:6.0f}s] in imu {rates['imu']:6.0f}/s kp {rates['kp']:4.0f}/s"
            f" | out {rates['angles'] / n_sub:5.1f} Hz x{n_sub}"
            f" | e2e p50 {lat.get('p50', float('nan')):5.1f} p99 {lat.get('p99', float('nan')):5.1f} ms"
            f" | masked imu {_sum(masked, lambda k: k[-1] == 'imu'):.0f}"
            f" video {_sum(masked, lambda k: k[-1] == 'video'):.0f}"
            f" late {_sum(totals.get('late', {})):.0f}"
            f" dropped {_sum(totals.get('dropped', {})):.0f} bad {_sum(totals.get('bad_input', {})):.0f}"
            f" | {first}: {angles}"
        )
        if self.tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self, summary: dict[str, Any]) -> None:
        if self.tty:
            self.out.write("\n")
        pub = summary.get("publish", {})
        m = summary.get("metrics", {})
        lat = m.get("latency_ms", {}).get("end_to_end", {})
        totals = m.get("totals", {})
        print(
            f"gait-stream: stopped{' (interrupted)' if summary.get('interrupted') else ''}; "
            f"published {pub.get('angles', 0)} angle samples, {pub.get('events', 0)} events, "
            f"{pub.get('gait', 0)} strides; e2e p50 {lat.get('p50', float('nan')):.1f} "
            f"p99 {lat.get('p99', float('nan')):.1f} ms; dropped "
            f"{_sum(totals.get('dropped', {})):.0f}",
            file=self.out,
            flush=True,
        )


def estimator_details(est: dict[str, Any]) -> str:
    """'onnx, look-ahead 0, ready in 2.1 s, ONNX graph from the cache' from an inference
    actor's info()."""
    parts = [est["backend"]] if est.get("backend") else []
    parts.append(f"look-ahead {est.get('lookahead')}")
    if est.get("start_s") is not None:
        parts.append(f"ready in {est['start_s']:.1f} s")
    source = (est.get("onnx_graph") or {}).get("source")
    if source == "cache":
        parts.append("ONNX graph from the cache")
    elif source == "export":
        parts.append("ONNX graph exported and cached")
    return ", ".join(parts)


def placement_lines(info: dict[str, Any]) -> list[str]:
    """Which inference actor on which node serves which subjects, and subjects per node."""
    actors = info.get("inference_actors") or {}
    if not actors:
        return []
    per_node = info.get("subjects_per_node", {})
    lines = [
        f"  placement: {len(info.get('placement', {}))} subject(s) on {len(actors)} inference "
        f"actor(s), {len(per_node)} node(s)"
    ]
    for role, a in actors.items():
        lines.append(f"    {role:<14} node {a['node']} ({a['ip']}): {', '.join(a['subjects'])}")
    lines.append("  subjects per node: " + ", ".join(f"{node}={n}" for node, n in per_node.items()))
    return lines


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from services.pipeline import run_pipeline

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"gait-stream start: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port is not None:
        cfg.metrics.port = args.metrics_port
        cfg.metrics.enabled = True
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # said before the (possibly long) start: a neural estimator's first start exports its graph
    print(f"gait-stream: starting, estimator {cfg.model.estimator} ({cfg.source})", flush=True)
    view = LiveView(sys.stdout)
    try:
        summary = run_pipeline(
            cfg,
            args.duration,
            args.address,
            on_ready=view.ready,
            on_status=None if args.quiet else view.update,
        )
    except KeyboardInterrupt:  # during start-up: run_pipeline already cleaned up
        print("gait-stream start: interrupted during start-up", file=sys.stderr)
        return 130
    except Exception as exc:  # Ray that cannot start, an estimator that cannot load, ...
        log.debug("start failed", exc_info=True)
        print(f"gait-stream start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    view.done(summary)
    return 0
