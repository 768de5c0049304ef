"""The GPU check (issue 15): one prepared run on one CUDA GPU, under 10 minutes, one JSON.

    bash scripts/gpu_check.sh                       # the CUDA-only tests, then this script (bench/gpu_check.json)
    python scripts/gpu_check.py --out FILE          # this script alone
    python scripts/gpu_check.py --device cpu --quick --out FILE   # the same code path on a CPU (smoke run)

Steps, all on `--device` (default cuda):
1. the machine: torch, the device's name, bfloat16 support;
2. a few training steps of EAGLE-3 and Medusa-1 (the shipped recipes, `trainer.precision=bf16-mixed`
   on CUDA, self-distilled bundled prompts), the loss checked finite;
3. greedy decoding of the first 8 MT-Bench questions (one per category) with each draft, on the
   device in the target's float32: lossless_match against plain greedy, tau, tokens/s and the
   speedups, as specdec-eval reports them;
4. the verify-cost curve t(k) / t(1): one target forward of k tokens over a cached 256-token prefix,
   k = 1..64, medians of repeated timings (the cost a tree of k nodes adds per step).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

STEPS = 12
"""Training steps per draft (a check that CUDA training runs, not a trained draft)."""
QUESTIONS = 8
"""MT-Bench questions decoded per draft (the first of each category)."""
VERIFY_SIZES = list(range(1, 65))
"""Block sizes k of the verify-cost curve."""
PREFIX = 256
"""Cached prefix length of the verify-cost curve."""


def environment(device: torch.device) -> dict:
    """Step 1: what ran the check."""
    info = {"torch": torch.__version__, "device": str(device), "date": time.strftime("%Y-%m-%d")}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported()}
    return info


def train(recipe: str, target: str, out: Path, device: torch.device, steps: int, samples: int) -> dict:
    """Step 2: `steps` optimizer steps of `recipe` on the device; the last training loss and the draft folder."""
    from specdec.train.config import load_recipe
    from specdec.train.pipeline import run

    overrides = {
        "target.name_or_path": target, "output_dir": str(out), "data.cache_dir": str(out / "distill"), "data.max_samples": str(samples), "data.val_size": "8",
        "data.max_new_tokens": "64", "trainer.max_steps": str(steps), "trainer.val_every_n_steps": str(steps),
        "trainer.checkpoint_every_n_steps": str(steps), "trainer.log_every_n_steps": "1", "trainer.enable_progress_bar": "false",
        "trainer.accelerator": "gpu" if device.type == "cuda" else "cpu", "trainer.devices": "1",
        "trainer.precision": "bf16-mixed" if device.type == "cuda" else "32-true",
    }
    start = time.perf_counter()
    result = run(load_recipe(recipe, overrides))
    with (out / "logs" / "metrics.csv").open() as metrics:
        losses = [float(row["train/loss"]) for row in csv.DictReader(metrics) if row.get("train/loss")]
    return {"recipe": recipe, "steps": steps, "precision": overrides["trainer.precision"], "seconds": round(time.perf_counter() - start, 1),
            "last_train_loss": losses[-1], "loss_finite": all(map(math.isfinite, losses)), "draft": str(result.draft_dir)}


def decode(draft_dir: str, target, questions: list[dict], max_new_tokens: int) -> dict:
    """Step 3: the draft on the device against plain greedy (lossless check, tau, speed)."""
    from specdec.eval.benchmark import evaluate
    from specdec.models.base import load_draft

    draft = load_draft(draft_dir).to(target.model.device)
    report = evaluate(target.model, target.tokenizer, draft, questions, max_new_tokens=max_new_tokens, baselines=False, progress=False)
    keys = ("lossless_match", "mean_accepted_tokens", "tokens_per_s", "plain_tokens_per_s", "speedup_vs_plain")
    return {k: report["overall"].get(k) for k in keys} | {"lossless_failures": report["lossless_failures"]}


def verify_cost(model, device: torch.device, sizes: list[int], repeats: int) -> dict:
    """Step 4: median seconds of one forward of k tokens over a cached PREFIX-token prefix, and t(k) / t(1)."""
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prefix = torch.randint(0, vocab, (1, PREFIX), generator=generator).to(device)
    seconds = {}
    with torch.inference_mode():
        for k in sizes:
            block = torch.randint(0, vocab, (1, k), generator=generator).to(device)
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                cache = DynamicCache()
                model(input_ids=prefix, past_key_values=cache, use_cache=True)
                _sync(device)
                start = time.perf_counter()
                model(input_ids=block, past_key_values=cache, use_cache=True)
                _sync(device)
                times.append(time.perf_counter() - start)
            seconds[k] = statistics.median(times[1:])
    return {"prefix": PREFIX, "seconds": seconds, "ratio_to_k1": {k: round(s / seconds[sizes[0]], 3) for k, s in seconds.items()}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke run of the same code)")
    parser.add_argument("--target", default="smollm2-135m", help="target name or folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps, 2 questions, 16 tokens, k up to 4")
    parser.add_argument("--out", default="bench/gpu_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible: run the GPU check on a GPU machine (or --device cpu for a smoke run)")
    steps, questions, tokens, sizes, repeats = (3, 2, 16, [1, 2, 4], 2) if args.quick else (STEPS, QUESTIONS, 128, VERIFY_SIZES, 10)
    from specdec.eval.benchmark import load_questions
    from specdec.models.target import load_target

    report = {"environment": environment(device), "train": {}, "decode": {}}
    with tempfile.TemporaryDirectory() as work:
        for recipe in ("eagle3", "medusa1"):
            report["train"][recipe] = train(recipe, args.target, Path(work) / recipe, device, steps, 8 * steps + 8)
            print(json.dumps(report["train"][recipe]), flush=True)
        target = load_target(args.target)
        target.model.to(device)
        mt_bench = load_questions("mt-bench", per_category=1)[:questions]
        for recipe in ("eagle3", "medusa1"):
            report["decode"][recipe] = decode(report["train"][recipe].pop("draft"), target, mt_bench, tokens)
            print(recipe, json.dumps(report["decode"][recipe]), flush=True)
        report["verify_cost"] = verify_cost(target.model, device, sizes, repeats)
    report["ok"] = all(t["loss_finite"] for t in report["train"].values()) and all(d["lossless_match"] == 1.0 for d in report["decode"].values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}: ok={report['ok']}")


if __name__ == "__main__":
    main()
