"""`specdec-learn2pd-data target=DIR out=DIR [prompts=sharegpt|gsm8k|PATH.jsonl] [key=value ...]`:
Learn2PD's oracle data for a masked-diffusion target.

Per prompt (chat template applied, first turn):
1. the reference: the target's own block decode, greedy, low-confidence remasking on the schedule;
2. the replay (`specdec.runtime.diffusion.OracleReplay`): every step unmasks exactly the masked
   positions whose prediction already equals the reference token, and records the block's
   confidences with those labels.
One shard per chunk of prompts (`specdec.models.learn2pd_data`), written atomically; a rerun with
the same settings skips the finished shards, other settings are refused.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdec.eval.judge_data import PROMPT_SOURCES, PromptFileError, load_prompts, prompts_path
from specdec.models.cli_args import AT_LEAST_1, NON_NEGATIVE, Option, UsageError, help_page, parse_options, run_cli, spec_rows
from specdec.models.diffusion import DiffusionTargetError, load_diffusion_target
from specdec.models.learn2pd_data import OracleDataError, read_card, shard_path, write_card, write_shard
from specdec.runtime.diffusion import BlockSchedule, LowConfidenceRemasking, OracleReplay, block_decode, end_of_text_ids

OPTIONS = {
    "target": Option(str, None, doc="the masked-diffusion LM: the model/ folder `specdec-train recipe=diffusion_adapt` wrote, or a LLaDA / Dream checkpoint; required"),
    "out": Option(str, None, doc="the oracle folder (shards + oracle_card.json); a rerun resumes it; required"),
    "trust_remote_code": Option(bool, False, doc="allow a LLaDA / Dream checkpoint's own modelling code to run (needed to load one)"),
    "prompts": Option(str, "sharegpt", doc=f"{', '.join(PROMPT_SOURCES)} (files of ../shared/data) or a .jsonl of records with question, turns, prompt or conversations"),
    "max_prompts": Option(int, 64, AT_LEAST_1, "replay at most this many prompts"),
    "skip_prompts": Option(int, 0, NON_NEGATIVE, "start after this many records of the prompts file"),
    "gen_length": Option(int, 128, AT_LEAST_1, "answer positions (a multiple of block_length)"),
    "block_length": Option(int, 32, AT_LEAST_1, "positions per block (the filter serves this block length)"),
    "steps_per_block": Option(int, 32, AT_LEAST_1, "the reference decode's steps per block"),
    "chunk_size": Option(int, 8, AT_LEAST_1, "prompts per shard (the unit of resumption)"),
    "threads": Option(int, None, AT_LEAST_1, "torch CPU threads (unset: torch's default)"),
    "progress": Option(bool, True, doc="show a progress bar over the prompts"),
}
"""key -> Option(type, default, range, meaning)."""
USAGE = """usage: specdec-learn2pd-data target=DIR out=DIR [prompts=sharegpt|gsm8k|PATH.jsonl] [key=value ...]

Decodes each prompt with the diffusion target (greedy, low-confidence remasking), then replays the
decode unmasking exactly the positions already equal to it, and records every step's block
confidences and labels for a Learn2PD filter (specdec-train recipe=learn2pd data.oracle=DIR).
Exit codes: 0 ok, 1 an input that fails (target, prompts file, a folder written with other settings), 2 a bad command line."""


def help_text() -> str:
    return help_page(USAGE, [("keys:", spec_rows(OPTIONS))])


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> options; target and out are required, the schedule must be consistent."""
    options = parse_options(argv, OPTIONS)
    for key in ("target", "out"):
        if not options[key]:
            raise UsageError(f"{key}=DIR is required (target: the diffusion LM folder; out: the oracle folder to write or resume)")
    try:
        BlockSchedule(options["gen_length"], options["block_length"], options["steps_per_block"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return options


def replay_prompt(lm, prompt_ids: torch.Tensor, schedule: BlockSchedule, eos: set[int]) -> tuple[dict[str, torch.Tensor], int, int]:
    """(the replay's rows, the reference decode's forwards, the oracle's forwards) for one prompt."""
    reference = block_decode(lm, prompt_ids, schedule, LowConfidenceRemasking(schedule), eos)
    oracle = OracleReplay(reference.positions, schedule.block_length)
    replay = block_decode(lm, prompt_ids, schedule, oracle, eos, write=oracle.write)
    rows = {"confidences": torch.stack(oracle.confidences), "labels": torch.stack(oracle.labels), "masked": torch.stack(oracle.masked).to(torch.uint8)}
    return rows, reference.forwards, replay.forwards


def run(options: dict) -> int:
    """Load, replay every missing chunk, report; returns the exit code."""
    # Step 1: the prompts and the folder's settings (a folder written with others is refused).
    try:
        path = prompts_path(options["prompts"])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    prompts = load_prompts(path, options["skip_prompts"], options["max_prompts"])
    schedule = BlockSchedule(options["gen_length"], options["block_length"], options["steps_per_block"])
    settings = {"target": options["target"], "prompts_file": str(path.resolve()), "skip_prompts": options["skip_prompts"], "chunk_size": options["chunk_size"],
                "gen_length": schedule.gen_length, "block_length": schedule.block_length, "steps_per_block": schedule.steps_per_block}
    card = read_card(options["out"])
    if card and card.get("settings") != settings:
        changed = sorted(k for k in settings if card.get("settings", {}).get(k) != settings[k])
        raise OracleDataError(f"{options['out']} was written with other settings ({', '.join(changed)}): rerun with its settings to resume, or choose another out=")
    # Step 2: the target.
    lm, tokenizer = load_diffusion_target(options["target"], trust_remote_code=options["trust_remote_code"])
    eos = end_of_text_ids(tokenizer)
    counts = card.get("counts", {"prompts": 0, "steps": 0, "reference_forwards": 0, "oracle_forwards": 0, "wall_s": 0.0})
    # Step 3: each missing chunk, one shard, the card rewritten after it.
    chunks = [prompts[i : i + options["chunk_size"]] for i in range(0, len(prompts), options["chunk_size"])]
    Path(options["out"]).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(prompts), desc="specdec-learn2pd-data", unit="prompt", disable=not options["progress"])
    for index, chunk in enumerate(chunks):
        if shard_path(options["out"], index).is_file():
            bar.update(len(chunk))
            continue
        start, parts = time.perf_counter(), []
        for prompt in chunk:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], add_generation_prompt=True, return_dict=True, return_tensors="pt")["input_ids"][0]
            rows, reference, oracle = replay_prompt(lm, ids, schedule, eos)
            parts.append(rows | {"prompt_index": torch.full((rows["labels"].shape[0],), prompt.index, dtype=torch.long)})
            counts["prompts"] += 1
            counts["steps"] += rows["labels"].shape[0]
            counts["reference_forwards"] += reference
            counts["oracle_forwards"] += oracle
            bar.update(1)
        write_shard(shard_path(options["out"], index), {c: torch.cat([p[c] for p in parts]) for c in parts[0]})
        counts["wall_s"] = round(counts["wall_s"] + time.perf_counter() - start, 1)
        write_card(options["out"], {"settings": settings, "counts": counts, "mask_token_id": lm.config.mask_token_id})
    bar.close()
    print(f"{counts['steps']} oracle steps from {counts['prompts']} prompts in {options['out']}: the oracle needs {counts['oracle_forwards']} forwards where the reference took {counts['reference_forwards']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-learn2pd-data`."""
    return run_cli("specdec-learn2pd-data", sys.argv[1:] if argv is None else argv, help_text, parse_args, run, (FileNotFoundError, PromptFileError, DiffusionTargetError, OracleDataError))


if __name__ == "__main__":
    sys.exit(main())
