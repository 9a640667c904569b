"""Dejittering of regular-rate streams: stamps → `t0 + k·T` on a robust straight line.

A device sampling at a fixed rate produces sample k at `t0 + k·T`; what arrives is that time
plus jitter (scheduling, Bluetooth packets stamped on arrival, several samples stamped at once),
occasional lost samples, and sometimes a discontinuity (a restarted device, a clock reset).

- `dejitter_offline` is pyxdf 1.17's `_jitter_removal` (`dejitter_timestamps=True`): split at
  |Δt| > max(1 s, 500 samples), ordinary least squares of stamp on sample index per segment,
  streams with nominal rate 0 or `desc/synchronization/can_drop_samples == true` left alone.
- `Dejitterer` is the online form used live. A regular-rate stream's sample k was taken at
  `t0 + k·T`, where k counts the samples *sent*, lost ones included: a loss is a whole number
  of missing periods, never a change of rate. So each sample is first given its integer index
  (the lower envelope of the stamps against the current line, rounded to whole periods:
  stamps arrive late, never early, beyond jitter; samples stamped together in a burst are
  pushed back onto the grid), then the line is refined from (index, stamp) pairs with
  exponentially forgotten weighted sums (half-life `halflife_s`, like liblsl's
  `proc_dejitter` smoothing), Huber weights, and a prior that the rate is near nominal. Each
  chunk costs O(chunk) numpy; a chunk longer than the segment so far is indexed in pieces
  (`_piece_end`); the small chunks of the steady state (1-3 samples, 60 times a second live)
  take a scalar fast path with the same results (`_process_steady`). Every anomaly is counted
  (`DejitterCounters`).

Streams that may drop samples (cameras) are not dejittered (their frame index is not a clock)
but their anomalies are still counted. Units: seconds.
"""

from __future__ import annotations

import itertools
import math
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


# Chunks up to this many samples may take `Dejitterer`'s scalar fast path.
_FAST_MAX = 32


def _np_sum(a: list[float]) -> float:
    """`np.add.reduce` of a short float64 list, rounding for rounding (numpy's pairwise sum:
    plain for < 8 items, else 8 interleaved partial sums; exact up to 128 items), so that the
    scalar fast path leaves the very same fit state as the numpy path."""
    n = len(a)
    if n < 8:
        s = 0.0
        for v in a:
            s += v
        return s
    r0, r1, r2, r3, r4, r5, r6, r7 = a[:8]
    m = n - n % 8
    for i in range(8, m, 8):
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(m, n):
        s += a[i]
    return s


def _percentile(x: np.ndarray, q: float) -> float:
    """`np.percentile(x, q)` (linear) of a non-empty finite 1-D array, to the last bit.

    Why not numpy's: ~100 µs of Python around one `np.partition`; the jitter is re-estimated
    every 16 samples of every stream.
    """
    n = len(x)
    vi = (n - 1) * (q / 100)
    if vi >= n - 1:
        return float(np.max(x))
    i = math.floor(vi)
    part = np.partition(x, (i, i + 1))
    a, b = float(part[i]), float(part[i + 1])
    g = vi - i
    diff = b - a
    return b - diff * (1 - g) if g >= 0.5 else a + diff * g


def _median(x: np.ndarray) -> float:
    """`np.median(x)` of a non-empty finite 1-D array, to the last bit (see `_percentile`)."""
    n = len(x)
    h = n // 2
    if n % 2:
        return float(np.partition(x, h)[h])
    part = np.partition(x, (h - 1, h))
    return (float(part[h - 1]) + float(part[h])) / 2


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
    `break_threshold_seconds`, `break_threshold_samples`·T) as pyxdf.
    Lost samples: once `jitter_min_n` intervals show the stream is clean enough
    (`loss_jitter_k`·jitter < T/2; it stops being so at 3T/4), a sample whose stamp, and every
    later one's in its chunk, is more than half a period late on the line is re-indexed by the
    rounded number of periods; otherwise only gaps over max(`gap_min_s`, `gap_periods`·T) are
    bridged, and their size is refined with the median of the `gap_confirm` samples after
    them. Samples that come in early by whole periods undo a re-indexing (counted `late`): at
    once for the first `gap_confirm` samples after a gap sized on a chunk's last stamps, else
    after `early_confirm` in a row; early by more than the gap threshold and staying there is
    a clock step back (new segment). Jitter: from the last `jitter_window` intervals (see
    `_note_jitter`, lag `jitter_lag`). `rate_prior`: the relative rate uncertainty of the
    period prior (it matters only in the first seconds). `fast_path=False` always takes the
    numpy path (for tests: the fast path must give the same stamps, counters and state).
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
        loss_jitter_k: float = 5.0,
        early_confirm: int = 3,
        jitter_window: int = 256,
        jitter_min_n: int = 16,
        jitter_lag: int = 32,
        rate_prior: float = 5e-3,
        min_delta_s: float = 2e-4,
        burst_fraction: float = 0.1,
        min_fit_samples: int = 10,
        envelope: int = 16,
        fast_path: bool = True,
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
        self.loss_jitter_k = loss_jitter_k
        self.early_confirm = max(1, early_confirm)
        self.jitter_min_n = jitter_min_n
        self._jd = np.zeros(max(jitter_window, jitter_min_n, 1))  # |wrapped intervals|, newest last
        self._jd_n = 0
        self.jitter_lag = max(1, jitter_lag)
        self._lag_t = np.full(self.jitter_lag, np.nan)  # the last stamps, for lagged intervals
        self._jl = np.zeros(len(self._jd))
        self._jl_n = 0
        self._fine = False  # single losses are re-indexed (the stream is clean enough)
        self._jitter = np.nan
        self._jd_new = 0  # samples since the jitter was last estimated
        self._jq: list[tuple[np.ndarray, np.ndarray]] = []  # their (stamps, intervals)
        self.rate_prior = rate_prior
        self.min_delta_s = min_delta_s
        self.burst_fraction = burst_fraction
        self.min_fit_samples = min_fit_samples
        self.envelope = envelope
        self.fast_path = bool(fast_path)
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
        self._hist: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))
        self._pend_m = 0  # size of the last gap sized on a chunk's last stamps
        self._seg_missing = 0  # periods re-indexed in this segment (what an undo may take back)
        self._pend_left = 0  # samples after it that may still undo it at once
        self._post: list[float] = []  # residuals (periods) of the samples after it
        self._early_r: list[float] = []  # residuals (periods) of the trailing early run

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
        if (
            self.fast_path
            and self._seg_n >= self.min_fit_samples
            and 0 < len(ts) <= min(_FAST_MAX, self._seg_n)  # else cut in pieces (`_piece_end`)
            and self.enabled
        ):
            fast = self._process_steady(ts)
            if fast is not None:
                return fast
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
        if self.enabled:
            self._note_jitter(t, d)
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

    def _process_steady(self, ts: np.ndarray) -> np.ndarray | None:
        """`process` for a short chunk of an established segment, in Python floats.

        Why: the live sync hands over 1-3 samples per stream 60 times a second, and for so few
        the numpy calls' own overhead is nearly all of the cost. Same arithmetic as the general
        path, operation for operation (`_np_sum`), so its stamps, counters and state are the
        same (tests/test_dejitter_fastpath.py). Returns None, having changed nothing, for a
        chunk with a non-finite stamp or a break/reset; a chunk that is not steady (a loss, a
        sample early beyond the loss threshold, a gap still being sized by `_refine_gap`, the
        switch to single-loss indexing) goes on to `_run` after the steps both paths share.
        """
        tl: list[float] = ts.tolist()
        n = len(tl)
        prev = self._last_raw
        bthr = self.break_thr
        dl = []
        for x in tl:
            d = x - prev
            if not -bthr <= d <= bthr:  # also a NaN/inf stamp (`_last_raw` is finite here)
                return None
            dl.append(d)
            prev = x
        # -- as `process` up to `_run`: counters, jitter (batched), last raw stamp
        c = self.counters
        c.samples += n
        T = float(self._T)
        bt = self.burst_fraction * T
        tight = self._in_burst
        for d in dl:
            if d < 0:
                c.backwards += 1
                tight = False
            elif d <= bt:
                c.burst_samples += 1
                if not tight:
                    c.bursts += 1
                tight = True
            else:
                tight = False
        self._in_burst = tight
        self._note_jitter(tl, dl)  # type: ignore[arg-type]
        self._last_raw = tl[-1]
        # -- `_index`: steady when no sample is early beyond the loss threshold and the last
        # one is not late beyond it (the lower envelope then finds no loss)
        if (
            not self._fine
            and self._jd_n >= self.jitter_min_n
            and self.loss_jitter_k * self._jitter < 0.5 * T
        ):
            return self._run_general(ts)  # `_loss_threshold` switches to single losses: reset
        thr = self._loss_threshold() / T
        k0 = float(self._k_next)
        kr = self._k_ref
        tc = self._t_ref + self._c
        k = [k0 + i for i in range(n)]
        r = [x - (tc + T * (kk - kr)) for x, kk in zip(tl, k, strict=True)]
        if r[-1] / T > thr or min(r) / T < -thr:  # (x/T is monotonic in x: min commutes)
            return self._run_general(ts)
        if self._pend_m > 0 and min(n, self._pend_left) > 0 and not self._fine:
            return self._run_general(ts)  # `_refine_gap` has a gap to resize
        self._pend_left -= n
        self._early_r = []
        # -- `_fit`
        ar = sorted(abs(v) for v in r)
        h = n // 2
        med = ar[h] if n % 2 else (ar[h - 1] + ar[h]) / 2
        s_chunk = 1.4826 * med
        Tm = max(T, 1e-6)
        alpha = 1.0 - 0.5 ** (n * Tm / 2.0)
        scale = self._scale
        scale = s_chunk if not math.isfinite(scale) else (1 - alpha) * scale + alpha * s_chunk
        self._scale = scale
        delta = max(self.min_delta_s, self.huber_k * scale)
        dk = k[-1] - kr
        dt = (tc + T * (k[-1] - kr)) - self._t_ref
        S0, Su, Suu, Sv, Suv = self._S.tolist()
        Suu = Suu - 2 * dk * Su + dk * dk * S0
        Suv = Suv - dt * Su - dk * Sv + dk * dt * S0
        Su = Su - dk * S0
        Sv = Sv - dt * S0
        self._c = float(self._c) - (dt - T * dk)
        kr = k[-1]
        tr = self._t_ref + dt
        self._k_ref, self._t_ref = kr, tr
        lam = 0.5 ** (Tm / self.halflife_s)
        decay = lam**n
        # Huber weights, zero for a sample stamped together with the next one (late, no
        # evidence), forgotten by age; the five weighted sums' terms (numpy's order)
        ww, wu, wuu, wv, wuv = [], [], [], [], []
        for i in range(n):
            w = min(1.0, delta / max(abs(r[i]), 1e-300))
            if i < n - 1 and tl[i + 1] - tl[i] <= bt:
                w = 0.0
            w = w * lam ** float(n - 1 - i)
            uu = k[i] - kr
            vv = tl[i] - tr
            a = w * uu
            ww.append(w)
            wu.append(a)
            wuu.append(a * uu)
            wv.append(w * vv)
            wuv.append(a * vv)
        S0 = S0 * decay + _np_sum(ww)
        Su = Su * decay + _np_sum(wu)
        Suu = Suu * decay + _np_sum(wuu)
        Sv = Sv * decay + _np_sum(wv)
        Suv = Suv * decay + _np_sum(wuv)
        self._S = np.array([S0, Su, Suu, Sv, Suv])
        T0 = self.T0
        sig = max(scale if math.isfinite(scale) else 0.0, 0.05 * T0)
        p = (sig / (self.rate_prior * T0)) ** 2
        A = Suu + p
        det = S0 * A - Su * Su
        if det > 0:
            self._c = (A * Sv - Su * (Suv + p * T0)) / det
            Tn = (S0 * (Suv + p * T0) - Su * Sv) / det
            if Tn > 0:
                self._T = T = Tn
        self._seg_n += n
        self._k_next = int(k[-1]) + 1
        # -- `_flush`
        tc = tr + self._c
        lo = self._last_out + 1e-9
        out = []
        for kk in k:
            y = tc + T * (kk - kr)
            if y < lo:
                y = lo
            out.append(y)
            lo = y
        self._last_out = out[-1]
        res = np.array(out)
        self._out = [res]
        return res

    def _run_general(self, t: np.ndarray) -> np.ndarray:
        """The rest of `process` for one run of finite stamps in the current segment."""
        self._out = []
        self._run(t)
        self._flush()
        return np.concatenate(self._out)

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

    def _loss_threshold(self) -> float:
        """Lateness (s) that means lost samples rather than jitter.

        Half a period (a loss is a whole period: rounding decides), or `loss_jitter_k` times
        the stamps' jitter if that is larger (`_note_jitter`), at most the gap threshold (used too until
        `jitter_min_n` intervals of each kind have shown what the jitter is). Why not always the gap
        threshold: samples lost one at a time would each leave the following stamps one
        period late, and the line would bend through them as if the rate were lower (5 %
        single losses: tens of ms off).
        """
        gap = self._gap_threshold()
        if self._jd_n < self.jitter_min_n:
            return gap
        jit = self._jitter
        # too jittery to tell a single period from jitter: only gaps are bridged (with
        # hysteresis: a burst of jitter does not flip a clean stream back and forth)
        kj = self.loss_jitter_k * jit
        fine = kj < (0.75 if self._fine else 0.5) * self._T
        if fine and not self._fine:
            # Until now single losses bent the line towards a slower rate: start its slope
            # afresh from nominal (the rate is known to a fraction of a percent), through the
            # newest sample, so that whole periods are counted against the right grid.
            self._S = np.zeros(5)
            self._T = self.T0
        self._fine = fine
        return 0.5 * self._T if self._fine else gap

    def _note_jitter(self, t: np.ndarray, d: np.ndarray) -> None:
        """Track the jitter from stamp intervals wrapped to +-T/2 (s).

        Independent of the fit and of the indexing: a lost sample makes an interval of 2T,
        which wraps to its jitter; samples stamped together (bursts) are left out. Two
        views, the larger wins: the 98 % quantile of the sample-to-sample intervals (scaled
        to a Gaussian sigma; a quantile, not the median, so that a packetised stream, samples
        spaced exactly within jittered packets, shows its packet jitter), and the median of
        the intervals over `jitter_lag` samples (stamps that wander against the true clock,
        by a fraction of a period over a packet or two, as the real Muse EEG does).
        """
        T = self.T0  # not the fitted period: a line bent by unindexed losses must not blur it
        if T <= 0:
            return
        # batched: every 16 new samples, not per call (a quantile of 256 costs ~50 µs)
        self._jq.append((t, d))
        self._jd_new += len(t)
        if self._jd_new < 16:
            return
        t = np.concatenate([q[0] for q in self._jq])
        d = np.concatenate([q[1] for q in self._jq])
        self._jq, self._jd_new = [], 0
        ok = np.isfinite(d) & (d > self.burst_fraction * T) & (d <= self.break_thr)
        if ok.any():
            w = np.abs(d[ok] - T * np.round(d[ok] / T))[-len(self._jd) :]
            self._jd = np.concatenate((self._jd[len(w) :], w))
            self._jd_n = min(self._jd_n + len(w), len(self._jd))
        L = self.jitter_lag
        full = np.concatenate((self._lag_t, t))[-(len(t) + L) :]
        self._lag_t = full[-L:]
        dl = full[L:] - full[:-L]
        ok = np.isfinite(dl) & (dl > (L - 0.5) * T) & (dl <= L * T + self.break_thr)
        if ok.any():
            w = np.abs(dl[ok] - T * np.round(dl[ok] / T))[-len(self._jl) :]
            self._jl = np.concatenate((self._jl[len(w) :], w))
            self._jl_n = min(self._jl_n + len(w), len(self._jl))
        if self._jd_n:
            self._jitter = _percentile(self._jd[-self._jd_n :], 98) / 2.326
        if self._jl_n:
            lag = 1.4826 * _median(self._jl[-self._jl_n :]) / np.sqrt(2.0)
            self._jitter = max(self._jitter, lag) if np.isfinite(self._jitter) else lag

    def _run(self, t: np.ndarray) -> None:
        """Index and fit stamps of the current segment (recursing on a new segment)."""
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
            self._early_r = []
        else:
            cut = self._piece_end(t)
            if cut < n:  # a long chunk on a young line: index it piece by piece
                self._run(t[:cut])
                self._run(t[cut:])
                return
            i_reset = self._index(t, k)
            if i_reset is not None:
                # Stamps moved back by more than the gap threshold and stayed: a clock step,
                # not jitter. New segment from there.
                if i_reset:
                    self._fit(k[:i_reset], t[:i_reset])
                self._flush()
                self.counters.resets += 1
                self.counters.segments += 1
                self._new_segment()
                self._run(t[i_reset:])
                return
        self._fit(k, t)

    def _piece_end(self, t: np.ndarray) -> int:
        """Where to cut a chunk longer than the segment so far (len(t) for no cut).

        Samples are indexed against the current line: a line fitted on s samples and
        extrapolated over many more drifts by its rate error times their number, and stamps
        that wander slowly against the true clock (the real Muse EEG: a third of a period over
        seconds) add to that, so that a long first chunk (samples a clock mapper held back)
        reads as lost samples. Pieces of at most the segment's length keep the extrapolation
        within the span the line was fitted on. The cut is at the end of a burst (never
        between samples stamped together: their first ones look late and would read as a loss).
        """
        n = len(t)
        s = max(self._seg_n, 1)
        if n <= s:
            return n
        apart = np.flatnonzero(np.diff(t[s - 1 :]) > self.burst_fraction * self._T)
        return s + int(apart[0]) if apart.size else n

    def _index(self, t: np.ndarray, k: np.ndarray) -> int | None:
        """Give each stamp its sample index (in place in `k`, which holds "no loss" indices).

        Residuals u (in periods, against the current line) are lateness: jitter, plus whole
        periods for samples lost before, plus bursts (samples stamped together, so the first
        ones of a burst look late). The lower envelope from each sample to the end of the
        chunk, rounded, is the number of samples lost so far: a burst is never the last word
        (its last sample is on time), a loss is. Samples early by more than the threshold are
        left out of the envelope; when they persist they undo the last re-indexing, or, if
        they are further back than the gap threshold, are a clock step (returns where the new
        segment starts). Returns None otherwise.
        """
        T = self._T
        thr = self._loss_threshold() / T  # periods, >= 0.5
        n = len(t)
        base = np.zeros(n)
        carry = self._early_r
        for _ in range(n + 1):
            u = (t - self._predict(k + base)) / T
            ok = u >= -thr
            lo = np.minimum.accumulate(np.where(ok, u, np.inf)[::-1])[::-1]
            lo = np.where(np.isfinite(lo), lo, 0.0)
            m = np.where(lo > thr, np.round(lo), 0.0)  # whole periods late: lost samples
            m = np.maximum.accumulate(m)
            r = u - m
            early = r < -thr
            if not early.any():
                break
            # Length of the early run each sample ends (counting the run the last chunk ended).
            pos = np.arange(n)
            last_ok = np.maximum.accumulate(np.where(~early, pos, -1))
            run = np.where(early, pos - last_ok, 0) + np.where(last_ok < 0, len(carry), 0)
            run[~early] = 0
            quick = self._pend_left > 0 and self._pend_m > 0
            trig = early & ((run >= self.early_confirm) | (quick & (-np.round(r) <= self._pend_m)))
            if not trig.any():
                break
            j = int(np.argmax(trig))
            s = j - int(run[j]) + 1
            vals = (carry if s < 0 else []) + r[max(s, 0) : j + 1].tolist()
            off = round(float(np.median(vals)))
            s = max(s, 0)
            carry = []
            if -off * T > self._gap_threshold():
                self._early_r = []
                return s
            if self._seg_missing < -off:
                break  # nothing re-indexed to undo: early jitter, left on the grid
            self._seg_missing += off
            base[s:] += off
            c = self.counters
            c.late += 1
            if self._pend_m > 0 and -off >= self._pend_m:
                c.gaps = max(0, c.gaps - 1)
            c.missing = max(0, c.missing + off)
            self._pend_m = 0
            self._pend_left = 0
        k += base + m
        dm = np.diff(np.concatenate(([0.0], m)))
        steps = np.flatnonzero(dm > 0)
        self.counters.gaps += len(steps)
        self.counters.missing += int(dm[steps].sum())
        self._seg_missing += int(dm[steps].sum())
        self._refine_gap(k, r, int(steps[0]) if steps.size else n)
        self._pend_left -= n
        if steps.size:
            i = int(steps[-1])
            self._pend_m = int(dm[i])
            self._pend_left = self.gap_confirm - (n - 1 - i)
            self._post = r[i:].tolist()
        # the run of early samples this chunk ends with, for the next chunk
        nt = self._tail_len(r < -thr)
        self._early_r = ((carry if nt == n else []) + r[n - nt :].tolist()) if nt else []
        return None

    def _refine_gap(self, k: np.ndarray, r: np.ndarray, stop: int) -> None:
        """Resize the last gap with the median residual of the samples after it (in place).

        For a stream too jittery for single losses (gap threshold): a gap found on a chunk's
        last stamps was sized from one or two jittered samples; the first `gap_confirm`
        samples after it (up to `stop`, the next gap) say by how many whole periods that was
        off. Sized back to zero, the "gap" was a late sample.
        """
        take = min(stop, self._pend_left)
        if self._pend_m <= 0 or take <= 0 or self._fine:  # fine: the envelope sized it
            return
        self._post += r[:take].tolist()
        if len(self._post) < min(3, self.gap_confirm):
            return
        j = round(float(np.median(self._post)))
        if j == 0 or -j > self._pend_m:
            return
        k += j
        r -= j
        self._post = [v - j for v in self._post]
        c = self.counters
        c.missing = max(0, c.missing + j)
        self._seg_missing += j
        self._pend_m += j
        if self._pend_m <= 0:
            c.gaps = max(0, c.gaps - 1)
            c.late += 1
            self._pend_m = self._pend_left = 0

    @staticmethod
    def _tail_len(flags: np.ndarray) -> int:
        """Number of trailing True values."""
        if flags.all():
            return len(flags)
        return int(np.argmin(flags[::-1]))

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

    def _fit(self, k: np.ndarray, t: np.ndarray) -> None:
        n = len(t)
        if n == 0:
            return
        r = t - self._predict(k)
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
            # A sample stamped together with the next one was stamped late: no evidence.
            w[:-1][np.diff(t) <= self.burst_fraction * self._T] = 0.0
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
        # Prior: the period is nominal within `rate_prior` (relative), weighed against the
        # residual scale. It defines the fit from one sample and keeps a young line from
        # tilting through the first lost samples; after a few seconds the data outweigh it.
        sig = max(self._scale if np.isfinite(self._scale) else 0.0, 0.05 * self.T0)
        p = (sig / (self.rate_prior * self.T0)) ** 2 if self.T0 > 0 else 1.0
        A = Suu + p
        det = S0 * A - Su * Su
        if det > 0:
            self._c = (A * Sv - Su * (Suv + p * self.T0)) / det
            T = (S0 * (Suv + p * self.T0) - Su * Sv) / det
            if T > 0:
                self._T = T
        self._seg_n += n
        self._k_next = int(k[-1]) + 1
        self._batch_k.append(k)
