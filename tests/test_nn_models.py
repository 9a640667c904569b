"""fusion.nn: model shapes, masks, streaming equivalence, features and model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.angles import yaw_matrix
from fusion.nn.checkpoint import load_model, save_model
from fusion.nn.features import (
    angles_from_output,
    heading_free_rotations,
    matrix_to_rot6d,
    normalise_inputs,
    rot6d_to_matrix,
)
from fusion.nn.models import KINDS, ModelConfig, build_model
from fusion.synth import BODY_FIELDS, SequenceParams, generate_sequence

pytestmark = pytest.mark.usefixtures("torch_one_thread")


SMALL = {"width": 16, "layers": 2, "heads": 4, "window": 8, "time_width": 32, "dropout": 0.0}


def _randomised(kind: str, seed: int = 0, **kw) -> torch.nn.Module:
    """A model with every weight random (fresh heads start at zero and would hide bugs)."""
    torch.manual_seed(seed)
    m = build_model(ModelConfig(kind=kind, **{**SMALL, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.1)
    return m


def _inputs(B: int, T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    imu = torch.randn(B, T, 13, 6, generator=g)
    im = torch.rand(B, T, 13, generator=g) > 0.2
    j = torch.randn(B, T, 17, 3, generator=g)
    jm = torch.rand(B, T, 17, generator=g) > 0.2
    return imu, im, j, jm


@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes(kind: str) -> None:
    m = _randomised(kind)
    with torch.no_grad():
        out = m(*_inputs(2, 11))
    assert out["rot6d"].shape == (2, 11, 13, 6)
    assert out["body"].shape == (2, 11, len(BODY_FIELDS))
    assert out["joints"].shape == (2, 11, 17, 3)
    assert ("rot6d_video" in out) == (kind == "fusionnet")
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("kind", KINDS)
def test_masked_values_do_not_reach_the_output(kind: str) -> None:
    m = _randomised(kind)
    imu, im, j, jm = _inputs(2, 12)
    with torch.no_grad():
        ref = m(imu, im, j, jm)["rot6d"]
        imu2, j2 = imu.clone(), j.clone()
        imu2[~im] = 1e3 * torch.randn(int((~im).sum()), 6)
        j2[~jm] = 1e3 * torch.randn(int((~jm).sum()), 3)
        got = m(imu2, im, j2, jm)["rot6d"]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        # ...while an unmasked value does change it (the model is not ignoring its inputs)
        if kind != "videonet":
            imu2[:, :, 4] += 1.0
            im2 = im.clone()
            im2[:, :, 4] = True
            assert (m(imu2, im2, j2, jm)["rot6d"] - ref).abs().max() > 1e-3


def test_unused_modality_is_ignored() -> None:
    imu, im, j, jm = _inputs(1, 10)
    with torch.no_grad():
        m = _randomised("imunet")
        a = m(imu, im, j, jm)["rot6d"]
        b = m(imu, im, torch.zeros_like(j), torch.zeros_like(jm))["rot6d"]
        torch.testing.assert_close(a, b)
        v = _randomised("videonet")
        a = v(imu, im, j, jm)["rot6d"]
        b = v(torch.zeros_like(imu), torch.zeros_like(im), j, jm)["rot6d"]
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kind", "fusion_start"), [(k, "video") for k in KINDS] + [("fusionnet", "head")]
)
def test_step_equals_forward(kind: str, fusion_start: str) -> None:
    """Streaming one frame at a time, past the attention window, gives forward()'s numbers
    (FusionNet with its refinement started from its video branch or, as IMUNet, a head)."""
    m = _randomised(kind, fusion_start=fusion_start)
    if kind == "fusionnet":
        assert (m.main.heads.rot0 is not None) == (fusion_start == "head")
    B, T = 3, 21  # > window = 8: the caches wrap
    x = _inputs(B, T)
    with torch.no_grad():
        full = m(*x)
        state = m.init_state(B)
        for t in range(T):
            out, state = m.step(state, *(v[:, t] for v in x))
            for k in out:
                torch.testing.assert_close(out[k], full[k][:, t], atol=1e-4, rtol=1e-4)
    # a head-start FusionNet's video branch serves only the training loss: not streamed
    skipped = {"rot6d_video"} if (kind, fusion_start) == ("fusionnet", "head") else set()
    assert set(full) - set(out) == skipped
    assert not any(k.startswith("video_") for k in state) or not skipped


@pytest.mark.parametrize(
    ("kind", "fusion_start"), [(k, "video") for k in KINDS] + [("fusionnet", "head")]
)
def test_chunks_equal_forward(kind: str, fusion_start: str) -> None:
    """Ticks that arrive together go through step_chunk in one pass: chunks of any length,
    across the cache's wrap, give forward()'s numbers and the state one-frame steps give."""
    m = _randomised(kind, fusion_start=fusion_start)
    B, T = 2, 23  # > window = 8
    x = _inputs(B, T)
    with torch.no_grad():
        full = m(*x)
        state, by_step = m.init_state(B), m.init_state(B)
        a = 0
        for size in (1, 3, 5, 2, 8, 4):
            out, state = m.step_chunk(state, *(v[:, a : a + size] for v in x))
            for t in range(a, a + size):
                _, by_step = m.step(by_step, *(v[:, t] for v in x))
            for k in out:
                assert out[k].shape[1] == size
                torch.testing.assert_close(out[k], full[k][:, a : a + size], atol=1e-4, rtol=1e-4)
            a += size
        assert a == T
        for k in state:
            torch.testing.assert_close(state[k], by_step[k], atol=1e-5, rtol=1e-5)
    assert int(state["n"][0]) == T


def test_imu_warm_start_gives_imunet_then_video_can_join() -> None:
    """load_imu_branch: a head-start FusionNet gives exactly the IMUNet's output whatever the
    video says; once its fusion weights move, the video reaches the output."""
    imunet = _randomised("imunet", seed=5)
    torch.manual_seed(0)
    f = build_model(ModelConfig(kind="fusionnet", fusion_start="head", **SMALL)).eval()
    f.load_video_branch(_randomised("videonet", seed=6))
    f.load_imu_branch(imunet)
    imu, im, j, jm = _inputs(2, 12)
    with torch.no_grad():
        want = imunet(imu, im, j, jm)
        got = f(imu, im, j, jm)
        for k in ("rot6d", "body", "joints"):
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5)
        other = f(imu, im, 3 * torch.randn_like(j), torch.ones_like(jm))["rot6d"]
        torch.testing.assert_close(other, want["rot6d"], atol=1e-5, rtol=1e-5)
        n_imu = 13 * SMALL["width"]
        f.pool_fused.weight[:, n_imu:].normal_(0.0, 0.1)  # what training would do
        assert (f(imu, im, j, jm)["rot6d"] - want["rot6d"]).abs().max() > 1e-3
    warm = f.warm_started_parameters(video=True, imu=True)
    assert "enc_imu.ident" in warm and "video.heads.rot0.weight" in warm
    assert not any(k.startswith(("pool_fused", "cross_")) for k in warm)
    # a video-start FusionNet takes the same IMU side (IMUNet's start head has no place)
    fv = build_model(ModelConfig(kind="fusionnet", **SMALL))
    fv.load_imu_branch(imunet)
    torch.testing.assert_close(fv.enc_imu.ident, imunet.enc_imu.ident)


def test_imu_warm_start_rejects_other_models() -> None:
    f = build_model(ModelConfig(kind="fusionnet", fusion_start="head", **SMALL))
    with pytest.raises(ValueError, match="needs a fusionnet and an imunet"):
        f.load_imu_branch(_randomised("videonet"))
    with pytest.raises(ValueError, match="does not fit"):
        f.load_imu_branch(_randomised("imunet", width=8))
    with pytest.raises(ValueError, match="fusion_start"):
        ModelConfig(kind="fusionnet", fusion_start="imu")
    # files written before fusion_start existed read as the video start
    old = {k: v for k, v in ModelConfig(kind="fusionnet").to_dict().items() if k != "fusion_start"}
    assert ModelConfig.from_dict(old).fusion_start == "video"
    head = ModelConfig(kind="fusionnet", fusion_start="head")
    assert head.imu_branch() == ModelConfig(kind="imunet")
    assert head.video_branch() == ModelConfig(kind="videonet")


def test_window_start_does_not_matter() -> None:
    """The banded attention: a frame's output depends on the last `window` frames (plus the
    conv history) only, not on where the sequence started."""
    m = _randomised("fusionnet")
    x = _inputs(1, 30)
    with torch.no_grad():
        a = m(*x)["rot6d"][:, -1]
        b = m(*(v[:, 10:] for v in x))["rot6d"][:, -1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_errors() -> None:
    cfg = ModelConfig(kind="imunet", width=24, heads=4, conv_kernels=(1, 3), lookahead=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="resnet")
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(width=30, heads=8)
    with pytest.raises(ValueError, match="lookahead"):
        ModelConfig(window=10, lookahead=10)
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"kind": "imunet", "depth": 3})


def test_bad_input_shapes_name_the_input() -> None:
    m = _randomised("imunet")
    imu, im, j, jm = _inputs(1, 5)
    with pytest.raises(ValueError, match="imu has shape"):
        m(imu[..., :5], im, j, jm)
    with pytest.raises(ValueError, match="joints_mask"):
        m.step(m.init_state(1), imu[:, 0], im[:, 0], j[:, 0], jm[:, 0, :16])


# -- features ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip() -> dict[str, np.ndarray]:
    return generate_sequence(
        SequenceParams(activity="walk", duration=3.0, n_cameras=0), seed=1_000_321
    ).arrays


def test_normalised_joints_are_heading_free(clip: dict[str, np.ndarray]) -> None:
    kp = clip["keypoints3d_noisy"]
    mask = np.ones(kp.shape[:2], bool)
    imu, im = clip["imu"], clip["imu_mask"]
    a = normalise_inputs(imu, im, kp, mask)
    turned = np.einsum("ij,tkj->tki", yaw_matrix(np.array(1.3)), kp) + np.array([4.0, -2.0, 0.0])
    b = normalise_inputs(imu, im, turned, mask)
    np.testing.assert_allclose(a[2], b[2], atol=1e-5)
    # numpy and torch give the same numbers; NaN IMU samples end up masked and zero
    t = normalise_inputs(*(torch.as_tensor(v) for v in (imu, im, kp, mask)))
    for x, y in zip(a, t, strict=True):
        np.testing.assert_allclose(x, y.numpy(), atol=1e-6)
    lost = ~clip["imu_mask"] | ~np.isfinite(clip["imu"]).all(-1)
    assert not a[1][lost].any() and np.all(a[0][lost] == 0) and np.isfinite(a[0]).all()


def test_masked_joints_are_zero_and_no_hips_masks_the_frame(clip: dict[str, np.ndarray]) -> None:
    kp = clip["keypoints3d_noisy"][:4].copy()
    mask = np.ones((4, 17), bool)
    mask[0, 3] = False
    mask[1, 7] = False  # hip_l missing: no root for that frame
    kp[0, 3] = np.nan
    _, _, j, jm = normalise_inputs(clip["imu"][:4], clip["imu_mask"][:4], kp, mask)
    assert not jm[0, 3] and np.all(j[0, 3] == 0) and jm[0].sum() == 16
    assert not jm[1].any() and np.all(j[1] == 0)
    with pytest.raises(ValueError, match="joints has shape"):
        normalise_inputs(clip["imu"][:4], clip["imu_mask"][:4], kp[:, :16], mask)


def test_rot6d_and_angles_from_output(clip: dict[str, np.ndarray]) -> None:
    R = heading_free_rotations(clip["rotations"], clip["heading"])
    np.testing.assert_allclose(rot6d_to_matrix(matrix_to_rot6d(R)), R, atol=1e-5)
    # the same motion walked in another direction has the same heading-free rotations ...
    turned = np.einsum("ij,tsjk->tsik", yaw_matrix(np.array(2.0)), clip["rotations"])
    np.testing.assert_allclose(heading_free_rotations(turned, clip["heading"] + 2.0), R, atol=1e-5)
    # ... which give the true clinical angles, pelvis and foot progression included
    ang = angles_from_output(R)
    err = (ang - clip["angles"] + 180.0) % 360.0 - 180.0
    assert np.abs(err).max() < 0.05
    # a perturbed rotation is an orthonormal matrix again after Gram-Schmidt
    r6 = matrix_to_rot6d(R) + 0.1
    M = rot6d_to_matrix(r6)
    np.testing.assert_allclose(np.einsum("...ji,...jk->...ik", M, M), np.eye(3) + 0 * M, atol=1e-5)


# -- model files -------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path) -> None:
    m = _randomised("fusionnet")
    path = save_model(tmp_path / "f.pt", m, m.cfg, {"steps": 3, "note": "x"})
    m2, cfg, meta = load_model(path)
    assert cfg == m.cfg and meta == {"steps": 3, "note": "x"} and not m2.training
    x = _inputs(1, 9)
    with torch.no_grad():
        torch.testing.assert_close(m2(*x)["rot6d"], m(*x)["rot6d"])


def test_bad_model_files_name_the_file(tmp_path) -> None:
    m = _randomised("imunet")
    good = save_model(tmp_path / "good.pt", m, m.cfg)
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "garbage.pt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "empty.pt": b"",
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=name):
            load_model(p)
    # mismatched: weights of an imunet under a videonet config
    blob = torch.load(good, weights_only=True)
    blob["config"]["kind"] = "videonet"
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match=r"mismatch\.pt.*do not match"):
        load_model(tmp_path / "mismatch.pt")
    blob = torch.load(good, weights_only=True)
    blob["config"]["width"] = 24
    torch.save(blob, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape\.pt.*shape"):
        load_model(tmp_path / "shape.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt.*not a gait-stream-nn"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_model(tmp_path / "nope.pt")


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_weights_load_and_track_a_held_out_clip(kind: str) -> None:
    """The weights in fusion/nn/weights/ load by name and follow a noisy held-out walk (seed
    >= 1_000_000, never trained on) far better than a model that knows nothing."""
    from fusion.nn.train import build_pool, evaluate_model

    model, cfg, meta = load_model(kind)
    assert cfg.kind == kind and cfg.lookahead == 0 and meta["train_seeds"][1] < 1_000_000
    pool = build_pool(
        [1_000_777],
        lambda s: SequenceParams(activity="walk", duration=6.0, n_cameras=0),
        workers=1,
    )
    rmse = evaluate_model(model, pool)["lower_rmse_deg"]
    blind = evaluate_model(build_model(cfg).eval(), pool)["lower_rmse_deg"]  # identity output
    assert rmse < 9.0 and rmse < 0.5 * blind, (rmse, blind)
