"""Simulated live timing: streams with known clocks pushed through the online sync chain.

The measurement behind the "live alignment ≤ 2 ms p99 after a 10 s warm-up" target. Pure
numpy, no transport: each stream lives on a remote clock (offset, drift, optionally a reset
mid-run), its device samples at a rate a little off nominal, and its stamps carry jitter,
bursts (a run of samples stamped with the last one's time), backward glitches and lost
samples. Chunks and LSL-like time-correction measurements (noisy, with outliers) reach a
`fusion.align.StreamSync` per stream in arrival order, exactly as the ingest would feed them.

Truth is known, so two errors are measured, on the local clock, after the warm-up:
- stamp error: the online (causal) stamp of each sample minus its true capture time;
- alignment error: IMU channels carry their own true capture time as the value, so
  `align_imu` at a model tick returns the tick itself when timing is perfect — the
  difference is the alignment error. Cameras are matched with `align_nearest`; their
  alignment "error" includes the frame quantisation (up to half a frame), so their stamp
  error is the timing figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusion.align import MODEL_RATE, StreamSync, align_imu, align_nearest, model_ticks

__all__ = ["SimResult", "SimStream", "default_streams", "simulate_live_alignment"]


@dataclass
class SimStream:
    name: str
    rate: float  # nominal Hz
    camera: bool = False  # can drop samples: not dejittered, matched by nearest
    rate_error: float = 0.0  # device rate = rate·(1 + rate_error)
    clock_offset: float = 0.0  # remote clock − local clock at t=0 (s)
    drift_ppm: float = 0.0  # remote clock rate error
    jitter_s: float = 5e-4  # Gaussian stamp noise (s)
    delay_exp_s: float = 0.0  # extra skewed noise: Exp(mean) − mean (zero mean)
    chunk: int = 1  # samples per pushed chunk
    burst_prob: float = 0.0  # per chunk: stamped all at once (with the last sample's time)
    backwards_prob: float = 0.0  # per sample: stamped early by 0.3–0.9 periods
    loss_prob: float = 0.0  # per chunk: the next `loss_len` samples are lost
    loss_len: tuple[int, int] = (5, 20)
    reset_at: float | None = None  # remote clock restarts (and data pauses 2 s) at this time


@dataclass
class SimResult:
    seconds: float
    warmup_s: float
    rows: list[dict[str, float | str | int]] = field(default_factory=list)

    def worst_p99_ms(self, kind: str = "imu") -> float:
        key = "align_p99_ms" if kind == "imu" else "stamp_p99_ms"
        vals = [float(r[key]) for r in self.rows if r["kind"] == kind]
        return max(vals) if vals else float("nan")


def default_streams() -> list[SimStream]:
    """A lab-like mix: IMUs on three hosts (one that reboots), a Muse-like IMU, two cameras."""
    return [
        SimStream("imu_pelvis", 100, rate_error=2e-4, clock_offset=1234.5, drift_ppm=40,
                  jitter_s=5e-4, delay_exp_s=1e-3, chunk=4, burst_prob=0.02),
        SimStream("imu_thigh_l", 100, rate_error=-1e-4, clock_offset=-87.25, drift_ppm=-25,
                  jitter_s=1e-3, delay_exp_s=2e-3, chunk=2, backwards_prob=0.005, loss_prob=0.01),
        SimStream("imu_foot_r", 200, rate_error=5e-4, clock_offset=5e5, drift_ppm=60,
                  jitter_s=3e-4, chunk=8, burst_prob=0.05, reset_at=30.0),
        SimStream("imu_muse_like", 52, rate_error=-2.7e-3, clock_offset=0.0, drift_ppm=5,
                  jitter_s=2e-3, delay_exp_s=3e-3, chunk=3, backwards_prob=0.01, burst_prob=0.03),
        SimStream("camera_0", 30, camera=True, clock_offset=-3.0, drift_ppm=-10,
                  jitter_s=2e-4, loss_prob=0.02, loss_len=(1, 3)),
        SimStream("camera_1", 60, camera=True, clock_offset=42.0, drift_ppm=15,
                  jitter_s=2e-4, loss_prob=0.02, loss_len=(1, 3)),
    ]  # fmt: skip


def _remote(s: SimStream, tau: np.ndarray, reset_base: float) -> np.ndarray:
    """Remote clock reading at local time tau (before/after the reset)."""
    r = s.clock_offset + tau * (1 + s.drift_ppm * 1e-6)
    if s.reset_at is not None:
        after = tau >= s.reset_at
        r = np.where(after, reset_base + (tau - s.reset_at) * (1 + s.drift_ppm * 1e-6), r)
    return r


def _simulate_stream(
    s: SimStream, seconds: float, rng: np.random.Generator
) -> tuple[
    list[tuple[float, int, np.ndarray, np.ndarray, np.ndarray]], list[tuple[float, float, float]]
]:
    """(chunks as (arrival, kind=1, stamps, true times, values), offsets as (arrival, t_c, o))."""
    rate = s.rate * (1 + s.rate_error)
    tau = rng.uniform(0, 0.05) + np.arange(int(seconds * rate)) / rate
    if s.reset_at is not None:  # the host reboots: 2 s without data
        tau = tau[(tau < s.reset_at) | (tau >= s.reset_at + 2.0)]
    keep = np.ones(len(tau), bool)
    n_chunks = int(np.ceil(len(tau) / s.chunk))
    for c in np.flatnonzero(rng.random(n_chunks) < s.loss_prob):
        keep[c * s.chunk : c * s.chunk + rng.integers(s.loss_len[0], s.loss_len[1] + 1)] = False
    tau = tau[keep]
    reset_base = 7.0  # a rebooted host's clock starts near zero
    stamp_tau = tau + rng.normal(0, s.jitter_s, len(tau))
    if s.delay_exp_s > 0:
        stamp_tau += rng.exponential(s.delay_exp_s, len(tau)) - s.delay_exp_s
    back = rng.random(len(tau)) < s.backwards_prob
    stamp_tau[back] -= rng.uniform(0.3, 0.9, back.sum()) / s.rate
    stamps = _remote(s, stamp_tau, reset_base)
    values = tau[:, None].copy()  # the true capture time is the signal
    chunks = []
    arrival = -np.inf
    for a in range(0, len(tau), s.chunk):
        b = min(a + s.chunk, len(tau))
        st = stamps[a:b].copy()
        if rng.random() < s.burst_prob:
            st[:] = st[-1]
        # One TCP connection per stream: chunks arrive late but in order.
        arrival = max(arrival, tau[b - 1] + 0.002 + rng.exponential(0.003))
        chunks.append((arrival, 1, st, tau[a:b], values[a:b]))
    # LSL time correction every 2 s: true offset at that moment, noise, 2 % outliers.
    offsets = []
    for t_meas in np.arange(0.0, seconds, 2.0) + rng.uniform(0, 0.5):
        remote_now = float(_remote(s, np.array([t_meas]), reset_base)[0])
        true_off = t_meas - remote_now
        noise = rng.normal(0, 3e-5) + (rng.uniform(1e-3, 5e-3) if rng.random() < 0.02 else 0.0)
        off = true_off + noise
        offsets.append((t_meas, t_meas - off, off))
    return chunks, offsets


def simulate_live_alignment(
    seconds: float = 60.0,
    warmup_s: float = 10.0,
    seed: int = 0,
    streams: list[SimStream] | None = None,
    model_rate: float = MODEL_RATE,
) -> SimResult:
    """Run the simulation; one result row per stream (errors in ms, p50/p99/max)."""
    rng = np.random.default_rng(seed)
    streams = streams if streams is not None else default_streams()
    result = SimResult(seconds, warmup_s)
    for s in streams:
        chunks, offsets = _simulate_stream(s, seconds, rng)
        sync = StreamSync(s.rate, can_drop_samples=s.camera, buffer_s=np.inf)
        events = [(a, 0, (tc, o)) for a, tc, o in offsets] + [
            (a, 1, (st, tr, v)) for a, _, st, tr, v in chunks
        ]
        events.sort(key=lambda e: (e[0], e[1]))
        true_parts, value_parts = [], []
        for _, kind, payload in events:
            if kind == 0:
                sync.add_offset(*payload)
            else:
                st, tr, v = payload
                sync.push(st, np.column_stack((v, tr)))
        t_est, xv = sync.buffered()
        true_parts.append(xv[:, 1] if len(t_est) else np.zeros(0))
        value_parts.append(xv[:, :1] if len(t_est) else np.zeros((0, 1)))
        truth = true_parts[0]
        stamp_err = (t_est - truth) * 1e3
        ok = truth >= warmup_s
        ticks = model_ticks(warmup_s, seconds, model_rate)
        if s.camera:
            vals, mask = align_nearest(t_est, value_parts[0], ticks, 0.5 / s.rate)
        else:
            vals, mask = align_imu(t_est, value_parts[0], ticks, 2.5 / s.rate)
        al_err = (vals[mask, 0] - ticks[mask]) * 1e3
        c = sync.counters
        row: dict[str, float | str | int] = {
            "stream": s.name,
            "kind": "camera" if s.camera else "imu",
            "rate": s.rate,
            "samples": len(t_est),
            "stamp_p50_ms": _pct(stamp_err[ok], 50),
            "stamp_p99_ms": _pct(stamp_err[ok], 99),
            "stamp_max_ms": _pct(stamp_err[ok], 100),
            "align_p50_ms": _pct(al_err, 50),
            "align_p99_ms": _pct(al_err, 99),
            "align_max_ms": _pct(al_err, 100),
            "ticks": len(ticks),
            "masked": int((~mask).sum()),
        }
        for k in ("bursts", "backwards", "gaps", "missing", "breaks", "resets", "clock_resets",
                  "clock_outliers", "unmapped_dropped"):  # fmt: skip
            row[k] = int(c.get(k, 0))
        result.rows.append(row)
    return result


def _pct(err: np.ndarray, q: float) -> float:
    return float(np.percentile(np.abs(err), q)) if len(err) else float("nan")
