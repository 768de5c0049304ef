"""EAGLE-1 drafter (Li et al., 2024): feature-level autoregression on the target's last hidden state.

Input at position t: cat(E(x_{t+1}), f_t) -> fc: Linear(2H -> H) -> ONE decoder layer (without
input norm) -> predicted feature f_{t+1}. Token logits come from the frozen target lm_head
(`W_lm f`), and the token embeddings E are the target's: neither is stored in the draft file.
With `draft_vocab_size` set, the logits cover only the target lm_head's rows of the V_draft most
frequent training tokens (specdec.models.vocab: only the `d2t` / `t2d` maps are stored).
At draft time the drafter feeds its own predicted features back in; EAGLE-2's dynamic tree is a
runtime choice (see specdec.runtime.eagle_proposer) and needs no other weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specdec.models.base import DraftModel, register_draft
from specdec.models.decoder import DecoderLayer, KVCache, LayerShape, UnrolledKV
from specdec.models.vocab import ReducedVocab


@dataclass
class Eagle1Config:
    hidden_size: int
    """Hidden size H of the target (features and embeddings are H wide)."""
    vocab_size: int
    """Vocabulary size V of the target (logits go through its lm_head)."""
    draft_vocab_size: int | None = None
    """V_draft: logits over only the V_draft most frequent training tokens (the target lm_head's rows for them, mapped by `d2t` / `t2d`); None = the full vocabulary."""
    layer: LayerShape = None
    """Shape of the drafter's decoder layer (copied from the target's config)."""
    head_rank_accuracy: list[list[float]] | None = None
    """Measured on held-out data: [d][r] = share of labels that were the r-th candidate at draft position d+1."""


@register_draft
class Eagle1Drafter(ReducedVocab, DraftModel):
    """`forward(embeds, hidden, positions, mask, cache)` -> predicted features [B, T, H]."""

    draft_type = "eagle1"
    config_class = Eagle1Config
    feature_layers = None
    """Target states the drafter reads: None = the last hidden state (after the final norm)."""

    def __init__(self, config: Eagle1Config):
        super().__init__(config)
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=True)
        self.layer = DecoderLayer(config.layer, input_norm=False)
        self.init_vocab(config.vocab_size, config.draft_vocab_size)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Target features -> the drafter's hidden input (identity: EAGLE-1 reads h_t as is)."""
        return features

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | UnrolledKV | None = None) -> torch.Tensor:
        return self.layer(self.fc(torch.cat([embeds, hidden], dim=-1)), positions, mask, cache)

    def logits(self, hidden: torch.Tensor, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """Token logits over the draft vocabulary [.., V_draft]: the target lm_head's rows for those tokens (all of them by default)."""
        return hidden @ self.vocab_rows(lm_head_weight).T
