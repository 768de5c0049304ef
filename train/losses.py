"""Pure loss functions: tensors in, losses and metrics out. LightningModules only call these.

Alignment (Medusa): with 1-based head numbers k = 1..K as in the paper, head k at position t is
scored against token t+k+1. In code heads are 0-based (`k = 0..K-1`), so head k at t is scored
against token t+k+2; the target's own lm_head at t predicts t+1. A position counts only when
its label token is an assistant token (loss_mask = 1 there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdec.models.chimera import ChimeraDrafter, trigram_embeddings
from specdec.models.decoder import UnrolledKV, additive
from specdec.models.medusa import MedusaHeads
from specdec.models.vocab import IGNORE_INDEX


RANKS = 10
"""Candidate ranks whose hit counts are measured per head (trees use up to this many per depth)."""


@dataclass
class HeadLosses:
    """Per-head results of one batch."""

    loss: torch.Tensor
    """Weighted total: sum_k decay**k * per_head[k]."""
    per_head: torch.Tensor
    """[K] loss of each head."""
    rank_hits: torch.Tensor | None
    """[K, RANKS] how often the label was the head's r-th ranked candidate (None when skipped)."""
    count: torch.Tensor
    """[K] labelled positions per head."""

    @property
    def top1(self) -> torch.Tensor:
        """[K] top-1 accuracy (nan for a head with no labelled position)."""
        return self.topk(1)

    def topk(self, k: int) -> torch.Tensor:
        """[K] top-k accuracy, k <= RANKS."""
        return self.rank_hits[:, :k].sum(1) / self.count


def head_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source positions and labels for a predictor that reads h_t and predicts token t+offset.

    Returns a bool mask [B, T] over source positions t (True where t+offset exists and is an
    assistant token) and the labels [N] = input_ids[t+offset] at those positions, in order.
    """
    batch, length = input_ids.shape
    select = torch.zeros(batch, length, dtype=torch.bool, device=input_ids.device)
    if offset >= length:
        return select, input_ids.new_empty(0)
    select[:, : length - offset] = loss_mask[:, offset:].bool()
    return select, input_ids[:, offset:][select[:, : length - offset]]


def medusa_head_losses(
    heads: MedusaHeads,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    lm_head_weight: torch.Tensor | None,
    *,
    decay: float = 0.8,
    soft_label_weight: float = 0.0,
    with_accuracy: bool = True,
    denominators: torch.Tensor | None = None,
) -> HeadLosses:
    """Medusa loss: sum_k decay**k * CE(head_k(h_t), x_{t+k+2}) over assistant positions.

    `hidden` is the target's last hidden state [B, T, H]. With `soft_label_weight` = a, each
    head's loss is (1-a) * CE(hard label) + a * CE(softmax(W_lm h_{t+k+1})) where the soft
    label is the target's own distribution for that same token. With a reduced draft vocabulary
    the hard labels are mapped to draft ids, a label outside the vocabulary adds nothing to the
    CE (it still counts in the divisor and as a miss in the rank hits) and the soft label is the
    target's distribution over the draft vocabulary's rows. `with_accuracy=False` skips
    the rank-hit counts, whose top-k costs about a tenth of a training step. `denominators`
    [K] divides each head's summed loss (default: its own labelled positions); data-parallel
    training passes the mean count over ranks (`head_label_counts`), so that the average of the
    ranks' gradients is the gradient of the whole global batch's mean loss.
    """
    per_head, rank_hits, count = [], [], []
    for k in range(heads.config.num_heads):
        # Step 1: pick the positions whose label (token t+k+2) is an assistant token.
        select, labels = head_targets(input_ids, loss_mask, k + 2)
        # Step 2: run the head only there (ResBlocks act per position), then project to V_draft.
        logits = heads.project(k, heads.head_features(k, hidden[select]), lm_head_weight)
        if labels.numel() == 0:
            per_head.append(logits.sum() * 0.0)
        else:
            loss = F.cross_entropy(logits.float(), heads.to_draft_labels(labels)[0], reduction="sum", ignore_index=IGNORE_INDEX)
            if soft_label_weight > 0:
                rows = None if lm_head_weight is None else heads.vocab_rows(lm_head_weight)
                loss = (1 - soft_label_weight) * loss + soft_label_weight * _soft_label_ce(logits, hidden, select, rows)
            divisor = denominators[k] if denominators is not None else labels.numel()
            per_head.append(loss / divisor)
        # Step 3: rank-hit counts, for validation accuracies and tree building.
        if with_accuracy:
            with torch.no_grad():
                rank_hits.append(_rank_hits(logits, labels, heads.to_target_ids))
        count.append(torch.tensor(labels.numel(), dtype=torch.float32))
    per_head_t = torch.stack(per_head)
    weights = torch.tensor([decay**k for k in range(len(per_head))], dtype=per_head_t.dtype, device=per_head_t.device)
    hits = torch.stack(rank_hits) if with_accuracy else None
    return HeadLosses((weights * per_head_t).sum(), per_head_t, hits, torch.stack(count))


def _soft_label_ce(logits: torch.Tensor, hidden: torch.Tensor, select: torch.Tensor, vocab_rows: torch.Tensor | None) -> torch.Tensor:
    """Summed CE against the target's distribution at t+k+1 (which predicts the same token t+k+2),
    over the draft vocabulary whose target lm_head rows are `vocab_rows` [V_draft, H]."""
    if vocab_rows is None:
        raise ValueError("soft labels need the target lm_head weight")
    shifted = torch.zeros_like(select)
    shifted[:, 1:] = select[:, :-1]  # source position t -> t+1
    with torch.no_grad():
        teacher = F.softmax((hidden[shifted].detach() @ vocab_rows.T).float(), dim=-1)
    return -(teacher * F.log_softmax(logits.float(), dim=-1)).sum()


def head_label_counts(loss_mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[K] labelled positions of each head in a batch (head k needs an assistant token at t+k+2)."""
    return torch.stack([loss_mask[:, k + 2 :].sum() for k in range(num_heads)]).float()


def _rank_hits(logits: torch.Tensor, labels: torch.Tensor, to_target_ids=None) -> torch.Tensor:
    """[RANKS] counts of labels found at each candidate rank (`to_target_ids` maps a reduced draft vocabulary)."""
    ranks = min(RANKS, logits.shape[-1])
    candidates = logits.topk(ranks, dim=-1).indices
    if to_target_ids is not None:
        candidates = to_target_ids(candidates)
    hits = (candidates == labels[:, None]).sum(0).float().cpu()
    return torch.nn.functional.pad(hits, (0, RANKS - ranks))


def unrolled_mask(length: int, step: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask [T, (step+1) T] for unrolled draft step `step` (training-time test).

    Keys are laid out step by step, T per step, indexed by anchor a. The query of anchor a at
    step i sees step 0's entries up to a (the real target features of the prefix) and its own
    chain's entries of steps 1..i, as the drafter's cache holds them at draft time."""
    prefix = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    own = torch.eye(length, dtype=torch.bool, device=device)
    return additive(torch.cat([prefix] + [own] * step, dim=1), dtype)


def shift_left(x: torch.Tensor, by: int, fill=0) -> torch.Tensor:
    """x[:, t + by] at t (dim 1), padded with `fill` at the end."""
    if by == 0:
        return x
    pad = torch.full_like(x[:, :by], fill)
    return torch.cat([x[:, by:], pad], dim=1)


def chimera_losses(
    draft: ChimeraDrafter,
    final_hidden: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor | None,
    *,
    decay: float = 1.0,
    with_accuracy: bool = True,
    denominators: torch.Tensor | None = None,
) -> HeadLosses:
    """Chimera loss: sum_k decay**k * CE(head_k, x_{a+k+2}) over anchors a with an assistant label.

    Head k at anchor a runs the full-context layer on the trigram ending at x_{a+k+1} (real tokens:
    teacher forcing) fused with h_a, at position a+k, attending to the prefix's entries (step 0,
    every position's own trigram and h) and its own chain; logits come from cat(h_a, F). With a
    reduced draft vocabulary the labels are mapped to draft ids and a label outside it adds
    nothing to the CE (it still counts in the divisor and as a miss in the rank hits).
    """
    length = input_ids.shape[1]
    positions = torch.arange(length, device=input_ids.device)[None].expand(input_ids.shape[0], -1)
    # Step 0: every position's trigram encoded and fused once (position-wise, so head k reads its term shifted by k + 1).
    trigram_term, hidden_term = draft.fused_terms(draft.trigram(trigram_embeddings(embed_weight, input_ids)), final_hidden)
    cache, per_head, rank_hits, count = UnrolledKV(), [], [], []
    for k in range(draft.config.num_heads):
        # Step 1: head k's context features for every anchor at once (`contextualize`, with the attention of `unrolled_mask`).
        features = draft.layer(shift_left(trigram_term, k + 1) + hidden_term, positions + k, None, cache)
        # Step 2: hard CE against x_{a+k+2} where that is an assistant token.
        select, labels = head_targets(input_ids, loss_mask, k + 2)
        logits = draft.head_logits(k, final_hidden[select], features[select], lm_head_weight).float()
        divisor = denominators[k] if denominators is not None else max(labels.numel(), 1)
        per_head.append(F.cross_entropy(logits, draft.to_draft_labels(labels)[0], reduction="sum", ignore_index=IGNORE_INDEX) / divisor)
        if with_accuracy:
            with torch.no_grad():
                rank_hits.append(_rank_hits(logits, labels, draft.to_target_ids))
        count.append(torch.tensor(labels.numel(), dtype=torch.float32))
    return _weighted(per_head, rank_hits, count, decay, with_accuracy)


def _weighted(per_step: list, rank_hits: list, count: list, decay: float, with_accuracy: bool) -> HeadLosses:
    losses = torch.stack(per_step)
    weights = torch.tensor([decay**i for i in range(len(per_step))], dtype=losses.dtype, device=losses.device)
    return HeadLosses((weights * losses).sum(), losses, torch.stack(rank_hits) if with_accuracy else None, torch.stack(count))


def kl_to_original(
    original_hidden: torch.Tensor,
    hidden: torch.Tensor,
    loss_mask: torch.Tensor,
    lm_head_weight: torch.Tensor,
    denominator: torch.Tensor | None = None,
    top_k: int = 0,
) -> torch.Tensor:
    """Medusa-2's base term with self-distillation: KL(original || fine-tuned) of next-token
    distributions at the positions that predict an assistant token, summed and divided by
    `denominator` (default: those positions; data-parallel training passes the mean over ranks).

    With `top_k` > 0 both distributions are renormalised over the batch's support: every token
    that is among the original model's top_k at some position. The tuned logits are then
    computed (and differentiated) over those rows only, not all V."""
    select, _ = head_targets(torch.zeros_like(loss_mask), loss_mask, 1)
    rows = lm_head_weight
    with torch.no_grad():
        # Step 1: the original model's logits, and the support they choose.
        original = original_hidden[select] @ lm_head_weight.T
        support = top_k_support(original, top_k)
        if support is not None:
            original, rows = original[:, support], lm_head_weight[support]
    # Step 2: the tuned model's logits over the same rows.
    return standard_kl(original, hidden[select] @ rows.T, denominator)


def top_k_support(original_logits: torch.Tensor, top_k: int, always: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sorted ids of every token among the original model's top_k at some position of `original_logits` [N, V],
    plus the ids `always`; None when top_k is 0 or reaches V (the KL then runs over every token)."""
    if not 0 < top_k < original_logits.shape[-1] or not original_logits.shape[0]:
        return None
    ids = original_logits.topk(top_k, dim=-1).indices.reshape(-1)
    if always is not None:
        ids = torch.cat([ids, always.to(ids.device)])
    return ids.unique()


def standard_kl(original_logits: torch.Tensor, tuned_logits: torch.Tensor, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """KL(original || tuned) of next-token distributions [N, V], summed and divided by `denominator` (default N)."""
    if tuned_logits.shape[0] == 0:
        return tuned_logits.sum() * 0.0
    log_p = F.log_softmax(original_logits.float(), dim=-1)
    log_q = F.log_softmax(tuned_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum") / (denominator if denominator is not None else log_q.shape[0])


def greedy_agreement(original_logits: torch.Tensor, tuned_logits: torch.Tensor) -> torch.Tensor:
    """Share of positions where the tuned model's greedy token is the original model's (teacher-forced)."""
    if tuned_logits.shape[0] == 0:
        return torch.tensor(float("nan"))
    return (original_logits.argmax(-1) == tuned_logits.argmax(-1)).float().mean()


def heads_ramp(step: int, total: int, kind: str) -> float:
    """Weight in [0, 1] that ramps the heads' term in over `total` joint steps."""
    if kind == "none" or total <= 0:
        return 1.0
    frac = min(max(step / total, 0.0), 1.0)
    return math.sin(math.pi / 2 * frac) if kind == "sine" else frac


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops before the bad update is applied."""


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Raise NonFiniteLossError (with what to try) when the loss is NaN or infinite."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"loss is {loss.item()} at optimizer step {step}; the update was not applied. Lower optim.lr, "
            "keep trainer.gradient_clip_val set, or check the data."
        )
