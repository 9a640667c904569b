"""VideoNet, IMUNet and FusionNet (after Shin, Li & Halilaj), made causal and streamable.

One class, `GaitNet`, builds all three from a `ModelConfig`:

- per-sensor / per-joint causal 1-D convolution stacks over time (kernels `conv_kernels`,
  weights shared across tokens, a learned identity embedding per token);
- masked tokens are replaced by a learned "missing" embedding (so a masked sensor's values
  cannot reach the output), then self-attention across the tokens of one frame;
- VideoNet / IMUNet: the frame's tokens are flattened into one frame vector; FusionNet:
  cross-attention IMU→video and video→IMU, then the tokens of both modalities are flattened
  and max-pooled into the frame vector;
- causal temporal self-attention limited to the last `window` frames (a banded mask with a
  learned relative-position bias, so the output never depends on where a window starts);
- iterative residual regression of the 6-D rotations (Zhou et al.): `iterations` refinement
  steps; FusionNet starts them from the estimate of its own VideoNet branch (which has
  exactly VideoNet's layout, so it can be warm-started from VideoNet weights), or, with
  `fusion_start="head"`, from a linear head on the fused features as IMUNet does (then its
  IMU encoder, temporal layers and heads have exactly IMUNet's layout: `load_imu_branch`
  warm-starts them so that the fresh FusionNet gives IMUNet's output, and training can only
  add what the video brings).

Outputs: "rot6d" (B, T, 13, 6) segment orientations in the heading-free frame
(fusion.nn.features), "body" (B, T, len(BODY_FIELDS)) per-frame body-size estimates (average
them over time for one answer), "joints" (B, T, 17, 3) root-relative joint centres in metres
(heading-free frame; the position head used by the joint-position loss); FusionNet also gives
"rot6d_video", its VideoNet branch's estimate. The output at frame t describes frame
t - lookahead.

`step_chunk()` runs T new frames for B subjects from a fixed-shape cache (conv histories,
per-layer keys/values of the last `window` - 1 frames, a frame count per subject) and returns
what `forward()` gives for those frames; `step()` is a one-frame chunk. A FusionNet whose
refinement starts from a head does not run its video branch's temporal layers and heads there
(no "rot6d_video"): that branch then only serves the training loss. Attention is written with
plain matmuls, and in a form without shape arithmetic for the ONNX export (`Attention`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as nnf

from fusion.nn.features import JOINT_SCALE
from fusion.records import check_known_fields
from fusion.skeleton import KEYPOINTS, SEGMENTS
from fusion.synth import BODY_FIELDS

__all__ = ["KINDS", "GaitNet", "ModelConfig", "build_model"]

KINDS: tuple[str, ...] = ("videonet", "imunet", "fusionnet")
FUSION_STARTS: tuple[str, ...] = ("video", "head")
N_SEG, N_KP, N_BODY = len(SEGMENTS), len(KEYPOINTS), len(BODY_FIELDS)
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_BODY_MEAN = (1.725,) + (1.0,) * (N_BODY - 1)  # m, then the shape factors
_NEG = -1e9  # additive attention mask (finite: exports cleanly, no NaN on empty rows)


@dataclass
class ModelConfig:
    """Everything that defines a model's shape; stored in every checkpoint."""

    kind: str = "fusionnet"
    width: int = 32  # token width (per sensor / joint)
    layers: int = 4  # temporal self-attention layers
    heads: int = 8
    conv_kernels: tuple[int, ...] = (1, 3, 5)
    window: int = 60  # frames the temporal attention sees (60 Hz)
    lookahead: int = 0  # output at frame t describes frame t - lookahead
    iterations: int = 2  # residual refinement steps of the rotation output
    dropout: float = 0.1
    spatial_layers: int = 1  # token self-attention layers per frame
    time_width: int = 64  # width of the frame vector the temporal layers work on
    ff_mult: int = 2  # feed-forward width = ff_mult × model width
    # FusionNet: refinement starts from its video branch ("video") or a head ("head")
    fusion_start: str = "video"

    def __post_init__(self) -> None:
        self.conv_kernels = tuple(int(k) for k in self.conv_kernels)
        if self.kind not in KINDS:
            raise ValueError(f"ModelConfig.kind={self.kind!r}: must be one of {KINDS}")
        for name in ("width", "heads", "window", "time_width", "ff_mult"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ModelConfig.{name}={v!r}: must be a whole number >= 1")
        for name in ("layers", "lookahead", "iterations", "spatial_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"ModelConfig.{name}={v!r}: must be a whole number >= 0")
        if self.lookahead >= self.window:
            raise ValueError(
                f"ModelConfig.lookahead={self.lookahead}: must be < window={self.window}"
            )
        if self.width % self.heads or self.time_width % self.heads:
            raise ValueError(
                f"ModelConfig: width={self.width} and time_width={self.time_width} must be "
                f"multiples of heads={self.heads}"
            )
        if not self.conv_kernels or any(k < 1 for k in self.conv_kernels):
            raise ValueError(f"ModelConfig.conv_kernels={self.conv_kernels!r}: need sizes >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"ModelConfig.dropout={self.dropout!r}: must be in [0, 1)")
        if self.fusion_start not in FUSION_STARTS:
            raise ValueError(
                f"ModelConfig.fusion_start={self.fusion_start!r}: must be one of {FUSION_STARTS}"
            )

    @property
    def uses_imu(self) -> bool:
        return self.kind in ("imunet", "fusionnet")

    @property
    def uses_video(self) -> bool:
        return self.kind in ("videonet", "fusionnet")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_kernels"] = list(self.conv_kernels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        check_known_fields(cls, d, "fields")
        return cls(**d)

    def video_branch(self) -> ModelConfig:
        """The VideoNet config FusionNet's video branch has (for warm starts)."""
        return ModelConfig(**{**self.to_dict(), "kind": "videonet", "fusion_start": "video"})

    def imu_branch(self) -> ModelConfig:
        """The IMUNet config whose encoder and temporal layers FusionNet's IMU side shares."""
        return ModelConfig(**{**self.to_dict(), "kind": "imunet", "fusion_start": "video"})


# -- building blocks ---------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention with plain matmuls; `bias` is added to the scores.

    Two spellings of one computation. Training and torch inference split the heads by
    reshaping the activations and use the fused `scaled_dot_product_attention`. The ONNX
    export instead takes the heads from the projection weights viewed per head (a broadcast
    matmul against (H, D, dh) weights, summed over heads on the way out): the exported
    streaming step then has no shape arithmetic. With a dynamic batch, those
    Shape/Slice/Concat/Reshape chains were about half of its nodes; without them a FusionNet
    tick runs ~1.5x faster in ONNX Runtime. That form is ~1.5x slower to train, hence two.
    fusion.estimators.neural checks every exported graph against torch."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (..., N, D) -> (..., H, N, dh)
        return x.unflatten(-1, (self.heads, self.dh)).transpose(-3, -2)

    def _project(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(..., N, D) through the rows `w` (H*dh, D), `b` → (..., H, N, dh), shape-free."""
        H, dh = self.heads, self.dh
        return x.unsqueeze(-3) @ w.view(H, dh, -1).transpose(1, 2) + b.view(H, 1, dh)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.onnx.is_in_onnx_export():
            D = self.heads * self.dh
            w, b = self.kv.weight, self.kv.bias
            return self._project(x, w[:D], b[:D]), self._project(x, w[D:], b[D:])
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def attend(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(q kᵀ / √dh + bias) v, then the output projection: (..., N, D)."""
        if not torch.onnx.is_in_onnx_export():
            o = nnf.scaled_dot_product_attention(self.split(self.q(x)), k, v, attn_mask=bias)
            return self.out(o.transpose(-3, -2).flatten(-2))
        scale = self.dh**-0.5
        q = self._project(x, self.q.weight * scale, self.q.bias * scale)
        s = q @ k.transpose(-1, -2)
        if bias is not None:
            s = s + bias
        o = s.softmax(-1) @ v  # (..., H, N, dh)
        w = self.out.weight.view(-1, self.heads, self.dh).permute(1, 2, 0)  # (H, dh, D)
        return (o @ w).sum(-3) + self.out.bias

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        k, v = self.keys_values(x if ctx is None else ctx)
        return self.attend(x, k, v, bias)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TokenBlock(nn.Module):
    """Pre-norm self-attention + feed-forward across the tokens of one frame."""

    def __init__(self, dim: int, heads: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.att = Attention(dim, heads)
        self.ff = FeedForward(dim, mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.att(self.n1(x)))
        return x + self.ff(self.n2(x))


class CrossBlock(nn.Module):
    """Tokens of one modality attend to those of the other (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.nq, self.nc, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.att = Attention(dim, heads)
        self.ff = FeedForward(dim, mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.att(self.nq(x), self.nc(ctx)))
        return x + self.ff(self.n2(x))


class TemporalBlock(nn.Module):
    """Causal self-attention over the last `window` frames with a learned relative-position
    bias per head, then a feed-forward layer (pre-norm)."""

    def __init__(self, dim: int, heads: int, mult: int, dropout: float, window: int) -> None:
        super().__init__()
        self.window = window
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.att = Attention(dim, heads)
        self.ff = FeedForward(dim, mult, dropout)
        self.drop = nn.Dropout(dropout)
        self.rel = nn.Parameter(torch.zeros(heads, window))  # bias by distance 0..window-1

    def band_bias(self, T: int, device: torch.device) -> torch.Tensor:
        i = torch.arange(T, device=device)
        d = i[:, None] - i[None, :]  # query - key distance
        ok = (d >= 0) & (d < self.window)
        b = self.rel[:, d.clamp(0, self.window - 1)]  # (H, T, T)
        return torch.where(ok, b, torch.full_like(b, _NEG))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.att(self.n1(x), bias=bias))
        return x + self.ff(self.n2(x))

    def step_band(
        self, T: int, n: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which cached or new key each of T new queries sees, for `step`: (distance index
        (T, W-1+T) into `rel`, hidden (B, 1, T, W-1+T)). The same for every layer of a
        branch: computed once per step (in the exported graph, ~10 nodes a layer fewer)."""
        W = self.window
        i = torch.arange(T, device=device)[:, None]
        j = torch.arange(W - 1 + T, device=device)[None, :]  # key j is frame n - (W-1) + j
        dist = i + (W - 1) - j  # (T, W-1+T): query frame - key frame
        band = (dist >= 0) & (dist < W)
        seen = j >= (W - 1) - n[:, None]  # (B, W-1+T): the key frame exists (>= 0)
        return dist.clamp(0, W - 1), ~(band[None] & seen[:, None])[:, None]

    def step(
        self,
        x: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        n: torch.Tensor,
        band: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) new frames; caches (B, H, window-1, dh) hold the previous frames, oldest
        first; n (B,) frames seen before these; `band` = `step_band` when the caller has it.
        Returns (y, new k cache, new v cache)."""
        T = x.shape[1]
        dist, hidden = self.step_band(T, n, x.device) if band is None else band
        h = self.n1(x)
        k_new, v_new = self.att.keys_values(h)  # (B, H, T, dh)
        k = torch.cat([k_cache, k_new], dim=2)
        v = torch.cat([v_cache, v_new], dim=2)
        b = self.rel[:, dist][None].masked_fill(hidden, _NEG)  # (B, H, T, W-1+T)
        y = x + self.att.attend(h, k, v, b)
        y = y + self.ff(self.n2(y))
        return y, _last(k, self.window - 1), _last(v, self.window - 1)


def _last(x: torch.Tensor, n: int, dim: int = 2) -> torch.Tensor:
    """The last `n` frames of x along `dim`: a streaming cache's new contents. A constant
    slice, where `x[:, :, T:]` made the exported graph read T from a shape."""
    return x[(slice(None),) * dim + (slice(-n, None) if n > 0 else slice(0, 0),)]


class CausalConvStack(nn.Module):
    """Per-token causal 1-D convolutions over time (weights shared by all tokens)."""

    def __init__(self, in_ch: int, width: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.kernels = kernels
        chans = [in_ch] + [width] * len(kernels)
        self.convs = nn.ModuleList(
            nn.Conv1d(chans[i], chans[i + 1], k) for i, k in enumerate(kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, N, C) → (B, T, N, width)."""
        B, T, N, C = x.shape
        h = x.permute(0, 2, 3, 1).reshape(B * N, C, T)
        for i, (conv, k) in enumerate(zip(self.convs, self.kernels, strict=True)):
            y = conv(nnf.pad(h, (k - 1, 0)))
            h = nnf.gelu(y) if i == 0 else h + nnf.gelu(y)
        return h.reshape(B, N, -1, T).permute(0, 3, 1, 2)

    def history_shapes(self, n_tokens: int) -> list[tuple[int, int, int]]:
        """(tokens, channels, k-1) of the input history each conv keeps when streaming."""
        return [
            (n_tokens, c.in_channels, k - 1) for c, k in zip(self.convs, self.kernels, strict=True)
        ]

    def step(
        self, x: torch.Tensor, hist: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, T, N, C) new frames; hist[i] (B, N, C_i, k_i - 1). Returns (B, T, N, width),
        hist.

        Each Conv1d runs as a (1, k) Conv2d over (B, C, N, frames): the same weights, and no
        (B·N, C, T) reshape, whose shape the exported graph computed from the input's."""
        h = x.permute(0, 3, 2, 1)  # (B, C, N, T)
        new_hist = []
        for i, (conv, k) in enumerate(zip(self.convs, self.kernels, strict=True)):
            full = torch.cat([hist[i].transpose(1, 2), h], dim=3)  # k-1+T frames
            new_hist.append(_last(full, k - 1, dim=3).transpose(1, 2))
            y = nnf.conv2d(full, conv.weight.unsqueeze(2), conv.bias)
            h = nnf.gelu(y) if i == 0 else h + nnf.gelu(y)
        return h.permute(0, 3, 2, 1), new_hist


class TokenEncoder(nn.Module):
    """Conv stack per token, identity + missing embeddings, attention across tokens."""

    def __init__(self, n_tokens: int, in_ch: int, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.width
        self.conv = CausalConvStack(in_ch, w, cfg.conv_kernels)
        self.ident = nn.Parameter(torch.randn(n_tokens, w) * 0.02)
        self.missing = nn.Parameter(torch.randn(n_tokens, w) * 0.02)
        self.blocks = nn.ModuleList(
            TokenBlock(w, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.spatial_layers)
        )

    def tokens(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Conv features (..., N, w) + mask (..., N) → attended tokens (..., N, w)."""
        h = torch.where(mask[..., None], h, self.missing) + self.ident
        for b in self.blocks:
            h = b(h)
        return h

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask[..., None].to(x.dtype)
        return self.tokens(self.conv(x), mask)

    def step(
        self, x: torch.Tensor, mask: torch.Tensor, hist: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = x * mask[..., None].to(x.dtype)
        h, hist = self.conv.step(x, hist)
        return self.tokens(h, mask), hist


class Heads(nn.Module):
    """Rotation (iterative residual), body-size and joint-position heads on the temporal output."""

    def __init__(self, cfg: ModelConfig, start_from_head: bool = True) -> None:
        super().__init__()
        D, R = cfg.time_width, N_SEG * 6
        self.norm = nn.LayerNorm(D)
        self.rot0 = nn.Linear(D, R) if start_from_head else None
        if self.rot0 is not None:
            nn.init.zeros_(self.rot0.weight)
            with torch.no_grad():
                self.rot0.bias.copy_(torch.tensor(_IDENTITY_6D).repeat(N_SEG))
        self.refine = nn.ModuleList(
            nn.Sequential(nn.Linear(D + R, D), nn.GELU(), nn.Linear(D, R))
            for _ in range(cfg.iterations)
        )
        for m in self.refine:
            nn.init.zeros_(m[-1].weight)
            nn.init.zeros_(m[-1].bias)
        self.body = nn.Linear(D, N_BODY)
        nn.init.zeros_(self.body.weight)
        with torch.no_grad():
            self.body.bias.copy_(torch.tensor(_BODY_MEAN))
        self.joints = nn.Linear(D, N_KP * 3)

    def forward(self, h: torch.Tensor, r0: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.norm(h)
        r = self.rot0(h) if r0 is None else r0
        for m in self.refine:
            r = r + m(torch.cat([h, r], dim=-1))
        return {
            "rot6d": r.unflatten(-1, (N_SEG, 6)),
            "body": self.body(h),
            "joints": self.joints(h).unflatten(-1, (N_KP, 3)) * JOINT_SCALE,
        }


class Branch(nn.Module):
    """Frame vectors → temporal layers → heads (the part every model has once or twice)."""

    def __init__(self, cfg: ModelConfig, start_from_head: bool = True) -> None:
        super().__init__()
        self.temporal = nn.ModuleList(
            TemporalBlock(cfg.time_width, cfg.heads, cfg.ff_mult, cfg.dropout, cfg.window)
            for _ in range(cfg.layers)
        )
        self.heads = Heads(cfg, start_from_head)

    def run(self, z: torch.Tensor) -> torch.Tensor:
        for b in self.temporal:
            z = b(z, b.band_bias(z.shape[1], z.device))
        return z

    def run_step(
        self, z: torch.Tensor, state: dict[str, torch.Tensor], prefix: str, n: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        new = {}
        band = self.temporal[0].step_band(z.shape[1], n, z.device) if len(self.temporal) else None
        for i, b in enumerate(self.temporal):
            z, k, v = b.step(z, state[f"{prefix}k{i}"], state[f"{prefix}v{i}"], n, band)
            new[f"{prefix}k{i}"], new[f"{prefix}v{i}"] = k, v
        return z, new


# -- the model ---------------------------------------------------------------------------------
class GaitNet(nn.Module):
    """VideoNet, IMUNet or FusionNet, chosen by `cfg.kind` (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, D = cfg.width, cfg.time_width
        if cfg.uses_video:
            self.enc_video = TokenEncoder(N_KP, 3, cfg)
            self.pool_video = nn.Linear(N_KP * w, D)
            self.video = Branch(cfg)
        if cfg.kind == "imunet":
            self.enc_imu = TokenEncoder(N_SEG, 6, cfg)
            self.pool_imu = nn.Linear(N_SEG * w, D)
            self.main = Branch(cfg)
        if cfg.kind == "fusionnet":
            self.enc_imu = TokenEncoder(N_SEG, 6, cfg)
            self.cross_iv = CrossBlock(w, cfg.heads, cfg.ff_mult, cfg.dropout)
            self.cross_vi = CrossBlock(w, cfg.heads, cfg.ff_mult, cfg.dropout)
            self.pool_fused = nn.Linear((N_SEG + N_KP + 2) * w, D)
            self.main = Branch(cfg, start_from_head=cfg.fusion_start == "head")

    @property
    def streams_video_branch(self) -> bool:
        """Whether `step` runs the video branch: VideoNet, or a FusionNet that starts from it."""
        return self.cfg.kind == "videonet" or (
            self.cfg.kind == "fusionnet" and self.cfg.fusion_start == "video"
        )

    def _fusion_r0(self, vid: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
        """Where FusionNet's refinement starts: its video estimate, or None (its own head)."""
        return (
            vid["rot6d"].flatten(-2)
            if vid is not None and self.cfg.fusion_start == "video"
            else None
        )

    # per-frame part (no time mixing besides the conv stacks) ---------------------------------
    def _frame_fusion(self, ti: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
        ti2 = self.cross_iv(ti, tv)
        tv2 = self.cross_vi(tv, ti)
        pooled = [ti2.flatten(-2), tv2.flatten(-2), ti2.amax(-2), tv2.amax(-2)]
        return self.pool_fused(torch.cat(pooled, dim=-1))

    def _check_inputs(self, imu, imu_mask, joints, joints_mask, per_frame: bool) -> None:
        lead = 1 if per_frame else 2
        want = {
            "imu": (imu, (N_SEG, 6)),
            "imu_mask": (imu_mask, (N_SEG,)),
            "joints": (joints, (N_KP, 3)),
            "joints_mask": (joints_mask, (N_KP,)),
        }
        ref = None
        for name, (x, tail) in want.items():
            if x.dim() != lead + len(tail) or tuple(x.shape[lead:]) != tail:
                dims = ("B",) if per_frame else ("B", "T")
                raise ValueError(
                    f"GaitNet.{'step' if per_frame else 'forward'}: {name} has shape "
                    f"{tuple(x.shape)}, expected ({', '.join(dims)}, {', '.join(map(str, tail))})"
                )
            ref = ref or tuple(x.shape[:lead])
            if tuple(x.shape[:lead]) != ref:
                raise ValueError(f"GaitNet: {name} leading shape {tuple(x.shape[:lead])} != {ref}")

    def forward(
        self,
        imu: torch.Tensor,
        imu_mask: torch.Tensor,
        joints: torch.Tensor,
        joints_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Normalised inputs (fusion.nn.features.normalise_inputs), (B, T, ...) → outputs."""
        self._check_inputs(imu, imu_mask, joints, joints_mask, per_frame=False)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.uses_video:
            tv = self.enc_video(joints, joints_mask)
            hv = self.video.run(self.pool_video(tv.flatten(-2)))
            vid = self.video.heads(hv)
            if self.cfg.kind == "videonet":
                return vid
            out["rot6d_video"] = vid["rot6d"]
        ti = self.enc_imu(imu, imu_mask)
        if self.cfg.kind == "imunet":
            return self.main.heads(self.main.run(self.pool_imu(ti.flatten(-2))))
        h = self.main.run(self._frame_fusion(ti, tv))
        res = self.main.heads(h, r0=self._fusion_r0(vid))
        return {**res, **out}

    # streaming ---------------------------------------------------------------------------------
    def init_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Zero caches for `batch_size` subjects (frame count 0): the start of a stream."""
        p = next(self.parameters())
        z = {"n": torch.zeros(batch_size, dtype=torch.long, device=p.device)}
        c, W = self.cfg, self.cfg.window
        dh = c.time_width // c.heads
        encs = [("video", N_KP)] if c.uses_video else []
        encs += [("imu", N_SEG)] if c.uses_imu else []
        for name, n_tok in encs:
            enc: TokenEncoder = getattr(self, f"enc_{name}")
            for i, shp in enumerate(enc.conv.history_shapes(n_tok)):
                z[f"conv_{name}{i}"] = torch.zeros(batch_size, *shp, device=p.device)
        branches = [("video", self.video)] if self.streams_video_branch else []
        branches += [("main", self.main)] if c.kind != "videonet" else []
        for name, br in branches:
            for i in range(len(br.temporal)):
                for kv in "kv":
                    z[f"{name}_{kv}{i}"] = torch.zeros(
                        batch_size, c.heads, W - 1, dh, device=p.device
                    )
        return z

    def step(
        self, state: dict[str, torch.Tensor], *frame: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One new normalised frame per subject, `frame` = (imu (B, 13, 6), imu_mask (B, 13),
        joints (B, 17, 3), joints_mask (B, 17)) → (outputs (B, ...), state): `step_chunk` of a
        one-frame chunk."""
        self._check_inputs(*frame, per_frame=True)
        out, new = self.step_chunk(state, *(v[:, None] for v in frame))
        return {k: v[:, 0] for k, v in out.items()}, new

    def step_chunk(
        self,
        state: dict[str, torch.Tensor],
        imu_t: torch.Tensor,
        imu_mask_t: torch.Tensor,
        joints_t: torch.Tensor,
        joints_mask_t: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """T new normalised frames per subject, (B, T, 13, 6) ... → (outputs (B, T, ...),
        state): one pass for ticks that arrived together (a backlog costs little more than
        one tick: most of a tick is per-call overhead).

        Gives what `forward` over the whole stream so far gives for these frames (all but
        "rot6d_video" when `streams_video_branch` is False)."""
        self._check_inputs(imu_t, imu_mask_t, joints_t, joints_mask_t, per_frame=False)
        n = state["n"]
        new: dict[str, torch.Tensor] = {"n": n + imu_t.shape[1]}
        out: dict[str, torch.Tensor] = {}

        def enc(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            e: TokenEncoder = getattr(self, f"enc_{name}")
            keys = [f"conv_{name}{i}" for i in range(len(e.conv.convs))]
            tok, hist = e.step(x, m, [state[k] for k in keys])
            new.update(zip(keys, hist, strict=True))
            return tok

        vid = None
        if self.cfg.uses_video:
            tv = enc("video", joints_t, joints_mask_t)
        if self.streams_video_branch:
            hv, kv = self.video.run_step(self.pool_video(tv.flatten(-2)), state, "video_", n)
            new.update(kv)
            vid = self.video.heads(hv)
            if self.cfg.kind == "videonet":
                return vid, new
            out["rot6d_video"] = vid["rot6d"]
        ti = enc("imu", imu_t, imu_mask_t)
        if self.cfg.kind == "imunet":
            h, kv = self.main.run_step(self.pool_imu(ti.flatten(-2)), state, "main_", n)
            new.update(kv)
            return self.main.heads(h), new
        h, kv = self.main.run_step(self._frame_fusion(ti, tv), state, "main_", n)
        new.update(kv)
        res = self.main.heads(h, r0=self._fusion_r0(vid))
        return {**res, **out}, new

    def load_video_branch(self, videonet: GaitNet) -> None:
        """Warm start: copy a trained VideoNet into FusionNet's video branch."""
        if self.cfg.kind != "fusionnet" or videonet.cfg.kind != "videonet":
            raise ValueError("load_video_branch: needs a fusionnet and a videonet")
        src = videonet.state_dict()
        mine = self.state_dict()
        for k, v in src.items():
            if k not in mine or mine[k].shape != v.shape:
                raise ValueError(f"load_video_branch: VideoNet tensor {k} does not fit")
            mine[k] = v
        self.load_state_dict(mine)

    def load_imu_branch(self, imunet: GaitNet) -> None:
        """Warm start: copy a trained IMUNet's IMU encoder, temporal layers and heads into
        FusionNet, its frame pooling into the IMU columns of the fused pooling (the video
        columns start at zero) and make both cross-attention blocks start as the identity
        (zero output projections). With `fusion_start="head"` the result gives exactly
        IMUNet's output, whatever the video input; training then adds what video brings."""
        if self.cfg.kind != "fusionnet" or imunet.cfg.kind != "imunet":
            raise ValueError("load_imu_branch: needs a fusionnet and an imunet")
        src = imunet.state_dict()
        mine = self.state_dict()
        for k, v in src.items():
            if k.startswith("pool_imu."):
                continue
            if k.startswith("main.heads.rot0.") and self.main.heads.rot0 is None:
                continue  # refinement starts from the video branch: no head to copy into
            if k not in mine or mine[k].shape != v.shape:
                raise ValueError(f"load_imu_branch: IMUNet tensor {k} does not fit")
            mine[k] = v
        n_imu = N_SEG * self.cfg.width
        w = torch.zeros_like(mine["pool_fused.weight"])
        if src["pool_imu.weight"].shape != (w.shape[0], n_imu):
            raise ValueError("load_imu_branch: IMUNet tensor pool_imu.weight does not fit")
        w[:, :n_imu] = src["pool_imu.weight"]
        mine["pool_fused.weight"] = w
        mine["pool_fused.bias"] = src["pool_imu.bias"].clone()
        for blk in ("cross_iv", "cross_vi"):
            for k in (f"{blk}.att.out.weight", f"{blk}.att.out.bias"):
                mine[k] = torch.zeros_like(mine[k])
            for k in (f"{blk}.ff.net.2.weight", f"{blk}.ff.net.2.bias"):
                mine[k] = torch.zeros_like(mine[k])
        self.load_state_dict(mine)

    def warm_started_parameters(self, video: bool, imu: bool) -> list[str]:
        """Names of the parameters `load_video_branch` (video) / `load_imu_branch` (imu)
        fill with trained values (the rest, fusion layers included, start fresh)."""
        prefixes = ("enc_video.", "pool_video.", "video.") if video else ()
        prefixes += ("enc_imu.", "main.") if imu else ()
        return [k for k, _ in self.named_parameters() if k.startswith(prefixes)]


def build_model(cfg: ModelConfig) -> GaitNet:
    """The model a config describes (fresh weights)."""
    return GaitNet(cfg)
