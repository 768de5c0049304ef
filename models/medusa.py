"""Medusa heads (Cai et al., 2024): K extra heads on the target's last hidden state.

Head k (k = 1..K) reads h_t and predicts token t+k+1; the target's own lm_head predicts t+1.
Each head is `num_layers` ResBlocks (x + SiLU(W x), W zero-initialised, every block its own
weights) followed by a vocabulary projection that is either the frozen target lm_head
(`share_lm_head=True`, not stored in the draft) or a per-head Linear(H, V) initialised from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from specdec.models.base import DraftModel, register_draft


@dataclass
class MedusaConfig:
    hidden_size: int
    """Hidden size H of the target (the heads read its last hidden state)."""
    vocab_size: int
    """Vocabulary size V of the target."""
    num_heads: int = 4
    """Number of heads K; head k predicts the token k+1 positions after the target's next token."""
    num_layers: int = 1
    """ResBlocks per head (each with independent weights)."""
    share_lm_head: bool = True
    """Project with the frozen target lm_head (cheap, small file) instead of a per-head Linear(H, V)."""
    head_rank_accuracy: Optional[list[list[float]]] = None
    """Measured on held-out data: [k][r] = share of labels that were head k's r-th candidate (builds draft trees)."""


class ResBlock(nn.Module):
    """x + SiLU(Linear(x)), with the linear layer zero-initialised so a new head starts as identity."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


@register_draft
class MedusaHeads(DraftModel):
    """K Medusa heads. `forward(hidden, lm_head_weight)` returns logits [K, ..., V]."""

    draft_type = "medusa"
    config_class = MedusaConfig

    def __init__(self, config: MedusaConfig):
        super().__init__(config)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(config.hidden_size) for _ in range(config.num_layers)])
            for _ in range(config.num_heads)
        )
        self.lm_heads = (
            None
            if config.share_lm_head
            else nn.ModuleList(nn.Linear(config.hidden_size, config.vocab_size, bias=False) for _ in range(config.num_heads))
        )

    @torch.no_grad()
    def init_from_target(self, lm_head_weight: torch.Tensor) -> None:
        """Copy the target's lm_head into each per-head projection (no-op when shared)."""
        if self.lm_heads is not None:
            for head in self.lm_heads:
                head.weight.copy_(lm_head_weight)

    def head_features(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """Output of head k's ResBlocks (0-based k) for hidden states [..., H]."""
        return self.blocks[k](hidden)

    def project(self, k: int, features: torch.Tensor, lm_head_weight: torch.Tensor | None) -> torch.Tensor:
        """Vocabulary logits of head k (0-based) from its features [..., H] -> [..., V]."""
        if self.lm_heads is not None:
            return self.lm_heads[k](features)
        if lm_head_weight is None:
            raise ValueError("this Medusa draft shares the target lm_head: pass lm_head_weight (target.get_output_embeddings().weight)")
        return features @ lm_head_weight.T

    def forward(self, hidden: torch.Tensor, lm_head_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every head, stacked: [K, *hidden.shape[:-1], V]."""
        return torch.stack([self.project(k, self.head_features(k, hidden), lm_head_weight) for k in range(self.config.num_heads)])
