"""Learned draft length on the standard setting (../shared/BENCHMARK.md): EAGLE-3 and Medusa-1, with and without an acceptance head.

    python scripts/bench_draft_length.py drafts [eagle3|medusa1]  # the standard drafts (Medusa-1 MEDUSA_STEPS online, EAGLE-3 prepare + 800 steps offline)
    python scripts/bench_draft_length.py heads [eagle3|medusa1]   # record the draft's verified proposals on training prompts, fit its acceptance head
    python scripts/bench_draft_length.py evaluate [NAME]          # every point of POINTS not yet in bench/
    python scripts/bench_draft_length.py collect                  # bench/draft_length.json and the README table

Every job runs under /usr/bin/time -v (its CPU minutes go into the JSON). EAGLE-3 uses the
budget of the README's decoding benchmarks (55 CPU-min), Medusa-1 half of it (MEDUSA_STEPS). The acceptance heads are fitted on
the drafts' own proposals for the standard set's held-out ShareGPT prompts (not MT-Bench). Decoding:
greedy, 256 new tokens, the first two MT-Bench questions of each category (16), plain greedy in the
same process; each draft with its large layout in full, pruned by the draft's own probability and
pruned by the acceptance head, at the same threshold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_data_scaling import write_held_out  # noqa: E402
from bench_judge import cpu_minutes, timed  # noqa: E402

STANDARD = ROOT.parent / "shared" / "data" / "train" / "sharegpt_smollm2_selfdistill.jsonl"
RUNS = ROOT / "runs"
COMMON = [f"data.source={STANDARD}", "data.self_distill=false", "data.max_samples=null", "data.val_size=64", "data.max_length=384", "data.batch_size=4", "trainer.num_threads=2", "trainer.enable_progress_bar=false"]
THRESHOLD = 0.1
"""The pruning threshold on a node's cumulative acceptance estimate: on this CPU a verified node
costs about a tenth of a one-token step (BENCHMARK.md: 54 ms for 1 token, 95 ms for 8), so a node
below about 0.1 expected acceptance costs more than it is expected to save."""
LAYOUTS = {
    "eagle3": ["tree=default", "tree_size=8", "depth=5", "tree_top_k=4"],
    "medusa1": ["tree=default", "tree_size=8"],
}
"""Draft -> its large layout (the 8-node trees of the README's drafter benchmark)."""
RECORD = ["max_prompts=32", "max_new_tokens=128", "threads=2", "progress=false"]
"""The recording run: 32 of the standard set's 64 held-out ShareGPT prompts (the drafts never trained on them), 128 new tokens each."""
MEDUSA_STEPS = 225
"""Medusa-1's budget: half the README's decoding benchmarks' 450 online steps (about 28 CPU-min), to fit one session with the evaluation."""
EVAL = ["bench=mt-bench", "per_category=2", "max_new_tokens=256", "threads=2"]


def draft_dir(name: str) -> Path:
    return RUNS / f"dl_{name}" / "draft"


def head_dir(name: str) -> Path:
    return RUNS / f"dl_{name}_head"


POINTS = {
    f"{name}_{variant}": (name, keys)
    for name in LAYOUTS
    for variant, keys in (
        ("full", []),
        ("draft_prob", [f"draft_length={THRESHOLD}"]),
        ("head", [f"draft_length={THRESHOLD}", f"acceptance_head={head_dir(name) / 'head'}"]),
    )
}
"""Result name -> (draft, extra keys). The first point of each draft also runs the Hugging Face baselines."""


def drafts(which: str | None = None) -> None:
    """The two standard drafts (EAGLE-3 from stored features); `which`: only that one."""
    if which in (None, "eagle3") and not draft_dir("eagle3").is_dir():
        timed(["specdec-prepare", "recipe=eagle3", "output_dir=runs/dl_eagle3", *COMMON, "data.features_dir=runs/dl_features"], RUNS / "dl_prepare.log")
        schedule = ["trainer.max_steps=800", "trainer.val_every_n_steps=200", "trainer.checkpoint_every_n_steps=200", "optim.lr=3e-3", "optim.warmup_steps=20"]
        timed(["specdec-train", "recipe=eagle3", "output_dir=runs/dl_eagle3", *COMMON, "data.features_dir=runs/dl_features", "data.features=offline", *schedule], RUNS / "dl_eagle3.log")
    if which in (None, "medusa1") and not draft_dir("medusa1").is_dir():
        schedule = [f"trainer.max_steps={MEDUSA_STEPS}", "trainer.val_every_n_steps=75", "trainer.checkpoint_every_n_steps=75"]
        timed(["specdec-train", "recipe=medusa1", "output_dir=runs/dl_medusa1", *COMMON, *schedule], RUNS / "dl_medusa1.log")


def heads(which: str | None = None) -> None:
    """Record each draft's proposals with its large layout, then fit its acceptance head."""
    prompts = write_held_out()
    for name, layout in LAYOUTS.items():
        if which not in (None, name) or (head_dir(name) / "head").is_dir():
            continue
        records = RUNS / f"dl_{name}_records"
        timed(["specdec-acceptance-data", f"draft={draft_dir(name)}", f"prompts={prompts}", f"out={records}", *layout, *RECORD], RUNS / f"dl_{name}_records.log")
        timed(["specdec-train", "recipe=acceptance", f"data.records={records}", f"output_dir={head_dir(name)}", f"acceptance.threshold={THRESHOLD}"], RUNS / f"dl_{name}_head.log")


def evaluate(which: str | None = None) -> None:
    """Every point of POINTS not yet in bench/ (`which`: only that one)."""
    for point, (name, extra) in POINTS.items():
        out = ROOT / "bench" / f"draft_length_{point}.json"
        if out.is_file() or which not in (None, point):
            continue
        baselines = [] if point.endswith("_full") else ["baselines=false"]
        timed(["specdec-eval", f"draft={draft_dir(name)}", *LAYOUTS[name], *EVAL, *extra, *baselines, f"out={out}", "plot=false"], RUNS / f"dl_eval_{point}.log")


def collect() -> None:
    """bench/draft_length.json: per point tau, verified nodes per step, speedups; the drafts' and heads' costs and reports (points not evaluated yet are left out and named)."""
    keys = ("mean_accepted_tokens", "verified_nodes_per_step", "drafted_nodes_per_step", "speedup_vs_plain", "speedup_vs_plain_mean", "speedup_vs_hf_generate", "speedup_vs_prompt_lookup", "lossless_match", "ideal_speedup", "tokens_per_s")
    points = {}
    for point, (name, extra) in POINTS.items():
        path = ROOT / "bench" / f"draft_length_{point}.json"
        if not path.is_file():
            print(f"{point}: not evaluated yet (python scripts/bench_draft_length.py evaluate {point})")
            continue
        result = json.loads(path.read_text())
        overall = result["overall"]
        points[point] = {"draft": name, "keys": extra, **{k: overall.get(k) for k in keys}, "cpu_min": cpu_minutes(RUNS / f"dl_eval_{point}.log")}
    summary = {
        "setting": f"BENCHMARK.md standard target; greedy; first 2 MT-Bench questions per category (16), 256 new tokens; threshold {THRESHOLD}; medians over questions",
        "layouts": LAYOUTS,
        "drafts": {
            "eagle3": {"steps": 800, "cpu_min": sum(filter(None, (cpu_minutes(RUNS / "dl_prepare.log"), cpu_minutes(RUNS / "dl_eagle3.log"))))},
            "medusa1": {"steps": MEDUSA_STEPS, "cpu_min": cpu_minutes(RUNS / "dl_medusa1.log")},
        },
        "heads": {
            name: {
                "records": json.loads((RUNS / f"dl_{name}_records" / "acceptance_records.json").read_text()),
                "report": json.loads((head_dir(name) / "acceptance_report.json").read_text()),
                "cpu_min_record": cpu_minutes(RUNS / f"dl_{name}_records.log"),
                "cpu_min_fit": cpu_minutes(RUNS / f"dl_{name}_head.log"),
            }
            for name in LAYOUTS
        },
        "points": points,
    }
    out = ROOT / "bench" / "draft_length.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    print(markdown_table(points))


def markdown_table(points: dict) -> str:
    """The README's table."""
    def fmt(value, pattern):
        return "" if value is None else pattern.format(value)

    lines = ["| point | tau | verified nodes / step (of drafted) | speedup_vs_plain | speedup_vs_hf_generate | speedup_vs_prompt_lookup | lossless_match |", "|---|---|---|---|---|---|---|"]
    for point, p in points.items():
        nodes = f"{p['verified_nodes_per_step']:.2f} of {p['drafted_nodes_per_step']:.2f}" if p["verified_nodes_per_step"] is not None else "all"
        lines.append(
            f"| {point} | {p['mean_accepted_tokens']:.2f} | {nodes} | {fmt(p['speedup_vs_plain'], '{:.2f}x')} | {fmt(p['speedup_vs_hf_generate'], '{:.2f}x')} | "
            f"{fmt(p['speedup_vs_prompt_lookup'], '{:.2f}x')} | {p['lossless_match']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    commands = {"drafts": drafts, "heads": heads, "evaluate": evaluate, "collect": collect}
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in commands or (len(sys.argv) == 3 and sys.argv[1] == "collect"):
        sys.exit(f"usage: python scripts/bench_draft_length.py {'|'.join(commands)} [name]")
    commands[sys.argv[1]](*sys.argv[2:])
