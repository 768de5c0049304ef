"""A reduced draft vocabulary, shared by every draft type: the V_draft most frequent training tokens.

A draft with a reduced vocabulary projects its hidden state onto V_draft rows instead of the
target's V, and maps its candidates back with two top-level buffers (the layout SGLang and vLLM
read for EAGLE-3, so the state-dict keys are exactly `d2t` and `t2d`):

- `d2t` [V_draft] long: `d2t[i]` = target_id - i of draft token i (draft ids ascending);
- `t2d` [V] bool: which target tokens are in the draft vocabulary.

A draft built with the full vocabulary has neither buffer (its state dict and config.json stay
as they were before reduced vocabularies existed) and every map below is the identity.
"""

from __future__ import annotations

import warnings

import torch

IGNORE_INDEX = -100
"""Label of a position no loss reads (as in torch.nn.functional.cross_entropy)."""


class ReducedVocab:
    """Mixin for `DraftModel` subclasses whose vocabulary projection may cover only V_draft tokens.

    Call `init_vocab(vocab_size, draft_vocab_size)` in `__init__` (after `nn.Module.__init__`);
    `draft_vocab_size` None keeps the full vocabulary. Subclasses with a projection of their own
    override `init_projection` so that `set_vocab(ids, lm_head_weight)` starts it from the target's rows.
    """

    def init_vocab(self, vocab_size: int, draft_vocab_size: int | None) -> None:
        """Register `d2t` / `t2d` for a V_draft-token vocabulary (the tokens 0..V_draft-1 until `set_vocab`), none for the full one."""
        self.full_vocab_size = vocab_size
        if draft_vocab_size is None:
            self.register_buffer("d2t", None)
            self.register_buffer("t2d", None)
            return
        t2d = torch.zeros(vocab_size, dtype=torch.bool)
        t2d[:draft_vocab_size] = True
        self.register_buffer("d2t", torch.zeros(draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", t2d)

    @property
    def reduced_vocab(self) -> bool:
        """True when the draft projects onto its own draft vocabulary (it has `d2t` / `t2d`)."""
        return self.d2t is not None

    @property
    def num_draft_tokens(self) -> int:
        """V_draft: rows of the draft's vocabulary projection (V for the full vocabulary)."""
        return len(self.d2t) if self.reduced_vocab else self.full_vocab_size

    @torch.no_grad()
    def set_vocab(self, draft_to_target: torch.Tensor, lm_head_weight: torch.Tensor | None = None) -> None:
        """Install the draft vocabulary (target ids of draft tokens 0..V_draft-1, ascending) and,
        given the target lm_head, start the draft's own projection from its rows for those tokens."""
        # Step 1: the maps (a full-vocabulary draft has none and only accepts the identity).
        if self.reduced_vocab:
            ids = draft_to_target.to(self.d2t.device)
            self.d2t.copy_(ids - torch.arange(len(ids), device=ids.device))
            self.t2d.zero_()
            self.t2d[ids] = True
        elif not torch.equal(draft_to_target.cpu(), torch.arange(self.full_vocab_size)):
            raise ValueError("this draft was built with the full vocabulary: set draft_vocab_size in its config to install a reduced one")
        # Step 2: the projection.
        if lm_head_weight is not None:
            self.init_projection(self.vocab_rows(lm_head_weight))

    def init_projection(self, rows: torch.Tensor) -> None:
        """Start the draft's own vocabulary projection from the target lm_head rows [V_draft, H] (none stored: nothing to do)."""

    def draft_ids(self) -> torch.Tensor:
        """Target ids of the draft vocabulary, [V_draft] (all of 0..V-1 for the full vocabulary)."""
        if not self.reduced_vocab:
            return torch.arange(self.full_vocab_size, device=self._vocab_device())
        return self.d2t + torch.arange(len(self.d2t), device=self.d2t.device)

    def vocab_rows(self, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """The target lm_head rows of the draft vocabulary, [V_draft, H]."""
        if not self.reduced_vocab:
            return lm_head_weight
        return lm_head_weight[self.draft_ids().to(lm_head_weight.device)]

    def to_target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices -> target token ids."""
        if not self.reduced_vocab:
            return ids
        return ids + self.d2t.to(ids.device)[ids]

    def to_draft_labels(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-id labels -> (draft-vocabulary labels, in-vocabulary mask), both shaped like `labels`.

        Labels outside the draft vocabulary, and negative labels (ignored positions), become
        `IGNORE_INDEX` and are False in the mask."""
        valid = labels >= 0
        if not self.reduced_vocab:
            return torch.where(valid, labels, IGNORE_INDEX), valid
        lookup = torch.full((self.full_vocab_size,), IGNORE_INDEX, dtype=torch.long, device=labels.device)
        lookup[self.draft_ids().to(labels.device)] = torch.arange(len(self.d2t), device=labels.device)
        mapped = torch.where(valid, lookup[labels.clamp(min=0)], IGNORE_INDEX)
        return mapped, mapped >= 0

    def to_target_vocab(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Rows over the draft vocabulary [.., V_draft] -> rows over the target's [.., V], `fill`
        elsewhere (0 for probabilities, -inf for logits): a token outside the draft vocabulary is never proposed."""
        if not self.reduced_vocab:
            return values
        out = values.new_full((*values.shape[:-1], self.full_vocab_size), fill)
        out[..., self.draft_ids().to(values.device)] = values
        return out

    def _vocab_device(self) -> torch.device:
        """The device of the draft's tensors (CPU for a draft without any)."""
        tensor = next(self.parameters(), None)
        return tensor.device if tensor is not None else torch.device("cpu")


def full_vocab_rows(rows: torch.Tensor, draft_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A reduced projection's rows [V_draft, H] laid out as a bias-free full-vocabulary one [V, H],
    for engines that cannot read a draft vocabulary: draft token i keeps its row at target id
    `draft_ids[i]`, and every other token gets the mean of the draft rows.

    A token outside the draft vocabulary then scores the mean of the draft tokens' logits, which
    is strictly below the best draft token's for every hidden state unless all draft logits are
    equal (which, when the draft rows' differences span the hidden space, only the zero vector
    gives): the top candidate is always a draft token. No bias-free row choice can rule such
    tokens out of the lower ranks; they all share that one (mean) logit."""
    out = rows.mean(0, keepdim=True).expand(vocab_size, -1).clone()
    out[draft_ids.to(rows.device)] = rows
    return out


def build_draft_vocab(token_counts: torch.Tensor, size: int, min_coverage: float = 0.9, setting: str = "draft_vocab_size") -> tuple[torch.Tensor, float]:
    """The `size` most frequent target tokens (ascending ids) and the share of counted tokens they cover.

    Warns when the coverage is under `min_coverage`: the draft can never propose the rest
    (`setting` names the recipe key that sets `size`, for the warning)."""
    size = min(size, len(token_counts))
    top = token_counts.topk(size).indices.sort().values
    total = float(token_counts.sum())
    coverage = float(token_counts[top].sum()) / total if total > 0 else 0.0
    if coverage < min_coverage:
        warnings.warn(
            f"the {size}-token draft vocabulary covers only {coverage:.1%} of the training tokens (wanted "
            f"{min_coverage:.0%}): raise {setting} or train on more data",
            stacklevel=2,
        )
    return top, coverage
