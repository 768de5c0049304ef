"""Proposers turn the target's state into draft candidates laid out as a tree.

The contract is one method, `propose(hidden) -> Proposal`, where `hidden` is the target's last
hidden state at the last committed position. A proposer also has a `tree` attribute (its
layout; a dynamic proposer may return another tree per step in the Proposal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.models.medusa import MedusaHeads
from specdec.runtime.tree import DraftTree


@dataclass
class Proposal:
    tree: DraftTree
    """Layout of the candidates."""
    tokens: torch.Tensor | list[int]
    """Token of every non-root node, in tree order (len = tree.size); a device tensor avoids a host sync."""
    draft_probs: torch.Tensor | None = None
    """[tree.size + 1, V] draft distribution each node was sampled from; None: deterministic top-k candidates."""


class MedusaProposer:
    """Candidates from Medusa heads: depth d takes the top-ranked tokens of head d."""

    def __init__(self, heads: MedusaHeads, lm_head_weight: torch.Tensor, tree: DraftTree):
        if tree.depth > heads.config.num_heads:
            raise ValueError(
                f"tree depth {tree.depth} exceeds the draft's {heads.config.num_heads} heads: use paths of at most "
                f"{heads.config.num_heads} steps (or DraftTree.chain({heads.config.num_heads}))"
            )
        self.heads, self.lm_head_weight, self.tree = heads, lm_head_weight, tree
        self._needed = tree.ranks_needed()
        # Node i's token sits at this index of the concatenated per-depth top-k lists.
        offsets = [sum(self._needed[:d]) for d in range(len(self._needed))]
        self._gather = torch.tensor([offsets[len(p) - 1] + p[-1] for p in tree.paths], device=lm_head_weight.device)

    @torch.no_grad()
    def propose(self, hidden: torch.Tensor) -> Proposal:
        # Step 1: top candidates of each head that the tree uses (kept on the device: no host sync).
        top = [self.heads.project(d, self.heads.head_features(d, hidden), self.lm_head_weight).topk(k).indices for d, k in enumerate(self._needed)]
        # Step 2: node token = the candidate of its rank at its depth.
        return Proposal(self.tree, torch.cat(top)[self._gather])
