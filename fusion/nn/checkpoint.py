"""Model files: one torch file holding the config, metadata and weights, checked on load.

A file is a plain dict (format tag, version, config, meta, state_dict) saved with torch.save
and read with `weights_only=True`, so loading never runs pickled code. A bare name such as
"fusionnet" means the weights shipped in fusion/nn/weights/.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from fusion.nn.models import KINDS, GaitNet, ModelConfig, build_model

__all__ = ["FORMAT", "WEIGHTS_DIR", "load_model", "resolve", "save_model"]

FORMAT = "gait-stream-nn"
VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def resolve(path_or_name: str | Path) -> Path:
    """A shipped model's name ('videonet', 'imunet', 'fusionnet') → its file; else the path."""
    if isinstance(path_or_name, str) and path_or_name in KINDS:
        return WEIGHTS_DIR / f"{path_or_name}.pt"
    return Path(path_or_name)


def save_model(
    path: str | Path, model: GaitNet, cfg: ModelConfig, meta: dict[str, Any] | None = None
) -> Path:
    """Write the weights (float32, CPU) with their config and metadata; atomic (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "meta": json.loads(json.dumps(meta or {})),  # plain types only (weights_only loads)
        "state_dict": {
            k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"model file {path}: not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"model file {path}: unreadable (corrupt or truncated?): {e}") from None
    except Exception as e:  # unpickling errors of any kind: still a bad file
        raise ValueError(f"model file {path}: unreadable: {type(e).__name__}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"model file {path}: not a {FORMAT} file")
    if blob.get("version") != VERSION:
        raise ValueError(
            f"model file {path}: format version {blob.get('version')!r}, this code reads {VERSION}"
        )
    for key in ("config", "meta", "state_dict"):
        if not isinstance(blob.get(key), dict):
            raise ValueError(f"model file {path}: missing or bad '{key}'")
    return blob


def load_model(path_or_name: str | Path) -> tuple[GaitNet, ModelConfig, dict[str, Any]]:
    """(model in eval mode on the CPU, its config, its metadata); ValueError naming the file
    and the problem for corrupt, truncated or mismatched files."""
    path = resolve(path_or_name)
    blob = _read(path)
    try:
        cfg = ModelConfig.from_dict(blob["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"model file {path}: bad config: {e}") from None
    model = build_model(cfg)
    want = model.state_dict()
    got = blob["state_dict"]
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(
            f"model file {path}: weights do not match its {cfg.kind} config "
            f"(missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''})"
        )
    for k, v in got.items():
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(want[k].shape):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(
                f"model file {path}: tensor {k} has shape {shape}, "
                f"the config needs {tuple(want[k].shape)}"
            )
        if not torch.isfinite(v).all():
            raise ValueError(f"model file {path}: tensor {k} holds non-finite values")
    model.load_state_dict(got)
    model.eval()
    return model, cfg, blob["meta"]
