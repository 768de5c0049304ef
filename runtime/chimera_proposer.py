"""Chimera: a Medusa-style static tree whose heads run in turn along the previous head's argmax,
over the drafter's own KV cache of trigram features."""

from __future__ import annotations

import torch

from specdec.models.base import lm_head_weight
from specdec.models.chimera import ChimeraDrafter, trigram_embeddings
from specdec.runtime.proposers import Committed, DraftState, Proposal, StaticTreeProposer, register_proposer
from specdec.runtime.tree import DraftTree


@register_proposer("chimera")
class ChimeraProposer(StaticTreeProposer):
    """Chimera drafting laid out as a Medusa-style tree: head d's top candidates at depth d, the
    heads run in turn along the previous head's argmax, over the drafter's own KV cache."""

    name = "chimera"

    def __init__(self, draft: ChimeraDrafter, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor, tree: DraftTree):
        super().__init__(draft, tree, embed_weight.device)
        self.embed_weight, self.lm_head_weight = embed_weight, lm_head_weight
        self.state, self.history = DraftState(), None

    @classmethod
    def build(cls, target, draft: ChimeraDrafter, options: DraftTree) -> "ChimeraProposer":
        return cls(draft, target.get_input_embeddings().weight, lm_head_weight(target), options)

    def reset(self, prompt_ids: torch.Tensor) -> None:
        self.state, self.history = DraftState(), prompt_ids.reshape(-1)[:1]

    @torch.no_grad()
    def propose(self, committed: Committed) -> Proposal:
        # Step 1: extend the cache with the committed entries (trigram ending at each next token, fused with h).
        ids = torch.cat([self.history, committed.tokens])
        trigrams = self._trigrams(ids, len(committed.tokens))
        features = self.state.extend(self.draft, trigrams, committed.hidden)[-1:]
        self.history = ids[-2:]
        anchor, h = self.state.length - 1, committed.hidden[-1:]
        # Step 2: head d's candidates; the next head reads the argmax appended to the sequence.
        top, heads, tail = [], [], ids[-2:]
        for d, k in enumerate(self._needed):
            heads.append(self.draft.head_logits(d, h, features, self.lm_head_weight)[0])
            top.append(self._candidates(heads[-1], k))
            if d + 1 < len(self._needed):
                tail = torch.cat([tail, self.draft.to_target_ids(heads[-1].argmax()[None])])[-3:]
                features = self.state.step(self.draft, self._trigrams(tail, 1), h, anchor + d + 1)
        return self._proposal(top, heads)

    def _trigrams(self, ids: torch.Tensor, count: int) -> torch.Tensor:
        """[count, 3H] trigram embeddings of the last `count` tokens of `ids` (zeros before the sequence start)."""
        return trigram_embeddings(self.embed_weight, ids[-(count + 2) :][None])[0, -count:]
