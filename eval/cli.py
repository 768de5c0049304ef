"""`specdec-eval draft=DIR [bench=mt-bench|PATH.jsonl] [key=value ...]`: benchmark a trained draft (USAGE and --help say the rest)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from specdec.eval.benchmark import TREE_KINDS, QuestionFileError, bench_path, evaluate, load_questions, prompt_ids
from specdec.eval.checkers import CheckerError, build_checker
from specdec.eval.judge_sweep import plot_sweep, run_sweep, sweep_points, sweep_table
from specdec.eval.report import flat_summary, format_table, plot, write_json
from specdec.models.base import load_draft
from specdec.models.cli_args import AT_LEAST_1, NON_NEGATIVE, Option, Rule, UsageError, help_page, parse_options, run_cli, spec_rows
from specdec.models.judge import read_judge_config
from specdec.models.target import load_target
from specdec.runtime.autotune import tune_tree
from specdec.runtime.options import RUNTIME_ERRORS, SHARED_OPTIONS, build_verifier, check_lookup_branch, check_verifier, draft_folder, draft_layout, draft_length, target_source

EVAL_RESULTS = "eval_results.json"
OPTIONS = {
    "draft": Option(str, None, doc="the draft folder specdec-train wrote (<output_dir>/draft); required"),
    "bench": Option(str, "mt-bench", doc="questions: mt-bench (bundled) or a .jsonl file of {question_id, category, turns}"),
    "max_questions": Option(int, None, AT_LEAST_1, "evaluate at most this many questions (unset: all)"),
    "per_category": Option(int, None, AT_LEAST_1, "at most this many questions of each category (unset: all)"),
    **SHARED_OPTIONS,
    "out": Option(str, None, doc="where the full result goes (unset: eval_<bench>.json)"),
    "plot": Option(str, None, doc="where the figure goes (unset: next to out, as .png; false: no figure)"),
    "tree": Option(str, "default", Rule(f"one of {', '.join(TREE_KINDS)}", lambda v: v in TREE_KINDS), "layout: default (the draft type's tree), chain, or tuned (the fastest of several, measured on two questions)"),
    "prompt_lookup_tokens": Option(int, 10, AT_LEAST_1, "tokens the prompt-lookup baseline proposes per step"),
    "baselines": Option(bool, True, doc="also time plain greedy decoding and prompt lookup beside the draft"),
    "skip_questions": Option(int, 0, NON_NEGATIVE, "skip this many questions of the file first (e.g. the slice a judge was mined on)"),
    "sweep": Option(str, None, doc="verifier=judge: comma-separated judge thresholds; measures exact verification and each threshold on the same questions (LOSSY points)"),
    "training_free": Option(str, None, doc="sweep: training-free rules to add, comma-separated topk:K (target's top-K) and kl:T (KL(draft || target) < T)"),
    "checker": Option(str, None, doc="sweep: outcome checker for quality (math: final number vs plain greedy's; code; general); unset: log-prob and identity only"),
}
"""key -> Option(type, default, range, meaning)."""
USAGE = """usage: specdec-eval draft=DIR [bench=mt-bench|PATH.jsonl] [key=value ...]
       specdec-eval diffusion=DIR [filter=DIR] [key=value ...]   (a masked-diffusion LM; its own keys: specdec-eval diffusion= --help)

Benchmarks a trained draft: prints the table, writes the full result (out), a figure (plot) and
the overall summary into <draft>/eval_results.json (read by the model card).
Exit codes: 0 ok, 1 a lossless method differed from plain greedy (or a draft, target or question
file failed to load), 2 a bad command line."""


def help_text() -> str:
    """The usage and every key with its default and meaning."""
    return help_page(USAGE, [("keys:", spec_rows(OPTIONS))])


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> options with their defaults; unknown keys name the closest valid one."""
    options = parse_options(argv, OPTIONS)
    if not options["draft"]:
        raise UsageError("draft=DIR is required (the draft/ folder that specdec-train wrote)")
    check_verifier(options)
    if options["sweep"] and options["verifier"] != "judge":
        raise UsageError(f"sweep= lists judge thresholds: add verifier=judge judge=DIR (got verifier={options['verifier']})")
    if options["checker"] and not (options["sweep"] or options["training_free"]):
        raise UsageError("checker= measures the quality of a sweep: add sweep=THRESHOLDS (verifier=judge) or training_free=RULES")
    if options["lookup_branch"] and (options["sweep"] or options["training_free"]):
        raise UsageError(f"lookup_branch={options['lookup_branch']} is measured against the baselines, not in a sweep: drop lookup_branch= or sweep= / training_free=")
    if (options["draft_length"] is not None or options["acceptance_head"]) and (options["sweep"] or options["training_free"]):
        raise UsageError("draft_length= / acceptance_head= are measured against the baselines, not in a sweep: drop them or sweep= / training_free=")
    if options["sweep"] and options["judge_threshold"] is not None:
        raise UsageError(f"sweep= sets the judge's thresholds: drop judge_threshold={options['judge_threshold']}")
    if options["verifier"] == "judge" and options["training_free"] and not options["sweep"]:
        raise UsageError("training_free= with verifier=judge needs sweep=THRESHOLDS (the judge's points); or drop verifier=judge to compare the training-free rules alone")
    options["sweep"] = _floats(options["sweep"], "sweep")
    options["training_free"] = [r.strip() for r in options["training_free"].split(",") if r.strip()] if options["training_free"] else []
    try:
        sweep_points(None, options["sweep"], options["training_free"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if options["checker"] == "code":
        raise UsageError("checker=code reads each question's `tests`, which specdec-eval's question files do not carry: use checker=math or general (specdec-judge-data takes checker=code)")
    if options["checker"]:
        try:
            build_checker(options["checker"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return options


def _floats(text: str | None, key: str) -> list[float]:
    """A comma-separated list of numbers in [0, 1]; anything else is a usage error naming `key`."""
    if not text:
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{key}={text} must be comma-separated numbers, e.g. {key}=0.1,0.3,0.5") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise UsageError(f"{key}={text}: every threshold must lie within [0, 1]")
    return values


def run(options: dict) -> int:
    """Load, evaluate, report; returns the exit code."""
    # Step 1: what the command line names must exist before anything loads; then questions, draft and target.
    draft_dir, config = draft_folder(options["draft"])
    try:
        bench_path(options["bench"])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    questions = load_questions(options["bench"], options["max_questions"], options["per_category"], options["skip_questions"])
    draft = load_draft(draft_dir)
    check_lookup_branch(draft, options)
    length = draft_length(draft, options)
    source = options["target"] or target_source(draft_dir, config)
    target = load_target(source)
    # Step 2: the benchmark itself (a sweep of lossy rules, or one verifier against the baselines).
    layout, length, tree_speeds = _pick_tree(options, target, draft, questions, length)
    if options["sweep"] or options["training_free"]:
        return _sweep(options, target, draft, questions, layout)
    result = evaluate(
        target.model,
        target.tokenizer,
        draft,
        questions,
        max_new_tokens=options["max_new_tokens"],
        temperature=options["temperature"],
        layout=layout,
        verifier=build_verifier(options, target.model.config.hidden_size),
        prompt_lookup_tokens=options["prompt_lookup_tokens"],
        lookup_branch=options["lookup_branch"],
        lookup_ngram=options["lookup_ngram"],
        draft_length=length,
        baselines=options["baselines"],
        seed=options["seed"],
    )
    result["setting"].update(draft=str(draft_dir), bench=str(options["bench"]), target=source, tree_kind=options["tree"])
    if tree_speeds:
        result["setting"]["tree_tokens_per_s_by_size"] = tree_speeds
        if options["draft_length"] is not None or options["acceptance_head"]:
            result["setting"]["draft_length_kept"] = length is not None
    # Step 3: reports (always written, lossless failure or not).
    bench_name = Path(str(options["bench"])).stem
    out = Path(options["out"] or f"eval_{bench_name}.json")
    write_json(result, out)
    write_json(flat_summary(result), draft_dir / EVAL_RESULTS)
    figure = figure_path(options, out)
    if figure:
        plot(result, figure)
    print(format_table(result))
    print(f"wrote {', '.join(map(str, filter(None, (out, figure))))} and {draft_dir / EVAL_RESULTS}")
    return 1 if result["lossless_failures"] else 0


def _sweep(options: dict, target, draft, questions: list[dict], layout) -> int:
    """Exact verification, the judge at each `sweep` threshold and each `training_free` rule on the
    same questions: table, JSON and the quality plot (every point but exact is LOSSY)."""
    judge = build_verifier(options, target.model.config.hidden_size).judge if options["sweep"] else None
    if options["sweep"]:
        _check_held_out(options, questions)
    points = sweep_points(judge, options["sweep"], options["training_free"])
    checker = build_checker(options["checker"]) if options["checker"] else None
    result = run_sweep(target.model, target.tokenizer, draft, questions, points, layout, options["max_new_tokens"], checker, options["baselines"])
    result["setting"].update(draft=options["draft"], judge=options["judge"], bench=str(options["bench"]), skip_questions=options["skip_questions"], target=target.name_or_path)
    out = Path(options["out"] or f"sweep_{Path(str(options['bench'])).stem}.json")
    write_json(result, out)
    figure = figure_path(options, out)
    if figure:
        plot_sweep(result, figure)
    print(sweep_table(result))
    print(f"wrote {' and '.join(map(str, filter(None, (out, figure))))}")
    return 0


def _check_held_out(options: dict, questions: list[dict]) -> None:
    """Refuse to measure a judge on questions it was mined on: the same prompts file (the judge's
    config.json `labels.settings`) and a question among the mined rows (question ids of GSM8K-shaped
    files are line numbers; the miner's prompt indices count lines from 0)."""
    settings = (read_judge_config(options["judge"]).get("labels") or {}).get("settings") or {}
    mined_file = settings.get("prompts_file")
    if not mined_file or Path(mined_file).resolve() != bench_path(options["bench"]).resolve():
        return
    first = settings.get("skip_prompts", 0)
    count = (read_judge_config(options["judge"])["labels"].get("counts") or {}).get("prompts", 0)
    seen = [q["question_id"] for q in questions if isinstance(q["question_id"], int) and first <= q["question_id"] - 1 < first + count]
    if seen:
        raise UsageError(f"the judge was mined on rows {first}..{first + count - 1} of {mined_file}, which include question(s) {', '.join(map(str, seen[:5]))}: choose skip_questions= past them")


def _pick_tree(options: dict, target, draft, questions: list[dict], length=None):
    """(layout, DraftLength, tokens/s by candidate) to evaluate: the draft proposer's options and `length`; `tuned` measures
    tokens/s per candidate on the first two questions, each also pruned by `length` when there is one, and keeps the
    pruning only if a pruned candidate is the fastest."""
    if options["tree"] != "tuned":
        return draft_layout(draft, options["tree"], options), length, None
    calibration = [prompt_ids(target.tokenizer, q) for q in questions[:2]]
    layout, kept, speeds = tune_tree(target.model, draft, calibration, depth=options["depth"], top_k=options["tree_top_k"], lookup_branch=options["lookup_branch"], lookup_ngram=options["lookup_ngram"], draft_length=length)
    best = max(speeds, key=speeds.get)
    dropped = " (pruning was slower here: every node is verified)" if length is not None and kept is None else ""
    print("tree -> tokens/s: " + ", ".join(f"{label}: {speed:.1f}" for label, speed in speeds.items()) + f" (picked {best}){dropped}")
    return layout, kept, speeds


NO_FIGURE = ("false", "off", "no", "none", "0")
"""`plot=` values that mean no figure."""


def figure_path(options: dict, out: Path) -> Path | None:
    """Where the figure goes: `plot=PATH`, None for plot=false, else beside `out` as .png."""
    if options["plot"] is None:
        return out.with_suffix(".png")
    return None if options["plot"].strip().lower() in NO_FIGURE else Path(options["plot"])


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-eval`; a command line with diffusion=DIR benchmarks a masked-diffusion LM instead (`specdec.eval.diffusion_eval`)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(word.startswith("diffusion=") for word in argv):
        from specdec.eval import diffusion_eval

        return diffusion_eval.main(argv)
    return run_cli("specdec-eval", argv, help_text, parse_args, run, (*RUNTIME_ERRORS, QuestionFileError, CheckerError))


if __name__ == "__main__":
    sys.exit(main())
