"""The metrics actor: one Prometheus endpoint for the whole pipeline.

Stages do not talk to prometheus-client themselves (they live in other processes); each keeps a
`MetricsBuffer` and sends its content here every `metrics.flush_ms` (500 ms). This actor owns
the registry and the HTTP endpoint (default 127.0.0.1:9310), exports exactly the names of
docs/TEAM_NOTES.md, and keeps the recent raw latencies and each sender's counter totals, so the
live view and the bench can read exact percentiles and rates (`snapshot()`), which histogram
buckets and a once-a-second difference of the totals cannot give.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import defaultdict, deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["METRICS", "Metrics", "MetricsBuffer", "percentiles"]

log = logging.getLogger(__name__)

RATE_WINDOW_S = 2.0  # snapshot()["rates"]: per second over this much of the latest reports
RATE_KEEP_S = 10.0  # counter history kept for them
_CountPoint = tuple[float, float, float]  # arrival here, sender's time, sender's running total

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.0175,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
)
ESTIMATOR_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

#: short key -> (kind, Prometheus name, label names, help)
METRICS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "stage_latency": (
        "histogram",
        "gait_stream_stage_latency_seconds",
        ("stage",),
        "Time a message spent in each stage (since the previous stage handed it on)",
    ),
    "e2e": (
        "histogram",
        "gait_stream_end_to_end_latency_seconds",
        ("subject",),
        "Sample time to angles published, excluding the estimator's look-ahead",
    ),
    "lookahead": ("gauge", "gait_stream_lookahead_seconds", (), "Estimator look-ahead"),
    "input": (
        "counter",
        "gait_stream_input_samples_total",
        ("subject", "stream", "kind"),
        "Samples received (kind imu: IMU samples; keypoints: camera frames)",
    ),
    "output": (
        "counter",
        "gait_stream_output_samples_total",
        ("subject", "output"),
        "Samples published (angles, events, gait)",
    ),
    "masked": (
        "counter",
        "gait_stream_masked_total",
        ("subject", "modality"),
        "Model ticks emitted with part of a modality missing",
    ),
    "late": (
        "counter",
        "gait_stream_late_total",
        ("subject", "stream"),
        "Samples that arrived after their tick was emitted",
    ),
    "dropped": (
        "counter",
        "gait_stream_dropped_total",
        ("stage", "reason"),
        "Messages or samples dropped, by stage and reason",
    ),
    "bad_input": (
        "counter",
        "gait_stream_bad_input_total",
        ("stream", "reason"),
        "Input rejected or repaired, by stream and reason",
    ),
    "queue_depth": ("gauge", "gait_stream_queue_depth", ("stage",), "Messages waiting"),
    "estimator": (
        "histogram",
        "gait_stream_estimator_seconds",
        ("estimator",),
        "Time of one estimator call (all subjects of a batch)",
    ),
    "estimator_tick": (
        "histogram",
        "gait_stream_estimator_tick_seconds",
        ("estimator",),
        "Estimator time per model tick: a call's time over the ticks it covered (a call that "
        "catches up on a backlog covers several)",
    ),
    "subjects_running": ("gauge", "gait_stream_subjects_running", (), "Subjects in the pipeline"),
    "subjects_per_node": (
        "gauge",
        "gait_stream_subjects_per_node",
        ("node",),
        "Subjects served by the inference actor on each node",
    ),
    "stream_up": (
        "gauge",
        "gait_stream_stream_up",
        ("subject", "stream"),
        "1 while an input stream delivers data",
    ),
    "sample_age": (
        "gauge",
        "gait_stream_last_sample_age_seconds",
        ("subject", "stream"),
        "Seconds since an input stream's last sample arrived",
    ),
    "angle": (
        "gauge",
        "gait_stream_joint_angle_degrees",
        ("subject", "angle"),
        "Latest published joint angle",
    ),
    "restarts": (
        "counter",
        "gait_stream_actor_restarts_total",
        ("actor",),
        "Times Ray restarted an actor",
    ),
}


class MetricsBuffer:
    """Counter increments, gauge values and histogram observations waiting to be sent."""

    def __init__(self) -> None:
        self._inc: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        self._set: dict[tuple[str, tuple[str, ...]], float] = {}
        self._obs: dict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def inc(self, metric: str, labels: tuple[str, ...] = (), n: float = 1) -> None:
        with self._lock:
            self._inc[(metric, labels)] += n

    def set(self, metric: str, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._set[(metric, labels)] = float(value)

    def observe(self, metric: str, labels: tuple[str, ...], values: Any) -> None:
        arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
        with self._lock:
            self._obs[(metric, labels)].extend(arr.tolist())

    def take(self) -> dict[str, Any] | None:
        """Everything buffered (and clear), or None when empty; stamped with this process's
        monotonic time. A counter once counted is sent again at 0: the metrics actor's rates
        then fall to 0 when its source stops, instead of holding the last value."""
        with self._lock:
            if not (self._inc or self._set or self._obs):
                return None
            out = {
                "inc": dict(self._inc),
                "set": dict(self._set),
                "obs": dict(self._obs),
                "t": time.monotonic(),
            }
            self._inc = defaultdict(float, dict.fromkeys(self._inc, 0.0))
            self._set = {}
            self._obs = defaultdict(list)
        return out


def percentiles(values: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (NaN when empty)."""
    if len(values) == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    ms = np.asarray(values) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(ms.max())}


class Metrics:
    """Owns the registry and the HTTP endpoint; `report(payload)` applies a MetricsBuffer."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = 9310, *, keep_s: float = 900.0
    ) -> None:
        self.registry = CollectorRegistry()
        self._m: dict[str, Any] = {}
        for key, (kind, name, labels, doc) in METRICS.items():
            if kind == "counter":
                self._m[key] = Counter(name, doc, labels, registry=self.registry)
            elif kind == "gauge":
                self._m[key] = Gauge(name, doc, labels, registry=self.registry)
            else:
                buckets = ESTIMATOR_BUCKETS if key.startswith("estimator") else LATENCY_BUCKETS
                self._m[key] = Histogram(name, doc, labels, buckets=buckets, registry=self.registry)
        self._totals: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        self._gauges: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        self._raw: dict[tuple[str, tuple[str, ...]], deque[tuple[float, np.ndarray]]] = {}
        # (sender, counter, labels) -> (arrival, sender's time, sender's running total): rates
        self._counts: dict[tuple[str, str, tuple[str, ...]], deque[_CountPoint]] = {}
        self._keep_s = keep_s
        self._lock = threading.Lock()
        self._server = None
        self.port: int | None = None
        if port is not None:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
            self.port = int(self._server.server_port)
            log.info("metrics on http://%s:%d/metrics", host, self.port)
        self.host = host
        self.started = time.monotonic()
        self.incarnation = uuid.uuid4().hex

    def address(self) -> tuple[str, int | None]:
        return self.host, self.port

    def ping(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "running": True, "pid": os.getpid()}

    def cpu(self) -> float:
        return time.process_time()

    def declare(self, series: list[tuple[str, tuple[str, ...]]]) -> None:
        """Create series at zero so dashboards and alerts see them before the first event."""
        for key, labels in series:
            metric = self._m[key]
            child = metric.labels(*labels) if labels else metric
            if METRICS[key][0] == "counter":
                child.inc(0)
                with self._lock:
                    self._totals[key].setdefault(labels, 0.0)

    def report(self, payload: dict[str, Any]) -> None:
        now = time.monotonic()
        sender, sent = payload.get("sender", ""), payload.get("t", now)
        with self._lock:
            for (key, labels), n in payload.get("inc", {}).items():
                metric = self._m[key]
                (metric.labels(*labels) if labels else metric).inc(n)
                tot = self._totals[key]
                tot[labels] = tot.get(labels, 0.0) + n
                self._count(sender, key, labels, now, sent, n)
            for (key, labels), value in payload.get("set", {}).items():
                metric = self._m[key]
                (metric.labels(*labels) if labels else metric).set(value)
                self._gauges[key][labels] = value
            for (key, labels), values in payload.get("obs", {}).items():
                metric = self._m[key]
                child = metric.labels(*labels) if labels else metric
                for v in values:
                    child.observe(v)
                dq = self._raw.setdefault((key, labels), deque())
                dq.append((now, np.asarray(values, dtype=np.float64)))
                while dq and now - dq[0][0] > self._keep_s:
                    dq.popleft()

    def _count(
        self, sender: str, key: str, labels: tuple[str, ...], now: float, sent: float, n: float
    ) -> None:
        dq = self._counts.setdefault((sender, key, labels), deque())
        dq.append((now, sent, (dq[-1][2] if dq else 0.0) + n))
        while now - dq[0][0] > RATE_KEEP_S:
            dq.popleft()

    def _rates(self, now: float) -> dict[str, dict[str, float]]:
        """Per second over the last RATE_WINDOW_S of reports, on each sender's own clock.

        Why not the live view differencing totals once a second: stages report every
        flush_ms (500), so a 1 s difference held one or three half-seconds of counts and the
        output rate read 30 or 90 Hz for a steady 60. Between two reports of one sender the
        count is exact and so is its time span. A sender silent for a window reads 0.
        """
        out: dict[str, dict[str, float]] = defaultdict(dict)
        start = now - RATE_WINDOW_S
        for (_, key, labels), dq in self._counts.items():
            name = "|".join(labels)
            recent = [p for p in dq if p[0] >= start]
            if not recent or now - recent[-1][0] > RATE_WINDOW_S:
                rate = 0.0
            else:
                before = [p for p in dq if p[0] < start]
                base, end = (before[-1] if before else recent[0]), recent[-1]
                span = end[1] - base[1]
                rate = (end[2] - base[2]) / span if span > 0 else 0.0
            out[key][name] = out[key].get(name, 0.0) + rate
        return dict(out)

    def _window(self, key: str, since: float | None) -> dict[tuple[str, ...], np.ndarray]:
        out = {}
        for (k, labels), dq in self._raw.items():
            if k != key:
                continue
            parts = [v for t, v in dq if since is None or t >= since]
            out[labels] = np.concatenate(parts) if parts else np.zeros(0)
        return out

    def snapshot(self, window_s: float | None = None) -> dict[str, Any]:
        """Totals, gauges and latency percentiles (ms) over the last `window_s` (None: all)."""
        with self._lock:
            since = None if window_s is None else time.monotonic() - window_s
            e2e = self._window("e2e", since)
            stages = self._window("stage_latency", since)
            est = self._window("estimator", since)
            est_tick = self._window("estimator_tick", since)
            all_e2e = np.concatenate(list(e2e.values())) if e2e else np.zeros(0)
            return {
                "uptime_s": time.monotonic() - self.started,
                "totals": {
                    k: {"|".join(lab): v for lab, v in d.items()} for k, d in self._totals.items()
                },
                "rates": self._rates(time.monotonic()),
                "gauges": {
                    k: {"|".join(lab): v for lab, v in d.items()} for k, d in self._gauges.items()
                },
                "latency_ms": {
                    "end_to_end": percentiles(all_e2e),
                    "per_subject": {lab[0]: percentiles(v) for lab, v in e2e.items()},
                    "stages": {lab[0]: percentiles(v) for lab, v in stages.items()},
                    "estimator": {lab[0]: percentiles(v) for lab, v in est.items()},
                    "estimator_per_tick": {lab[0]: percentiles(v) for lab, v in est_tick.items()},
                },
                "samples": {"end_to_end": len(all_e2e)},
            }

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
