"""Data-parallel benchmark on CPU (see ../shared/BENCHMARK.md): training tokens/s of the
Medusa-1 recipe with 1 process vs 2 DDP processes (gloo) at the same effective batch.

    python scripts/bench_ddp.py [--steps 12] [--out bench/train_ddp.json]

The CPU has a fixed number of cores: 1 process uses them all as torch threads, each of 2 DDP
processes gets half. Each job runs through the real `specdec-train` CLI; a callback times the
optimizer steps (first step dropped as warm-up) and sums the tokens of all ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "sharegpt_smollm2_selfdistill.jsonl"


class GlobalStepTimer(L.Callback):
    """Wall time of each optimizer step and the tokens all ranks processed in it; rank 0 prints them."""

    def __init__(self):
        self.steps, self.tokens = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        tokens = trainer.strategy.reduce(batch["attention_mask"].sum().float(), reduce_op="sum")
        self.steps.append(time.perf_counter() - self._start)
        self.tokens.append(float(tokens))

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            print("TIMINGS " + json.dumps({"steps": self.steps, "tokens": self.tokens}), flush=True)


def job(argv: list[str]) -> None:
    """Inside a launched job (every rank runs this): train with the timer."""
    from specdec.train.cli import run_cli

    sys.exit(run_cli(argv, callbacks=[GlobalStepTimer()]))


def measure(processes: int, cores: int, args) -> dict:
    """One job of `processes` ranks sharing `cores` threads; summary of its step timings."""
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            "recipe=medusa1", f"output_dir={out}", f"data.source={args.data}", "data.self_distill=false",
            f"data.max_samples={args.batch_size * (args.steps + 1) + 8}", "data.val_size=8",
            f"data.batch_size={args.batch_size // processes}", f"data.max_length={args.max_length}",
            f"trainer.max_steps={args.steps + 1}", f"trainer.val_every_n_steps={args.steps + 1}",
            f"trainer.checkpoint_every_n_steps={args.steps + 1}", "trainer.logger=none", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", f"trainer.devices={processes}", f"trainer.strategy={'ddp' if processes > 1 else 'auto'}",
            f"trainer.num_threads={cores // processes}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(cores // processes)}
        proc = subprocess.run([sys.executable, __file__, "--job", *overrides], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"{processes}-process job failed:\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("TIMINGS "))
    timings = json.loads(line.removeprefix("TIMINGS "))
    steps, tokens = timings["steps"][1:], timings["tokens"][1:]
    return {
        "processes": processes,
        "threads_per_process": cores // processes,
        "micro_batch_per_process": args.batch_size // processes,
        "effective_batch": args.batch_size,
        "steps_timed": len(steps),
        "step_s_median": statistics.median(steps),
        "train_tokens_per_s": statistics.median(t / s for t, s in zip(tokens, steps)),
        "train_tokens_per_s_mean": sum(tokens) / sum(steps),
    }


def main() -> None:
    if sys.argv[1:2] == ["--job"]:
        return job(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA) if SHARED_DATA.is_file() else "smollm2-selfdistill", help="self-distilled training data (default: the standard setting's file)")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per job")
    parser.add_argument("--batch-size", type=int, default=4, help="effective batch (sequences per optimizer step)")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--cores", type=int, default=2, help="CPU cores shared by the processes")
    parser.add_argument("--out", default="bench/train_ddp.json")
    args = parser.parse_args()
    # Step 1: the same recipe and effective batch with 1 process and with 2 DDP processes.
    results = []
    for processes in (1, 2):
        results.append(measure(processes, args.cores, args))
        print(json.dumps(results[-1], indent=2), flush=True)
    # Step 2: the ratio, and the JSON with the setting it was measured in.
    report = {
        "setting": {
            "target": "smollm2-135m (float32, CPU)",
            "recipe": "medusa1",
            "data": Path(args.data).name,
            "max_length": args.max_length,
            "cores": args.cores,
            "backend": "gloo",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
            "torch": torch.__version__,
            "lightning": L.__version__,
        },
        "results": results,
        "ddp2_over_single_tokens_per_s": results[1]["train_tokens_per_s"] / results[0]["train_tokens_per_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}: 2-process DDP / 1 process = {report['ddp2_over_single_tokens_per_s']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
