"""EAGLE-1 / EAGLE-3 training losses: the unrolled training-time test and its objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specdec.models.decoder import KVCache
from specdec.train.losses import HeadLosses, _rank_hits, _weighted, head_targets, shift_left, unrolled_mask


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
    feature_weight: float = 0.0,
    ce_weight: float = 1.0,
    noise: torch.Tensor | None = None,
    with_accuracy: bool = True,
    denominators: torch.Tensor | None = None,
) -> HeadLosses:
    """EAGLE-1 / EAGLE-3 loss with `steps` unrolled draft steps (training-time test).

    Draft step i (0-based) at anchor a reads token x_{a+i+1} at position a+i; its hidden input is
    the target features at a for step 0 (`features`, plus `noise` for EAGLE-1) and the drafter's
    own output of step i-1 after that. It is scored at anchors whose token x_{a+i+2} is an
    assistant token, with soft CE against the target's distribution there, softmax(W_lm h_{a+i+1})
    restricted to the drafter's vocabulary, weighted `ce_weight`, plus `feature_weight` *
    SmoothL1(output, h_{a+i+1}) (EAGLE-1's feature regression, mean over H). Step i is weighted
    decay**i. `final_hidden` is the target's last hidden state (after the final norm).
    """
    length = input_ids.shape[1]
    positions = torch.arange(length, device=input_ids.device)[None].expand(input_ids.shape[0], -1)
    vocab_weight = draft.vocab_rows(lm_head_weight)
    hidden = draft.embed_features(features if noise is None else features + noise)
    cache, per_step, rank_hits, count = KVCache(), [], [], []
    for i in range(steps):
        # Step 1: run draft step i for every anchor at once, attending per `unrolled_mask`.
        embeds = F.embedding(shift_left(input_ids, i + 1), embed_weight)
        mask = unrolled_mask(length, i, hidden.dtype, hidden.device)
        hidden = draft(embeds, hidden, positions + i, mask, cache)
        # Step 2: score the anchors whose label x_{a+i+2} is an assistant token, against the
        # target's distribution at a+i+1 over the drafter's vocabulary.
        select, labels = head_targets(input_ids, loss_mask, i + 2)
        out = hidden[select]
        logits = draft.logits(out, lm_head_weight).float()
        target_h = shift_left(final_hidden, i + 1)[select]
        with torch.no_grad():
            teacher = torch.softmax((target_h @ vocab_weight.T).float(), dim=-1)
        loss = -(teacher * F.log_softmax(logits, dim=-1)).sum() * ce_weight
        if feature_weight > 0:
            loss = loss + feature_weight * F.smooth_l1_loss(out.float(), target_h.float(), reduction="none").mean(-1).sum()
        divisor = denominators[i] if denominators is not None else max(labels.numel(), 1)
        per_step.append(loss / divisor)
        if with_accuracy:
            with torch.no_grad():
                rank_hits.append(_rank_hits(logits, labels, draft.to_target_ids))
        count.append(torch.tensor(labels.numel(), dtype=torch.float32))
    return _weighted(per_step, rank_hits, count, decay, with_accuracy)
