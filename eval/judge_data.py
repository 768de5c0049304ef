"""`specdec-judge-data draft=DIR prompts=gsm8k|sharegpt|PATH out=DIR checker=math|code|general`:
AutoJudge's label mining (Garipov et al., 2025) for any trained draft (Medusa, EAGLE-1/3, Chimera).

Per prompt (chat template applied, first turn):
1. R = the target's greedy answer (`plain_generate`, up to `max_new_tokens`); the current response S = R.
2. From response position 1 on (position 0 is the target's prefill token, never drafted), find
   the first j where the draft's top token d, teacher-forced on S, differs from S[j]
   (`runtime.teacher`: one target forward over prompt + S, the draft driven as the decode loop drives it).
3. The label's feature is the target's last hidden state at d's position for the input
   prompt + S[:j] + [d], computed as the verification forward computes it: the block [S[j-1], d]
   over the KV cache of prompt + S[:j-1] (kept from the teacher-forcing forward, so a label costs a
   two-token forward); the same forward gives the target's probability of d at j.
4. p(d) < `low_prob`: important, rule `low_prob`, no search. Else the target regenerates greedily
   from prompt + S[:j] + [d] (`SpeculativeGenerator` with a `ReferenceLookupProposer` copying from
   S and the greedy verifier: plain greedy output, in few forwards once it rejoins S), for the rest
   of `max_new_tokens` or only the checker's `max_regen_tokens`, and the checker compares the
   candidate S[:j] + [d] + regenerated with the ORIGINAL R (a checker that `judges_locally`,
   `general`, with S: its rule reads the continuation right after the first difference). Same
   outcome: unimportant (0), S becomes the candidate (completed to the full answer when the
   checker saw only part of it); else important (1), S unchanged.
5. Continue from j+1 to the end of S.

Output (`specdec.models.judge_data`): one shard per chunk of `chunk_size` prompts, each written
atomically; a rerun skips the shards that exist (resumable). The data card is rewritten after
each shard; its `settings` are the cache key: a folder whose card has other settings is refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from specdec.eval.benchmark import prompt_ids
from specdec.eval.checkers import CHECKERS, CheckerError, OutcomeChecker, build_checker
from specdec.models.base import atomic_write, final_hidden_states, lm_head_weight, load_draft, specdec_version
from specdec.models.cli_args import AT_LEAST_1, NON_NEGATIVE, Option, Rule, UsageError, did_you_mean, help_page, parse_options, run_cli, spec_rows
from specdec.models.decoder import additive
from specdec.models.judge_data import DATA_CARD, LABEL_FIELDS, SHARD_GLOB, JudgeDataError, read_shard, shard_path, shard_prompts, write_shard
from specdec.models.target import load_target
from specdec.runtime.generator import SpeculativeGenerator, default_eos_ids, plain_generate
from specdec.runtime.lookup import ReferenceLookupProposer
from specdec.runtime.options import RUNTIME_ERRORS, SHARED_OPTIONS, draft_folder, target_source
from specdec.runtime.teacher import UnsupportedDraftError, mismatches, teacher_predictions, teacher_proposer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The project's data folder next to the repository (../shared/data), where the named prompt sources live."""
PROMPT_SOURCES = {"gsm8k": "train/gsm8k_train.jsonl", "sharegpt": "train/sharegpt_smollm2_selfdistill.jsonl"}
"""Prompt source names accepted instead of a path -> file under SHARED_DATA."""
LOOKUP_TOKENS = 10
"""Tokens the reference lookup drafts per regeneration step (speed only: the output is plain greedy either way)."""


class PromptFileError(ValueError):
    """A prompts file that cannot be read (not UTF-8, a line that is not JSON or holds no prompt), named with its line."""


class MiningSettingsError(ValueError):
    """A label folder that was mined with other settings (or whose shards have no data card)."""


@dataclass
class MinedPrompt:
    """One prompt of the mined slice."""

    index: int
    """Its index among the usable records of the prompts source (the labels' `prompt_index`)."""
    record: dict
    """The source record as read (checkers read its `answer` or `tests`)."""
    text: str
    """The user message answered (first turn)."""


@dataclass
class PromptLabels:
    """What mining one prompt found."""

    prompt: list[int]
    """The prompt's token ids (chat template applied)."""
    reference: list[int]
    """R: the target's greedy answer."""
    response: list[int]
    """S at the end: R with every unimportant substitution kept (and the target's continuation after it)."""
    features: torch.Tensor
    """[n, H] the target's last hidden state at each label's draft token."""
    records: list[dict]
    """[n] the label records (`LABEL_FIELDS`)."""


class LabelMiner:
    """AutoJudge's label mining for one draft against its target (steps in the module docstring)."""

    def __init__(self, target, tokenizer, draft, checker: OutcomeChecker, max_new_tokens: int = 192, low_prob: float = 0.01):
        self.target, self.tokenizer, self.checker = target, tokenizer, checker
        self.max_new_tokens, self.low_prob = max_new_tokens, low_prob
        self.weight = lm_head_weight(target)
        self.eos = default_eos_ids(target, tokenizer)
        self.draft_type = draft.draft_type
        self.proposer = teacher_proposer(target, draft)
        # A draft that cannot be teacher-forced (SDSAT) fails here, on a 3-token probe, before any mining.
        next(teacher_predictions(target, self.proposer, torch.zeros(3, dtype=torch.long, device=self.weight.device), 1), None)

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    def describe(self) -> dict:
        """The settings that decide the labels (part of a label folder's cache key)."""
        return {
            "draft_type": self.draft_type,
            "proposer": self.proposer.describe(),
            "checker": self.checker.describe(),
            "max_new_tokens": self.max_new_tokens,
            "low_prob": self.low_prob,
        }

    @torch.no_grad()
    def mine(self, prompt_index: int, record: dict, text: str) -> PromptLabels:
        """Every label of one prompt, in response order."""
        prompt = prompt_ids(self.tokenizer, {"turns": [text]})[0].tolist()
        # Step 1: the target's greedy answer R; the current response S starts as R.
        reference = plain_generate(self.target, self._ids(prompt), self.max_new_tokens, eos_token_ids=self.eos).tokens
        response, features, records = list(reference), [], []
        position = 1
        # Step 2: label the mismatches in order; an unimportant one rewrites S after it, so the draft is replayed from there.
        while position < len(response):
            cache = DynamicCache(config=self.target.config)
            for j, token in mismatches(self.target, self.proposer, self._ids(prompt + response)[0], len(prompt), len(prompt) + position, cache):
                feature, label, rewritten = self._label(prompt_index, record, prompt, reference, response, j - len(prompt), token, cache)
                features.append(feature)
                records.append(label)
                position = j - len(prompt) + 1
                if rewritten is not None:
                    response = rewritten
                    break
            else:
                break
        stacked = torch.stack(features) if features else torch.zeros(0, self.hidden_size)
        return PromptLabels(prompt, reference, response, stacked.float().cpu(), records)

    def _label(self, prompt_index, record, prompt, reference, response, position, token, cache) -> tuple[torch.Tensor, dict, list[int] | None]:
        """(feature, label record, the new response when the substitution is kept, else None) for draft
        `token` at `position`; `cache` holds the target's KV entries of prompt + S."""
        # Step 1: the verification block [S[j-1], d] over the cached prompt + S[:j-1]: p(d) at j and the state at d.
        sequence = prompt + response[:position] + [token]
        hidden = self._verify_block(cache, sequence[-2:], len(sequence) - 2)
        p_target = float(torch.softmax((hidden[0] @ self.weight.T).float(), dim=-1)[token])
        values = {"prompt_index": prompt_index, "position": position, "draft_token": token, "target_token": response[position], "p_target": p_target, "checker": self.checker.name}
        # Step 2: under the probability floor: important without a search.
        if p_target < self.low_prob:
            return hidden[-1], _record(values, "low_prob", important=True), None
        # Step 3: the target's continuation after d, as much as the checker reads, and the checker's verdict.
        rest = self.max_new_tokens - (position + 1)
        budget = rest if self.checker.max_regen_tokens is None else min(rest, self.checker.max_regen_tokens)
        candidate = response[:position] + [token] + self._continue(sequence, budget, prompt + response)
        compared = response if self.checker.judges_locally else reference
        same = self.checker.same_outcome(record, self._text(compared), self._text(candidate))
        if not same:
            return hidden[-1], _record(values, "search", important=True), None
        # Step 4: kept: S becomes the candidate, completed to a whole answer.
        rewritten = candidate + self._continue(prompt + candidate, self.max_new_tokens - len(candidate), prompt + response)
        return hidden[-1], _record(values, "search", important=False), rewritten

    def _verify_block(self, cache, tokens: list[int], past: int) -> torch.Tensor:
        """The target's last hidden states [2, H] of `tokens` placed at positions past, past+1 after
        the first `past` entries of `cache` (its later entries hidden; the block's own are dropped afterwards):
        one forward of two tokens, the same states as a forward over the whole sequence."""
        length = cache.get_seq_length()
        visible = torch.zeros(2, length + 2, dtype=torch.bool, device=self.weight.device)
        visible[:, :past] = True
        visible[:, length:] = torch.ones(2, 2, dtype=torch.bool, device=self.weight.device).tril()
        mask = additive(visible, self.weight.dtype)[None, None]
        positions = torch.arange(past, past + 2, device=self.weight.device)[None]
        hidden = final_hidden_states(self.target, self._ids(tokens), attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)[0]
        cache.crop(-2)
        return hidden

    def _continue(self, sequence: list[int], budget: int, reference: list[int]) -> list[int]:
        """The target's greedy continuation of `sequence` (up to `budget` tokens; none after an EOS), drafted by lookup in `reference`."""
        if budget <= 0 or sequence[-1] in self.eos:
            return []
        generator = SpeculativeGenerator(self.target, ReferenceLookupProposer(reference, LOOKUP_TOKENS), eos_token_ids=self.eos, verifier="greedy")
        return generator.generate(self._ids(sequence), budget).tokens

    def _ids(self, tokens: list[int]) -> torch.Tensor:
        return torch.tensor([tokens], device=self.weight.device)

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def _record(values: dict, rule: str, important: bool) -> dict:
    """A label record with exactly the LABEL_FIELDS, in their order."""
    values = values | {"rule": rule, "important": int(important)}
    return {key: values[key] for key in LABEL_FIELDS}


def mine_folder(miner: LabelMiner, prompts: list[MinedPrompt], out: str | os.PathLike, settings: dict, chunk_size: int = 8, progress: bool = True) -> dict:
    """Mine every chunk of `chunk_size` prompts that no shard in `out` covers exactly yet (a shard of a
    shorter last chunk is mined again in full); returns the data card.

    `settings` (the target, the draft folder, the prompts source and slice: what the caller
    knows) join the miner's own and `chunk_size` as the folder's cache key."""
    out = Path(out)
    settings = json.loads(json.dumps(settings | {"chunk_size": chunk_size} | miner.describe()))
    # Step 1: a folder mined with other settings is refused; one mined with these resumes.
    previous = _existing_card(out, settings)
    chunks = [prompts[i : i + chunk_size] for i in range(0, len(prompts), chunk_size)]
    finished = {i for i, chunk in enumerate(chunks) if shard_prompts(shard_path(out, i)) == (chunk[0].index, len(chunk))}
    # Step 2: the finished shards' labels count; the card is written before any mining.
    tally = _Tally.of(record for i in sorted(finished) for record in read_shard(shard_path(out, i))[3])
    tally.prompts, tally.shards = sum(len(chunks[i]) for i in finished), len(finished)
    tally.wall_s, tally.cpu_s = previous.get("mining_wall_s", 0.0), previous.get("mining_cpu_s", 0.0)
    out.mkdir(parents=True, exist_ok=True)
    _write_card(out, settings, tally)
    # Step 3: mine the missing chunks, one shard each, the card rewritten after every shard.
    bar = tqdm(total=len(prompts), initial=tally.prompts, desc="specdec-judge-data", unit="prompt", disable=not progress)
    with bar:
        bar.set_postfix(tally.postfix())
        for index, chunk in enumerate(chunks):
            if index in finished:
                continue
            wall, cpu = time.perf_counter(), _cpu_s()
            mined = []
            for prompt in chunk:
                mined.append(miner.mine(prompt.index, prompt.record, prompt.text))
                tally.add(mined[-1].records)
                bar.update(1)
                bar.set_postfix(tally.postfix())
            records = [r for m in mined for r in m.records]
            write_shard(shard_path(out, index), torch.cat([m.features for m in mined]), records, (chunk[0].index, len(chunk)))
            tally.prompts, tally.shards = tally.prompts + len(chunk), tally.shards + 1
            tally.wall_s, tally.cpu_s = tally.wall_s + time.perf_counter() - wall, tally.cpu_s + _cpu_s() - cpu
            _write_card(out, settings, tally)
    return json.loads((out / DATA_CARD).read_text())


@dataclass
class _Tally:
    """Running counts of a label folder."""

    important: int = 0
    """Labels that change the outcome (low_prob ones included)."""
    unimportant: int = 0
    """Labels that do not."""
    low_prob: int = 0
    """Important labels decided by the probability floor, without a search."""
    prompts: int = 0
    """Prompts mined into finished shards."""
    shards: int = 0
    """Finished shards."""
    wall_s: float = 0.0
    """Wall seconds of mining, over every run into the folder."""
    cpu_s: float = 0.0
    """CPU seconds of mining (the code checker's runs included), over every run."""

    @classmethod
    def of(cls, records: Iterable[dict]) -> "_Tally":
        tally = cls()
        tally.add(records)
        return tally

    def add(self, records: Iterable[dict]) -> None:
        for record in records:
            self.important += int(record["important"])
            self.unimportant += 1 - int(record["important"])
            self.low_prob += record["rule"] == "low_prob"

    def postfix(self) -> dict:
        return {"important": self.important, "unimportant": self.unimportant, "low_prob": self.low_prob}


def _existing_card(out: Path, settings: dict) -> dict:
    """The folder's card when it was mined with `settings` ({} for a new folder); other settings are a MiningSettingsError."""
    path = out / DATA_CARD
    if not path.is_file():
        if out.is_dir() and any(out.glob(SHARD_GLOB)):
            raise MiningSettingsError(f"{out} holds label shards but no {DATA_CARD}, so the settings that mined them are unknown: delete the shards or choose another out=")
        return {}
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MiningSettingsError(f"{path} is not valid JSON ({exc.msg}): delete the folder or choose another out=") from None
    old = card.get("settings", {}) if isinstance(card, dict) else {}
    if old != settings:
        changed = sorted(k for k in old.keys() | settings.keys() if old.get(k) != settings.get(k))
        details = "; ".join(f"{k}: folder {json.dumps(old.get(k))}, now {json.dumps(settings.get(k))}" for k in changed)
        raise MiningSettingsError(f"{out} was mined with other settings ({details}): rerun with the folder's settings to resume, or choose another out=")
    return card


def _write_card(out: Path, settings: dict, tally: _Tally) -> None:
    card = {
        "settings": settings,
        "counts": {
            "labels": tally.important + tally.unimportant,
            "important": tally.important,
            "unimportant": tally.unimportant,
            "low_prob": tally.low_prob,
            "prompts": tally.prompts,
            "shards": tally.shards,
        },
        "counts_note": "important includes the low_prob labels (important without a search)",
        "mining_wall_s": tally.wall_s,
        "mining_cpu_s": tally.cpu_s,
        "feature": "target_hidden: the target's last hidden state at the draft token's position for the input prompt + response[:position] + [draft_token]",
        "label_fields": LABEL_FIELDS,
        "specdec_version": specdec_version(),
    }
    atomic_write(out / DATA_CARD, lambda p: Path(p).write_text(json.dumps(card, indent=2) + "\n"))


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the code checker's runs)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def prompts_path(name_or_path: str) -> Path:
    """The prompts file for a source name (`gsm8k`, `sharegpt`: files of ../shared/data) or a path; missing: FileNotFoundError."""
    if name_or_path in PROMPT_SOURCES:
        path = SHARED_DATA / PROMPT_SOURCES[name_or_path]
        if not path.is_file():
            raise FileNotFoundError(f"the {name_or_path} prompts ({path}, the project's shared/data next to the repository) are not here: pass prompts=PATH.jsonl")
        return path
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist: pass prompts={'|'.join(PROMPT_SOURCES)} or a .jsonl of records with question, turns, prompt or conversations")
    return path


def load_prompts(path: str | os.PathLike, skip: int = 0, max_prompts: int | None = None) -> list[MinedPrompt]:
    """The slice of a JSONL prompts file after `skip` records, at most `max_prompts` (read only as far as needed).

    A record's prompt is its `question` (GSM8K), `turns[0]` (MT-Bench), `prompt`, or the first
    human/user turn of its `conversations` (ShareGPT); a line that is not JSON or has none of
    them is a PromptFileError naming the line."""
    path, prompts, index = Path(path), [], 0
    with path.open(encoding="utf-8") as handle:
        for number, line in _numbered_lines(handle, path):
            if max_prompts is not None and len(prompts) >= max_prompts:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path}:{number} is not valid JSON ({exc.msg}): each line must be one prompt record") from None
            text = prompt_text(record)
            if text is None:
                raise PromptFileError(f"{path}:{number} holds no prompt: a record needs `question`, `turns`, `prompt` or `conversations` (a list of turns with a human/user one)")
            if index >= skip:
                prompts.append(MinedPrompt(index, record, text))
            index += 1
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts after skip_prompts={skip} ({index} usable records)")
    return prompts


def _numbered_lines(handle, path: Path):
    """(line number, line) of a text file, a non-UTF-8 line being a PromptFileError naming it."""
    number = 0
    try:
        for number, line in enumerate(handle, start=1):
            yield number, line
    except UnicodeDecodeError:
        raise PromptFileError(f"{path}:{number + 1} is not UTF-8 text: save the file as UTF-8 JSON lines") from None


def prompt_text(record) -> str | None:
    """The user message of a prompt record (see `load_prompts`), or None."""
    if not isinstance(record, dict):
        return None
    for key in ("question", "prompt"):
        if isinstance(record.get(key), str) and record[key].strip():
            return record[key]
    turns = record.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return turns[0]
    for turn in record.get("conversations") or []:
        if isinstance(turn, dict) and (turn.get("from") or turn.get("role")) in ("human", "user"):
            text = turn.get("value", turn.get("content"))
            return text if isinstance(text, str) else None
    return None


OPTIONS = {
    "draft": Option(str, None, doc="the draft folder specdec-train wrote (<output_dir>/draft): Medusa, EAGLE-1/3 or Chimera; required"),
    "prompts": Option(str, "gsm8k", doc=f"{', '.join(PROMPT_SOURCES)} (files of ../shared/data) or a .jsonl of records with question, turns, prompt or conversations"),
    "out": Option(str, None, doc="the label folder (shards + data_card.json); a rerun resumes it; required"),
    "checker": Option(str, "math", doc=f"outcome checker: {', '.join(CHECKERS)}"),
    "max_prompts": Option(int, None, AT_LEAST_1, "mine at most this many prompts (unset: all)"),
    "skip_prompts": Option(int, 0, NON_NEGATIVE, "start after this many records of the prompts file"),
    "max_new_tokens": Option(int, 192, AT_LEAST_1, "tokens of the target's answer R (and of every regenerated answer)"),
    "low_prob": Option(float, 0.01, Rule("within [0, 1]", lambda v: 0 <= v <= 1), "a draft token the target gives less probability is important without a search (0: always search)"),
    "chunk_size": Option(int, 8, AT_LEAST_1, "prompts per shard (the unit of resumption)"),
    "timeout_s": Option(float, 5.0, Rule("above 0", lambda v: v > 0), "checker=code: seconds one test run may take"),
    "rejoin_tokens": Option(int, 8, NON_NEGATIVE, "checker=general: tokens after the substitution within which the answer must rejoin"),
    "window": Option(int, 4, AT_LEAST_1, "checker=general: consecutive tokens that must match the reference to rejoin"),
    "max_shift": Option(int, 4, NON_NEGATIVE, "checker=general: how far (tokens) the rejoined stretch may sit from the reference's"),
    "target": SHARED_OPTIONS["target"],
    "threads": SHARED_OPTIONS["threads"],
    "progress": Option(bool, True, doc="show a progress bar over the prompts (labels so far in its postfix)"),
}
"""key -> Option(type, default, range, meaning)."""
USAGE = """usage: specdec-judge-data draft=DIR out=DIR [prompts=gsm8k|sharegpt|PATH.jsonl] [checker=math|code|general] [key=value ...]

Mines AutoJudge labels: at every mismatch between the draft's top token (teacher-forced on the
target's greedy answer) and the target's, the target regenerates after the draft's token and the
checker says whether the outcome changed (important) or not. Writes label shards and a data card
into out (read by recipe=judge); a rerun with the same settings resumes.
Exit codes: 0 ok, 1 an input that fails (draft, target, prompts file, a folder mined with other
settings, an SDSAT draft), 2 a bad command line."""


def help_text() -> str:
    """The usage and every key with its default and meaning."""
    return help_page(USAGE, [("keys:", spec_rows(OPTIONS))])


def require_folders(options: dict, out_meaning: str) -> None:
    """A command line over a draft's prompts needs draft=DIR and out=DIR (UsageError naming the missing one)."""
    for key, meaning in (("draft", "the draft/ folder that specdec-train wrote"), ("out", out_meaning)):
        if not options[key]:
            raise UsageError(f"{key}=DIR is required ({meaning})")


def command_line_inputs(options: dict) -> tuple[Path, dict, Path, list[MinedPrompt]]:
    """(draft folder, its config.json, prompts file, the prompts slice) that the options name, checked
    before anything loads (a missing draft or prompts file is a UsageError); sets the torch threads."""
    draft_dir, config = draft_folder(options["draft"])
    try:
        path = prompts_path(options["prompts"])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    return draft_dir, config, path, load_prompts(path, options["skip_prompts"], options["max_prompts"])


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> options with their defaults; draft and out are required, the checker must exist."""
    options = parse_options(argv, OPTIONS)
    require_folders(options, "the label folder to write or resume")
    if options["checker"] not in CHECKERS:
        raise UsageError(f"unknown checker `{options['checker']}`: choose one of {', '.join(CHECKERS)}.{did_you_mean(options['checker'], CHECKERS)}")
    return options


def run(options: dict) -> int:
    """Load, mine, report; returns the exit code."""
    # Step 1: what the command line names must exist before anything loads.
    draft_dir, config, path, prompts = command_line_inputs(options)
    # Step 2: draft, target, checker and miner (an SDSAT draft fails here).
    draft = load_draft(draft_dir)
    source = options["target"] or target_source(draft_dir, config)
    target = load_target(source)
    checker_settings = {key: options[key] for key in ("timeout_s", "rejoin_tokens", "window", "max_shift")}
    checker = build_checker(options["checker"], **checker_settings, tokenize=lambda text: target.tokenizer.encode(text, add_special_tokens=False))
    miner = LabelMiner(target.model, target.tokenizer, draft, checker, options["max_new_tokens"], options["low_prob"])
    # Step 3: mine into the folder (resuming it) and report.
    settings = {
        "target": source,
        "target_id": target.target_id,
        "draft": str(draft_dir.resolve()),
        "prompts": options["prompts"],
        "prompts_file": str(path.resolve()),
        "skip_prompts": options["skip_prompts"],
    }
    card = mine_folder(miner, prompts, options["out"], settings, options["chunk_size"], options["progress"])
    counts = card["counts"]
    print(f"{counts['labels']} labels from {counts['prompts']} prompts ({counts['important']} important, {counts['low_prob']} of them low_prob; {counts['unimportant']} unimportant) in {options['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-judge-data`."""
    failures = (*RUNTIME_ERRORS, PromptFileError, MiningSettingsError, UnsupportedDraftError, CheckerError, JudgeDataError)
    return run_cli("specdec-judge-data", sys.argv[1:] if argv is None else argv, help_text, parse_args, run, failures)


if __name__ == "__main__":
    sys.exit(main())
