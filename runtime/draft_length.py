"""Learned draft length: verify only the draft nodes likely to be accepted (SpecDec++, C2T).

`DraftLengthProposer(inner, DraftLength(threshold, min_nodes, head))` wraps a built proposer. Every
step it takes the inner proposal with the draft's next-token distributions, estimates for every node
the probability that the target accepts it once its parent is accepted, and keeps the nodes whose
product of estimates along the path is at least `threshold`, bounded below by `min_nodes` (the
best-scoring ones) and above by the inner tree. On a chain that stops drafting where the cumulative
predicted acceptance falls below the threshold; on Medusa, Chimera and EAGLE-2 trees it prunes the
unlikely branches. The estimate is the acceptance head's (`specdec.models.acceptance_head`), or
without one the draft's own probability of the node's token.

Lossless as the inner proposer is: the kept nodes are a subtree of its deterministic candidates, so
greedy verification still yields plain greedy decoding and exact sampling over deterministic
candidates stays exact. Sampled candidates (`Proposal.draft_probs`) and SDSAT's extra tokens are
refused, as `lookup_branch` refuses them. `RecordingVerifier` records, while it verifies, what an
acceptance head learns from: every node's features and whether the target accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specdec.models.acceptance_head import AcceptanceHead, node_features
from specdec.runtime.lookup_branch import MergedTree, kept_layout
from specdec.runtime.proposers import Committed, Outcome, Proposal, Proposer
from specdec.runtime.sdsat_proposer import SdsatProposer
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import Verifier, VerifyBlock, target_probs


@dataclass
class DraftLength:
    """When to stop verifying draft nodes."""

    threshold: float
    """A node is verified while the product of estimated acceptances along its path is at least this (0: keep every node)."""
    min_nodes: int = 1
    """Nodes verified at least, the best-scoring ones (a step never verifies nothing)."""
    head: AcceptanceHead | None = None
    """The learned per-node acceptance; None: the draft's probability of the node's token."""


def path_scores(tree: DraftTree, acceptance: list[float]) -> list[float]:
    """[tree.size + 1] product along every node's path of `acceptance` (tree order, root excluded; clamped to [0, 1]); root 1.0."""
    scores = [1.0]
    for node in range(1, tree.size + 1):
        scores.append(scores[tree.parents[node]] * min(max(acceptance[node - 1], 0.0), 1.0))
    return scores


def kept_nodes(tree: DraftTree, scores: list[float], threshold: float, min_nodes: int) -> set[int]:
    """The root and the nodes whose path score is at least `threshold`, plus the best-scoring ones up to
    `min_nodes`. Scores never grow down a path and ties keep the earlier node, so a kept node's parent is kept."""
    order = sorted(range(1, tree.size + 1), key=lambda n: (-scores[n], n))
    count = max(min(min_nodes, tree.size), sum(scores[n] >= threshold for n in order))
    return {0, *order[:count]}


class DraftLengthProposer(Proposer):
    """Wraps a built proposer: each step, only the nodes its `DraftLength` keeps (see the module docstring)."""

    name = "draft_length"

    def __init__(self, inner: Proposer, length: DraftLength):
        check_draft_length(type(inner), length)
        self.inner, self.length = inner, length
        self.feature_layers = inner.feature_layers
        self.inner.keep_distributions = True
        if length.head is not None and proposer_device(inner) is not None:
            length.head.to(proposer_device(inner))
        self._step: MergedTree | None = None
        self.reset_counts()

    @property
    def keep_distributions(self) -> bool:
        """Always True: the estimates read the draft's distributions (the inner proposer is asked for them)."""
        return True

    @keep_distributions.setter
    def keep_distributions(self, value: bool) -> None:
        self.inner.keep_distributions = True

    def reset_counts(self) -> None:
        """Zero `drafted_nodes` and `verified_nodes` (summed over steps)."""
        self.drafted_nodes = self.verified_nodes = 0

    def describe(self) -> dict:
        """The inner proposer's description with the draft-length options; the tree changes per step (`tree_paths` None)."""
        estimate = "acceptance_head" if self.length.head is not None else "draft_prob"
        return self.inner.describe() | {"tree_paths": None, "draft_length_threshold": self.length.threshold, "draft_length_min_nodes": self.length.min_nodes, "draft_length_estimate": estimate}

    def reset(self, prompt_ids: torch.Tensor) -> None:
        self._step = None
        self.inner.reset(prompt_ids)

    def propose(self, committed: Committed) -> Proposal:
        # Step 1: the inner draft with its distributions.
        proposal = self.inner.propose(committed)
        check_proposal(self.inner, proposal)
        tree = proposal.tree
        # Step 2: every node's estimated acceptance, multiplied down its path.
        acceptance = estimate_acceptance(tree, proposal.tokens, proposal.draft_dists, self.length.head)
        kept = kept_nodes(tree, path_scores(tree, acceptance.tolist()), self.length.threshold, self.length.min_nodes)
        self.drafted_nodes += tree.size
        self.verified_nodes += len(kept) - 1
        # Step 3: the kept subtree, with what the proposal carries re-indexed to it.
        tokens = torch.as_tensor(proposal.tokens)
        children = [list(kids) for kids in tree.children]
        self._step = kept_layout(tree.size, list(tree.parents), children, [None, *tokens.tolist()], kept)
        index = torch.tensor(self._step.inner, device=tokens.device)
        out = Proposal(self._step.tree, tokens[index[1:] - 1], target_forwards=proposal.target_forwards)
        out.draft_dists = proposal.draft_dists[index.to(proposal.draft_dists.device)]
        if proposal.confidences is not None:
            out.confidences = proposal.confidences[(index[1:] - 1).to(proposal.confidences.device)]
        return out

    def observe(self, outcome: Outcome) -> None:
        # The inner proposer sees the accepted path in its own node indices; the bonus is the target's token either way.
        path = outcome.path if self._step is None else [self._step.inner[n] for n in outcome.path]
        self.inner.observe(Outcome(path, outcome.bonus, outcome.extra_hidden, outcome.extra_features))


def proposer_device(proposer: Proposer) -> torch.device | None:
    """The device of the draft a proposer runs (None: it holds no draft)."""
    draft = getattr(proposer, "draft", None)
    return next(draft.parameters()).device if isinstance(draft, torch.nn.Module) else None


def find_draft_length(proposer: Proposer) -> DraftLengthProposer | None:
    """The `DraftLengthProposer` in a chain of wrapping proposers (a lookup branch may wrap it), or None."""
    while proposer is not None and not isinstance(proposer, DraftLengthProposer):
        proposer = getattr(proposer, "inner", None)
    return proposer


def estimate_acceptance(tree: DraftTree, tokens, draft_dists: torch.Tensor, head: AcceptanceHead | None) -> torch.Tensor:
    """[tree.size] estimated acceptance of every node given its parent's: the head's on `node_features`,
    or without a head the draft's probability of the node's token."""
    features = node_features(tree.parents, tree.ranks, tree.depths, tokens, draft_dists)
    if head is None:
        return features[:, 0].exp()
    return head.acceptance(features.to(head.feature_mean.device)).float()


def check_proposal(inner: Proposer, proposal: Proposal) -> None:
    """A proposal the draft length cannot prune losslessly, or without the distributions it reads, is a ValueError."""
    if proposal.draft_probs is not None:
        raise ValueError(f"draft_length cannot prune the {inner.name} proposer's sampled candidates (Proposal.draft_probs): it would bias exact sampling; drop draft_length=")
    if proposal.extra is not None:
        raise ValueError(f"draft_length cannot prune the {inner.name} proposer's trees: they carry extra query tokens; drop draft_length=")
    if proposal.draft_dists is None:
        raise ValueError(f"draft_length needs the draft's next-token distributions, which the {inner.name} proposer does not report; drop draft_length=")


def check_draft_length(proposer_cls: type, length: DraftLength) -> None:
    """Raise ValueError (one line naming the option) when `length` cannot apply to proposals of `proposer_cls`."""
    if not 0.0 <= length.threshold <= 1.0:
        raise ValueError(f"draft_length={length.threshold} is a probability: give a value within [0, 1]")
    if length.min_nodes < 1:
        raise ValueError(f"draft_min_nodes={length.min_nodes}: a step verifies at least one draft node; give draft_min_nodes >= 1")
    if issubclass(proposer_cls, SdsatProposer):
        raise ValueError("draft_length does not apply to SDSAT drafts: their next draft comes from the SA slots verified beside every node; drop draft_length=")


@dataclass
class AcceptanceRecords:
    """What `RecordingVerifier` saw: one row per verified non-root node."""

    features: list[torch.Tensor] = field(default_factory=list)
    """Per step [size, len(FEATURES)] node features."""
    matched: list[torch.Tensor] = field(default_factory=list)
    """Per step [size] 1.0 where the node's token is the target's argmax at its parent (greedy acceptance given the parent)."""
    ratio: list[torch.Tensor] = field(default_factory=list)
    """Per step [size] min(1, p(x) / q(x)): the sampling acceptance given the parent (p at the sampling temperature, 1 when greedy)."""
    step: list[torch.Tensor] = field(default_factory=list)
    """Per step [size] the step's index (verification steps counted from 0 across sequences)."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """{features [N, F], matched [N], ratio [N], step [N]} over every step so far."""
        return {name: torch.cat(getattr(self, name)).cpu() if getattr(self, name) else torch.zeros(0) for name in ("features", "matched", "ratio", "step")}


class RecordingVerifier(Verifier):
    """Wraps a verifier: verifies as it does and records every node's features and labels into `records`."""

    needs_draft_distributions = True

    def __init__(self, inner: Verifier):
        self.inner, self.records = inner, AcceptanceRecords()
        self.name, self.lossless = inner.name, inner.lossless

    def check(self, sampling) -> None:
        self.inner.check(sampling)

    def describe(self) -> dict:
        return self.inner.describe()

    def verify(self, block: VerifyBlock, generator):
        # Step 1: the features of every node, from the draft distributions the proposal carries.
        tree, tokens = block.tree, torch.as_tensor(block.tokens)
        parent = torch.tensor(tree.parents[1:], device=tokens.device)
        self.records.features.append(node_features(tree.parents, tree.ranks, tree.depths, tokens[1:], block.draft_dists).cpu())
        # Step 2: the labels: does the target's argmax at the parent match, and min(1, p / q).
        logits = block.logits[parent]
        self.records.matched.append((logits.argmax(-1) == tokens[1:]).float().cpu())
        sampling = block.sampling if not block.sampling.greedy else type(block.sampling)(temperature=1.0)
        p = target_probs(logits, sampling).gather(1, tokens[1:, None])[:, 0]
        q = block.draft_dists[parent].float().gather(1, tokens[1:, None].to(block.draft_dists.device))[:, 0].to(p.device)
        self.records.ratio.append(torch.where(q > 0, (p / q.clamp_min(1e-10)).clamp(max=1.0), p.new_ones(())).cpu())
        self.records.step.append(torch.full((tree.size,), len(self.records.step), dtype=torch.long))
        return self.inner.verify(block, generator)
