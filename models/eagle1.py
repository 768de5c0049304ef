"""EAGLE-1 drafter (Li et al., 2024): feature-level autoregression on the target's last hidden state.

Input at position t: cat(E(x_{t+1}), f_t) -> fc: Linear(2H -> H) -> ONE decoder layer (without
input norm) -> predicted feature f_{t+1}. Token logits come from the frozen target lm_head
(`W_lm f`), and the token embeddings E are the target's: neither is stored in the draft file.
At draft time the drafter feeds its own predicted features back in; EAGLE-2's dynamic tree is a
runtime choice (see specdec.runtime.eagle_proposer) and needs no other weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from specdec.models.base import DraftModel, register_draft
from specdec.models.decoder import DecoderLayer, KVCache, LayerShape


@dataclass
class Eagle1Config:
    hidden_size: int
    """Hidden size H of the target (features and embeddings are H wide)."""
    vocab_size: int
    """Vocabulary size V of the target (logits go through its lm_head)."""
    layer: LayerShape = None
    """Shape of the drafter's decoder layer (copied from the target's config)."""
    head_rank_accuracy: list[list[float]] | None = None
    """Measured on held-out data: [d][r] = share of labels that were the r-th candidate at draft position d+1."""


@register_draft
class Eagle1Drafter(DraftModel):
    """`forward(embeds, hidden, positions, mask, cache)` -> predicted features [B, T, H]."""

    draft_type = "eagle1"
    config_class = Eagle1Config
    feature_layers = None
    """Target states the drafter reads: None = the last hidden state (after the final norm)."""

    def __init__(self, config: Eagle1Config):
        super().__init__(config)
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=True)
        self.layer = DecoderLayer(config.layer, input_norm=False)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Target features -> the drafter's hidden input (identity: EAGLE-1 reads h_t as is)."""
        return features

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.layer(self.fc(torch.cat([embeds, hidden], dim=-1)), positions, mask, cache)

    def logits(self, hidden: torch.Tensor, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """Token logits over the full target vocabulary."""
        return hidden @ lm_head_weight.T

    def to_target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices -> target token ids (the same: EAGLE-1 drafts over the full vocabulary)."""
        return ids

    def vocab_rows(self, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """The target lm_head rows of the draft vocabulary (all of them)."""
        return lm_head_weight
