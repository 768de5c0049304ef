"""Pure loss functions: label alignment, masking, soft labels, KL, ramp, NaN guard."""

import math

import pytest
import torch

from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.train.losses import NonFiniteLossError, check_finite, head_targets, heads_ramp, kl_to_original, medusa_head_losses


def test_head_targets_on_a_hand_made_sequence():
    # tokens 10..15; positions 0-1 are prompt, 2-5 assistant.
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    # Medusa head 1 (code k=0) at t predicts t+2: sources t=0..3 -> labels 12..15.
    select, labels = head_targets(ids, mask, 2)
    assert select[0].tolist() == [True, True, True, True, False, False]
    assert labels.tolist() == [12, 13, 14, 15]
    # Medusa head 2 (code k=1) at t predicts t+3: sources t=0..2 -> labels 13..15.
    select, labels = head_targets(ids, mask, 3)
    assert select[0].tolist() == [True, True, True, False, False, False]
    assert labels.tolist() == [13, 14, 15]
    # A masked-out label position is skipped.
    select, labels = head_targets(ids, torch.tensor([[0, 0, 1, 0, 1, 1]]), 2)
    assert labels.tolist() == [12, 14, 15]


def _oracle_heads(ids: torch.Tensor, num_heads: int, vocab: int):
    """Hidden state at t = one-hot of t; head k's projection maps t to token t+k+2."""
    length = ids.shape[1]
    hidden = torch.eye(length).unsqueeze(0)
    heads = MedusaHeads(MedusaConfig(hidden_size=length, vocab_size=vocab, num_heads=num_heads, share_lm_head=False))
    with torch.no_grad():
        for k, proj in enumerate(heads.lm_heads):
            proj.weight.zero_()
            for t in range(length - k - 2):
                proj.weight[ids[0, t + k + 2], t] = 50.0
    return heads, hidden


def test_oracle_heads_score_perfectly_only_with_the_right_alignment():
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    heads, hidden = _oracle_heads(ids, num_heads=3, vocab=10)
    out = medusa_head_losses(heads, hidden, ids, mask, None)
    assert out.top1.tolist() == [1.0, 1.0, 1.0]
    assert out.per_head.max() < 1e-4
    assert out.count.tolist() == [6.0, 5.0, 4.0]
    # Shift the labels by one position: the same heads are now wrong.
    shifted = torch.roll(ids, 1, dims=1)
    assert medusa_head_losses(heads, hidden, shifted, mask, None).top1.max() < 0.5


def test_weighted_total_uses_decay_powers():
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (2, 9))
    mask = torch.ones_like(ids)
    heads = MedusaHeads(MedusaConfig(hidden_size=4, vocab_size=10, num_heads=3))
    lm_head = torch.randn(10, 4)
    out = medusa_head_losses(heads, torch.randn(2, 9, 4), ids, mask, lm_head, decay=0.5)
    assert torch.allclose(out.loss, out.per_head[0] + 0.5 * out.per_head[1] + 0.25 * out.per_head[2])


def test_soft_labels_use_the_target_distribution_of_the_same_token():
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (1, 7))
    mask = torch.ones_like(ids)
    lm_head = torch.randn(10, 4)
    hidden = torch.randn(1, 7, 4)
    heads = MedusaHeads(MedusaConfig(hidden_size=4, vocab_size=10, num_heads=1))
    # The zero-initialised head reproduces h_t, so its soft loss equals CE(softmax(W h_t), softmax(W h_{t+1})).
    soft = medusa_head_losses(heads, hidden, ids, mask, lm_head, soft_label_weight=1.0).per_head[0]
    p = torch.softmax(hidden[0, 1:6] @ lm_head.T, -1)
    log_q = torch.log_softmax(hidden[0, 0:5] @ lm_head.T, -1)
    assert torch.allclose(soft, -(p * log_q).sum(-1).mean(), atol=1e-6)


def test_kl_to_original_is_zero_for_identical_models_and_positive_otherwise():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 4, requires_grad=True)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])
    lm_head = torch.randn(10, 4)
    assert kl_to_original(hidden.detach(), hidden, mask, lm_head).abs() < 1e-6
    kl = kl_to_original(hidden.detach() + 0.5, hidden, mask, lm_head)
    assert kl > 0
    kl.backward()
    assert hidden.grad.abs().sum() > 0


def test_kl_to_original_top_k_renormalises_over_the_union_of_the_original_top_k():
    # Hand-made: one-hot hidden states pick rows of an identity-like lm_head, so logits are known.
    lm_head = torch.eye(5)
    original = torch.tensor([[[4.0, 3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 3.0, 0.0], [0.0] * 5]])
    tuned = torch.tensor([[[1.0, 2.0, 0.0, 0.0, 9.0], [0.0, 0.0, 2.0, 1.0, 9.0], [0.0] * 5]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1]])  # positions 0 and 1 predict assistant tokens
    kl = kl_to_original(original, tuned, mask, lm_head, top_k=2)
    # Support = {0, 1} (position 0's top 2) | {2, 3} (position 1's): token 4 drops out of both sides.
    support = [0, 1, 2, 3]
    p = torch.log_softmax(original[0, :2][:, support], -1)
    q = torch.log_softmax(tuned[0, :2][:, support].detach(), -1)
    assert kl.item() == pytest.approx((p.exp() * (p - q)).sum().item() / 2, rel=1e-5)
    # The full KL sees the tuned model's mass on token 4; the top-k one does not, and its gradient skips that row.
    assert kl_to_original(original, tuned, mask, lm_head).item() > kl.item() + 1
    kl.backward()
    assert tuned.grad[0, :2, 4].abs().max() == 0 and tuned.grad[0, :2, :4].abs().sum() > 0


def test_ramp_schedules():
    assert heads_ramp(0, 10, "sine") == 0.0 and heads_ramp(10, 10, "sine") == pytest.approx(1.0)
    assert heads_ramp(5, 10, "sine") == pytest.approx(math.sin(math.pi / 4))
    assert heads_ramp(5, 10, "linear") == 0.5 and heads_ramp(3, 10, "none") == 1.0


def test_non_finite_loss_raises_with_advice():
    check_finite(torch.tensor(1.0), 3)
    with pytest.raises(NonFiniteLossError, match="step 7; the update was not applied. Lower optim.lr"):  # run() adds which checkpoint to resume from (test_guards.py)
        check_finite(torch.tensor(float("nan")), 7)
