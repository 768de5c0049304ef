"""Medusa heads (Cai et al., 2024): K extra heads on the target's last hidden state.

Head k (k = 1..K) reads h_t and predicts token t+k+1; the target's own lm_head predicts t+1.
Each head is `num_layers` ResBlocks (x + SiLU(W x), W zero-initialised, every block its own
weights) followed by a vocabulary projection that is either the frozen target lm_head
(`share_lm_head=True`, not stored in the draft) or a per-head Linear(H, V) initialised from it.
With `draft_vocab_size` = V_draft the projection covers only the V_draft most frequent training
tokens (specdec.models.vocab): the target lm_head's rows for them when shared (the draft stores
only the `d2t` / `t2d` maps), else per-head Linear(H, V_draft) layers started from those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from specdec.models.base import DraftModel, register_draft
from specdec.models.vocab import ReducedVocab


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
    draft_vocab_size: Optional[int] = None
    """V_draft: the heads project onto only the V_draft most frequent training tokens (mapped by `d2t` / `t2d`); None = the full vocabulary."""
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
class MedusaHeads(ReducedVocab, DraftModel):
    """K Medusa heads. `forward(hidden, lm_head_weight)` returns logits [K, ..., V_draft] (V_draft = V by default)."""

    draft_type = "medusa"
    config_class = MedusaConfig

    def __init__(self, config: MedusaConfig):
        super().__init__(config)
        self.init_vocab(config.vocab_size, config.draft_vocab_size)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(config.hidden_size) for _ in range(config.num_layers)])
            for _ in range(config.num_heads)
        )
        self.lm_heads = (
            None
            if config.share_lm_head
            else nn.ModuleList(nn.Linear(config.hidden_size, self.num_draft_tokens, bias=False) for _ in range(config.num_heads))
        )

    @torch.no_grad()
    def init_from_target(self, lm_head_weight: torch.Tensor) -> None:
        """Copy the target's lm_head rows of the draft vocabulary into each per-head projection (no-op when shared)."""
        self.init_projection(self.vocab_rows(lm_head_weight))

    def init_projection(self, rows: torch.Tensor) -> None:
        """Each per-head projection starts as the target lm_head rows [V_draft, H] (nothing stored when shared)."""
        for head in self.lm_heads or []:
            head.weight.copy_(rows)

    def head_features(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """Output of head k's ResBlocks (0-based k) for hidden states [..., H]."""
        return self.blocks[k](hidden)

    def project(self, k: int, features: torch.Tensor, lm_head_weight: torch.Tensor | None) -> torch.Tensor:
        """Draft-vocabulary logits of head k (0-based) from its features [..., H] -> [..., V_draft]."""
        if self.lm_heads is not None:
            return self.lm_heads[k](features)
        if lm_head_weight is None:
            raise ValueError("this Medusa draft shares the target lm_head: pass lm_head_weight (target.get_output_embeddings().weight)")
        return features @ self.vocab_rows(lm_head_weight).T

    def forward(self, hidden: torch.Tensor, lm_head_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every head, stacked: [K, *hidden.shape[:-1], V_draft]."""
        return torch.stack([self.project(k, self.head_features(k, hidden), lm_head_weight) for k in range(self.config.num_heads)])
