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

`--hold MINUTES` (or any run of a minute or more) also judges every minute on its own:
`hold.minutes[i]` has that minute's output rate, missing ticks (gaps in the tick grid of the
angles that arrived), dropped count, p99, largest gap between outputs and lower-limb RMSE
against the simulator's truth (does accuracy drift over the run?); `hold.held` is true
when every minute and the whole run had all ticks at the model rate and nothing dropped.

`--wake timer` runs the pipeline as it was before the event-driven runtime (ingest polling
its inlets every 2 ms, sync on a 4 ms timer; GAIT_STREAM_WAKE, see services/actors/stage.py),
for comparisons under the same load; it applies to a Ray this command starts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pylsl

from fusion.skeleton import ANGLE_INDEX, LOWER_LIMB_ANGLES
from services.commands.argtypes import at_least_0, at_least_1, positive
from services.config import ConfigError, load_config, simulated_subjects

__all__ = ["register", "run", "run_bench"]

RATE_TOLERANCE_HZ = 1.0  # --find-max: a subject below rate - this no longer holds the rate
SNAPSHOT_TIMEOUT_S = 30.0  # a loaded machine can take seconds to answer; never lose a run to it
SCORED_ANGLES = tuple(a for a in LOWER_LIMB_ANGLES if not a.startswith("foot_progression"))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "bench",
        help="measure end-to-end latency, output rate and drops on the simulated lab",
        description="Run the simulated lab through the real pipeline and measure it from a "
        "separate LSL inlet.",
    )
    p.add_argument("--subjects", type=at_least_1, default=1, help="subjects (default 1)")
    p.add_argument("--seconds", type=positive, default=30.0, help="measured seconds (default 30)")
    p.add_argument("--warmup", type=at_least_0, default=3.0, help="unmeasured start (default 3 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--estimator",
        help="estimator name (default: the config's, fusionnet; issue #3's targets are stated "
        "for --estimator classical)",
    )
    p.add_argument("--config", help="base config (default: configs/default.yaml)")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    p.add_argument(
        "--find-max", action="store_true", help="raise --subjects until 60 Hz cannot be held"
    )
    p.add_argument("--max-subjects", type=at_least_1, default=32, help="--find-max upper bound")
    p.add_argument(
        "--hold",
        type=positive,
        metavar="MINUTES",
        help="measure MINUTES (instead of --seconds) and judge every minute: 60 Hz held, "
        "nothing dropped",
    )
    p.add_argument(
        "--wake",
        choices=("event", "timer"),
        help="event: stages wake on data and deadlines (default); timer: the former polling "
        "runtime, to compare (sets GAIT_STREAM_WAKE for the Ray this starts)",
    )
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
        """(t, x, arrival) of what a feed received, rows matched: safe while its thread still
        appends (it appends t, then x, then arrival, so the first len(arrival) of each are
        whole; a truth feed has no arrival times and is read after close)."""
        n = len(feed.arrival) if feed.arrival else len(feed.t)
        if not n:
            return np.zeros(0), np.zeros((0, 0)), np.zeros(0)
        arrival = np.concatenate(feed.arrival[:n]) if feed.arrival else np.zeros(0)
        return np.concatenate(feed.t[:n]), np.concatenate(feed.x[:n]), arrival


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
    """CPU seconds so far of each role (its process, or its thread where roles share one)."""
    import ray

    names = list(pipe.actors)
    refs = [pipe.actors[n].cpu.remote() for n in names]
    return dict(zip(names, ray.get(refs, timeout=SNAPSHOT_TIMEOUT_S), strict=True))


def _processes(pipe: Any) -> dict[str, list[str]]:
    """Process label ("+"-joined roles) -> its roles: the hosts, and actors on their own."""
    out = {key: key.split("+") for key in pipe.hosts}
    hosted = {r for roles in out.values() for r in roles}
    out |= {name: [name] for name in pipe.actors if name not in hosted}
    return out


def _statuses(pipe: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per role: inbox wait, step time and step CPU (ms, p50/p99 of the last ~2000 steps);
    per process: its garbage-collection pauses. From each stage's status()."""
    import ray

    roles = [r for r in pipe.actors if r != "metrics"]
    refs = {r: pipe.actors[r].status.remote() for r in roles}
    steps: dict[str, Any] = {}
    st: dict[str, Any] = {}
    for role, ref in refs.items():
        try:
            st[role] = ray.get(ref, timeout=SNAPSHOT_TIMEOUT_S)
        except Exception as exc:  # a status query must not lose the measurement
            st[role] = {"error": str(exc)}
        steps[role] = {
            k: st[role][k]
            for k in ("inbox_wait_ms", "step_ms", "step_cpu_ms", "sample_age_ms", "error")
            if st[role].get(k)
        }
    gc_of = {}
    for label, members in _processes(pipe).items():
        role = next((r for r in members if r in st), None)
        if role is not None:
            gc_of[label] = st[role].get("gc", st[role].get("error"))
    return steps, gc_of


def _moved(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], key: str) -> dict:
    """The series of counter `key` that grew between two totals, by label."""
    before = a.get(key, {})
    return {
        lab: int(v - before.get(lab, 0.0))
        for lab, v in b.get(key, {}).items()
        if v - before.get(lab, 0.0) > 0
    }


def _tick_gaps(t: np.ndarray, rate: float) -> tuple[int, int, float]:
    """(missing, duplicate) ticks in the tick grid of `t`, and the largest gap (ms)."""
    if len(t) == 0:
        return 0, 0, float("nan")
    k = np.round(np.asarray(t) * rate).astype(np.int64)
    uniq = np.unique(k)
    missing = int(uniq[-1] - uniq[0] + 1 - len(uniq))
    gap = float(np.max(np.diff(uniq))) / rate * 1e3 if len(uniq) > 1 else 0.0
    return missing, int(len(k) - len(uniq)), round(gap, 2)


def _arrival_gap_ms(arrival: np.ndarray) -> float:
    """Largest time between two consecutive outputs reaching the observer."""
    pulls = np.unique(arrival)  # samples of one pull share their arrival time
    if len(pulls) < 2:
        return float("nan")
    return round(float(np.max(np.diff(pulls))) * 1e3, 2)


def _column_rmse(sq_err: np.ndarray) -> list[float]:
    """RMSE of each column of squared errors (ticks x scored angles) over its finite
    entries; NaN for a column without any."""
    out = []
    for c in sq_err.T:
        c = c[np.isfinite(c)]
        out.append(float(np.sqrt(np.mean(c))) if len(c) else float("nan"))
    return out


def _minute_rmse(sq_err: np.ndarray | None) -> float:
    """Lower-limb RMSE (deg) of one minute: each scored angle's RMSE, then their mean (as
    the whole run's `rmse_lower_limb_deg`); NaN without truth."""
    return float("nan") if sq_err is None else _nanmean(_column_rmse(sq_err))


def _hold_report(
    feeds: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    marks: list[tuple[float, dict[str, Any]]],
    rate: float,
    lookahead_s: float,
) -> dict[str, Any]:
    """Judge each minute between `marks` (lsl time, metrics totals) on its own.

    A minute holds when every subject got all its ticks (none missing in the tick grid, a
    rate within 1 Hz of the model rate) and no stage dropped anything. Each feed is (tick
    times, arrival times, squared error per scored angle or None); the minute's lower-limb
    RMSE shows whether accuracy drifts over a long run (orientation filters do).
    """
    minutes = []
    for (a, tot_a), (b, tot_b) in itertools.pairwise(marks):
        span = b - a
        subj = []
        for t, arrival, sq in feeds:
            sel = (arrival >= a) & (arrival < b)
            missing, dup, tick_gap = _tick_gaps(t[sel], rate)
            subj.append(
                {
                    "rate_hz": round(int(sel.sum()) / span, 2) if span > 0 else 0.0,
                    "missing_ticks": missing,
                    "duplicate_ticks": dup,
                    "max_tick_gap_ms": tick_gap,
                    "max_output_gap_ms": _arrival_gap_ms(arrival[sel]),
                    "p99_ms": _pct((arrival[sel] - t[sel] - lookahead_s) * 1e3)["p99"],
                    "rmse": _minute_rmse(None if sq is None else sq[sel]),
                }
            )
        dropped = int(_delta(tot_a, tot_b, "dropped"))
        held = dropped == 0 and all(
            s["missing_ticks"] == 0 and s["rate_hz"] >= rate - RATE_TOLERANCE_HZ for s in subj
        )
        minutes.append(
            {
                "minute": len(minutes) + 1,
                "seconds": round(span, 2),
                "held": held,
                "dropped": dropped,
                "late": int(_delta(tot_a, tot_b, "late")),
                "masked": int(_delta(tot_a, tot_b, "masked")),
                "rate_hz": min((s["rate_hz"] for s in subj), default=0.0),
                "missing_ticks": sum(s["missing_ticks"] for s in subj),
                "max_output_gap_ms": max((s["max_output_gap_ms"] for s in subj), default=0.0),
                "p99_ms": max((s["p99_ms"] for s in subj), default=float("nan")),
                "rmse_lower_limb_deg": _nanmean([s["rmse"] for s in subj]),
            }
        )
    return {"minutes": minutes, "minutes_held": sum(m["held"] for m in minutes)}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 2) if finite else float("nan")


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
    # this process runs the simulated lab and the observer: a thread woken by a sample (the
    # observer's inlet, the lab's push timer) should not wait 5 ms for the GIL to stamp it
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, 0.001))
    try:
        ids = list(pipe.info["subjects"])
        obs.open(
            pipe.info["outputs"]["lsl"],
            {s: pipe.lab.truth_source_id(k) for k, s in enumerate(ids)},
            timeout=10.0,
        )
        time.sleep(warmup)
        sys0, me0, cpu0 = _machine_busy_s(), _own_cpu_s(), _cpu(pipe)
        snap0 = pipe.snapshot(window_s=None, timeout=SNAPSHOT_TIMEOUT_S)
        t_start = pylsl.local_clock()
        marks = [(t_start, snap0.get("totals", {}))]
        t_stop, next_mark = t_start + seconds, t_start + 60.0
        while (now := pylsl.local_clock()) < t_stop:
            if now >= next_mark:  # the metrics totals at every full minute (per-minute verdicts)
                if now < t_stop - 1.0:
                    marks.append(
                        (
                            now,
                            pipe.snapshot(window_s=None, timeout=SNAPSHOT_TIMEOUT_S).get(
                                "totals", {}
                            ),
                        )
                    )
                next_mark += 60.0
                continue
            time.sleep(max(0.0, min(t_stop, next_mark) - now))
        t_end = pylsl.local_clock()
        sys1, me1, cpu1 = _machine_busy_s(), _own_cpu_s(), _cpu(pipe)
        snap1 = pipe.snapshot(window_s=seconds, timeout=SNAPSHOT_TIMEOUT_S)
        marks.append((t_end, snap1.get("totals", {})))
        steps, gc_pauses = _statuses(pipe)
        # how late the simulated lab itself pushed (its samples are that much older on arrival)
        n_push = int(seconds / max(pipe.lab.push_period_s, 1e-3))
        push_delay_ms = _pct(np.asarray(list(pipe.lab.push_delays)[-n_push:]) * 1e3)
        processes = _processes(pipe)
        lookahead_s = float(pipe.info["estimator"].get("lookahead_s", 0.0))
        estimator = pipe.info["estimator"].get("estimator")
        est_keys = (
            "backend",
            "device",
            "threads",
            "lookahead",
            "start_s",
            "onnx_graph",
            "gyro_refine",
        )
        estimator_info = {k: pipe.info["estimator"].get(k) for k in est_keys}
        load = os.getloadavg()
    finally:
        obs.close()
        summary = stop_pipeline(pipe)
        sys.setswitchinterval(switch)

    per_subject: dict[str, Any] = {}
    feeds: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    all_lat: list[np.ndarray] = []
    scored: list[np.ndarray] = []  # squared errors of the measured ticks, all subjects
    truth = {f.subject: Observer.arrays(f) for f in obs.truth}
    for feed in obs.angles:
        t, x, arrival = Observer.arrays(feed)
        sel = (arrival >= t_start) & (arrival < t_end)
        lat_ms = (arrival[sel] - t[sel] - lookahead_s) * 1e3
        all_lat.append(lat_ms)
        n = int(sel.sum())
        missing, dup, tick_gap = _tick_gaps(t[sel], rate)
        per_subject[feed.subject] = {
            "rate_hz": round(n / seconds, 2),
            "missing_ticks": missing,
            "duplicate_ticks": dup,
            "max_tick_gap_ms": tick_gap,
            "max_output_gap_ms": _arrival_gap_ms(arrival[sel]),
            "latency_ms": _pct(lat_ms),
        }
        tt, tx, _ = truth.get(feed.subject, (np.zeros(0), None, None))
        sq = None
        if len(tt) > 1 and n:
            sq = np.full((len(t), len(SCORED_ANGLES)), np.nan)  # per tick, for the minutes
            for j, a in enumerate(SCORED_ANGLES):
                i = ANGLE_INDEX[a]
                ref = np.interp(t[sel], tt, tx[:, i], left=np.nan, right=np.nan)
                err = x[sel, i] - ref
                sq[sel, j] = err**2
            scored.append(sq[sel])
        feeds.append((t, arrival, sq))
    lat = np.concatenate(all_lat) if all_lat else np.zeros(0)
    by_angle = _column_rmse(np.concatenate(scored)) if scored else [math.nan] * len(SCORED_ANGLES)
    rmse = {
        a: round(v, 2) for a, v in zip(SCORED_ANGLES, by_angle, strict=True) if math.isfinite(v)
    }
    busy = sys1 - sys0
    wall = t_end - t_start
    actor_cpu = {n: round((cpu1[n] - cpu0[n]) / wall, 3) for n in cpu1 if n in cpu0}
    process_cpu = {
        label: round(sum(cpu1[r] - cpu0[r] for r in roles if r in cpu0 and r in cpu1) / wall, 3)
        for label, roles in processes.items()
    }
    m_tot0, m_tot1 = snap0.get("totals", {}), snap1.get("totals", {})
    stages = snap1.get("latency_ms", {}).get("stages", {})
    rates = [v["rate_hz"] for v in per_subject.values()]
    dropped = int(_delta(m_tot0, m_tot1, "dropped"))
    hold = _hold_report(feeds, marks, rate, lookahead_s)
    missing_total = sum(v["missing_ticks"] for v in per_subject.values())
    hold["held"] = bool(
        hold["minutes"]
        and all(m["held"] for m in hold["minutes"])
        and missing_total == 0
        and dropped == 0
        and rates
        and min(rates) >= rate - RATE_TOLERANCE_HZ
    )
    hold["rule"] = (
        f"every minute and the whole run: no tick missing at {rate:g} Hz, rate within "
        f"{RATE_TOLERANCE_HZ:g} Hz, nothing dropped"
    )
    return {
        "latency_ms": _pct(lat),
        "rate_hz": round(min(rates), 2) if rates else 0.0,
        "dropped": dropped,
        "dropped_by": _moved(m_tot0, m_tot1, "dropped"),  # stage|reason -> count
        "held": hold["held"],
        "late": int(_delta(m_tot0, m_tot1, "late")),
        "masked": int(_delta(m_tot0, m_tot1, "masked")),
        "masked_by": _moved(m_tot0, m_tot1, "masked"),  # subject|modality -> ticks
        "bad_input": int(_delta(m_tot0, m_tot1, "bad_input")),
        "missing_ticks": missing_total,
        "max_output_gap_ms": max(
            (v["max_output_gap_ms"] for v in per_subject.values()), default=float("nan")
        ),
        "max_tick_gap_ms": max(
            (v["max_tick_gap_ms"] for v in per_subject.values()), default=float("nan")
        ),
        "lookahead_ms": round(lookahead_s * 1e3, 2),
        "latency_incl_lookahead_ms": _pct(lat + lookahead_s * 1e3),
        "stages_ms": {
            s: {k: round(v[k], 2) for k in ("p50", "p99", "max")} for s, v in stages.items()
        },
        "stage_steps_ms": steps,
        "pipeline_e2e_ms": {
            k: round(v, 2) for k, v in snap1.get("latency_ms", {}).get("end_to_end", {}).items()
        },
        "estimator": estimator,  # the estimator that ran (--estimator, else the config's)
        "estimator_info": estimator_info,  # back-end (torch/onnx), threads, start-up seconds
        # model time per call (ms, p50/p99...) by estimator name
        "estimator_ms": snap1.get("latency_ms", {}).get("estimator", {}),
        # the same per model tick: a call that catches up on a backlog covers several ticks
        "estimator_ms_per_tick": snap1.get("latency_ms", {}).get("estimator_per_tick", {}),
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
            "process_cores": process_cpu,
        },
        "gc": gc_pauses,
        "load_average": [round(v, 2) for v in load],
        "wake": os.environ.get("GAIT_STREAM_WAKE", "event"),
        "lab": {**summary.get("lab", {}), "push_delay_ms": push_delay_ms},
        "hold": hold,
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
    if args.wake:
        os.environ["GAIT_STREAM_WAKE"] = args.wake  # before Ray starts: its workers inherit it
    seconds = args.seconds if args.hold is None else args.hold * 60.0
    import ray

    try:
        started = connect_ray(cfg, args.address)
    except Exception as exc:
        print(f"gait-stream bench: cannot start or join Ray: {exc}", file=sys.stderr)
        return 1
    try:
        if not args.find_max:
            result = run_bench(cfg, args.subjects, seconds, args.warmup)
            _report(result, args.json)
            return 0
        trials = []
        best = 0
        k = max(1, args.subjects)
        while k <= args.max_subjects:
            res = run_bench(cfg, k, seconds, args.warmup)
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
                    "estimator_ms": res["estimator_ms"],
                    "estimator_ms_per_tick": res["estimator_ms_per_tick"],
                    "load_average": res["load_average"],
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
        out = {
            "max_subjects": best,
            "rate_hz": cfg.model.rate_hz,
            "estimator": cfg.model.estimator,
            "trials": trials,
        }
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
    info = res.get("estimator_info") or {}
    backend = info.get("backend")
    print(
        f"subjects {res['subjects']}, {res['seconds']:g} s measured, estimator {res['estimator']}"
        + (f" ({backend})" if backend else "")
        + (" with the gyro refinement" if info.get("gyro_refine") else "")
    )
    est_ms = (res.get("estimator_ms") or {}).get(res["estimator"]) or {}
    if est_ms:
        tick = (res.get("estimator_ms_per_tick") or {}).get(res["estimator"]) or {}
        print(
            f"  model time per call: p50 {est_ms.get('p50', float('nan')):.2f} ms, "
            f"p99 {est_ms.get('p99', float('nan')):.2f} ms"
            + (
                f"; per tick p50 {tick.get('p50', float('nan')):.2f} ms, "
                f"p99 {tick.get('p99', float('nan')):.2f} ms"
                if tick
                else ""
            )
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
        f"masked {res['masked']}; largest gap between outputs {res['max_output_gap_ms']} ms"
    )
    print(
        f"  CPU: {res['cpu']['machine_cores_busy']} of {res['cpu']['machine_cores']} cores busy "
        f"(load average {res['load_average']}); per process {res['cpu']['process_cores']}"
    )
    for m in res["hold"]["minutes"] if len(res["hold"]["minutes"]) > 1 else []:
        print(
            f"    minute {m['minute']:>2}: {'held' if m['held'] else 'NOT held'}, "
            f"{m['rate_hz']} Hz, missing {m['missing_ticks']}, dropped {m['dropped']}, "
            f"p99 {m['p99_ms']} ms, largest gap {m['max_output_gap_ms']} ms, "
            f"lower-limb RMSE {m['rmse_lower_limb_deg']} deg"
        )
    print(f"  60 Hz held with nothing dropped: {res['held']}")
    if res["rmse_deg"]:
        print(f"  angle RMSE vs truth (deg): {res['rmse_deg']}")
