"""Feature drafters against Medusa-1 at an equal CPU budget, on the standard setting (../shared/BENCHMARK.md).

    python scripts/bench_drafters.py run        # prepare once, train EAGLE-3, EAGLE-1, Chimera offline, evaluate all (~2.5 h on 2 cores)
    python scripts/bench_drafters.py evaluate   # only the decoding part, on the drafts in runs/
    python scripts/bench_drafters.py collect    # summarise the runs into bench/drafters_mtbench16.json

`run` needs the Medusa-1 draft of the decoding benchmark in runs/bench_medusa1/draft (README,
Benchmarks). One `specdec-prepare` stores the target's states of the standard set (EAGLE-3's
three layers plus the last hidden state, bfloat16); each drafter then trains offline for a step
count that keeps prepare + training within Medusa-1's 55 CPU-minutes (the prepare cost is
charged to every drafter in full). Every job runs under /usr/bin/time -v, whose CPU times
`collect` reads back. Evaluation: greedy, 256 new tokens, the first 2 MT-Bench questions of each
category (16), the three baselines in the same process, the layout tuned on this machine; for
EAGLE-3 also the best layout of the other kind (chain vs dynamic tree), and Medusa-1 with an
8-node tree (tau at the dynamic tree's size).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "train" / "sharegpt_smollm2_selfdistill.jsonl"
COMMON = [f"data.source={DATA}", "data.self_distill=false", "data.max_samples=null", "data.val_size=64", "data.max_length=384", "data.batch_size=4", "data.features_dir=runs/bench_features", "trainer.num_threads=2"]
STEPS = {"eagle3": 800, "eagle1": 800, "chimera": 240}
"""Optimizer steps per drafter of the recorded run (set from calibration runs; Chimera's cost was overestimated, so it used 43 of its 55 CPU-min)."""
EVAL = ["bench=mt-bench", "per_category=2", "max_new_tokens=256", "threads=2", "depth=5", "tree_top_k=4"]


def timed(args: list[str], log: Path) -> None:
    with log.open("w") as out:
        subprocess.run(["/usr/bin/time", "-v", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)


def evaluate(draft: str, name: str, *extra: str) -> dict:
    out = ROOT / "bench" / f"{name}.json"
    timed(["specdec-eval", f"draft=runs/{draft}/draft", f"out={out}", *EVAL, *extra], ROOT / "runs" / f"{name}.log")
    return json.loads(out.read_text())


def run() -> None:
    # Step 1: the target's states, once.
    timed(["specdec-prepare", "recipe=eagle3", "output_dir=runs/bench_eagle3", *COMMON], ROOT / "runs" / "bench_prepare.log")
    # Step 2: each drafter, offline.
    for method, steps in STEPS.items():
        schedule = [f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={steps // 4}", f"trainer.checkpoint_every_n_steps={steps // 4}"]
        timed(["specdec-train", f"recipe={method}", f"output_dir=runs/bench_{method}", *COMMON, "data.features=offline", *schedule,
               "trainer.enable_progress_bar=false", "optim.lr=3e-3", "optim.warmup_steps=20"], ROOT / "runs" / f"bench_{method}.log")
    evaluate_all()


def evaluate_all() -> None:
    """Step 3: decoding, tuned layouts; EAGLE-3 also with the best layout of the other kind."""
    tuned = evaluate("bench_eagle3", "eval_eagle3_tuned_mtbench16", "tree=tuned")
    speeds = tuned["setting"]["tree_tokens_per_s_by_size"]
    picked = max(speeds, key=speeds.get)
    other = {k: v for k, v in speeds.items() if not k.startswith(picked.split("-")[0])}
    best = max(other, key=other.get)
    if best.startswith("tree"):
        evaluate("bench_eagle3", "eval_eagle3_tree_mtbench16", "tree=default", f"tree_size={best.split('-')[1]}")
    else:
        evaluate("bench_eagle3", "eval_eagle3_chain_mtbench16", "tree=chain", f"depth={best.split('-')[1]}")
    for draft in ("eagle1", "chimera", "medusa1"):
        evaluate(f"bench_{draft}", f"eval_{draft}_tuned_mtbench16", "tree=tuned")
    # Medusa-1 at the dynamic tree's node budget, for tau at equal size (speed is not compared: baselines off).
    evaluate("bench_medusa1", "eval_medusa1_tree8_mtbench16", "tree=default", "tree_size=8", "baselines=false")


def cpu_seconds(log: Path) -> float:
    text = log.read_text()
    return sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", text).group(1)) for kind in ("User", "System"))


def final_accuracy(run_dir: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader((run_dir / "logs" / "metrics.csv").open()) if r.get("val/head1_top1")]
    return {k: round(float(v), 4) for k, v in rows[-1].items() if k.startswith("val/head") and k.endswith("top1")}


def collect() -> None:
    prepare = cpu_seconds(ROOT / "runs" / "bench_prepare.log")
    training = {}
    for method in STEPS:
        config = json.loads((ROOT / "runs" / f"bench_{method}" / "draft" / "config.json").read_text())
        train = cpu_seconds(ROOT / "runs" / f"bench_{method}.log")
        training[method] = {
            "steps": config["training"]["steps"],
            "train_cpu_min": round(train / 60, 1),
            "prepare_cpu_min": round(prepare / 60, 1),
            "total_cpu_min": round((train + prepare) / 60, 1),
            "held_out_top1_by_position": final_accuracy(ROOT / "runs" / f"bench_{method}"),
        }
    decoding = {}
    for path in sorted((ROOT / "bench").glob("eval_*_mtbench16.json")):
        result = json.loads(path.read_text())
        overall = result["overall"]
        decoding[path.stem] = {
            "layout": result["setting"].get("eagle") or {"tree_size": result["setting"]["tree_size"]},
            **{k: overall.get(k) for k in ("mean_accepted_tokens", "speedup_vs_plain", "speedup_vs_hf_generate", "speedup_vs_prompt_lookup", "lossless_match", "ideal_speedup", "tokens_per_s", "plain_tokens_per_s", "prompt_lookup_tokens_per_s")},
            "tuning_tokens_per_s": result["setting"].get("tree_tokens_per_s_by_size"),
        }
    report = {"setting": "BENCHMARK.md standard setting; 16 MT-Bench first turns (2 per category); Medusa-1 budget 55 CPU-min", "training": training, "decoding": decoding}
    out = ROOT / "bench" / "drafters_mtbench16.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    {"run": run, "evaluate": evaluate_all, "collect": collect}[sys.argv[1] if len(sys.argv) > 1 else "collect"]()
