"""SDSAT on the standard setting (../shared/BENCHMARK.md): train the embedded target with SA tokens, then decode.

    python scripts/bench_sdsat.py train      # specdec-train recipe=sdsat on the standard set (~50 min on 2 cores)
    python scripts/bench_sdsat.py evaluate   # decoding on 16 MT-Bench questions -> bench/sdsat_mtbench16.json (+ .png)
    python scripts/bench_sdsat.py train top2 # the cheap step (LoRA on the top 2 layers, 8 anchors, top-32 KL) at the same CPU budget (~38 min)
    python scripts/bench_sdsat.py compare    # held-out slot accuracy, guards and CPU time of both runs -> bench/sdsat_training.json

Training runs under /usr/bin/time -v (its CPU time goes into the JSON). Evaluation, in one
process, greedy, 256 new tokens, the first 2 MT-Bench questions of each category: plain decoding
and prompt lookup with the tuned model AND with the original target, then the SDSAT proposer in
both runtime variants (fused: the next step's SA slots ride in the verification forward; two-step:
the paper's loop, two forwards per step): the fastest layout of each variant on two calibration
questions (`tune_tree`) and the fused chain of all k slots. It records tau, tokens/s, the
speedups against the tuned model's own plain decoding and prompt lookup and against the original
target's, lossless_match against the tuned model's plain greedy output, and the standard-token
guards: the held-out KL and teacher-forced greedy agreement of the training run, and the share of
the original target's greedy tokens the tuned model reproduces free-running on these questions.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "train" / "sharegpt_smollm2_selfdistill.jsonl"
RUN = ROOT / "runs" / "bench_sdsat"
OUT = ROOT / "bench" / "sdsat_mtbench16.json"
STEPS = 96
"""Optimizer steps of the recorded run (about 25 s each on these two cores)."""


def train_options(steps: int) -> list[str]:
    """The recorded runs' overrides for `steps` optimizer steps (validation at half and at the end)."""
    return [
        f"data.source={DATA}", "data.self_distill=false", "data.max_samples=null", "data.val_size=64", "data.max_length=384", "data.batch_size=4",
        "trainer.num_threads=2", f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={steps // 2}", f"trainer.checkpoint_every_n_steps={steps // 4}",
        "trainer.enable_progress_bar=false", "sdsat.sa_only_steps=16", "optim.lr=1e-3", "optim.warmup_steps=8",
    ]


TRAIN = train_options(STEPS)


VARIANTS = {
    "recipe": (RUN, TRAIN),
    "top2": (ROOT / "runs" / "bench_sdsat_top2", [
        *train_options(STEPS * 8), "sdsat.lora_layers=2", "sdsat.anchors_per_sequence=8", "sdsat.kl_top_k=32",
    ]),
}
"""Name -> (run folder, overrides): the recipe as shipped, and the step within 1.5 target forwards (bench/train_sdsat.json)
given 8x the steps, which is about the recipe run's CPU time."""
COMPARE = ROOT / "bench" / "sdsat_training.json"


def train(variant: str = "recipe") -> None:
    """specdec-train recipe=sdsat on the standard set, timed (resume=last continues an interrupted run)."""
    run, overrides = VARIANTS[variant]
    resume = ["resume=last"] if (run / "checkpoints" / "last.ckpt").is_file() else []
    run.mkdir(parents=True, exist_ok=True)
    with log_path(run).open("a") as log:
        subprocess.run(["/usr/bin/time", "-v", "specdec-train", "recipe=sdsat", f"output_dir={run}", *overrides, *resume], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)


def log_path(run: Path) -> Path:
    """The timed training log of a run folder (next to it)."""
    return run.parent / f"{run.name}.log"


def compare() -> None:
    """Held-out metrics (final and halfway), steps and CPU minutes of every variant trained; one JSON."""
    import csv

    result = {"setting": "BENCHMARK.md standard set, 64 held out; batch 4, max_length 384, 2 threads", "date": time.strftime("%Y-%m-%d"), "variants": {}}
    for name, (run, overrides) in VARIANTS.items():
        config = run / "draft" / "config.json"
        if not config.is_file():
            if name == "recipe" and OUT.is_file():  # the decoding benchmark's JSON records the recipe run it decoded
                recorded = json.loads(OUT.read_text())["training"]
                result["variants"][name] = {"overrides": recorded["recipe_overrides"], "steps": recorded["steps"], "cpu_minutes": recorded["cpu_minutes"], "metrics": recorded["metrics"], "from": str(OUT.relative_to(ROOT))}
            continue
        rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
        validations = {int(r["step"]) + 1: {k: float(v) for k, v in r.items() if k.startswith("val/") and v} for r in rows if r.get("val/head1_top1")}
        trained = json.loads(config.read_text())
        result["variants"][name] = {"overrides": overrides, "steps": trained["training"]["steps"], "cpu_minutes": cpu_minutes(log_path(run)), "metrics": trained["metrics"], "validations": validations}
    COMPARE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({n: {"steps": v["steps"], "cpu_minutes": v["cpu_minutes"], **{k: round(v["metrics"][k], 4) for k in ("val/head1_top1", "val/expected_accept_length", "val/standard_kl", "val/greedy_agreement")}} for n, v in result["variants"].items()}, indent=2))


def cpu_minutes(log: Path) -> float | None:
    """User + system CPU minutes of every timed job in `log`."""
    text = log.read_text() if log.is_file() else ""
    seconds = [float(v) for v in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
    return round(sum(seconds) / 60, 1) if seconds else None


def evaluate() -> None:
    """Decode the 16 questions with both targets and both SDSAT variants; write the JSON and the plot."""
    import torch

    from specdec.eval.benchmark import _hf_generate, _timed, load_questions, prompt_ids, question_record, summarize
    from specdec.models.base import load_draft
    from specdec.models.target import load_target
    from specdec.runtime.autotune import tune_tree
    from specdec.runtime.generator import SpeculativeGenerator, default_eos_ids, plain_generate
    from specdec.runtime.sdsat_proposer import SdsatOptions, SdsatProposer
    from specdec.runtime.tree import DraftTree

    # Step 1: the original target, the tuned one and the SDSAT draft; the fastest fused and two-step layouts.
    torch.set_num_threads(2)
    draft_dir = RUN / "draft"
    draft = load_draft(draft_dir)
    original, tuned = load_target("smollm2-135m"), load_target(str(draft_dir / "target"))
    questions = load_questions("mt-bench", per_category=2)
    calibration = [prompt_ids(tuned.tokenizer, q) for q in questions[:2]]
    _, _, speeds = tune_tree(tuned.model, draft, calibration)
    best = {variant: max((label for label in speeds if label.startswith("two-step") == (variant == "two_step")), key=speeds.get) for variant in ("fused", "two_step")}
    candidates = SdsatProposer.tuning_candidates(draft)
    k = draft.config.num_sa_tokens
    layouts: dict = {}
    for label, layout in ((best["fused"], candidates[best["fused"]]), (f"fused chain {k}", SdsatOptions(DraftTree.chain(k))), (best["two_step"], candidates[best["two_step"]])):
        if layout not in layouts.values():  # the fastest fused layout may be the full chain
            layouts[label] = layout
    generators = {name: SpeculativeGenerator.from_draft(tuned.model, draft, layout, tokenizer=tuned.tokenizer) for name, layout in layouts.items()}
    eos = sorted(default_eos_ids(tuned.model, tuned.tokenizer))
    # Step 2: every decoder on every question, in one process (each warmed up on a few tokens first).
    records: dict[str, list[dict]] = {name: [] for name in layouts}
    agreement = []
    with torch.inference_mode():
        warm = calibration[0]
        for model, tokenizer in ((original.model, original.tokenizer), (tuned.model, tuned.tokenizer)):
            plain_generate(model, warm, 8, tokenizer=tokenizer)
            _hf_generate(model, warm, 8, eos, tokenizer, prompt_lookup_num_tokens=10)
        for generator in generators.values():
            generator.generate(warm, 8)
        for question in questions:
            ids = prompt_ids(tuned.tokenizer, question)
            reference, t_ref = _timed(lambda: plain_generate(original.model, ids, 256, tokenizer=original.tokenizer), ids.device)
            ref_pld = _timed(lambda: _hf_generate(original.model, ids, 256, eos, original.tokenizer, prompt_lookup_num_tokens=10), ids.device)
            plain, t_plain = _timed(lambda: plain_generate(tuned.model, ids, 256, tokenizer=tuned.tokenizer), ids.device)
            pld = _timed(lambda: _hf_generate(tuned.model, ids, 256, eos, tuned.tokenizer, prompt_lookup_num_tokens=10), ids.device)
            common = next((i for i, (a, b) in enumerate(zip(plain.tokens, reference.tokens)) if a != b), min(len(plain.tokens), len(reference.tokens)))
            agreement.append({"identical": plain.tokens == reference.tokens, "common_prefix_share": common / max(len(reference.tokens), 1)})
            for name, generator in generators.items():
                spec, t_spec = _timed(lambda: generator.generate(ids, 256), ids.device)
                record = question_record(question, spec, t_spec, plain, t_plain, None, pld, lossless=True)
                tps = record["tokens_per_s"]
                record["speedup_vs_original_plain"] = tps / (len(reference.tokens) / t_ref)
                record["speedup_vs_original_prompt_lookup"] = tps / (len(ref_pld[0]) / ref_pld[1])
                records[name].append(record)
            print(f"question {question['question_id']} done", flush=True)
    # Step 3: summaries, the guards, the CPU time of training; JSON and plot.
    summaries = {}
    for name, rows in records.items():
        summary = summarize(rows)
        for extra in ("speedup_vs_original_plain", "speedup_vs_original_prompt_lookup"):
            summary[extra] = statistics.median(r[extra] for r in rows)
            summary[f"{extra}_mean"] = statistics.fmean(r[extra] for r in rows)
        summaries[name] = {"layout": generators[name].proposer.describe(), **summary}
    config = json.loads((draft_dir / "config.json").read_text())
    result = {
        "setting": "BENCHMARK.md standard setting; greedy, 256 new tokens, 16 MT-Bench first turns (2 per category); speedups per question, medians",
        "date": time.strftime("%Y-%m-%d"),
        "training": {"steps": config["training"]["steps"], "cpu_minutes": cpu_minutes(log_path(RUN)), "recipe_overrides": TRAIN, "metrics": config["metrics"]},
        "tuning_tokens_per_s": speeds,
        "standard_tokens": {
            "val_standard_kl": config["metrics"].get("val/standard_kl"),
            "val_greedy_agreement_teacher_forced": config["metrics"].get("val/greedy_agreement"),
            "identical_outputs_vs_original": statistics.fmean(a["identical"] for a in agreement),
            "common_prefix_share_vs_original": statistics.fmean(a["common_prefix_share"] for a in agreement),
        },
        "variants": summaries,
        "questions": records,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, OUT.with_suffix(".png"))
    print(json.dumps({name: {k: s[k] for k in ("mean_accepted_tokens", "speedup_vs_plain", "speedup_vs_prompt_lookup", "speedup_vs_original_plain", "lossless_match")} for name, s in summaries.items()}, indent=2))


def plot(result: dict, path: Path) -> None:
    """tau and the median speedups of each variant, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(names, [result["variants"][n]["mean_accepted_tokens"] for n in names], color="tab:blue")
    left.set(title="SDSAT: tau (tokens per target forward)", ylabel="tau")
    keys = [("speedup_vs_plain", "tuned plain"), ("speedup_vs_prompt_lookup", "tuned prompt lookup"), ("speedup_vs_original_plain", "original plain"), ("speedup_vs_original_prompt_lookup", "original prompt lookup")]
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        right.bar([g + (i - 1.5) * width for g in range(len(names))], [result["variants"][n][key] for n in names], width, label=f"vs {label}")
    right.axhline(1.0, color="black", linestyle="--", linewidth=1)
    right.set_xticks(range(len(names)), names, rotation=15)
    right.set(title="speedup (median over 16 questions)", ylabel="x")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    {"train": train, "evaluate": evaluate, "compare": compare}[sys.argv[1] if len(sys.argv) > 1 else "train"](*sys.argv[2:3])
