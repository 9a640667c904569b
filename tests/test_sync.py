"""The sync stage's stacked interpolation equals fusion.align.align_imu, stream by stream."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.align import align_imu
from services.actors.sync import interp_rows


def random_stream(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = 10.0 + np.cumsum(rng.choice([0.01, 0.01, 0.01, 0.02, 0.05], size=n))
    t += rng.normal(0, 5e-4, n)
    x = rng.normal(size=(n, 6))
    if n > 3:
        x[rng.integers(n)] = np.nan  # a corrupt sample
        t[rng.integers(1, n)] = t[rng.integers(n)]  # a duplicated stamp
    return t, x


@pytest.mark.parametrize("seed", range(20))
def test_interp_rows_matches_align_imu(seed: int) -> None:
    rng = np.random.default_rng(seed)
    streams = [random_stream(rng, int(rng.integers(0, 12))) for _ in range(13)]
    lo = min((t.min() for t, _ in streams if len(t)), default=10.0)
    ticks = np.arange(np.floor(lo * 60) - 2, np.floor(lo * 60) + 12) / 60.0
    # exact hits: some ticks equal a sample time
    for t, _ in streams[:3]:
        if len(t):
            ticks[rng.integers(len(ticks))] = t[rng.integers(len(t))]
    ticks.sort()
    streams = [(t, x) for t, x in streams if len(t)]
    values, mask = interp_rows([t for t, _ in streams], [x for _, x in streams], ticks, 0.03)
    for i, (t, x) in enumerate(streams):
        want_v, want_m = align_imu(t, x, ticks, 0.03)
        np.testing.assert_array_equal(mask[i], want_m, err_msg=f"stream {i}")
        np.testing.assert_allclose(values[i][want_m], want_v[want_m], rtol=1e-12, atol=1e-12)
        assert np.isnan(values[i][~want_m]).all()


def test_interp_rows_empty_inputs() -> None:
    v, m = interp_rows([], [], np.array([1.0]), 0.03)
    assert v.shape == (0, 1, 0) and m.shape == (0, 1)
    v, m = interp_rows([np.array([1.0])], [np.ones((1, 6))], np.zeros(0), 0.03)
    assert v.shape == (1, 0, 6) and not m.any()
