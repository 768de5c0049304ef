"""Self-distillation benchmark (see ../shared/BENCHMARK.md): today's pipeline, the specdec engine and
plain transformers `generate` answering the same prompts, with tokens/s and peak RSS.

    python scripts/bench_distill.py            # 64 prompts, up to 128 new tokens (bench/distill.json)
    python scripts/bench_distill.py --quick    # smoke run: 8 prompts, 32 new tokens (bench/distill_quick.json)

Setting: the embedded target smollm2-135m, greedy, 2 threads; prompts are the user turns of the
first conversations of the standard ShareGPT file (or the bundled sharegpt-prompts). Variants:

- today: `self_distill` with engine=hf and batch_size 16 (data.generation_batch_size's old default):
  `model.generate` on batches in data order.
- specdec: `self_distill` with engine=specdec and batch_size=None (chosen from memory_mb), float32.
- specdec_bf16: the same in bfloat16 (its greedy answers differ from float32 ones; the share of
  identical answers is recorded).
- hf_generate_bsN: `model.generate` alone (no self_distill around it) at each batch size N; the
  best one is reported as hf_generate_best.

Each variant runs in its own process; the parent samples its RSS with psutil, so peak RSS is the
variant's own. tokens/s counts the answer tokens (up to and including EOS) over the generation
time (the target is loaded and warmed up before the clock starts). The specdec float32 answers
are compared with today's token for token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "sharegpt_smollm2_selfdistill.jsonl"
TODAY_BATCH_SIZE = 16
RSS_POLL_S = 0.05


def _prompts(source: str, count: int) -> list[list[dict]]:
    """The system and first user turn of the first ``count`` conversations of ``source``."""
    from specdec.data.sources import load_conversations, user_turns

    return [user_turns(conversation)[:1] if conversation[0]["role"] == "user" else user_turns(conversation)[:2] for conversation in load_conversations(source, max_samples=count)]


def _distill_variant(target, prompts, max_new_tokens: int, **config) -> tuple[float, list[list[int]]]:
    """Time `self_distill` with ``config``; return the seconds and each prompt's answer token ids."""
    from specdec.data import distill

    rows: list[list[int]] = []
    generate_token_ids = distill.generate_token_ids

    def recording(model, encoded, pad_id, eos_id, cfg):
        answers = generate_token_ids(model, encoded, pad_id, eos_id, cfg)
        rows.extend(distill._until_eos(row, eos_id) for row in answers)
        return answers

    distill.generate_token_ids = recording
    cfg = distill.DistillConfig(max_new_tokens=max_new_tokens, temperature=0.0, chunk_size=64, **config)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        distill.self_distill(target.model, target.tokenizer, prompts, cfg, cache, target.target_id, show_progress=False)
        seconds = time.perf_counter() - start
    return seconds, rows


def _generate_variant(target, prompts, max_new_tokens: int, batch_size: int) -> tuple[float, list[list[int]]]:
    """Time plain `model.generate` (greedy, left-padded batches of ``batch_size`` in order) on the prompts."""
    import torch

    from specdec.data.distill import _until_eos

    tokenizer, model = target.tokenizer, target.model
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) for prompt in prompts]
    rows: list[list[int]] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(texts), batch_size):
            inputs = tokenizer(texts[first : first + batch_size], add_special_tokens=False, return_tensors="pt", padding=True)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            rows.extend(_until_eos(row, tokenizer.eos_token_id) for row in output[:, inputs["input_ids"].shape[1] :].tolist())
    return time.perf_counter() - start, rows


def run_variant(name: str, args) -> dict:
    """Load the target, warm it up, run one variant and return its timing and answer token ids."""
    import torch

    from specdec.models.target import load_target

    torch.set_num_threads(args.threads)
    target = load_target("smollm2-135m")
    prompts = _prompts(args.data, args.prompts)
    _generate_variant(target, prompts[:2], 4, 2)  # warm-up, untimed
    if name == "today":
        seconds, rows = _distill_variant(target, prompts, args.max_new_tokens, engine="hf", batch_size=TODAY_BATCH_SIZE)
    elif name in ("specdec", "specdec_bf16"):
        dtype = "bfloat16" if name == "specdec_bf16" else "float32"
        seconds, rows = _distill_variant(target, prompts, args.max_new_tokens, engine="specdec", batch_size=None, memory_mb=args.memory_mb, dtype=dtype)
    else:
        seconds, rows = _generate_variant(target, prompts, args.max_new_tokens, int(name.removeprefix("hf_generate_bs")))
    tokens = sum(len(row) for row in rows)
    return {"variant": name, "seconds": seconds, "new_tokens": tokens, "tokens_per_s": tokens / seconds, "answers": rows}


def measure(name: str, argv: list[str]) -> dict:
    """Run one variant in its own process, sampling its RSS with psutil; return its result with peak_rss_mb."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = psutil.Popen([sys.executable, __file__, *argv, "--one", name, "--one-out", out.name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(RSS_POLL_S)
        stderr = proc.stderr.read()
        if proc.returncode != 0:
            sys.exit(f"variant {name} failed:\n{stderr[-3000:]}")
        result = json.loads(Path(out.name).read_text())
    result["peak_rss_mb"] = round(peak / 2**20, 1)
    return result


def _same_answers(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of prompts whose answers are identical token for token."""
    return sum(x == y for x, y in zip(a, b)) / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA) if SHARED_DATA.is_file() else "sharegpt-prompts", help="prompt source (default: the standard ShareGPT file)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-mb", type=int, default=2048, help="memory bound of the specdec engine's batch size")
    parser.add_argument("--hf-batch-sizes", default="8,16,32,64", help="batch sizes swept for plain generate")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 prompts, 32 new tokens, generate at batch 8 only")
    parser.add_argument("--out", help="default: bench/distill.json (bench/distill_quick.json with --quick)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--one-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens, args.hf_batch_sizes = 8, 32, "8"
    if args.one:
        Path(args.one_out).write_text(json.dumps(run_variant(args.one, args)))
        return
    # Step 1: every variant in its own process.
    argv = [a for a in sys.argv[1:] if a != "--quick"] + ["--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens), "--hf-batch-sizes", args.hf_batch_sizes]
    names = ["today", "specdec", "specdec_bf16", *(f"hf_generate_bs{size}" for size in args.hf_batch_sizes.split(","))]
    results = {}
    for name in names:
        results[name] = measure(name, argv)
        print(f"{name}: {results[name]['tokens_per_s']:.1f} tokens/s, {results[name]['new_tokens']} tokens, peak RSS {results[name]['peak_rss_mb']} MB", flush=True)
    # Step 2: compare the answers with today's and summarise.
    today = results["today"]["answers"]
    best_hf = max((n for n in names if n.startswith("hf_generate_bs")), key=lambda n: results[n]["tokens_per_s"])
    summary = {
        "specdec_over_today": results["specdec"]["tokens_per_s"] / results["today"]["tokens_per_s"],
        "specdec_bf16_over_today": results["specdec_bf16"]["tokens_per_s"] / results["today"]["tokens_per_s"],
        "specdec_over_hf_generate_best": results["specdec"]["tokens_per_s"] / results[best_hf]["tokens_per_s"],
        "hf_generate_best": best_hf,
        "specdec_float32_identical_to_today": results["specdec"]["answers"] == today,
        "specdec_float32_same_answers_fraction": _same_answers(results["specdec"]["answers"], today),
        "specdec_bf16_same_answers_fraction": _same_answers(results["specdec_bf16"]["answers"], today),
        "hf_generate_best_same_answers_fraction": _same_answers(results[best_hf]["answers"], today),
    }
    import torch

    report = {
        "setting": {
            "target": "smollm2-135m (embedded SmolLM2-135M-Instruct)",
            "data": f"first {args.prompts} conversations of {Path(args.data).name} (system + first user turn)",
            "max_new_tokens": args.max_new_tokens,
            "decoding": "greedy",
            "dtype": "float32 (specdec_bf16: bfloat16)",
            "threads": args.threads,
            "today_batch_size": TODAY_BATCH_SIZE,
            "specdec_memory_mb": args.memory_mb,
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "date": time.strftime("%Y-%m-%d"),
        },
        "summary": summary,
        "results": [{k: v for k, v in results[name].items() if k != "answers"} for name in names],
    }
    out = Path(args.out or ("bench/distill_quick.json" if args.quick else "bench/distill.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
