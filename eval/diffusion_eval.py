"""`specdec-eval diffusion=DIR [filter=DIR] [bench=mt-bench|PATH.jsonl] [key=value ...]`: benchmark block
decoding of a masked-diffusion LM (issue 13, Learn2PD).

Per question (first turn, chat template applied), in one process and on the same schedule:
1. plain: low-confidence remasking, greedy (the reference every other point is compared with);
2. eotp: the same with End-of-Text Prediction;
3. filter and filter+eotp (with filter=DIR): the Learn2PD filter unmasks every position above its threshold as well.
Each point reports model forwards, tokens per forward, wall time, `speedup_vs_plain` (median of
per-question wall-time ratios), `agreement` (share of positions equal to plain's answer) and
`identical` (share of answers equal to plain's). Only plain is the model's own decode: the other
points may change the answer, and their agreement says by how much.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdec.eval.benchmark import QuestionFileError, bench_path, load_questions, prompt_ids
from specdec.eval.report import write_json
from specdec.models.cli_args import AT_LEAST_1, NON_NEGATIVE, Option, Rule, UsageError, help_page, parse_options, run_cli, spec_rows
from specdec.models.base import DraftMismatchError
from specdec.models.diffusion import DiffusionTargetError, load_diffusion_target
from specdec.models.learn2pd import load_filter
from specdec.runtime.diffusion import BlockSchedule, LowConfidenceRemasking, agreement, block_decode, check_filter, end_of_text_ids, serving_threshold
from specdec.runtime.diffusion_cli import with_schedule

OPTIONS = {
    "diffusion": Option(str, None, doc="the masked-diffusion LM: the model/ folder `specdec-train recipe=diffusion_adapt` wrote, or a LLaDA / Dream checkpoint; required"),
    "filter": Option(str, None, doc="the filter/ folder `specdec-train recipe=learn2pd` wrote (unset: plain and eotp only)"),
    "filter_threshold": Option(float, None, Rule("within (0, 1)", lambda v: 0 < v < 1), "unmask a position when the filter's probability is above this (unset: the threshold saved with the filter)"),
    "trust_remote_code": Option(bool, False, doc="allow a LLaDA / Dream checkpoint's own modelling code to run (needed to load one)"),
    "bench": Option(str, "mt-bench", doc="questions: mt-bench (bundled) or a .jsonl file of {question_id, category, turns}"),
    "max_questions": Option(int, None, AT_LEAST_1, "evaluate at most this many questions (unset: all)"),
    "per_category": Option(int, None, AT_LEAST_1, "at most this many questions of each category (unset: all)"),
    "skip_questions": Option(int, 0, NON_NEGATIVE, "skip this many questions of the file first"),
    "gen_length": Option(int, 128, AT_LEAST_1, "answer positions (a multiple of block_length)"),
    "block_length": Option(int, 32, AT_LEAST_1, "positions per block"),
    "steps_per_block": Option(int, 32, AT_LEAST_1, "steps a block gets at most (plain decoding takes them all)"),
    "out": Option(str, None, doc="where the full result goes (unset: diffusion_<bench>.json)"),
    "threads": Option(int, None, AT_LEAST_1, "torch CPU threads (unset: torch's default)"),
    "progress": Option(bool, True, doc="show a progress bar over the questions"),
}
"""key -> Option(type, default, range, meaning)."""
USAGE = """usage: specdec-eval diffusion=DIR [filter=DIR] [bench=mt-bench|PATH.jsonl] [key=value ...]

Benchmarks block decoding of a masked-diffusion LM: plain low-confidence remasking, End-of-Text
Prediction, and with filter=DIR the Learn2PD filter alone and with End-of-Text Prediction; prints
the table and writes the full result (out). Points other than plain may change the answer: their
agreement with plain's answer is reported.
Exit codes: 0 ok, 1 a model, filter or question file that fails to load, 2 a bad command line."""
POINT_KEYS = ("forwards", "tokens", "tokens_per_forward", "wall_s", "speedup_vs_plain", "agreement", "identical")


def help_text() -> str:
    return help_page(USAGE, [("keys:", spec_rows(OPTIONS))])


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> options; diffusion= is required and the schedule must be consistent."""
    options = parse_options(argv, OPTIONS)
    if not options["diffusion"]:
        raise UsageError("diffusion=DIR is required (the masked-diffusion LM's folder)")
    return with_schedule(options)


def evaluate_diffusion(lm, tokenizer, questions: list[dict], schedule: BlockSchedule, filter_model=None, threshold: float | None = None, progress: bool = True) -> dict:
    """{setting, points: {name: overall}, questions: [per question per point]} (steps in the module docstring)."""
    eos = end_of_text_ids(tokenizer)
    check_filter(filter_model, schedule)
    points = {"plain": (None, False), "eotp": (None, True)}
    if filter_model is not None:
        points |= {"filter": (filter_model, False), "filter+eotp": (filter_model, True)}
    rows = []
    for question in tqdm(questions, desc="diffusion eval", unit="question", disable=not progress):
        ids = prompt_ids(tokenizer, question)[0].to(lm.device)
        results = {name: block_decode(lm, ids, schedule, LowConfidenceRemasking(schedule, model, threshold), eos, eotp=eotp) for name, (model, eotp) in points.items()}
        plain = results["plain"]
        rows.append({"question_id": question.get("question_id"), "category": question.get("category"), **{
            name: {"forwards": r.forwards, "tokens": len(r.tokens), "tokens_per_forward": r.tokens_per_forward, "wall_s": r.total_s,
                   "speedup_vs_plain": plain.total_s / max(r.total_s, 1e-9), "agreement": agreement(r.tokens, plain.tokens), "identical": r.tokens == plain.tokens,
                   "filter_unmasked": r.filter_unmasked, "eotp_filled": r.eotp_filled}
            for name, r in results.items()}})
    overall = {name: summarise([row[name] for row in rows]) for name in points}
    setting = {"gen_length": schedule.gen_length, "block_length": schedule.block_length, "steps_per_block": schedule.steps_per_block, "temperature": schedule.temperature,
               "filter_threshold": serving_threshold(filter_model, threshold), "num_questions": len(rows), "torch_threads": torch.get_num_threads(),
               "lossy": "every point but plain may change the answer: see agreement / identical"}
    return {"setting": setting, "points": overall, "questions": rows}


def summarise(records: list[dict]) -> dict:
    """Medians over questions (means too for forwards and tokens per forward; identical as a share)."""
    if not records:
        return {}
    median = lambda key: statistics.median(r[key] for r in records)  # noqa: E731
    return {
        "forwards": median("forwards"), "forwards_mean": statistics.fmean(r["forwards"] for r in records),
        "tokens_per_forward": median("tokens_per_forward"), "tokens_per_forward_mean": statistics.fmean(r["tokens_per_forward"] for r in records),
        "wall_s": median("wall_s"), "speedup_vs_plain": median("speedup_vs_plain"), "speedup_vs_plain_mean": statistics.fmean(r["speedup_vs_plain"] for r in records),
        "agreement": median("agreement"), "agreement_mean": statistics.fmean(r["agreement"] for r in records), "identical": statistics.fmean(float(r["identical"]) for r in records),
    }


def format_table(result: dict) -> str:
    lines = ["| point | forwards | tokens / forward | speedup_vs_plain | agreement | identical |", "|---|---|---|---|---|---|"]
    for name, p in result["points"].items():
        lines.append(f"| {name}{'' if name == 'plain' else ' *'} | {p['forwards']:.0f} | {p['tokens_per_forward']:.2f} | {p['speedup_vs_plain']:.2f}x | {p['agreement']:.3f} | {p['identical']:.0%} |")
    return "\n".join(lines) + "\n* may change the answer (agreement and identical are against plain)\n"


def run(options: dict) -> int:
    """Load, evaluate, report; returns the exit code."""
    # Step 1: questions, model and filter.
    try:
        bench_path(options["bench"])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    questions = load_questions(options["bench"], options["max_questions"], options["per_category"], options["skip_questions"])
    lm, tokenizer = load_diffusion_target(options["diffusion"], trust_remote_code=options["trust_remote_code"])
    filter_model = load_filter(options["filter"]) if options["filter"] else None
    # Step 2: the points, then the report.
    result = evaluate_diffusion(lm, tokenizer, questions, options["schedule"], filter_model, options["filter_threshold"], options["progress"])
    result["setting"].update(diffusion=options["diffusion"], filter=options["filter"], bench=str(options["bench"]))
    out = write_json(result, Path(options["out"] or f"diffusion_{Path(str(options['bench'])).stem}.json"))
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def main(argv: list[str]) -> int:
    """`specdec-eval` on a diffusion target (called by `specdec.eval.cli.main` when diffusion= is given)."""
    return run_cli("specdec-eval", argv, help_text, parse_args, run, (FileNotFoundError, DiffusionTargetError, DraftMismatchError, QuestionFileError))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
