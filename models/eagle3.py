"""EAGLE-3 drafter (Li et al., 2025): fused multi-layer target features and a reduced draft vocabulary.

Input at position t: target hidden states of three layers, concatenated (3H) and fused by
fc: Linear(3H -> H) (draft steps after the first feed the drafter's own output hidden state
instead). The decoder layer's attention reads cat(norm(E(x_{t+1})), norm(h)) (2H); a final norm
and the drafter's own lm_head: Linear(H -> V_draft) give logits over the draft vocabulary, the
V_draft tokens most frequent in the training data, with the `d2t` / `t2d` maps of
specdec.models.vocab (the layout SGLang and vLLM read). Token embeddings stay the target's and are not stored.

EAGLE-3.1's switches, both off by default and placed as vLLM speculators places them: `fc_norm`
normalises each fused layer's state before fc; `norm_output` makes `forward` return the final
norm's output, which the next draft step reads (and `logits` does not normalise again).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specdec.models.base import DraftModel, register_draft
from specdec.models.decoder import DecoderLayer, KVCache, LayerShape, UnrolledKV
from specdec.models.vocab import ReducedVocab

LAYER_ID_CONVENTION = "hf_hidden_states"
"""`layer_ids` index Hugging Face's `output_hidden_states` tuple: 0 = embeddings, i = output of decoder layer i-1."""


def default_layer_ids(num_layers: int) -> list[int]:
    """EAGLE's low / middle / high choice, [2, L//2, L-3], for a target with `num_layers` = L decoder
    layers (kept within 0..L, ascending and distinct, for targets shallower than 6 layers)."""
    return sorted({min(2, num_layers), num_layers // 2, max(num_layers - 3, 0)})


@dataclass
class Eagle3Config:
    hidden_size: int
    """Hidden size H of the target."""
    vocab_size: int
    """Vocabulary size V of the target."""
    draft_vocab_size: int
    """V_draft: size of the drafter's own vocabulary (most frequent training tokens)."""
    layer_ids: list[int]
    """Target hidden states fused as input, in the `layer_id_convention` numbering."""
    layer: LayerShape = None
    """Shape of the drafter's decoder layer (copied from the target's config)."""
    layer_id_convention: str = LAYER_ID_CONVENTION
    """How `layer_ids` count: hf_hidden_states = index into output_hidden_states (0 = embeddings, i = output of layer i-1)."""
    head_rank_accuracy: list[list[float]] | None = None
    """Measured on held-out data: [d][r] = share of labels that were the r-th candidate at draft position d+1."""
    fc_norm: bool = False
    """EAGLE-3.1: an RMSNorm on each fused target layer's state before `fc`, fc(cat(norm_1(h_1), .., norm_n(h_n))) (weights `fc_norm.{i}.weight`; speculators' `fc_norm`)."""
    norm_output: bool = False
    """EAGLE-3.1: `forward` returns the final `norm`'s output, so the next draft step reads the normalised state and `logits` applies lm_head alone (speculators' `norm_output`)."""


@register_draft
class Eagle3Drafter(ReducedVocab, DraftModel):
    """`forward(embeds, hidden, positions, mask, cache)` -> output hidden [B, T, H] (before the final norm; after it with `norm_output`)."""

    draft_type = "eagle3"
    config_class = Eagle3Config

    def __init__(self, config: Eagle3Config):
        super().__init__(config)
        h = config.hidden_size
        self.fc = nn.Linear(len(config.layer_ids) * h, h, bias=False)
        self.fc_norm = nn.ModuleList([nn.RMSNorm(h, eps=config.layer.rms_norm_eps) for _ in config.layer_ids]) if config.fc_norm else None
        self.input_layernorm = nn.RMSNorm(h, eps=config.layer.rms_norm_eps)
        self.hidden_norm = nn.RMSNorm(h, eps=config.layer.rms_norm_eps)
        self.layer = DecoderLayer(config.layer, attn_input_size=2 * h, input_norm=False)
        self.norm = nn.RMSNorm(h, eps=config.layer.rms_norm_eps)
        self.lm_head = nn.Linear(h, config.draft_vocab_size, bias=False)
        self.init_vocab(config.vocab_size, config.draft_vocab_size)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return tuple(self.config.layer_ids)

    def init_projection(self, rows: torch.Tensor) -> None:
        """The drafter's lm_head starts from the target lm_head rows of the draft vocabulary."""
        self.lm_head.weight.copy_(rows)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Concatenated target layer states [.., 3H] -> the drafter's hidden input [.., H]."""
        if self.fc_norm is not None:
            features = torch.cat([norm(part) for norm, part in zip(self.fc_norm, features.chunk(len(self.fc_norm), dim=-1))], dim=-1)
        return self.fc(features)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | UnrolledKV | None = None) -> torch.Tensor:
        attn_input = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        out = self.layer(hidden, positions, mask, cache, attn_input=attn_input)
        return self.norm(out) if self.config.norm_output else out

    def logits(self, hidden: torch.Tensor, lm_head_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the draft vocabulary [.., V_draft] (the target lm_head is not used)."""
        return self.lm_head(hidden if self.config.norm_output else self.norm(hidden))
