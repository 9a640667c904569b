"""fusion.nn.train: a tiny real training run learns, resumes, and keeps off held-out seeds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fusion.nn.checkpoint import load_model, save_model
from fusion.nn.features import JOINT_SCALE
from fusion.nn.models import ModelConfig, build_model
from fusion.nn.train import (
    PRESETS,
    Batcher,
    build_pool,
    evaluate_model,
    geodesic,
    losses,
    sequence_params_for,
    train,
    train_seeds,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# 4 sequences of 4 s, one 10 s validation clip, 30 steps of a small model
FAST = replace(PRESETS["tiny"], pool_hours=16 / 3600, sequence_seconds=4.0, max_steps=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("train")
    cache = out / "pool.npz"
    summary = train("imunet", FAST, out, seed=3, pool_cache=cache, workers=1, progress_bar=False)
    return {"out": out, "cache": cache, "summary": summary}


def _mean_loss(model: torch.nn.Module, pool, cfg: ModelConfig) -> float:
    b = Batcher(pool, replace(FAST, batch=16), cfg, seed=123)
    model.eval()
    with torch.no_grad():
        vals = []
        for _ in range(3):
            x = b(torch.device("cpu"))
            out = model(x["imu"], x["imu_mask"], x["joints"], x["joints_mask"])
            vals.append(float(losses(out, x, cfg, FAST.loss_skip)["total"]))
    return float(np.mean(vals))


def test_tiny_training_reduces_the_loss(trained: dict) -> None:
    s = trained["summary"]
    assert s["steps"] == FAST.max_steps
    model, cfg, meta = load_model(s["path"])
    assert cfg.kind == "imunet" and meta["preset"] == "tiny" and meta["steps"] >= 1
    assert meta["train_seeds"][1] < 1_000_000 and meta["val_seeds"][0] >= 500_000
    pool = build_pool(
        train_seeds(FAST),
        lambda s: sequence_params_for(s, 0, FAST.sequence_seconds),
        workers=1,
        cache=trained["cache"],
    )
    torch.manual_seed(3)
    fresh = build_model(cfg)
    assert _mean_loss(model, pool, cfg) < 0.9 * _mean_loss(fresh, pool, cfg)


def test_resume_continues_the_step_count(trained: dict) -> None:
    out = trained["out"]
    more = replace(FAST, max_steps=FAST.max_steps + 5)
    s = train(
        "imunet",
        more,
        out,
        seed=3,
        resume=out / "last.pt",
        pool_cache=trained["cache"],
        workers=1,
        progress_bar=False,
    )
    assert s["steps"] == FAST.max_steps + 5
    with pytest.raises(ValueError, match="config"):
        train(
            "videonet",
            more,
            out,
            resume=out / "last.pt",
            pool_cache=trained["cache"],
            workers=1,
            progress_bar=False,
        )


def test_pool_cache_is_reused_and_checked(trained: dict, tmp_path) -> None:
    seeds = train_seeds(FAST)
    pool = build_pool(seeds, lambda s: sequence_params_for(s, 0, 4.0), 1, trained["cache"])
    assert len(pool) == len(seeds) and pool.n_frames == len(seeds) * 240
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        build_pool(seeds, lambda s: sequence_params_for(s, 0, 4.0), 1, bad)


def test_each_window_gets_fresh_joint_noise(trained: dict) -> None:
    """The same windows drawn twice carry different joint noise, of the noise model's size
    around the clean joints; with renoise_joints off they are the pool's noisy joints."""
    from fusion.nn.features import normalise_joints

    seeds = train_seeds(FAST)
    pool = build_pool(seeds, lambda s: sequence_params_for(s, 0, 4.0), 1, trained["cache"])
    cfg = ModelConfig(kind="videonet", **FAST.model)
    b = Batcher(pool, FAST, cfg, seed=5)
    idx = np.arange(3)[:, None] * 240 + np.arange(20)[None]
    one, two = b._fresh_joints(idx), b._fresh_joints(idx)
    kp = pool.arrays["kp_world"][idx]
    clean = normalise_joints(kp, np.ones(kp.shape[:-1], bool))[0]
    assert one.shape == two.shape == clean.shape == pool.arrays["joints"][idx].shape
    assert not np.allclose(one, two)
    for noisy in (one, two):  # jitter ≥ 5 mm, bias ≤ 50 mm σ, 250 mm peaks on ≤ 6 %: a few cm
        rms_m = float(np.sqrt(np.mean((noisy - clean) ** 2))) * JOINT_SCALE
        assert 0.004 < rms_m < 0.15, rms_m
    off = Batcher(pool, replace(FAST, renoise_joints=False), cfg, seed=5)
    x = off(torch.device("cpu"))
    assert np.isin(x["joints"].numpy()[x["joints_mask"].numpy()], pool.arrays["joints"]).all()


def test_held_out_seeds_are_refused() -> None:
    with pytest.raises(ValueError, match="1_000_000"):
        build_pool([0, 1_000_001], lambda s: sequence_params_for(s, 0, 4.0), 1)


def test_geodesic_is_the_rotation_angle() -> None:
    a = torch.tensor([0.0, 0.3, 1.0, 3.0])
    c, s = torch.cos(a), torch.sin(a)
    R = torch.zeros(4, 3, 3)
    R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1], R[:, 2, 2] = c, -s, s, c, 1.0
    I3 = torch.eye(3).expand(4, 3, 3)
    torch.testing.assert_close(geodesic(R, I3), a, atol=1e-3, rtol=0)


def test_init_imu_copies_the_imunet_and_rejects_a_mismatched_file(trained: dict, tmp_path) -> None:
    """--init-imu: before any step the FusionNet holds the IMUNet's IMU side and scores the
    IMUNet's validation error exactly (its video columns start at zero); the copied weights
    train at warm_lr_scale. A file of another kind or shape is refused, naming the file."""
    imu_file = trained["summary"]["path"]
    imunet, _, imu_meta = load_model(imu_file)
    kw = {"pool_cache": trained["cache"], "workers": 1, "progress_bar": False}
    s = train("fusionnet", replace(FAST, max_steps=0), tmp_path / "f", init_imu=imu_file, **kw)
    fus, cfg, meta = load_model(s["path"])
    assert cfg.fusion_start == "head" and meta["warm_start"] == {"init-imu": str(imu_file)}
    src = imunet.state_dict()
    for k, v in fus.state_dict().items():
        if k.startswith(("enc_imu.", "main.")):
            torch.testing.assert_close(v, src[k], rtol=0, atol=0)
    assert s["history"][0]["step"] == 0
    assert s["history"][0]["val_lower_rmse_deg"] == pytest.approx(
        imu_meta["validation"]["lower_rmse_deg"], abs=2e-3
    )
    groups = torch.load(tmp_path / "f" / "last.pt", weights_only=False)["optimizer"]
    assert [g["lr_scale"] for g in groups["param_groups"]] == [1.0, FAST.warm_lr_scale]
    # no video: validation with the joints masked gives the same (the IMU side alone)
    assert s["history"][0]["val_no_video_lower_rmse_deg"] == pytest.approx(
        s["history"][0]["val_lower_rmse_deg"], abs=1e-3
    )
    # resuming needs no warm-start flags (the start and the learning-rate groups are kept)
    more = train(
        "fusionnet",
        replace(FAST, max_steps=2),
        tmp_path / "f",
        resume=tmp_path / "f" / "last.pt",
        **kw,
    )
    assert more["steps"] == 2
    # mismatched files
    other = build_model(ModelConfig(kind="imunet", **{**FAST.model, "width": 8}))
    narrow = save_model(tmp_path / "narrow_imunet.pt", other, other.cfg)
    with pytest.raises(ValueError, match=r"--init-imu .*narrow_imunet\.pt.*width"):
        train("fusionnet", replace(FAST, max_steps=0), tmp_path / "g", init_imu=narrow, **kw)
    with pytest.raises(ValueError, match=r"--init-video .*imunet\.pt.*kind"):
        train("fusionnet", replace(FAST, max_steps=0), tmp_path / "g", init_video=imu_file, **kw)
    with pytest.raises(ValueError, match="only apply to fusionnet"):
        train("imunet", FAST, tmp_path / "g", init_imu=imu_file, **kw)


def test_init_fine_tunes_a_whole_model_and_never_ships_worse(trained: dict, tmp_path) -> None:
    """--init: the run starts from the file (same weights and config, validated at step 0),
    every parameter at warm_lr_scale, and its best weights are at least as good as the file's.
    A file of another kind, or --init with a warm start, is refused naming the file."""
    src_file = trained["summary"]["path"]
    src, src_cfg, src_meta = load_model(src_file)
    kw = {"pool_cache": trained["cache"], "workers": 1, "progress_bar": False}
    s = train("imunet", replace(FAST, max_steps=0), tmp_path / "a", init=src_file, **kw)
    same, cfg, meta = load_model(s["path"])
    assert cfg == src_cfg and meta["warm_start"] == {"init": str(src_file)}
    for k, v in same.state_dict().items():
        torch.testing.assert_close(v, src.state_dict()[k], rtol=0, atol=0)
    start = s["history"][0]
    assert start["step"] == 0
    assert start["val_lower_rmse_deg"] == pytest.approx(
        src_meta["validation"]["lower_rmse_deg"], abs=2e-3
    )
    groups = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["optimizer"]
    assert [g["lr_scale"] for g in groups["param_groups"]] == [FAST.warm_lr_scale]
    more = train(
        "imunet", replace(FAST, max_steps=10, val_every=5), tmp_path / "b", init=src_file, **kw
    )
    _, _, best_meta = load_model(more["path"])
    assert [r["step"] for r in more["history"]][:3] == [0, 5, 10]
    assert best_meta["validation"]["lower_rmse_deg"] <= start["val_lower_rmse_deg"] + 1e-3
    with pytest.raises(ValueError, match=r"--init .*imunet\.pt: a imunet model, not a videonet"):
        train("videonet", FAST, tmp_path / "c", init=src_file, **kw)
    with pytest.raises(ValueError, match="--init cannot be combined"):
        train("fusionnet", FAST, tmp_path / "c", init=src_file, init_imu=src_file, **kw)


def test_evaluate_model_can_drop_a_modality(trained: dict) -> None:
    model, _, _ = load_model(trained["summary"]["path"])  # an IMUNet: needs its IMUs
    pool = build_pool(
        train_seeds(FAST)[:1],
        lambda s: sequence_params_for(s, 0, FAST.sequence_seconds),
        workers=1,
        cache=trained["cache"].with_name("one.npz"),
    )
    full = evaluate_model(model, pool, warmup=4)["lower_rmse_deg"]
    assert evaluate_model(model, pool, warmup=4, drop="video")["lower_rmse_deg"] == full
    assert evaluate_model(model, pool, warmup=4, drop="imu")["lower_rmse_deg"] != full
    with pytest.raises(ValueError, match="drop"):
        evaluate_model(model, pool, drop="camera")
