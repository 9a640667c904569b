"""`gait-stream bench`: run the simulated lab and measure what a consumer actually gets.

Latency is measured outside the pipeline, on a separate LSL inlet per subject (as any
consumer would see it): arrival time of each angle sample minus the sample time it describes
(both `pylsl.local_clock()` on this machine), minus the estimator's look-ahead (reported on its
own). The per-stage split comes from the pipeline's traces (metrics actor). Also: output rate
per subject, dropped/late/masked counts, CPU use per actor and for the machine, and the angle
error against the simulator's ground truth (RMSE, lower-limb angles).

The first `--warmup` seconds (default 3) are not measured: Ray workers and the estimator are
still settling. `--find-max` raises the number of subjects until 60 Hz can no longer be held
(any subject below 59 Hz, or ticks dropped) and reports the largest K that held.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pylsl

from fusion.skeleton import ANGLE_INDEX, LOWER_LIMB_ANGLES
from services.config import ConfigError, load_config, simulated_subjects

__all__ = ["register", "run", "run_bench"]

RATE_TOLERANCE_HZ = 1.0  # --find-max: a subject below rate - this no longer holds the rate
SCORED_ANGLES = tuple(a for a in LOWER_LIMB_ANGLES if not a.startswith("foot_progression"))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "bench",
        help="measure end-to-end latency, output rate and drops on the simulated lab",
        description="Run the simulated lab through the real pipeline and measure it from a "
        "separate LSL inlet.",
    )
    p.add_argument("--subjects", type=int, default=1, help="subjects (default 1)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds (default 30)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured start (default 3 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--estimator", help="estimator name (default: the config's)")
    p.add_argument("--config", help="base config (default: configs/default.yaml)")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    p.add_argument(
        "--find-max", action="store_true", help="raise --subjects until 60 Hz cannot be held"
    )
    p.add_argument("--max-subjects", type=int, default=32, help="--find-max upper bound")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- observer


@dataclass
class _Feed:
    subject: str
    inlet: pylsl.StreamInlet
    t: list[np.ndarray] = field(default_factory=list)
    x: list[np.ndarray] = field(default_factory=list)
    arrival: list[np.ndarray] = field(default_factory=list)


class Observer:
    """Separate LSL inlets on the pipeline's angles (and the simulator's truth) streams."""

    def __init__(self) -> None:
        self.angles: list[_Feed] = []
        self.truth: list[_Feed] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self, angle_ids: dict[str, str], truth_ids: dict[str, str], timeout: float) -> None:
        from drivers.selectors import StreamSelector, resolve

        wanted = {("angles", s): sid for s, sid in angle_ids.items()}
        wanted |= {("truth", s): sid for s, sid in truth_ids.items()}
        sels = {key: StreamSelector(source_id=sid) for key, sid in wanted.items()}
        found = resolve(list(sels.values()), timeout, minimum=len(sels))
        for (kind, subject), sel in sels.items():
            infos = found.get(sel, [])
            if not infos:
                raise TimeoutError(
                    f"bench: stream with source_id {wanted[(kind, subject)]!r} "
                    f"not found within {timeout} s"
                )
            inlet = pylsl.StreamInlet(infos[0], max_buflen=10, recover=False, processing_flags=0)
            inlet.open_stream(timeout)
            (self.angles if kind == "angles" else self.truth).append(_Feed(subject, inlet))
        for feed in self.angles:
            th = threading.Thread(target=self._pull_angles, args=(feed,), daemon=True)
            th.start()
            self._threads.append(th)
        th = threading.Thread(target=self._pull_truth, daemon=True)
        th.start()
        self._threads.append(th)

    def _pull_angles(self, feed: _Feed) -> None:
        """Block on the first sample (arrival time = when it came back), then drain."""
        while not self._stop.is_set():
            x, t = feed.inlet.pull_sample(timeout=0.2)
            now = pylsl.local_clock()
            if t is None:
                continue
            xs, ts = [x], [t]
            more, tmore = feed.inlet.pull_chunk(timeout=0.0)
            if tmore:
                xs += more
                ts += tmore
            feed.t.append(np.asarray(ts))
            feed.x.append(np.asarray(xs, dtype=np.float64))
            feed.arrival.append(np.full(len(ts), now))

    def _pull_truth(self) -> None:
        while not self._stop.is_set():
            for feed in self.truth:
                x, t = feed.inlet.pull_chunk(timeout=0.0)
                if t:
                    feed.t.append(np.asarray(t))
                    feed.x.append(np.asarray(x, dtype=np.float64))
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=2.0)
        for feed in (*self.angles, *self.truth):
            feed.inlet.close_stream()

    @staticmethod
    def arrays(feed: _Feed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not feed.t:
            return np.zeros(0), np.zeros((0, 0)), np.zeros(0)
        arrival = np.concatenate(feed.arrival) if feed.arrival else np.zeros(0)
        return np.concatenate(feed.t), np.concatenate(feed.x), arrival


# --------------------------------------------------------------------------- measuring


def _pct(ms: np.ndarray) -> dict[str, float]:
    if not len(ms):
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
        "max": round(float(ms.max()), 2),
    }


def _cpu(pipe: Any) -> dict[str, float]:
    """CPU seconds so far of each actor process (time.process_time in the actor)."""
    import ray

    names = list(pipe.actors)
    refs = [pipe.actors[n].cpu.remote() for n in names]
    return dict(zip(names, ray.get(refs, timeout=10), strict=True))


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; Linux /proc/stat), else NaN."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _delta(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], key: str) -> float:
    before = a.get(key, {})
    return float(sum(v - before.get(k, 0.0) for k, v in b.get(key, {}).items()))


def run_bench(
    cfg: Any,
    subjects: int,
    seconds: float,
    warmup: float = 3.0,
    address: str | None = None,
) -> dict[str, Any]:
    """One measured run with `subjects` simulated subjects; returns the result dict."""
    from services.pipeline import start_pipeline, stop_pipeline

    tag = f"bench-{os.getpid()}-{subjects}-{int(time.time())}"
    cfg = cfg.replace()
    cfg.simulate.enabled = True
    cfg.simulate.subjects = subjects
    cfg.simulate.imu_stream_prefix = f"bench{os.getpid()}"
    cfg.subjects = simulated_subjects(cfg.simulate, tag)
    cfg.metrics.port = 0  # a free port: the bench must not collide with a running lab
    cfg.outputs.zmq = "tcp://127.0.0.1:*"
    cfg.outputs.lsl = True
    cfg.outputs.lsl_source_id = f"gait-stream-{tag}"
    rate = cfg.model.rate_hz

    pipe = start_pipeline(cfg, address, run_tag=tag)
    obs = Observer()
    try:
        ids = list(pipe.info["subjects"])
        obs.open(
            pipe.info["outputs"]["lsl"],
            {s: pipe.lab.truth_source_id(k) for k, s in enumerate(ids)},
            timeout=10.0,
        )
        time.sleep(warmup)
        sys0, me0, cpu0 = _machine_busy_s(), _own_cpu_s(), _cpu(pipe)
        snap0 = pipe.snapshot(window_s=None)
        t_start = pylsl.local_clock()
        time.sleep(seconds)
        t_end = pylsl.local_clock()
        sys1, me1, cpu1 = _machine_busy_s(), _own_cpu_s(), _cpu(pipe)
        snap1 = pipe.snapshot(window_s=seconds)
        lookahead_s = float(pipe.info["estimator"].get("lookahead_s", 0.0))
        estimator = pipe.info["estimator"].get("estimator")
    finally:
        obs.close()
        summary = stop_pipeline(pipe)

    per_subject: dict[str, Any] = {}
    all_lat: list[np.ndarray] = []
    sq_err: dict[str, list[np.ndarray]] = {a: [] for a in SCORED_ANGLES}
    truth = {f.subject: Observer.arrays(f) for f in obs.truth}
    for feed in obs.angles:
        t, x, arrival = Observer.arrays(feed)
        sel = (arrival >= t_start) & (arrival < t_end)
        lat_ms = (arrival[sel] - t[sel] - lookahead_s) * 1e3
        all_lat.append(lat_ms)
        n = int(sel.sum())
        expected = seconds * rate
        per_subject[feed.subject] = {
            "rate_hz": round(n / seconds, 2),
            "missing_ticks": max(0, round(expected - n)),
            "latency_ms": _pct(lat_ms),
        }
        tt, tx, _ = truth.get(feed.subject, (np.zeros(0), None, None))
        if len(tt) > 1 and n:
            for a in SCORED_ANGLES:
                i = ANGLE_INDEX[a]
                ref = np.interp(t[sel], tt, tx[:, i], left=np.nan, right=np.nan)
                err = x[sel, i] - ref
                sq_err[a].append(err[np.isfinite(err)] ** 2)
    lat = np.concatenate(all_lat) if all_lat else np.zeros(0)
    rmse = {
        a: round(float(np.sqrt(np.mean(np.concatenate(v)))), 2)
        for a, v in sq_err.items()
        if v and sum(len(e) for e in v)
    }
    busy = sys1 - sys0
    wall = t_end - t_start
    actor_cpu = {n: round((cpu1[n] - cpu0[n]) / wall, 3) for n in cpu1}
    m_tot0, m_tot1 = snap0.get("totals", {}), snap1.get("totals", {})
    stages = snap1.get("latency_ms", {}).get("stages", {})
    rates = [v["rate_hz"] for v in per_subject.values()]
    return {
        "latency_ms": _pct(lat),
        "rate_hz": round(min(rates), 2) if rates else 0.0,
        "dropped": int(_delta(m_tot0, m_tot1, "dropped")),
        "late": int(_delta(m_tot0, m_tot1, "late")),
        "masked": int(_delta(m_tot0, m_tot1, "masked")),
        "bad_input": int(_delta(m_tot0, m_tot1, "bad_input")),
        "missing_ticks": sum(v["missing_ticks"] for v in per_subject.values()),
        "lookahead_ms": round(lookahead_s * 1e3, 2),
        "latency_incl_lookahead_ms": _pct(lat + lookahead_s * 1e3),
        "stages_ms": {
            s: {"p50": round(v["p50"], 2), "p99": round(v["p99"], 2)} for s, v in stages.items()
        },
        "pipeline_e2e_ms": {
            k: round(v, 2) for k, v in snap1.get("latency_ms", {}).get("end_to_end", {}).items()
        },
        "estimator": estimator,
        "estimator_ms": snap1.get("latency_ms", {}).get("estimator", {}),
        "subjects": subjects,
        "seconds": seconds,
        "samples": len(lat),
        "per_subject": per_subject,
        "rmse_deg": rmse,
        "rmse_lower_limb_deg": round(float(np.mean(list(rmse.values()))), 2) if rmse else None,
        "cpu": {
            "machine_cores_busy": round(busy / wall, 2),
            "machine_cores": os.cpu_count(),
            "driver_and_simlab_cores": round((me1 - me0) / wall, 3),
            "actors_cores": actor_cpu,
        },
        "lab": summary.get("lab", {}),
    }


def run(args: argparse.Namespace) -> int:
    from services.pipeline import connect_ray

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"gait-stream bench: {exc}", file=sys.stderr)
        return 2
    if args.estimator:
        cfg.model.estimator = args.estimator
    import ray

    try:
        started = connect_ray(cfg, args.address)
    except Exception as exc:
        print(f"gait-stream bench: cannot start or join Ray: {exc}", file=sys.stderr)
        return 1
    try:
        if not args.find_max:
            result = run_bench(cfg, args.subjects, args.seconds, args.warmup)
            _report(result, args.json)
            return 0
        trials = []
        best = 0
        k = max(1, args.subjects)
        while k <= args.max_subjects:
            res = run_bench(cfg, k, args.seconds, args.warmup)
            held = (
                min(v["rate_hz"] for v in res["per_subject"].values())
                >= cfg.model.rate_hz - RATE_TOLERANCE_HZ
                and res["dropped"] == 0
            )
            trials.append(
                {
                    "subjects": k,
                    "held": held,
                    "rate_hz": res["rate_hz"],
                    "latency_ms": res["latency_ms"],
                    "dropped": res["dropped"],
                    "cpu": res["cpu"]["machine_cores_busy"],
                }
            )
            if not args.json:
                print(
                    f"K={k}: rate {res['rate_hz']} Hz, p99 {res['latency_ms']['p99']} ms, "
                    f"dropped {res['dropped']} -> {'held' if held else 'NOT held'}",
                    flush=True,
                )
            if not held:
                break
            best = k
            k += 1
        out = {"max_subjects": best, "rate_hz": cfg.model.rate_hz, "trials": trials}
        print(json.dumps(out) if args.json else f"max subjects at {cfg.model.rate_hz:g} Hz: {best}")
        return 0
    finally:
        if started:
            ray.shutdown()


def _report(res: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(res))
        return
    lat, la = res["latency_ms"], res["lookahead_ms"]
    print(
        f"subjects {res['subjects']}, {res['seconds']:g} s measured, estimator {res['estimator']}"
    )
    print(
        f"  end-to-end (excl. look-ahead {la} ms): p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
        f"max {lat['max']} ms"
    )
    for stage, v in res["stages_ms"].items():
        print(f"    {stage:<10} p50 {v['p50']:7.2f} ms  p99 {v['p99']:7.2f} ms")
    print(
        f"  output rate {res['rate_hz']} Hz (slowest subject); missing ticks "
        f"{res['missing_ticks']}; dropped {res['dropped']}, late {res['late']}, "
        f"masked {res['masked']}"
    )
    print(
        f"  CPU: {res['cpu']['machine_cores_busy']} of {res['cpu']['machine_cores']} cores busy; "
        f"actors {res['cpu']['actors_cores']}"
    )
    if res["rmse_deg"]:
        print(f"  angle RMSE vs truth (deg): {res['rmse_deg']}")
