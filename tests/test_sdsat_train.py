"""SDSAT training: the side-branch block against from-scratch forwards, anchor and span sampling,
the losses on hand-made cases, and a tiny end-to-end run whose export is a plain transformers
folder with the SA tokens, whose stage 1 leaves every standard output unchanged, and whose
validation reports the standard-token guards."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import build_tiny_llama, enliven
from specdec.models.base import load_draft
from specdec.models.sdsat import SA_TOKEN_FORMAT, SdsatDraft
from specdec.train.config import RecipeError, load_recipe
from specdec.train.losses import RANKS
from specdec.train.pipeline import export_checkpoint, run
from specdec.train.losses import greedy_agreement, standard_kl
from specdec.train.sdsat_losses import IGNORE, TunedRows, sample_anchors, side_branch, slot_losses, span_lengths, standard_ce, standard_positions
from test_train import prompts_file, tiny_overrides  # noqa: F401 (prompts_file is a fixture)

K = 3


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 12))
    attention = torch.ones(2, 12, dtype=torch.long)
    attention[1, 9:] = 0  # row 1 is right-padded
    loss_mask = torch.zeros(2, 12, dtype=torch.long)
    loss_mask[:, 4:] = 1
    loss_mask[1, 9:] = 0
    return ids, attention, loss_mask


def test_side_branch_standard_states_are_the_plain_models_and_slots_equal_a_fresh_forward():
    model = enliven(build_tiny_llama(330), seed=1)
    ids, attention, loss_mask = _batch()
    sa = torch.tensor([320, 321, 322])
    anchors = sample_anchors(loss_mask, 3, seed=0)
    branch = side_branch(ids, attention, loss_mask, anchors, sa, span_lengths(anchors, K, None, 0), torch.float32)
    with torch.no_grad():
        out = model.model(input_ids=branch.input_ids, attention_mask=branch.attention_mask, position_ids=branch.position_ids).last_hidden_state
        plain = model.model(input_ids=ids, attention_mask=attention).last_hidden_state
        # Step 1: standard tokens never see an SA slot: their states are the plain forward's.
        torch.testing.assert_close(out[0, :12], plain[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1, :9], plain[1, :9], atol=1e-5, rtol=0)
        # Step 2: the slots of anchor i are the forward of x_0..x_i followed by the SA tokens.
        for b in range(2):
            for a, i in enumerate(anchors[b].tolist()):
                fresh = model.model(input_ids=torch.cat([ids[b, : i + 1], sa])[None]).last_hidden_state[0, i + 1 :]
                torch.testing.assert_close(out[b, 12 + a * K : 12 + (a + 1) * K], fresh, atol=1e-5, rtol=0)
    # Step 3: slot m (0-based) of anchor i is labelled x_{i+m+2} where that is an assistant token.
    for b in range(2):
        for a, i in enumerate(anchors[b].tolist()):
            for m in range(K):
                label = int(branch.labels[b, a * K + m])
                j = i + m + 2
                expected = int(ids[b, j]) if j < 12 and loss_mask[b, j] else IGNORE
                assert label == expected


def test_anchors_are_distinct_candidates_fixed_by_the_batch_and_padded_with_minus_one():
    _, _, loss_mask = _batch()
    anchors = sample_anchors(loss_mask, 4, seed=7)
    assert torch.equal(anchors, sample_anchors(loss_mask.clone(), 4, seed=7))
    for b in range(2):
        row = [a for a in anchors[b].tolist() if a >= 0]
        assert row == sorted(set(row)) and all(loss_mask[b, a + 2] for a in row)
    # An anchor is an assistant token with one two places on: row 1 has 3 (4..6), row 0 has 6 (4..9).
    every = sample_anchors(loss_mask, 0, seed=0)
    assert every.shape == (2, 6) and every[1].tolist() == [4, 5, 6, -1, -1, -1]
    assert every[0].tolist() == list(range(4, 10))
    assert sample_anchors(loss_mask, 50, seed=0).shape == (2, 12)  # more than the row holds: capped at its length


def test_poisson_spans_stay_within_one_and_k_and_cut_the_labels():
    ids, attention, loss_mask = _batch()
    anchors = sample_anchors(loss_mask, 0, seed=0)
    spans = span_lengths(anchors, K, 1.0, seed=3)
    assert spans.min() >= 1 and spans.max() <= K and len(set(spans.flatten().tolist())) > 1
    branch = side_branch(ids, attention, loss_mask, anchors, torch.tensor([1, 2, 3]), spans, torch.float32)
    labels = branch.labels.reshape(2, -1, K)
    slot = torch.arange(K)
    assert ((labels != IGNORE) <= (slot < spans[:, :, None])).all()


def test_spans_and_label_counts_follow_the_batch(tmp_path, tiny_target_dir, prompts_file):
    """Poisson spans differ between batches; the per-slot label counts DDP divides by are the loss's own counts."""
    from specdec.train.methods import method_class

    cfg = _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.span": "poisson", "sdsat.poisson_lambda": 1.5})
    method = method_class("sdsat")(cfg)
    method.sa_ids = [320, 321, 322]
    ids, attention, loss_mask = _batch()
    other = loss_mask.clone()
    other[0, 3] = 1
    spans = [method._branch(ids, attention, m, torch.float32).labels for m in (loss_mask, other)]
    assert not torch.equal(spans[0] != IGNORE, spans[1] != IGNORE)
    branch = method._branch(ids, attention, loss_mask, torch.float32)
    out = slot_losses(torch.randn(2, branch.labels.shape[1], 330), branch.labels, branch.slots, lambda h: h, K)
    counts = method.label_counts(loss_mask)
    assert counts[:K].tolist() == out.count.tolist() and counts[K] == standard_positions(loss_mask).sum()


def test_slot_losses_on_a_hand_made_case():
    # Two trained entries of slot 0 and one of slot 1; the lm_head is the identity over 4 tokens.
    hidden = torch.tensor([[[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1, 3, IGNORE]])
    slots = torch.tensor([0, 1, 0, 1])
    out = slot_losses(hidden, labels, slots, lambda h: h, 2, decay=0.5)
    ce = lambda row, y: -torch.log_softmax(torch.tensor(row), -1)[y]  # noqa: E731
    slot0 = (ce([2.0, 0, 0, 0], 0) + ce([0, 0, 3.0, 0], 3)) / 2
    slot1 = ce([0, 1.0, 0, 0], 1)
    assert out.loss == pytest.approx(float(slot0 + 0.5 * slot1), rel=1e-5)
    assert out.count.tolist() == [2, 1]
    assert out.rank_hits.shape == (2, RANKS) and out.rank_hits[0, 0] == 1 and out.rank_hits[1, 0] == 1
    # Data-parallel denominators replace the local counts.
    assert slot_losses(hidden, labels, slots, lambda h: h, 2, decay=0.5, denominators=torch.tensor([4.0, 1.0])).loss == pytest.approx(float(slot0 / 2 + 0.5 * slot1), rel=1e-5)


def test_standard_terms_and_agreement_on_hand_made_logits():
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]])
    assert standard_kl(a, a) == pytest.approx(0.0, abs=1e-7)
    p, q = torch.softmax(a[0], -1), torch.softmax(b[0], -1)
    assert standard_kl(a, b) == pytest.approx(float((p * (p / q).log()).sum()) / 2, rel=1e-5)
    assert greedy_agreement(a, b) == pytest.approx(0.5)
    assert standard_ce(b, torch.tensor([1, 1])) == pytest.approx(float(-torch.log_softmax(b, -1)[[0, 1], [1, 1]].mean()), rel=1e-5)
    mask = torch.tensor([[0, 0, 1, 1]])
    assert standard_positions(mask).tolist() == [[False, True, True, False]]


def test_tuned_rows_equal_peft_trainable_tokens_in_values_and_gradients():
    """TunedRows (rows and logits without materialising the replaced matrix) against peft's own wrapper forward."""
    from peft import LoraConfig, get_peft_model

    from specdec.train.sdsat_method import input_rows, output_rows

    target = get_peft_model(enliven(build_tiny_llama(320), seed=2), LoraConfig(r=2, target_modules="all-linear", trainable_token_indices=[300, 305], task_type="CAUSAL_LM"))
    head = target.get_output_embeddings()
    adapter = head.token_adapter
    with torch.no_grad():
        adapter.trainable_tokens_delta["default"].normal_(0, 1.0)  # the SA rows differ from the base rows
    rows = output_rows(target)
    hidden, ids = torch.randn(6, 32), torch.tensor([305, 3, 300, 300, 17])
    expected = head(hidden)
    assert torch.allclose(rows.logits(hidden), expected, atol=1e-5)
    assert torch.allclose(rows.logits(hidden, ids), expected[:, ids], atol=1e-5)
    assert torch.allclose(input_rows(target).rows(ids[None]), target.get_input_embeddings()(ids[None]), atol=1e-6)
    # The backward reaches the SA rows alone, with peft's gradient.
    weights = torch.randn(6, 5)
    (expected[:, ids] * weights).sum().backward()
    reference = adapter.trainable_tokens_delta["default"].grad.clone()
    target.zero_grad()
    (rows.logits(hidden, ids) * weights).sum().backward()
    assert torch.allclose(adapter.trainable_tokens_delta["default"].grad, reference, atol=1e-5) and reference.abs().sum() > 0
    plain = TunedRows(torch.eye(3))
    assert torch.equal(plain.logits(torch.eye(3)), torch.eye(3)) and torch.equal(plain.rows(torch.tensor([2])), torch.eye(3)[[2]])


def test_top_k_kl_keeps_the_sa_tokens_in_its_support_and_trains_the_split_step(tmp_path, tiny_target_dir, prompts_file):
    """sdsat.kl_top_k: the support is the original's top k at the standard positions plus the SA ids; the KL is the
    renormalised one over it (checked by hand), smaller than the full KL, and the step still trains the adapters and SA rows."""
    from types import SimpleNamespace

    from specdec.train.methods import method_class

    method = method_class("sdsat")(_sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.lora_layers": 1, "sdsat.kl_top_k": 2}))
    method.build_draft({"vocab_size": 320, "hidden_size": 32, "tokenizer_size": 310}, None)
    target = method.prepare_target(enliven(build_tiny_llama(320, layers=3), seed=1))
    for name, param in target.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.3)
    ids, attention, loss_mask = _batch()
    module = SimpleNamespace(target=target, global_step=10)
    batch = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}
    branch, hidden, bottom = method._forward(module, batch, grad=True)
    states, rows, tuned_hidden = method._standard_states(module, batch, hidden, bottom)
    original = rows.logits(states)
    support = sorted(set(original.topk(2, dim=-1).indices.reshape(-1).tolist()) | set(method.sa_ids))
    assert set(method.sa_ids) == {310, 311, 312}
    tuned = target.get_output_embeddings()(tuned_hidden)
    p, q = torch.log_softmax(original[:, support], -1), torch.log_softmax(tuned[:, support], -1)
    expected = float((p.exp() * (p - q)).sum().detach() / original.shape[0])
    kl = method._standard_kl(module, batch, hidden, bottom, None)
    assert kl.item() == pytest.approx(expected, rel=1e-4)
    # The KL term alone trains the top layer's adapters and the SA rows (they are in its support).
    kl.backward()
    trained = {n: p.grad for n, p in target.named_parameters() if p.requires_grad and ("lora_A" in n or "trainable_tokens" in n)}
    assert len(trained) > 1 and any("trainable_tokens" in n for n in trained)
    assert all(g is not None and g.abs().sum() > 0 for g in trained.values())


def _sdsat(tmp_path, target_dir, prompts, **extra):
    overrides = {"sdsat.num_sa_tokens": K, "sdsat.lora_r": 4, "sdsat.anchors_per_sequence": 8, "sdsat.sa_only_steps": 2, "optim.lr": 0.01, **extra}
    return load_recipe("sdsat", tiny_overrides(tmp_path, target_dir, prompts, **overrides))


def test_training_exports_a_transformers_folder_with_the_sa_tokens_and_reports_the_guards(tmp_path, tiny_target_dir, prompts_file):
    cfg = _sdsat(tmp_path, tiny_target_dir, prompts_file)
    result = run(cfg)
    draft_dir = result.draft_dir
    config = json.loads((draft_dir / "config.json").read_text())
    # Step 1: the draft records k, the new ids past the tokenizer's 320, and the tuned target's folder.
    assert config["draft_type"] == "sdsat" and config["sa_token_ids"] == [320, 321, 322] and config["vocab_size"] == 323
    assert config["target"]["finetuned_weights"] == "target" and isinstance(load_draft(draft_dir), SdsatDraft)
    # Step 2: the guards are validation metrics, in config.json and on the model card.
    metrics = config["metrics"]
    assert 0.0 <= metrics["val/standard_kl"] < 1.0 and 0.0 <= metrics["val/greedy_agreement"] <= 1.0
    assert {"val/head1_top1", "val/expected_accept_length"} <= set(metrics)
    card = (draft_dir / "README.md").read_text()
    assert "val/standard_kl" in card and "val/greedy_agreement" in card and "SDSAT" in card
    # Step 3: transformers alone loads the tuned target: SA tokens in the tokenizer at those ids, k in its config.
    tuned = AutoModelForCausalLM.from_pretrained(draft_dir / "target")
    tokenizer = AutoTokenizer.from_pretrained(draft_dir / "target")
    assert [tokenizer.convert_tokens_to_ids(SA_TOKEN_FORMAT.format(j)) for j in range(K)] == [320, 321, 322]
    assert tuned.config.sdsat == {"num_sa_tokens": K, "sa_token_ids": [320, 321, 322]}
    assert tuned.get_input_embeddings().weight.shape[0] == 323 and not any("lora" in n for n, _ in tuned.named_parameters())
    # Step 4: the last checkpoint (LoRA and SA rows only) consolidates into the same tuned target.
    again = export_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "again")
    rebuilt = AutoModelForCausalLM.from_pretrained(again / "target").state_dict()
    assert all(torch.equal(rebuilt[name], tensor) for name, tensor in tuned.state_dict().items())
    assert json.loads((again / "config.json").read_text())["sa_token_ids"] == [320, 321, 322]


def test_stage_one_moves_only_the_sa_rows(tmp_path, tiny_target_dir, prompts_file):
    """After sa_only_steps the merged target equals the original except the SA tokens' embedding rows."""
    cfg = _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"trainer.max_steps": 2, "sdsat.sa_only_steps": 2, "trainer.val_every_n_steps": 2})
    result = run(cfg)
    original = AutoModelForCausalLM.from_pretrained(tiny_target_dir).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(result.draft_dir / "target").state_dict()
    for name, tensor in original.items():
        if "embed_tokens" in name or "lm_head" in name:
            assert torch.equal(tuned[name][:320], tensor), name
            assert not torch.equal(tuned[name][320:], tuned[name][:320].mean(0).expand(3, -1)), "the SA rows did not train"
        else:
            assert torch.equal(tuned[name], tensor), name
    assert result.metrics["val/greedy_agreement"] == 1.0


@pytest.mark.parametrize("extra", [{"sdsat.standard_loss": "ce"}, {"sdsat.finetune": "full", "sdsat.sa_only_steps": 0}], ids=["ce", "full"])
def test_the_lm_loss_and_the_full_fine_tune_train_and_export(tmp_path, tiny_target_dir, prompts_file, extra):
    result = run(_sdsat(tmp_path, tiny_target_dir, prompts_file, **{"trainer.max_steps": 3, "trainer.val_every_n_steps": 3, "optim.lr": 0.001, **extra}))
    assert result.metrics["val/standard_kl"] > 0 and 0.5 < result.metrics["val/greedy_agreement"] <= 1
    tuned = AutoModelForCausalLM.from_pretrained(result.draft_dir / "target")
    assert tuned.config.sdsat["sa_token_ids"] == [320, 321, 322]


def test_one_repeated_existing_token_and_recipe_errors(tmp_path, tiny_target_dir, prompts_file):
    cfg = _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.distinct_tokens": "false", "sdsat.token_id": 5, "trainer.max_steps": 2, "trainer.val_every_n_steps": 2})
    config = json.loads((run(cfg).draft_dir / "config.json").read_text())
    assert config["sa_token_ids"] == [5] * K and config["vocab_size"] == 320
    with pytest.raises(RecipeError, match="distinct_tokens=false"):
        _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.token_id": 5})
    with pytest.raises(RecipeError, match="sa_only_steps=0"):
        _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.finetune": "full"})
    with pytest.raises(RecipeError, match="1..15"):
        _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.num_sa_tokens": 16})
    with pytest.raises(RecipeError, match="Did you mean"):
        _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.num_sa_token": 4})
    with pytest.raises(RecipeError, match="sdsat.kl_top_k=0 or sdsat.standard_loss=kl"):
        _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.kl_top_k": 8, "sdsat.standard_loss": "ce"})
    for strategy in ("fsdp", "deepspeed_stage_3"):
        with pytest.raises(RecipeError, match="shards the target's weights"):
            _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"trainer.strategy": strategy})
    from specdec.train.methods import method_class

    method = method_class("sdsat")(_sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.lora_target_modules": "q_proj,lm_head"}))
    method.build_draft({"vocab_size": 320, "hidden_size": 32, "tokenizer_size": 310}, None)
    with pytest.raises(RecipeError, match="names the output head `lm_head`"):
        method.prepare_target(build_tiny_llama(320))


def test_the_exported_draft_decodes_losslessly_from_the_command_line(tmp_path, tiny_target_dir, prompts_file):
    """specdec-eval finds the tuned target in the draft folder and reproduces its plain greedy output."""
    from specdec.eval.cli import main

    draft_dir = run(_sdsat(tmp_path, tiny_target_dir, prompts_file)).draft_dir
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": "c", "turns": [f"Tell me about the sea {i}."]}) + "\n" for i in range(2)))
    out = tmp_path / "eval.json"
    assert main([f"draft={draft_dir}", f"bench={questions}", "max_new_tokens=24", f"out={out}", "tree=chain"]) == 0
    result = json.loads(out.read_text())
    assert result["overall"]["lossless_match"] == 1.0 and result["setting"]["proposer"] == "sdsat"


def test_top_layer_lora_splits_the_step_with_the_loss_and_gradients_of_the_one_block_forward(tmp_path, tiny_target_dir, prompts_file):
    """sdsat.lora_layers=1: standard tokens without gradient below the adapters, the slots in their own pass over the cached
    keys, the original's forward replaying the bottom output: the same loss and gradients as one forward over the whole block."""
    from types import SimpleNamespace

    from conftest import build_tiny_llama, enliven
    from specdec.train.methods import method_class

    method = method_class("sdsat")(_sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.lora_layers": 1}))
    method.build_draft({"vocab_size": 320, "hidden_size": 32, "tokenizer_size": 320}, None)
    target = method.prepare_target(enliven(build_tiny_llama(320, layers=3), seed=1))
    assert {n.split(".layers.")[1].split(".")[0] for n, p in target.named_parameters() if "lora_" in n and p.requires_grad} == {"2"}
    for name, param in target.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.3)  # adapters that change the output
    ids, attention, loss_mask = _batch()
    module = SimpleNamespace(target=target, global_step=10)  # past sdsat.sa_only_steps: the joint stage
    batch = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}
    results = []
    for layers in (1, 0):  # the split step, then the one-block forward with the same adapters
        method.cfg.sdsat.lora_layers = layers
        loss, _ = method.training_loss(module, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in target.named_parameters() if p.requires_grad}))
        target.zero_grad()
    (split_loss, split_grads), (block_loss, block_grads) = results
    assert torch.allclose(split_loss, block_loss, atol=1e-5)
    # Equal up to float summation order (the SA rows' gradients reach about 80 here).
    assert all((split_grads[n] - block_grads[n]).abs().max() <= 1e-5 + 1e-5 * block_grads[n].abs().max() for n in block_grads)
    rows = [g for n, g in split_grads.items() if "trainable_tokens" in n]
    assert rows and all(g.abs().sum() > 0 for g in rows)  # the SA rows learn through every layer
    with pytest.raises(RecipeError, match="sdsat.lora_layers"):
        _sdsat(tmp_path, tiny_target_dir, prompts_file, **{"sdsat.finetune": "full", "sdsat.sa_only_steps": 0, "sdsat.lora_layers": 1})
