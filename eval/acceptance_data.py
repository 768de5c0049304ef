"""`specdec-acceptance-data draft=DIR out=DIR [prompts=sharegpt|gsm8k|PATH.jsonl] [key=value ...]`:
record what an acceptance head (learned draft length) learns from.

The draft decodes the prompts with the layout it will serve with, verified losslessly, and a
`RecordingVerifier` keeps, for every node of every proposal, its features and whether the target
accepted it given its parent (greedy: the target's argmax; sampling: min(1, p/q)). The records go
into one safetensors file beside a JSON card (`specdec.models.acceptance_data`), which
`specdec-train recipe=acceptance data.records=DIR` fits a head on.
"""

from __future__ import annotations

import sys
import time

import torch
from tqdm.auto import tqdm

from specdec.eval.benchmark import prompt_ids
from specdec.eval.judge_data import PROMPT_SOURCES, PromptFileError, command_line_inputs, require_folders
from specdec.models.acceptance_data import save_records
from specdec.models.base import load_draft
from specdec.models.cli_args import AT_LEAST_1, NON_NEGATIVE, Option, Rule, UsageError, help_page, parse_options, run_cli, spec_rows
from specdec.models.target import load_target
from specdec.runtime.draft_length import DraftLength, RecordingVerifier, check_draft_length
from specdec.runtime.generator import SpeculativeGenerator
from specdec.runtime.options import RUNTIME_ERRORS, SHARED_OPTIONS, draft_layout, target_source
from specdec.runtime.proposers import proposer_class
from specdec.runtime.verify import SamplingConfig, resolve_verifier

LAYOUT_KINDS = ("default", "chain")
"""Layouts a recording can use (record with the one the head will serve with)."""


def record_proposals(target, tokenizer, draft, layout, questions: list[dict], max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """({features, matched, ratio, step} of every node the draft proposed while decoding `questions`
    (MT-Bench-shaped records: `turns[0]` is the prompt) with `layout`, the proposer's description)."""
    sampling = SamplingConfig(temperature=temperature)
    recorder = RecordingVerifier(resolve_verifier("auto", sampling))
    generator = SpeculativeGenerator.from_draft(target, draft, layout, tokenizer=tokenizer, verifier=recorder)
    with torch.inference_mode():
        bar = tqdm(questions, desc="record proposals", unit="prompt", disable=not progress)
        for question in bar:
            generator.generate(prompt_ids(tokenizer, question).to(target.device), max_new_tokens, sampling, seed=seed)
            bar.set_postfix(nodes=sum(len(m) for m in recorder.records.matched))
    return recorder.records.tensors(), generator.proposer.describe()


OPTIONS = {
    "draft": Option(str, None, doc="the draft folder specdec-train wrote (<output_dir>/draft): Medusa, EAGLE-1/3 or Chimera; required"),
    "out": Option(str, None, doc="the records folder to write (acceptance_records.safetensors + .json); required"),
    "prompts": Option(str, "sharegpt", doc=f"{', '.join(PROMPT_SOURCES)} (files of ../shared/data) or a .jsonl of records with question, turns, prompt or conversations; use prompts you will not evaluate on"),
    "max_prompts": Option(int, 48, AT_LEAST_1, "decode at most this many prompts"),
    "skip_prompts": Option(int, 0, NON_NEGATIVE, "start after this many records of the prompts file"),
    "max_new_tokens": Option(int, 128, AT_LEAST_1, "tokens decoded per prompt"),
    "temperature": SHARED_OPTIONS["temperature"],
    "tree": Option(str, "default", Rule(f"one of {', '.join(LAYOUT_KINDS)}", lambda v: v in LAYOUT_KINDS), "layout: default (the draft type's tree) or chain; record with the layout the head will serve with"),
    **{key: SHARED_OPTIONS[key] for key in ("tree_size", "depth", "tree_top_k", "target", "seed", "threads")},
    "progress": Option(bool, True, doc="show a progress bar over the prompts (nodes so far in its postfix)"),
}
"""key -> Option(type, default, range, meaning)."""
USAGE = """usage: specdec-acceptance-data draft=DIR out=DIR [prompts=sharegpt|gsm8k|PATH.jsonl] [key=value ...]

Decodes the prompts with the draft (lossless verification) and records every drafted node's
features and whether the target accepted it given its parent, for an acceptance head
(specdec-train recipe=acceptance data.records=DIR; served with draft_length= and acceptance_head=).
Exit codes: 0 ok, 1 an input that fails (draft, target, prompts file), 2 a bad command line (an SDSAT draft too)."""


def help_text() -> str:
    """The usage and every key with its default and meaning."""
    return help_page(USAGE, [("keys:", spec_rows(OPTIONS))])


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> options with their defaults; draft and out are required."""
    options = parse_options(argv, OPTIONS)
    require_folders(options, "the records folder to write")
    return options


def run(options: dict) -> int:
    """Load, record, write; returns the exit code."""
    # Step 1: what the command line names must exist before anything loads.
    draft_dir, config, path, prompts = command_line_inputs(options)
    # Step 2: draft (SDSAT's fused proposals have no per-node distributions to record), target and layout.
    draft = load_draft(draft_dir)
    try:
        check_draft_length(proposer_class(draft.draft_type), DraftLength(0.0))
    except ValueError as exc:
        raise UsageError(f"{draft_dir}: nothing to record: {exc}") from None
    source = options["target"] or target_source(draft_dir, config)
    target = load_target(source)
    layout = draft_layout(draft, options["tree"], options)
    # Step 3: decode and record, then write the records and their card.
    start, cpu = time.perf_counter(), time.process_time()
    questions = [{"turns": [p.text]} for p in prompts]
    records, proposer = record_proposals(target.model, target.tokenizer, draft, layout, questions, options["max_new_tokens"], options["temperature"], options["seed"], options["progress"])
    card = {
        "target": source,
        "target_id": target.target_id,
        "draft": {"folder": str(draft_dir.resolve()), "draft_type": draft.draft_type},
        "proposer": proposer,
        "prompts": options["prompts"],
        "prompts_file": str(path.resolve()),
        "skip_prompts": options["skip_prompts"],
        "num_prompts": len(prompts),
        "max_new_tokens": options["max_new_tokens"],
        "temperature": options["temperature"],
        "seed": options["seed"],
        "label": "matched" if options["temperature"] == 0 else "ratio",
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }
    save_records(records, options["out"], card)
    rows = records["features"].shape[0]
    print(f"{rows} drafted nodes from {len(prompts)} prompts ({int(records['step'].unique().numel())} verification steps; {records['matched'].float().mean().item() if rows else 0:.3f} accepted given their parent) in {options['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-acceptance-data`."""
    return run_cli("specdec-acceptance-data", sys.argv[1:] if argv is None else argv, help_text, parse_args, run, (*RUNTIME_ERRORS, PromptFileError))


if __name__ == "__main__":
    sys.exit(main())
