"""Noise models: defaults are the paper's, and each noise has the statistics it claims."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.noise import (
    DeviceClock,
    NoiseParams,
    add_imu_noise,
    add_joint_noise,
    add_keypoint2d_noise,
    burst_drop_mask,
    draw_clocks,
    joint_bias,
    joint_high_peak,
)


def _only(**kw: float) -> NoiseParams:
    return NoiseParams(**{**NoiseParams.clean().to_dict(), **kw})


def test_defaults_are_the_papers_values() -> None:
    p = NoiseParams()
    assert (p.joint_jitter_mm, p.high_peak_mm, p.high_peak_fraction, p.joint_bias_mm) == (
        12.0,
        250.0,
        0.03,
        25.0,
    )
    assert p.imu_misplacement_deg == 13.5
    assert NoiseParams.from_dict(p.to_dict()) == p


def test_joint_noise_statistics_and_units() -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, size=(4000, 17, 3))
    # jitter alone: per-axis σ 12 mm (in metres); 204k samples → σ within 1 %
    d = add_joint_noise(clean, rng, _only(joint_jitter_mm=12.0)) - clean
    assert abs(d.std() - 0.012) < 0.012 * 0.01
    assert abs(d.mean()) < 1e-4
    # high peaks: 3 % of joint-frames, σ 250 mm on those, untouched elsewhere
    out, hit = joint_high_peak(clean, rng, 0.25, 0.03)
    assert abs(hit.mean() - 0.03) < 0.002
    d = out - clean
    assert np.all(d[~hit] == 0.0)
    assert abs(d[hit].std() - 0.25) < 0.25 * 0.03
    # bias: constant in time per joint, σ 25 mm across joints
    many = np.zeros((5, 20000, 3))
    d = joint_bias(many, rng, 0.025)
    assert np.all(d == d[0])
    assert abs(d[0].std() - 0.025) < 0.025 * 0.02
    # all together: the combined error variance is the sum of the three
    d = add_joint_noise(clean, rng, NoiseParams()) - clean
    want = 0.012**2 + 0.03 * 0.25**2
    var = ((d - d.mean(axis=0)) ** 2).mean()  # bias removed by centring per joint
    assert abs(var - want) < want * 0.05


def test_keypoint2d_noise_misses_and_invisible() -> None:
    rng = np.random.default_rng(1)
    uv = rng.uniform(0, 1000, size=(2000, 4, 17, 2))
    vis = rng.random(uv.shape[:-1]) > 0.2
    out = add_keypoint2d_noise(uv, vis, rng, NoiseParams())
    assert out.shape == (2000, 4, 17, 3)
    assert np.all(out[~vis] == 0.0)  # not visible → (0, 0, 0)
    det = out[..., 2] > 0
    assert not np.any(det & ~vis)
    miss = 1 - det[vis].mean()
    assert abs(miss - 0.03) < 0.003
    err = out[det][:, :2] - uv[det]
    assert abs(err.std() - 4.0) < 4.0 * 0.01
    conf = out[det][:, 2]
    assert conf.min() >= 0.5 and conf.max() <= 1.0
    clean = add_keypoint2d_noise(uv, vis, rng, NoiseParams.clean())
    np.testing.assert_array_equal(clean[vis][:, :2], uv[vis])
    np.testing.assert_array_equal(clean[vis][:, 2], 1.0)


def test_imu_noise_bias_white_saturation_and_drops() -> None:
    rng = np.random.default_rng(2)
    T, S = 20000, 13
    clean = np.zeros((T, S, 6))
    clean[..., 5] = 9.81
    noisy, mask = add_imu_noise(clean, rng, _only(gyro_noise=0.005, acc_noise=0.05))
    assert mask.all()
    d = noisy - clean
    assert abs(d[..., :3].std() - 0.005) < 0.005 * 0.01
    assert abs(d[..., 3:].std() - 0.05) < 0.05 * 0.01
    noisy, _ = add_imu_noise(clean, rng, _only(gyro_bias=0.01, acc_bias=0.05))
    d = noisy - clean
    assert np.all(d == d[0])  # bias only: constant in time
    # saturation at full scale
    hot = np.full((3, 1, 6), 1e4)
    sat, _ = add_imu_noise(hot, rng, NoiseParams.clean())
    np.testing.assert_allclose(sat[0, 0, :3], np.radians(2000.0))
    np.testing.assert_allclose(sat[0, 0, 3:], 16 * 9.81)
    # drops: NaN exactly where the mask says so, 0.5 % in bursts of mean length 3
    noisy, mask = add_imu_noise(clean, rng, NoiseParams())
    assert np.array_equal(np.isnan(noisy).any(axis=-1), ~mask)
    assert np.array_equal(np.isnan(noisy).all(axis=-1), ~mask)
    assert abs((~mask).mean() - 0.005) < 0.0007
    lost = ~mask
    starts = lost & ~np.vstack([np.zeros((1, S), bool), lost[:-1]])
    assert abs(lost.sum() / starts.sum() - 3.0) < 0.3


def test_burst_mask_edge_cases() -> None:
    rng = np.random.default_rng(3)
    assert burst_drop_mask(100, 2, rng, 0.0, 3.0).all()
    assert burst_drop_mask(0, 2, rng, 0.5, 3.0).shape == (0, 2)
    m = burst_drop_mask(50000, 1, rng, 0.2, 1.0)  # single-sample drops
    assert abs((~m).mean() - 0.2) < 0.01


def test_device_clocks() -> None:
    rng = np.random.default_rng(4)
    clocks = draw_clocks(4000, rng, NoiseParams(), kind="camera")
    off = np.array([c.offset for c in clocks])
    assert abs(off.std() - 0.2) < 0.2 * 0.05
    assert all(c.jitter_s == 0.002 for c in clocks)
    c = DeviceClock(offset=1.5, drift_ppm=50.0, jitter_s=0.001)
    t = np.arange(0, 100, 0.01)
    stamped = c.stamp(t, rng)
    resid = c.to_true(stamped) - t
    assert abs(resid.std() - 0.001) < 0.0001
    assert abs(resid.mean()) < 1e-4
    np.testing.assert_allclose(
        DeviceClock(offset=1.5, drift_ppm=50.0).stamp(t, rng), t * (1 + 5e-5) + 1.5
    )


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"joint_jitter_mm": -1.0}, "NoiseParams.joint_jitter_mm=-1.0: must be finite and >= 0"),
        ({"high_peak_fraction": 1.5}, "high_peak_fraction=1.5: is a fraction"),
        ({"imu_drop_mean_len": 0.0}, "imu_drop_mean_len=0.0: must be > 0"),
        ({"gyro_noise": float("nan")}, "gyro_noise=nan"),
        ({"acc_bias": "high"}, "acc_bias='high': must be a number"),
    ],
)
def test_bad_parameters_raise_clear_errors(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        NoiseParams(**kw)


def test_bad_inputs_raise_clear_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="expected \\(T, sensors, 6\\)"):
        add_imu_noise(np.zeros((10, 13, 3)), rng, NoiseParams())
    with pytest.raises(ValueError, match="joints, 3"):
        add_joint_noise(np.zeros((10, 17, 2)), rng, NoiseParams())
    with pytest.raises(ValueError, match="kind='lidar'"):
        draw_clocks(2, rng, NoiseParams(), kind="lidar")
    with pytest.raises(ValueError, match="unknown parameters"):
        NoiseParams.from_dict({"jitter": 1.0})
