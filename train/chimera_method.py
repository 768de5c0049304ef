"""Chimera: a trigram encoder and a full-context layer fused with the target's states, residual heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from specdec.models.chimera import ChimeraConfig, ChimeraDrafter
from specdec.models.decoder import LayerShape
from specdec.train.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE
from specdec.train.losses import chimera_losses
from specdec.train.methods import TrainingMethod, install_vocab, reduced_vocab_size, register_method


@dataclass
class ChimeraSection:
    num_heads: int = 4
    """Residual heads (draft positions)."""
    share_lm_head: bool = True
    """Heads project W_lm (h + F) with the frozen target lm_head (false: per-head Linear(2H -> V) from [W_lm; W_lm], the paper's heads: V x 2H weights each)."""
    head_decay: float = 1.0
    """Head k's loss weight is head_decay**k (the paper sums the heads' losses: 1.0)."""
    draft_vocab_size: Optional[int] = None
    """Heads project onto only the V_draft most frequent training labels (a reduced vocabulary, the d2t / t2d maps of EAGLE-3); 0 or null (or at least the target's V) = the full vocabulary."""

    ranges: ClassVar[dict] = {"num_heads": AT_LEAST_1, "head_decay": POSITIVE, "draft_vocab_size": NON_NEGATIVE}


@register_method
class ChimeraMethod(TrainingMethod):
    name, draft_type = "chimera", ChimeraDrafter.draft_type
    sections = {"chimera": ChimeraSection}
    reads_target_features = True
    static_tree = True

    def build_draft(self, record: dict, lm_head: torch.Tensor, train_rows=None) -> ChimeraDrafter:
        """A fresh drafter; with a reduced vocabulary and `train_rows` it is the most frequent training labels (else it comes from the checkpoint)."""
        torch.manual_seed(self.cfg.seed)
        c, vocab = self.cfg.chimera, record["vocab_size"]
        config = ChimeraConfig(record["hidden_size"], vocab, num_heads=c.num_heads, share_lm_head=c.share_lm_head, draft_vocab_size=reduced_vocab_size(c.draft_vocab_size, vocab), layer=LayerShape(**record["layer_shape"]))
        draft = ChimeraDrafter(config)
        install_vocab(draft, lm_head, train_rows, "chimera.draft_vocab_size")
        return draft

    def num_positions(self, training: bool) -> int:
        return self.cfg.chimera.num_heads

    def losses(self, module, batch: dict, training: bool, denominators: torch.Tensor | None = None):
        _, final = module.states(batch)
        embed, lm_head = module.weights()
        return chimera_losses(
            module.draft, final, batch["input_ids"], batch["loss_mask"], embed, lm_head,
            decay=self.cfg.chimera.head_decay, with_accuracy=not training, denominators=denominators,
        )
