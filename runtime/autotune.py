"""Pick the draft layout that decodes fastest on the machine at hand.

Verification is not free on a CPU (a 64-token forward costs ~4x a 1-token one on SmolLM2), so
the best tree is hardware-dependent: measure tokens/s for each layout the draft's proposer
offers (`Proposer.tuning_candidates`) on calibration prompts and keep the fastest.
"""

from __future__ import annotations

import statistics

import torch

from specdec.models.base import DraftModel
from specdec.runtime.draft_length import DraftLength
from specdec.runtime.generator import SpeculativeGenerator
from specdec.runtime.proposers import proposer_class


def tune_tree(
    target,
    draft: DraftModel,
    prompts: list[torch.Tensor],
    sizes: tuple[int, ...] | None = None,
    max_new_tokens: int = 48,
    depth: int = 5,
    top_k: int = 4,
    lookup_branch: int = 0,
    lookup_ngram: int = 3,
    draft_length: DraftLength | None = None,
) -> tuple[object, DraftLength | None, dict]:
    """Return the fastest layout (the proposer's options), the DraftLength to decode it with and
    {candidate: median tokens/s over the prompts}.

    Medusa / Chimera: the best tree of each of `sizes` nodes (default 1-32). EAGLE: chains of
    1..`depth` tokens and dynamic trees of `sizes` nodes (default 4-32), `depth` deep, `top_k` wide.
    With `lookup_branch` > 0 every candidate is timed with the prompt-lookup branch it will decode
    with (`SpeculativeGenerator.from_draft`), so the layout is picked for the combined tree. With
    `draft_length` every candidate is timed twice, verifying every node and pruned (labelled
    "<candidate> pruned"), so a large tree is judged by the nodes it verifies and pruning is kept only
    where it is faster on this machine (the returned DraftLength is then `draft_length`, else None)."""
    if not prompts:
        raise ValueError("tune_tree needs at least one calibration prompt")
    # Step 1: the candidates, each unpruned and (with draft_length) pruned.
    layouts = proposer_class(draft.draft_type).tuning_candidates(draft, depth, top_k, sizes)
    candidates = {label: (layout, None) for label, layout in layouts.items()}
    if draft_length is not None:
        candidates |= {f"{label} pruned": (layout, draft_length) for label, layout in layouts.items()}
    # Step 2: warm up each once, then time each calibration prompt.
    speeds = {}
    for label, (layout, length) in candidates.items():
        generator = SpeculativeGenerator.from_draft(target, draft, layout, lookup_branch=lookup_branch, lookup_ngram=lookup_ngram, draft_length=length)
        generator.generate(prompts[0], 4)
        speeds[label] = statistics.median(generator.generate(p, max_new_tokens).tokens_per_s for p in prompts)
    # Step 3: the fastest.
    best = max(speeds, key=speeds.get)
    return *candidates[best], speeds
