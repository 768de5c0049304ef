"""Draft trees: the candidate layout verified in one target forward.

A tree is given by its paths ("Medusa choices"): path (2, 0) is the node reached by taking the
3rd-ranked candidate at depth 1, then the top candidate at depth 2. Node 0 is the root, the
token the target itself chose last (not yet in the KV cache); nodes 1..n follow in order of
(depth, path). Each node sees the prefix, its ancestors and itself; its position is
prefix length + depth.

A verify block may append extra query tokens after the nodes, each attached under a node
(`extra_nodes[i]`, 0 = the root): it sees the prefix, that node's ancestors, the node and the
earlier extra tokens attached under the same node (its group); its position is the node's
position + its index in the group + 1. No tree node sees an extra token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from specdec.models.acceptance import best_tree


@dataclass(frozen=True)
class DraftTree:
    """A static draft tree (root excluded from `paths`)."""

    paths: tuple[tuple[int, ...], ...]
    """Node paths, ordered by (depth, path); every prefix of a path is itself a path."""

    @classmethod
    def from_paths(cls, paths) -> "DraftTree":
        """Build a tree from any iterable of paths; missing prefixes are an error."""
        ordered = tuple(sorted({tuple(int(i) for i in p) for p in paths}, key=lambda p: (len(p), p)))
        known = set(ordered)
        for path in ordered:
            if not path or min(path) < 0:
                raise ValueError(f"invalid tree path {path}: paths are non-empty tuples of candidate ranks >= 0")
            if len(path) > 1 and path[:-1] not in known:
                raise ValueError(f"tree path {path} has no parent {path[:-1]}: list every prefix of a path")
        return cls(ordered)

    @classmethod
    def chain(cls, depth: int) -> "DraftTree":
        """A chain: the top candidate at each of `depth` positions."""
        return cls.from_paths((0,) * d for d in range(1, depth + 1))

    @classmethod
    def from_accuracies(cls, rank_accuracy: list[list[float]], size: int) -> "DraftTree":
        """The tree of `size` nodes with the largest expected accepted length under the measured
        per-rank accuracies `rank_accuracy[d][r]` (see `specdec.models.acceptance.best_tree`)."""
        return cls.from_paths(best_tree(rank_accuracy, size)[0])

    @property
    def size(self) -> int:
        """Draft nodes (root excluded)."""
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max((len(p) for p in self.paths), default=0)

    @functools.cached_property
    def parents(self) -> tuple[int, ...]:
        """Parent index of every node, root included (root's parent is -1)."""
        index = {p: i + 1 for i, p in enumerate(self.paths)}
        return (-1,) + tuple(index.get(p[:-1], 0) for p in self.paths)

    @functools.cached_property
    def depths(self) -> tuple[int, ...]:
        return (0,) + tuple(len(p) for p in self.paths)

    @functools.cached_property
    def ranks(self) -> tuple[int, ...]:
        """Candidate rank of every node at its depth (root: 0)."""
        return (0,) + tuple(p[-1] for p in self.paths)

    @functools.cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """Children of every node, in rank order."""
        kids: list[list[int]] = [[] for _ in range(self.size + 1)]
        for node in range(1, self.size + 1):
            kids[self.parents[node]].append(node)
        return tuple(tuple(sorted(k, key=lambda n: self.ranks[n])) for k in kids)

    @functools.cached_property
    def ancestor_matrix(self) -> torch.Tensor:
        """Bool [n+1, n+1]: entry (i, j) is True when node j is node i or one of its ancestors."""
        count = self.size + 1
        matrix = torch.zeros(count, count, dtype=torch.bool)
        for node in range(count):
            j = node
            while j >= 0:
                matrix[node, j] = True
                j = self.parents[j]
        return matrix

    def block_visibility(self, extra_nodes: tuple[int, ...] = ()) -> torch.Tensor:
        """Bool [n+1+m, n+1+m] over the block (nodes, then m extra tokens): entry (i, j) is True when i sees j."""
        if not extra_nodes:
            return self.ancestor_matrix
        # Step 1: nodes see their ancestors; no node sees an extra token.
        self._check_extra_nodes(extra_nodes)
        count = self.size + 1
        visible = torch.zeros(count + len(extra_nodes), count + len(extra_nodes), dtype=torch.bool)
        visible[:count, :count] = self.ancestor_matrix
        # Step 2: an extra token sees its node's row (ancestors and the node), the earlier tokens of its group and itself.
        for i, node in enumerate(extra_nodes):
            visible[count + i, :count] = self.ancestor_matrix[node]
            visible[count + i, count : count + i + 1] = torch.tensor([extra_nodes[j] == node for j in range(i + 1)])
        return visible

    def block_depths(self, extra_nodes: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Position offset of every block entry past the prefix: node depths, then for each extra token its node's depth + index in its group + 1."""
        self._check_extra_nodes(extra_nodes)
        return self.depths + tuple(self.depths[node] + extra_nodes[:i].count(node) + 1 for i, node in enumerate(extra_nodes))

    def _check_extra_nodes(self, extra_nodes: tuple[int, ...]) -> None:
        bad = [n for n in extra_nodes if not 0 <= n <= self.size]
        if bad:
            raise ValueError(f"extra tokens attached under nodes {bad}: a {self.size}-node tree has nodes 0 (the root) to {self.size}")

    def attention_mask(self, past_len: int, dtype: torch.dtype, device: torch.device | str = "cpu", extra_nodes: tuple[int, ...] = ()) -> torch.Tensor:
        """Additive mask [1, 1, n+1+m, past_len+n+1+m]: 0 where a block entry may look, dtype-min elsewhere."""
        block = self.block_visibility(extra_nodes)
        visible = torch.ones(block.shape[0], past_len + block.shape[0], dtype=torch.bool)
        visible[:, past_len:] = block
        mask = torch.zeros(visible.shape, dtype=dtype)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return mask[None, None].to(device)

    def position_ids(self, past_len: int, device: torch.device | str = "cpu", extra_nodes: tuple[int, ...] = ()) -> torch.Tensor:
        """[1, n+1+m] positions: prefix length + `block_depths`."""
        return (torch.tensor(self.block_depths(extra_nodes)) + past_len)[None].to(device)

    def ranks_needed(self) -> list[int]:
        """How many top candidates each draft position needs (index d = depth d+1)."""
        needed = [0] * self.depth
        for path in self.paths:
            needed[len(path) - 1] = max(needed[len(path) - 1], path[-1] + 1)
        return needed
