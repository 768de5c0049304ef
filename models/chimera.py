"""Chimera drafter (Zeng et al., 2024): trigram encoder, full-context layer, residual heads.

- Trigram encoder: cat(E(x_{i-2}), E(x_{i-1}), E(x_i)) -> ResBlock(3H) -> Linear(3H -> H).
- Full-context layer: one decoder layer over the whole sequence; its input at position i fuses
  the trigram features with the target's last hidden state h_{i-1} (ours: Linear(2H -> H) on
  their concatenation; past the last verified position the latest known h is used).
- Residual heads: head k gives logits from cat(h_t, F) with Linear(2H -> V) initialised from
  [W_lm; W_lm] (`share_lm_head=False`, as in the paper), or, cheaper, W_lm (h_t + F) with the
  frozen target lm_head (`share_lm_head=True`, nothing stored). Head 0 predicts the token after
  the target's own next token; deeper heads run the layer again on the previous head's argmax.
- Reduced vocabulary (`draft_vocab_size` = V_draft, specdec.models.vocab): the heads project onto
  the V_draft most frequent training tokens only, the target lm_head's rows for them when shared
  (only the `d2t` / `t2d` maps are stored), else Linear(2H -> V_draft) from those rows, doubled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from specdec.models.base import DraftModel, register_draft
from specdec.models.decoder import DecoderLayer, KVCache, LayerShape, UnrolledKV
from specdec.models.vocab import ReducedVocab


@dataclass
class ChimeraConfig:
    hidden_size: int
    """Hidden size H of the target."""
    vocab_size: int
    """Vocabulary size V of the target."""
    num_heads: int = 4
    """Residual heads K (draft positions)."""
    share_lm_head: bool = True
    """Heads project W_lm (h + F) with the frozen target lm_head (false: per-head Linear(2H -> V) from [W_lm; W_lm])."""
    draft_vocab_size: int | None = None
    """V_draft: the heads project onto only the V_draft most frequent training tokens (mapped by `d2t` / `t2d`); None = the full vocabulary."""
    layer: LayerShape = None
    """Shape of the full-context decoder layer (copied from the target's config)."""
    head_rank_accuracy: list[list[float]] | None = None
    """Measured on held-out data: [d][r] = share of labels that were the r-th candidate of head d+1 (builds draft trees)."""


@register_draft
class ChimeraDrafter(ReducedVocab, DraftModel):
    """`forward(trigram_embeds, hidden, positions, mask, cache)` -> context features F [B, T, H]."""

    draft_type = "chimera"
    config_class = ChimeraConfig
    feature_layers = None

    def __init__(self, config: ChimeraConfig):
        super().__init__(config)
        h = config.hidden_size
        self.init_vocab(config.vocab_size, config.draft_vocab_size)
        self.trigram_block = nn.Linear(3 * h, 3 * h)
        nn.init.zeros_(self.trigram_block.weight)
        nn.init.zeros_(self.trigram_block.bias)
        self.trigram_proj = nn.Linear(3 * h, h)
        self.fuse = nn.Linear(2 * h, h)
        self.layer = DecoderLayer(config.layer)
        self.heads = None if config.share_lm_head else nn.ModuleList(nn.Linear(2 * h, self.num_draft_tokens, bias=False) for _ in range(config.num_heads))

    @torch.no_grad()
    def init_from_target(self, lm_head_weight: torch.Tensor) -> None:
        """Per-head projections start as [W_lm; W_lm] on the draft vocabulary's rows (no-op when the lm_head is shared)."""
        self.init_projection(self.vocab_rows(lm_head_weight))

    def init_projection(self, rows: torch.Tensor) -> None:
        """Per-head projections start as [rows; rows] for the target lm_head rows [V_draft, H] (nothing stored when shared)."""
        for head in self.heads or []:
            head.weight.copy_(torch.cat([rows, rows], dim=1))

    def trigram(self, embeds: torch.Tensor) -> torch.Tensor:
        """[.., 3H] embeddings of (x_{i-2}, x_{i-1}, x_i) -> [.., H] (ResBlock then projection)."""
        return self.trigram_proj(embeds + F.silu(self.trigram_block(embeds)))

    def forward(self, trigram_embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.contextualize(self.trigram(trigram_embeds), hidden, positions, mask, cache)

    def contextualize(self, trigrams: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | UnrolledKV | None = None) -> torch.Tensor:
        """Context features F from already encoded trigrams [.., H] (`trigram`) fused with the target states."""
        return self.layer(self.fuse(torch.cat([trigrams, hidden], dim=-1)), positions, mask, cache)

    def fused_terms(self, trigrams: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`fuse(cat(trigrams, hidden))` as its two terms (the bias in the second): training's unrolled
        steps read shifted trigrams beside the same target states, so they add one shifted first term
        to one second term instead of fusing again at every step."""
        h = self.config.hidden_size
        return F.linear(trigrams, self.fuse.weight[:, :h]), F.linear(hidden, self.fuse.weight[:, h:], self.fuse.bias)

    def head_logits(self, k: int, hidden: torch.Tensor, features: torch.Tensor, lm_head_weight: torch.Tensor | None) -> torch.Tensor:
        """Draft-vocabulary logits [.., V_draft] of head k (0-based) from the anchor's target state h and context features F."""
        if self.heads is not None:
            return self.heads[k](torch.cat([hidden, features], dim=-1))
        if lm_head_weight is None:
            raise ValueError("this Chimera draft shares the target lm_head: pass lm_head_weight")
        return (hidden + features) @ self.vocab_rows(lm_head_weight).T


def trigram_embeddings(embed_weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, T, 3H]: at each position the embeddings of the token two back, one back and itself
    (zero vectors before the start of `ids`)."""
    e = F.embedding(ids, embed_weight)
    full = torch.cat([e.new_zeros(e.shape[0], 2, e.shape[2]), e], dim=1)
    return torch.cat([full[:, :-2], full[:, 1:-1], full[:, 2:]], dim=-1)
