"""`specdec-eval draft=DIR [bench=mt-bench|PATH.jsonl] [key=value ...]`: benchmark a trained draft.

Prints the table, writes the full result (`out`, default `eval_<bench>.json`), a figure (`plot`,
default next to `out` as .png) and the overall summary into `<draft>/eval_results.json` (read by
the model card). Exit codes: 0 ok, 1 a lossless method differed from plain greedy, 2 bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from specdec.eval.benchmark import TREE_KINDS, evaluate, load_questions, prompt_ids
from specdec.runtime.autotune import tune_tree
from specdec.runtime.generator import choose_layout
from specdec.runtime.options import UsageError, parse_options, target_source
from specdec.eval.report import flat_summary, format_table, plot, write_json
from specdec.models.base import load_draft, read_draft_config
from specdec.models.target import TargetLoadError, load_target

EVAL_RESULTS = "eval_results.json"
OPTIONS = {
    "draft": (str, None),
    "bench": (str, "mt-bench"),
    "max_questions": (int, None),
    "per_category": (int, None),
    "max_new_tokens": (int, 256),
    "temperature": (float, 0.0),
    "out": (str, None),
    "plot": (str, None),
    "target": (str, None),
    "tree": (str, "default"),
    "tree_size": (int, None),
    "depth": (int, 5),
    "tree_top_k": (int, 4),
    "prompt_lookup_tokens": (int, 10),
    "baselines": (bool, True),
    "seed": (int, 0),
    "threads": (int, None),
}
"""key -> (type, default)."""
USAGE = "usage: specdec-eval draft=DIR [" + " ".join(f"{k}={d}" if d is not None else f"{k}=" for k, (_, d) in list(OPTIONS.items())[1:]) + "]"


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> options with their defaults; unknown keys name the closest valid one."""
    options = parse_options(argv, OPTIONS)
    if not options["draft"]:
        raise UsageError("draft=DIR is required (the draft/ folder that specdec-train wrote)")
    if options["tree"] not in TREE_KINDS:
        raise UsageError(f"tree={options['tree']} is not one of {', '.join(TREE_KINDS)}")
    return options


def run(options: dict) -> int:
    """Load, evaluate, report; returns the exit code."""
    # Step 1: draft, target and questions.
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    draft_dir = Path(options["draft"])
    config = read_draft_config(draft_dir)
    draft = load_draft(draft_dir)
    source = options["target"] or target_source(draft_dir, config)
    target = load_target(source)
    questions = load_questions(options["bench"], options["max_questions"], options["per_category"])
    # Step 2: the benchmark itself.
    (tree, eagle), tree_speeds = _pick_tree(options, target, draft, questions)
    result = evaluate(
        target.model,
        target.tokenizer,
        draft,
        questions,
        max_new_tokens=options["max_new_tokens"],
        temperature=options["temperature"],
        tree=tree,
        eagle=eagle,
        prompt_lookup_tokens=options["prompt_lookup_tokens"],
        baselines=options["baselines"],
        seed=options["seed"],
    )
    result["setting"].update(draft=str(draft_dir), bench=str(options["bench"]), target=source, tree_kind=options["tree"])
    if tree_speeds:
        result["setting"]["tree_tokens_per_s_by_size"] = tree_speeds
    # Step 3: reports (always written, lossless failure or not).
    bench_name = Path(str(options["bench"])).stem
    out = Path(options["out"] or f"eval_{bench_name}.json")
    write_json(result, out)
    write_json(flat_summary(result), draft_dir / EVAL_RESULTS)
    figure = plot(result, options["plot"] or out.with_suffix(".png"))
    print(format_table(result))
    print(f"wrote {out}, {figure} and {draft_dir / EVAL_RESULTS}")
    return 1 if result["lossless_failures"] else 0


def _pick_tree(options: dict, target, draft, questions: list[dict]):
    """The layout to evaluate, (tree, EAGLE options); `tuned` measures tokens/s per candidate on the first two questions."""
    if options["tree"] != "tuned":
        return choose_layout(draft, options["tree"], options["tree_size"], options["depth"], options["tree_top_k"]), None
    calibration = [prompt_ids(target.tokenizer, q) for q in questions[:2]]
    layout, speeds = tune_tree(target.model, draft, calibration, depth=options["depth"], top_k=options["tree_top_k"])
    best = max(speeds, key=speeds.get)
    print("tree -> tokens/s: " + ", ".join(f"{label}: {speed:.1f}" for label, speed in speeds.items()) + f" (picked {best})")
    return layout, speeds


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-eval`."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        options = parse_args(argv)
        return run(options)
    except (UsageError, FileNotFoundError, ValueError, TargetLoadError) as exc:
        print(f"specdec-eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
