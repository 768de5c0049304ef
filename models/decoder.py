"""The one Llama-style decoder layer that EAGLE and Chimera drafters run, and its KV cache.

The layer is written out (rather than borrowed from transformers) because drafters feed it
inputs a target layer never sees: EAGLE-3's attention reads 2H features, and training unrolls
several draft steps whose queries attend to keys of earlier steps under a custom mask. The same
code serves training (whole sequences) and the runtime (a growing cache, tree masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LayerShape:
    """Sizes of a drafter's decoder layer, copied from the target's config when the draft is built."""

    hidden_size: int
    """H: the layer's residual width (the target's hidden size)."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention when fewer than num_heads)."""
    head_dim: int
    """Width of one attention head."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    rms_norm_eps: float = 1e-5
    """Epsilon of the RMS norms."""
    rope_theta: float = 10000.0
    """RoPE base."""

    @classmethod
    def from_target_config(cls, config) -> "LayerShape":
        """The shape of one decoder layer of a Hugging Face causal-LM config."""
        heads = config.num_attention_heads
        rope = getattr(config, "rope_parameters", None) or {}
        return cls(
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=config.intermediate_size,
            rms_norm_eps=getattr(config, "rms_norm_eps", 1e-5),
            rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        )


class KVCache:
    """Keys and values of one drafter layer, [1 or B, kv_heads, S, head_dim], grown by `append` and cut by `crop`."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add entries at the end; return all keys and values."""
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=2)
        self.values = values if self.values is None else torch.cat([self.values, values], dim=2)
        return self.keys, self.values

    def crop(self, length: int) -> None:
        """Keep the first `length` entries."""
        if self.keys is not None and length < len(self):
            self.keys, self.values = self.keys[:, :, :length], self.values[:, :, :length]


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half layout, as Llama) of x [B, heads, T, D] at positions [B, T]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, device=x.device, dtype=torch.float32) / half))
    angles = positions[:, None, :, None].float() * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos().to(x.dtype), torch.cat([angles, angles], -1).sin().to(x.dtype)
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_mask(queries: int, past: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask [queries, past + queries]: every query sees the past and the queries up to itself."""
    visible = torch.ones(queries, past + queries, dtype=torch.bool, device=device).tril(diagonal=past)
    return additive(visible, dtype)


def additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool visibility -> additive float mask (0 visible, dtype-min hidden)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


class DecoderLayer(nn.Module):
    """Pre-norm Llama decoder layer: x + Attn(norm(x)), then + MLP(norm(.)).

    `attn_input_size` is the width the q/k/v projections read (H, or 2H for EAGLE-3, which passes
    its own already-normalised input via `attn_input`). `input_norm=False` drops the first norm
    (EAGLE-1's single layer has none).
    """

    def __init__(self, shape: LayerShape, attn_input_size: int | None = None, input_norm: bool = True):
        super().__init__()
        self.shape = shape
        width = attn_input_size or shape.hidden_size
        self.input_layernorm = nn.RMSNorm(shape.hidden_size, eps=shape.rms_norm_eps) if input_norm else None
        self.q_proj = nn.Linear(width, shape.num_heads * shape.head_dim, bias=False)
        self.k_proj = nn.Linear(width, shape.num_kv_heads * shape.head_dim, bias=False)
        self.v_proj = nn.Linear(width, shape.num_kv_heads * shape.head_dim, bias=False)
        self.o_proj = nn.Linear(shape.num_heads * shape.head_dim, shape.hidden_size, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(shape.hidden_size, eps=shape.rms_norm_eps)
        self.gate_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
        attn_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, T, H] (the residual stream), positions [B, T], additive mask [T, S] or [B, 1, T, S]
        over S = cached + T keys; the new keys/values are appended to `cache` when given."""
        s = self.shape
        batch, length, _ = x.shape
        # Step 1: attention input: given (EAGLE-3), else the (optionally normalised) residual stream.
        h = attn_input if attn_input is not None else (self.input_layernorm(x) if self.input_layernorm is not None else x)
        q = self.q_proj(h).view(batch, length, s.num_heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
        q, k = rope(q, positions, s.rope_theta), rope(k, positions, s.rope_theta)
        # Step 2: attend over the cached keys and the new ones.
        if cache is not None:
            k, v = cache.append(k, v)
        groups = s.num_heads // s.num_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        x = x + self.o_proj(attn.transpose(1, 2).reshape(batch, length, -1))
        # Step 3: SwiGLU MLP.
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
