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


class UnrolledKV:
    """Keys and values of training-time test's unrolled steps, one [B, kv_heads, T, head_dim] per
    step, indexed by anchor. The query of anchor a at step i sees step 0 up to a (the target's
    features of the prefix, causal) and its own chain's entry at steps 1..i (the layout of
    `specdec.train.losses.unrolled_mask`). Same attention as that dense [T, (i+1) T] mask, but a
    later step costs one dot product per step and anchor instead of a T x T block."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Append this step's entries, then attend: q [B, heads, T, D] -> [B, heads, T, D]."""
        self.keys.append(keys)
        self.values.append(values)
        groups = q.shape[1] // keys.shape[1]
        k0, v0 = (t.repeat_interleave(groups, dim=1) for t in (self.keys[0], self.values[0]))
        if len(self.keys) == 1:
            return F.scaled_dot_product_attention(q, k0, v0, is_causal=True)
        # Step 1: scores against the prefix (causal) and against the anchor's own entry at each later step.
        scale = q.shape[-1] ** -0.5
        length = q.shape[2]
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        prefix = (q @ k0.transpose(-1, -2) * scale).masked_fill(~causal, float("-inf"))
        chain_k, chain_v = (torch.stack(t[1:], dim=3).repeat_interleave(groups, dim=1) for t in (self.keys, self.values))
        chain = (q.unsqueeze(3) * chain_k).sum(-1) * scale  # [B, heads, T, i]
        # Step 2: one softmax over both, then the weighted values.
        weights = torch.softmax(torch.cat([prefix, chain], dim=-1), dim=-1)
        return weights[..., :length] @ v0 + (weights[..., length:].unsqueeze(-1) * chain_v).sum(3)


class ContextAlignedKV:
    """Keys and values of HASS's harmonized-context unrolled steps (the layout of
    `specdec.train.eagle_losses.context_aligned_mask`): the query of anchor a at step i sees step
    i's own entries up to a (causal) and, for each earlier step p, that step's entry at anchor 0
    (position p). Only those entries are kept, so every step costs what step 0 does."""

    def __init__(self):
        self.firsts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Attend as described, then keep this step's anchor-0 entry: q [B, heads, T, D] -> [B, heads, T, D]."""
        groups = q.shape[1] // keys.shape[1]
        earlier = len(self.firsts)
        k = torch.cat([first[0] for first in self.firsts] + [keys], dim=2).repeat_interleave(groups, dim=1)
        v = torch.cat([first[1] for first in self.firsts] + [values], dim=2).repeat_interleave(groups, dim=1)
        self.firsts.append((keys[:, :, :1], values[:, :, :1]))
        if not earlier:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        length = q.shape[2]
        visible = torch.ones(length, earlier + length, dtype=torch.bool, device=q.device).tril(diagonal=earlier)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)


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
        cache: KVCache | UnrolledKV | ContextAlignedKV | None = None,
        attn_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, T, H] (the residual stream), positions [B, T], additive mask [T, S] or [B, 1, T, S]
        over S = cached + T keys; the new keys/values are appended to `cache` when given. With an
        `UnrolledKV` or `ContextAlignedKV` cache the mask is implied (pass None)."""
        s = self.shape
        batch, length, _ = x.shape
        # Step 1: attention input: given (EAGLE-3), else the (optionally normalised) residual stream.
        h = attn_input if attn_input is not None else (self.input_layernorm(x) if self.input_layernorm is not None else x)
        q = self.q_proj(h).view(batch, length, s.num_heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
        q, k = rope(q, positions, s.rope_theta), rope(k, positions, s.rope_theta)
        # Step 2: attend over the cached keys and the new ones.
        if isinstance(cache, (UnrolledKV, ContextAlignedKV)):
            attn = cache.attend(q, k, v)
        else:
            if cache is not None:
                k, v = cache.append(k, v)
            groups = s.num_heads // s.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        x = x + self.o_proj(attn.transpose(1, 2).reshape(batch, length, -1))
        # Step 3: SwiGLU MLP.
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
