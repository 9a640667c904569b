"""Dejittering of regular-rate streams: stamps → `t0 + k·T` on a robust straight line.

A device sampling at a fixed rate produces sample k at `t0 + k·T`; what arrives is that time
plus jitter (scheduling, Bluetooth packets stamped on arrival, several samples stamped at once),
occasional lost samples, and sometimes a discontinuity (a restarted device, a clock reset).

- `dejitter_offline` is pyxdf 1.17's `_jitter_removal` (`dejitter_timestamps=True`): split at
  |Δt| > max(1 s, 500 samples), ordinary least squares of stamp on sample index per segment,
  streams with nominal rate 0 or `desc/synchronization/can_drop_samples == true` left alone.
- `Dejitterer` is the online form used live. Per segment it keeps exponentially forgotten
  weighted sums (half-life `halflife_s`, like liblsl's `proc_dejitter` smoothing), so each chunk
  costs O(chunk) numpy, and fits the line with Huber weights so bursts do not drag it. On top
  of pyxdf's rule it re-indexes across short gaps (samples lost in transport: the following
  stamps are all late by a whole number of periods) instead of bending the line through them.
  Every anomaly is counted (`DejitterCounters`).

Streams that may drop samples (cameras) are not dejittered (their frame index is not a clock)
but their anomalies are still counted. Units: seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "DejitterCounters",
    "Dejitterer",
    "dejitter_offline",
    "stream_can_drop_samples",
]


def stream_can_drop_samples(info: dict[str, Any] | None) -> bool:
    """pyxdf's `_stream_can_drop_samples` on a pyxdf header dict (`stream["info"]`).

    True when `desc/synchronization/can_drop_samples` is "true" (case-insensitive).
    """
    try:
        value = info["desc"][0]["synchronization"][0]["can_drop_samples"][0]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return False
    return str(value).strip().lower() == "true"


def _break_threshold(srate: float, seconds: float, samples: int) -> float:
    return max(seconds, samples / srate) if srate > 0 else seconds


def dejitter_offline(
    stamps: np.ndarray,
    nominal_srate: float,
    *,
    can_drop_samples: bool = False,
    threshold_seconds: float = 1.0,
    threshold_samples: int = 500,
) -> tuple[np.ndarray, list[tuple[int, int]], float]:
    """Whole-recording dejitter exactly as pyxdf; returns (stamps, segments, effective_srate)."""
    ts = np.array(stamps, dtype=float)
    n = len(ts)
    if n == 0:
        return ts, [], 0.0
    if nominal_srate <= 0:
        return ts, [(0, n - 1)], 0.0
    if can_drop_samples:
        dur = ts[-1] - ts[0]
        return ts, [(0, n - 1)], ((n - 1) / dur if n > 1 and dur > 0 else 0.0)
    thr = _break_threshold(nominal_srate, threshold_seconds, threshold_samples)
    cut = np.flatnonzero(np.abs(np.diff(ts)) > thr)
    starts = np.concatenate(([0], cut + 1))
    ends = np.concatenate((cut, [n - 1]))
    for a, b in zip(starts, ends, strict=True):
        idx = np.arange(a, b + 1, dtype=float)
        X = np.column_stack((np.ones_like(idx), idx))
        coef = np.linalg.lstsq(X, ts[a : b + 1], rcond=-1)[0]
        ts[a : b + 1] = coef[0] + coef[1] * idx
    counts = ends + 1 - starts
    eff = 0.0
    if np.any(counts > 1):
        eff = float(np.sum(counts - 1) / np.sum(ts[ends] - ts[starts]))
    return ts, list(zip(starts.tolist(), ends.tolist(), strict=True)), eff


@dataclass
class DejitterCounters:
    """Anomalies seen in one stream's stamps (the caller exports them as metrics)."""

    samples: int = 0
    invalid: int = 0  # non-finite stamps (passed through as NaN)
    bursts: int = 0  # runs of >= 2 samples stamped (almost) at the same time
    burst_samples: int = 0  # samples in such runs after the first
    backwards: int = 0  # stamps earlier than their predecessor (small, jitter)
    late: int = 0  # single samples so late they looked like a gap (re-indexing undone)
    gaps: int = 0  # short losses bridged by re-indexing
    missing: int = 0  # samples estimated lost in those gaps (or frames dropped)
    breaks: int = 0  # forward jumps > break threshold: new segment
    resets: int = 0  # backward jumps (large, or persistent): new segment
    segments: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Dejitterer:
    """Online dejitter for one stream; `process(stamps) -> stamps`, same length and order.

    `enabled=False` (cameras, irregular streams) passes stamps through but still counts.
    Parameters: `halflife_s` forgetting half-life; breaks/resets at |Δt| > max(
    `break_threshold_seconds`, `break_threshold_samples`·T) as pyxdf; a gap (lost samples)
    is re-indexed when the stamps step up by more than max(`gap_min_s`, `gap_periods`·T) and
    stay there; the next `gap_confirm` samples refine its size, and if they fall back the
    step was one late sample and the re-indexing is undone (counted as `late`).
    """

    def __init__(
        self,
        nominal_srate: float,
        *,
        enabled: bool = True,
        halflife_s: float = 30.0,
        break_threshold_seconds: float = 1.0,
        break_threshold_samples: int = 500,
        gap_periods: float = 4.5,
        gap_min_s: float = 0.02,
        gap_confirm: int = 8,
        huber_k: float = 3.0,
        min_delta_s: float = 2e-4,
        burst_fraction: float = 0.1,
        min_fit_samples: int = 10,
        envelope: int = 16,
    ) -> None:
        if not np.isfinite(nominal_srate) or nominal_srate < 0:
            raise ValueError(f"Dejitterer: nominal_srate must be >= 0, got {nominal_srate}")
        self.nominal_srate = float(nominal_srate)
        self.enabled = bool(enabled and nominal_srate > 0)
        self.T0 = 1.0 / nominal_srate if nominal_srate > 0 else 0.0
        self.halflife_s = halflife_s
        self.break_thr = _break_threshold(
            nominal_srate, break_threshold_seconds, break_threshold_samples
        )
        self.gap_periods = gap_periods
        self.gap_min_s = gap_min_s
        self.gap_confirm = max(1, gap_confirm)
        self.huber_k = huber_k
        self.min_delta_s = min_delta_s
        self.burst_fraction = burst_fraction
        self.min_fit_samples = min_fit_samples
        self.envelope = envelope
        self.counters = DejitterCounters()
        self._last_raw = np.nan
        self._last_out = -np.inf
        self._in_burst = False
        self._new_segment()

    # ---- state -------------------------------------------------------------------------
    def _new_segment(self) -> None:
        self._seg_n = 0
        self._k_next = 0
        self._k_ref = 0.0
        self._t_ref = 0.0
        self._c = 0.0
        self._T = self.T0
        self._S = np.zeros(5)  # S0, Su, Suu, Sv, Suv in the (k - k_ref, t - t_ref) frame
        self._scale = np.nan
        self._last_out = -np.inf
        self._batch_k: list[np.ndarray] = []
        self._last_r = 0.0
        self._hist: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))
        self._skip_m = 0  # size of the last gap while it is still being confirmed
        self._post: list[float] = []  # residuals of the samples after it

    @property
    def period(self) -> float:
        """Current estimate of the sampling period (s); nominal before any data."""
        return self._T

    @property
    def effective_srate(self) -> float:
        return 1.0 / self._T if self._T > 0 else 0.0

    def _predict(self, k: np.ndarray) -> np.ndarray:
        return self._t_ref + self._c + self._T * (k - self._k_ref)

    # ---- public ------------------------------------------------------------------------
    def process(self, stamps: np.ndarray) -> np.ndarray:
        """Dejitter one chunk (in arrival order); returns the corrected stamps."""
        ts = np.asarray(stamps, dtype=float).ravel()
        out = ts.copy()
        if len(ts) == 0:
            return out
        self.counters.samples += len(ts)
        finite = np.isfinite(ts)
        self.counters.invalid += int((~finite).sum())
        idx = np.flatnonzero(finite)
        if len(idx) == 0:
            return out
        t = ts[idx]
        prev = np.concatenate(([self._last_raw], t[:-1]))
        d = t - prev  # NaN for the very first sample
        self._count_deltas(d)
        self._last_raw = float(t[-1])
        # Discontinuities split the chunk into runs; each starts a new segment.
        # Irregular streams (markers) have no break rule, only backward resets.
        big = (np.abs(d) > self.break_thr) if self.T0 > 0 else (d < -self.break_thr)
        cuts = np.flatnonzero(big)
        self.counters.breaks += int((d[cuts] > 0).sum())
        self.counters.resets += int((d[cuts] < 0).sum())
        bounds = np.concatenate(([0], cuts, [len(t)]))
        self._out: list[np.ndarray] = []
        for a, b in itertools.pairwise(bounds):
            if b <= a:
                continue
            if big[a] or self.counters.segments == 0:
                self._flush()
                self._new_segment()
                self.counters.segments += 1
            if self.enabled:
                self._run(t[a:b])
            else:
                self._out.append(t[a:b])
        self._flush()
        out[idx] = np.concatenate(self._out)
        return out

    def _flush(self) -> None:
        """Emit this call's samples of the current segment with the segment's newest fit.

        Everything handed over in one call is placed with the fit that has seen all of it
        (still causal), so a first batch is not stamped from its first few samples.
        """
        if not self._batch_k:
            return
        out = self._predict(np.concatenate(self._batch_k))
        self._batch_k = []
        # Never emit a stamp at or before the previous one (fit updates move the line by µs).
        out = np.maximum.accumulate(np.maximum(out, self._last_out + 1e-9))
        self._last_out = float(out[-1])
        self._out.append(out)

    # ---- internals ---------------------------------------------------------------------
    def _count_deltas(self, d: np.ndarray) -> None:
        c = self.counters
        ok = np.isfinite(d)
        c.backwards += int(((d < 0) & (d >= -self.break_thr) & ok).sum())
        T = self._T if self._T > 0 else 0.0
        if T > 0:
            tight = ok & (d >= 0) & (d <= self.burst_fraction * T)
            c.burst_samples += int(tight.sum())
            starts = tight & ~np.concatenate(([self._in_burst], tight[:-1]))
            c.bursts += int(starts.sum())
            self._in_burst = bool(tight[-1])
            if not self.enabled:  # frames dropped by a can-drop stream
                lost = ok & (d > 1.5 * T) & (d <= self.break_thr)
                c.gaps += int(lost.sum())
                c.missing += int(np.round(d[lost] / T).sum() - lost.sum())

    def _gap_threshold(self) -> float:
        return max(self.gap_min_s, self.gap_periods * self._T)

    def _run(self, t: np.ndarray) -> None:
        """Index and fit stamps of the current segment (recursing on a rebase)."""
        n = len(t)
        k = self._k_next + np.arange(n, dtype=float)
        if self._seg_n == 0:
            self._k_ref, self._t_ref, self._c, self._T = float(k[0]), float(t[0]), 0.0, self.T0
        if self._seg_n < self.min_fit_samples:
            head = self.min_fit_samples - self._seg_n
            if n > head:  # the rest goes through the fit-based path
                self._run(t[:head])
                self._run(t[head:])
                return
            k = self._young_indices(t)
        r = t - self._predict(k)
        if self._seg_n >= self.min_fit_samples:
            self._refine_gap(k, r)
            thr = self._gap_threshold()
            while True:
                # A loss or a clock step is a sudden step in the residual that then persists;
                # bursts do not persist and a wandering rate is not sudden.
                lo = np.minimum.accumulate(r[::-1])[::-1]  # min residual from i to the end
                hi = np.maximum.accumulate(r[::-1])[::-1]
                step = r - np.concatenate(([self._last_r], r[:-1]))
                late = np.flatnonzero((lo > thr) & (step > 0.5 * thr))
                early = np.flatnonzero((hi < -thr) & (step < -0.5 * thr))
                if late.size and (not early.size or late[0] < early[0]):
                    i = int(late[0])
                    m = round(float(np.median(r[i:])) / self._T)
                    if m < 1:
                        break
                    k[i:] += m
                    r[i:] -= m * self._T
                    self.counters.gaps += 1
                    self.counters.missing += m
                    self._skip_m = m  # provisional: refined by the samples that follow
                    self._post = list(r[i:][: self.gap_confirm])
                    continue
                if early.size:
                    # Stamps moved back and stayed: a clock step, not jitter. New segment.
                    i = int(early[0])
                    if i:
                        self._fit(k[:i], t[:i], r[:i])
                    self._flush()
                    self.counters.resets += 1
                    self.counters.segments += 1
                    self._new_segment()
                    self._run(t[i:])
                    return
                break
        self._fit(k, t, r)

    def _refine_gap(self, k: np.ndarray, r: np.ndarray) -> None:
        """Correct the size of the last gap with the next `gap_confirm` samples (in place).

        A gap seen on the last sample of a chunk is sized from that one jittered sample; the
        median residual of the samples after it says by how many periods that was off. A
        correction back to zero means the "gap" was one late sample.
        """
        if not self._skip_m or len(self._post) >= self.gap_confirm:
            return
        take = min(len(r), self.gap_confirm - len(self._post))
        ref = float(np.median(self._post)) if self._post else 0.0
        off = np.flatnonzero(np.abs(r[:take] - ref) > 0.5 * self._gap_threshold())
        if off.size:  # a new step (the next gap): refine only with what comes before it
            take = int(off[0])
        if take == 0 and not self._post:
            return
        j = round(float(np.median(self._post + list(r[:take]))) / self._T)
        if j:
            k += j
            r -= j * self._T
            self.counters.missing += j
            self._skip_m += j
            if self._skip_m <= 0:
                self.counters.gaps -= 1
                self.counters.missing -= self._skip_m
                self.counters.late += 1
                self._skip_m = 0
        self._post.extend(r[:take].tolist())

    def _young_indices(self, t: np.ndarray) -> np.ndarray:
        """Sample indices for a segment too young to have a fit, from the nominal period.

        A jump of the stamps' lower envelope (stamps minus k·T_nominal, minimum over
        `envelope` samples on each side) by more than max(`gap_min_s`, `gap_periods`·T) is
        lost samples: bursts only ever stamp late, so they do not move the envelope, and a
        loss inside the very first chunk cannot bend the initial line.
        """
        thr = max(self.gap_min_s, self.gap_periods * self.T0)
        w = self.envelope
        ht, hk = self._hist
        nh = len(ht)
        full_t = np.concatenate((ht, t))
        full_k = np.concatenate((hk, self._k_next + np.arange(len(t), dtype=float)))
        for c in np.flatnonzero(np.diff(full_t) > thr) + 1:
            if c < nh:
                continue
            s = full_t - full_k * self.T0
            jump = s[c : c + w].min() - s[max(0, c - w) : c].min()
            m = round(jump / self.T0)
            if jump > thr and m >= 1:
                full_k[c:] += m
                self.counters.gaps += 1
                self.counters.missing += m
        self._hist = (full_t[-w:], full_k[-w:])
        return full_k[nh:]

    def _fit(self, k: np.ndarray, t: np.ndarray, r: np.ndarray) -> None:
        n = len(t)
        if n == 0:
            return
        # Robust scale of the residuals, smoothed over ~2 s of data.
        s_chunk = 1.4826 * float(np.median(np.abs(r)))
        alpha = 1.0 - 0.5 ** (n * max(self._T, 1e-6) / 2.0)
        self._scale = (
            s_chunk
            if not np.isfinite(self._scale)
            else ((1 - alpha) * self._scale + alpha * s_chunk)
        )
        if self._seg_n < self.min_fit_samples:
            w = np.ones(n)
        else:
            delta = max(self.min_delta_s, self.huber_k * self._scale)
            w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        # Re-centre the sums on the newest sample, then decay and add this chunk.
        dk = float(k[-1]) - self._k_ref
        dt = float(self._predict(np.array([k[-1]]))[0]) - self._t_ref
        S0, Su, Suu, Sv, Suv = self._S
        Suu = Suu - 2 * dk * Su + dk * dk * S0
        Suv = Suv - dt * Su - dk * Sv + dk * dt * S0
        Su = Su - dk * S0
        Sv = Sv - dt * S0
        self._c -= dt - self._T * dk
        self._k_ref, self._t_ref = float(k[-1]), self._t_ref + dt
        lam = 0.5 ** (max(self._T, 1e-6) / self.halflife_s)
        decay = lam**n
        ww = w * lam ** np.arange(n - 1, -1, -1, dtype=float)
        u = k - self._k_ref
        v = t - self._t_ref
        S0 = S0 * decay + ww.sum()
        Su = Su * decay + (ww * u).sum()
        Suu = Suu * decay + (ww * u * u).sum()
        Sv = Sv * decay + (ww * v).sum()
        Suv = Suv * decay + (ww * u * v).sum()
        self._S = np.array([S0, Su, Suu, Sv, Suv])
        # Weak prior pulling the period towards nominal: defines the fit from one sample.
        p = 1.0
        A = Suu + p
        det = S0 * A - Su * Su
        if det > 0:
            self._c = (A * Sv - Su * (Suv + p * self.T0)) / det
            T = (S0 * (Suv + p * self.T0) - Su * Sv) / det
            if T > 0:
                self._T = T
        self._seg_n += n
        self._k_next = int(k[-1]) + 1
        self._last_r = float(r[-1])
        self._batch_k.append(k)
