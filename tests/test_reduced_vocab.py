"""Reduced draft vocabularies for Medusa, Chimera and EAGLE-1 (issue 14): the maps, the losses,
lossless decoding, save/load, the export layouts and the recipe keys (offline Medusa-1 included)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import build_tiny_llama, enliven, randomise
from specdec.models.base import load_draft, target_states
from specdec.models.chimera import ChimeraConfig, ChimeraDrafter
from specdec.models.decoder import LayerShape
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle_formats import export_eagle, load_eagle_export
from specdec.models.formats import describe_draft, get_format
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.models.medusa_formats import export_medusa, load_medusa_export
from specdec.models.vocab import IGNORE_INDEX, full_vocab_rows
from specdec.runtime.eagle_proposer import EagleOptions
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.proposers import Committed
from specdec.runtime.tree import DraftTree
from specdec.train.config import RecipeError, load_recipe
from specdec.train.eagle_losses import eagle_losses
from specdec.train.losses import chimera_losses, medusa_head_losses
from test_eagle_train import _args, _loss_curve, overrides
from test_train import prompts_file  # noqa: F401  (a fixture)

VOCAB, HIDDEN, DRAFT_VOCAB = 320, 64, 96
NO_EOS = [10**9]


# -- the maps --
def test_labels_map_to_draft_ids_and_out_of_vocabulary_labels_are_ignored():
    heads = MedusaHeads(MedusaConfig(hidden_size=4, vocab_size=10, num_heads=1, draft_vocab_size=3))
    heads.set_vocab(torch.tensor([1, 4, 7]))
    labels, inside = heads.to_draft_labels(torch.tensor([4, 0, 7, IGNORE_INDEX, 1, 9]))
    assert labels.tolist() == [1, IGNORE_INDEX, 2, IGNORE_INDEX, 0, IGNORE_INDEX]
    assert inside.tolist() == [True, False, True, False, True, False]
    assert heads.to_target_ids(torch.tensor([[2, 0], [1, 1]])).tolist() == [[7, 1], [4, 4]]
    assert heads.d2t.tolist() == [1, 3, 5] and torch.nonzero(heads.t2d).flatten().tolist() == [1, 4, 7]
    probs = heads.to_target_vocab(torch.tensor([[0.5, 0.25, 0.25]]))
    assert probs.shape == (1, 10) and probs[0, [1, 4, 7]].tolist() == [0.5, 0.25, 0.25] and float(probs.sum()) == 1.0
    assert heads.vocab_rows(torch.arange(20.0).reshape(10, 2)).tolist() == [[2, 3], [8, 9], [14, 15]]


def test_full_vocabulary_is_the_identity_and_keeps_the_old_state_dict():
    heads = MedusaHeads(MedusaConfig(hidden_size=4, vocab_size=10, num_heads=2))
    assert not heads.reduced_vocab and "d2t" not in heads.state_dict() and "t2d" not in heads.state_dict()
    labels = torch.tensor([3, IGNORE_INDEX, 9])
    assert heads.to_draft_labels(labels)[0].tolist() == [3, IGNORE_INDEX, 9] and heads.to_draft_labels(labels)[1].tolist() == [True, False, True]
    assert heads.to_target_ids(torch.tensor([5])).tolist() == [5] and heads.draft_ids().tolist() == list(range(10))
    with pytest.raises(ValueError, match="full vocabulary"):
        heads.set_vocab(torch.tensor([1, 2]))


def test_scattered_rows_never_make_an_outside_token_the_top_candidate():
    rows = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.randperm(100, generator=torch.Generator().manual_seed(1))[:40].sort().values
    full = full_vocab_rows(rows, ids, 100)
    assert torch.equal(full[ids], rows)
    outside = torch.ones(100, dtype=torch.bool)
    outside[ids] = False
    assert torch.allclose(full[outside], rows.mean(0).expand(60, -1))
    hidden = torch.randn(500, 8, generator=torch.Generator().manual_seed(2))
    assert set((hidden @ full.T).argmax(-1).tolist()) <= set(ids.tolist())


# -- the losses --
def _tiny_medusa_case():
    """One shared-lm_head head over V=5 with draft vocabulary {1, 3}; labels x[2:] = [1, 3, 4] (4 is outside)."""
    heads = MedusaHeads(MedusaConfig(hidden_size=2, vocab_size=5, num_heads=1, draft_vocab_size=2))
    heads.set_vocab(torch.tensor([1, 3]))
    generator = torch.Generator().manual_seed(0)
    lm_head = torch.randn(5, 2, generator=generator)
    hidden = torch.randn(1, 5, 2, generator=generator)
    ids = torch.tensor([[0, 2, 1, 3, 4]])
    return heads, lm_head, hidden, ids


def test_medusa_loss_is_the_hand_computed_draft_vocabulary_cross_entropy():
    heads, lm_head, hidden, ids = _tiny_medusa_case()
    out = medusa_head_losses(heads, hidden, ids, torch.ones_like(ids), lm_head)
    # The zero-initialised ResBlock is the identity: logits at t are h_t . W[{1, 3}].
    logits = hidden[0, :3] @ lm_head[[1, 3]].T
    log_q = logits - logits.exp().sum(-1, keepdim=True).log()
    expected = -(log_q[0, 0] + log_q[1, 1]) / 3  # labels 1 -> draft 0, 3 -> draft 1; label 4 adds nothing but counts
    assert float(out.per_head[0].detach()) == pytest.approx(float(expected), rel=1e-5)
    hits = int(logits[0].argmax() == 0) + int(logits[1].argmax() == 1)  # the outside label can never be hit
    assert out.count.tolist() == [3.0] and float(out.rank_hits[0, 0]) == hits and float(out.rank_hits[0, :2].sum()) == 2.0
    # Soft labels: the target's distribution at t+1 over the draft rows.
    soft = medusa_head_losses(heads, hidden, ids, torch.ones_like(ids), lm_head, soft_label_weight=1.0)
    teacher = torch.softmax(hidden[0, 1:4] @ lm_head[[1, 3]].T, dim=-1)
    assert float(soft.per_head[0].detach()) == pytest.approx(float(-(teacher * log_q).sum() / 3), rel=1e-5)


def test_labels_outside_the_vocabulary_leave_the_loss_and_count_as_misses():
    heads, lm_head, hidden, ids = _tiny_medusa_case()
    outside = torch.tensor([[0, 2, 0, 2, 4]])  # every label (0, 2, 4) is outside {1, 3}
    out = medusa_head_losses(heads, hidden, outside, torch.ones_like(outside), lm_head)
    assert float(out.loss) == 0.0 and out.count.tolist() == [3.0] and float(out.rank_hits.sum()) == 0.0 and float(out.top1[0]) == 0.0
    chimera = ChimeraDrafter(ChimeraConfig(2, 5, num_heads=1, draft_vocab_size=2, layer=LayerShape(2, 1, 1, 2, 4, 1e-6, 10000.0)))
    chimera.set_vocab(torch.tensor([1, 3]))
    embed = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    result = chimera_losses(chimera, hidden, outside, torch.ones_like(outside), embed, lm_head)
    assert float(result.loss) == 0.0 and float(result.rank_hits.sum()) == 0.0 and result.count.tolist() == [3.0]
    # The same labels inside the vocabulary do train.
    assert float(chimera_losses(chimera, hidden, ids, torch.ones_like(ids), embed, lm_head).loss) > 0


def test_chimera_loss_over_an_identity_vocabulary_equals_the_full_vocabulary_loss():
    shape = LayerShape(8, 2, 1, 4, 16, 1e-6, 10000.0)
    full = randomise(ChimeraDrafter(ChimeraConfig(8, 12, num_heads=2, share_lm_head=False, layer=shape)), 0, 0.3)
    reduced = ChimeraDrafter(ChimeraConfig(8, 12, num_heads=2, share_lm_head=False, draft_vocab_size=12, layer=shape))
    reduced.set_vocab(torch.arange(12))
    reduced.load_state_dict({**full.state_dict(), "d2t": reduced.d2t, "t2d": reduced.t2d})
    generator = torch.Generator().manual_seed(1)
    hidden, ids, embed = torch.randn(2, 7, 8, generator=generator), torch.randint(0, 12, (2, 7), generator=generator), torch.randn(12, 8, generator=generator)
    a = chimera_losses(full, hidden, ids, torch.ones_like(ids), embed, None)
    b = chimera_losses(reduced, hidden, ids, torch.ones_like(ids), embed, None)
    assert torch.allclose(a.per_head, b.per_head) and torch.equal(a.rank_hits, b.rank_hits)


def test_per_head_projections_start_from_the_target_rows_of_the_draft_tokens():
    lm_head = torch.randn(10, 4)
    heads = MedusaHeads(MedusaConfig(hidden_size=4, vocab_size=10, num_heads=2, share_lm_head=False, draft_vocab_size=3))
    heads.set_vocab(torch.tensor([0, 5, 9]), lm_head)
    assert all(torch.equal(head.weight, lm_head[[0, 5, 9]]) for head in heads.lm_heads)
    chimera = ChimeraDrafter(ChimeraConfig(4, 10, num_heads=1, share_lm_head=False, draft_vocab_size=3, layer=LayerShape(4, 1, 1, 4, 8, 1e-6, 10000.0)))
    chimera.set_vocab(torch.tensor([0, 5, 9]), lm_head)
    assert torch.equal(chimera.heads[0].weight, torch.cat([lm_head[[0, 5, 9]]] * 2, dim=1))


# -- decoding --
@pytest.fixture(scope="module")
def lively():
    return enliven(build_tiny_llama(VOCAB, hidden_size=HIDDEN, layers=3), seed=2)


def _corpus(model, count=6, length=40):
    """The target's greedy continuations of `count` random prompts, as one batch, and the prompts."""
    prompts = [torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(s)) for s in range(count)]
    rows = [torch.cat([p, torch.tensor([plain_generate(model, p, length, eos_token_ids=NO_EOS).tokens])], dim=1) for p in prompts]
    return prompts, torch.cat(rows)


def _vocabulary(batch):
    """The DRAFT_VOCAB most frequent tokens of `batch` (ties by id), ascending: as training would choose them."""
    counts = torch.bincount(batch.flatten(), minlength=VOCAB).float() - torch.arange(VOCAB) * 1e-6
    return counts.topk(DRAFT_VOCAB).indices.sort().values


def _drafts(model):
    """A reduced-vocabulary Medusa, Chimera and EAGLE-1 draft, each fitted to the target's greedy text."""
    _, batch = _corpus(model)
    shape, head = LayerShape.from_target_config(model.config), model.lm_head.weight
    drafts = {
        "medusa": MedusaHeads(MedusaConfig(hidden_size=HIDDEN, vocab_size=VOCAB, num_heads=3, draft_vocab_size=DRAFT_VOCAB)),
        "chimera": ChimeraDrafter(ChimeraConfig(HIDDEN, VOCAB, num_heads=3, draft_vocab_size=DRAFT_VOCAB, layer=shape)),
        "eagle1": Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, draft_vocab_size=DRAFT_VOCAB, layer=shape)),
    }
    with torch.no_grad():
        final = target_states(model, batch)[0]
    mask, embed = torch.ones_like(batch), model.get_input_embeddings().weight
    for kind, draft in drafts.items():
        torch.manual_seed(0)
        draft.set_vocab(_vocabulary(batch), head)
        optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=3e-3)
        for _ in range(120):
            optimizer.zero_grad()
            if kind == "medusa":
                loss = medusa_head_losses(draft, final, batch, mask, head, with_accuracy=False).loss
            elif kind == "chimera":
                loss = chimera_losses(draft, final, batch, mask, embed, head, with_accuracy=False).loss
            else:
                loss = eagle_losses(draft, final, final, batch, mask, embed, head, steps=2, with_accuracy=False).loss
            loss.backward()
            optimizer.step()
        draft.eval()
    return drafts


@pytest.fixture(scope="module")
def fitted(lively):
    return _drafts(lively)


LAYOUTS = [
    ("medusa", DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)])),
    ("chimera", DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)])),
    ("eagle1", EagleOptions(depth=4)),
    ("eagle1", EagleOptions(depth=4, top_k=3, total_tokens=10)),
]


@pytest.mark.parametrize("kind,layout", LAYOUTS, ids=["medusa-tree", "chimera-tree", "eagle1-chain", "eagle1-tree"])
def test_reduced_vocabulary_drafts_decode_exactly_like_plain_greedy(lively, fitted, kind, layout):
    prompts, _ = _corpus(lively)
    generator = SpeculativeGenerator.from_draft(lively, fitted[kind], layout)
    generator.eos = set(NO_EOS)
    vocabulary = set(fitted[kind].draft_ids().tolist())
    for prompt in (prompts[0], prompts[1], torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(99))):
        for max_new in (1, 40):
            assert generator.generate(prompt, max_new).tokens == plain_generate(lively, prompt, max_new, eos_token_ids=NO_EOS).tokens
    out = generator.generate(prompts[0], 40)
    assert out.mean_accepted_tokens > 1.3, f"{kind} drafts were hardly accepted (tau {out.mean_accepted_tokens:.2f})"
    # Every proposed token is a draft-vocabulary token, given as a target id.
    proposer = generator.proposer
    proposer.reset(prompts[1])
    with torch.no_grad():
        hidden, features = target_states(lively, prompts[1][:, :-1])
        proposal = proposer.propose(Committed(hidden[0], features[0], prompts[1][0, 1:]))
    assert set(torch.as_tensor(proposal.tokens).tolist()) <= vocabulary


@pytest.mark.parametrize("kind", ["medusa", "eagle1"])
def test_draft_distributions_cover_the_target_vocabulary_and_only_draft_tokens(lively, fitted, kind):
    layout = DraftTree.chain(3) if kind == "medusa" else EagleOptions(depth=3)
    proposer = SpeculativeGenerator.from_draft(lively, fitted[kind], layout).proposer
    proposer.keep_distributions = True
    prompt = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(5))
    proposer.reset(prompt)
    with torch.no_grad():
        hidden, features = target_states(lively, prompt[:, :-1])
        proposal = proposer.propose(Committed(hidden[0], features[0], prompt[0, 1:]))
    dists = proposal.draft_dists
    outside = ~fitted[kind].t2d
    assert dists.shape == (4, VOCAB) and float(dists[:, outside].abs().sum()) == 0.0
    assert torch.allclose(dists[:3].sum(-1), torch.ones(3)) and float(dists[3].sum()) == 0.0


# -- save / load and export --
def test_reduced_drafts_save_and_load_with_their_vocabulary(tmp_path, fitted, lively):
    hidden = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(0))
    for kind, draft in fitted.items():
        state = draft.state_dict()
        assert state["d2t"].shape == (DRAFT_VOCAB,) and state["t2d"].shape == (VOCAB,) and int(state["t2d"].sum()) == DRAFT_VOCAB
        assert not any(k.startswith(("lm_heads", "heads")) for k in state)  # shared lm_head: only the maps are stored
        back = load_draft(draft.save_pretrained(tmp_path / kind))
        assert json.loads((tmp_path / kind / "config.json").read_text())["draft_vocab_size"] == DRAFT_VOCAB
        assert torch.equal(back.draft_ids(), draft.draft_ids())
        if kind == "medusa":
            assert torch.equal(back(hidden, lively.lm_head.weight), draft(hidden, lively.lm_head.weight))
        else:
            logits = draft.logits(hidden, lively.lm_head.weight) if kind == "eagle1" else draft.head_logits(0, hidden, hidden, lively.lm_head.weight)
            again = back.logits(hidden, lively.lm_head.weight) if kind == "eagle1" else back.head_logits(0, hidden, hidden, lively.lm_head.weight)
            assert logits.shape[-1] == DRAFT_VOCAB and torch.equal(logits, again)


def _medusa(share: bool):
    heads = randomise(MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=30, num_heads=2, share_lm_head=share, draft_vocab_size=6)), 0, 0.3)
    heads.set_vocab(torch.tensor([0, 2, 3, 11, 17, 29]))
    return heads


@pytest.mark.parametrize("share", [True, False])
def test_vllm_export_holds_the_truncated_vocabulary_and_reads_back(tmp_path, share):
    heads, lm_head = _medusa(share), torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    export_medusa(heads, tmp_path, "vllm", lm_head_weight=lm_head)
    config, tensors = json.loads((tmp_path / "config.json").read_text()), load_file(tmp_path / "model.safetensors")
    assert config["vocab_size"] == 30 and config["truncated_vocab_size"] == 6
    assert tensors["token_map"].tolist() == [0, 2, 3, 11, 17, 29] and tensors["lm_heads.1.weight"].shape == (6, 8)
    assert "d2t" not in tensors and "t2d" not in tensors
    assert describe_draft(config, get_format("vllm"))[1] == "2 heads of 1 ResBlock(s), 6-token draft vocabulary"
    back = load_medusa_export(tmp_path)
    hidden = torch.randn(5, 8)
    assert torch.equal(back.draft_ids(), heads.draft_ids()) and torch.allclose(back(hidden), heads(hidden, lm_head))


def test_medusa_and_tensorrt_llm_exports_scatter_the_rows_back(tmp_path):
    heads, lm_head = _medusa(False), torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    ids = heads.draft_ids()
    export_medusa(heads, tmp_path / "medusa", "medusa", lm_head_weight=lm_head)
    tensors = load_file(tmp_path / "medusa" / "medusa_lm_head.safetensors")
    projection = tensors["0.1.weight"]
    assert projection.shape == (30, 8) and torch.equal(projection[ids], heads.lm_heads[0].weight.detach())
    assert torch.allclose(projection[5], heads.lm_heads[0].weight.detach().mean(0)) and tensors["token_map"].tolist() == ids.tolist()
    assert json.loads((tmp_path / "medusa" / "config.json").read_text())["truncated_vocab_size"] == 6
    hidden = torch.randn(200, 8, generator=torch.Generator().manual_seed(2))
    full = hidden @ projection.T  # what a full-vocabulary engine computes after the ResBlocks
    assert set(full.argmax(-1).tolist()) <= set(ids.tolist())
    back = load_medusa_export(tmp_path / "medusa")
    assert back.reduced_vocab and torch.allclose(back(hidden), heads(hidden))
    target = build_tiny_llama(30, hidden_size=8, layers=1)
    export_medusa(heads, tmp_path / "trt", "tensorrt_llm", lm_head_weight=lm_head, target_model=target)
    rank0 = load_file(tmp_path / "trt" / "rank0.safetensors")
    assert rank0["medusa_heads.1.lm_head.weight"].shape == (30, 8) and "token_map" not in rank0
    assert torch.equal(rank0["medusa_heads.1.lm_head.weight"][ids], heads.lm_heads[1].weight.detach())


def test_full_vocabulary_exports_are_unchanged(tmp_path):
    heads = randomise(MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=30, num_heads=2, share_lm_head=False)), 0, 0.3)
    export_medusa(heads, tmp_path / "vllm", "vllm")
    export_medusa(heads, tmp_path / "medusa", "medusa")
    assert json.loads((tmp_path / "vllm" / "config.json").read_text())["truncated_vocab_size"] == 30
    assert "truncated_vocab_size" not in json.loads((tmp_path / "medusa" / "config.json").read_text())
    assert "token_map" not in load_file(tmp_path / "vllm" / "model.safetensors") and not load_medusa_export(tmp_path / "vllm").reduced_vocab


def test_eagle1_layout_drops_the_vocabulary_and_warns(tmp_path, fitted):
    draft = fitted["eagle1"]
    with pytest.warns(UserWarning, match="may propose tokens outside its 96-token draft vocabulary"):
        export_eagle(draft, tmp_path, "eagle", max_position_embeddings=512)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "d2t" not in tensors and "t2d" not in tensors and torch.equal(tensors["fc.weight"], draft.fc.weight)
    back = load_eagle_export(tmp_path)
    assert not back.reduced_vocab and torch.equal(back.fc.weight, draft.fc.weight)


# -- recipes --
def test_recipes_ship_the_reduced_vocabulary_and_the_keys_are_checked():
    assert load_recipe("medusa1").medusa.draft_vocab_size == 8192 and load_recipe("chimera").chimera.draft_vocab_size == 8192
    medusa2 = load_recipe("medusa2")  # its step within 1.5 target forwards (bench/train_objectives.json)
    assert medusa2.medusa.draft_vocab_size == 8192 and medusa2.medusa2.lora_layers == 2 and medusa2.medusa2.kl_top_k == 32
    assert load_recipe("eagle1").eagle1.draft_vocab_size == 8192 and load_recipe("medusa1", {"medusa.draft_vocab_size": "null"}).medusa.draft_vocab_size is None
    for method, key in (("medusa1", "medusa.draft_vocab_size"), ("chimera", "chimera.draft_vocab_size")):
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            load_recipe(method, {key: "-1"})
    with pytest.raises(RecipeError, match="data.features=offline"):
        load_recipe("medusa2", {"data.features": "offline"})


def test_medusa1_trains_offline_like_online_with_a_reduced_vocabulary(tmp_path, tiny_target_dir, prompts_file):
    from specdec.train.pipeline import run
    from specdec.train.prepare import main as prepare_main

    values = overrides(tmp_path, tiny_target_dir, prompts_file, "medusa1", **{"medusa.draft_vocab_size": 16})
    online = run(load_recipe("medusa1", values))
    assert prepare_main(["recipe=medusa1", *_args(values)]) == 0
    offline = run(load_recipe("medusa1", {**values, "data.features": "offline", "output_dir": str(tmp_path / "offline")}))
    curve = _loss_curve(tmp_path / "run")
    assert len(curve) == 6 and _loss_curve(tmp_path / "offline") == pytest.approx(curve, rel=1e-4)
    a, b = load_draft(online.draft_dir), load_draft(offline.draft_dir)
    assert a.num_draft_tokens == 16 and torch.equal(a.draft_ids(), b.draft_ids())
    assert set(a.state_dict()) == {"d2t", "t2d", *(f"blocks.{h}.0.linear.{p}" for h in range(a.config.num_heads) for p in ("weight", "bias"))}
