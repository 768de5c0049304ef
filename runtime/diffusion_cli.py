"""`specdec-generate diffusion=DIR prompt="..." [filter=DIR] [eotp=true]`: answer one prompt with a
masked-diffusion LM by block decoding, streaming each block as it is decoded.

Plain low-confidence remasking (no filter, eotp=false) is the model's own decode; the Learn2PD filter
and End-of-Text Prediction save forwards but may change the answer, and the cost line says so.
"""

from __future__ import annotations

import json
import sys

import torch

from specdec.models.cli_args import AT_LEAST_1, NON_NEGATIVE, Option, Rule, UsageError, help_page, parse_options, run_cli, spec_rows
from specdec.models.diffusion import DiffusionTargetError, load_diffusion_target
from specdec.models.base import DraftMismatchError
from specdec.models.learn2pd import load_filter
from specdec.runtime.cli import StreamPrinter
from specdec.runtime.diffusion import BlockSchedule, LowConfidenceRemasking, block_decode, check_filter, end_of_text_ids

OPTIONS = {
    "diffusion": Option(str, None, doc="the masked-diffusion LM: the model/ folder `specdec-train recipe=diffusion_adapt` wrote, or a LLaDA / Dream checkpoint; required"),
    "prompt": Option(str, None, doc="the user message to answer (sent through the model's chat template); required"),
    "filter": Option(str, None, doc="the filter/ folder `specdec-train recipe=learn2pd` wrote: also unmask every position it calls final (may change the answer)"),
    "filter_threshold": Option(float, None, Rule("within (0, 1)", lambda v: 0 < v < 1), "unmask a position when the filter's probability is above this (unset: the threshold saved with the filter)"),
    "eotp": Option(bool, False, doc="End-of-Text Prediction: after a decoded end-of-text, every later position is end-of-text (saves the padding's steps; may change the answer)"),
    "trust_remote_code": Option(bool, False, doc="allow a LLaDA / Dream checkpoint's own modelling code to run (needed to load one)"),
    "gen_length": Option(int, 128, AT_LEAST_1, "answer positions (a multiple of block_length)"),
    "block_length": Option(int, 32, AT_LEAST_1, "positions per block"),
    "steps_per_block": Option(int, 32, AT_LEAST_1, "steps a block gets at most"),
    "temperature": Option(float, 0.0, NON_NEGATIVE, "0: greedy; above 0: Gumbel sampling at this temperature"),
    "seed": Option(int, 0, doc="random seed of the sampler (temperature > 0)"),
    "threads": Option(int, None, AT_LEAST_1, "torch CPU threads (unset: torch's default)"),
}
"""key -> Option(type, default, range, meaning)."""
USAGE = """usage: specdec-generate diffusion=DIR prompt=TEXT [filter=DIR] [eotp=true] [key=value ...]

Streams a masked-diffusion LM's answer to one prompt, block by block, then prints what it cost
(model forwards, tokens per forward, steps per block, wall time) as one JSON line on stderr.
Exit codes: 0 ok, 2 a bad command line, 1 a model or filter that fails to load."""


def help_text() -> str:
    return help_page(USAGE, [("keys:", spec_rows(OPTIONS))])


def parse(argv: list[str]) -> dict:
    """key=value words -> typed options; diffusion= and prompt= are required, the schedule must be consistent."""
    options = parse_options(argv, OPTIONS)
    if not options["diffusion"] or options["prompt"] is None:
        raise UsageError("diffusion= and prompt= are required (usage: specdec-generate diffusion=DIR prompt=TEXT [key=value ...]; specdec-generate diffusion= --help lists the keys)")
    return with_schedule(options)


def with_schedule(options: dict) -> dict:
    """The options with their block schedule under "schedule" (shared with `specdec-eval diffusion=`):
    an inconsistent schedule, or filter_threshold= without filter=, is a UsageError."""
    if options["filter_threshold"] is not None and not options["filter"]:
        raise UsageError("filter_threshold= is read only with filter=DIR: add the filter or drop filter_threshold=")
    try:
        options["schedule"] = BlockSchedule(options["gen_length"], options["block_length"], options["steps_per_block"], options.get("temperature", 0.0))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return options


def run(options: dict) -> int:
    """Load, stream the answer, print what it cost; returns the exit code."""
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    # Step 1: the model, its filter, the policy.
    lm, tokenizer = load_diffusion_target(options["diffusion"], trust_remote_code=options["trust_remote_code"])
    plan = options["schedule"]
    filter_model = load_filter(options["filter"]) if options["filter"] else None
    check_filter(filter_model, plan)
    policy = LowConfidenceRemasking(plan, filter_model, options["filter_threshold"])
    # Step 2: decode, printing each block's new text as it lands.
    ids = tokenizer.apply_chat_template([{"role": "user", "content": options["prompt"]}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"][0]
    printer = StreamPrinter(tokenizer)
    result = block_decode(lm, ids, plan, policy, end_of_text_ids(tokenizer), eotp=options["eotp"], seed=options["seed"], on_block=printer)
    # Step 3: what it cost.
    changes = [name for name, on in (("Learn2PD filter", filter_model is not None), ("End-of-Text Prediction", options["eotp"])) if on]
    stats = {
        "new_tokens": len(result.tokens),
        "forwards": result.forwards,
        "tokens_per_forward": round(result.tokens_per_forward, 3),
        "steps_by_block": result.steps_by_block,
        "filter_unmasked": result.filter_unmasked,
        "eotp_filled": result.eotp_filled,
        "wall_s": round(result.total_s, 3),
        "decoding": "low-confidence remasking" + (f" + {' + '.join(changes)} (may differ from plain remasking's answer)" if changes else " (the model's own decode)"),
    }
    print("\n" + json.dumps(stats), file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """`specdec-generate` on a diffusion target (called by `specdec.runtime.cli.main` when diffusion= is given)."""
    return run_cli("specdec-generate", argv, help_text, parse, run, (FileNotFoundError, DiffusionTargetError, DraftMismatchError))
