"""EAGLE-1 / EAGLE-3 training losses: the unrolled training-time test and its objectives.

Layout of the unrolled steps (shared with Chimera, see `specdec.train.losses.unrolled_mask`):
draft step i (0-based) runs for every anchor a at once, at position a+i, reading token x_{a+i+1};
its keys/values are appended to one cache, T entries per step, so entry (s, b) of the cache is
step s at anchor b (position b+s). Its hidden input is the target's features at a for step 0 and
the drafter's own output of step i-1 at anchor a after that. Step i is scored against token
x_{a+i+2} (and the target's distribution there) where that is an assistant token.

The objectives besides the soft cross-entropy are each off by default (weight or threshold 0):
HASS's top-K distillation term and a harmonized context (`hass_topk_*`, `hass_context`), an
LK-style acceptance-rate loss (`lk_weight`) and GRIFFIN-style masking of misaligned chains
(`griffin_threshold`); `EagleObjectives` documents each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdec.models.decoder import ContextAlignedKV, UnrolledKV, additive
from specdec.train.losses import HeadLosses, _rank_hits, _weighted, head_targets, shift_left


@dataclass(frozen=True)
class EagleObjectives:
    """The loss terms of one unrolled step and the options that change what a step sees."""

    ce_weight: float = 1.0
    """Soft cross-entropy -sum_v p_v log q_v against the target's distribution p (restricted to the draft vocabulary)."""
    feature_weight: float = 0.0
    """SmoothL1 regression of the drafter's output onto the target's next feature (EAGLE-1), mean over H."""
    hass_topk: int = 10
    """K of HASS's harmonized objective distillation: the target's K most likely draft-vocabulary tokens."""
    hass_topk_weight: float = 0.0
    """Weight of HASS's top-K term -sum_{v in topK(p)} p_v log q_v (0 = off)."""
    lk_weight: float = 0.0
    """Weight of the LK-style term 1 - sum_v min(p_v, q_v), the complement of the acceptance rate of q under p (0 = off)."""
    griffin_threshold: float = 0.0
    """Drop from step i >= 1 the anchors whose chain had q(label) below this at an earlier step (0 = off)."""
    hass_context: bool = False
    """Step i > 0 sees the drafter's own step-(i-1) features for the whole prefix (`context_aligned_mask`)."""


def context_aligned_mask(length: int, step: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask [T, (step+1) T] for unrolled step `step` with a harmonized context.

    Same key layout as `unrolled_mask` (T entries per step, entry (s, b) = step s at anchor b, at
    position b+s). The query of anchor a at step i sees every position 0..a+i exactly once:
    positions i..a+i through step i's own entries (i, b), b <= a, whose hidden input is the
    drafter's step-(i-1) output at every anchor, and positions p < i through entry (p, 0), the most
    drafted entry that exists there (the target's features only at position 0). `unrolled_mask`
    instead shows step 0's target entries for positions 0..a and drafter entries only on the
    anchor's own chain a+1..a+i, which is what the drafter's cache holds at decode time (and what
    HASS's released code masks); this variant is the stronger alignment the issue asks for.
    Step 0 is the causal mask in both."""
    own_step = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    first_anchor = torch.zeros(length, length, dtype=torch.bool, device=device)
    first_anchor[:, 0] = True
    return additive(torch.cat([first_anchor] * step + [own_step], dim=1), dtype)


def soft_ce(teacher: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[N] -sum_v p_v log q_v per position."""
    return -(teacher * log_q).sum(-1)


def hass_topk_term(teacher: torch.Tensor, log_q: torch.Tensor, k: int) -> torch.Tensor:
    """[N] HASS's harmonized objective distillation (arXiv 2408.15766): the soft cross-entropy
    restricted to the target's top-k tokens, -sum_{v in topk(p)} p_v log q_v, so the ranking that a
    tree's top-k expansion uses is learnt first."""
    # Step 1: the target's k most likely tokens at each position.
    top = teacher.topk(min(k, teacher.shape[-1]), dim=-1).indices
    # Step 2: the cross-entropy over those tokens only (q stays normalised over the whole vocabulary).
    return -(teacher.gather(-1, top) * log_q.gather(-1, top)).sum(-1)


def lk_term(teacher: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[N] 1 - sum_v min(p_v, q_v) (arXiv 2602.23881): the probability that speculative sampling
    rejects a token drafted from q against target p, i.e. their total variation distance."""
    return 1.0 - torch.minimum(teacher, q).sum(-1)


def draft_index(draft_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[V] target id -> its index in the draft vocabulary (target ids `draft_ids`), -1 outside it."""
    index = torch.full((vocab_size,), -1, dtype=torch.long, device=draft_ids.device)
    index[draft_ids] = torch.arange(len(draft_ids), device=draft_ids.device)
    return index


def label_probability(q: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[N] the drafter's probability q [N, V_draft] of each label (target ids); 0 for a label
    outside the draft vocabulary (`index` from `draft_index`), which the drafter can never propose."""
    where = index[labels]
    return q.gather(-1, where.clamp(min=0)[:, None])[:, 0] * (where >= 0)


def griffin_update(aligned: torch.Tensor, select: torch.Tensor, label_prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """GRIFFIN-style token masking (arXiv 2502.11018): `aligned` [B, T] over anchors, with the
    anchors scored at this step (`select`) whose label probability is under `threshold` cleared.
    At decode time such a chain is rejected at this step, so later steps never see it; anchors
    without a label at this step keep their state."""
    out = aligned.clone()
    out[select] = aligned[select] & (label_prob >= threshold)
    return out


def step_terms(objectives: EagleObjectives, logits: torch.Tensor, teacher: torch.Tensor, out: torch.Tensor, target_h: torch.Tensor) -> torch.Tensor:
    """[N] the weighted loss of each scored anchor at one step."""
    log_q = F.log_softmax(logits, dim=-1)
    loss = objectives.ce_weight * soft_ce(teacher, log_q)
    if objectives.hass_topk_weight > 0:
        loss = loss + objectives.hass_topk_weight * hass_topk_term(teacher, log_q, objectives.hass_topk)
    if objectives.lk_weight > 0:
        loss = loss + objectives.lk_weight * lk_term(teacher, log_q.exp())
    if objectives.feature_weight > 0:
        loss = loss + objectives.feature_weight * F.smooth_l1_loss(out.float(), target_h.float(), reduction="none").mean(-1)
    return loss


def eagle_losses(
    draft,
    features: torch.Tensor,
    final_hidden: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
    *,
    steps: int = 1,
    decay: float = 0.8,
    objectives: EagleObjectives = EagleObjectives(),
    noise: torch.Tensor | None = None,
    with_accuracy: bool = True,
    denominators: torch.Tensor | None = None,
) -> HeadLosses:
    """EAGLE-1 / EAGLE-3 loss with `steps` unrolled draft steps (training-time test).

    Step i (layout in the module docstring) is scored at anchors whose token x_{a+i+2} is an
    assistant token with `step_terms` against the target's distribution there,
    softmax(W_lm h_{a+i+1}) restricted to the drafter's vocabulary, summed and divided by the
    anchors kept (or `denominators[i]`, data-parallel training's mean label count over ranks), and
    weighted decay**i. `final_hidden` is the target's last hidden state (after the final norm);
    `noise` is added to the step-0 features (EAGLE-1). With `objectives.griffin_threshold` the
    anchors of misaligned chains leave the sums of later steps; rank hits (validation accuracy)
    always count every labelled anchor.
    """
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)[None].expand(batch, -1)
    vocab_weight = draft.vocab_rows(lm_head_weight)
    if objectives.griffin_threshold > 0:
        index = draft_index(draft.to_target_ids(torch.arange(vocab_weight.shape[0], device=input_ids.device)), embed_weight.shape[0])
    hidden = draft.embed_features(features if noise is None else features + noise)
    aligned = torch.ones(batch, length, dtype=torch.bool, device=input_ids.device)
    # The layouts of `context_aligned_mask` and `unrolled_mask`, computed without their dense masks.
    cache = ContextAlignedKV() if objectives.hass_context else UnrolledKV()
    per_step, rank_hits, count = [], [], []
    for i in range(steps):
        # Step 1: run draft step i for every anchor at once, attending per the chosen layout.
        embeds = F.embedding(shift_left(input_ids, i + 1), embed_weight)
        hidden = draft(embeds, hidden, positions + i, None, cache)
        # Step 2: the anchors whose label x_{a+i+2} is an assistant token, and the target's
        # distribution at a+i+1 over the drafter's vocabulary.
        select, labels = head_targets(input_ids, loss_mask, i + 2)
        out = hidden[select]
        logits = draft.logits(out, lm_head_weight).float()
        target_h = shift_left(final_hidden, i + 1)[select]
        with torch.no_grad():
            teacher = torch.softmax((target_h @ vocab_weight.T).float(), dim=-1)
        # Step 3: the loss over the anchors whose chain is still aligned (all of them without GRIFFIN).
        keep = aligned[select]
        loss = (step_terms(objectives, logits, teacher, out, target_h) * keep).sum()
        divisor = denominators[i] if denominators is not None else max(int(keep.sum()), 1)
        per_step.append(loss / divisor)
        # Step 4: GRIFFIN: chains whose label is unlikely here are rejected before step i+1.
        if objectives.griffin_threshold > 0:
            with torch.no_grad():
                aligned = griffin_update(aligned, select, label_probability(logits.softmax(-1), labels, index), objectives.griffin_threshold)
        if with_accuracy:
            with torch.no_grad():
                rank_hits.append(_rank_hits(logits, labels, draft.to_target_ids))
        count.append(torch.tensor(labels.numel(), dtype=torch.float32))
    return _weighted(per_step, rank_hits, count, decay, with_accuracy)
