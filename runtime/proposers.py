"""Proposers turn the target's states into draft candidates laid out as a tree.

The contract: `reset(prompt_ids)` before a new sequence, then `propose(committed) -> Proposal`
after the prefill and after every verification step, where `committed` holds the target's states
at the positions just committed and the token that follows each. A proposer has a `tree`
attribute (its layout; a dynamic proposer returns another tree per step in the Proposal) and
`feature_layers` (the target hidden states it reads besides the last one, or None).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdec.models.chimera import ChimeraDrafter, trigram_embeddings
from specdec.models.decoder import KVCache, additive, causal_mask
from specdec.models.medusa import MedusaHeads
from specdec.runtime.tree import DraftTree


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
        self._gather = tree_gather(tree, lm_head_weight.device)

    feature_layers = None

    def reset(self, prompt_ids: torch.Tensor) -> None:
        """Nothing to forget: the heads read only the latest hidden state."""

    @torch.no_grad()
    def propose(self, committed: Committed) -> Proposal:
        hidden = committed.hidden[-1]
        # Step 1: top candidates of each head that the tree uses (kept on the device: no host sync).
        top = [self.heads.project(d, self.heads.head_features(d, hidden), self.lm_head_weight).topk(k).indices for d, k in enumerate(self._needed)]
        # Step 2: node token = the candidate of its rank at its depth.
        return Proposal(self.tree, torch.cat(top)[self._gather])


def tree_gather(tree: DraftTree, device) -> torch.Tensor:
    """Index of every node's token in the concatenation of the per-depth top-k candidate lists."""
    needed = tree.ranks_needed()
    offsets = [sum(needed[:d]) for d in range(len(needed))]
    return torch.tensor([offsets[len(p) - 1] + p[-1] for p in tree.paths], device=device)


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


EAGLE_DRAFT_TYPES = ("eagle1", "eagle3")
"""Draft types drafted autoregressively by `EagleProposer` (laid out by `EagleOptions`)."""


class EagleProposer:
    """EAGLE-1 / EAGLE-3 drafting with the drafter's own KV cache kept across steps.

    `top_k=1` drafts a chain of `depth` tokens. `top_k>1` grows EAGLE-2's dynamic tree: at each
    depth the `top_k` best nodes by cumulative log-probability are expanded into their `top_k`
    best children, and the `total_tokens` best nodes overall are verified (reranked by
    cumulative log-probability; `tree` is then only the nominal depth-`depth` chain).
    """

    def __init__(self, draft, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor, options: EagleOptions):
        self.draft, self.embed_weight, self.lm_head_weight, self.options = draft, embed_weight, lm_head_weight, options
        self.tree = DraftTree.chain(options.depth)
        self.feature_layers = draft.feature_layers
        self.state = DraftState()

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
        tokens = []
        for d in range(self.options.depth):
            # Step 2: the drafter's top token, fed back with its own output state.
            token = self.draft.to_target_ids(self.draft.logits(hidden, self.lm_head_weight).argmax(-1))
            tokens.append(token)
            if d + 1 < self.options.depth:
                hidden = self.state.step(self.draft, self._embed(token), hidden, anchor + d + 1)
        return Proposal(self.tree, torch.cat(tokens))

    def _tree(self, hidden: torch.Tensor, anchor: int) -> Proposal:
        # Step 2: depth 1: the top_k children of the root.
        nodes: list[_Node] = []
        frontier = self._children(hidden, [None], nodes)
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
            frontier = self._children(out, best, nodes)
        # Step 4: keep the best total_tokens nodes (a parent ranks above its children) as a tree.
        keep = sorted(range(len(nodes)), key=lambda n: (-nodes[n].score, len(nodes[n].ancestors)))[: self.options.total_tokens]
        return self._as_proposal(keep, nodes)

    def _children(self, hidden: torch.Tensor, parents: list[int | None], nodes: list[_Node]) -> list[int]:
        """Append the top_k children of each row of `hidden` (the drafter state after `parents[row]`) to `nodes`; return their indices."""
        log_p = torch.log_softmax(self.draft.logits(hidden, self.lm_head_weight).float(), dim=-1)
        top = log_p.topk(min(self.options.top_k, log_p.shape[-1]), dim=-1)
        ids, values = self.draft.to_target_ids(top.indices).tolist(), top.values.tolist()
        new = []
        for row, parent in enumerate(parents):
            base, lineage = (0.0, ()) if parent is None else (nodes[parent].score, nodes[parent].ancestors + (parent,))
            for value, token in zip(values[row], ids[row]):
                nodes.append(_Node(base + value, parent, token, lineage, hidden[row]))
                new.append(len(nodes) - 1)
        return new

    def _as_proposal(self, keep: list[int], nodes: list[_Node]) -> Proposal:
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
        return Proposal(tree, torch.tensor([by_path[p] for p in tree.paths], device=self.embed_weight.device))


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


class ChimeraProposer:
    """Chimera drafting laid out as a Medusa-style tree: head d's top candidates at depth d, the
    heads run in turn along the previous head's argmax, over the drafter's own KV cache."""

    def __init__(self, draft: ChimeraDrafter, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor, tree: DraftTree):
        if tree.depth > draft.config.num_heads:
            raise ValueError(f"tree depth {tree.depth} exceeds the draft's {draft.config.num_heads} heads")
        self.draft, self.embed_weight, self.lm_head_weight, self.tree = draft, embed_weight, lm_head_weight, tree
        self._needed = tree.ranks_needed()
        self._gather = tree_gather(tree, embed_weight.device)
        self.state, self.history = DraftState(), None

    feature_layers = None

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
        top, tail = [], ids[-2:]
        for d, k in enumerate(self._needed):
            logits = self.draft.head_logits(d, h, features, self.lm_head_weight)
            top.append(logits[0].topk(k).indices)
            if d + 1 < len(self._needed):
                tail = torch.cat([tail, logits[0].argmax()[None]])[-3:]
                features = self.state.step(self.draft, self._trigrams(tail, 1), h, anchor + d + 1)
        return Proposal(self.tree, torch.cat(top)[self._gather])

    def _trigrams(self, ids: torch.Tensor, count: int) -> torch.Tensor:
        """[count, 3H] trigram embeddings of the last `count` tokens of `ids` (zeros before the sequence start)."""
        return trigram_embeddings(self.embed_weight, ids[-(count + 2) :][None])[0, -count:]
