"""Pick the draft-tree size that decodes fastest on the machine at hand.

Verification is not free on a CPU (a 64-token forward costs ~4x a 1-token one on SmolLM2), so
the best tree is hardware-dependent: measure tokens/s for a few sizes on calibration prompts
and keep the fastest.
"""

from __future__ import annotations

import statistics

import torch

from specdec.models.medusa import MedusaHeads
from specdec.runtime.generator import SpeculativeGenerator, default_tree
from specdec.runtime.tree import DraftTree

CANDIDATE_SIZES = (1, 2, 4, 8, 16, 32)


def tune_tree(
    target,
    draft: MedusaHeads,
    prompts: list[torch.Tensor],
    sizes: tuple[int, ...] = CANDIDATE_SIZES,
    max_new_tokens: int = 48,
) -> tuple[DraftTree, dict[int, float]]:
    """Return the fastest tree and {size: median tokens/s over the prompts}."""
    if not prompts:
        raise ValueError("tune_tree needs at least one calibration prompt")
    speeds: dict[int, float] = {}
    trees: dict[int, DraftTree] = {}
    for size in sizes:
        # Step 1: the best tree of this size by measured head accuracies (a chain when there are none).
        tree = default_tree(draft, size)
        if tree in trees.values():  # a chain stops growing at the number of heads
            continue
        generator = SpeculativeGenerator.from_draft(target, draft, tree)
        # Step 2: warm up once, then time each calibration prompt.
        generator.generate(prompts[0], 4)
        speeds[size] = statistics.median(generator.generate(p, max_new_tokens).tokens_per_s for p in prompts)
        trees[size] = tree
    best = max(speeds, key=speeds.get)
    return trees[best], speeds
