"""Prompt lookup against a reference: a proposer that copies its draft from known tokens.

`ReferenceLookupProposer` drafts a chain of up to `k` tokens: for n = max_ngram down to 1 it
looks for the last n tokens of the sequence so far (prompt + output, the root last) in the
reference and proposes the tokens that followed there; without a hit in the reference, it looks
in the sequence itself (prompt lookup proper), taking the most recent earlier occurrence. The
reference is aligned with the sequence (the prompt followed by a reference answer), so among
several occurrences the one ending nearest to the current length wins: a continuation that has
drifted by a few tokens still copies from the matching stretch of the answer. No hit: an empty
draft (the target adds its own token, as plain decoding does).

It is built directly, not from a draft type: `SpeculativeGenerator(target, ReferenceLookupProposer(ids))`.
With the greedy verifier the output is plain greedy decoding token for token, and regenerating
the target's continuation after a one-token substitution costs a few forwards once the
continuation rejoins the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch

from specdec.runtime.proposers import Committed, Proposal, Proposer
from specdec.runtime.tree import DraftTree


class ReferenceLookupProposer(Proposer):
    """Copies chains of up to `k` tokens from a reference token list (then from the sequence itself)."""

    name = "reference_lookup"

    def __init__(self, reference: Sequence[int], k: int = 10, max_ngram: int = 3):
        if k < 1 or max_ngram < 1:
            raise ValueError(f"reference lookup needs k >= 1 and max_ngram >= 1, got k={k}, max_ngram={max_ngram}")
        self.reference, self.k, self.max_ngram = [int(t) for t in reference], k, max_ngram
        self.sequence: list[int] = []
        self.device = torch.device("cpu")

    def reset(self, prompt_ids: torch.Tensor) -> None:
        ids = prompt_ids.reshape(-1)
        # The prefill's committed tokens are prompt_ids[1:] and the root: together the whole sequence.
        self.sequence, self.device = ids[:1].tolist(), ids.device

    def propose(self, committed: Committed) -> Proposal:
        self.sequence += committed.tokens.tolist()
        tokens = self.lookup(self.sequence)
        return Proposal(DraftTree.chain(len(tokens)), torch.tensor(tokens, dtype=torch.long, device=self.device))

    def lookup(self, sequence: list[int]) -> list[int]:
        """The draft after `sequence` (root last): what followed the longest matching suffix, at most k tokens."""
        return find_continuation(sequence, self.k, self.max_ngram, self.reference)[0]

    def describe(self) -> dict:
        return {"proposer": self.name, "tree_size": self.k, "tree_depth": self.k, "tree_paths": None, "max_ngram": self.max_ngram}


def find_continuation(sequence: list[int], k: int, max_ngram: int, reference: list[int] | None = None) -> tuple[list[int], int]:
    """(up to `k` tokens that followed the longest suffix of `sequence` matched, the suffix length n
    matched; ([], 0) without a hit), for n = `max_ngram` down to 1: first in `reference` (the
    occurrence ending nearest to len(sequence)), else the most recent earlier occurrence in `sequence` itself."""
    reference = reference or []
    for n in range(min(max_ngram, len(sequence)), 0, -1):
        tail = sequence[-n:]
        # Step 1: the occurrence in the reference ending nearest to the current length.
        ends = [e for e in _ends(reference, tail) if e < len(reference)]
        if ends:
            end = min(ends, key=lambda e: (abs(e - len(sequence)), -e))
            return reference[end : end + k], n
        # Step 2: else the most recent earlier occurrence in the sequence itself.
        earlier = [e for e in _ends(sequence, tail) if e < len(sequence)]
        if earlier:
            return sequence[max(earlier) : max(earlier) + k], n
    return [], 0


def _ends(tokens: list[int], pattern: list[int]) -> list[int]:
    """Index just past every occurrence of `pattern` in `tokens`."""
    n = len(pattern)
    return [i + n for i in range(len(tokens) - n + 1) if tokens[i : i + n] == pattern]
