"""Session-wide fixtures: one Ray per test session, the shared real-data folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

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
