"""Teacher-forced draft predictions through the proposer contract, for any draft type.

Given a sequence `ids` [T] (a prompt of `start` tokens followed by a response), the draft's top
depth-1 token for position j is what its proposer drafts first when the decode loop has committed
ids[:j] (the root being ids[j-1]). One target forward over `ids` gives every position's states;
the proposer is then driven exactly as `SpeculativeGenerator` drives it, as if every step rejected
its draft:

    reset(ids[:start]); propose(Committed(states[:start], features[:start], ids[1:start+1]))  -> predicts ids[start+1]
    observe(Outcome(path=[0], bonus=ids[j])); propose(Committed(states[j-1:j], ..., ids[j:j+1]))  -> predicts ids[j+1]

The first response token ids[start] is the target's own prefill token, never drafted, so the
first prediction is for ids[start+1]. The proposer must be built with a 1-token chain layout
(`teacher_proposer`). Every proposer here reads the committed states causally (Medusa the last
one; EAGLE and Chimera extend their own KV cache with them), so committing positions in one block
or one at a time drafts the same tokens: `mismatches` prefills the draft straight up to where its
comparison starts instead of stepping there. A proposal that carries extra query tokens or runs
target forwards of its own (SDSAT: the tuned target drafts through SA tokens in the verification
block) cannot be replayed from one forward and is an `UnsupportedDraftError`.
"""

from __future__ import annotations

from typing import Iterator

import torch

from specdec.models.base import lm_head_weight, target_states
from specdec.runtime.proposers import Committed, Outcome, Proposal, Proposer, proposer_class


class UnsupportedDraftError(ValueError):
    """A draft whose proposals cannot be teacher-forced (they carry extra tokens or target forwards of their own)."""


def teacher_proposer(target, draft) -> Proposer:
    """The proposer of `draft`'s type with a 1-token chain layout (the draft's top depth-1 token only),
    the draft checked against the target and moved to its device."""
    weight = lm_head_weight(target)
    draft.check_target(target.config.hidden_size, weight.shape[0])
    draft = draft.to(weight.device).eval()
    cls = proposer_class(draft.draft_type)
    return cls.build(target, draft, cls.layout(draft, "chain", 1, 1, 1))


@torch.no_grad()
def teacher_predictions(target, proposer: Proposer, ids: torch.Tensor, start: int, cache=None) -> Iterator[tuple[int, int]]:
    """(j, the draft's top token for ids[j] given ids[:j]) for j = start+1 .. len(ids)-1, lazily
    (stop iterating and no further drafting happens); one target forward over `ids` up front, which
    fills `cache` (an empty transformers cache the caller reuses; None: none kept)."""
    ids = _checked(ids, start).to(lm_head_weight(target).device)
    hidden, features = target_states(target, ids[None], proposer.feature_layers, past_key_values=cache, use_cache=cache is not None)
    yield from _replay(proposer, ids, hidden[0], features[0], start)


def mismatches(target, proposer: Proposer, ids: torch.Tensor, start: int, from_position: int | None = None, cache=None) -> Iterator[tuple[int, int]]:
    """(j, draft token) for every j >= `from_position` (default start+1) where the draft's top token
    differs from ids[j], lazily; the draft's prefill covers ids[:max(start, from_position-1)];
    `cache`: as `teacher_predictions` (left empty when there is nothing to compare)."""
    ids = torch.as_tensor(ids).reshape(-1)
    first = start + 1 if from_position is None else max(from_position, start + 1)
    if first >= len(ids):
        return
    tokens = ids.tolist()
    for j, token in teacher_predictions(target, proposer, ids, first - 1, cache):
        if token != tokens[j]:
            yield j, token


def first_mismatch(target, proposer: Proposer, ids: torch.Tensor, start: int, from_position: int | None = None) -> tuple[int, int] | None:
    """(position, draft token) of the first j >= `from_position` (default start+1) where the draft's
    top token differs from ids[j], or None; drafting stops there."""
    return next(mismatches(target, proposer, ids, start, from_position), None)


def _checked(ids: torch.Tensor, start: int) -> torch.Tensor:
    ids = torch.as_tensor(ids).reshape(-1)
    if not 1 <= start < len(ids):
        raise ValueError(f"teacher forcing needs 1 <= start < len(ids) (the draft's prefill is ids[:start]), got start={start} for {len(ids)} tokens")
    return ids


def _replay(proposer: Proposer, ids: torch.Tensor, hidden: torch.Tensor, features: torch.Tensor, start: int) -> Iterator[tuple[int, int]]:
    """Drive `proposer` over the target's states as the decode loop would if every step rejected its draft."""
    # Step 1: the prefill: the root is ids[start], the target's token after the prefix.
    proposer.reset(ids[None, :start])
    committed = Committed(hidden[:start], features[:start], ids[1 : start + 1])
    tokens = ids.tolist()
    for j in range(start + 1, len(ids)):
        # Step 2: the draft's first token predicts the token after the root ids[j-1].
        yield j, _first_token(proposer.propose(committed), proposer)
        # Step 3: the target rejects it and adds ids[j]: the root's state is committed, ids[j] is the next root.
        proposer.observe(Outcome([0], tokens[j], hidden[:0], features[:0]))
        committed = Committed(hidden[j - 1 : j], features[j - 1 : j], ids[j : j + 1])


def _first_token(proposal: Proposal, proposer: Proposer) -> int:
    """The proposal's depth-1 top token (node (0,)); proposals that cannot be replayed are refused."""
    if proposal.extra is not None or proposal.target_forwards:
        raise UnsupportedDraftError(
            f"the {proposer.name} proposer drafts with extra query tokens or target forwards of its own (SDSAT's SA slots): "
            "its draft tokens cannot be teacher-forced from one target forward; mine labels with a Medusa, EAGLE or Chimera draft"
        )
    if (0,) not in proposal.tree.paths:
        raise UnsupportedDraftError(f"the {proposer.name} proposer drafted no depth-1 token (tree {proposal.tree.paths}): build it with a 1-token chain layout (teacher_proposer)")
    return int(torch.as_tensor(proposal.tokens)[proposal.tree.paths.index((0,))])
