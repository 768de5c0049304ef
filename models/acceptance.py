"""Expected acceptance from measured per-position accuracies: what a draft would deliver per
verification step, computed without decoding (training reports it; the runtime picks trees with it).

`rank_accuracy[d][r]` is the measured share of held-out positions where the r-th ranked candidate
of draft position d+1 is the target's token. Treating positions as independent, a tree node is
accepted with the product of the accuracies along its path, and the expected number of accepted
draft tokens per step is the sum of that over the nodes (the target's own token, +1, excluded).
"""

from __future__ import annotations

import math


def chain_accept_length(rank_accuracy: list[list[float]], depth: int | None = None) -> float:
    """Expected accepted draft tokens of a chain of `depth` top-1 candidates (default: every measured position):
    sum over k of the product of the top-1 accuracies of positions 1..k."""
    top1 = [row[0] for row in rank_accuracy[: depth if depth is not None else len(rank_accuracy)]]
    return sum(math.prod(top1[: k + 1]) for k in range(len(top1)))


def best_tree(rank_accuracy: list[list[float]], size: int) -> tuple[list[tuple[int, ...]], float]:
    """(paths, expected accepted draft tokens) of the `size`-node tree with the largest expectation.

    A child's value never exceeds its parent's, so taking the most valuable open node first
    (opening its children) builds the best tree of every size. Paths are candidate ranks per
    depth: (2, 0) is the 3rd candidate at depth 1, then the top one at depth 2."""
    # Step 1: the open nodes, starting with the root's children.
    chosen: list[tuple[int, ...]] = []
    expected = 0.0
    frontier = {(r,): acc for r, acc in enumerate(rank_accuracy[0])} if rank_accuracy else {}
    # Step 2: repeatedly take the most valuable node (ties: lower ranks first) and open its children.
    while frontier and len(chosen) < size:
        path = max(frontier, key=lambda p: (frontier[p], [-i for i in p]))
        value = frontier.pop(path)
        chosen.append(path)
        expected += value
        if len(path) < len(rank_accuracy):
            for r, acc in enumerate(rank_accuracy[len(path)]):
                frontier[path + (r,)] = value * acc
    return chosen, expected
