"""Training benchmark (see ../shared/BENCHMARK.md): tokens/s, peak RSS, and the ratio of a
training step's time to a frozen-target forward on the same batch, for online training.

    python scripts/bench_train.py [--steps 12] [--out bench/train_medusa.json]
    python scripts/bench_train.py --methods eagle1,eagle3,chimera --out bench/train_eagle.json
    python scripts/bench_train.py --methods medusa1_vocab,medusa2_vocab_top2_kl32,medusa2_vocab_top2,eagle1_vocab,eagle3_hass_lk,chimera_vocab,sdsat,eagle3_ttt7 --out bench/train_objectives.json
    python scripts/bench_train.py --methods sdsat_top2,sdsat_top2_anchors8,sdsat_top2_kl32,sdsat_top2_anchors8_kl32 --out bench/train_sdsat.json

Each method runs in its own process (so peak RSS is its own) through the real `specdec-train`
pipeline, with a callback that times every optimizer step and then, outside the timed region,
one plain target forward (with logits) over the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "sharegpt_smollm2_selfdistill.jsonl"
VOCAB = "8192"
"""V_draft of the reduced-vocabulary variants (EAGLE-3's default)."""
METHODS = {
    "medusa1": ("medusa1", {"medusa.draft_vocab_size": "0"}),
    "medusa2": ("medusa2", {"medusa2.heads_only_steps": "0", "medusa.draft_vocab_size": "0", "medusa2.lora_layers": "0"}),  # the joint (LoRA + heads) step
    "eagle1": ("eagle1", {"eagle1.draft_vocab_size": "0"}),
    "eagle3": ("eagle3", {"eagle.hass_topk_weight": "0", "eagle.hass_context": "false", "eagle.lk_loss_weight": "0"}),
    "chimera": ("chimera", {"chimera.draft_vocab_size": "0"}),
    "medusa1_vocab": ("medusa1", {"medusa.draft_vocab_size": VOCAB}),
    "chimera_vocab": ("chimera", {"chimera.draft_vocab_size": VOCAB}),
    "eagle1_vocab": ("eagle1", {"eagle1.draft_vocab_size": VOCAB}),
    "eagle3_ttt7": ("eagle3", {"eagle.ttt_steps": "7", "eagle.val_steps": "7", "eagle.hass_topk_weight": "0", "eagle.hass_context": "false", "eagle.lk_loss_weight": "0"}),
    "medusa2_vocab_top2": ("medusa2", {"medusa2.heads_only_steps": "0", "medusa.draft_vocab_size": VOCAB, "medusa2.lora_layers": "2", "medusa2.kl_top_k": "0"}),
    "medusa2_vocab_top2_kl32": ("medusa2", {"medusa2.heads_only_steps": "0", "medusa.draft_vocab_size": VOCAB, "medusa2.lora_layers": "2", "medusa2.kl_top_k": "32"}),
    "eagle3_hass_lk": ("eagle3", {"eagle.hass_topk_weight": "1.0", "eagle.hass_context": "true", "eagle.lk_loss_weight": "1.0"}),
    "sdsat": ("sdsat", {"sdsat.sa_only_steps": "0", "sdsat.lora_layers": "0", "sdsat.anchors_per_sequence": "32"}),  # the joint step: LoRA on the target + the adaptive-token embeddings
    "sdsat_top2": ("sdsat", {"sdsat.sa_only_steps": "0", "sdsat.lora_layers": "2", "sdsat.anchors_per_sequence": "32"}),
    "sdsat_top2_anchors8": ("sdsat", {"sdsat.sa_only_steps": "0", "sdsat.lora_layers": "2", "sdsat.anchors_per_sequence": "8"}),
    "sdsat_top2_kl32": ("sdsat", {"sdsat.sa_only_steps": "0", "sdsat.lora_layers": "2", "sdsat.anchors_per_sequence": "32", "sdsat.kl_top_k": "32"}),
    "sdsat_top2_anchors8_kl32": ("sdsat", {"sdsat.sa_only_steps": "0", "sdsat.lora_layers": "2", "sdsat.anchors_per_sequence": "8", "sdsat.kl_top_k": "32"}),
}
"""Name -> (recipe, overrides): the recipes as first measured (full vocabulary, no objectives), and the options of issue 14
that change a step's cost, each spelled out in full so that a name measures the same thing whatever the recipe defaults become."""


class StepTimer(L.Callback):
    """Times each training step, then a target forward over the same batch (untimed by the step)."""

    def __init__(self):
        self.steps, self.forwards, self.tokens, self.loss_tokens = [], [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(time.perf_counter() - self._start)
        with torch.no_grad():
            start = time.perf_counter()
            pl_module.target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            self.forwards.append(time.perf_counter() - start)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.loss_tokens.append(int(batch["loss_mask"].sum()))


def measure(method: str, data: str, steps: int, batch_size: int, max_length: int, threads: int) -> dict:
    """Run `steps` optimizer steps of `method` and summarise the timings (first step dropped as warm-up)."""
    from specdec.train.config import load_recipe
    from specdec.train.pipeline import run

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        overrides = {
            "output_dir": out,
            "data.source": data,
            "data.self_distill": "false",
            "data.max_samples": str(batch_size * (steps + 1) + 8),
            "data.val_size": "8",
            "data.batch_size": str(batch_size),
            "data.max_length": str(max_length),
            "trainer.max_steps": str(steps + 1),
            "trainer.val_every_n_steps": str(steps + 1),
            "trainer.checkpoint_every_n_steps": str(steps + 1),
            "trainer.logger": "none",
            "trainer.enable_progress_bar": "false",
            **METHODS[method][1],
        }
        timer = StepTimer()
        run(load_recipe(METHODS[method][0], overrides), callbacks=[timer])
    steps_s, fwd_s = timer.steps[1:], timer.forwards[1:]
    ratios = [s / f for s, f in zip(steps_s, fwd_s)]
    return {
        "method": method,
        "overrides": METHODS[method][1],
        "steps_timed": len(steps_s),
        "step_s_median": statistics.median(steps_s),
        "target_forward_s_median": statistics.median(fwd_s),
        "step_over_target_forward": statistics.median(ratios),
        "train_tokens_per_s": statistics.median(t / s for t, s in zip(timer.tokens[1:], steps_s)),
        "train_tokens_per_s_mean": sum(timer.tokens[1:]) / sum(steps_s),
        "loss_tokens_per_s": statistics.median(t / s for t, s in zip(timer.loss_tokens[1:], steps_s)),
        "tokens_per_batch_median": statistics.median(timer.tokens[1:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA) if SHARED_DATA.is_file() else "smollm2-selfdistill", help="self-distilled training data (default: the standard setting's file)")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per method")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="medusa1,medusa2", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--out", default="bench/train_medusa.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.data, args.steps, args.batch_size, args.max_length, args.threads)))
        return
    results = []
    for method in args.methods.split(","):
        # Step 1: one process per method, so its peak RSS is its own.
        cmd = [sys.executable, __file__, "--one", method, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{method} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=2), flush=True)
    # Step 2: write the JSON with the setting it was measured in.
    report = {
        "setting": {
            "target": "smollm2-135m (float32, CPU)",
            "data": Path(args.data).name,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "date": time.strftime("%Y-%m-%d"),
        },
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
