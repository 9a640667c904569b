"""`gait-stream simulate`: the simulated lab alone, for other programs to read its streams.

It publishes the IMU outlets, the camera keypoints and the ground truth (drivers.simlab) until
`--duration` passes or Ctrl-C. Camera endpoints are printed; `--calibration-out` writes the
camera calibration (fusion.camera JSON) and `--config-out` a config for
`gait-stream start --config` that reads this lab (simulate.enabled false, every stream named).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fusion.skeleton import SEGMENTS
from services.commands.argtypes import at_least_0, at_least_1, positive, tcp_port

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "simulate",
        help="run the simulated lab alone (LSL IMUs, ZeroMQ keypoints, ground truth)",
        description="Publish the simulated lab's streams in real time for other programs.",
    )
    p.add_argument("--duration", type=positive, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--subjects", type=at_least_1, default=1, help="subjects (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--activity", default="start_stop", help="fusion.synth activity (default start_stop)"
    )
    p.add_argument("--prefix", default="sim", help="IMU stream name prefix (default sim)")
    p.add_argument("--cameras", type=int, default=4, help="cameras per subject (default 4)")
    p.add_argument("--imu-rate", type=positive, default=100.0)
    p.add_argument("--camera-rate", type=positive, default=30.0)
    p.add_argument("--jitter-ms", type=at_least_0, default=0.5, help="timestamp jitter σ (ms)")
    p.add_argument(
        "--stance-sd",
        type=float,
        default=0.0,
        help="σ (deg) of each subject's stance from the typical one (default 0: all alike)",
    )
    p.add_argument(
        "--sync-outlets",
        action="store_true",
        help="IMU outlets send from the lab's thread: less CPU, but a reader that freezes "
        "without closing blocks the lab (default: liblsl's buffered outlets)",
    )
    p.add_argument(
        "--zmq-port", type=tcp_port, help="first camera port (consecutive; default: free ports)"
    )
    p.add_argument("--calibration-out", help="write the camera calibration JSON here")
    p.add_argument("--config-out", help="write a `gait-stream start` config for this lab here")
    p.set_defaults(func=run)


def lab_config(lab: Any, calibration: str | None, n_subjects: int) -> dict[str, Any]:
    """A config mapping that reads `lab` over the network (no simulated lab of its own)."""
    subjects = []
    for k in range(n_subjects):
        names = lab.imu_stream_names(k)
        subjects.append(
            {
                "id": f"s{k}",
                "imu": {seg: {"name": names[seg]} for seg in SEGMENTS},
                "cameras": [
                    {"camera": cam, "endpoint": ep}
                    for cam, ep in lab.camera_endpoints.items()
                    if cam.startswith(f"s{k}-")
                ],
            }
        )
    return {"simulate": {"enabled": False}, "calibration": calibration, "subjects": subjects}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from drivers.simlab import TRUTH_NAME, SimulatedLab
    from fusion.camera import save_rig
    from fusion.synth import LabSpec

    try:
        spec = LabSpec(
            subjects=args.subjects,
            imu_rate=args.imu_rate,
            camera_rate=args.camera_rate,
            n_cameras=args.cameras,
            seed=args.seed,
            activity=args.activity,
            stance_sd_deg=args.stance_sd,
        )
    except ValueError as exc:
        print(f"gait-stream simulate: {exc}", file=sys.stderr)
        return 2
    endpoints = {}
    if args.zmq_port is not None:
        i = 0
        for k in range(args.subjects):
            for c in range(args.cameras):
                endpoints[f"s{k}-cam{c}"] = f"tcp://127.0.0.1:{args.zmq_port + i}"
                i += 1
    signal.signal(signal.SIGTERM, _raise_interrupt)
    lab = SimulatedLab(
        spec,
        args.prefix,
        endpoints,
        jitter_s=args.jitter_ms / 1e3,
        sync_outlets=args.sync_outlets,
    )
    try:
        calibration = None
        if args.calibration_out:
            save_rig(args.calibration_out, lab.cameras)
            calibration = str(Path(args.calibration_out).resolve())
        if args.config_out:
            Path(args.config_out).write_text(
                yaml.safe_dump(lab_config(lab, calibration, args.subjects), sort_keys=False)
            )
        lab.start()
        print(
            f"simulated lab: {args.subjects} subject(s); IMU streams {args.prefix}-s<k>-<segment> "
            f"({args.imu_rate:g} Hz); truth {TRUTH_NAME}",
            flush=True,
        )
        for cam, ep in lab.camera_endpoints.items():
            print(f"  camera {cam}: {ep}", flush=True)
        if calibration:
            print(f"  calibration: {calibration}", flush=True)
        if args.config_out:
            print(f"  config: {args.config_out}", flush=True)
        t_end = None if args.duration is None else time.monotonic() + args.duration
        while t_end is None or time.monotonic() < t_end:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        lab.stop()
    print(f"simulated lab stopped after {lab.lab_time:.1f} s ({lab.pushes} pushes)", flush=True)
    return 0
