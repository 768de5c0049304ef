"""Masked-diffusion targets and their block decoding (issue 13, Learn2PD): bidirectional attention and
the shift, low-confidence remasking's schedule, the oracle replay reproducing its reference, the
filter finishing blocks early, End-of-Text Prediction, and the folders' round trips and errors."""

from __future__ import annotations

import json

import pytest
import torch

from specdec.models.base import DraftMismatchError
from specdec.models.diffusion import DiffusionConfig, DiffusionLM, DiffusionTargetError, load_diffusion_target, save_diffusion_model
from specdec.models.learn2pd import Learn2PDConfig, Learn2PDFilter, load_filter
from specdec.runtime.diffusion import BlockSchedule, LowConfidenceRemasking, OracleReplay, agreement, block_decode, serving_threshold, transfer_counts
from conftest import build_tiny_llama, enliven

VOCAB, MASK, EOS = 64, 63, 2
PROMPT = torch.tensor([5, 9, 12, 7])


@pytest.fixture()
def lm() -> DiffusionLM:
    return DiffusionLM(enliven(build_tiny_llama(VOCAB), seed=3), DiffusionConfig(MASK, shift=True), bidirectional_mask=True)


class Constant:
    """A filter whose probability is the same everywhere."""

    def __init__(self, p: float):
        self.p = p

    def p_final(self, confidences):
        return torch.full_like(confidences, self.p)


def test_attention_is_bidirectional_and_the_shift_aligns_rows(lm):
    x = torch.tensor([[5, 9, 12, 7, MASK, MASK]])
    changed = x.clone()
    changed[0, -1] = 11
    assert not torch.allclose(lm(x)[0, :3], lm(changed)[0, :3]), "an earlier position must see a later token"
    raw = lm.model(input_ids=x, attention_mask=torch.zeros(1, 1, 6, 6)).logits
    assert torch.equal(lm(x)[0, 1:], raw[0, :-1]), "row i holds the prediction made at i - 1"


def test_schedule_checks_and_even_split():
    assert transfer_counts(32, 8) == [4] * 8 and transfer_counts(10, 4) == [3, 3, 2, 2] and sum(transfer_counts(31, 7)) == 31
    with pytest.raises(ValueError, match="multiple of block_length"):
        BlockSchedule(gen_length=40, block_length=32)
    with pytest.raises(ValueError, match="steps_per_block"):
        BlockSchedule(gen_length=32, block_length=8, steps_per_block=9)


def test_low_confidence_remasking_decodes_every_position_on_schedule(lm):
    schedule = BlockSchedule(gen_length=16, block_length=8, steps_per_block=4)
    first = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule), {EOS})
    assert len(first.positions) == 16 and MASK not in first.positions
    assert first.forwards == 8 and first.steps_by_block == [4, 4], "two tokens a step, four steps a block"
    again = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule), {EOS})
    assert again.positions == first.positions, "greedy decoding is deterministic"
    sampled = block_decode(lm, PROMPT, BlockSchedule(16, 8, 4, temperature=1.0), LowConfidenceRemasking(schedule), {EOS}, seed=1)
    assert MASK not in sampled.positions


def test_the_oracle_replay_reproduces_its_reference_and_labels_each_step(lm):
    schedule = BlockSchedule(gen_length=16, block_length=8, steps_per_block=8)
    reference = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule), {EOS})
    oracle = OracleReplay(reference.positions, schedule.block_length)
    replay = block_decode(lm, PROMPT, schedule, oracle, {EOS}, write=oracle.write)
    assert replay.positions == reference.positions and replay.forwards <= reference.forwards
    assert len(oracle.labels) == replay.forwards
    for labels, masked, confidences in zip(oracle.labels, oracle.masked, oracle.confidences):
        assert not bool(labels[~masked].any()), "only masked positions carry a label"
        assert bool((confidences[~masked] == 1.0).all()) and bool(((confidences > 0) & (confidences <= 1)).all())


def test_a_filter_finishes_blocks_early_and_a_silent_one_changes_nothing(lm):
    schedule = BlockSchedule(gen_length=16, block_length=8, steps_per_block=8)
    plain = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule), {EOS})
    silent = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule, Constant(0.0), threshold=0.96), {EOS})
    assert silent.positions == plain.positions and silent.forwards == plain.forwards == 16 and silent.filter_unmasked == 0
    eager = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule, Constant(1.0), threshold=0.96), {EOS})
    assert eager.forwards == 2 and eager.filter_unmasked == 14, "the filter takes every masked position at each block's first step"
    assert 0 <= agreement(eager.tokens, plain.tokens) <= 1 and agreement(plain.tokens, plain.tokens) == 1.0


class EndsEarly(torch.nn.Module):
    """A stand-in diffusion LM that answers 3, 4, 5 and then end-of-text everywhere, each with probability ~1."""

    config = DiffusionConfig(MASK, shift=False)
    device = torch.device("cpu")

    def forward(self, x):
        answer = [3, 4, 5] + [EOS] * (x.shape[1] - len(PROMPT) - 3)
        targets = torch.tensor(PROMPT.tolist() + answer)
        return torch.nn.functional.one_hot(targets, VOCAB)[None].float() * 20


def test_end_of_text_prediction_skips_the_padding_after_the_answer():
    schedule = BlockSchedule(gen_length=32, block_length=8, steps_per_block=8)
    plain = block_decode(EndsEarly(), PROMPT, schedule, LowConfidenceRemasking(schedule), {EOS})
    cut = block_decode(EndsEarly(), PROMPT, schedule, LowConfidenceRemasking(schedule), {EOS}, eotp=True)
    assert plain.tokens == cut.tokens == [3, 4, 5] and cut.positions == plain.positions
    assert plain.forwards == 32 and cut.forwards < 8 and cut.steps_by_block[1:] == [0, 0, 0] and cut.eotp_filled > 20


def test_diffusion_folders_round_trip_and_refuse_what_they_cannot_load(tmp_path, lm, tiny_tokenizer):
    folder = save_diffusion_model(lm.model, tiny_tokenizer, DiffusionConfig(MASK, True, base="tiny"), tmp_path / "mdm")
    loaded, tokenizer = load_diffusion_target(str(folder))
    x = torch.tensor([[5, 9, MASK, MASK]])
    assert torch.allclose(loaded(x), lm(x)) and loaded.config.mask_token_id == MASK and len(tokenizer) == len(tiny_tokenizer)
    (folder / "diffusion.json").write_text("{")
    with pytest.raises(DiffusionTargetError, match="damaged"):
        load_diffusion_target(str(folder))
    remote = tmp_path / "llada"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "llada", "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"}}))
    with pytest.raises(DiffusionTargetError, match="trust_remote_code=true"):
        load_diffusion_target(str(remote))
    causal = tmp_path / "causal"
    build_tiny_llama(VOCAB).save_pretrained(causal)
    with pytest.raises(DiffusionTargetError, match="not a masked-diffusion LM"):
        load_diffusion_target(str(causal))


def test_filter_folder_round_trips(tmp_path):
    torch.manual_seed(0)
    head = Learn2PDFilter(Learn2PDConfig(block_length=8, hidden=16, threshold=0.9))
    head.save_pretrained(tmp_path / "filter")
    loaded = load_filter(tmp_path / "filter")
    x = torch.rand(3, 8)
    assert torch.allclose(loaded.p_final(x), head.p_final(x)) and loaded.config.threshold == 0.9
    assert serving_threshold(loaded) == 0.9 and serving_threshold(loaded, 0.5) == 0.5 and serving_threshold(None, 0.5) is None
    assert LowConfidenceRemasking(BlockSchedule(16, 8, 4), loaded).threshold == 0.9, "the policy serves at the filter's saved threshold"
    assert sum(p.numel() for p in Learn2PDFilter(Learn2PDConfig()).parameters()) < 10_000, "a few thousand parameters"
    with pytest.raises(FileNotFoundError, match="filter=DIR"):
        load_filter(tmp_path / "none")
    with pytest.raises(DraftMismatchError, match="not a Learn2PD filter"):
        Learn2PDFilter.from_pretrained(_acceptance_head(tmp_path))


def _acceptance_head(tmp_path):
    from specdec.models.acceptance_head import AcceptanceHead, AcceptanceHeadConfig

    return AcceptanceHead(AcceptanceHeadConfig()).save_pretrained(tmp_path / "acc")


# --- adapting a causal LM (recipe=diffusion_adapt) ------------------------------------------------


def test_masking_touches_only_answers_and_the_loss_weights_by_ratio():
    from specdec.train.diffusion_adapt import denoising_loss, mask_batch

    ids = torch.arange(12).view(2, 6)
    answer = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
    noisy, masked, t = mask_batch(ids, answer, MASK, 0.001, torch.Generator().manual_seed(0), ratio=1.0)
    assert torch.equal(masked, answer.bool()) and bool((noisy[masked] == MASK).all()) and torch.equal(noisy[~masked], ids[~masked])
    logits = torch.zeros(2, 6, 16)
    full = denoising_loss(logits, ids, masked, t, answer)
    assert full == pytest.approx(torch.log(torch.tensor(16.0)).item(), rel=1e-5), "uniform logits: CE log V on every answer token"
    half = denoising_loss(logits, ids, masked, torch.full((2,), 0.5), answer)
    assert half == pytest.approx(2 * full.item(), rel=1e-5) and denoising_loss(logits, ids, torch.zeros_like(masked), t, answer) == 0


def test_the_recipe_adapts_a_tiny_target_resumes_and_refuses_bad_keys(tmp_path, tiny_target_dir, capsys):
    from specdec.train.cli import main as train_main

    out = tmp_path / "adapt"
    args = ["recipe=diffusion_adapt", f"target.name_or_path={tiny_target_dir}", f"output_dir={out}", "data.max_samples=24", "data.max_length=48", "data.val_size=4",
            "diffusion_adapt.val_every_n_steps=2", "diffusion_adapt.checkpoint_every_n_steps=2", "diffusion_adapt.enable_progress_bar=false", "optim.lr=1e-3"]
    assert train_main([*args, "diffusion_adapt.max_steps=2"]) == 0
    lm, tokenizer = load_diffusion_target(str(out / "model"))
    assert lm.config.mask_token_id == tokenizer.mask_token_id and lm.config.shift and lm.bidirectional_mask
    assert lm.model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    rows = (out / "logs" / "metrics.csv").read_text()
    assert "val/denoising_loss" in rows and "val/masked_top1" in rows
    assert train_main([*args, "diffusion_adapt.max_steps=4", "resume=last"]) == 0
    import csv

    logged = {int(float(row["step"])) for row in csv.DictReader((out / "logs" / "metrics.csv").open()) if row.get("train/loss")}
    assert logged == {0, 1, 2, 3}, "the resumed run continued at step 2 and kept the first run's rows"
    assert "masked-diffusion LM written to" in capsys.readouterr().out
    assert train_main([*args, "diffusion_adapt.max_steps=4"]) == 2 and "pass resume=last to continue" in capsys.readouterr().err
    assert train_main([*args, "diffusion_adapt.max_step=3"]) == 2 and "diffusion_adapt.max_steps" in capsys.readouterr().err
    assert train_main([*args, "diffusion_adapt.min_mask_ratio=1.5"]) == 2 and "within (0, 1)" in capsys.readouterr().err
    assert train_main(["recipe=medusa1", "diffusion_adapt.max_steps=3"]) == 2 and "belongs to method diffusion_adapt" in capsys.readouterr().err


# --- Learn2PD: oracle data, the filter recipe, serving it --------------------------------------------


def test_oracle_data_resumes_the_filter_trains_and_serves(tmp_path, tiny_tokenizer, capsys):
    from specdec.eval.learn2pd_data import main as oracle_main
    from specdec.models.learn2pd_data import read_oracle_data
    from specdec.train.cli import main as train_main

    mask = len(tiny_tokenizer) - 1
    lm = DiffusionLM(enliven(build_tiny_llama(len(tiny_tokenizer)), seed=3), DiffusionConfig(mask, True), bidirectional_mask=True)
    target = save_diffusion_model(lm.model, tiny_tokenizer, lm.config, tmp_path / "mdm")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"Count to {i}, please"}) + "\n" for i in range(4)))
    out = tmp_path / "oracle"
    args = [f"target={target}", f"out={out}", f"prompts={prompts}", "gen_length=16", "block_length=8", "steps_per_block=8", "chunk_size=2", "threads=1", "progress=false"]
    # Step 1: the oracle data, two shards; a rerun finds them done, other settings are refused.
    assert oracle_main(args) == 0
    rows, card = read_oracle_data(out)
    assert card["counts"]["prompts"] == 4 and rows["labels"].shape == rows["confidences"].shape == (card["counts"]["steps"], 8)
    assert card["counts"]["oracle_forwards"] <= card["counts"]["reference_forwards"] == 4 * 16
    assert sorted(rows["prompt_index"].unique().tolist()) == [0, 1, 2, 3] and not bool(rows["labels"][~rows["masked"].bool()].any())
    assert "oracle steps from 4 prompts" in capsys.readouterr().out
    assert oracle_main(args) == 0 and json.loads((out / "oracle_card.json").read_text())["counts"] == card["counts"]
    assert oracle_main([*args[:-4], "steps_per_block=4", *args[-3:]]) == 1 and "other settings (steps_per_block)" in capsys.readouterr().err
    assert oracle_main([*args, "gen_length=12"]) == 2 and "multiple of block_length" in capsys.readouterr().err
    # Step 2: the filter, with its report at the serving threshold.
    run = tmp_path / "run"
    assert train_main(["recipe=learn2pd", f"data.oracle={out}", f"output_dir={run}", "learn2pd.steps=50", "data.val_fraction=0.25"]) == 0
    report = json.loads((run / "learn2pd_report.json").read_text())
    assert report["val_positions"] > 0 and set(report["filter"]) >= {"precision", "false_positive_rate", "recall", "accepted_share"}
    assert "Learn2PD filter written to" in capsys.readouterr().out
    # Step 3: served, it only ever adds unmasks to the schedule's, so a block never takes more steps.
    model = load_filter(run / "filter")
    schedule = BlockSchedule(16, 8, 8)
    plain = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule), {EOS})
    served = block_decode(lm, PROMPT, schedule, LowConfidenceRemasking(schedule, model, threshold=0.5), {EOS})
    assert served.forwards <= plain.forwards and mask not in served.positions
    assert train_main(["recipe=learn2pd"]) == 2 and "`data.oracle` is required" in capsys.readouterr().err
    assert train_main(["recipe=learn2pd", f"data.oracle={out}", "learn2pd.treshold=0.9"]) == 2 and "learn2pd.threshold" in capsys.readouterr().err


def test_specdec_eval_on_a_diffusion_target_reports_every_point(tmp_path, tiny_tokenizer, capsys):
    from specdec.eval.cli import main as eval_main

    mask = len(tiny_tokenizer) - 1
    lm = DiffusionLM(enliven(build_tiny_llama(len(tiny_tokenizer)), seed=3), DiffusionConfig(mask, True), bidirectional_mask=True)
    target = save_diffusion_model(lm.model, tiny_tokenizer, lm.config, tmp_path / "mdm")
    Learn2PDFilter(Learn2PDConfig(block_length=8, hidden=8)).save_pretrained(tmp_path / "filter")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": "c", "turns": [f"Tell me {i} things"]}) + "\n" for i in range(2)))
    out = tmp_path / "result.json"
    args = [f"diffusion={target}", f"bench={questions}", "gen_length=16", "block_length=8", "steps_per_block=8", f"out={out}", "threads=1", "progress=false"]
    assert eval_main([*args, f"filter={tmp_path / 'filter'}", "filter_threshold=0.5"]) == 0
    result = json.loads(out.read_text())
    assert list(result["points"]) == ["plain", "eotp", "filter", "filter+eotp"] and result["setting"]["num_questions"] == 2
    plain = result["points"]["plain"]
    assert plain["forwards"] == 16 and plain["agreement"] == 1.0 and plain["identical"] == 1.0
    assert all(p["forwards"] <= 16 for p in result["points"].values()) and "may change the answer" in capsys.readouterr().out
    assert eval_main([*args, "filter_threshold=0.5"]) == 2 and "only with filter=DIR" in capsys.readouterr().err
    assert eval_main([*args, "block_length=6"]) == 2 and "multiple of block_length" in capsys.readouterr().err
    assert eval_main([*args, f"filter={tmp_path / 'filter'}", "block_length=16"]) == 1 and "blocks of 8 positions" in capsys.readouterr().err


def test_specdec_generate_streams_a_diffusion_answer_and_labels_what_may_change_it(tmp_path, tiny_tokenizer, capsys):
    from specdec.runtime.cli import main as generate_main
    from specdec.runtime.diffusion import end_of_text_ids

    mask = len(tiny_tokenizer) - 1
    lm = DiffusionLM(enliven(build_tiny_llama(len(tiny_tokenizer)), seed=3), DiffusionConfig(mask, True), bidirectional_mask=True)
    target = save_diffusion_model(lm.model, tiny_tokenizer, lm.config, tmp_path / "mdm")
    Learn2PDFilter(Learn2PDConfig(block_length=8, hidden=8)).save_pretrained(tmp_path / "filter")
    args = [f"diffusion={target}", "prompt=Tell me three things", "gen_length=16", "block_length=8", "steps_per_block=8", "threads=1"]
    # Step 1: plain remasking: the streamed text is the decode's answer, every block on schedule.
    assert generate_main(args) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.err.strip().splitlines()[-1])
    ids = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Tell me three things"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"][0]
    schedule = BlockSchedule(16, 8, 8)
    reference = block_decode(lm, ids, schedule, LowConfidenceRemasking(schedule), end_of_text_ids(tiny_tokenizer))
    assert captured.out.rstrip("\n") == tiny_tokenizer.decode(reference.tokens, skip_special_tokens=True)
    assert stats["forwards"] == 16 and stats["steps_by_block"] == [8, 8] and stats["decoding"].endswith("(the model's own decode)")
    # Step 2: with the filter and EoTP the cost line says the answer may differ.
    assert generate_main([*args, f"filter={tmp_path / 'filter'}", "filter_threshold=0.5", "eotp=true"]) == 0
    stats = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert stats["forwards"] <= 16 and "may differ from plain remasking's answer" in stats["decoding"]
    # Step 3: bad input is refused with the fix.
    assert generate_main([*args, "block_length=6"]) == 2 and "multiple of block_length" in capsys.readouterr().err
    assert generate_main([*args, f"filter={tmp_path / 'filter'}", "block_length=16", "steps_per_block=16"]) == 1 and "pass block_length=8" in capsys.readouterr().err
    assert generate_main([f"diffusion={target}"]) == 2 and "prompt= are required" in capsys.readouterr().err
    assert generate_main([*args, "eotp=maybe"]) == 2


def test_end_of_text_ids_never_take_the_unknown_token():
    from types import SimpleNamespace

    from specdec.runtime.diffusion import end_of_text_ids

    plain = SimpleNamespace(eos_token_id=2, get_vocab=lambda: {"</s>": 2, "<unk>": 0})
    chat = SimpleNamespace(eos_token_id=2, get_vocab=lambda: {"</s>": 2, "<unk>": 0, "<|im_end|>": 7})
    assert end_of_text_ids(plain) == {2} and end_of_text_ids(chat) == {2, 7}
