"""The evaluation harness on the tiny target: metric names and consistency, the lossless alarm, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from specdec.eval import cli
from specdec.eval.benchmark import RATIO_METRICS, evaluate, first_mismatch, load_questions
from specdec.eval.report import format_table
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime.generator import SpeculativeGenerator

BENCHMARK_METRICS = (
    "mean_accepted_tokens",
    "acceptance_by_depth",
    "tokens_per_s",
    "speedup_vs_plain",
    "speedup_vs_hf_generate",
    "speedup_vs_prompt_lookup",
    "lossless_match",
    "ideal_speedup",
)
"""Metric names exactly as ../shared/BENCHMARK.md lists them."""
QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a short poem about the sea.", "Shorter."]},
    {"question_id": 2, "category": "math", "turns": ["Numbers: 0 1 2 3 4 5 6 7 8 9 10"]},
    {"question_id": 3, "category": "writing", "turns": ["Hello! How can I help you today?"]},
]
MAX_NEW = 12


@pytest.fixture()
def heads() -> MedusaHeads:
    """Three random Medusa heads for the tiny target (random ResBlocks, shared lm_head)."""
    torch.manual_seed(0)
    model = MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=320, num_heads=3))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


@pytest.fixture()
def bench_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


@pytest.fixture()
def draft_dir(tmp_path, heads, tiny_target_dir):
    return heads.save_pretrained(tmp_path / "draft", extra={"method": "medusa1", "target": {"name_or_path": str(tiny_target_dir)}})


@pytest.fixture()
def broken_generator(monkeypatch):
    """The speculative generator's tokens differ from the truth at position 3."""
    original = SpeculativeGenerator.generate

    def generate(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if len(result.tokens) > 3:
            result.tokens[3] = (result.tokens[3] + 1) % 320
        return result

    monkeypatch.setattr(SpeculativeGenerator, "generate", generate)


def test_evaluate_reports_every_benchmark_metric_consistently(tiny_llama, tiny_tokenizer, heads, bench_file):
    questions = load_questions(bench_file)
    result = evaluate(tiny_llama, tiny_tokenizer, heads, questions, max_new_tokens=MAX_NEW, progress=False)
    depth = result["setting"]["tree_depth"]
    assert depth == 3
    for record in result["questions"]:
        assert set(BENCHMARK_METRICS) <= set(record)
        assert record["speedup_vs_plain"] == pytest.approx(record["tokens_per_s"] / record["plain_tokens_per_s"])
        assert record["speedup_vs_hf_generate"] == pytest.approx(record["tokens_per_s"] / record["hf_generate_tokens_per_s"])
        assert record["speedup_vs_prompt_lookup"] == pytest.approx(record["tokens_per_s"] / record["prompt_lookup_tokens_per_s"])
        assert record["runtime_efficiency"] == pytest.approx(record["speedup_vs_plain"] / record["ideal_speedup"])
        assert record["mean_accepted_tokens"] == pytest.approx(record["new_tokens"] / record["target_forwards"])
        assert record["lossless_match"] == 1.0 and record["first_mismatch"] is None
        assert len(record["acceptance_by_depth"]) == depth
        assert 0 < record["new_tokens"] <= MAX_NEW
    assert list(result["categories"]) == ["writing", "math"]
    assert result["categories"]["writing"]["num_questions"] == 2
    for summary in [*result["categories"].values(), result["overall"]]:
        assert set(BENCHMARK_METRICS) <= set(summary)
        assert all(f"{name}_mean" in summary for name in RATIO_METRICS)
        assert summary["lossless_match"] == 1.0
        assert len(summary["acceptance_by_depth"]) == depth
    overall = result["overall"]
    assert overall["mean_accepted_tokens"] == pytest.approx(sum(r["new_tokens"] for r in result["questions"]) / sum(r["target_forwards"] for r in result["questions"]))
    assert overall["speedup_vs_plain"] == pytest.approx(sorted(r["speedup_vs_plain"] for r in result["questions"])[1])
    assert result["lossless_failures"] == []
    assert "LOSSLESS MISMATCH" not in format_table(result)
    assert result["setting"]["verifier"] == "greedy" and result["setting"]["lossless"] is True and result["setting"]["proposer"] == "medusa"


def test_a_lossy_verifier_is_not_checked_and_says_so(tiny_llama, tiny_tokenizer, heads, bench_file):
    result = evaluate(tiny_llama, tiny_tokenizer, heads, load_questions(bench_file, max_questions=1), max_new_tokens=4, temperature=0.7, verifier="typical", baselines=False, progress=False)
    assert result["setting"]["verifier"] == "typical" and result["setting"]["lossless"] is False
    assert result["questions"][0]["lossless_match"] is None and result["overall"]["lossless_match"] is None
    assert result["overall"]["verifier"] == "typical (lossy)"
    table = format_table(result)
    assert "verifier typical (lossy)" in table and "(lossy)" in table.splitlines()[-3]  # the overall row's lossless column


def test_evaluate_without_baselines_leaves_them_unmeasured(tiny_llama, tiny_tokenizer, heads, bench_file):
    result = evaluate(tiny_llama, tiny_tokenizer, heads, load_questions(bench_file, max_questions=1), max_new_tokens=4, baselines=False, progress=False)
    assert result["overall"]["speedup_vs_hf_generate"] is None and result["overall"]["speedup_vs_plain"] is not None
    assert "n/a" in format_table(result)


def test_a_broken_generator_raises_a_loud_lossless_banner(tiny_llama, tiny_tokenizer, heads, bench_file, broken_generator):
    result = evaluate(tiny_llama, tiny_tokenizer, heads, load_questions(bench_file), max_new_tokens=MAX_NEW, progress=False)
    assert result["lossless_failures"] == [{"question_id": q["question_id"], "first_mismatch": 3} for q in QUESTIONS]
    assert result["overall"]["lossless_match"] == 0.0
    assert "LOSSLESS MISMATCH: question 1 differs from plain greedy at token 3" in format_table(result)


def test_summaries_take_trees_of_different_depths():
    """Per-step layouts give questions acceptance lists of different lengths; a depth a question never drafted counts as not accepted."""
    from specdec.eval.benchmark import summarize

    base = {name: None for name in RATIO_METRICS} | {"lossless_match": 1.0, "hf_generate_matches_plain": None, "verifier": "greedy", "lossless": True}
    records = [base | {"new_tokens": 6, "target_forwards": 4, "verify_steps": 3, "acceptance_by_depth": [1.0]}, base | {"new_tokens": 9, "target_forwards": 3, "verify_steps": 2, "acceptance_by_depth": [0.5, 0.5]}]
    summary = summarize(records)
    assert summary["acceptance_by_depth"] == pytest.approx([(3 * 1.0 + 2 * 0.5) / 5, 2 * 0.5 / 5])
    assert summary["mean_accepted_tokens"] == pytest.approx(15 / 7) and summary["verifier"] == "greedy" and summary["lossless"] is True


def test_first_mismatch_counts_a_length_difference():
    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 9, 3], [1, 2, 3]) == 1
    assert first_mismatch([1, 2], [1, 2, 3]) == 2


def test_cli_writes_json_png_and_the_draft_summary(tmp_path, draft_dir, bench_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main([f"draft={draft_dir}", f"bench={bench_file}", f"max_new_tokens={MAX_NEW}", "threads=1", "tree=chain", "tree_size=2"])
    assert code == 0
    table = capsys.readouterr().out
    assert "overall" in table and "x plain" in table
    result = json.loads((tmp_path / "eval_questions.json").read_text())
    assert result["setting"]["tree_depth"] == 2 and result["overall"]["lossless_match"] == 1.0
    png = (tmp_path / "eval_questions.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    summary = json.loads((draft_dir / "eval_results.json").read_text())
    assert summary["speedup_vs_plain"] == result["overall"]["speedup_vs_plain"]
    assert summary["verifier"] == "greedy" and all(isinstance(v, float) for k, v in summary.items() if k != "verifier")
    assert {"acceptance_by_depth_1", "acceptance_by_depth_2"} <= set(summary)


def test_cli_exits_1_on_a_lossless_failure_after_writing_the_report(tmp_path, draft_dir, bench_file, capsys, broken_generator):
    out = tmp_path / "r.json"
    code = cli.main([f"draft={draft_dir}", f"bench={bench_file}", f"max_new_tokens={MAX_NEW}", f"out={out}", "max_questions=1"])
    assert code == 1
    assert "LOSSLESS MISMATCH: question 1 differs from plain greedy at token 3" in capsys.readouterr().out
    assert json.loads(out.read_text())["lossless_failures"] == [{"question_id": 1, "first_mismatch": 3}]


def test_cli_unknown_key_suggests_the_closest(capsys):
    assert cli.main(["draft=x", "max_new_token=5"]) == 2
    assert "Did you mean `max_new_tokens`?" in capsys.readouterr().err


def test_cli_missing_draft_is_a_clear_error(tmp_path, capsys):
    assert cli.main([f"draft={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "no draft at" in err and "config.json is missing" in err
    assert cli.main([]) == 2
    assert "draft=DIR is required" in capsys.readouterr().err


def test_load_questions_bundled_mt_bench():
    questions = load_questions("mt-bench")
    assert len(questions) == 80
    assert len({q["category"] for q in questions}) == 8
    assert len(load_questions("mt-bench", max_questions=5)) == 5


def test_load_questions_skips_records_without_turns_and_names_missing_files(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps({"question_id": 9}) + "\n\n")
    with pytest.warns(UserWarning, match="skipped 1 record"):
        assert [q["question_id"] for q in load_questions(path)] == [1]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_questions(tmp_path / "missing.jsonl")


def test_eval_help_lists_every_option(capsys):
    from specdec.eval.cli import OPTIONS, main as eval_main

    assert eval_main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"{key}=" in usage for key in OPTIONS)


@pytest.mark.parametrize("tree", ["chain", "default", "tuned", "tuned draft_length=0.3"])
def test_cli_evaluates_an_eagle3_draft_losslessly(tmp_path, tiny_target_dir, tiny_llama, bench_file, capsys, tree):
    from specdec.models.decoder import LayerShape
    from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter

    draft = Eagle3Drafter(Eagle3Config(32, 320, 64, [0, 1, 2], layer=LayerShape.from_target_config(tiny_llama.config)))
    draft.set_vocab(torch.arange(64) * 5, tiny_llama.lm_head.weight)
    folder = draft.save_pretrained(tmp_path / "eagle3", extra={"method": "eagle3", "target": {"name_or_path": str(tiny_target_dir)}})
    out = tmp_path / "eagle.json"
    argv = [f"draft={folder}", f"bench={bench_file}", f"max_new_tokens={MAX_NEW}", f"out={out}", f"tree={tree}", "depth=3", "tree_top_k=2", "baselines=false"]
    assert cli.main(" ".join(argv).split()) == 0
    result = json.loads(out.read_text())
    assert result["overall"]["lossless_match"] == 1.0
    eagle = result["setting"]["eagle"]
    assert eagle["depth"] <= 3 and (tree != "chain" or eagle["top_k"] == 1)
    layouts = {"chain-1", "chain-2", "chain-3", "tree-4", "tree-8", "tree-16", "tree-32"}
    if tree == "tuned":
        assert set(result["setting"]["tree_tokens_per_s_by_size"]) == layouts and "draft_length_kept" not in result["setting"]
    elif tree.startswith("tuned"):
        speeds = result["setting"]["tree_tokens_per_s_by_size"]
        assert set(speeds) == layouts | {f"{label} pruned" for label in layouts}, "every layout is timed full and pruned"
        pruned_won = max(speeds, key=speeds.get).endswith("pruned")
        assert result["setting"]["draft_length_kept"] == pruned_won == ("verified_nodes_per_step" in result["overall"])
    else:
        assert result["setting"]["tree_size"] == (3 if tree == "chain" else 8)


def test_load_questions_per_category_takes_the_first_of_each(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"question_id": i, "category": "ab"[i % 2], "turns": [f"q{i}"]} for i in range(7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [q["question_id"] for q in load_questions(path, per_category=2)] == [0, 1, 2, 3]
    assert [q["question_id"] for q in load_questions(path, max_questions=3, per_category=2)] == [0, 1, 2]
