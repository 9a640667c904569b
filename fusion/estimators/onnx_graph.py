"""The ONNX form of a GaitNet's streaming step, and the on-disk cache of exported graphs.

`StepModule` is `model.step_chunk` with flat tensors in and out (caches as inputs and outputs;
batch and time axes dynamic, so ticks that arrived together run in one call): what
`export_graph` exports; `OnnxStep` runs such a graph in ONNX Runtime with the torch step's call.
fusion.estimators.neural checks every graph against torch before use.

Why a cache: an export takes ~6 s on a quiet machine and minutes under load, at every start.
Graphs live at `<cache_dir()>/onnx/<kind>-<key>.onnx`, the key (`graph_key`) a hash of what
determines the graph (the state dict's bytes, the model config, the source of the model's
modules, torch and onnx versions, opset, `GRAPH_PATCH_VERSION`), so new weights under the same
file name get a new entry. `store_graph` writes atomically (a private tmp file renamed over the
name: two processes exporting at once each write a whole file); a cache that cannot be written
only costs the next start its export.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.skeleton import KEYPOINTS, SEGMENTS

__all__ = [
    "GRAPH_PATCH_VERSION",
    "INPUTS",
    "OPSET",
    "OnnxStep",
    "StepModule",
    "cache_dir",
    "export_graph",
    "graph_key",
    "store_graph",
]

log = logging.getLogger(__name__)

INPUTS = ("imu", "imu_mask", "joints", "joints_mask")  # the step's inputs before the caches
OPSET = 17
#: the graph edits after export (Reshape allowzero=1); bump when they or the export change
#: (2: the step is step_chunk, inputs (B, T, ...))
GRAPH_PATCH_VERSION = 2


class StepModule(torch.nn.Module):
    """model.step_chunk with flat tensors in and out (the cache keys in a fixed order): what
    ONNX exports, with `rot6d` (B, T, 13, 6) as the only output besides the new cache."""

    def __init__(self, model: torch.nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys)

    def forward(self, imu, imu_mask, joints, joints_mask, *cache):  # type: ignore[no-untyped-def]
        out, new = self.model.step_chunk(
            dict(zip(self.keys, cache, strict=True)), imu, imu_mask, joints, joints_mask
        )
        return (out["rot6d"], *[new[k] for k in self.keys])


def export_graph(model: torch.nn.Module, keys: Sequence[str]) -> bytes:
    """The serialized ONNX graph of `StepModule(model, keys)` (batch and time axes dynamic),
    patched."""
    import warnings

    import onnx

    wrapper = StepModule(model, keys).eval()
    state = model.init_state(2)
    args = (
        torch.zeros(2, 3, len(SEGMENTS), 6),
        torch.ones(2, 3, len(SEGMENTS), dtype=torch.bool),
        torch.zeros(2, 3, len(KEYPOINTS), 3),
        torch.ones(2, 3, len(KEYPOINTS), dtype=torch.bool),
        *[state[k] for k in keys],
    )
    names_in = [*INPUTS, *keys]
    names_out = ["rot6d", *[f"new_{k}" for k in keys]]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            buf,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes={
                **{n: {0: "batch"} for n in names_in + names_out},
                **{n: {0: "batch", 1: "time"} for n in [*INPUTS, "rot6d"]},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load_from_string(buf.getvalue())
    # kernel-1 convolutions keep a zero-length history: in ONNX Reshape a 0 means "copy
    # that dimension" unless allowzero=1; the traced shapes are torch's, where 0 is 0
    for node in graph.graph.node:
        if node.op_type == "Reshape":
            attrs = [a for a in node.attribute if a.name == "allowzero"]
            if attrs:
                attrs[0].i = 1
            else:
                node.attribute.append(onnx.helper.make_attribute("allowzero", 1))
    return graph.SerializeToString()


class OnnxStep:
    """ONNX Runtime session of a `StepModule` graph; same call as the torch step (numpy
    in/out). Raises (onnxruntime's error) when `graph` is not a loadable graph."""

    def __init__(self, graph: bytes, keys: Sequence[str], threads: int) -> None:
        import onnxruntime as ort

        self.keys = list(keys)
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        # the exporter drops inputs the model never reads (IMUNet's joints, VideoNet's IMU)
        self.inputs = [n for n in INPUTS if n in names]
        if names != [*self.inputs, *self.keys]:
            raise ValueError(f"graph inputs {names} are not {[*INPUTS, *self.keys]}")

    def __call__(
        self, cache: dict[str, np.ndarray], inputs: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        given = dict(zip(INPUTS, inputs, strict=True))
        feed = {n: given[n] for n in self.inputs}
        feed.update(cache)
        res = self.session.run(None, feed)
        return res[0], dict(zip(self.keys, res[1:], strict=True))


# -- the on-disk cache of exported graphs ----------------------------------------------------
def cache_dir() -> Path:
    """Where gait-stream caches derived files: $GAIT_STREAM_CACHE, else
    $XDG_CACHE_HOME/gait-stream (an absolute XDG_CACHE_HOME only, as the XDG spec says), else
    ~/.cache/gait-stream."""
    own = os.environ.get("GAIT_STREAM_CACHE")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "gait-stream"
    return Path.home() / ".cache" / "gait-stream"


def _code_files(model: torch.nn.Module) -> list[Path]:
    """Source files of the model's own (non-torch) module classes: the graph traces them."""
    files = set()
    for m in model.modules():
        if type(m).__module__.split(".")[0] == "torch":
            continue
        src = inspect.getsourcefile(type(m))
        if src:
            files.add(Path(src).resolve())
    return sorted(files)


def graph_key(model: torch.nn.Module, cfg: Any, keys: Sequence[str]) -> str:
    """sha256 (hex) of everything the exported graph depends on."""
    from importlib.metadata import version  # not `import onnx`: a warm start never needs it

    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    part("versions", f"torch={torch.__version__} onnx={version('onnx')}".encode())
    part("export", f"opset={OPSET} patch={GRAPH_PATCH_VERSION} keys={list(keys)}".encode())
    conf = cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg)
    part("config", json.dumps(conf, sort_keys=True, default=str).encode())
    for f in _code_files(model):
        part(f"code:{f.name}", f.read_bytes())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        part(f"tensor:{name}:{t.dtype}:{tuple(t.shape)}", t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def store_graph(path: Path, data: bytes) -> bool:
    """Write `data` to `path` atomically: a private tmp file beside it, renamed over it. A
    failure is logged (the next start exports again), never raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.warning("ONNX graph cache %s not written (%s); the next start exports again", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
