"""Pick the draft-tree size that decodes fastest on the machine at hand.

Verification is not free on a CPU (a 64-token forward costs ~4x a 1-token one on SmolLM2), so
the best tree is hardware-dependent: measure tokens/s for a few sizes on calibration prompts
and keep the fastest.
"""

from __future__ import annotations

import statistics

import torch

from specdec.models.base import DraftModel
from specdec.runtime.generator import EagleOptions, SpeculativeGenerator, default_tree
from specdec.runtime.proposers import EAGLE_DRAFT_TYPES
from specdec.runtime.tree import DraftTree

CANDIDATE_SIZES = (1, 2, 4, 8, 16, 32)
EAGLE_TREE_SIZES = (4, 8, 16, 32)
"""Node counts tried for EAGLE-2's dynamic tree (besides chains of 1..depth tokens)."""


def tune_tree(
    target,
    draft: DraftModel,
    prompts: list[torch.Tensor],
    sizes: tuple[int, ...] = CANDIDATE_SIZES,
    max_new_tokens: int = 48,
    depth: int = 5,
    top_k: int = 4,
) -> tuple[tuple[DraftTree | None, EagleOptions | None], dict]:
    """Return the fastest layout (tree, EAGLE options) and {candidate: median tokens/s over the prompts}.

    Medusa / Chimera: the best tree of each of `sizes` nodes. EAGLE: chains of 1..`depth` tokens
    and dynamic trees of EAGLE_TREE_SIZES nodes (`depth` deep, `top_k` wide)."""
    if not prompts:
        raise ValueError("tune_tree needs at least one calibration prompt")
    # Step 1: the candidates.
    if draft.draft_type in EAGLE_DRAFT_TYPES:
        candidates = {f"chain-{d}": (None, EagleOptions(depth=d)) for d in range(1, depth + 1)}
        candidates |= {f"tree-{n}": (None, EagleOptions(depth=depth, top_k=top_k, total_tokens=n)) for n in EAGLE_TREE_SIZES}
    else:
        candidates = {}
        for size in sizes:
            tree = default_tree(draft, size)
            if all(tree != t for t, _ in candidates.values()):  # a chain stops growing at the number of heads
                candidates[size] = (tree, None)
    # Step 2: warm up each once, then time each calibration prompt.
    speeds = {}
    for label, (tree, eagle) in candidates.items():
        generator = SpeculativeGenerator.from_draft(target, draft, tree, eagle=eagle)
        generator.generate(prompts[0], 4)
        speeds[label] = statistics.median(generator.generate(p, max_new_tokens).tokens_per_s for p in prompts)
    best = max(speeds, key=speeds.get)
    return candidates[best], speeds
