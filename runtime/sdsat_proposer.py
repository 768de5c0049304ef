"""SDSAT (Liu & Zhu, 2024): the tuned target drafts for itself through its semantic adaptive (SA) tokens.

k SA tokens placed after a token y at position q make the tuned target predict further tokens:
slot m (m = 1..k) sits at position q+m, sees the sequence through y and slots 1..m, and its
logits predict the token at q+m+1 (y's own logits predict q+1). The generator is given the TUNED
model as its target and the `SdsatDraft` (which holds only the slot ids) as the draft; the
candidates are laid out as a Medusa-style static tree. Two variants (`SdsatOptions.two_step`):

- fused (default): ONE target forward per step. The SA slots for the NEXT step ride in the
  verification block as extra query tokens: one group of slots under every tree node, root
  included. Whichever node a ends up last on the accepted path, the group under it saw exactly
  the committed sequence; the target's bonus token (the next root) lands at a+1, so slot d
  predicts the next tree's depth d (tree depth <= k). Cost: the block grows from n+1 to
  (n+1)(1+d) queries (d = the tree's depth: slots per group), and the first step after the
  prefill has no SA predictions yet, so it verifies the root alone (no draft accepted).
- two_step (the paper's loop): TWO target forwards per step. The proposer keeps its own
  transformers `DynamicCache` of the committed sequence for the tuned target and runs
  [tokens not yet in it (the new root last), SA slots] through it, dropping the slots' entries
  afterwards. The root's own logits give depth 1 (under greedy, the exact next token: it is
  always accepted) and slot d gives depth d+1 (tree depth <= k+1). Cost: a second KV cache as
  large as the generator's (2x KV memory), a second prefill of the prompt on the first step, and
  one extra forward per step, reported as `Proposal.target_forwards` so that the generator's
  `target_forwards` (hence tau) counts it, as tokens/s does.

Both draft deterministic top-k candidates (`Proposal.draft_probs` None), so the shared verifiers
apply: greedy is lossless with respect to the tuned model's own greedy decoding, `sampling` is
exact speculative sampling over the static tree. The paper's nucleus acceptance rule (accept while
a fresh top-p sample equals the candidate) does not keep the target distribution and is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import DynamicCache

from specdec.models.base import final_hidden_states, lm_head_weight
from specdec.models.decoder import causal_mask
from specdec.models.sdsat import SdsatDraft
from specdec.runtime.proposers import Committed, ExtraTokens, Outcome, Proposal, StaticTreeProposer, default_tree, register_proposer, tree_gather
from specdec.runtime.tree import DraftTree

TREE_SIZES = (4, 8, 16, 32)
"""Node counts of the accuracy-best trees `tuning_candidates` tries by default (besides the chains)."""


@dataclass(frozen=True)
class SdsatOptions:
    """How an SDSAT-tuned target drafts for itself."""

    tree: DraftTree
    """Static tree of candidate ranks per depth (fused: depth d = SA slot d, at most k deep;
    two-step: depth 1 = the root's own logits, depth d+1 = slot d, at most k+1 deep)."""
    two_step: bool = False
    """False: fused, the next step's SA slots ride in the verification block (one target forward per step);
    True: the paper's loop, a second forward per step over the proposer's own KV cache (2x KV memory)."""


@register_proposer("sdsat")
class SdsatProposer(StaticTreeProposer):
    """SDSAT drafting over a static tree; `build` returns the fused or the two-step variant (`SdsatOptions.two_step`)."""

    name = "sdsat"
    options_class = SdsatOptions
    variant: ClassVar[str]
    """`fused` or `two_step`, written into `describe`."""
    root_depth: ClassVar[int]
    """Tree depths drafted before the first SA slot: 0 fused, 1 two-step (the root's own logits)."""

    def __init__(self, draft: SdsatDraft, target, tree: DraftTree):
        # The base's depth check (one head per depth) is replaced by the variant's: two-step drafts one depth more.
        deepest = draft.config.num_sa_tokens + self.root_depth
        if not 1 <= tree.depth <= deepest:
            raise ValueError(f"a {self.variant} SDSAT tree with k={draft.config.num_sa_tokens} SA tokens is 1 to {deepest} deep, got depth {tree.depth}: use DraftTree.chain({deepest}) or fewer")
        self.draft, self.tree, self.target = draft, tree, target
        self.lm_head_weight = lm_head_weight(target)
        self._needed, self._gather = tree.ranks_needed(), tree_gather(tree, self.lm_head_weight.device)
        self.slots = draft.slot_ids(self.lm_head_weight.device)[: tree.depth - self.root_depth]
        """The SA ids run per step: slots past the tree's depth would predict positions it never drafts."""

    @classmethod
    def layout(cls, draft, kind: str = "default", size: int | None = None, depth: int = 5, top_k: int = 4) -> SdsatOptions:
        """Fused `chain`: the top-1 token of `size` slots (all k by default); fused `default`: the
        `size`-node tree (default 8) best under the measured slot accuracies (`depth`, `top_k` do not apply)."""
        return SdsatOptions(super().layout(draft, kind, size, depth, top_k))

    @classmethod
    def tuning_candidates(cls, draft, depth: int = 5, top_k: int = 4, sizes: tuple[int, ...] | None = None) -> dict[str, SdsatOptions]:
        """Fused chains of 1..k tokens, two-step chains of 2..k+1 (a 1-token two-step chain is plain
        decoding at twice the cost) and each variant's accuracy-best trees of `sizes` nodes (default
        TREE_SIZES), labelled like "fused chain 3" or "two-step tree 8"; a tree equal to a listed
        layout (as every tree is without measured accuracies) is dropped."""
        k, accuracy = draft.config.num_sa_tokens, draft.config.head_rank_accuracy
        # Step 1: fused: slot d drafts depth d.
        fused = [(f"chain {n}", DraftTree.chain(n)) for n in range(1, k + 1)] + [(f"tree {n}", default_tree(draft, n)) for n in sizes or TREE_SIZES]
        # Step 2: two-step: the root's own top token first (always right under greedy), then the slots.
        two_step = [(f"chain {n}", DraftTree.chain(n)) for n in range(2, k + 2)]
        two_step += [(f"tree {n}", DraftTree.from_accuracies([[1.0]] + accuracy, n) if accuracy else DraftTree.chain(min(n, k + 1))) for n in sizes or TREE_SIZES]
        return _distinct("fused", fused, False) | _distinct("two-step", two_step, True)

    @classmethod
    def build(cls, target, draft: SdsatDraft, options: SdsatOptions) -> "SdsatProposer":
        """The fused or two-step proposer for the tuned `target` with `options.tree`."""
        variant = TwoStepSdsatProposer if options.two_step else FusedSdsatProposer
        return variant(draft, target, options.tree)

    def describe(self) -> dict:
        return super().describe() | {"variant": self.variant}

    def _top(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Each tree depth's top candidates from the last hidden states [depth, H] that draft them (kept on the device)."""
        ranked = (hidden @ self.lm_head_weight.T).topk(max(self._needed), dim=-1).indices
        return [ranked[d, :k] for d, k in enumerate(self._needed)]


def _distinct(variant: str, layouts: list[tuple[str, DraftTree]], two_step: bool) -> dict[str, SdsatOptions]:
    """{"<variant> <label>": options} for each layout whose tree is not listed already."""
    chosen: dict[str, SdsatOptions] = {}
    for label, tree in layouts:
        if all(options.tree != tree for options in chosen.values()):
            chosen[f"{variant} {label}"] = SdsatOptions(tree, two_step)
    return chosen


class FusedSdsatProposer(SdsatProposer):
    """One target forward per step: the verification block carries the next step's SA slots under every node."""

    variant, root_depth = "fused", 0

    def __init__(self, draft: SdsatDraft, target, tree: DraftTree):
        super().__init__(draft, target, tree)
        self.top: list[torch.Tensor] | None = None
        """Each depth's candidates for the next step (None right after `reset`: no SA predictions yet)."""
        self.first = Proposal(DraftTree.from_paths([]), self.slots[:0], extra=self._slot_groups(0))
        """The first step's proposal: the root alone, with the SA slots under it."""
        self.extra = self._slot_groups(tree.size)
        """A slot group under every node of the tree."""

    def reset(self, prompt_ids: torch.Tensor) -> None:
        self.top = None

    @torch.no_grad()
    def propose(self, committed: Committed) -> Proposal:
        # Step 1: the first step has no SA predictions: verify the root alone, slots under it.
        if self.top is None:
            return self.first
        # Step 2: the tree's tokens from the slots under the last accepted node, plus a slot group under every node.
        return Proposal(self.tree, torch.cat(self.top)[self._gather], extra=self.extra)

    def observe(self, outcome: Outcome) -> None:
        # Step 3: the group under the path's last node saw exactly the committed sequence: its slots draft the next step.
        width, last = len(self.slots), outcome.path[-1]
        self.top = self._top(outcome.extra_hidden[last * width : (last + 1) * width])

    def _slot_groups(self, size: int) -> ExtraTokens:
        """The SA slots under every node of a `size`-node tree, root first: node j's group is entries j*d..j*d+d-1."""
        nodes = tuple(node for node in range(size + 1) for _ in self.slots)
        return ExtraTokens(self.slots.repeat(size + 1), nodes)


class TwoStepSdsatProposer(SdsatProposer):
    """The paper's loop: a second target forward per step over the proposer's own KV cache of the committed sequence."""

    variant, root_depth = "two_step", 1

    def __init__(self, draft: SdsatDraft, target, tree: DraftTree):
        super().__init__(draft, target, tree)
        self.cache = DynamicCache(config=target.config)
        """The tuned target's KV entries of the committed sequence through the last root (no SA entries)."""
        self.pending = self.slots[:0]
        """Tokens of the sequence not yet in `cache` and not among the next committed tokens."""

    def reset(self, prompt_ids: torch.Tensor) -> None:
        """A fresh cache; the prompt's first token waits for the first `propose` (the rest arrive as committed tokens)."""
        self.cache = DynamicCache(config=self.target.config)
        self.pending = prompt_ids.reshape(-1)[:1].to(self.slots.device)

    @torch.no_grad()
    def propose(self, committed: Committed) -> Proposal:
        # Step 1: the tokens not yet in our cache (the newly committed ones, the new root last), then the SA slots.
        block = torch.cat([self.pending, committed.tokens.to(self.slots.device), self.slots])
        past, root = self.cache.get_seq_length(), len(block) - len(self.slots) - 1
        # Step 2: one causal forward over the block at the next positions: slot m sits m places past the root.
        positions = torch.arange(past, past + len(block), device=block.device)[None]
        mask = causal_mask(len(block), past, self.lm_head_weight.dtype, block.device)[None, None]
        hidden = final_hidden_states(self.target, block[None], mask, position_ids=positions, past_key_values=self.cache, use_cache=True)[0]
        # Step 3: drop the slots' entries (transformers crops by a negative count): the cache ends at the root.
        if len(self.slots):
            self.cache.crop(-len(self.slots))
        self.pending = block[:0]
        # Step 4: depth 1 from the root's own logits, depth d+1 from slot d.
        proposal = self._proposal(self._top(hidden[root:]))
        proposal.target_forwards = 1  # this forward is a target forward too: tau counts it
        return proposal
