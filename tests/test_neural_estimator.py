"""NeuralEstimator on a tiny untrained GaitNet (random weights, so outputs depend on inputs):
shapes, the look-ahead delay, batching = one subject at a time = the model's forward, masks,
subjects leaving and joining, the ONNX back-end, and bad weight files."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch

from fusion.estimators.base import SyncedBatch
from fusion.estimators.neural import NeuralEstimator, measure_speed
from fusion.estimators.registry import create
from fusion.nn.features import angles_from_output, normalise_inputs
from fusion.nn.models import ModelConfig, build_model
from fusion.skeleton import ANGLES, KEYPOINTS, SEGMENT_INDEX, SEGMENTS

LOOKAHEAD = 2


def tiny(kind: str = "fusionnet", lookahead: int = LOOKAHEAD):
    cfg = ModelConfig(
        kind=kind,
        width=8,
        layers=1,
        heads=2,
        window=8,
        time_width=16,
        lookahead=lookahead,
        dropout=0.0,
        iterations=1,
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # fresh heads output the identity whatever the input: perturb
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model, cfg, {}


def stream(n: int, seed: int) -> SyncedBatch:
    rng = np.random.default_rng(seed)
    joints = np.array([0.0, 0.0, 1.0]) + 0.3 * rng.standard_normal((n, len(KEYPOINTS), 3))
    imu = rng.standard_normal((n, len(SEGMENTS), 6))
    imu[..., 5] += 9.81
    return SyncedBatch(
        t=10.0 + np.arange(n) / 60.0,
        imu=imu,
        imu_mask=np.ones((n, len(SEGMENTS)), bool),
        keypoints=np.zeros((n, 0, len(KEYPOINTS), 3)),
        keypoint_mask=np.zeros((n, 0), bool),
        joints3d=joints,
    )


def run(est: NeuralEstimator, batches: dict[str, SyncedBatch], chunk: int = 3):
    """Feed subjects chunk by chunk through update_many; concatenated answers per subject."""
    out = {s: ([], []) for s in batches}
    n = max(len(b) for b in batches.values())
    for a in range(0, n, chunk):
        part = {s: b.slice(a, a + chunk) for s, b in batches.items() if a < len(b)}
        for s, r in est.update_many(part).items():
            out[s][0].append(r.t)
            out[s][1].append(r.angles)
    return {s: (np.concatenate(t), np.concatenate(a)) for s, (t, a) in out.items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny per-tick ops: a thread pool only adds waiting (and the CI machine is shared)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    return tiny()


def test_shapes_and_lookahead_delay(model) -> None:
    est = NeuralEstimator("tiny", model=model, backend="torch", device="cpu")
    b = stream(10, 1)
    first = est.update("s", b.slice(0, 2))
    assert len(first.t) == 0  # the first `lookahead` ticks describe nothing yet
    r = est.update("s", b.slice(2, 10))
    assert r.angles.shape == (8, len(ANGLES))
    np.testing.assert_array_equal(r.t, b.t[:8])  # tick n answers for tick n - lookahead
    assert np.isfinite(r.angles).all()
    assert est.lookahead == LOOKAHEAD and est.modalities == {"imu", "video"}
    info = est.info()
    assert info["backend"] == "torch" and info["device"] == "cpu" and info["subjects"] == 1


def test_streaming_equals_the_models_forward(model) -> None:
    m, _cfg, _ = model
    b = stream(20, 2)
    est = NeuralEstimator("tiny", model=model, backend="torch", device="cpu")
    t, A = run(est, {"s": b}, chunk=7)["s"]
    x = [
        torch.from_numpy(v)[None]
        for v in normalise_inputs(b.imu, b.imu_mask, b.joints3d, b.joints3d_mask)
    ]
    with torch.no_grad():
        full = m(*x)["rot6d"][0]
    want = angles_from_output(full.numpy())[LOOKAHEAD:]  # frame n describes n - lookahead
    np.testing.assert_array_equal(t, b.t[: 20 - LOOKAHEAD])
    np.testing.assert_allclose(A, want, atol=1e-3)


def test_three_subjects_batched_equal_one_at_a_time(model) -> None:
    subs = {"a": stream(15, 3), "b": stream(12, 4), "c": stream(15, 5)}
    subs["b"].imu_mask[:, SEGMENT_INDEX["thigh_l"]] = False
    batched = NeuralEstimator("tiny", model=model, backend="torch", device="cpu")
    together = run(batched, subs, chunk=4)
    for s, b in subs.items():
        alone = run(NeuralEstimator("tiny", model=model, backend="torch", device="cpu"), {s: b})
        np.testing.assert_array_equal(together[s][0], alone[s][0])
        np.testing.assert_allclose(
            together[s][1], alone[s][1], atol=1e-2
        )  # degrees; float32 sums differ by batch
    # a subject joining later starts from a fresh cache
    late = NeuralEstimator("tiny", model=model, backend="torch", device="cpu")
    run(late, {"a": subs["a"]})
    joined = run(late, {"c": subs["c"]})
    np.testing.assert_allclose(
        joined["c"][1], together["c"][1], atol=1e-2
    )  # degrees; float32 sums differ by batch
    # one leaving (reset) and a new one reusing its row also starts fresh
    late.reset("a")
    again = run(late, {"z": subs["c"]})
    np.testing.assert_allclose(
        again["z"][1], together["c"][1], atol=1e-2
    )  # degrees; float32 sums differ by batch


def test_missing_imu_and_missing_modality_still_give_angles(model) -> None:
    b = stream(12, 6)
    b.imu_mask[:, SEGMENT_INDEX["shank_r"]] = False
    b.imu[:, SEGMENT_INDEX["shank_r"]] = np.nan
    est = NeuralEstimator("tiny", model=model, backend="torch", device="cpu")
    _, A = run(est, {"s": b})["s"]
    assert A.shape == (12 - LOOKAHEAD, len(ANGLES)) and np.isfinite(A).all()
    full = stream(12, 6)
    _, B = run(NeuralEstimator("tiny", model=model, backend="torch", device="cpu"), {"s": full})[
        "s"
    ]
    assert not np.allclose(A, B)  # the mask reached the model
    no_video = stream(12, 7)
    no_video.joints3d_mask[:] = False
    _, C = run(
        NeuralEstimator("tiny", model=model, backend="torch", device="cpu"), {"s": no_video}
    )["s"]
    assert np.isfinite(C).all()


def test_video_without_joints_or_cameras_is_a_clear_error(model) -> None:
    n = 4
    b = SyncedBatch(
        t=np.arange(n) / 60.0,
        imu=np.zeros((n, 13, 6)),
        imu_mask=np.ones((n, 13), bool),
        keypoints=np.ones((n, 2, 17, 3)),
        keypoint_mask=np.ones((n, 2), bool),
    )
    est = NeuralEstimator("tiny", model=model, backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"subject s9.*cameras"):
        est.update("s9", b)


def test_bad_weight_files_name_the_file(tmp_path, model) -> None:
    importlib.import_module("fusion.estimators.fusionnet")  # registers, as the runtime does
    importlib.import_module("fusion.estimators.imunet")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ValueError, match=r"broken\.pt"):
        create("fusionnet", weights=str(bad), backend="torch")
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt"):
        NeuralEstimator(tmp_path / "nothere.pt", backend="torch")
    with pytest.raises(ValueError, match="lookahead=0 asked for"):
        NeuralEstimator("tiny", model=model, lookahead=0, backend="torch")
    with pytest.raises(ValueError, match="options are"):
        create("imunet", weights=str(bad), colour="red")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime")
def test_onnx_backend_gives_the_torch_numbers(model) -> None:
    subs = {"a": stream(14, 8), "b": stream(10, 9)}
    onnx = NeuralEstimator("tiny", model=model, backend="onnx", device="cpu")
    assert onnx.backend == "onnx"
    torch_ = NeuralEstimator("tiny", model=model, backend="torch", device="cpu")
    got, want = run(onnx, subs), run(torch_, subs)
    for s in subs:
        np.testing.assert_allclose(got[s][1], want[s][1], atol=1e-3)
    rows = measure_speed(onnx, subjects=(1, 2), ticks=5)
    modes = {r["mode"].split(" ")[0] for r in rows}
    assert {"step/torch", "step/onnx", "full_window/torch"} <= modes
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
