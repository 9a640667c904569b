"""NeuralEstimator on a tiny untrained GaitNet (random weights, so outputs depend on inputs):
shapes, the look-ahead delay, batching = one subject at a time = the model's forward, masks,
subjects leaving and joining, the ONNX back-end and its on-disk graph cache (miss, hit, corrupt
or stale file, key following the weights), and bad weight files."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.estimators import neural
from fusion.estimators.base import SyncedBatch
from fusion.estimators.gyro_refine import GyroRefineConfig, GyroRefiner
from fusion.estimators.neural import NeuralEstimator, measure_speed
from fusion.estimators.onnx_graph import cache_dir, export_graph, graph_key
from fusion.estimators.registry import create
from fusion.nn.checkpoint import save_model
from fusion.nn.features import angles_from_output, normalise_inputs, rot6d_to_matrix
from fusion.nn.models import ModelConfig, build_model
from fusion.skeleton import ANGLES, KEYPOINTS, SEGMENT_INDEX, SEGMENTS

LOOKAHEAD = 2
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime"
)


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


def smooth_stream(n: int, seed: int) -> SyncedBatch:
    """`stream` with inputs that change slowly from tick to tick (gyros ~0.5 rad/s)."""
    b = stream(n, seed)
    rng = np.random.default_rng(seed)
    wave = np.sin(
        2 * np.pi * rng.uniform(0.5, 2.0, (1, 1, 6)) * b.t[:, None, None]
        + rng.uniform(0, 6, (1, 1, 6))
    )
    b.imu[:] = 0.5 * wave * rng.standard_normal((1, len(SEGMENTS), 6)) + [0, 0, 0, 0, 0, 9.81]
    b.joints3d[:] = b.joints3d[:1] + 0.02 * wave[..., :3][:, :1] * rng.standard_normal(
        (1, len(KEYPOINTS), 3)
    )
    return b


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


#: the gyro refinement with almost no warm-up, so that a short random stream reaches it
QUICK_REFINE = {"warm_s": 0.02, "span": 6}


def test_the_gyro_refinement_gets_each_answers_own_gyro(model) -> None:
    """With look-ahead L the answer of tick n describes tick n - L: the refinement must be
    fed that tick's gyro, and its answers are GyroRefiner's on the model's own rotations,
    however the stream is cut into calls and whoever else is in them."""
    m, _cfg, _ = model
    b = smooth_stream(40, 8)  # so that the model's answers and the gyros stay near each other
    b.imu[20:23, SEGMENT_INDEX["thigh_r"]] = np.nan  # a gap the refinement must see
    b.imu_mask[20:23, SEGMENT_INDEX["thigh_r"]] = False
    make = lambda r: NeuralEstimator(  # noqa: E731
        "tiny", model=model, backend="torch", device="cpu", gyro_refine=r
    )
    x = [
        torch.from_numpy(v)[None]
        for v in normalise_inputs(b.imu, b.imu_mask, b.joints3d, b.joints3d_mask)
    ]
    with torch.no_grad():
        rot = rot6d_to_matrix(m(*x)["rot6d"][0].numpy())[LOOKAHEAD:].astype(np.float64)
    n = len(rot)
    gyro = np.where(b.imu_mask[:n, :, None], b.imu[:n, :, :3], np.nan)
    ref = GyroRefiner(GyroRefineConfig(**QUICK_REFINE))
    want = angles_from_output(
        np.stack(
            [ref.step(["s"], b.t[i : i + 1], rot[i : i + 1], gyro[i : i + 1])[0] for i in range(n)]
        )
    )
    for chunk in (1, 7):
        t, A = run(make(QUICK_REFINE), {"s": b, "other": stream(33, 9)}, chunk=chunk)["s"]
        np.testing.assert_array_equal(t, b.t[:n])
        np.testing.assert_allclose(A, want, atol=1e-2)  # degrees; float32 model sums
    raw = run(make(False), {"s": b})["s"][1]
    assert np.abs(raw - want).max() > 1.0  # the refinement did something here
    assert make(False).info()["gyro_refine"] is None
    assert make(QUICK_REFINE).info()["gyro_refine"]["warm_s"] == 0.02
    with pytest.raises(ValueError, match="its settings are"):
        make({"tau": 1.0})
    with pytest.raises(ValueError, match="tau_s"):
        make({"tau_s": -1.0})


def test_the_gyro_refinement_is_asked_for_and_needs_imus() -> None:
    plain = NeuralEstimator("tiny", model=tiny("imunet"), backend="torch", device="cpu")
    assert plain.refiner is None and plain.info()["gyro_refine"] is None  # off by default
    video = NeuralEstimator(
        "tiny", model=tiny("videonet"), backend="torch", device="cpu", gyro_refine=True
    )
    assert video.refiner is None and video.info()["gyro_refine"] is None


@pytest.mark.parametrize(
    "backend", ["torch", pytest.param("onnx", marks=needs_onnx)], ids=["torch", "onnx"]
)
def test_a_backlog_of_ticks_gives_the_tick_by_tick_numbers(model, backend) -> None:
    """Ticks that queued up (here 45, more than MAX_CHUNK) go through step_chunk in pieces
    and give what one tick per call gives, for subjects with backlogs of different lengths."""
    subs = {"a": stream(45, 3), "b": stream(30, 4)}
    make = lambda: NeuralEstimator("tiny", model=model, backend=backend, device="cpu")  # noqa: E731
    assert neural.MAX_CHUNK < 45
    got, want = run(make(), subs, chunk=45), run(make(), subs, chunk=1)
    for s in subs:
        np.testing.assert_array_equal(got[s][0], want[s][0])
        assert np.isfinite(got[s][1]).all() and len(got[s][1]) == len(subs[s]) - LOOKAHEAD
        # float32 sums in another order; this random model's angles reach ±180°
        np.testing.assert_allclose(got[s][1], want[s][1], rtol=0, atol=1e-2)


@needs_onnx
@pytest.mark.parametrize("kind", ["imunet", "videonet"])
def test_single_modality_models_run_on_onnx(kind: str) -> None:
    """The exporter drops the inputs a model never reads (IMUNet's joints, VideoNet's IMU):
    such a graph is still used, fed only what it takes (it fell back to torch before)."""
    m = tiny(kind)
    subs = {"a": stream(12, 8), "b": stream(9, 9)}
    onnx = NeuralEstimator("tiny", model=m, backend="onnx", device="cpu")
    auto = NeuralEstimator("tiny", model=m, backend="auto", device="cpu")
    assert onnx.backend == auto.backend == "onnx", auto.backend_note
    torch_ = NeuralEstimator("tiny", model=m, backend="torch", device="cpu")
    got, want = run(onnx, subs), run(torch_, subs)
    for s in subs:
        np.testing.assert_allclose(got[s][1], want[s][1], atol=1e-3)


@needs_onnx
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


@needs_onnx
def test_the_exported_step_reads_no_more_shapes_with_more_layers() -> None:
    """The streaming step's per-layer and per-conv work has no shape arithmetic (the band of
    visible keys is computed once, caches are cut by constant slices, the convolutions need
    no reshape): a 4-layer, 4-conv FusionNet's graph reads as many shapes as a 1-layer,
    1-conv one. Each Shape chain was a few ONNX Runtime kernels per tick."""
    import onnx

    def shapes(layers: int, kernels: tuple[int, ...]) -> int:
        cfg = ModelConfig(
            kind="fusionnet", width=8, layers=layers, heads=2, window=8, time_width=16,
            conv_kernels=kernels, dropout=0.0, iterations=1,
        )  # fmt: skip
        net = build_model(cfg).eval()
        graph = onnx.load_from_string(export_graph(net, list(net.init_state(1))))
        return sum(n.op_type == "Shape" for n in graph.graph.node)

    assert shapes(4, (1, 3, 5, 3)) == shapes(1, (3,))


# --------------------------------------------------------------------------- ONNX graph cache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder of this test's own."""
    d = tmp_path / "cache"
    monkeypatch.setenv("GAIT_STREAM_CACHE", str(d))
    return d


def graphs(cache: Path) -> list[Path]:
    return sorted((cache / "onnx").glob("*.onnx"))


def onnx_est(model, **kw) -> NeuralEstimator:
    return NeuralEstimator("tiny", model=model, device="cpu", **{"backend": "onnx", **kw})


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GAIT_STREAM_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.delenv("GAIT_STREAM_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "gait-stream"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: ignore a relative one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "gait-stream"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "gait-stream"


@needs_onnx
def test_graph_cache_miss_then_hit(model, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = onnx_est(model)
    assert first.onnx_graph["source"] == "export" and first.onnx_graph["stored"]
    (path,) = graphs(cache)
    assert first.onnx_graph["path"] == str(path) and path.name.startswith("fusionnet-")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no tmp file left behind

    def no_export(*a, **k):
        raise AssertionError("exported although the graph is cached")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    second = onnx_est(model, backend="auto")  # auto on the CPU: onnx once the check passes
    assert second.backend == "onnx" and second.onnx_graph["source"] == "cache"
    assert second.onnx_graph["path"] == str(path) and "checked against torch" in second.backend_note
    subs = {"a": stream(12, 11), "b": stream(9, 12)}
    got = run(second, subs)
    want = run(NeuralEstimator("tiny", model=model, backend="torch", device="cpu"), subs)
    for s in subs:
        np.testing.assert_allclose(got[s][1], want[s][1], atol=1e-3)
    # no cache asked for: an export, nothing written
    monkeypatch.undo()
    monkeypatch.setenv("GAIT_STREAM_CACHE", str(cache))
    path.unlink()
    off = onnx_est(model, onnx_cache=False)
    assert off.onnx_graph["source"] == "export" and graphs(cache) == []


@needs_onnx
def test_corrupt_or_stale_cache_file_is_exported_again(
    model, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    onnx_est(model)
    (path,) = graphs(cache)
    good = path.read_bytes()
    other = tiny(lookahead=LOOKAHEAD)
    with torch.no_grad():
        next(other[0].parameters()).add_(0.5)  # same shapes, other numbers
    stale = export_graph(other[0], onnx_est(model, backend="torch")._keys)
    for bad, why in (
        (good[: len(good) // 2], "unusable"),
        (b"\x08\x07garbage" * 50, "unusable"),
        (stale, "differs from torch"),  # loads fine, computes another model: the check sees it
    ):
        path.write_bytes(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=neural.__name__):
            est = onnx_est(model)
        assert est.backend == "onnx" and est.onnx_graph["source"] == "export", why
        assert str(path) in caplog.text and why in caplog.text and "exporting again" in caplog.text
        assert onnx_est(model).onnx_graph["source"] == "cache"  # the file was replaced


@needs_onnx
def test_cache_key_follows_the_weights_not_the_file_name(
    model, cache: Path, tmp_path: Path
) -> None:
    m, cfg, _ = tiny()
    f = tmp_path / "weights" / "fusionnet.pt"
    save_model(f, m, cfg)
    a = NeuralEstimator(f, backend="onnx", device="cpu")
    again = NeuralEstimator(f, backend="onnx", device="cpu")  # another load of the same bytes
    assert again.onnx_graph["source"] == "cache"
    assert again.onnx_graph["path"] == a.onnx_graph["path"]
    with torch.no_grad():
        next(m.parameters()).add_(1e-3)  # retrained: new weights under the same name
    save_model(f, m, cfg)
    b = NeuralEstimator(f, backend="onnx", device="cpu")
    assert b.onnx_graph["source"] == "export" and b.onnx_graph["path"] != a.onnx_graph["path"]
    assert len(graphs(cache)) == 2
    keys = a._keys
    k0 = graph_key(*tiny()[:2], keys)
    assert graph_key(*tiny()[:2], keys) == k0  # deterministic
    assert graph_key(m, cfg, keys) != k0
    m1, cfg1, _ = tiny(lookahead=1)
    assert graph_key(m1, cfg1, keys) != k0  # the config is part of it


@needs_onnx
def test_failed_check_falls_back_to_torch_and_caches_nothing(
    model, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(neural, "ONNX_TOLERANCE", -1.0)  # no graph can pass
    est = onnx_est(model, backend="auto")
    assert est.backend == "torch" and "differs from torch" in est.backend_note
    assert graphs(cache) == []
    with pytest.raises(RuntimeError, match="estimator fusionnet: ONNX step differs"):
        onnx_est(model)


@needs_onnx
def test_unwritable_cache_costs_an_export_not_a_crash(
    model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GAIT_STREAM_CACHE", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="fusion.estimators.onnx_graph"):
        est = onnx_est(model)
    assert est.backend == "onnx" and est.onnx_graph["stored"] is False
    assert "not written" in caplog.text and str(blocker) in caplog.text


# ------------------------------------------------- fast paths = the plain per-subject algorithm


def keypoint_stream(n: int, seed: int, cams) -> SyncedBatch:
    """`stream` seen by calibrated cameras instead: 2-D detections with pixel noise, some
    mis-detections (the triangulation's outlier pass runs) and a camera dropping out."""
    b = stream(n, seed)
    rng = np.random.default_rng(seed + 100)
    X = b.joints3d + np.array([0.0, 0.0, 0.3])
    uv = np.stack([c.project(X) for c in cams], axis=1)  # (n, C, 17, 2)
    uv += rng.normal(0.0, 2.0, uv.shape)
    bad = rng.random(uv.shape[:3]) < 0.05
    uv[bad] += rng.normal(0.0, 150.0, (int(bad.sum()), 2))
    conf = rng.uniform(0.05, 1.0, uv.shape[:3])
    cam_mask = rng.random((n, len(cams))) > 0.1
    kp = np.concatenate([uv, conf[..., None]], axis=-1)
    return SyncedBatch(b.t, b.imu, b.imu_mask, kp, cam_mask)


def reference_angles(est: NeuralEstimator, calls: list[dict[str, SyncedBatch]], resets):
    """What NeuralEstimator.update_many computes, the plain way: per-subject caches, per-subject
    normalise_inputs (torch) and triangulation, one step_chunk per run of tick indices that
    the same subjects have (batch in call order), angles per subject (`resets`: subjects
    dropped before a call). Answers per call, as {subject: (t, angles)}."""
    from fusion.triangulation import triangulate_keypoints

    caches: dict[str, dict] = {}
    seen: dict[str, list[float]] = {}
    answers = []
    for batches, gone in zip(calls, resets, strict=True):
        for s in gone:
            caches.pop(s, None)
            seen.pop(s, None)
        subs = [s for s, b in batches.items() if len(b)]
        xs = {}
        for s in subs:
            b = batches[s]
            if b.joints3d is not None:
                j, jm = b.joints3d, b.joints3d_mask
            else:
                tri = triangulate_keypoints(est.cameras, b.keypoints, b.keypoint_mask, 0.1, 25.0)
                j, jm = tri.points, np.isfinite(tri.points).all(axis=-1)
            xs[s] = normalise_inputs(b.imu, b.imu_mask, j, jm)
            caches.setdefault(s, est.model.init_state(1))
        rot: dict[str, list] = {s: [] for s in subs}
        lens = {s: len(batches[s]) for s in subs}
        for a, b in itertools.pairwise(sorted({0, *lens.values()})):
            act = [s for s in subs if lens[s] >= b]  # these have ticks a..b-1: one chunk
            x = [np.stack([xs[s][k][a:b] for s in act]) for k in range(4)]
            cache = {k: torch.cat([caches[s][k] for s in act]) for k in est._keys}
            if est.backend == "onnx":
                r, new = est._onnx({k: v.numpy() for k, v in cache.items()}, x)
                new = {k: torch.from_numpy(v) for k, v in new.items()}
            else:
                with torch.inference_mode():
                    out, new = est.model.step_chunk(cache, *(torch.from_numpy(v) for v in x))
                r = out["rot6d"].numpy()
            for n, s in enumerate(act):
                caches[s] = {k: v[n : n + 1].clone() for k, v in new.items()}
                rot[s].extend(r[n])
        res = {}
        for s in subs:
            t = seen.setdefault(s, [])
            n_old = len(t)
            t.extend(np.asarray(batches[s].t, float))
            first = max(0, LOOKAHEAD - n_old)  # frame n describes frame n - lookahead
            if len(batches[s]) > first:
                desc = np.array(t[n_old + first - LOOKAHEAD : len(t) - LOOKAHEAD])
                res[s] = (desc, angles_from_output(np.stack(rot[s][first:])))
        answers.append(res)
    return answers


@pytest.mark.parametrize(
    "backend", ["torch", pytest.param("onnx", marks=needs_onnx)], ids=["torch", "onnx"]
)
def test_subjects_joining_and_leaving_give_the_plain_algorithms_numbers(model, backend) -> None:
    """The estimator's shortcuts (one normalisation and one triangulation per call, the whole
    cache passed as it is, rows renumbered instead of scattered, rows dropped on reset) give
    the per-subject algorithm's angles within 1e-5 degrees, whatever joins, leaves, skips a
    call, sends several ticks at once or comes in another order."""
    from fusion.camera import default_rig

    cams = default_rig(4)
    streams = {
        f"s{k}": (keypoint_stream(40, 20 + k, cams) if k % 2 else stream(40, 20 + k))
        for k in range(6)
    }
    est = NeuralEstimator("tiny", cams, model=model, backend=backend, device="cpu")
    assert est.backend == backend
    rng = np.random.default_rng(5)
    pos = dict.fromkeys(streams, 0)
    active = ["s0", "s1", "s2"]
    calls, resets = [], []
    for step in range(40):
        gone = []
        if step in (8, 20, 31):  # a subject leaves; its stream restarts if it comes back
            gone = [active.pop(int(rng.integers(len(active))))]
            pos[gone[0]] = 0
        if step in (5, 12, 20, 26):
            active.append(next(s for s in streams if s not in active))
        subs = list(active)
        rng.shuffle(subs)  # another order than the cache's rows
        if step % 4 == 3:
            subs = subs[1:]  # someone has nothing this call
        batches = {}
        for s in subs:
            n = int(rng.choice([1, 1, 1, 2, 3]))
            batches[s] = streams[s].slice(pos[s], pos[s] + n)
            pos[s] += n
        if step == 17:
            batches["idle"] = streams["s5"].slice(0, 0)  # an empty batch: an empty answer
        calls.append(batches)
        resets.append(gone)

    want = reference_angles(
        NeuralEstimator("tiny", cams, model=model, backend=backend, device="cpu"), calls, resets
    )
    answered = 0
    for batches, gone, ref in zip(calls, resets, want, strict=True):
        for s in gone:
            est.reset(s)
        got = est.update_many(batches)
        assert set(got) == set(batches)
        assert est.info()["subjects"] == len(est._cache["n"]) == len(est._order)
        for s, r in got.items():
            if s not in ref:
                assert len(r.t) == 0 and r.angles.shape == (0, len(ANGLES))
                continue
            np.testing.assert_array_equal(r.t, ref[s][0])
            np.testing.assert_allclose(r.angles, ref[s][1], rtol=0, atol=1e-5, err_msg=s)
            answered += len(r.t)
    assert answered > 150
    est.reset()
    assert len(est._cache["n"]) == 0 and est.update_many({"a": stream(3, 1)})["a"].t.size == 1


def test_normalise_inputs_is_per_frame_and_the_same_for_torch_and_numpy() -> None:
    """The live estimator normalises each tick alone, training a whole window: per frame it
    must be the same numbers, for numpy and torch inputs, NaN/inf, missing hips, a zero
    facing vector and clipping included."""
    from fusion.skeleton import KEYPOINT_INDEX

    rng = np.random.default_rng(3)
    n = 4000
    imu = rng.standard_normal((n, len(SEGMENTS), 6)) * np.array([4, 4, 4, 30, 30, 30])
    imu[rng.random(imu.shape) < 0.01] = np.nan
    imu[rng.random(imu.shape) < 0.005] = np.inf
    scale = rng.choice([1e-7, 1e-3, 0.3, 5.0], (n, 1, 1))  # tiny: a zero facing vector
    joints = rng.standard_normal((n, len(KEYPOINTS), 3)) * scale
    joints[rng.random(joints.shape) < 0.01] = np.nan
    joints[:50, KEYPOINT_INDEX["hip_l"]] = joints[:50, KEYPOINT_INDEX["hip_r"]]
    im, jm = rng.random((n, len(SEGMENTS))) > 0.1, rng.random((n, len(KEYPOINTS))) > 0.1
    jm[50:80, KEYPOINT_INDEX["hip_l"]] = False
    want = normalise_inputs(imu, im, joints, jm)
    args = (imu.astype(np.float32), im, joints.astype(np.float32), jm)
    got = normalise_inputs(*(torch.as_tensor(v) for v in args))
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, torch.Tensor) and g.numpy().dtype == w.dtype
        np.testing.assert_array_equal(g.numpy(), w)
    for i in (7, 20, 60, 3999):  # per frame: a zero facing vector, no hips, ordinary
        got1 = normalise_inputs(imu[i : i + 1], im[i : i + 1], joints[i : i + 1], jm[i : i + 1])
        for g, w in zip(got1, want, strict=True):
            np.testing.assert_array_equal(g, w[i : i + 1])
    with pytest.raises(ValueError, match="joints has shape"):
        normalise_inputs(imu, im, joints[:, :16], jm)


def test_angles_are_the_per_joint_decomposition() -> None:
    """fusion.angles decomposes every joint at once; the same numbers as joint by joint."""
    from scipy.spatial.transform import Rotation

    from fusion.angles import (
        JOINTS,
        angles_from_rotations,
        foot_progression,
        matrix_to_cardan,
        relative_rotation,
        yaw_matrix,
    )
    from fusion.skeleton import ANGLE_INDEX, SIDES

    rng = np.random.default_rng(4)
    R = Rotation.random(9 * len(SEGMENTS), random_state=4).as_matrix()
    R = R.reshape(3, 3, len(SEGMENTS), 3, 3)
    heading = rng.uniform(-3, 3, (3, 3))
    want = np.zeros((3, 3, len(ANGLES)))
    fp = foot_progression(R, heading)
    for parent, child, names, signs in JOINTS.values():
        Rp = yaw_matrix(heading) if parent is None else R[..., SEGMENT_INDEX[parent], :, :]
        c = matrix_to_cardan(relative_rotation(Rp, R[..., SEGMENT_INDEX[child], :, :])) * signs
        for k, name in enumerate(names):
            if name in ANGLE_INDEX:
                want[..., ANGLE_INDEX[name]] = c[..., k]
    for k, (side, sign) in enumerate(zip(SIDES, (-1.0, 1.0), strict=True)):
        fwd = R[..., SEGMENT_INDEX[f"foot_{side}"], :, 0]
        rel = np.angle(np.exp(1j * (np.arctan2(fwd[..., 1], fwd[..., 0]) - heading)))
        want[..., ANGLE_INDEX[f"foot_progression_{side}"]] = sign * np.degrees(rel)
        np.testing.assert_array_equal(
            fp[..., k], want[..., ANGLE_INDEX[f"foot_progression_{side}"]]
        )
    np.testing.assert_array_equal(angles_from_rotations(R, heading), want)
    np.testing.assert_array_equal(angles_from_rotations(R[1, 2], heading[1, 2]), want[1, 2])
