"""The proposer contract: what a proposer receives, what it returns, and the registry by draft type.

A proposer turns the target's states into draft candidates laid out as a tree. The decode loop
calls `reset(prompt_ids)` before a new sequence, then `propose(committed) -> Proposal` after the
prefill and after every verification step, where `committed` holds the target's states at the
positions just committed and the token that follows each; after each verification it calls
`observe(outcome)` with the accepted path and the target's states of the proposal's extra tokens.

One file per method, `runtime/<name>_proposer.py`, defines a `Proposer` subclass and registers it
for its draft types with `@register_proposer(...)`; importing `specdec.runtime` imports every such
module, so no list is kept by hand. The class owns its layout options (`options_class`), how to
choose them (`layout`, `tuning_candidates`), how to build itself from a target and a draft
(`build`) and how it describes itself in result JSON (`describe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from specdec.models.decoder import KVCache, additive, causal_mask
from specdec.runtime.tree import DraftTree

DEFAULT_TREE_SIZE = 8
"""Nodes verified per step by a default layout."""
LAYOUT_KINDS = ("default", "chain")
"""Layouts every proposer chooses for itself (`tuned` measures the `tuning_candidates`)."""


@dataclass
class Committed:
    """What the target just committed: n positions and the token after each."""

    hidden: torch.Tensor
    """[n, H] the target's last hidden state (after the final norm) at those positions."""
    features: torch.Tensor
    """[n, F] the states the drafter reads there (`hidden` itself unless the drafter fuses other layers)."""
    tokens: torch.Tensor
    """[n] the token following each position; the last is the root of the next draft (not yet in the target's cache)."""


@dataclass
class ExtraTokens:
    """Query tokens appended to the verify block after the tree nodes (see `DraftTree.block_visibility`).

    The target runs them in the same forward; their states come back in `Outcome`, their KV
    entries are never committed and the verifier does not judge them."""

    tokens: torch.Tensor | list[int]
    """[m] token ids."""
    nodes: tuple[int, ...]
    """[m] the tree node each token is attached under (0 = the root); tokens under one node form a group, in order."""

    def __post_init__(self):
        if len(self.tokens) != len(self.nodes):
            raise ValueError(f"{len(self.tokens)} extra tokens but {len(self.nodes)} nodes to attach them under: give one node per token")


@dataclass
class Proposal:
    """One step's draft: the tree and its tokens, with what the verifier and the decode loop may use."""

    tree: DraftTree
    """Layout of the candidates (a proposer may return a different tree every step)."""
    tokens: torch.Tensor | list[int]
    """Token of every non-root node, in tree order (len = tree.size); a device tensor avoids a host sync."""
    draft_probs: torch.Tensor | None = None
    """[tree.size + 1, V] draft distribution each node was sampled from; None: deterministic top-k candidates."""
    confidences: torch.Tensor | None = None
    """[tree.size] the proposer's confidence in every non-root node, handed to the verifier; None: none."""
    extra: ExtraTokens | None = None
    """Query tokens verified alongside the tree whose target states go to `Proposer.observe`; None: none."""
    draft_dists: torch.Tensor | None = None
    """[tree.size + 1, V] the draft's next-token distribution at every node (what its children were drawn
    from), over the target vocabulary; only filled when the generator asks (`Proposer.keep_distributions`)."""
    target_forwards: int = 0
    """Target forwards the proposer itself ran to draft this step (SDSAT's two-step loop: 1); the decode loop counts them in tau."""


@dataclass
class Outcome:
    """What one verification step decided, handed to `Proposer.observe`."""

    path: list[int]
    """Accepted node indices, root first."""
    bonus: int
    """The target's token after the path (the next root)."""
    extra_hidden: torch.Tensor
    """[m, H] the target's last hidden state at each extra token of the proposal (m = 0 without extras)."""
    extra_features: torch.Tensor
    """[m, F] the drafter's feature layers at each extra token (`extra_hidden` unless it fuses others)."""


class Proposer:
    """Base of every proposer; a subclass sets `name` and `options_class` and defines the methods
    that raise NotImplementedError here."""

    name: ClassVar[str]
    """Proposer name written into result JSON (`describe`)."""
    options_class: ClassVar[type]
    """Type of the layout options `build` takes (checked by `SpeculativeGenerator.from_draft`)."""
    feature_layers: tuple[int, ...] | None = None
    """Target hidden states (HF output_hidden_states indices) the proposer reads besides the last one; None: only the last."""
    keep_distributions: bool = False
    """Set by the generator when the verifier reads `Proposal.draft_dists`; a proposer that can, then fills them."""

    @classmethod
    def layout(cls, draft, kind: str = "default", size: int | None = None, depth: int = 5, top_k: int = 4):
        """The options for a `kind` in LAYOUT_KINDS (`chain`: top-1 tokens only) of `size` nodes,
        `depth` deep and `top_k` wide where the method has such knobs."""
        raise NotImplementedError(f"{cls.__name__} must define layout(draft, kind, size, depth, top_k)")

    @classmethod
    def tuning_candidates(cls, draft, depth: int = 5, top_k: int = 4, sizes: tuple[int, ...] | None = None) -> dict:
        """{label: options} that `tune_tree` times (`sizes`: node counts to try, None: the method's own);
        by default the default and the chain layout."""
        return {kind: cls.layout(draft, kind, None, depth, top_k) for kind in LAYOUT_KINDS}

    @classmethod
    def build(cls, target, draft, options) -> "Proposer":
        """The proposer for `draft` (already on the target's device, checked against it) drafting as `options` say."""
        raise NotImplementedError(f"{cls.__name__} must define build(target, draft, options)")

    def reset(self, prompt_ids: torch.Tensor) -> None:
        """Forget the previous sequence; `prompt_ids` [1, T] starts the next."""

    def propose(self, committed: Committed) -> Proposal:
        """The next draft, from the target's states at the positions just committed."""
        raise NotImplementedError(f"{type(self).__name__} must define propose(committed)")

    def observe(self, outcome: Outcome) -> None:
        """Hook after every verification step (nothing by default): the accepted path and the extra tokens' states."""

    def describe(self) -> dict:
        """JSON-able description for result JSON: `proposer`, `tree_size` (nodes verified per step),
        `tree_depth`, `tree_paths` (None when the tree changes per step) and any options of the method."""
        return {"proposer": self.name}


PROPOSERS: dict[str, type[Proposer]] = {}
"""Draft type -> proposer class, filled by `register_proposer` when `specdec.runtime` is imported."""


def register_proposer(*draft_types: str):
    """Class decorator: `cls` proposes for drafts of these `draft_type`s."""

    def register(cls: type[Proposer]) -> type[Proposer]:
        for draft_type in draft_types:
            PROPOSERS[draft_type] = cls
        return cls

    return register


def proposer_class(draft_type: str) -> type[Proposer]:
    """The proposer registered for `draft_type`; an unknown one raises ValueError naming the registered types."""
    if draft_type not in PROPOSERS:
        raise ValueError(
            f"no proposer for draft type {draft_type!r}: registered are {', '.join(sorted(PROPOSERS))}; "
            f"add a runtime/<name>_proposer.py that registers one with @register_proposer({draft_type!r})"
        )
    return PROPOSERS[draft_type]


def tree_gather(tree: DraftTree, device) -> torch.Tensor:
    """Index of every node's token in the concatenation of the per-depth top-k candidate lists."""
    needed = tree.ranks_needed()
    offsets = [sum(needed[:d]) for d in range(len(needed))]
    return torch.tensor([offsets[len(p) - 1] + p[-1] for p in tree.paths], device=device)


def default_tree(draft, size: int = DEFAULT_TREE_SIZE) -> DraftTree:
    """The `size`-node tree with the largest expected acceptance under a head draft's measured
    per-rank head accuracies (config `head_rank_accuracy`); without them, a chain."""
    accuracy = draft.config.head_rank_accuracy
    if accuracy:
        return DraftTree.from_accuracies(accuracy, size)
    return DraftTree.chain(min(size, draft.config.num_heads))


class StaticTreeProposer(Proposer):
    """Base for drafts with one head per draft position (`config.num_heads`, `config.head_rank_accuracy`):
    a static `DraftTree` whose node at depth d is the candidate of its rank from head d."""

    options_class = DraftTree
    candidate_sizes: ClassVar[tuple[int, ...]] = (1, 2, 4, 8, 16, 32)
    """Tree sizes `tuning_candidates` tries by default."""

    def __init__(self, draft, tree: DraftTree, device):
        heads = draft.config.num_heads
        if tree.depth > heads:
            raise ValueError(f"tree depth {tree.depth} exceeds the draft's {heads} heads: use paths of at most {heads} steps (or DraftTree.chain({heads}))")
        self.draft, self.tree = draft, tree
        self._needed = tree.ranks_needed()
        self._gather = tree_gather(tree, device)
        self._dist_rows = torch.tensor(tree.depths, device=device)  # every node's row of the `_distributions` table

    @classmethod
    def layout(cls, draft, kind: str = "default", size: int | None = None, depth: int = 5, top_k: int = 4) -> DraftTree:
        """`chain`: the top-1 token of `size` heads (all by default); `default`: the `size`-node
        tree best under the draft's measured accuracies (`depth` and `top_k` do not apply)."""
        if kind == "chain":
            length = size or draft.config.num_heads
            if length > draft.config.num_heads:
                raise ValueError(f"tree=chain tree_size={length} is deeper than the draft's {draft.config.num_heads} heads")
            return DraftTree.chain(length)
        return default_tree(draft, size or DEFAULT_TREE_SIZE)

    @classmethod
    def tuning_candidates(cls, draft, depth: int = 5, top_k: int = 4, sizes: tuple[int, ...] | None = None) -> dict[int, DraftTree]:
        """{size: best tree of that size} for each of `sizes` (default `candidate_sizes`), repeats dropped
        (a chain stops growing at the number of heads)."""
        candidates: dict[int, DraftTree] = {}
        for size in sizes or cls.candidate_sizes:
            tree = default_tree(draft, size)
            if tree not in candidates.values():
                candidates[size] = tree
        return candidates

    def describe(self) -> dict:
        return {"proposer": self.name, "tree_size": self.tree.size, "tree_depth": self.tree.depth, "tree_paths": [list(p) for p in self.tree.paths]}

    def _candidates(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """The `k` best candidates of a head's logits [.., V_draft], as target token ids (a draft with a
        reduced vocabulary maps them with `to_target_ids`, specdec.models.vocab)."""
        return self.draft.to_target_ids(logits.topk(k, dim=-1).indices)

    def _proposal(self, top: list[torch.Tensor], logits: list[torch.Tensor] | None = None) -> Proposal:
        """The tree's tokens from each depth's top candidates (kept on the device: no host sync); when
        asked (`keep_distributions`), the distributions from each depth's `logits` [V_draft] too (None: none)."""
        proposal = Proposal(self.tree, torch.cat(top)[self._gather])
        if self.keep_distributions and logits is not None:
            proposal.draft_dists = self._distributions(logits)
        return proposal

    def _distributions(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """[tree.size + 1, V]: depth d's softmax at every node of depth d (its children are depth d+1's
        candidates), over the target vocabulary (zero outside a reduced draft vocabulary); nodes at
        the tree's last depth have no children and get a zero row."""
        probs = self.draft.to_target_vocab(torch.softmax(torch.stack(logits).float(), dim=-1))
        table = torch.cat([probs, probs.new_zeros(1, probs.shape[-1])])
        return table[self._dist_rows]


class DraftState:
    """A drafter's KV cache over the committed sequence; speculative entries are dropped before the next extension."""

    def __init__(self):
        self.cache, self.length = KVCache(), 0

    def extend(self, model, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Run `model(embeds, hidden)` over n committed entries [n, ...] at the next positions; returns its outputs [n, H]."""
        self.cache.crop(self.length)
        n = embeds.shape[0]
        positions = torch.arange(self.length, self.length + n, device=embeds.device)[None]
        out = model(embeds[None], hidden[None], positions, causal_mask(n, self.length, hidden.dtype, hidden.device), self.cache)[0]
        self.length += n
        return out

    def step(self, model, embeds: torch.Tensor, hidden: torch.Tensor, position: int, ancestors: torch.Tensor | None = None) -> torch.Tensor:
        """One speculative step for k queries [k, ...] at `position`; query i sees the committed
        entries, the speculative entries marked in `ancestors[i]` ([k, speculative], None: all) and itself."""
        k = embeds.shape[0]
        visible = torch.ones(k, len(self.cache) + k, dtype=torch.bool, device=embeds.device)
        if ancestors is not None:
            visible[:, self.length : len(self.cache)] = ancestors
        visible[:, len(self.cache) :] = torch.eye(k, dtype=torch.bool, device=embeds.device)
        mask = additive(visible, hidden.dtype)
        positions = torch.full((1, k), position, device=embeds.device)
        return model(embeds[None], hidden[None], positions, mask, self.cache)[0]
