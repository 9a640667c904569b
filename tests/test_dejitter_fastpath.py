"""Dejitterer's scalar fast path (small chunks, steady state) against its numpy path.

Both run on the same chunks of ugly streams: jitter that changes, single and block losses,
packets stamped at once, stamps stepping back, clock resets and breaks, NaNs, 1-5 samples a
call. The fast path may only be faster: every output stamp, counter and piece of state must
be what the general path gives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fusion.dejitter import Dejitterer, _median, _np_sum, _percentile


def _ugly_stream(seed: int, n: int = 2400) -> tuple[float, np.ndarray]:
    """(nominal rate, raw stamps) with every anomaly the dejitter counts."""
    rng = np.random.default_rng(seed)
    rate = float(rng.choice([52.0, 100.0, 200.0, 256.0]))
    T = 1.0 / rate
    truth = 50.0 + np.arange(n) * T * (1 + rng.uniform(-3e-4, 3e-4))
    # jitter that changes: clean stretches (single losses re-indexed) and noisy ones (gaps only)
    sig = np.repeat(rng.choice([2e-5, 2e-4, 0.06 * T, 0.25 * T], size=8), -(-n // 8))[:n]
    st = truth + rng.normal(0, 1, n) * sig
    for a in rng.integers(0, n - 8, size=n // 40):  # packets stamped with their last arrival
        b = a + int(rng.integers(2, 7))
        st[a:b] = st[b - 1]
    back = rng.random(n) < 0.01  # a stamp a fraction of a period to 1.5 periods early
    st[back] -= rng.uniform(0.3, 1.5, back.sum()) * T
    keep = rng.random(n) >= 0.05  # 5 % single losses
    for a in rng.integers(0, n - 40, size=3):  # and a few lost blocks
        keep[a : a + int(rng.integers(5, 40))] = False
    i = int(rng.integers(n // 4, n // 2))
    st[i:] -= 50.0  # clock reset
    j = int(rng.integers(n // 2, 3 * n // 4))
    st[j:] += 15.0  # break (> 500 periods even at 52 Hz)
    k = int(rng.integers(3 * n // 4, n - 50))
    st[k:] -= 0.2  # a clock step back that stays (found by the early-run rule)
    st[rng.random(n) < 0.005] = np.nan
    return rate, st[keep]


def _same(a: Any, b: Any, where: str) -> None:
    """Equal state: numbers to 1e-9 relative (absolute for small ones), NaN as NaN."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        assert x.shape == y.shape, where
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=where)
    elif isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        x, y = float(a), float(b)
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9, abs=1e-9), (
            where,
            x,
            y,
        )
    else:
        assert a == b, (where, a, b)


def _state(dj: Dejitterer) -> dict[str, Any]:
    s = dict(vars(dj))
    s.pop("fast_path")
    s.pop("counters")
    s.pop("_out")  # this call's output pieces, already compared
    # jitter batch: the fast path queues lists, the general one arrays; same numbers
    s["_jq"] = [np.concatenate([np.asarray(q[i], float) for q in dj._jq] or [[]]) for i in (0, 1)]
    return s


@pytest.mark.parametrize(("seed", "max_chunk"), [(s, 5) for s in range(8)] + [(8, 20), (9, 32)])
def test_fast_path_gives_the_general_paths_stamps_counters_and_state(
    seed: int, max_chunk: int
) -> None:
    rate, st = _ugly_stream(seed)
    fast, slow = Dejitterer(rate), Dejitterer(rate, fast_path=False)
    taken = 0
    steady = fast._process_steady

    def counted(ts: np.ndarray) -> np.ndarray | None:
        nonlocal taken
        taken += 1
        return steady(ts)

    fast._process_steady = counted  # type: ignore[method-assign]
    rng = np.random.default_rng(100 + seed)
    i = calls = 0
    while i < len(st):
        m = int(rng.integers(1, max_chunk + 1))
        chunk = st[i : i + m]
        a, b = fast.process(chunk.copy()), slow.process(chunk.copy())
        assert a.shape == b.shape == chunk.shape
        np.testing.assert_array_equal(np.isnan(a), np.isnan(chunk))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, err_msg=f"call {calls}")
        assert fast.counters == slow.counters, f"call {calls}"
        if calls % 97 == 0:
            for key, val in _state(slow).items():
                _same(_state(fast)[key], val, f"call {calls}: {key}")
        i += m
        calls += 1
    for key, val in _state(slow).items():
        _same(_state(fast)[key], val, f"end: {key}")
    c = slow.counters
    # the stream really had every anomaly, and the fast path really carried most calls
    assert c.resets >= 2 and c.breaks >= 1 and c.invalid > 0 and c.bursts > 0
    assert c.gaps > 0 and c.backwards > 0
    assert taken > 0.6 * calls


def test_np_sum_rounds_as_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 129):
        a = rng.normal(size=n) * 10 ** rng.uniform(-6, 6, size=n)
        assert _np_sum(a.tolist()) == float(a.sum()), n


def test_percentile_and_median_round_as_numpy() -> None:
    """The jitter estimate's quantiles, without numpy's per-call overhead, to the last bit."""
    rng = np.random.default_rng(1)
    for n in range(1, 300):
        x = np.abs(rng.normal(size=n)) * 10 ** rng.uniform(-6, -2)
        if n % 7 == 0:
            x = np.round(x, 5)  # ties
        for q in (98, 50, 2, 100, 0):
            assert _percentile(x.copy(), q) == float(np.percentile(x, q)), (n, q)
        assert _median(x.copy()) == float(np.median(x)), n
