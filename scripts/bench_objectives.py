"""Acceptance at equal data: the training objectives, the reduced vocabulary and the lookup branch (issue 14).

    python scripts/bench_objectives.py train [NAME ...]     # train the runs (all, or the named ones) offline
    python scripts/bench_objectives.py evaluate [NAME ...]  # tau on 16 MT-Bench questions, chain 5 (and the 8-node tree)
    python scripts/bench_objectives.py speed NAME           # that draft (the best: eagle3_hass_lk) with and without the lookup branch, baselines on
    python scripts/bench_objectives.py collect              # summarise into bench/objectives.json
    python scripts/bench_objectives.py defaults [NAME ...]  # the shipped recipes' default jobs with each alternative (bench/objectives_defaults.json)

Standard setting (../shared/BENCHMARK.md): the standard self-distilled set, 64 conversations held
out (data.val_size=64: a seeded draw, seed 0), the target's states stored once by `specdec-prepare` (`FEATURES`, EAGLE-3's three layers plus
the last hidden state), and every run trains offline from them for the same number of optimizer
steps at batch 4 (equal data; each run's CPU time is measured with /usr/bin/time -v and reported,
since options such as a longer training-time test cost more per step). Validation unrolls 7
draft positions; `val/expected_accept_length` is reported at depth 5 (the first five positions'
measured top-1 accuracies, as `chain_accept_length` computes it). Decoding: greedy, the first 2
MT-Bench questions of each category (16), `EVAL_TOKENS` new tokens.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from bench_drafters import cpu_seconds, timed

from specdec.models.acceptance import chain_accept_length

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "train" / "sharegpt_smollm2_selfdistill.jsonl"
FEATURES = "runs/judge_features"
"""The stored target states of the standard set (`specdec-prepare recipe=eagle3`, val_size 64); `train` prepares them when missing."""
STEPS = 80
"""Optimizer steps of every run (batch 4: 320 training conversations, about 0.29 epoch)."""
COMMON = [
    f"data.source={DATA}", "data.self_distill=false", "data.max_samples=null", "data.val_size=64", "data.max_length=384",
    "data.batch_size=4", f"data.features_dir={FEATURES}", "data.features=offline", "trainer.num_threads=2",
    "trainer.enable_progress_bar=false", f"trainer.max_steps={STEPS}", f"trainer.val_every_n_steps={STEPS}",
    f"trainer.checkpoint_every_n_steps={STEPS}", "optim.lr=3e-3", "optim.warmup_steps=10",
]
EAGLE = {"eagle.val_steps": "7", "eagle.hass_topk_weight": "0", "eagle.hass_context": "false", "eagle.lk_loss_weight": "0"}
"""Every EAGLE run: 7 validated positions, and the objectives off unless the run turns them on (the EAGLE-3 recipe now ships HASS and LK)."""


def eagle(*options: str) -> list[str]:
    """EAGLE's common overrides with `options` ("key=value") in place of the defaults they name."""
    return [f"{k}={v}" for k, v in (EAGLE | dict(o.split("=", 1) for o in options)).items()]


RUNS = {
    "eagle3_base": ("eagle3", eagle()),
    "eagle3_ttt7": ("eagle3", eagle("eagle.ttt_steps=7")),
    "eagle3_hass": ("eagle3", eagle("eagle.hass_topk_weight=1.0", "eagle.hass_context=true")),
    "eagle3_lk": ("eagle3", eagle("eagle.lk_loss_weight=1.0")),
    "eagle3_griffin": ("eagle3", eagle("eagle.griffin_threshold=0.02")),
    "eagle3_norms": ("eagle3", eagle("eagle3.fc_norm=true", "eagle3.norm_output=true")),
    "eagle3_ttt7_hass_lk": ("eagle3", eagle("eagle.ttt_steps=7", "eagle.hass_topk_weight=1.0", "eagle.hass_context=true", "eagle.lk_loss_weight=1.0")),
    "eagle3_hass_lk": ("eagle3", eagle("eagle.hass_topk_weight=1.0", "eagle.hass_context=true", "eagle.lk_loss_weight=1.0")),
    "eagle1_base": ("eagle1", eagle()),
    "eagle1_vocab": ("eagle1", eagle("eagle1.draft_vocab_size=8192")),
    "eagle1_base_lr1e-3": ("eagle1", eagle("optim.lr=1e-3")),
    "eagle1_vocab_lr1e-3": ("eagle1", eagle("eagle1.draft_vocab_size=8192", "optim.lr=1e-3")),
    "medusa1_base": ("medusa1", ["medusa.num_heads=5"]),
    "medusa1_vocab": ("medusa1", ["medusa.num_heads=5", "medusa.draft_vocab_size=8192"]),
}
"""Run name -> (recipe, overrides beside COMMON). Medusa gets 5 heads so that every draft is measured at depth 5.
`eagle3_ttt7_hass_lk` combines the options whose chain-5 tau alone was above the base run's;
`eagle3_hass_lk` the two of them whose held-out expected accept length was also above it (the best).
The `_lr1e-3` EAGLE-1 pair repeats the vocabulary comparison at a lower lr, since `eagle1_vocab` diverged at 3e-3."""
TREE_RUNS = ("eagle3_base", "eagle3_ttt7_hass_lk")
"""Runs also decoded with the 8-node tree (the base run and the combination)."""
EVAL_TOKENS = 128
EVAL = ["bench=mt-bench", "per_category=2", f"max_new_tokens={EVAL_TOKENS}", "threads=2", "baselines=false"]
DEPTH = 5
DEFAULT_JOBS = {
    "medusa1_full": ("medusa1", ["medusa.draft_vocab_size=null"]),
    "medusa1_vocab": ("medusa1", ["medusa.draft_vocab_size=8192"]),
    "eagle1_full_lr3e-3": ("eagle1", ["eagle1.draft_vocab_size=null", "optim.lr=3e-3"]),
    "eagle1_full_lr1e-3": ("eagle1", ["eagle1.draft_vocab_size=null", "optim.lr=1e-3"]),
    "eagle1_vocab_lr1e-3": ("eagle1", ["eagle1.draft_vocab_size=8192", "optim.lr=1e-3"]),
    "chimera_full": ("chimera", ["chimera.draft_vocab_size=null"]),
    "chimera_vocab": ("chimera", ["chimera.draft_vocab_size=8192"]),
    "medusa2_full": ("medusa2", ["medusa.draft_vocab_size=null", "medusa2.lora_layers=0"]),
    "medusa2_vocab_top2": ("medusa2", ["medusa.draft_vocab_size=8192", "medusa2.lora_layers=2", "medusa2.kl_top_k=0"]),
    "medusa2_vocab_top2_kl32": ("medusa2", ["medusa.draft_vocab_size=8192", "medusa2.lora_layers=2", "medusa2.kl_top_k=32"]),
}
"""The default jobs (`specdec-train recipe=NAME`, online, self-distilled bundled prompts) with the choices
the ablation left open, spelled out so each measures the same thing whatever the recipe defaults become."""
DEFAULT_DEPTH = 4
"""Positions every default job validates (4 Medusa / Chimera heads, EAGLE-1's eagle.val_steps=4)."""


def run_dir(name: str) -> Path:
    return ROOT / "runs" / f"obj_{name}"


def train(names: list[str]) -> None:
    """Step 1: each run not yet trained (its draft folder is the mark), one at a time."""
    (ROOT / "runs").mkdir(exist_ok=True)
    if not (ROOT / FEATURES / "manifest.json").exists():
        timed(["specdec-prepare", "recipe=eagle3", "output_dir=runs/obj_prepare", *COMMON[:7]], ROOT / "runs" / "obj_prepare.log")
    for name in names or RUNS:
        if (run_dir(name) / "draft" / "config.json").exists():
            continue
        recipe, extra = RUNS[name]
        overrides = {a.split("=", 1)[0]: a for a in [*COMMON, *extra]}  # a run's own value of a common key wins
        timed(["specdec-train", f"recipe={recipe}", f"output_dir=runs/obj_{name}", *overrides.values()], ROOT / "runs" / f"obj_{name}.log")


LAYOUTS = {"chain5": ["tree=chain", f"depth={DEPTH}"], "tree8": ["tree=default", "tree_size=8", f"depth={DEPTH}"]}
"""Decoding layouts: a chain of DEPTH, and the 8-node tree (dynamic for EAGLE, static for Medusa)."""


def layouts(name: str) -> dict[str, list[str]]:
    """The layouts `evaluate` measures for a run: the chain for every run, the tree for the runs in TREE_RUNS."""
    return {k: v for k, v in LAYOUTS.items() if k == "chain5" or name in TREE_RUNS}


def evaluate(names: list[str]) -> None:
    """Step 2: tau of each run's draft at each layout (no baselines: tau does not depend on the machine's load)."""
    for name in names or RUNS:
        for layout, args in layouts(name).items():
            out = ROOT / "bench" / "objectives" / f"{name}_{layout}.json"
            if out.exists():
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            timed(["specdec-eval", f"draft={run_dir(name)}/draft", f"out={out}", f"plot={out.with_suffix('.png')}", *EVAL, *args], ROOT / "runs" / f"obj_{name}_{layout}.log")


def speed(name: str, lookup_tokens: int = 10) -> None:
    """Step 3: the best draft's tuned layout with and without the lookup branch, against the three baselines."""
    for label, extra in (("", []), ("_lookup", [f"lookup_branch={lookup_tokens}"])):
        out = ROOT / "bench" / "objectives" / f"{name}_speed{label}.json"
        args = [a for a in EVAL if a != "baselines=false"]
        timed(["specdec-eval", f"draft={run_dir(name)}/draft", f"out={out}", f"plot={out.with_suffix('.png')}", *args, "tree=tuned", *extra], ROOT / "runs" / f"obj_{name}_speed{label}.log")


def validation(name: str, depth: int = DEPTH) -> dict:
    """Held-out per-position top-1 and the expected accept length at `depth`, from the last validation pass
    (and, for a method that fine-tunes the target, how close the tuned target stayed to the original)."""
    rows = [r for r in csv.DictReader((run_dir(name) / "logs" / "metrics.csv").open()) if r.get("val/head1_top1")]
    last = rows[-1]
    top1 = [float(last[f"val/head{d}_top1"]) for d in range(1, depth + 1) if last.get(f"val/head{d}_top1")]
    expected = chain_accept_length([[a] for a in top1])
    guards = {key.split("/")[1]: round(float(last[key]), 4) for key in ("val/standard_kl", "val/greedy_agreement") if last.get(key)}
    return {"held_out_top1_by_position": [round(a, 4) for a in top1], f"expected_accept_length_depth{depth}": round(expected, 4), **guards}


def failure(name: str) -> str | None:
    """The error line of a run that ended without a draft (e.g. the divergence check), None if it never ran."""
    log = ROOT / "runs" / f"obj_{name}.log"
    if not log.exists():
        return None
    lines = [line.strip() for line in log.read_text().splitlines() if "Error" in line or "diverg" in line.lower()]
    return lines[-1] if lines else "no draft written (see the log)"


def collect() -> None:
    """Step 4: one JSON with every run's training cost, held-out accuracy and tau, and a plot of them."""
    report = {"setting": {"steps": STEPS, "batch_size": 4, "features": FEATURES, "common": COMMON, "eval": EVAL, "depth": DEPTH}, "runs": {}}
    for name, (recipe, extra) in RUNS.items():
        if not (run_dir(name) / "draft" / "config.json").exists():
            error = failure(name)
            if error:
                report["runs"][name] = {"recipe": recipe, "overrides": extra, "trained": False, "error": error}
            continue
        log = ROOT / "runs" / f"obj_{name}.log"
        entry = {"recipe": recipe, "overrides": extra, "trained": True, "train_cpu_min": round(cpu_seconds(log) / 60, 1), "train_wall_min": round(wall_seconds(log) / 60, 1), **validation(name)}
        for layout in layouts(name):
            path = ROOT / "bench" / "objectives" / f"{name}_{layout}.json"
            if path.exists():
                overall = json.loads(path.read_text())["overall"]
                entry[f"tau_{layout}"] = round(overall["mean_accepted_tokens"], 4)
                entry[f"acceptance_by_depth_{layout}"] = [round(a, 4) for a in overall["acceptance_by_depth"]]
                entry[f"lossless_{layout}"] = overall.get("lossless_match")
        report["runs"][name] = entry
    for path in sorted((ROOT / "bench" / "objectives").glob("*_speed*.json")):
        overall = json.loads(path.read_text())["overall"]
        keys = ("mean_accepted_tokens", "tokens_per_s", "plain_tokens_per_s", "speedup_vs_plain", "speedup_vs_hf_generate", "speedup_vs_prompt_lookup", "lossless_match", "accepted_lookup_tokens", "new_tokens")
        report.setdefault("speed", {})[path.stem] = {k: overall.get(k) for k in keys} | {k: json.loads(path.read_text())["setting"].get(k) for k in ("tree_kind", "tree_size", "tree_depth", "lookup_branch")}
    out = ROOT / "bench" / "objectives.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report["runs"], out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


def defaults(names: list[str]) -> None:
    """Each default job not yet run, then every finished one's held-out accuracy and CPU time in bench/objectives_defaults.json
    (jobs measured earlier and no longer on disk keep their entries)."""
    (ROOT / "runs").mkdir(exist_ok=True)
    for name in names or DEFAULT_JOBS:
        recipe, extra = DEFAULT_JOBS[name]
        if not (run_dir(f"default_{name}") / "draft" / "config.json").exists():
            timed(["specdec-train", f"recipe={recipe}", f"output_dir=runs/obj_default_{name}", "trainer.enable_progress_bar=false", *extra], ROOT / "runs" / f"obj_default_{name}.log")
    out = ROOT / "bench" / "objectives_defaults.json"
    jobs = json.loads(out.read_text())["jobs"] if out.exists() else {}
    for name, (recipe, extra) in DEFAULT_JOBS.items():
        if (run_dir(f"default_{name}") / "draft" / "config.json").exists():
            log = ROOT / "runs" / f"obj_default_{name}.log"
            jobs[name] = {"recipe": recipe, "overrides": extra, "cpu_min": round(cpu_seconds(log) / 60, 1), "wall_min": round(wall_seconds(log) / 60, 1), **validation(f"default_{name}", DEFAULT_DEPTH)}
    out.write_text(json.dumps({"setting": "specdec-train recipe=RECIPE with the overrides (CPU and wall time include self-distillation where the cache was cold)", "jobs": jobs}, indent=2) + "\n")
    print(json.dumps(jobs, indent=2))


def wall_seconds(log: Path) -> float:
    """Wall-clock seconds of a command timed by /usr/bin/time -v (its `h:mm:ss` or `m:ss` line)."""
    line = next(l for l in log.read_text().splitlines() if "Elapsed (wall clock)" in l)
    parts = [float(x) for x in line.rsplit(" ", 1)[1].split(":")]
    return sum(x * 60 ** i for i, x in enumerate(reversed(parts)))


def plot(runs: dict, out: Path) -> None:
    """Held-out expected accept length (depth 5) and chain-5 tau - 1 of every trained run, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in runs.items() if r.get("trained")]
    expected = [runs[n][f"expected_accept_length_depth{DEPTH}"] for n in names]
    tau = [runs[n].get("tau_chain5", 1.0) - 1 for n in names]
    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], expected, 0.4, label=f"held-out expected accepted drafts (depth {DEPTH})")
    ax.bar([i + 0.2 for i in x], tau, 0.4, label="MT-Bench 16: tau - 1, chain 5")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("accepted draft tokens per step")
    ax.set_title(f"Objectives at equal data: {STEPS} offline steps, batch 4, SmolLM2-135M target")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    command, names = (sys.argv[1] if len(sys.argv) > 1 else "collect"), sys.argv[2:]
    if command == "speed" and len(names) != 1:
        sys.exit(f"usage: python scripts/bench_objectives.py speed NAME (one of: {', '.join(RUNS)})")
    {"train": lambda: train(names), "evaluate": lambda: evaluate(names), "speed": lambda: speed(names[0]), "collect": collect, "defaults": lambda: defaults(names)}[command]()
