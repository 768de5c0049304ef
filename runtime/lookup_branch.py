"""A prompt-lookup branch for any learned proposer: n-gram candidates join its tree under the same node budget.

`LookupBranchProposer(inner, tokens, ngram)` wraps a built proposer. Every step it asks the inner
proposer for its `Proposal`, looks up what followed the longest suffix (up to `ngram` tokens) of
the sequence so far (prompt + committed tokens, the root last) at its most recent earlier
occurrence (`lookup.find_continuation`, the matcher `ReferenceLookupProposer` uses, as Hugging
Face prompt lookup does), and merges up to `tokens` of that continuation into the tree
(`merge_lookup`): the lookup chain runs along existing nodes while it agrees with them and adds
new nodes where it departs. The merged tree keeps the inner tree's node count; to stay within it
the lowest-scoring leaves are dropped one by one (a node whose children are kept is never dropped,
so the result is a tree), where a node's score is the product along its path of per-node
confidences:

- a learned node: the proposer's `Proposal.confidences` (read as probabilities, clamped to
  [0, 1]) when it gives them, else the prior 1 / (rank + 2) (top candidate 1/2, second 1/3, ...);
- a lookup token matched by an n-gram of length n: n / (n + 1) (1-gram 1/2, 3-gram 3/4);
- a node both propose: the larger of its two scores.
Ties drop the node added last (lookup-only nodes before learned ones).

Lossless as the inner proposer is: every candidate is a deterministic function of the committed
sequence and siblings carry distinct tokens, so greedy verification still yields plain greedy
decoding and exact sampling (`draft_probs` None: a candidate is accepted with p(x), else removed
from p) still samples the target's distribution. A proposal that carries `draft_probs` (sampled
candidates) is refused: pruning sampled siblings by their scores biases the draws, so exact
sampling would no longer be exact. SDSAT is refused too: its next draft comes from the SA slots
under the accepted path's last node (`observe`), which a lookup-only node does not carry.

The inner proposer's state stays its own: `observe` hands it the part of the accepted path inside
its own nodes (in its node indices) and, as the bonus, the token committed right after that part;
the next `Committed` holds the target's states along the whole accepted path, lookup nodes
included, which is what the EAGLE and Chimera drafters extend their caches with (their speculative
entries are dropped first), so their caches stay right whichever branch was accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.runtime.lookup import find_continuation
from specdec.runtime.proposers import Committed, ExtraTokens, Outcome, Proposal, Proposer
from specdec.runtime.sdsat_proposer import SdsatProposer
from specdec.runtime.tree import DraftTree

LOOKUP_NODE = -1
"""`MergedTree.inner` entry of a node only the lookup proposed."""


def lookup_confidence(ngram: int) -> float:
    """Per-token confidence of a lookup continuation matched by an n-gram of length `ngram`: n / (n + 1)."""
    return ngram / (ngram + 1)


def learned_scores(tree: DraftTree, confidences: list[float] | None) -> list[float]:
    """[tree.size + 1] score of every node (root 1.0): the product along its path of the clamped
    `confidences` (tree order, root excluded), or of 1 / (rank + 2) without them."""
    scores = [1.0]
    for node in range(1, tree.size + 1):
        own = min(max(confidences[node - 1], 0.0), 1.0) if confidences is not None else 1.0 / (tree.ranks[node] + 2)
        scores.append(scores[tree.parents[node]] * own)
    return scores


@dataclass
class MergedTree:
    """An inner tree with a lookup chain merged in (`merge_lookup`)."""

    tree: DraftTree
    """The merged layout, at most as many nodes as the inner tree."""
    tokens: list[int]
    """[tree.size] token of every non-root node, in tree order."""
    inner: tuple[int, ...]
    """[tree.size + 1] the inner tree's index of every node (root 0), LOOKUP_NODE for a node only the lookup proposed."""
    first_child_inner: tuple[bool, ...]
    """[tree.size + 1] True when a node's first child is an inner node, or it has no child (its draft distribution row still applies)."""


def merge_lookup(tree: DraftTree, tokens: list[int], scores: list[float], chain: list[int], chain_confidence: float, pinned: tuple[int, ...] = ()) -> MergedTree:
    """Merge the lookup `chain` (depth 1 first) into `tree` (node `tokens`, `scores` from `learned_scores`),
    keeping at most `tree.size` nodes; `pinned` inner nodes (those carrying extra tokens) and their ancestors stay."""
    # Step 1: the inner nodes, in their tree order.
    parents, node_tokens, node_scores = list(tree.parents), [None, *tokens], list(scores)
    children = [list(kids) for kids in tree.children]
    # Step 2: walk the chain: follow a child with the same token, else add a lookup-only node.
    current = 0
    for depth, token in enumerate(chain, start=1):
        score = chain_confidence**depth
        match = next((c for c in children[current] if node_tokens[c] == token), None)
        if match is None:
            parents.append(current)
            node_tokens.append(token)
            node_scores.append(score)
            children.append([])
            match = len(parents) - 1
            children[current].append(match)
        node_scores[match] = max(node_scores[match], score)
        current = match
    # Step 3: drop the lowest-scoring leaf until the budget holds (the last added first among ties).
    kept = _prune(parents, children, node_scores, tree.size, _with_ancestors(pinned, parents))
    return kept_layout(tree.size, parents, children, node_tokens, kept)


def _with_ancestors(nodes: tuple[int, ...], parents: list[int]) -> set[int]:
    """`nodes`, their ancestors and the root."""
    closed = {0}
    for node in nodes:
        while node > 0 and node not in closed:
            closed.add(node)
            node = parents[node]
    return closed


def _prune(parents: list[int], children: list[list[int]], scores: list[float], budget: int, pinned: set[int]) -> set[int]:
    """The nodes left (root included) after dropping, one at a time, the unpinned leaf of lowest score (ties: the highest index) until `budget` non-root nodes remain."""
    kept = set(range(len(parents)))
    live_children = [len(kids) for kids in children]
    while len(kept) - 1 > budget:
        leaf = min((n for n in kept if live_children[n] == 0 and n not in pinned), key=lambda n: (scores[n], -n))
        kept.remove(leaf)
        live_children[parents[leaf]] -= 1
    return kept


def kept_layout(inner_size: int, parents: list[int], children: list[list[int]], tokens: list, kept: set[int]) -> MergedTree:
    """The merged tree of the `kept` nodes: a node's rank is its place among its kept siblings (inner nodes in their rank order, then the lookup-only one)."""
    # Step 1: paths from the root down (by depth: a parent's path before its children's).
    path: dict[int, tuple[int, ...]] = {0: ()}
    for node in sorted(kept - {0}, key=lambda n: _depth(n, parents)):
        siblings = [c for c in children[parents[node]] if c in kept]
        path[node] = path[parents[node]] + (siblings.index(node),)
    tree = DraftTree.from_paths(p for n, p in path.items() if n)
    # Step 2: every node in the merged tree's order, and what it was.
    order = {p: n for n, p in path.items()}
    nodes = [0] + [order[p] for p in tree.paths]
    first_inner = tuple(_first_child_is_inner(children[n], kept, inner_size) for n in nodes)
    return MergedTree(tree, [tokens[n] for n in nodes[1:]], tuple(n if n <= inner_size else LOOKUP_NODE for n in nodes), first_inner)


def _depth(node: int, parents: list[int]) -> int:
    depth = 0
    while node > 0:
        node, depth = parents[node], depth + 1
    return depth


def _first_child_is_inner(kids: list[int], kept: set[int], inner_size: int) -> bool:
    """True when the first kept child (rank 0) is an inner node, or no child is kept."""
    first = next((c for c in kids if c in kept), None)
    return first is None or first <= inner_size


class LookupBranchProposer(Proposer):
    """Wraps a built proposer: its tree plus a prompt-lookup chain of up to `tokens` tokens, matched by
    suffixes of up to `ngram` tokens, within the inner tree's node budget (see the module docstring)."""

    name = "lookup_branch"

    def __init__(self, inner: Proposer, tokens: int, ngram: int = 3):
        check_lookup_branch(type(inner), tokens, ngram)
        self.inner, self.tokens, self.ngram = inner, tokens, ngram
        self.feature_layers = inner.feature_layers
        self.sequence: list[int] = []
        self._step: MergedTree | None = None
        """The last proposal's merged tree (None: the inner proposal went out unchanged)."""
        self.reset_counts()

    @property
    def keep_distributions(self) -> bool:
        """Forwarded to the inner proposer (the generator sets it from the verifier)."""
        return self.inner.keep_distributions

    @keep_distributions.setter
    def keep_distributions(self, value: bool) -> None:
        self.inner.keep_distributions = value

    def reset_counts(self) -> None:
        """Zero `lookup_steps` (steps whose tree got lookup tokens) and `accepted_lookup_tokens` (accepted nodes only the lookup proposed)."""
        self.lookup_steps = 0
        self.accepted_lookup_tokens = 0

    def describe(self) -> dict:
        """The inner proposer's description with the branch's options; the tree changes per step (`tree_paths` None)."""
        inner = self.inner.describe()
        depth = max(inner.get("tree_depth") or 0, self.tokens)
        return inner | {"tree_depth": depth, "tree_paths": None, "lookup_branch": self.tokens, "lookup_ngram": self.ngram}

    def reset(self, prompt_ids: torch.Tensor) -> None:
        # The prefill's committed tokens are prompt_ids[1:] and the root: together the whole sequence.
        self.sequence, self._step = prompt_ids.reshape(-1)[:1].tolist(), None
        self.inner.reset(prompt_ids)

    def propose(self, committed: Committed) -> Proposal:
        # Step 1: the inner draft, and the lookup continuation of the sequence (root last).
        self.sequence += committed.tokens.tolist()
        proposal = self.inner.propose(committed)
        if proposal.draft_probs is not None:
            raise ValueError(f"lookup_branch={self.tokens} cannot join the {self.inner.name} proposer's sampled candidates (Proposal.draft_probs): pruning them by score would bias exact sampling; set lookup_branch=0")
        chain, matched = find_continuation(self.sequence, self.tokens, self.ngram)
        self._step = None
        if not chain:
            return proposal
        # Step 2: merge the chain into the tree under the same node budget.
        tokens = torch.as_tensor(proposal.tokens)
        confidences = proposal.confidences.tolist() if proposal.confidences is not None else None
        pinned = tuple(proposal.extra.nodes) if proposal.extra is not None else ()
        merged = merge_lookup(proposal.tree, tokens.tolist(), learned_scores(proposal.tree, confidences), chain, lookup_confidence(matched), pinned)
        self._step = merged
        self.lookup_steps += 1
        # Step 3: everything the proposal carries, re-indexed to the merged tree.
        return self._merged_proposal(proposal, merged, tokens.device, lookup_confidence(matched))

    def _merged_proposal(self, proposal: Proposal, merged: MergedTree, device, confidence: float) -> Proposal:
        """`proposal`'s confidences (lookup-only nodes: the lookup's `confidence`), draft distributions
        (lookup-only nodes, and nodes whose first child is lookup-only: a zero row, no distribution) and
        extra tokens (re-attached to their nodes' new indices) on the merged tree."""
        inner = torch.tensor(merged.inner)
        out = Proposal(merged.tree, torch.tensor(merged.tokens, dtype=torch.long, device=device), target_forwards=proposal.target_forwards)
        if proposal.confidences is not None:
            values = torch.cat([proposal.confidences, proposal.confidences.new_full((1,), confidence)])
            out.confidences = values[torch.where(inner[1:] > 0, inner[1:] - 1, -1).to(values.device)]
        if proposal.draft_dists is not None:
            table = torch.cat([proposal.draft_dists, proposal.draft_dists.new_zeros(1, proposal.draft_dists.shape[-1])])
            usable = torch.tensor(merged.first_child_inner)
            out.draft_dists = table[torch.where(usable & (inner >= 0), inner, -1).to(table.device)]
        if proposal.extra is not None:
            new_index = {n: i for i, n in enumerate(merged.inner) if n != LOOKUP_NODE}
            out.extra = ExtraTokens(proposal.extra.tokens, tuple(new_index[n] for n in proposal.extra.nodes))
        return out

    def observe(self, outcome: Outcome) -> None:
        # The inner proposer sees the part of the path inside its own nodes, in its own indices.
        if self._step is None:
            self.inner.observe(outcome)
            return
        inner = [self._step.inner[n] for n in outcome.path]
        kept = next((i for i, n in enumerate(inner) if n == LOOKUP_NODE), len(inner))
        self.accepted_lookup_tokens += len(inner) - kept
        bonus = outcome.bonus if kept == len(inner) else self._step.tokens[outcome.path[kept] - 1]
        self.inner.observe(Outcome(inner[:kept], bonus, outcome.extra_hidden, outcome.extra_features))


def check_lookup_branch(proposer_cls: type, tokens: int, ngram: int) -> None:
    """Raise ValueError (one line naming the option) when a lookup branch of `tokens` tokens, `ngram`-gram
    matches, cannot join proposals of `proposer_cls` losslessly."""
    if tokens < 1 or ngram < 1:
        raise ValueError(f"a lookup branch needs lookup_branch >= 1 and lookup_ngram >= 1 (got lookup_branch={tokens}, lookup_ngram={ngram})")
    if issubclass(proposer_cls, SdsatProposer):
        raise ValueError(
            f"lookup_branch={tokens} does not apply to SDSAT drafts: their next draft comes from the SA slots under the accepted path's last node, "
            "which a lookup-only node does not carry; set lookup_branch=0"
        )
