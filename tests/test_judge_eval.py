"""The judge sweep of specdec-eval on the tiny target: exact vs judge thresholds vs training-free
rules with quality at every point, the log-prob measure, GSM8K-shaped questions, the CLI keys."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_llama, enliven
from specdec.eval import cli
from specdec.eval.benchmark import load_questions, prompt_ids
from specdec.eval.judge_sweep import SweepPoint, mean_logprob, run_sweep, sweep_points, sweep_table
from specdec.models.judge import JudgeConfig, JudgeHead
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime import cli as generate_cli
from specdec.runtime.generator import plain_generate
from specdec.runtime.tree import DraftTree
from specdec.runtime.judge_verifier import JudgeVerifier

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a short poem about the sea."]},
    {"question_id": 2, "category": "math", "turns": ["Numbers: 0 1 2 3 4 5 6 7 8 9 10"]},
]
MAX_NEW = 10


@pytest.fixture()
def heads() -> MedusaHeads:
    torch.manual_seed(0)
    model = MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=320, num_heads=3))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def constant_judge(p_important: float) -> JudgeHead:
    """A judge that says p(important) = `p_important` for every token (zero weights, a bias)."""
    judge = JudgeHead(JudgeConfig(feature_size=32, threshold=0.5))
    with torch.no_grad():
        judge.layers[0].weight.zero_()
        judge.layers[0].bias.fill_(float(torch.logit(torch.tensor(p_important))))
    return judge.eval()


@pytest.fixture()
def lively(tiny_tokenizer):
    """A tiny target whose greedy answers vary (a plain random one repeats one token, which every draft guesses)."""
    return enliven(build_tiny_llama(len(tiny_tokenizer)), seed=1)


@pytest.fixture()
def draft_dir(tmp_path, heads, tiny_target_dir):
    return heads.save_pretrained(tmp_path / "draft", extra={"method": "medusa1", "target": {"name_or_path": str(tiny_target_dir)}})


@pytest.fixture()
def judge_dir(tmp_path):
    return constant_judge(0.01).save_pretrained(tmp_path / "judge")


def test_sweep_measures_every_point_with_its_quality(lively, tiny_tokenizer, heads):
    points = [
        SweepPoint("exact", sweep_points()[0].verifier),
        SweepPoint("judge@never", JudgeVerifier(constant_judge(0.99), 0.5)),
        SweepPoint("judge@always", JudgeVerifier(constant_judge(0.01), 0.5)),
        *sweep_points(training_free=["topk:1"])[1:],
    ]
    result = run_sweep(lively, tiny_tokenizer, heads, QUESTIONS, points, DraftTree.chain(3), MAX_NEW, progress=False)
    exact, never, always, top1 = (result["points"][p.label] for p in points)
    # Exact is lossless and equals plain greedy; its log-prob is plain greedy's own.
    assert exact["lossless"] and exact["lossless_match"] == 1.0 and exact["identical_to_plain"] == 1.0
    assert exact["logprob_vs_plain"] == pytest.approx(0.0, abs=1e-6) and exact["rule_accepted_share"] == 0.0
    # A judge that never accepts decodes as exact verification, but is still labelled lossy.
    assert not never["lossless"] and never["identical_to_plain"] == 1.0 and never["lossless_match"] is None
    # A judge that accepts everything takes every drafted token: 3 drafted + 1 bonus per forward.
    assert always["mean_accepted_tokens"] > exact["mean_accepted_tokens"]
    assert all(r["acceptance_by_depth"] == [1.0, 1.0, 1.0] for r in result["questions"]["judge@always"])
    assert always["rule_accepted_share"] > 0.5
    # topk:1 is exact verification.
    assert top1["identical_to_plain"] == 1.0 and top1["label"] == "topk:1"
    assert "LOSSY" in sweep_table(result)


def test_mean_logprob_is_the_targets_per_token_log_probability(tiny_llama, tiny_tokenizer):
    ids = prompt_ids(tiny_tokenizer, QUESTIONS[0])
    tokens = plain_generate(tiny_llama, ids, 6, tokenizer=tiny_tokenizer).tokens
    full = torch.cat([ids, torch.tensor([tokens])], dim=1)
    with torch.no_grad():
        log_p = torch.log_softmax(tiny_llama(full).logits[0].float(), dim=-1)
    expected = torch.stack([log_p[ids.shape[1] - 1 + i, t] for i, t in enumerate(tokens)]).mean()
    assert mean_logprob(tiny_llama, ids, tokens) == pytest.approx(float(expected), abs=1e-4)
    assert mean_logprob(tiny_llama, ids, []) == 0.0


def test_gsm8k_records_are_questions_that_keep_their_answer(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = load_questions(path, max_questions=2, skip=3)
    assert [q["turns"][0] for q in questions] == ["What is 3 + 1?", "What is 4 + 1?"]
    assert questions[0]["category"] == "gsm8k" and questions[0]["answer"].endswith("#### 4")


def test_cli_sweep_writes_the_table_json_and_plot(tmp_path, draft_dir, judge_dir, capsys):
    bench = tmp_path / "q.jsonl"
    bench.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp_path / "sweep.json"
    args = [f"draft={draft_dir}", f"bench={bench}", f"max_new_tokens={MAX_NEW}", "threads=1", "tree=chain", "tree_size=3", "baselines=false"]
    code = cli.main([*args, "verifier=judge", f"judge={judge_dir}", "sweep=0.2,0.9", "training_free=topk:2", f"out={out}"])
    assert code == 0
    table = capsys.readouterr().out
    assert "judge@0.2*" in table and "LOSSY" in table
    result = json.loads(out.read_text())
    assert list(result["points"]) == ["exact", "judge@0.2", "judge@0.9", "topk:2"]
    assert result["points"]["judge@0.9"]["threshold"] == 0.9 and result["points"]["judge@0.9"]["lossless"] is False
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["verifier=judge"], "needs judge=DIR"),
        (["verifier=judge", "judge=nowhere"], "nowhere/config.json does not exist"),
        (["sweep=0.3"], "add verifier=judge"),
        (["checker=math"], "measures the quality of a sweep"),
        (["verifier=judge", "judge=JUDGE", "sweep=0.3,x"], "comma-separated numbers"),
        (["verifier=judge", "judge=JUDGE", "temperature=0.7"], "temperature 0"),
        (["verifier=judge", "judge=JUDGE", "sweep=0.3", "judge_threshold=0.2"], "drop judge_threshold=0.2"),
        (["verifier=judge", "judge=JUDGE", "training_free=topk:2"], "needs sweep=THRESHOLDS"),
        (["verifier=judge", "judge=JUDGE", "sweep=0.3,0.3"], "the sweep repeats judge@0.3"),
        (["training_free=topk:x"], "topk takes an integer"),
        (["training_free=wide:3"], "unknown training-free rule 'wide:3'"),
        (["training_free=topk:2", "checker=code"], "checker=code reads each question's `tests`"),
        (["accept_top_k=3"], "accept_top_k=3 is only read by verifier=topk"),
        (["verifier=topk", "kl_threshold=0.2"], "kl_threshold=0.2 is only read by verifier=kl"),
    ],
)
def test_cli_usage_errors_say_what_to_add(judge_dir, extra, message, capsys):
    code = cli.main(["draft=D", *(word.replace("JUDGE", str(judge_dir)) for word in extra)])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_refuses_questions_the_judge_was_mined_on(tmp_path, draft_dir, capsys):
    bench = tmp_path / "gsm8k.jsonl"
    bench.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(4)))
    labels = {"settings": {"prompts_file": str(bench), "skip_prompts": 0}, "counts": {"prompts": 2}}
    judge = constant_judge(0.5).save_pretrained(tmp_path / "mined-judge", extra={"labels": labels})
    args = [f"draft={draft_dir}", f"bench={bench}", "max_new_tokens=4", "threads=1", "baselines=false", "verifier=judge", f"judge={judge}", "sweep=0.5", "max_questions=1"]
    assert cli.main(args + ["skip_questions=1"]) == 2
    assert "mined on rows 0..1" in capsys.readouterr().err
    assert cli.main(args + ["skip_questions=2", f"out={tmp_path / 's.json'}", "checker=math"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["points"]["judge@0.5"]["outcome_match"] is not None


def test_generate_with_a_judge_says_lossy(draft_dir, judge_dir, capsys):
    code = generate_cli.main([f"draft={draft_dir}", "prompt=Hello", "max_new_tokens=6", "verifier=judge", f"judge={judge_dir}", "threads=1"])
    assert code == 0
    stats = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert stats["verification"] == "judge (lossy)"
