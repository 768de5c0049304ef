"""Medusa: depth d of the static tree takes the top-ranked tokens of head d, all read from the last hidden state."""

from __future__ import annotations

import torch

from specdec.models.base import lm_head_weight
from specdec.models.medusa import MedusaHeads
from specdec.runtime.proposers import Committed, Proposal, StaticTreeProposer, register_proposer
from specdec.runtime.tree import DraftTree


@register_proposer("medusa")
class MedusaProposer(StaticTreeProposer):
    """Candidates from Medusa heads: depth d takes the top-ranked tokens of head d."""

    name = "medusa"

    def __init__(self, heads: MedusaHeads, lm_head_weight: torch.Tensor, tree: DraftTree):
        super().__init__(heads, tree, lm_head_weight.device)
        self.lm_head_weight = lm_head_weight

    @classmethod
    def build(cls, target, draft: MedusaHeads, options: DraftTree) -> "MedusaProposer":
        return cls(draft, lm_head_weight(target), options)

    @torch.no_grad()
    def propose(self, committed: Committed) -> Proposal:
        hidden = committed.hidden[-1]
        # Step 1: top candidates of each head that the tree uses.
        logits = [self.draft.project(d, self.draft.head_features(d, hidden), self.lm_head_weight) for d in range(len(self._needed))]
        top = [self._candidates(head, k) for head, k in zip(logits, self._needed)]
        # Step 2: node token = the candidate of its rank at its depth (and, when asked, each head's distribution).
        return self._proposal(top, logits)
