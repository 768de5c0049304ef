"""Lossy verification against answer quality: exact verification, judge thresholds and the
training-free rules on the same questions, each point with its tau, speedups and quality.

Every point except `exact` is LOSSY (its output is not the target's own greedy answer), and the
result says so per point. Per question, plain greedy decoding runs once (the reference and the
speedup denominator; the two Hugging Face baselines once too, when asked), then every point.
Quality per point, against the target's own greedy answer:
- `identical_to_plain`: share of answers equal to plain greedy token for token;
- `outcome_match`: share whose outcome the checker finds unchanged (e.g. the final number of a
  GSM8K answer; only with a checker);
- `mean_logprob` / `logprob_vs_plain`: the target's mean log-probability per token of the answer
  given the prompt, and its difference to plain greedy's (the open-chat measure: 0 = as likely).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from specdec.eval.benchmark import _hf_generate, _timed, prompt_ids, question_record, summarize
from specdec.models.base import final_hidden_states, lm_head_weight
from specdec.runtime.generator import SpeculativeGenerator, default_eos_ids, plain_generate
from specdec.runtime.judge_verifier import JudgeVerifier, KLVerifier, TopKVerifier
from specdec.runtime.verify import GreedyVerifier, Verifier

TRAINING_FREE = {"topk": (TopKVerifier, int), "kl": (KLVerifier, float)}
"""Training-free rule name -> (verifier class, type of its one setting), as in `topk:2` or `kl:0.5`."""


@dataclass
class SweepPoint:
    """One verification rule of the sweep."""

    label: str
    """Name in tables and plots (`exact`, `judge@0.3`, `topk:2`, `kl:0.5`)."""
    verifier: Verifier
    """The rule itself."""


def sweep_points(judge=None, thresholds=(), training_free=()) -> list[SweepPoint]:
    """`exact` first, then the judge at each threshold, then each training-free rule (`topk:K`, `kl:T`);
    a malformed rule or a repeated point raises ValueError."""
    # Step 1: the points in order.
    points = [SweepPoint("exact", GreedyVerifier())]
    points += [SweepPoint(f"judge@{t:g}", JudgeVerifier(judge, t)) for t in thresholds]
    for spec in training_free:
        name, _, value = spec.partition(":")
        if name not in TRAINING_FREE or not value:
            raise ValueError(f"unknown training-free rule {spec!r}: write topk:K (accept the target's top-K) or kl:T (accept when KL(draft || target) < T)")
        cls, kind = TRAINING_FREE[name]
        try:
            setting = kind(value)
        except ValueError:
            raise ValueError(f"training-free rule {spec!r}: {name} takes {'an integer' if kind is int else 'a number'}, as in {name}:{'2' if kind is int else '0.5'}") from None
        points.append(SweepPoint(f"{name}:{value}", cls(setting)))
    # Step 2: every label once (a repeated point would merge two runs into one summary).
    labels = [p.label for p in points]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the sweep repeats {', '.join(sorted({l for l in labels if labels.count(l) > 1}))}: list every threshold and rule once")
    return points


def run_sweep(
    target,
    tokenizer,
    draft,
    questions: list[dict],
    points: list[SweepPoint],
    layout=None,
    max_new_tokens: int = 256,
    checker=None,
    baselines: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Every point on every question (greedy). `checker`: an outcome checker (`same_outcome(question,
    reference_text, candidate_text)`) or None; `baselines`: also time HF generate and prompt lookup."""
    # Step 1: one generator; the points swap its verifier.
    generator = SpeculativeGenerator.from_draft(target, draft, layout, tokenizer=tokenizer)
    eos = sorted(default_eos_ids(target, tokenizer))
    records: dict[str, list[dict]] = {p.label: [] for p in points}
    with torch.inference_mode():
        _decode_all(target, tokenizer, generator, points, questions[:1], min(8, max_new_tokens), checker, False, eos, {p.label: [] for p in points})
        # Step 2: per question, the references once, then every point.
        bar = tqdm(questions, desc="judge sweep", unit="question", disable=not progress)
        _decode_all(target, tokenizer, generator, points, bar, max_new_tokens, checker, baselines, eos, records)
    # Step 3: one summary per point.
    summaries = {p.label: summarize_point(records[p.label], p) for p in points}
    return {
        "setting": {"num_questions": len(questions), "max_new_tokens": max_new_tokens, "temperature": 0.0, "checker": checker.describe() if checker else None, **generator.proposer.describe()},
        "points": summaries,
        "questions": records,
    }


def _decode_all(target, tokenizer, generator, points, questions, max_new_tokens, checker, baselines, eos, records) -> None:
    """Decode `questions` with plain greedy (and the HF baselines) once and with every point, appending one record per point and question."""
    device = target.device
    for question in questions:
        ids = prompt_ids(tokenizer, question).to(device)
        plain, t_plain = _timed(lambda: plain_generate(target, ids, max_new_tokens, tokenizer=tokenizer), device)
        hf = _timed(lambda: _hf_generate(target, ids, max_new_tokens, eos, tokenizer), device) if baselines else None
        pld = _timed(lambda: _hf_generate(target, ids, max_new_tokens, eos, tokenizer, prompt_lookup_num_tokens=10), device) if baselines else None
        plain_text, plain_logprob = tokenizer.decode(plain.tokens, skip_special_tokens=True), mean_logprob(target, ids, plain.tokens)
        for point in points:
            generator.verifier = point.verifier
            _reset_counts(point.verifier)
            spec, t_spec = _timed(lambda: generator.generate(ids, max_new_tokens), device)
            record = question_record(question, spec, t_spec, plain, t_plain, hf, pld, lossless=point.verifier.lossless)
            text = tokenizer.decode(spec.tokens, skip_special_tokens=True)
            logprob = mean_logprob(target, ids, spec.tokens)
            record |= {
                "identical_to_plain": spec.tokens == plain.tokens,
                "outcome_match": checker.same_outcome(question, plain_text, text) if checker else None,
                "mean_logprob": logprob,
                "logprob_vs_plain": logprob - plain_logprob,
                "rule_accepted_tokens": getattr(point.verifier, "lossy_accepted", 0),
                "answer": text,
            }
            records[point.label].append(record)


def _reset_counts(verifier: Verifier) -> None:
    """Zero a lossy verifier's per-question counts of tokens its rule accepted (verifiers without counts have none)."""
    reset = getattr(verifier, "reset_counts", None)
    if reset is not None:
        reset()


@torch.no_grad()
def mean_logprob(target, prompt: torch.Tensor, tokens: list[int]) -> float:
    """The target's mean log-probability per token of `tokens` after `prompt` [1, T] (one forward; 0.0 for no tokens)."""
    if not tokens:
        return 0.0
    answer = torch.tensor([tokens], device=prompt.device)
    hidden = final_hidden_states(target, torch.cat([prompt, answer], dim=1))[0, prompt.shape[1] - 1 : -1]
    log_p = torch.log_softmax((hidden @ lm_head_weight(target).T).float(), dim=-1)
    return float(log_p.gather(-1, answer[0, :, None]).mean())


def summarize_point(records: list[dict], point: SweepPoint) -> dict[str, Any]:
    """The benchmark summary of one point plus its quality and how many tokens its rule let through."""
    summary = summarize(records)
    summary |= point.verifier.describe()
    summary["label"] = point.label
    summary["identical_to_plain"] = statistics.fmean(float(r["identical_to_plain"]) for r in records)
    matches = [float(r["outcome_match"]) for r in records if r["outcome_match"] is not None]
    summary["outcome_match"] = statistics.fmean(matches) if matches else None
    summary["mean_logprob"] = statistics.fmean(r["mean_logprob"] for r in records)
    summary["logprob_vs_plain"] = statistics.fmean(r["logprob_vs_plain"] for r in records)
    summary["rule_accepted_share"] = sum(r["rule_accepted_tokens"] for r in records) / max(sum(r["new_tokens"] for r in records), 1)
    return summary


def sweep_table(result: dict) -> str:
    """One line per point: tau, speedups, quality (LOSSY marked)."""
    header = f"{'point':<12} {'tau':>5} {'x plain':>8} {'x PLD':>7} {'identical':>9} {'outcome':>8} {'logprob d':>9} {'rule tok':>8}"
    lines = [header, "-" * len(header)]
    for label, s in result["points"].items():
        lines.append(
            f"{label + ('' if s['lossless'] else '*'):<12} {s['mean_accepted_tokens']:>5.2f} {_fmt(s['speedup_vs_plain'], '{:.2f}x'):>8} {_fmt(s['speedup_vs_prompt_lookup'], '{:.2f}x'):>7} "
            f"{s['identical_to_plain']:>9.0%} {_fmt(s['outcome_match'], '{:.0%}'):>8} {s['logprob_vs_plain']:>+9.3f} {s['rule_accepted_share']:>8.0%}"
        )
    lines.append("* LOSSY: the output is not the target's own greedy answer; quality columns compare with it (outcome: the checker's verdict, logprob d: target log-prob per token minus plain greedy's)")
    return "\n".join(lines)


def plot_sweep(result: dict, path) -> Path:
    """Two panels: tau and median speedup vs plain against quality (outcome match with a checker, else the log-prob difference)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = result["points"]
    use_outcome = all(s["outcome_match"] is not None for s in points.values())
    quality = [s["outcome_match"] if use_outcome else s["logprob_vs_plain"] for s in points.values()]
    xlabel = "outcome agreement with plain greedy" if use_outcome else "target log-prob per token minus plain greedy's"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "mean_accepted_tokens", "tau (tokens per target forward)"), (axes[1], "speedup_vs_plain", "speedup vs plain greedy (median)")):
        for (label, s), q in zip(points.items(), quality):
            kind = label.split("@")[0].split(":")[0]
            ax.scatter(q, s[key] if s[key] is not None else math.nan, color=_COLORS.get(kind, "tab:gray"), s=40)
            ax.annotate(label, (q, s[key] or 0), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(title=title, xlabel=xlabel)
    axes[1].axhline(1.0, color="black", linestyle="--", linewidth=1)
    fig.suptitle("exact verification vs judge thresholds vs training-free rules (all but exact are LOSSY)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_COLORS = {"exact": "black", "judge": "tab:red", "topk": "tab:blue", "kl": "tab:green"}


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)
