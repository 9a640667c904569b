"""Session-wide fixtures: one Ray per test session, the shared real-data folder, and one
ONNX graph cache per test session.

The cache (fusion/estimators/neural.py, $GAIT_STREAM_CACHE) points at a folder of this session,
set before any test, Ray or subprocess starts (they inherit it): tests never read or write the
user's ~/.cache, so every session behaves like a fresh CI machine, and FusionNet (the runtime's
default estimator) is exported at most once per session. A GAIT_STREAM_CACHE already set is
kept: `GAIT_STREAM_CACHE=~/.cache/gait-stream pytest` reuses a persistent cache and skips the
export (it is keyed and checked against torch on every load, so reuse cannot hide a bug).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_worker_niceness", "0")  # as services.pipeline.connect_ray

SHARED_DATA = Path(
    os.environ.get(
        "GAIT_STREAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings beside the checkout; a missing folder is a failure, never a skip."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"real test data not found at {SHARED_DATA}: CI provides ../shared/data beside the "
            "checkout; set GAIT_STREAM_SHARED_DATA to point elsewhere"
        )
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """GAIT_STREAM_CACHE for the whole session (autouse: set before Ray or a subprocess)."""
    own = os.environ.get("GAIT_STREAM_CACHE")
    if own:
        yield Path(own)
        return
    path = tmp_path_factory.mktemp("gait-stream-cache")
    os.environ["GAIT_STREAM_CACHE"] = str(path)
    yield path
    os.environ.pop("GAIT_STREAM_CACHE", None)


@pytest.fixture(scope="session")
def fusionnet_onnx(onnx_cache_dir: Path) -> dict:
    """The default estimator's ONNX graph exported into the session cache, in this process,
    before a test starts a pipeline that loads it: the export (~5-10 s quiet, minutes under
    load) then never runs inside a pipeline's start-up timeouts. Nothing to do on a GPU
    machine (the estimator runs torch there). Returns the estimator's info()."""
    import torch

    from fusion.estimators.neural import NeuralEstimator

    if torch.cuda.is_available():
        return {"device": "cuda", "backend": "torch"}
    return NeuralEstimator("fusionnet", device="cpu", backend="onnx").info()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Start a local Ray once for the whole session (it costs seconds)."""
    import ray

    if not ray.is_initialized():
        # "local": never join a cluster another test (or program) left running here
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Small tensors: one thread is faster, and immune to a busy machine's oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
