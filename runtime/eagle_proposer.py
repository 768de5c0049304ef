"""EAGLE-1 / EAGLE-3: autoregressive drafting over the drafter's own KV cache, a chain or EAGLE-2's dynamic tree."""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdec.models.base import lm_head_weight
from specdec.runtime.proposers import DEFAULT_TREE_SIZE, Committed, DraftState, Proposal, Proposer, register_proposer
from specdec.runtime.tree import DraftTree

TREE_SIZES = (4, 8, 16, 32)
"""Node counts `tuning_candidates` tries for EAGLE-2's dynamic tree by default (besides chains of 1..depth tokens)."""


@dataclass
class EagleOptions:
    """How an EAGLE drafter proposes."""

    depth: int = 5
    """Draft tokens per path (chain length, or tree depth)."""
    top_k: int = 1
    """1: a chain; more: EAGLE-2's dynamic tree, expanding the top_k best nodes into top_k children per depth."""
    total_tokens: int = 0
    """Nodes verified per step in tree mode (0: every drafted node, at most 60)."""

    def __post_init__(self):
        if self.depth < 1 or self.top_k < 1 or self.total_tokens < 0:
            raise ValueError(f"EAGLE drafting needs depth >= 1, top_k >= 1 and total_tokens >= 0 (got {self.depth}, {self.top_k}, {self.total_tokens})")
        if self.total_tokens == 0:
            self.total_tokens = self.depth if self.top_k == 1 else min(self.top_k + (self.depth - 1) * self.top_k**2, 60)


@register_proposer("eagle1", "eagle3")
class EagleProposer(Proposer):
    """EAGLE-1 / EAGLE-3 drafting with the drafter's own KV cache kept across steps.

    `top_k=1` drafts a chain of `depth` tokens. `top_k>1` grows EAGLE-2's dynamic tree: at each
    depth the `top_k` best nodes by cumulative log-probability are expanded into their `top_k`
    best children, and the `total_tokens` best nodes overall are verified (reranked by
    cumulative log-probability), a different tree every step.
    """

    name = "eagle"
    options_class = EagleOptions

    def __init__(self, draft, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor, options: EagleOptions):
        self.draft, self.embed_weight, self.lm_head_weight, self.options = draft, embed_weight, lm_head_weight, options
        self.chain = DraftTree.chain(options.depth)
        self.feature_layers = draft.feature_layers
        self.state = DraftState()

    @classmethod
    def layout(cls, draft, kind: str = "default", size: int | None = None, depth: int = 5, top_k: int = 4) -> EagleOptions:
        """`chain`: `size` (else `depth`) tokens; `default`: EAGLE-2's dynamic tree of `size` nodes
        (default DEFAULT_TREE_SIZE), `depth` deep, expanding `top_k` nodes by `top_k` children per depth."""
        if kind == "chain":
            return EagleOptions(depth=size or depth)
        return EagleOptions(depth=depth, top_k=top_k, total_tokens=size or DEFAULT_TREE_SIZE)

    @classmethod
    def tuning_candidates(cls, draft, depth: int = 5, top_k: int = 4, sizes: tuple[int, ...] | None = None) -> dict[str, EagleOptions]:
        """Chains of 1..`depth` tokens and dynamic trees of `sizes` (default TREE_SIZES) nodes, `depth` deep, `top_k` wide."""
        candidates = {f"chain-{d}": EagleOptions(depth=d) for d in range(1, depth + 1)}
        return candidates | {f"tree-{n}": EagleOptions(depth=depth, top_k=top_k, total_tokens=n) for n in sizes or TREE_SIZES}

    @classmethod
    def build(cls, target, draft, options: EagleOptions) -> "EagleProposer":
        return cls(draft, target.get_input_embeddings().weight, lm_head_weight(target), options)

    def describe(self) -> dict:
        chain = self.options.top_k == 1
        return {
            "proposer": self.name,
            "tree_size": self.options.total_tokens,
            "tree_depth": self.options.depth,
            "tree_paths": [list(p) for p in self.chain.paths] if chain else None,
            "eagle": dataclasses.asdict(self.options),
        }

    def reset(self, prompt_ids: torch.Tensor) -> None:
        self.state = DraftState()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_weight)

    @torch.no_grad()
    def propose(self, committed: Committed) -> Proposal:
        # Step 1: extend the drafter's cache with the committed (feature, next token) pairs.
        hidden = self.state.extend(self.draft, self._embed(committed.tokens), self.draft.embed_features(committed.features))[-1:]
        anchor = self.state.length - 1
        if self.options.top_k == 1:
            return self._chain(hidden, anchor)
        return self._tree(hidden, anchor)

    def _chain(self, hidden: torch.Tensor, anchor: int) -> Proposal:
        tokens, logits = [], []
        for d in range(self.options.depth):
            # Step 2: the drafter's top token, fed back with its own output state.
            logits.append(self.draft.logits(hidden, self.lm_head_weight)[0])
            token = self.draft.to_target_ids(logits[-1].argmax(-1, keepdim=True))
            tokens.append(token)
            if d + 1 < self.options.depth:
                hidden = self.state.step(self.draft, self._embed(token), hidden, anchor + d + 1)
        proposal = Proposal(self.chain, torch.cat(tokens))
        # Step 3: when asked, the drafter's distribution after every node (the last node is not drafted from: a zero row).
        if self.keep_distributions:
            proposal.draft_dists = self._target_distributions(logits + [None])
        return proposal

    def _tree(self, hidden: torch.Tensor, anchor: int) -> Proposal:
        # Step 2: depth 1: the top_k children of the root.
        nodes: list[_Node] = []
        dists: dict[int | None, torch.Tensor] = {}  # expanded node (None: the root) -> the drafter's log-probabilities after it
        frontier = self._children(hidden, [None], nodes, dists)
        expanded: list[int] = []  # node of each speculative cache entry, in cache order
        for d in range(1, self.options.depth):
            # Step 3: expand the best top_k nodes of the last depth: one drafter step for all of them,
            # each seeing the cache entries of its own ancestors.
            best = heapq.nlargest(self.options.top_k, frontier, key=lambda n: nodes[n].score)
            ancestors = torch.tensor([[e in nodes[n].ancestors for e in expanded] for n in best], dtype=torch.bool).reshape(len(best), len(expanded))
            inputs = torch.stack([nodes[n].source for n in best])
            tokens = torch.tensor([nodes[n].token for n in best], device=inputs.device)
            out = self.state.step(self.draft, self._embed(tokens), inputs, anchor + d, ancestors.to(inputs.device))
            expanded += best
            frontier = self._children(out, best, nodes, dists)
        # Step 4: keep the best total_tokens nodes (a parent ranks above its children) as a tree.
        keep = sorted(range(len(nodes)), key=lambda n: (-nodes[n].score, len(nodes[n].ancestors)))[: self.options.total_tokens]
        return self._as_proposal(keep, nodes, dists)

    def _children(self, hidden: torch.Tensor, parents: list[int | None], nodes: list[_Node], dists: dict) -> list[int]:
        """Append the top_k children of each row of `hidden` (the drafter state after `parents[row]`) to `nodes`
        and the row's log-probabilities to `dists[parent]`; return the children's indices."""
        log_p = torch.log_softmax(self.draft.logits(hidden, self.lm_head_weight).float(), dim=-1)
        dists.update(zip(parents, log_p))
        top = log_p.topk(min(self.options.top_k, log_p.shape[-1]), dim=-1)
        ids, values = self.draft.to_target_ids(top.indices).tolist(), top.values.tolist()
        new = []
        for row, parent in enumerate(parents):
            base, lineage = (0.0, ()) if parent is None else (nodes[parent].score, nodes[parent].ancestors + (parent,))
            for value, token in zip(values[row], ids[row]):
                nodes.append(_Node(base + value, parent, token, lineage, hidden[row]))
                new.append(len(nodes) - 1)
        return new

    def _as_proposal(self, keep: list[int], nodes: list[_Node], dists: dict) -> Proposal:
        # Step 5: a node's path is its parent's path plus its rank among its kept siblings.
        children: dict[int | None, list[int]] = {}
        for n in keep:
            children.setdefault(nodes[n].parent, []).append(n)
        path: dict[int, tuple[int, ...]] = {}
        for n in sorted(keep, key=lambda n: len(nodes[n].ancestors)):
            parent = nodes[n].parent
            siblings = sorted(children[parent], key=lambda s: (-nodes[s].score, s))
            path[n] = (() if parent is None else path[parent]) + (siblings.index(n),)
        tree = DraftTree.from_paths(path.values())
        by_path = {p: nodes[n].token for n, p in path.items()}
        proposal = Proposal(tree, torch.tensor([by_path[p] for p in tree.paths], device=self.embed_weight.device))
        # Step 6: when asked, the drafter's distribution after every node (an unexpanded node: a zero row).
        if self.keep_distributions:
            node_at = {p: n for n, p in path.items()}
            proposal.draft_dists = self._target_distributions([dists[None]] + [dists.get(node_at[p]) for p in tree.paths])
        return proposal

    def _target_distributions(self, rows: list[torch.Tensor | None]) -> torch.Tensor:
        """[len(rows), V] over the target vocabulary: the softmax of each row of drafter logits (or
        log-probabilities) [V_draft] at its target token ids; None: a zero row (no distribution)."""
        out = torch.zeros(len(rows), self.lm_head_weight.shape[0], device=self.lm_head_weight.device)
        present = [i for i, row in enumerate(rows) if row is not None]
        probs = torch.softmax(torch.stack([rows[i] for i in present]).float(), dim=-1)
        ids = self.draft.to_target_ids(torch.arange(probs.shape[-1], device=probs.device))
        out[torch.tensor(present, device=out.device)[:, None], ids] = probs
        return out


@dataclass
class _Node:
    """A candidate of EAGLE-2's dynamic tree."""

    score: float
    """Cumulative draft log-probability of the path to this node."""
    parent: int | None
    """Index of the parent node (None: a child of the root)."""
    token: int
    """Target token id."""
    ancestors: tuple[int, ...]
    """Indices of every ancestor node, root's child first (its length is the node's depth - 1)."""
    source: torch.Tensor
    """The drafter state this node was predicted from (its input when the node is expanded)."""
