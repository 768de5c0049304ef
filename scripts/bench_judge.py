"""Judge decoding on the standard setting's target (../shared/BENCHMARK.md): mine labels, train a judge, sweep.

    python scripts/bench_judge.py drafts [eagle3|medusa1]    # EAGLE-3 (offline, 400 steps) and Medusa-1 (online, 100 steps) on the standard set
    python scripts/bench_judge.py mine      # specdec-judge-data: AutoJudge labels for the EAGLE-3 draft on GSM8K train rows 0..MINE_PROMPTS
    python scripts/bench_judge.py train     # specdec-train recipe=judge on those labels
    python scripts/bench_judge.py sweep     # exact vs judge thresholds vs training-free rules (EAGLE-3 and Medusa-1; GSM8K held-out slice, MT-Bench)
    python scripts/bench_judge.py collect   # bench/judge.json: the Pareto table, data set size, mining time, the judge's validation report

Every job runs under /usr/bin/time -v (CPU minutes go into the JSON) and is resumable: the drafts
keep checkpoints, the miner writes one shard per chunk of prompts. The judge is trained once, on
the EAGLE-3 draft's mismatches, and serves both drafts: it reads only the target's states. The
sweeps decode greedily, one question at a time; plain greedy decoding and the two Hugging Face
baselines run once per question, then every point. GSM8K quality is the math checker's verdict
(same final number as the target's own greedy answer) on rows the judge never saw (the last rows
of the file); MT-Bench quality is the target's log-probability per token of the answer, minus
plain greedy's. Every point but exact is LOSSY.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STANDARD = SHARED / "train" / "sharegpt_smollm2_selfdistill.jsonl"
GSM8K = SHARED / "train" / "gsm8k_train.jsonl"
RUNS = ROOT / "runs"
LABELS = RUNS / "judge_labels_eagle3"
JUDGE = RUNS / "judge_judge"
MINE_PROMPTS = 8
"""GSM8K train rows 0..MINE_PROMPTS are mined (the judge's train and validation prompts)."""
HELD_OUT = ["skip_questions=7400", "max_questions=10"]
"""The GSM8K slice the sweeps decode: rows 7400.. of 7,473, never mined."""
MAX_NEW = 192
COMMON = [f"data.source={STANDARD}", "data.self_distill=false", "data.max_samples=null", "data.val_size=64", "data.max_length=384", "data.batch_size=4", "trainer.num_threads=2", "trainer.enable_progress_bar=false"]
DRAFTS = {
    "eagle3": ("runs/judge_eagle3/draft", ["tree=chain", "depth=8"]),
    "medusa1": ("runs/judge_medusa1/draft", ["tree=chain", "tree_size=4"]),
}
"""Draft -> (folder, layout keys): chains, the layout a judge pays on (EAGLE-3 8 tokens, Medusa-1 all 4 heads)."""
SWEEP = ["verifier=judge", f"judge={JUDGE}/judge", "training_free=topk:2,kl:1.0", "threads=2", f"max_new_tokens={MAX_NEW}"]
ACCEPTED_SHARES = (0.1, 0.25, 0.5)
"""Judge thresholds of the sweep: the serving default and the smallest thresholds that accept these shares of the validation mismatches."""
RUNS_TO_SWEEP = {
    "judge_eagle3_gsm8k": ("eagle3", [f"bench={GSM8K}", *HELD_OUT, "checker=math"]),
    "judge_medusa1_gsm8k": ("medusa1", [f"bench={GSM8K}", *HELD_OUT, "checker=math"]),
    "judge_eagle3_mtbench4": ("eagle3", ["bench=mt-bench", "per_category=1", "max_questions=4"]),
}
"""Result name -> (draft, question keys)."""


def timed(args: list[str], log: Path) -> None:
    with log.open("a") as out:
        subprocess.run(["/usr/bin/time", "-v", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)


def cpu_minutes(log: Path) -> float | None:
    """User + system CPU minutes of every timed job in `log`."""
    text = log.read_text() if log.is_file() else ""
    seconds = [float(v) for v in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
    return round(sum(seconds) / 60, 1) if seconds else None


def drafts(which: str | None = None) -> None:
    """The two drafts on the standard set (EAGLE-3 from stored features); `which`: only that one."""
    if which in (None, "eagle3"):
        timed(["specdec-prepare", "recipe=eagle3", "output_dir=runs/judge_eagle3", *COMMON, "data.features_dir=runs/judge_features"], RUNS / "judge_prepare.log")
        schedule = ["trainer.max_steps=400", "trainer.val_every_n_steps=200", "trainer.checkpoint_every_n_steps=100", "optim.lr=3e-3", "optim.warmup_steps=20"]
        timed(["specdec-train", "recipe=eagle3", "output_dir=runs/judge_eagle3", *COMMON, "data.features_dir=runs/judge_features", "data.features=offline", *schedule], RUNS / "judge_eagle3.log")
    if which in (None, "medusa1"):
        schedule = ["trainer.max_steps=100", "trainer.val_every_n_steps=50", "trainer.checkpoint_every_n_steps=50"]
        timed(["specdec-train", "recipe=medusa1", "output_dir=runs/judge_medusa1", *COMMON, *schedule], RUNS / "judge_medusa1.log")


def mine() -> None:
    timed(
        ["specdec-judge-data", f"draft={DRAFTS['eagle3'][0]}", f"prompts={GSM8K}", f"out={LABELS}", "checker=math", f"max_prompts={MINE_PROMPTS}", f"max_new_tokens={MAX_NEW}", "threads=2"],
        RUNS / "judge_mine.log",
    )


def train() -> None:
    timed(["specdec-train", "recipe=judge", f"data.labels={LABELS}", f"output_dir={JUDGE}"], RUNS / "judge_train.log")


def sweep(which: str | None = None) -> None:
    """Every sweep of RUNS_TO_SWEEP not yet in bench/ (`which`: only that one)."""
    for name, (draft, questions) in RUNS_TO_SWEEP.items():
        out = ROOT / "bench" / f"{name}.json"
        if out.is_file() or which not in (None, name):
            continue
        folder, layout = DRAFTS[draft]
        thresholds = ",".join(f"{t:.4g}" for t in judge_thresholds())
        timed(["specdec-eval", f"draft={folder}", *layout, *questions, *SWEEP, f"sweep={thresholds}", f"out={out}"], RUNS / f"{name}.log")


def judge_thresholds() -> list[float]:
    """The judge's serving threshold and, from its validation threshold table, the smallest threshold accepting each of ACCEPTED_SHARES."""
    report = json.loads((JUDGE / "judge_report.json").read_text())
    rows = sorted(report["thresholds"], key=lambda row: row["threshold"])
    chosen = {round(report["threshold"]["threshold"], 4)}
    for share in ACCEPTED_SHARES:
        row = next((r for r in rows if r["accepted_share"] >= share), None)
        if row is not None:
            chosen.add(round(row["threshold"], 4))
    return sorted(chosen)


def collect() -> None:
    """bench/judge.json: per sweep and point, tau, speedups and quality; the labels and the judge."""
    card = json.loads((LABELS / "data_card.json").read_text())
    report = json.loads((JUDGE / "judge_report.json").read_text())
    keys = ("mean_accepted_tokens", "speedup_vs_plain", "speedup_vs_hf_generate", "speedup_vs_prompt_lookup", "lossless", "identical_to_plain", "outcome_match", "logprob_vs_plain", "rule_accepted_share", "new_tokens")
    sweeps = {}
    for name in RUNS_TO_SWEEP:
        result = json.loads((ROOT / "bench" / f"{name}.json").read_text())
        sweeps[name] = {"setting": result["setting"], "points": {label: {k: s.get(k) for k in keys} for label, s in result["points"].items()}, "cpu_min": cpu_minutes(RUNS / f"{name}.log")}
    summary = {
        "setting": "BENCHMARK.md standard target; greedy; GSM8K held-out rows 7400-7409 (math checker) and 4 MT-Bench first turns, one per category of the first four (log-prob); all points but exact LOSSY",
        "drafts": {"eagle3": {"cpu_min": cpu_minutes(RUNS / "judge_prepare.log") and round(cpu_minutes(RUNS / "judge_prepare.log") + cpu_minutes(RUNS / "judge_eagle3.log"), 1)}, "medusa1": {"cpu_min": cpu_minutes(RUNS / "judge_medusa1.log")}},
        "labels": {"settings": card["settings"], "counts": card["counts"], "mining_wall_min": round(card["mining_wall_s"] / 60, 1), "mining_cpu_min": round(card["mining_cpu_s"] / 60, 1)},
        "judge": {k: report.get(k) for k in ("val_roc_auc", "l2_grid", "threshold", "ece", "baseline_auc", "counts") if k in report} | {"cpu_min": cpu_minutes(RUNS / "judge_train.log")},
        "sweeps": sweeps,
    }
    out = ROOT / "bench" / "judge.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    for name, result in sweeps.items():
        print(markdown_table(name, result["points"]))


def markdown_table(name: str, points: dict) -> str:
    """The README's table of one sweep (LOSSY points starred)."""
    def fmt(value, pattern):
        return "n/a" if value is None else pattern.format(value)

    lines = [f"{name}:", "", "| point | tau | x plain | x HF generate | x prompt lookup | identical | outcome | logprob d | rule tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for label, p in points.items():
        lines.append(
            f"| {label}{'' if p['lossless'] else ' *'} | {p['mean_accepted_tokens']:.2f} | {fmt(p['speedup_vs_plain'], '{:.2f}x')} | {fmt(p['speedup_vs_hf_generate'], '{:.2f}x')} | "
            f"{fmt(p['speedup_vs_prompt_lookup'], '{:.2f}x')} | {p['identical_to_plain']:.0%} | {fmt(p['outcome_match'], '{:.0%}')} | {p['logprob_vs_plain']:+.3f} | {p['rule_accepted_share']:.0%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    commands = {"drafts": drafts, "mine": mine, "train": train, "sweep": sweep, "collect": collect}
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in commands or (len(sys.argv) == 3 and sys.argv[1] not in ("drafts", "sweep")):
        sys.exit(f"usage: python scripts/bench_judge.py {'|'.join(commands)} (drafts and sweep take one name: eagle3|medusa1, or a sweep of RUNS_TO_SWEEP)")
    commands[sys.argv[1]](*sys.argv[2:])
