"""SDSAT's pure training functions: the side-branch block of semantic adaptive (SA) slots, and its losses.

One forward per batch trains every slot. After the B x T standard tokens come A anchors x k SA
slots per sequence. Slot m (1-based) of anchor i carries the SA id of slot m, sits at position id
i + m, sees the standard tokens up to i and slots 1..m of its own anchor, and is trained to
predict x_{i+m+1}. Standard tokens see only standard tokens (causally), so their logits are the
plain model's by construction: one 4-D mask, built once per batch, says all of this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from specdec.models.decoder import additive
from specdec.train.losses import RANKS, HeadLosses, _rank_hits

IGNORE = -100
"""Label of an SA slot that is not trained (no anchor, past the sequence, a non-assistant token, beyond its span)."""


@dataclass
class SideBranch:
    """The block one SDSAT forward runs: standard tokens, then every anchor's SA slots."""

    input_ids: torch.Tensor
    """[B, T + A k] the standard tokens, then A anchors' k SA ids (anchor-major)."""
    position_ids: torch.Tensor
    """[B, T + A k] 0..T-1, then anchor + m for slot m."""
    attention_mask: torch.Tensor
    """[B, 1, T + A k, T + A k] additive mask (0 where an entry may look, dtype-min elsewhere)."""
    labels: torch.Tensor
    """[B, A k] token each slot predicts, IGNORE where it is not trained."""
    slots: torch.Tensor
    """[A k] 0-based slot number of every SA entry."""


@dataclass
class TunedRows:
    """An embedding matrix as the tuned target uses it: frozen rows, some of them (the SA tokens')
    replaced by trainable values, as peft's trainable tokens hold them. Gathers rows and computes
    logits without materialising the whole replaced matrix, so the backward reaches `values` only."""

    weight: torch.Tensor
    """[V, H] the matrix (the base rows; with `values` None, the matrix itself, trainable or not)."""
    replaced: torch.Tensor | None = None
    """[S] ids whose rows are `values` (None: no row replaced)."""
    values: torch.Tensor | None = None
    """[S, H] the replacing rows, in the order of `replaced`."""

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """[..., H] the rows of `ids` [...] (an embedding lookup)."""
        rows = self.weight[ids]
        if self.values is None:
            return rows
        match = ids[..., None] == self.replaced.to(ids.device)
        return torch.where(match.any(-1, keepdim=True), self.values[match.long().argmax(-1)], rows)

    def logits(self, hidden: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """[N, V] logits of hidden states [N, H] over every row, or [N, len(ids)] over the rows of `ids`."""
        if ids is not None:
            return hidden @ self.rows(ids).T
        logits = hidden @ self.weight.T
        if self.values is None:
            return logits
        return logits.index_copy(-1, self.replaced.to(hidden.device), hidden @ self.values.T)


def batch_seed(loss_mask: torch.Tensor, seed: int) -> int:
    """A seed that depends only on the batch's loss mask and the recipe seed, so the anchors of a
    batch are the same in the loss, in its label counts, on every rank and after a resume."""
    weights = torch.arange(1, loss_mask.shape[1] + 1, device=loss_mask.device)
    rows = (loss_mask.long() * weights).sum(1).tolist()
    value = seed
    for row in rows:
        value = (value * 1_000_003 + row) % (2**61 - 1)
    return value


def sample_anchors(loss_mask: torch.Tensor, per_sequence: int, seed: int) -> torch.Tensor:
    """[B, A] anchor positions of each sequence (-1 pads a row with fewer candidates).

    A candidate anchor i is an assistant token, as the last accepted token is at decode time, with
    an assistant token at i + 2 (slot 1's label). `per_sequence` > 0 samples that many candidates
    per sequence without replacement; 0 takes every candidate."""
    # Step 1: candidates per row.
    batch, length = loss_mask.shape
    candidates = torch.zeros(batch, length, dtype=torch.bool, device=loss_mask.device)
    candidates[:, : max(length - 2, 0)] = loss_mask[:, 2:].bool() & loss_mask[:, : max(length - 2, 0)].bool()
    counts = candidates.sum(1)
    width = int(counts.max()) if per_sequence == 0 else min(per_sequence, length)
    # Step 2: random scores, candidates first; keep the best `width` of each row, in position order.
    generator = torch.Generator().manual_seed(batch_seed(loss_mask, seed))
    scores = torch.rand(batch, length, generator=generator).to(loss_mask.device)
    scores = torch.where(candidates, scores, torch.full_like(scores, 2.0))
    order = scores.argsort(dim=1)[:, :width]
    order = torch.where(torch.arange(width, device=loss_mask.device)[None] < counts[:, None], order, torch.full_like(order, length))
    anchors = order.sort(dim=1).values
    return torch.where(anchors < length, anchors, torch.full_like(anchors, -1))


def span_lengths(anchors: torch.Tensor, k: int, poisson_lambda: float | None, seed: int) -> torch.Tensor:
    """[B, A] slots trained per anchor: k, or Poisson(poisson_lambda) clamped to 1..k (variable spans);
    `seed` is the batch's (`batch_seed`), so spans differ between batches and repeat on resume."""
    if poisson_lambda is None:
        return torch.full_like(anchors, k)
    generator = torch.Generator().manual_seed(seed + 1)
    rates = torch.full(anchors.shape, float(poisson_lambda))
    return torch.poisson(rates, generator=generator).long().clamp(1, k).to(anchors.device)


def side_branch(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, anchors: torch.Tensor, sa_ids: torch.Tensor, spans: torch.Tensor, dtype: torch.dtype) -> SideBranch:
    """The block, positions, 4-D mask and slot labels for `anchors` [B, A] and SA ids `sa_ids` [k]."""
    batch, length = input_ids.shape
    k, device = sa_ids.shape[0], input_ids.device
    width = anchors.shape[1]
    anchor = anchors.clamp(min=0)  # an absent anchor sees token 0 only and trains nothing
    slot = torch.arange(k, device=device)
    # Step 1: tokens and positions: slot m (0-based) of anchor i is the m-th SA id at position i + m + 1.
    sa_tokens = sa_ids.to(device).repeat(batch, width)
    sa_positions = (anchor[:, :, None] + slot + 1).reshape(batch, width * k)
    ids = torch.cat([input_ids, sa_tokens], dim=1)
    positions = torch.cat([torch.arange(length, device=device).expand(batch, length), sa_positions], dim=1)
    # Step 2: the slots' labels.
    labels = slot_labels(input_ids, loss_mask, anchors, spans, k)
    # Step 3: visibility: standard tokens causal over real tokens; a slot sees its anchor's prefix and its own earlier slots.
    real = attention_mask.bool()
    size = length + width * k
    visible = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
    visible[:, :length, :length] = torch.ones(length, length, dtype=torch.bool, device=device).tril() & real[:, None, :]
    prefix = torch.arange(length, device=device)[None, None, :] <= anchor.repeat_interleave(k, dim=1)[:, :, None]
    visible[:, length:, :length] = prefix & real[:, None, :]
    same_anchor = torch.block_diag(*[torch.ones(k, k, dtype=torch.bool, device=device).tril()] * width)
    visible[:, length:, length:] = same_anchor
    return SideBranch(ids, positions, additive(visible, dtype)[:, None], labels, slot.repeat(width))


def slot_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor, anchors: torch.Tensor, spans: torch.Tensor, k: int) -> torch.Tensor:
    """[B, A k] label x_{i+m+2} of slot m (0-based) of anchor i, IGNORE unless it exists, is an
    assistant token and lies within the anchor's span (what `side_branch` trains, without its mask)."""
    batch, length = input_ids.shape
    width = anchors.shape[1]
    slot = torch.arange(k, device=input_ids.device)
    label_at = anchors.clamp(min=0)[:, :, None] + slot + 2
    at = label_at.clamp(max=length - 1).reshape(batch, -1)
    labels = input_ids.gather(1, at).reshape(batch, width, k)
    keep = (label_at < length) & (anchors >= 0)[:, :, None] & (slot < spans[:, :, None]) & loss_mask.gather(1, at).reshape(batch, width, k).bool()
    return torch.where(keep, labels, torch.full_like(labels, IGNORE)).reshape(batch, width * k)


def slot_losses(
    slot_hidden: torch.Tensor,
    labels: torch.Tensor,
    slots: torch.Tensor,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    *,
    decay: float = 0.8,
    with_accuracy: bool = True,
    denominators: torch.Tensor | None = None,
) -> HeadLosses:
    """Weighted CE of the SA slots: sum_m decay**m * CE_m over the trained slot entries.

    `slot_hidden` [B, A k, H] are the tuned target's last hidden states at the SA entries,
    `logits_of` its lm_head; `denominators` [k] (data-parallel training) divide each slot's
    summed CE instead of its local count."""
    # Step 1: logits only where a slot is trained.
    keep = labels != IGNORE
    which = slots.expand_as(labels)[keep]
    logits = logits_of(slot_hidden[keep]).float()
    targets = labels[keep]
    ce = F.cross_entropy(logits, targets, reduction="none") if targets.numel() else logits.sum(-1) * 0.0
    # Step 2: per-slot sums and counts.
    count = torch.zeros(k, device=labels.device).index_add_(0, which, torch.ones_like(ce))
    summed = torch.zeros(k, device=labels.device, dtype=ce.dtype).index_add_(0, which, ce)
    per_slot = summed / (denominators if denominators is not None else count.clamp(min=1))
    weights = decay ** torch.arange(k, device=labels.device, dtype=ce.dtype)
    loss = (weights * per_slot).sum() + slot_hidden.sum() * 0.0  # keeps the graph when no slot is trained
    # Step 3: rank hits per slot (validation).
    hits = None
    if with_accuracy:
        hits = torch.stack([_rank_hits(logits[which == m], targets[which == m]) if (which == m).any() else torch.zeros(RANKS) for m in range(k)])
    return HeadLosses(loss, per_slot.detach(), hits, count.cpu())


def standard_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: positions t whose next token x_{t+1} is an assistant token (the standard term's positions)."""
    select = torch.zeros_like(loss_mask, dtype=torch.bool)
    select[:, :-1] = loss_mask[:, 1:].bool()
    return select


def standard_ce(tuned_logits: torch.Tensor, next_tokens: torch.Tensor, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Plain LM cross-entropy of the next tokens [N] under the tuned logits [N, V]."""
    if tuned_logits.shape[0] == 0:
        return tuned_logits.sum() * 0.0
    return F.cross_entropy(tuned_logits.float(), next_tokens, reduction="sum") / (denominator if denominator is not None else next_tokens.shape[0])
