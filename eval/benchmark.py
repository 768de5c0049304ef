"""The benchmark protocol of ../shared/BENCHMARK.md: questions in, per-question and summary metrics out.

For each question (first turn, chat template, batch 1) four decoders run in the same process:
plain greedy with the runtime's cache (`plain_generate`), Hugging Face `generate` (greedy),
Hugging Face prompt lookup (greedy) and the speculative generator. Metric names in the result
are those of BENCHMARK.md: `mean_accepted_tokens`, `acceptance_by_depth`, `tokens_per_s`,
`speedup_vs_plain`, `speedup_vs_hf_generate`, `speedup_vs_prompt_lookup`, `lossless_match`,
`ideal_speedup` (and `runtime_efficiency` = speedup_vs_plain / ideal_speedup). Every record and
summary also names the `verifier` and whether it is `lossless`; `lossless_match` is measured only
for a lossless verifier at temperature 0 (a lossy one is labelled "(lossy)").
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from tqdm.auto import tqdm

from specdec.models.base import DraftModel
from specdec.runtime.draft_length import DraftLength, find_draft_length
from specdec.runtime.generator import SpeculativeGenerator, default_eos_ids, plain_generate
from specdec.runtime.verify import AUTO, SamplingConfig, Verifier, resolve_verifier

BUNDLED_BENCHES = {"mt-bench": "mt_bench.jsonl", "mt_bench": "mt_bench.jsonl"}
"""Bench names accepted instead of a path -> file in specdec.data's assets folder."""
RATIO_METRICS = (
    "tokens_per_s",
    "plain_tokens_per_s",
    "hf_generate_tokens_per_s",
    "prompt_lookup_tokens_per_s",
    "speedup_vs_plain",
    "speedup_vs_hf_generate",
    "speedup_vs_prompt_lookup",
    "ideal_speedup",
    "runtime_efficiency",
)
"""Per-question numbers summarised by their median (under the name) and mean (`<name>_mean`)."""
TREE_KINDS = ("default", "chain", "tuned")
WARMUP_TOKENS = 8


def bench_path(path_or_name: str | Path) -> Path:
    """The question file for a path or a bundled bench name (`mt-bench`)."""
    if str(path_or_name) in BUNDLED_BENCHES:
        # specdec.data is located, not imported (eval must not import it).
        spec = importlib.util.find_spec("specdec.data")
        folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        for folder in folders:
            candidate = folder / "assets" / BUNDLED_BENCHES[str(path_or_name)]
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"the bundled {path_or_name} questions are missing from specdec.data/assets; reinstall specdec or pass bench=PATH.jsonl")
    path = Path(path_or_name)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist: pass bench=PATH.jsonl (MT-Bench shape: question_id, category, turns) or bench=mt-bench")
    return path


class QuestionFileError(ValueError):
    """A question file that cannot be read (not UTF-8, a line that is not JSON, no usable question)."""


def load_questions(path_or_name: str | Path, max_questions: int | None = None, per_category: int | None = None, skip: int = 0) -> list[dict]:
    """Questions of an MT-Bench-shaped JSONL file (`question_id`, `category`, `turns`): after the
    first `skip` usable records, the first `per_category` of each category (all by default), then
    the first `max_questions` of those. A GSM8K-shaped record (`question`, `answer`) is one turn of
    category `gsm8k` that keeps its `answer` (the outcome checkers read it).

    Records without a non-empty `turns` list are skipped with one warning that counts them;
    a file that is not UTF-8 or a line that is not JSON is a QuestionFileError naming the line.
    """
    path = bench_path(path_or_name)
    questions, skipped = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise QuestionFileError(f"{path} is not UTF-8 text (byte {exc.start + 1}): save it as UTF-8 JSON lines") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(f"{path}:{number} is not valid JSON ({exc.msg}); each line must be one question object") from exc
        if isinstance(record, dict) and isinstance(record.get("question"), str) and "turns" not in record:
            record = {"question_id": number, "category": "gsm8k", "turns": [record["question"]], "answer": record.get("answer")}
        turns = record.get("turns") if isinstance(record, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            skipped.append(number)
            continue
        if skip > 0:
            skip -= 1
            continue
        category = record.get("category", "all")
        if per_category is not None and sum(q["category"] == category for q in questions) >= per_category:
            continue
        question = {"question_id": record.get("question_id", number), "category": category, "turns": turns}
        questions.append(question | ({"answer": record["answer"]} if record.get("answer") is not None else {}))
        if max_questions is not None and len(questions) >= max_questions:
            break
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} record(s) without a `turns` list of strings at line(s) {', '.join(map(str, skipped[:10]))}", stacklevel=2)
    if not questions:
        raise QuestionFileError(f"{path} holds no usable question (each line needs `turns`: a list of strings)")
    return questions


def evaluate(
    target,
    tokenizer,
    draft: DraftModel,
    questions: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    layout=None,
    verifier: str | Verifier = AUTO,
    prompt_lookup_tokens: int = 10,
    lookup_branch: int = 0,
    lookup_ngram: int = 3,
    draft_length: DraftLength | None = None,
    baselines: bool = True,
    progress: bool = True,
    seed: int = 0,
    warmup: bool = True,
) -> dict[str, Any]:
    """Run the benchmark: per-question records, per-category and overall summaries, lossless failures.

    `baselines=False` skips the two Hugging Face baselines (plain greedy always runs: it is the
    lossless reference and the speedup denominator). `layout`: the draft proposer's options (see
    `choose_layout`; None: its default); `verifier`: a verifier name or object. With temperature > 0
    the speculative and plain decoders sample (seeded) and `lossless_match` is None, as it is for a
    lossy verifier. `lookup_branch` > 0 adds that many prompt-lookup tokens (suffix n-grams of up to
    `lookup_ngram`) to the draft's tree (`LookupBranchProposer`); each record then counts the
    `accepted_lookup_tokens` only the lookup proposed. `draft_length`: verify only the nodes likely to be
    accepted (`DraftLengthProposer`); each record then counts its `verified_nodes` and `drafted_nodes`.
    """
    # Step 1: one generator for all questions, and a short warm-up of every decoder.
    sampling = SamplingConfig(temperature=temperature)
    lookup = {"lookup_branch": lookup_branch, "lookup_ngram": lookup_ngram}
    generator = SpeculativeGenerator.from_draft(target, draft, layout, tokenizer=tokenizer, verifier=resolve_verifier(verifier, sampling), draft_length=draft_length, **lookup)
    eos = sorted(default_eos_ids(target, tokenizer))
    run = _runner(target, tokenizer, generator, sampling, eos, prompt_lookup_tokens, baselines, seed)
    with torch.inference_mode():
        if warmup:
            run(questions[0], min(WARMUP_TOKENS, max_new_tokens))
        # Step 2: time the four decoders on every question.
        records = [run(q, max_new_tokens) for q in tqdm(questions, desc="specdec-eval", unit="question", disable=not progress)]
    # Step 3: summaries per category (file order) and overall.
    categories = list(dict.fromkeys(r["category"] for r in records))
    failures = [{"question_id": r["question_id"], "first_mismatch": r["first_mismatch"]} for r in records if r["lossless_match"] == 0.0]
    return {
        "setting": _setting(target, generator, questions, max_new_tokens, temperature, prompt_lookup_tokens, baselines, seed),
        "questions": records,
        "categories": {c: summarize([r for r in records if r["category"] == c]) for c in categories},
        "overall": summarize(records),
        "lossless_failures": failures,
    }


def _runner(target, tokenizer, generator, sampling, eos, prompt_lookup_tokens, baselines, seed) -> Callable[[dict, int], dict]:
    """A function (question, max_new_tokens) -> that question's record."""
    device = target.device

    def run(question: dict, max_new_tokens: int) -> dict:
        ids = prompt_ids(tokenizer, question).to(device)
        plain, t_plain = _timed(lambda: plain_generate(target, ids, max_new_tokens, sampling=sampling, tokenizer=tokenizer, seed=seed), device)
        hf = pld = None
        if baselines:
            hf = _timed(lambda: _hf_generate(target, ids, max_new_tokens, eos, tokenizer), device)
            pld = _timed(lambda: _hf_generate(target, ids, max_new_tokens, eos, tokenizer, prompt_lookup_num_tokens=prompt_lookup_tokens), device)
        before = getattr(generator.proposer, "accepted_lookup_tokens", None)
        length = find_draft_length(generator.proposer)
        counted = (length.verified_nodes, length.drafted_nodes) if length is not None else None
        spec, t_spec = _timed(lambda: generator.generate(ids, max_new_tokens, sampling=sampling, seed=seed), device)
        record = question_record(question, spec, t_spec, plain, t_plain, hf, pld, lossless=spec.lossless and sampling.greedy)
        if before is not None:
            record["accepted_lookup_tokens"] = generator.proposer.accepted_lookup_tokens - before
        if counted is not None:
            record["verified_nodes"], record["drafted_nodes"] = length.verified_nodes - counted[0], length.drafted_nodes - counted[1]
        return record

    return run


def question_record(question: dict, spec, t_spec: float, plain, t_plain: float, hf: tuple | None, pld: tuple | None, lossless: bool) -> dict:
    """One question's metrics from the decoders' results and wall times (`hf`/`pld`: (tokens, seconds) or None);
    `lossless`: the speculative output must equal plain greedy's (measured as `lossless_match`)."""
    # Step 1: throughput of each decoder and the ratios between them.
    tps = _rate(spec.tokens, t_spec)
    plain_tps = _rate(plain.tokens, t_plain)
    hf_tps = _rate(*hf) if hf else None
    pld_tps = _rate(*pld) if pld else None
    # Step 2: the speedup the measured step times allow, and how much of it the runtime reaches.
    ideal = ideal_speedup(spec.mean_accepted_tokens, plain.step_s, spec.step_s, spec.draft_s)
    speedup = _ratio(tps, plain_tps)
    mismatch = first_mismatch(spec.tokens, plain.tokens)
    return {
        "question_id": question["question_id"],
        "category": question["category"],
        "new_tokens": len(spec.tokens),
        "plain_new_tokens": len(plain.tokens),
        "stop_reason": spec.stop_reason,
        "verifier": spec.verifier,
        "lossless": spec.lossless,
        "target_forwards": spec.target_forwards,
        "verify_steps": len(spec.step_s),
        "mean_accepted_tokens": spec.mean_accepted_tokens,
        "acceptance_by_depth": spec.acceptance_by_depth,
        "tokens_per_s": tps,
        "plain_tokens_per_s": plain_tps,
        "hf_generate_tokens_per_s": hf_tps,
        "prompt_lookup_tokens_per_s": pld_tps,
        "speedup_vs_plain": speedup,
        "speedup_vs_hf_generate": _ratio(tps, hf_tps),
        "speedup_vs_prompt_lookup": _ratio(tps, pld_tps),
        "ideal_speedup": ideal,
        "runtime_efficiency": _ratio(speedup, ideal),
        "lossless_match": (1.0 if mismatch is None else 0.0) if lossless else None,
        "first_mismatch": mismatch if lossless else None,
        "hf_generate_matches_plain": (hf[0] == plain.tokens) if hf else None,
    }


def summarize(records: list[dict]) -> dict[str, Any]:
    """Median (and `_mean`) of every per-question ratio; tau and acceptance weighted by forwards
    and steps (a depth a question's trees never reached counts as not accepted); `lossless_match`
    and `hf_generate_matches_plain` as fractions of questions; the verifier ("(lossy)" appended when lossy)."""
    lossless = all(r["lossless"] for r in records)
    verifiers = ", ".join(dict.fromkeys(r["verifier"] for r in records))
    summary: dict[str, Any] = {"num_questions": len(records), "new_tokens": sum(r["new_tokens"] for r in records)}
    summary |= {"verifier": verifiers + ("" if lossless else " (lossy)"), "lossless": lossless}
    # Step 1: per-question ratios -> median and mean.
    for name in RATIO_METRICS:
        values = [r[name] for r in records if r[name] is not None]
        summary[name] = statistics.median(values) if values else None
        summary[f"{name}_mean"] = statistics.fmean(values) if values else None
    # Step 2: tau = all tokens / all forwards; acceptance weighted by verification steps.
    summary["mean_accepted_tokens"] = summary["new_tokens"] / max(sum(r["target_forwards"] for r in records), 1)
    steps = sum(r["verify_steps"] for r in records)
    depth = max((len(r["acceptance_by_depth"]) for r in records), default=0)
    summary["acceptance_by_depth"] = [sum(_at(r["acceptance_by_depth"], d) * r["verify_steps"] for r in records) / max(steps, 1) for d in range(depth)]
    # Step 3: tokens only a lookup branch proposed, when one ran; match fractions (None when not measured).
    if records and all("accepted_lookup_tokens" in r for r in records):
        summary["accepted_lookup_tokens"] = sum(r["accepted_lookup_tokens"] for r in records)
    if records and all("verified_nodes" in r for r in records):
        summary["verified_nodes_per_step"] = sum(r["verified_nodes"] for r in records) / max(steps, 1)
        summary["drafted_nodes_per_step"] = sum(r["drafted_nodes"] for r in records) / max(steps, 1)
    for name in ("lossless_match", "hf_generate_matches_plain"):
        values = [float(r[name]) for r in records if r[name] is not None]
        summary[name] = statistics.fmean(values) if values else None
    return summary


def ideal_speedup(tau: float, plain_step_s: list[float], verify_step_s: list[float], draft_s: list[float]) -> float | None:
    """tau * t_plain_step / (t_verify_step + t_draft_step), each t the median of its timed steps;
    None when a decoder took no timed step."""
    if not (plain_step_s and verify_step_s and draft_s):
        return None
    return tau * statistics.median(plain_step_s) / (statistics.median(verify_step_s) + statistics.median(draft_s))


def first_mismatch(tokens: list[int], reference: list[int]) -> int | None:
    """First position where `tokens` differs from `reference` (a length difference counts); None if equal."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def prompt_ids(tokenizer, question: dict) -> torch.Tensor:
    """[1, T] ids of the question's first turn, chat template applied with the generation prompt."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question["turns"][0]}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def _hf_generate(target, ids: torch.Tensor, max_new_tokens: int, eos: list[int], tokenizer, **extra) -> list[int]:
    """New tokens of Hugging Face greedy `generate` (extra: e.g. prompt_lookup_num_tokens)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    out = target.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **extra
    )
    return out[0, ids.shape[1] :].tolist()


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), wall seconds), synchronising CUDA before each clock read."""
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return value, time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _at(values: list[float], index: int) -> float:
    """values[index], 0.0 past the end."""
    return values[index] if index < len(values) else 0.0


def _rate(tokens: list[int], seconds: float) -> float:
    return len(tokens) / seconds if seconds > 0 else 0.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _setting(target, generator, questions, max_new_tokens, temperature, prompt_lookup_tokens, baselines, seed) -> dict:
    """What was measured, where: enough to compare runs (the layout as the proposer describes itself)."""
    return {
        "num_questions": len(questions),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "prompt_lookup_tokens": prompt_lookup_tokens,
        "baselines": baselines,
        "seed": seed,
        **generator.proposer.describe(),
        **generator.verifier.describe(),
        "device": str(target.device),
        "dtype": str(target.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
