"""The acceptance-vs-data curve (issue 15): Medusa-1 and EAGLE-3 trained on 1x, 3x and 10x the
standard setting's training conversations, for the same number of epochs, validated on the
standard setting's 64 held-out conversations.

    python scripts/bench_data_scaling.py train [NAME ...]     # each run not yet trained whose shards exist
    python scripts/bench_data_scaling.py evaluate [NAME ...]  # tau on MT-Bench: 16 questions (--all for all 80 too)
    python scripts/bench_data_scaling.py collect              # bench/data_scaling.json and bench/data_scaling.png

Data: 1x is the standard setting's 1,120 training conversations' worth (1,184 minus the 64 held
out), taken as a prefix of the larger self-distilled set (bench/data/smollm2_selfdistill_12k,
built by scripts/build_selfdistill_set.py: its prompts are shuffled before sharding, so every
prefix has the same expected mix of sources, and the 64 held-out prompts are not in it). Every
scale trains online on the same target for `EPOCHS` epochs at batch 4 with the shipped recipe's
other settings; validation reads the 64 held-out conversations (`data.val_source`). Each run's
CPU time (/usr/bin/time -v) is reported beside its held-out per-position top-1, its expected
accept length at depth 4 and its tau (chain of 4, greedy, `EVAL_TOKENS` new tokens).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from bench_drafters import cpu_seconds, timed
from build_selfdistill_set import HELD_OUT, OUT as LARGE_SET, SHARD, STANDARD, held_out_indices

from specdec.models.acceptance import chain_accept_length

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "runs" / "data_scaling"
HELD_OUT_FILE = RUNS_DIR / "heldout64.jsonl"
"""The standard setting's 64 held-out conversations, copied from the standard set (what `train` validates on)."""
UNIT = 1184 - HELD_OUT
"""Training conversations of the standard setting: the size of 1x."""
SCALES = (1, 3, 10)
EPOCHS = 1
BATCH = 4
DEPTH = 4
"""Validated draft positions (Medusa-1's 4 heads; EAGLE-3 validates 4 unrolled steps) and the decoding chain's length."""
EVAL_TOKENS = 128
METHODS = {"medusa1": [], "eagle3": ["data.features=online", f"eagle.val_steps={DEPTH}"]}
"""Recipe -> its overrides beyond the common ones (the shipped recipes otherwise)."""


def runs() -> dict[str, tuple[str, int]]:
    """Name -> (recipe, training conversations)."""
    return {f"{method}_{scale}x": (method, UNIT * scale) for method in METHODS for scale in SCALES}


def shards_needed(conversations: int) -> int:
    return math.ceil(conversations / SHARD)


def shards_done() -> list[int]:
    manifest = LARGE_SET / "manifest.json"
    return json.loads(manifest.read_text())["shards_done"] if manifest.exists() else []


def write_held_out() -> Path:
    """The standard set's held-out lines, verbatim, in file order."""
    lines = [line for line in STANDARD.read_text().splitlines() if line.strip()]
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    HELD_OUT_FILE.write_text("".join(lines[i] + "\n" for i in held_out_indices(len(lines))))
    return HELD_OUT_FILE


def overrides(recipe: str, conversations: int, out: Path) -> list[str]:
    steps = EPOCHS * conversations // BATCH
    return [
        f"output_dir={out}", f"data.source={LARGE_SET}", "data.self_distill=false", f"data.max_samples={conversations}",
        f"data.val_source={HELD_OUT_FILE}", "data.val_size=0", "data.max_length=384", f"data.batch_size={BATCH}",
        "trainer.num_threads=2", "trainer.enable_progress_bar=false", f"trainer.max_steps={steps}",
        f"trainer.val_every_n_steps={steps}", f"trainer.checkpoint_every_n_steps={max(steps // 4, 1)}", *METHODS[recipe],
    ]


def train(names: list[str]) -> None:
    """Each run not trained yet (its draft folder is the mark) whose shards are all built."""
    write_held_out()
    done = set(shards_done())
    for name in names or runs():
        recipe, conversations = runs()[name]
        out = RUNS_DIR / name
        if (out / "draft" / "config.json").exists():
            continue
        missing = [i for i in range(shards_needed(conversations)) if i not in done]
        if missing:
            print(f"{name}: needs shards 0-{shards_needed(conversations) - 1} of the larger set, {len(missing)} missing: run scripts/build_selfdistill_set.py first")
            continue
        resume = ["resume=last"] if (out / "checkpoints" / "last.ckpt").exists() else []
        timed(["specdec-train", f"recipe={recipe}", *overrides(recipe, conversations, out), *resume], RUNS_DIR / f"{name}.log")


def evaluate(names: list[str], all_questions: bool) -> None:
    """tau of each trained run's draft: a chain of DEPTH on 16 MT-Bench questions (and all 80 with --all)."""
    for name in names or runs():
        if not (RUNS_DIR / name / "draft" / "config.json").exists():
            continue
        for label, questions in (("mtbench16", ["per_category=2"]), ("mtbench80", [])) if all_questions else (("mtbench16", ["per_category=2"]),):
            out = RUNS_DIR / f"{name}_{label}.json"
            if not out.exists():
                args = ["bench=mt-bench", *questions, f"max_new_tokens={EVAL_TOKENS}", "threads=2", "baselines=false", "tree=chain", f"depth={DEPTH}"]
                timed(["specdec-eval", f"draft={RUNS_DIR / name}/draft", f"out={out}", *args], RUNS_DIR / f"{name}_{label}.log")


def held_out(name: str) -> dict:
    """The last validation pass: per-position top-1 and the expected accept length at DEPTH."""
    rows = [r for r in csv.DictReader((RUNS_DIR / name / "logs" / "metrics.csv").open()) if r.get("val/head1_top1")]
    top1 = [float(rows[-1][f"val/head{d}_top1"]) for d in range(1, DEPTH + 1)]
    return {"held_out_top1_by_position": [round(a, 4) for a in top1], f"expected_accept_length_depth{DEPTH}": round(chain_accept_length([[a] for a in top1]), 4)}


def collect() -> None:
    """One JSON with every trained run, and the curve. Runs trained in an earlier session whose
    folders are gone keep their entries from the JSON already there (the scales take hours each)."""
    out = ROOT / "bench" / "data_scaling.json"
    report = {"setting": {"unit": UNIT, "epochs": EPOCHS, "batch_size": BATCH, "depth": DEPTH, "eval_tokens": EVAL_TOKENS, "data": str(LARGE_SET.relative_to(ROOT)), "held_out": HELD_OUT}, "runs": {}}
    earlier = json.loads(out.read_text()) if out.exists() else {}
    if earlier.get("setting") == report["setting"]:
        report["runs"] = earlier["runs"]
    elif earlier:
        print(f"{out}: its runs used another setting and are not kept; retrain them with `train`")
    for name, (recipe, conversations) in runs().items():
        if not (RUNS_DIR / name / "draft" / "config.json").exists():
            continue
        entry = {"recipe": recipe, "conversations": conversations, "train_cpu_min": round(cpu_seconds(RUNS_DIR / f"{name}.log") / 60, 1), **held_out(name)}
        for label in ("mtbench16", "mtbench80"):
            result = RUNS_DIR / f"{name}_{label}.json"
            if result.exists():
                entry[f"tau_{label}"] = round(json.loads(result.read_text())["overall"]["mean_accepted_tokens"], 3)
        report["runs"][name] = entry
    report["runs"] = {name: report["runs"][name] for name in runs() if name in report["runs"]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report["runs"], out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


def plot(results: dict, out: Path) -> None:
    """Expected accept length and tau against training conversations (log scale), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        points = sorted((r["conversations"], r) for r in results.values() if r["recipe"] == method)
        if not points:
            continue
        x = [p[0] for p in points]
        axes[0].plot(x, [p[1][f"expected_accept_length_depth{DEPTH}"] for p in points], marker="o", label=method)
        taus = [(p[0], p[1]["tau_mtbench16"]) for p in points if "tau_mtbench16" in p[1]]
        if taus:
            axes[1].plot(*zip(*taus), marker="o", label=method)
    for ax, title in zip(axes, (f"held-out expected accept length (depth {DEPTH})", f"tau, 16 MT-Bench questions (chain of {DEPTH})")):
        ax.set_xscale("log")
        ax.set_xlabel("self-distilled training conversations")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "evaluate", "collect"))
    parser.add_argument("names", nargs="*", help=f"runs, of {', '.join(runs())} (default: all)")
    parser.add_argument("--all", action="store_true", help="evaluate: also all 80 MT-Bench questions")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in runs()]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(runs())}")
    if args.command == "train":
        train(args.names)
    elif args.command == "evaluate":
        evaluate(args.names, args.all)
    else:
        collect()


if __name__ == "__main__":
    main()
