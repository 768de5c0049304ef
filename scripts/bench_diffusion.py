"""Learn2PD on a masked-diffusion LM made from the standard target (../shared/BENCHMARK.md's SmolLM2-135M).

    python scripts/bench_diffusion.py adapt      # specdec-train recipe=diffusion_adapt: SmolLM2 -> a masked-diffusion LM (ADAPT_STEPS steps)
    python scripts/bench_diffusion.py oracle     # specdec-learn2pd-data: the adapted model's reference decodes replayed (ORACLE_PROMPTS prompts)
    python scripts/bench_diffusion.py filter     # specdec-train recipe=learn2pd on that oracle data
    python scripts/bench_diffusion.py evaluate   # specdec-eval diffusion=: plain vs eotp vs filter vs filter+eotp on MT-Bench (16)
    python scripts/bench_diffusion.py collect    # bench/diffusion.json and the README table

Every job runs under /usr/bin/time -v (CPU minutes and wall time go into the JSON) and resumes:
the adaptation from its last checkpoint (resume=last), the oracle data by shard. The adaptation's
budget is ADAPT_STEPS optimizer steps at batch 4 x 128 tokens of the standard self-distilled set
(the recipe's defaults otherwise); the oracle prompts are the standard set's ShareGPT prompts
(never MT-Bench). Decoding: greedy, 128 answer positions in blocks of 32, 32 steps per block (LLaDA's
schedule), the first two MT-Bench questions of each category. Every point but plain may change the
answer: agreement and identical are against plain's answer.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_judge import cpu_minutes, timed  # noqa: E402

RUNS = ROOT / "runs"
ADAPT = RUNS / "bd_adapt"
ORACLE = RUNS / "bd_oracle"
FILTER = RUNS / "bd_learn2pd"
RESULT = ROOT / "bench" / "diffusion_mtbench16.json"
ADAPT_STEPS = 300
"""The adaptation's budget: optimizer steps of 4 conversations x 128 tokens (about 154k tokens in all; the recipe's default)."""
ADAPT_THREADS = 2
"""Threads of the adaptation. The committed run took its first 200 steps with 1 thread beside another
training job, then resumed (resume=last) alone with 2: one extra thread slowed the two-thread job
beside it about sixfold, so jobs on these two cores take turns instead."""
ADAPT_KEYS = [f"diffusion_adapt.max_steps={ADAPT_STEPS}", "diffusion_adapt.val_every_n_steps=50", "diffusion_adapt.checkpoint_every_n_steps=25",
              f"diffusion_adapt.num_threads={ADAPT_THREADS}", "diffusion_adapt.enable_progress_bar=false", "optim.lr=1e-4"]
ORACLE_PROMPTS = 32
SCHEDULE = ["gen_length=128", "block_length=32", "steps_per_block=32"]


def adapt() -> None:
    """SmolLM2-135M -> a masked-diffusion LM in runs/bd_adapt/model (resumes an interrupted run)."""
    if (ADAPT / "model").is_dir():
        return
    resume = ["resume=last"] if (ADAPT / "checkpoints" / "last.ckpt").is_file() else []
    timed(["specdec-train", "recipe=diffusion_adapt", f"output_dir={ADAPT}", *ADAPT_KEYS, *resume], RUNS / "bd_adapt.log")


def oracle() -> None:
    """The oracle data (resumes by shard)."""
    timed(["specdec-learn2pd-data", f"target={ADAPT / 'model'}", f"out={ORACLE}", "prompts=sharegpt", f"max_prompts={ORACLE_PROMPTS}", *SCHEDULE, "threads=2", "progress=false"], RUNS / "bd_oracle.log")


def fit_filter() -> None:
    """The Learn2PD filter and its report at the serving threshold."""
    timed(["specdec-train", "recipe=learn2pd", f"data.oracle={ORACLE}", f"output_dir={FILTER}"], RUNS / "bd_learn2pd.log")


def evaluate() -> None:
    """The four decoding points on the same questions, in one process."""
    timed(["specdec-eval", f"diffusion={ADAPT / 'model'}", f"filter={FILTER / 'filter'}", "bench=mt-bench", "per_category=2", *SCHEDULE, "threads=2", "progress=false", f"out={RESULT}"], RUNS / "bd_eval.log")


def collect() -> None:
    """bench/diffusion.json: the adaptation's budget and quality, the oracle data, the filter's report, the decoding points."""
    validation = [row for row in csv.DictReader((ADAPT / "logs" / "metrics.csv").open()) if row.get("val/masked_top1")]
    result = json.loads(RESULT.read_text())
    summary = {
        "setting": "BENCHMARK.md standard target adapted into a masked-diffusion LM; greedy; MT-Bench first 2 questions per category (16); "
                   "128 answer positions, blocks of 32, 32 steps per block; medians over questions; every point but plain may change the answer",
        "adaptation": {
            "steps": ADAPT_STEPS, "batch": "4 x 128 tokens", "threads": ADAPT_THREADS, "keys": ADAPT_KEYS,
            "cpu_min": cpu_minutes(RUNS / "bd_adapt.log"), "wall_min": round(total_wall_seconds(RUNS / "bd_adapt.log") / 60, 1),
            "validation": [{"step": int(row["step"]), "denoising_loss": float(row["val/denoising_loss"]), "masked_top1": float(row["val/masked_top1"])} for row in validation],
        },
        "oracle": {**json.loads((ORACLE / "oracle_card.json").read_text())["counts"], "cpu_min": cpu_minutes(RUNS / "bd_oracle.log")},
        "filter": {**json.loads((FILTER / "learn2pd_report.json").read_text()), "cpu_min": cpu_minutes(RUNS / "bd_learn2pd.log")},
        "points": result["points"],
        "eval_cpu_min": cpu_minutes(RUNS / "bd_eval.log"),
    }
    out = ROOT / "bench" / "diffusion.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    print(markdown_table(result["points"]))


def total_wall_seconds(log: Path) -> float:
    """Wall-clock seconds of every command /usr/bin/time -v timed in `log` (an interrupted run and its resumption)."""
    total = 0.0
    for line in log.read_text().splitlines():
        if "Elapsed (wall clock)" in line:
            parts = [float(x) for x in line.rsplit(" ", 1)[1].split(":")]
            total += sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
    return total


def markdown_table(points: dict) -> str:
    """The README's table."""
    lines = ["| point | model forwards | tokens / forward | wall s | speedup_vs_plain | agreement | identical |", "|---|---|---|---|---|---|---|"]
    for name, p in points.items():
        lines.append(f"| {name}{'' if name == 'plain' else ' *'} | {p['forwards']:.0f} | {p['tokens_per_forward']:.2f} | {p['wall_s']:.1f} | {p['speedup_vs_plain']:.2f}x | {p['agreement']:.3f} | {p['identical']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    commands = {"adapt": adapt, "oracle": oracle, "filter": fit_filter, "evaluate": evaluate, "collect": collect}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python scripts/bench_diffusion.py {'|'.join(commands)}")
    commands[sys.argv[1]]()
