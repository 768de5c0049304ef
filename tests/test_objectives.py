"""The EAGLE training objectives of issue 14 (HASS, LK, GRIFFIN, a 7-step training-time test) on
hand-made cases and tiny drafters, the EAGLE-3.1 norms (state dict, export, old drafts, lossless),
and EAGLE-1's reduced-vocabulary recipe key."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from specdec.models.decoder import KVCache, LayerShape, causal_mask
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter
from specdec.train.eagle_losses import (
    EagleObjectives,
    context_aligned_mask,
    draft_index,
    eagle_losses,
    griffin_update,
    hass_topk_term,
    label_probability,
    lk_term,
    soft_ce,
)
from specdec.train.losses import head_targets, shift_left, unrolled_mask
from test_eagle_train import overrides
from test_train import prompts_file  # noqa: F401  (a fixture)

VOCAB, HIDDEN, LENGTH = 48, 16, 12
SHAPE = LayerShape(hidden_size=HIDDEN, num_heads=2, num_kv_heads=1, head_dim=8, intermediate_size=32)


def _eagle3(draft_vocab=VOCAB, seed=0, **switches):
    torch.manual_seed(seed)
    draft = Eagle3Drafter(Eagle3Config(HIDDEN, VOCAB, draft_vocab, [1, 2, 3], layer=SHAPE, **switches))
    draft.set_vocab(torch.arange(0, VOCAB, VOCAB // draft_vocab)[:draft_vocab])
    for name, p in draft.named_parameters():
        if "norm" not in name:
            p.data.normal_(0, 0.3)
    return draft


def _batch(seed=0, batch=2, length=LENGTH, prompt=3):
    """(features [B, T, 3H], final hidden [B, T, H], ids, loss mask (the first `prompt` tokens 0), embeddings, lm_head)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[:, :prompt] = 0
    return (torch.randn(batch, length, 3 * HIDDEN, generator=g), torch.randn(batch, length, HIDDEN, generator=g), ids, mask,
            torch.randn(VOCAB, HIDDEN, generator=g), torch.randn(VOCAB, HIDDEN, generator=g))


def _losses(draft, batch, **kwargs):
    return eagle_losses(draft, *batch, **kwargs)


# -- loss terms on hand-made distributions --

def test_lk_term_is_one_minus_the_overlap_of_the_two_distributions():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.0, 0.9]])
    q = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.0, 0.9]])
    # row 0: min = 0.2 + 0.3 + 0.2 = 0.7; row 1: identical, so nothing is rejected.
    assert lk_term(p, q).tolist() == pytest.approx([0.3, 0.0], abs=1e-6)
    assert lk_term(p, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])).tolist() == pytest.approx([0.8, 0.9])


def test_hass_term_is_the_cross_entropy_over_the_targets_top_k_tokens():
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    log_q = torch.tensor([[0.3, 0.1, 0.4, 0.2]]).log()
    # top-2 of p: tokens 1 (0.5) and 3 (0.3).
    assert hass_topk_term(p, log_q, 2).item() == pytest.approx(-(0.5 * math.log(0.1) + 0.3 * math.log(0.2)))
    assert hass_topk_term(p, log_q, 1).item() == pytest.approx(-0.5 * math.log(0.1))
    assert hass_topk_term(p, log_q, 10).item() == pytest.approx(soft_ce(p, log_q).item())  # K >= V: the whole soft CE


def test_objectives_enter_the_step_loss_with_their_weights():
    """Step 0 recomputed by hand: the drafter's logits at the scored anchors against the teacher."""
    draft, batch = _eagle3(draft_vocab=24), _batch()
    features, final, ids, mask, embed, head = batch
    with torch.no_grad():
        hidden = draft(F.embedding(shift_left(ids, 1), embed), draft.embed_features(features), torch.arange(LENGTH)[None].expand(2, -1), unrolled_mask(LENGTH, 0, torch.float32, "cpu"), KVCache())
        select, _ = head_targets(ids, mask, 2)
        log_q = F.log_softmax(draft.logits(hidden[select]), -1)
        teacher = torch.softmax(shift_left(final, 1)[select] @ draft.vocab_rows(head).T, -1)
        ce, hass, lk = soft_ce(teacher, log_q).mean(), hass_topk_term(teacher, log_q, 3).mean(), lk_term(teacher, log_q.exp()).mean()
        lk_only = _losses(draft, batch, objectives=EagleObjectives(ce_weight=0.0, lk_weight=1.0)).per_head[0]
        mixed = _losses(draft, batch, objectives=EagleObjectives(ce_weight=0.5, hass_topk=3, hass_topk_weight=2.0, lk_weight=4.0)).per_head[0]
        plain = _losses(draft, batch).per_head[0]
    assert 0 < lk < 1
    assert lk_only.item() == pytest.approx(lk.item(), rel=1e-5)
    assert mixed.item() == pytest.approx((0.5 * ce + 2.0 * hass + 4.0 * lk).item(), rel=1e-5)
    assert plain.item() == pytest.approx(ce.item(), rel=1e-5)


# -- GRIFFIN --

def test_griffin_mask_on_a_hand_made_chain():
    aligned = torch.ones(1, 6, dtype=torch.bool)
    # step 0 scores anchors 0..2; anchor 1's label got probability 0.01 < 0.1.
    select0 = torch.tensor([[True, True, True, False, False, False]])
    aligned = griffin_update(aligned, select0, torch.tensor([0.9, 0.01, 0.5]), threshold=0.1)
    assert aligned[0].tolist() == [True, False, True, True, True, True]
    # step 1 scores anchors 0..1: anchor 0 misses now; anchor 1 stays dropped although its label is likely here.
    select1 = torch.tensor([[True, True, False, False, False, False]])
    aligned = griffin_update(aligned, select1, torch.tensor([0.05, 0.9]), threshold=0.1)
    assert aligned[0].tolist() == [False, False, True, True, True, True]


def test_label_probability_is_zero_outside_the_draft_vocabulary():
    index = draft_index(torch.tensor([2, 5, 7]), vocab_size=9)
    assert index.tolist() == [-1, -1, 0, -1, -1, 1, -1, 2, -1]
    q = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert label_probability(q, torch.tensor([7, 4]), index).tolist() == pytest.approx([0.5, 0.0])


def test_griffin_drops_misaligned_chains_from_later_steps_only_and_never_from_accuracy():
    draft, batch = _eagle3(), _batch(prompt=0)  # every anchor scored from step 0 on, so step 0 decides every chain
    steps = dict(steps=3, with_accuracy=True)
    off = _losses(draft, batch, **steps)
    strict = _losses(draft, batch, objectives=EagleObjectives(griffin_threshold=0.999), **steps)  # a random drafter is never this sure
    some = _losses(draft, batch, objectives=EagleObjectives(griffin_threshold=1.0 / VOCAB), **steps)
    assert strict.per_head[0].item() == pytest.approx(off.per_head[0].item()) and some.per_head[0].item() == pytest.approx(off.per_head[0].item())
    assert strict.per_head[1:].tolist() == [0.0, 0.0]
    assert some.per_head[1].item() > 0 and some.per_head[1].item() != pytest.approx(off.per_head[1].item())
    for masked in (strict, some):
        assert torch.equal(masked.count, off.count) and torch.equal(masked.rank_hits, off.rank_hits)


# -- HASS context --

def test_context_aligned_mask_layout():
    length, step = 4, 2
    visible = context_aligned_mask(length, step, torch.float32, "cpu") == 0
    first = [[1, 0, 0, 0]] * 4
    own = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert visible.int().tolist() == [f + g + o for f, g, o in zip(first, first, own)]
    # Every query (anchor a at step i, position a+i) sees each position 0..a+i exactly once.
    for a in range(length):
        seen = sorted(b + s for s in range(step + 1) for b in range(length) if visible[a, s * length + b])
        assert seen == list(range(a + step + 1))
    assert torch.equal(context_aligned_mask(length, 0, torch.float32, "cpu"), unrolled_mask(length, 0, torch.float32, "cpu"))


def test_hass_context_step_is_a_causal_pass_over_the_drafters_own_features():
    """Step 1 with hass_context = one causal pass over position 0's target entry and, at position
    b+1, token x_{b+2} with the drafter's step-0 output of anchor b."""
    draft, batch = _eagle3(), _batch(batch=1)
    features, final, ids, mask, embed, head = batch
    positions = torch.arange(LENGTH)[None]
    with torch.no_grad():
        step0 = draft(F.embedding(shift_left(ids, 1), embed), draft.embed_features(features), positions, causal_mask(LENGTH, 0, torch.float32, "cpu"), KVCache())
        hidden = torch.cat([draft.embed_features(features[:, :1]), step0[:, :-1]], dim=1)
        tokens = torch.cat([ids[:, 1:2], shift_left(ids, 2)[:, :-1]], dim=1)  # position 0 reads x_1, position b+1 reads x_{b+2}
        step1 = draft(F.embedding(tokens, embed), hidden, positions, causal_mask(LENGTH, 0, torch.float32, "cpu"), KVCache())[:, 1:]
        select, _ = head_targets(ids, mask, 3)
        teacher = torch.softmax(shift_left(final, 2)[select] @ head.T, -1)
        expected = soft_ce(teacher, F.log_softmax(draft.logits(F.pad(step1, (0, 0, 0, 1))[select]), -1)).mean()
        harmonized = _losses(draft, batch, steps=2, objectives=EagleObjectives(hass_context=True)).per_head[1]
        default = _losses(draft, batch, steps=2).per_head[1]
    assert harmonized.item() == pytest.approx(expected.item(), rel=1e-5)
    assert default.item() != pytest.approx(expected.item(), rel=1e-3)


# -- a 7-step training-time test --

@pytest.mark.parametrize("make", [lambda: _eagle3(draft_vocab=24), lambda: Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, layer=SHAPE))], ids=["eagle3", "eagle1"])
def test_seven_unrolled_steps_give_seven_losses_and_gradients(make):
    draft = make()
    features, final, ids, mask, embed, head = _batch(length=10)  # step 6 scores x_{a+8}: anchors 0 and 1 only
    feats = final if isinstance(draft, Eagle1Drafter) else features
    objectives = EagleObjectives(hass_topk_weight=1.0, lk_weight=1.0, griffin_threshold=0.01, hass_context=True)
    out = eagle_losses(draft, feats, final, ids, mask, embed, head, steps=7, objectives=objectives, with_accuracy=True)
    assert out.per_head.shape == (7,) and torch.isfinite(out.per_head).all()
    assert out.count.tolist() == [14.0, 14.0, 12.0, 10.0, 8.0, 6.0, 4.0]  # 2 rows; step 0 skips the label at prompt position 2
    assert out.rank_hits.shape[0] == 7
    out.loss.backward()
    assert draft.fc.weight.grad.abs().sum() > 0


def test_a_recipe_with_every_objective_on_trains_seven_steps(tmp_path, tiny_target_dir, prompts_file):
    from specdec.models.base import load_draft
    from specdec.train.config import load_recipe
    from specdec.train.pipeline import run

    options = {"eagle.ttt_steps": 7, "eagle.val_steps": 7, "eagle.hass_topk": 5, "eagle.hass_topk_weight": 1.0, "eagle.hass_context": True, "eagle.lk_loss_weight": 1.0, "eagle.griffin_threshold": 0.01,
               "eagle3.fc_norm": True, "eagle3.norm_output": True}
    result = run(load_recipe("eagle3", overrides(tmp_path, tiny_target_dir, prompts_file, **options)))
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    assert {f"train/head{k}_loss" for k in range(1, 8)} <= set(rows[0])
    assert all(math.isfinite(float(r["train/loss"])) for r in rows if r.get("train/loss"))
    draft = load_draft(result.draft_dir)
    assert len(draft.config.head_rank_accuracy) == 7
    assert draft.config.fc_norm and draft.config.norm_output and "fc_norm.0.weight" in draft.state_dict()


def test_the_recipe_needs_one_loss_term():
    from specdec.train.config import RecipeError, load_recipe

    load_recipe("eagle3", {"eagle.ce_loss_weight": 0, "eagle.lk_loss_weight": 1.0})
    with pytest.raises(RecipeError, match="every EAGLE loss weight is 0"):
        load_recipe("eagle3", {"eagle.ce_loss_weight": 0, "eagle.hass_topk_weight": 0, "eagle.lk_loss_weight": 0})
    with pytest.raises(RecipeError, match="griffin_threshold"):
        load_recipe("eagle3", {"eagle.griffin_threshold": 1.0})


# -- EAGLE-3.1 norms --

def test_norm_switches_place_their_weights_and_act_where_speculators_does():
    plain, normed = _eagle3(), _eagle3(fc_norm=True, norm_output=True)
    assert not any(k.startswith("fc_norm") for k in plain.state_dict())
    assert {"fc_norm.0.weight", "fc_norm.1.weight", "fc_norm.2.weight"} <= set(normed.state_dict())
    normed.load_state_dict({**plain.state_dict(), **{f"fc_norm.{i}.weight": torch.ones(HIDDEN) for i in range(3)}})
    features, _, ids, _, embed, _ = _batch(batch=1)
    a, b, c = features.chunk(3, dim=-1)
    with torch.no_grad():
        # fc_norm: one RMSNorm per fused layer before fc, so each layer's scale drops out.
        rescaled = torch.cat([2 * a, 5 * b, c], dim=-1)
        assert torch.allclose(normed.embed_features(rescaled), normed.embed_features(features), atol=1e-4)
        assert not torch.allclose(plain.embed_features(rescaled), plain.embed_features(features), atol=1e-3)
        # norm_output: the returned state is the final norm's output (unit RMS with unit weights); logits read it as is.
        hidden = normed.embed_features(features)
        args = (F.embedding(ids, embed), hidden, torch.arange(LENGTH)[None], causal_mask(LENGTH, 0, torch.float32, "cpu"))
        out_plain, out_normed = plain(*args), normed(*args)
        assert torch.allclose(out_normed.pow(2).mean(-1), torch.ones(1, LENGTH), atol=1e-3)
        assert not torch.allclose(out_plain.pow(2).mean(-1), torch.ones(1, LENGTH), atol=1e-1)
        assert torch.allclose(normed.logits(out_normed), plain.logits(out_plain), atol=1e-4)


def test_norms_travel_in_the_speculators_export_and_sglang_refuses_them(tmp_path):
    from safetensors.torch import load_file

    from specdec.models.eagle_formats import EagleFormatError, export_eagle, load_eagle_export

    draft = _eagle3(draft_vocab=24, fc_norm=True, norm_output=True)
    out = export_eagle(draft, tmp_path / "spec", "speculators", base_model="tiny", max_position_embeddings=256)
    config = json.loads((out / "config.json").read_text())
    assert config["fc_norm"] is True and config["norm_output"] is True and config["norm_before_fc"] is False
    assert {"fc_norm.0.weight", "fc_norm.2.weight"} <= set(load_file(out / "model.safetensors"))
    back = load_eagle_export(out)
    assert back.config.fc_norm and back.config.norm_output
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in draft.state_dict().items())
    with pytest.raises(EagleFormatError, match="fc_norm and norm_output.*format=speculators"):
        export_eagle(draft, tmp_path / "sgl", "sglang", max_position_embeddings=256)
    plain = export_eagle(_eagle3(draft_vocab=24), tmp_path / "plain", "speculators", max_position_embeddings=256)
    assert json.loads((plain / "config.json").read_text())["fc_norm"] is False
    assert not load_eagle_export(plain).config.norm_output


def test_an_eagle3_draft_saved_before_the_norms_still_loads(tmp_path):
    from specdec.models.base import load_draft

    draft = _eagle3(draft_vocab=24)
    draft.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    old = {k: v for k, v in config.items() if k not in ("fc_norm", "norm_output")}
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    loaded = load_draft(tmp_path / "old")
    assert not loaded.config.fc_norm and not loaded.config.norm_output
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in draft.state_dict().items())


@pytest.mark.parametrize("top_k", [1, 3])
def test_greedy_with_norms_on_equals_plain_greedy(top_k):
    from conftest import build_tiny_llama, enliven
    from specdec.runtime.eagle_proposer import EagleOptions
    from specdec.runtime.generator import SpeculativeGenerator, plain_generate

    model = enliven(build_tiny_llama(320, hidden_size=64, layers=3), seed=2)
    draft = Eagle3Drafter(Eagle3Config(64, 320, 96, [1, 2, 3], layer=LayerShape.from_target_config(model.config), fc_norm=True, norm_output=True))
    draft.set_vocab(torch.arange(0, 320, 3)[:96], model.lm_head.weight)
    torch.manual_seed(1)
    for name, p in draft.named_parameters():
        if "norm" not in name:
            p.data.normal_(0, 0.3)
    generator = SpeculativeGenerator.from_draft(model, draft.eval(), EagleOptions(depth=4, top_k=top_k, total_tokens=10 if top_k > 1 else 0))
    generator.eos = {10**9}
    for seed in (0, 1):
        prompt = torch.randint(3, 320, (1, 9), generator=torch.Generator().manual_seed(seed))
        assert generator.generate(prompt, 30).tokens == plain_generate(model, prompt, 30, eos_token_ids=[10**9]).tokens


# -- EAGLE-1 reduced vocabulary --

def test_eagle1_recipe_key_builds_a_reduced_vocabulary_or_the_full_one():
    import dataclasses

    from specdec.train.config import load_recipe
    from specdec.train.eagle_method import Eagle1Method

    record = {"hidden_size": HIDDEN, "vocab_size": VOCAB, "num_layers": 3, "layer_shape": dataclasses.asdict(SHAPE)}
    head = torch.randn(VOCAB, HIDDEN)
    rows = {"input_ids": [[5, 7, 7, 9, 9, 9, 2]], "loss_mask": [[0, 1, 1, 1, 1, 1, 1]]}  # labels: 9 x3, 7 x2, 2 x1
    for value in (0, "null"):
        full = Eagle1Method(load_recipe("eagle1", {"eagle1.draft_vocab_size": value})).build_draft(record, head, rows)
        assert not full.reduced_vocab and "d2t" not in full.state_dict()
    reduced = Eagle1Method(load_recipe("eagle1", {"eagle1.draft_vocab_size": 3, "eagle1.min_vocab_coverage": 0.5})).build_draft(record, head, rows)
    assert reduced.draft_ids().tolist() == [2, 7, 9]  # the three most frequent labels
    assert reduced.logits(torch.randn(4, HIDDEN), head).shape == (4, 3)
    with pytest.warns(UserWarning, match="raise eagle1.draft_vocab_size"):
        Eagle1Method(load_recipe("eagle1", {"eagle1.draft_vocab_size": 2})).build_draft(record, head, rows)


def test_an_eagle1_draft_with_a_reduced_vocabulary_trains_and_decodes_losslessly(tmp_path, tiny_target_dir, prompts_file, tiny_llama):
    from specdec.models.base import load_draft
    from specdec.runtime.generator import SpeculativeGenerator, choose_layout, plain_generate
    from specdec.train.config import load_recipe
    from specdec.train.pipeline import run

    result = run(load_recipe("eagle1", overrides(tmp_path, tiny_target_dir, prompts_file, "eagle1", **{"eagle1.draft_vocab_size": 32})))
    draft = load_draft(result.draft_dir)
    assert draft.config.draft_vocab_size == 32 and draft.num_draft_tokens == 32 and int(draft.t2d.sum()) == 32
    generator = SpeculativeGenerator.from_draft(tiny_llama, draft, choose_layout(draft, "default", size=6, depth=3, top_k=2))
    prompt = torch.tensor([[1, 40, 41, 42, 43]])
    assert generator.generate(prompt, 20).tokens == plain_generate(tiny_llama, prompt, 20).tokens


@pytest.mark.parametrize("layout", ["unrolled", "context_aligned"])
def test_the_training_caches_attend_as_their_dense_masks_with_the_same_gradients(layout):
    from specdec.models.decoder import ContextAlignedKV, DecoderLayer, UnrolledKV

    make_mask, make_cache = {"unrolled": (unrolled_mask, UnrolledKV), "context_aligned": (context_aligned_mask, ContextAlignedKV)}[layout]
    torch.manual_seed(0)
    shape = LayerShape(hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=48, rms_norm_eps=1e-6, rope_theta=10000.0)
    layer = DecoderLayer(shape)
    x0 = torch.randn(2, 7, 32, requires_grad=True)
    positions = torch.arange(7)[None].expand(2, -1)

    def unroll(cache, dense: bool):
        x, outs = x0, []
        for i in range(4):  # every step reads the previous step's output, as training-time test does
            x = layer(x, positions + i, make_mask(7, i, x.dtype, "cpu") if dense else None, cache)
            outs.append(x)
        return torch.stack(outs)

    def without_earlier_steps():
        x, outs = x0, []
        for i in range(4):  # each step sees only its own causal prefix: what a cache that dropped the chain would compute
            x = layer(x, positions + i, make_mask(7, 0, x.dtype, "cpu"), KVCache())
            outs.append(x)
        return torch.stack(outs)

    dense = unroll(KVCache(), dense=True)
    dense.square().sum().backward()
    dense_grads = [x0.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x0.grad = None
    layer.zero_grad()
    chained = unroll(make_cache(), dense=False)
    with torch.no_grad():
        assert not torch.allclose(dense[1:], without_earlier_steps()[1:], atol=1e-3)  # the earlier steps' entries change what later steps compute
    assert torch.allclose(chained, dense, atol=1e-5)
    chained.square().sum().backward()
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip([x0.grad] + [p.grad for p in layer.parameters()], dense_grads))


def test_chimera_fused_terms_add_up_to_the_fuse_layer():
    from specdec.models.chimera import ChimeraConfig, ChimeraDrafter

    torch.manual_seed(0)
    draft = ChimeraDrafter(ChimeraConfig(HIDDEN, 50, layer=SHAPE))
    trigrams, hidden = torch.randn(2, 5, HIDDEN), torch.randn(2, 5, HIDDEN)
    first, second = draft.fused_terms(trigrams, hidden)
    assert torch.allclose(first + second, draft.fuse(torch.cat([trigrams, hidden], dim=-1)), atol=1e-5)
    assert not torch.allclose(first, second)
