"""AutoJudge label mining: teacher-forced draft predictions, the reference-lookup proposer, the
outcome checkers, the miner (features, substitutions, the low_prob rule, resuming, the cache key)
and the specdec-judge-data CLI, on tiny random targets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_llama, enliven, randomise
from specdec.eval import judge_data as jd
from specdec.eval.benchmark import prompt_ids
from specdec.eval.checkers import CheckerError, CodeChecker, GeneralChecker, MathChecker, build_checker
from specdec.models.base import final_hidden_states, target_states
from specdec.models.decoder import LayerShape, causal_mask
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter
from specdec.models.chimera import ChimeraConfig, ChimeraDrafter
from specdec.models.judge_data import DATA_CARD, LABEL_FIELDS, read_judge_data, read_shard, shard_path, shard_prompts
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.models.sdsat import SdsatConfig, SdsatDraft
from specdec.runtime.eagle_proposer import EagleOptions
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.lookup import ReferenceLookupProposer
from specdec.runtime.teacher import UnsupportedDraftError, first_mismatch, teacher_predictions, teacher_proposer
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import GreedyVerifier, Verifier

VOCAB, HIDDEN = 320, 32
NO_EOS = [10**9]
TEXTS = ["Write a short poem about the sea.", "Numbers: 0 1 2 3"]
MAX_NEW = 24


@pytest.fixture(scope="module")
def lively():
    """A tiny target whose greedy answers vary (large random weights)."""
    return enliven(build_tiny_llama(VOCAB, hidden_size=HIDDEN), std=0.3)


def _medusa(seed=0):
    return randomise(MedusaHeads(MedusaConfig(hidden_size=HIDDEN, vocab_size=VOCAB, num_heads=2)), seed, 0.05)


def _drafts(model) -> dict:
    """One random draft of every teacher-forceable type."""
    shape = LayerShape.from_target_config(model.config)
    e3 = Eagle3Drafter(Eagle3Config(HIDDEN, VOCAB, 96, [1, 2], layer=shape))
    e3.set_vocab(torch.arange(0, VOCAB, 3)[:96], model.lm_head.weight)
    return {
        "medusa": _medusa(),
        "eagle1": randomise(Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, layer=shape)), 0, 0.2),
        "eagle3": randomise(e3, 1, 0.3),
        "chimera": randomise(ChimeraDrafter(ChimeraConfig(HIDDEN, VOCAB, num_heads=2, layer=shape)), 2, 0.2),
    }


def _sequence(model, tokenizer, text, max_new=MAX_NEW) -> tuple[torch.Tensor, int]:
    """(prompt + the target's greedy answer as one id tensor [T], the prompt length)."""
    prompt = prompt_ids(tokenizer, {"turns": [text]})
    answer = plain_generate(model, prompt, max_new, eos_token_ids=NO_EOS).tokens
    return torch.cat([prompt[0], torch.tensor(answer)]), prompt.shape[1]


# --- teacher forcing -------------------------------------------------------------------------


def test_medusa_predictions_are_head_one_on_the_state_two_positions_back(lively, tiny_tokenizer):
    # ids[j] is drafted after the decode loop committed ids[:j]: the root is ids[j-1], the last
    # committed state h_{j-2}; head 1 reads h_t and predicts token t+2.
    heads = _medusa()
    ids, start = _sequence(lively, tiny_tokenizer, TEXTS[0])
    predictions = list(teacher_predictions(lively, teacher_proposer(lively, heads), ids, start))
    hidden = final_hidden_states(lively, ids[None])[0]
    with torch.no_grad():
        expected = heads.project(0, heads.head_features(0, hidden), lively.lm_head.weight).argmax(-1)
    assert [j for j, _ in predictions] == list(range(start + 1, len(ids)))
    assert [t for _, t in predictions] == [int(expected[j - 2]) for j in range(start + 1, len(ids))]
    assert any(t != int(ids[j]) for j, t in predictions)


@pytest.mark.parametrize("kind", ["eagle1", "eagle3"])
def test_eagle_predictions_equal_one_drafter_forward_over_the_sequence(lively, tiny_tokenizer, kind):
    # The drafter's entry t reads (E(ids[t+1]), f_t) and predicts the token at t+2: one causal
    # forward over the whole sequence gives every teacher-forced prediction.
    draft = _drafts(lively)[kind]
    ids, start = _sequence(lively, tiny_tokenizer, TEXTS[1])
    predictions = dict(teacher_predictions(lively, teacher_proposer(lively, draft), ids, start))
    with torch.no_grad():
        _, features = target_states(lively, ids[None], draft.feature_layers)
        n = len(ids) - 1
        embeds = lively.get_input_embeddings()(ids[1:])[None]
        out = draft(embeds, draft.embed_features(features[:, :n]), torch.arange(n)[None], causal_mask(n, 0, features.dtype, ids.device), None)[0]
        expected = draft.to_target_ids(draft.logits(out, lively.lm_head.weight).argmax(-1))
    assert predictions == {j: int(expected[j - 2]) for j in range(start + 1, len(ids))}


class AcceptEveryOtherFirst(Verifier):
    """Accepts the first draft token at every other step (whatever it is), else verifies greedily:
    the decode then commits two positions in one step half of the time."""

    name, lossless = "accept_every_other_first", False

    def __init__(self):
        self.steps = 0

    def verify(self, block, generator):
        self.steps += 1
        if self.steps % 2:
            return GreedyVerifier().verify(block, generator)
        tokens = torch.as_tensor(block.tokens).tolist()
        return [0, 1], int(block.logits[1].argmax()), tokens


@pytest.mark.parametrize("kind", ["medusa", "eagle1", "eagle3", "chimera"])
def test_predictions_equal_the_first_draft_token_of_every_decode_step(lively, tiny_tokenizer, kind):
    # A real speculative decode (chains; every other step commits two positions): at every step the
    # proposal's first token is the draft's prediction for the token after the root, given what was committed.
    draft = _drafts(lively)[kind]
    prompt = prompt_ids(tiny_tokenizer, {"turns": [TEXTS[0]]})
    layout = EagleOptions(depth=3) if kind.startswith("eagle") else DraftTree.chain(2)
    generator = SpeculativeGenerator.from_draft(lively, draft, layout, verifier=AcceptEveryOtherFirst())
    generator.eos = set(NO_EOS)
    seen, committed = {}, [prompt.shape[1]]
    propose, observe = generator.proposer.propose, generator.proposer.observe

    def recording_propose(c):
        proposal = propose(c)
        seen[committed[0] + 1] = int(torch.as_tensor(proposal.tokens)[0])
        return proposal

    def recording_observe(outcome):
        committed[0] += len(outcome.path)
        observe(outcome)

    generator.proposer.propose, generator.proposer.observe = recording_propose, recording_observe
    result = generator.generate(prompt, MAX_NEW)
    ids = torch.cat([prompt[0], torch.tensor(result.tokens)])
    predictions = dict(teacher_predictions(lively, teacher_proposer(lively, draft), ids, prompt.shape[1]))
    steps = {j: t for j, t in seen.items() if j < len(ids)}
    assert len(steps) >= 8 and max(result.accepted_lengths) == 1
    assert steps == {j: predictions[j] for j in steps}


@pytest.mark.parametrize("kind", ["eagle1", "chimera"])
def test_a_later_start_prefills_straight_there_and_first_mismatch_stops_at_the_first(lively, tiny_tokenizer, kind):
    draft = _drafts(lively)[kind]
    proposer = teacher_proposer(lively, draft)
    ids, start = _sequence(lively, tiny_tokenizer, TEXTS[0])
    stepped = dict(teacher_predictions(lively, proposer, ids, start))
    for later in (start + 3, start + 9):
        assert dict(teacher_predictions(lively, proposer, ids, later)) == {j: t for j, t in stepped.items() if j > later}
        expected = next((j, t) for j, t in sorted(stepped.items()) if j >= later and t != int(ids[j]))
        assert first_mismatch(lively, proposer, ids, start, later) == expected
    # A response built from the draft's own predictions has no mismatch.
    agreed = ids[: start + 1].tolist()
    for _ in range(6):
        agreed.append(dict(teacher_predictions(lively, proposer, torch.tensor(agreed + [0]), start))[len(agreed)])
    assert first_mismatch(lively, proposer, torch.tensor(agreed), start) is None


def test_an_sdsat_draft_is_refused_with_a_clear_error(lively, tiny_tokenizer):
    draft = SdsatDraft(SdsatConfig(HIDDEN, VOCAB, 2, [VOCAB - 2, VOCAB - 1]))
    ids, start = _sequence(lively, tiny_tokenizer, TEXTS[0], max_new=4)
    with pytest.raises(UnsupportedDraftError, match="sdsat proposer drafts with extra query tokens"):
        first_mismatch(lively, teacher_proposer(lively, draft), ids, start)
    with pytest.raises(UnsupportedDraftError, match="Medusa, EAGLE or Chimera"):
        jd.LabelMiner(lively, tiny_tokenizer, draft, MathChecker())


# --- reference lookup ------------------------------------------------------------------------


def test_reference_lookup_decodes_exactly_plain_greedy_and_copies_a_known_answer_fast(lively):
    prompt = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    plain = plain_generate(lively, prompt, 40, eos_token_ids=NO_EOS).tokens
    full = prompt[0].tolist() + plain
    perturbed = full[:20] + [(full[20] + 1) % VOCAB] + full[21:]
    unrelated = torch.randint(3, VOCAB, (60,), generator=torch.Generator().manual_seed(9)).tolist()
    forwards = {}
    for name, reference in {"exact": full, "perturbed": perturbed, "unrelated": unrelated, "empty": []}.items():
        result = SpeculativeGenerator(lively, ReferenceLookupProposer(reference, k=8), eos_token_ids=NO_EOS, verifier="greedy").generate(prompt, 40)
        assert result.tokens == plain, name
        forwards[name] = result.target_forwards
    assert forwards["exact"] <= 8 < forwards["empty"]


def test_reference_lookup_takes_the_nearest_occurrence_then_the_sequence_itself():
    proposer = ReferenceLookupProposer([5, 6, 1, 2, 7, 9, 1, 2, 8, 8], k=2, max_ngram=2)
    # [1, 2] occurs ending at 4 and at 8 of the reference; the sequence is 8 long: the one ending at 8.
    assert proposer.lookup([0, 0, 0, 0, 0, 0, 1, 2]) == [8, 8]
    assert proposer.lookup([0, 0, 1, 2]) == [7, 9]
    # Not in the reference: the most recent earlier occurrence in the sequence.
    assert proposer.lookup([4, 3, 0, 4, 3, 1, 4, 3]) == [1, 4]
    # The longest suffix first: [6, 1] beats [1] alone.
    assert proposer.lookup([0, 6, 1]) == [2, 7]
    assert proposer.lookup([42]) == []


# --- checkers --------------------------------------------------------------------------------


def test_math_checker_compares_final_numbers():
    math = MathChecker()
    assert math.same_outcome({}, "so 48+24=72\n#### 72", "The total is 72.0 clips.")
    assert math.same_outcome({}, "#### 1,000", "first 3, then 1000")
    assert not math.same_outcome({}, "#### 72", "She sold 72 in April and 73 in all.\n#### 73")
    assert not math.same_outcome({}, "#### 5", "no number here")
    assert math.same_outcome({}, "no digits\nThe end.", "other words\n The end. ")
    assert not math.same_outcome({}, "no digits\nThe end.", "no digits\nFin.")
    assert math.same_outcome({}, "the answer is -3.50", "#### -3.5")


def test_code_checker_runs_the_last_python_block_against_the_tests():
    code = CodeChecker(timeout_s=1.0)
    record = {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
    passing = "Here:\n```python\ndef add(a, b):\n    return a - b\n```\nBetter:\n```python\ndef add(a, b):\n    return a + b\n```"
    failing = "```python\ndef add(a, b):\n    return a * b\n```"
    hanging = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    assert code.passes(passing, "\n".join(record["tests"])) and not code.passes(failing, "\n".join(record["tests"]))
    started = time.perf_counter()
    assert not code.passes(hanging, "assert add(1, 1) == 2")
    assert time.perf_counter() - started < 10
    assert not code.same_outcome(record, passing, failing)
    assert code.same_outcome(record, failing, hanging)  # both fail
    assert code.same_outcome({"tests": "assert add(2, 2) == 4"}, passing, passing.replace("a + b", "b + a"))
    assert not code.passes("no code at all", "assert True")
    # The script runs isolated, in a fresh temporary folder.
    assert code.passes("```python\nimport os, sys\n```", "assert 'specdec-check-' in os.getcwd() and sys.flags.isolated")
    with pytest.raises(CheckerError, match="tests"):
        code.same_outcome({"question": "q"}, passing, failing)


def test_general_checker_asks_whether_the_answer_rejoins_the_reference_soon():
    rule = GeneralChecker(rejoin_tokens=2, window=3, max_shift=1)
    ref = list(range(20))
    assert rule.max_regen_tokens == 6
    assert rule.rejoins(ref, list(ref))
    assert rule.rejoins(ref, ref[:5] + [99] + ref[6:])  # one token replaced, same continuation
    assert rule.rejoins(ref, ref[:5] + [99] + ref[5:])  # one token inserted: shifted by 1
    assert rule.rejoins(ref, ref[:5] + [99, 98] + ref[7:])  # rejoins from index 7 <= a + 1 + 2
    assert not rule.rejoins(ref, ref[:5] + [99, 98, 97, 96] + ref[9:])  # too late
    assert rule.rejoins(ref, ref[:5] + [99, 98] + ref[8:])  # two replaced, one dropped: shifted by 1
    assert not rule.rejoins(ref, ref[:5] + [99] + ref[8:])  # two dropped: shifted by 2 > max_shift
    assert not rule.rejoins(ref, ref[:5] + [90 + i for i in range(15)])  # never
    assert rule.rejoins(ref, ref[:17] + [99] + ref[18:])  # near the end: both end alike
    assert not rule.rejoins(ref, ref[:5] + [99])  # stops much earlier
    assert rule.same_outcome({}, "The cat sat on the mat today .", "The dog sat on the mat today .")
    assert not rule.same_outcome({}, "The cat sat on the mat today .", "The dog ran off into the woods quickly .")
    assert build_checker("general", window=7, timeout_s=3).window == 7
    with pytest.raises(ValueError, match="Did you mean `math`"):
        build_checker("maht")


# --- the miner -------------------------------------------------------------------------------


def _general(tokenizer):
    return GeneralChecker(tokenize=lambda text: tokenizer.encode(text, add_special_tokens=False))


def test_mined_labels_hold_the_verification_state_and_keep_unimportant_substitutions(lively, tiny_tokenizer):
    miner = jd.LabelMiner(lively, tiny_tokenizer, _medusa(), _general(tiny_tokenizer), max_new_tokens=MAX_NEW, low_prob=0.0)
    kinds = set()
    for index, text in enumerate(TEXTS):
        mined = miner.mine(index, {}, text)
        assert mined.records and mined.features.shape == (len(mined.records), HIDDEN)
        assert mined.reference == plain_generate(lively, torch.tensor([mined.prompt]), MAX_NEW).tokens
        positions = [r["position"] for r in mined.records]
        assert positions == sorted(set(positions)) and positions[0] >= 1
        S, P = mined.response, mined.prompt
        for record, feature in zip(mined.records, mined.features):
            assert list(record) == list(LABEL_FIELDS) and record["prompt_index"] == index and record["rule"] == "search"
            j, d = record["position"], record["draft_token"]
            hidden = final_hidden_states(lively, torch.tensor([P + S[:j] + [d]]))[0]
            torch.testing.assert_close(feature, hidden[-1])
            assert record["p_target"] == pytest.approx(float(torch.softmax(hidden[-2] @ lively.lm_head.weight.T, -1)[d]), rel=1e-5)
            assert d != record["target_token"]
            assert S[j] == (d if record["important"] == 0 else record["target_token"])
            kinds.add(record["important"])
        # S after the last kept substitution is the target's own greedy continuation of it.
        kept = [r for r in mined.records if r["important"] == 0]
        if kept:
            j = kept[-1]["position"]
            assert S[j + 1 :] == plain_generate(lively, torch.tensor([P + S[: j + 1]]), MAX_NEW - j - 1).tokens
    assert kinds == {0, 1}


def test_the_low_prob_rule_labels_without_a_search(lively, tiny_tokenizer, monkeypatch):
    calls = []
    original = SpeculativeGenerator.generate
    monkeypatch.setattr(SpeculativeGenerator, "generate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    everything = jd.LabelMiner(lively, tiny_tokenizer, _medusa(), MathChecker(), max_new_tokens=MAX_NEW, low_prob=1.0).mine(0, {}, TEXTS[0])
    assert everything.records and calls == []
    assert all(r["rule"] == "low_prob" and r["important"] == 1 for r in everything.records)
    assert everything.response == everything.reference
    floor = 0.02
    mixed = jd.LabelMiner(lively, tiny_tokenizer, _medusa(), MathChecker(), max_new_tokens=MAX_NEW, low_prob=floor).mine(0, {}, TEXTS[0])
    rules = {(r["rule"], r["p_target"] < floor) for r in mixed.records}
    assert rules == {("low_prob", True), ("search", False)}
    assert calls and all(r["important"] == 1 for r in mixed.records if r["rule"] == "low_prob")


def _prompts(count):
    return [jd.MinedPrompt(i, {}, TEXTS[i % 2] + " " * (i // 2)) for i in range(count)]


def test_a_label_folder_resumes_at_the_missing_shards(lively, tiny_tokenizer, tmp_path, monkeypatch):
    miner = jd.LabelMiner(lively, tiny_tokenizer, _medusa(), _general(tiny_tokenizer), max_new_tokens=16, low_prob=0.01)
    out, prompts, settings = tmp_path / "labels", _prompts(3), {"prompts": "test"}
    card = jd.mine_folder(miner, prompts, out, settings, chunk_size=2, progress=False)
    data = read_judge_data(out)
    counts = card["counts"]
    assert counts["prompts"] == 3 and counts["shards"] == 2 and counts["labels"] == len(data.records) == data.features.shape[0] > 0
    assert counts["important"] == int(data.important.sum()) and counts["unimportant"] == counts["labels"] - counts["important"]
    assert counts["low_prob"] == sum(r["rule"] == "low_prob" for r in data.records)
    assert card["settings"]["checker"]["checker"] == "general" and card["settings"]["chunk_size"] == 2 and card["label_fields"] == LABEL_FIELDS
    assert sorted(set(data.prompt_index.tolist())) <= [0, 1, 2] and card["mining_wall_s"] > 0
    first = shard_path(out, 0)
    stamp, second = first.stat().st_mtime_ns, read_shard(shard_path(out, 1))
    # Everything finished: nothing is mined again.
    mined = []
    original = jd.LabelMiner.mine
    monkeypatch.setattr(jd.LabelMiner, "mine", lambda self, i, r, t: mined.append(i) or original(self, i, r, t))
    assert jd.mine_folder(miner, prompts, out, settings, chunk_size=2, progress=False)["counts"] == counts and mined == []
    # A lost shard is mined again, alone, and comes out the same.
    shard_path(out, 1).unlink()
    again = jd.mine_folder(miner, prompts, out, settings, chunk_size=2, progress=False)
    assert mined == [2] and first.stat().st_mtime_ns == stamp
    features, important, prompt_index, records = read_shard(shard_path(out, 1))
    assert records == second[3] and torch.equal(features, second[0]) and torch.equal(important, second[1]) and prompt_index.tolist() == [2] * len(records)
    assert again["counts"] == counts and again["mining_wall_s"] > card["mining_wall_s"]


def test_a_folder_mined_with_other_settings_is_refused(lively, tiny_tokenizer, tmp_path):
    out, prompts = tmp_path / "labels", _prompts(1)
    jd.mine_folder(jd.LabelMiner(lively, tiny_tokenizer, _medusa(), MathChecker(), max_new_tokens=8), prompts, out, {"prompts": "a"}, progress=False)
    other = jd.LabelMiner(lively, tiny_tokenizer, _medusa(), MathChecker(), max_new_tokens=8, low_prob=0.5)
    with pytest.raises(jd.MiningSettingsError, match=r"low_prob: folder 0\.01, now 0\.5"):
        jd.mine_folder(other, prompts, out, {"prompts": "a"}, progress=False)
    (out / DATA_CARD).unlink()
    with pytest.raises(jd.MiningSettingsError, match="no data_card.json"):
        jd.mine_folder(other, prompts, out, {"prompts": "a"}, progress=False)


def test_prompt_files_name_the_bad_line(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"question": "q0", "answer": "#### 1"}, {"turns": ["t1", "x"]}, {"prompt": "p2"}, {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "h3"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    prompts = jd.load_prompts(path, skip=1, max_prompts=2)
    assert [(p.index, p.text) for p in prompts] == [(1, "t1"), (2, "p2")] and jd.load_prompts(path)[3].text == "h3"
    path.write_text('{"question": "ok"}\n{"question": "broken"\n')
    with pytest.raises(jd.PromptFileError, match=r"p\.jsonl:2 is not valid JSON"):
        jd.load_prompts(path)
    path.write_text('{"question": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(jd.PromptFileError, match=r"p\.jsonl:2 holds no prompt"):
        jd.load_prompts(path)


def test_named_prompt_sources_live_in_the_shared_data_folder_next_to_the_repository():
    expected = jd.SHARED_DATA / "train" / "gsm8k_train.jsonl"
    assert jd.SHARED_DATA == Path(jd.__file__).resolve().parents[2] / "shared" / "data"
    if expected.is_file():
        first = jd.load_prompts(jd.prompts_path("gsm8k"), max_prompts=2)
        assert len(first) == 2 and first[0].text == first[0].record["question"] and "####" in first[0].record["answer"]
    else:
        with pytest.raises(FileNotFoundError, match="pass prompts=PATH.jsonl"):
            jd.prompts_path("gsm8k")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        jd.prompts_path("no/such/file.jsonl")


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture()
def lively_dir(tmp_path, lively, tiny_tokenizer):
    path = tmp_path / "target"
    lively.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_cli_mines_resumes_and_refuses(tmp_path, lively_dir, capsys):
    draft = _medusa().save_pretrained(tmp_path / "draft", extra={"target": {"name_or_path": str(lively_dir)}})
    prompts = tmp_path / "gsm.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"What is {i} + 3?", "answer": f"#### {i + 3}"}) + "\n" for i in range(3)))
    out = tmp_path / "labels"
    args = [f"draft={draft}", f"prompts={prompts}", f"out={out}", "checker=math", "max_new_tokens=12", "chunk_size=2", "threads=1", "progress=false"]
    # Mining 1 prompt, then a rerun asking for all of them extends the folder (max_prompts is not a
    # setting); the first shard covered a shorter chunk (1 of 2 prompts), so it is mined again in full.
    assert jd.main(args + ["max_prompts=1"]) == 0 and json.loads((out / DATA_CARD).read_text())["counts"]["prompts"] == 1
    assert shard_prompts(shard_path(out, 0)) == (0, 1)
    assert jd.main(args) == 0
    assert shard_prompts(shard_path(out, 0)) == (0, 2) and shard_prompts(shard_path(out, 1)) == (2, 1)
    assert sorted({r["prompt_index"] for r in read_judge_data(out).records}) == [0, 1, 2]
    card = json.loads((out / DATA_CARD).read_text())
    assert card["settings"]["draft_type"] == "medusa" and card["settings"]["draft"] == str(draft.resolve()) and "max_prompts" not in card["settings"]
    assert card["settings"]["prompts_file"] == str(prompts.resolve()) and card["counts"]["prompts"] == 3 and card["counts"]["shards"] == 2
    assert len(read_judge_data(out).records) == card["counts"]["labels"]
    assert f"{card['counts']['labels']} labels from 3 prompts" in capsys.readouterr().out
    assert jd.main(args) == 0 and json.loads((out / DATA_CARD).read_text())["counts"] == card["counts"]
    # A bad command line (exit 2) and inputs that fail (exit 1), each in one line.
    assert jd.main(args + ["checker=maht"]) == 2 and "Did you mean `math`" in capsys.readouterr().err
    assert jd.main([f"draft={tmp_path / 'nowhere'}", f"out={out}"]) == 2 and "no draft at" in capsys.readouterr().err
    assert jd.main(args + ["low_prob=0.2"]) == 1 and "other settings (low_prob" in capsys.readouterr().err
    prompts.write_text('{"question": "fine"}\nnot json\n')
    assert jd.main(args[:2] + [f"out={tmp_path / 'other'}"]) == 1 and "gsm.jsonl:2 is not valid JSON" in capsys.readouterr().err
    sdsat = SdsatDraft(SdsatConfig(HIDDEN, VOCAB, 2, [VOCAB - 2, VOCAB - 1])).save_pretrained(tmp_path / "sdsat", extra={"target": {"name_or_path": str(lively_dir)}})
    prompts.write_text('{"question": "fine"}\n')
    assert jd.main([f"draft={sdsat}", f"prompts={prompts}", f"out={tmp_path / 'sd'}"]) == 1 and "cannot be teacher-forced" in capsys.readouterr().err
