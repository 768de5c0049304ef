"""The larger standard set (issue 15): about 12,000 prompts from ../shared/data/train answered by
the embedded target with specdec's own self-distillation, in resumable shards committed to the
project (bench/data/smollm2_selfdistill_12k/, gzip-compressed JSON lines, with a data card).

    python scripts/build_selfdistill_set.py                 # generate the missing shards, in order (resumes)
    python scripts/build_selfdistill_set.py --max-shards 4  # at most 4 more shards, then stop
    python scripts/build_selfdistill_set.py --card          # only rewrite the data card from the shards on disk

Prompts: the first user turn (and system turn) of every record of SOURCES, deduplicated on
whitespace- and case-normalised text (first source wins), 4 to 384 prompt tokens with the chat
template (as in today's standard set), minus the prompts of the 64 conversations the standard
setting holds out from today's standard set; then shuffled with seed 0 and cut at TOTAL, so every
prefix of the shards has the same expected mix of sources. Generation: greedy, float32, up to 256
new tokens, the `specdec` engine (length-sorted batches sized from 2 GB), 2 threads. Shard k holds
prompts [k * SHARD, (k + 1) * SHARD); a shard is written atomically once all its answers exist.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "train"
OUT = ROOT / "bench" / "data" / "smollm2_selfdistill_12k"
SOURCES = {
    "sharegpt_2978": ("sharegpt_prompts_2978.json", "ml-energy/leaderboard-v2 (ShareGPT slice)", "repo Apache-2.0; ShareGPT content itself unlicensed"),
    "sharegpt_1000": ("sharegpt_prompts_1000.json", "ml-energy/leaderboard-v2 (ShareGPT V3 slice)", "repo Apache-2.0; ShareGPT content itself unlicensed"),
    "alpaca_1k": ("alpaca_1k.json", "wujindou/BLOOM-LORA data/alpaca_data_1k.json (Stanford Alpaca)", "CC BY-NC 4.0"),
    "alpaca_seed": ("alpaca_seed_tasks.jsonl", "tatsu-lab/stanford_alpaca seed_tasks.jsonl", "CC BY-NC 4.0"),
    "gsm8k_train": ("gsm8k_train.jsonl", "openai/grade-school-math train.jsonl (questions only)", "MIT"),
}
"""Name -> (file in ../shared/data/train, where it comes from, licence); see ../shared/data/SOURCES.md."""
STANDARD = TRAIN / "sharegpt_smollm2_selfdistill.jsonl"
HELD_OUT, SEED = 64, 0
"""Today's standard set holds out 64 conversations (data.val_size=64, seed 0); their prompts stay out of this set."""
TOTAL, SHARD = 12_000, 256
MIN_PROMPT, MAX_PROMPT = 4, 384
GENERATION = {"max_new_tokens": 256, "temperature": 0.0, "batch_size": None, "memory_mb": 2048, "chunk_size": 64, "engine": "specdec", "dtype": "float32"}
"""specdec.data.distill.DistillConfig fields of every shard."""


def _key(prompt: list[dict]) -> str:
    return " ".join(" ".join(m["content"].lower().split()) for m in prompt)


def held_out_prompts(tokenizer) -> set[str]:
    """The prompt keys of the standard setting's 64 validation conversations of today's standard set."""
    from specdec.data.chat import tokenize_conversations
    from specdec.data.sources import load_conversations

    conversations = load_conversations(str(STANDARD))
    if len(tokenize_conversations(tokenizer, conversations, 384)) != len(conversations):
        raise SystemExit("today's standard set no longer tokenizes to one row per conversation: the held-out rows cannot be located")
    return {_key(first_prompt(conversations[i])) for i in held_out_indices(len(conversations))}


def held_out_indices(rows: int) -> list[int]:
    """Row numbers of the standard setting's validation conversations among the standard set's `rows` (`split_train_val`'s draw)."""
    import datasets

    from specdec.data.batching import split_train_val

    _, val = split_train_val(datasets.Dataset.from_dict({"index": list(range(rows))}), HELD_OUT, SEED)
    return list(val["index"])


def first_prompt(conversation: list[dict]) -> list[dict]:
    """The messages up to and including the first user turn."""
    end = next(i for i, m in enumerate(conversation) if m["role"] == "user")
    return [{"role": m["role"], "content": m["content"]} for m in conversation[: end + 1]]


def prompts(tokenizer) -> tuple[list[tuple[str, list[dict]]], dict]:
    """Step 1: the ordered (source, prompt) list and the counts of each filtering step."""
    from specdec.data.sources import load_conversations

    held_out, seen, kept = held_out_prompts(tokenizer), set(), []
    counts = {"read": Counter(), "duplicates": Counter(), "held_out": Counter(), "length": Counter()}
    for name, (file, _, _) in SOURCES.items():
        for conversation in load_conversations(str(TRAIN / file)):
            prompt, counts["read"][name] = first_prompt(conversation), counts["read"][name] + 1
            key = _key(prompt)
            if key in held_out:
                counts["held_out"][name] += 1
                continue
            if key in seen:
                counts["duplicates"][name] += 1
                continue
            seen.add(key)
            length = len(tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
            if not MIN_PROMPT <= length <= MAX_PROMPT:
                counts["length"][name] += 1
                continue
            kept.append((name, prompt))
    if sum(counts["held_out"].values()) != HELD_OUT:
        raise SystemExit(f"found {sum(counts['held_out'].values())} of the {HELD_OUT} held-out prompts in the sources: the held-out rows would leak or the sources changed")
    random.Random(SEED).shuffle(kept)
    return kept[:TOTAL], {k: dict(v) for k, v in counts.items()}


def shard_path(index: int) -> Path:
    return OUT / f"shard-{index:05d}.jsonl.gz"


def generate_shard(index: int, chosen: list[tuple[str, list[dict]]], target, cache: Path) -> None:
    """Step 2: answer one shard's prompts (self_distill, resumable in 64-prompt chunks under `cache`) and write it atomically."""
    from specdec.data.distill import DistillConfig, self_distill

    rows = chosen[index * SHARD : (index + 1) * SHARD]
    config = DistillConfig(**GENERATION, seed=SEED)
    answered = self_distill(target.model, target.tokenizer, [p for _, p in rows], config, cache, target.target_id)["conversations"]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=OUT, suffix=".tmp", delete=False) as tmp:
        with gzip.GzipFile(fileobj=tmp, mode="wb", mtime=0) as handle:
            for offset, ((source, prompt), conversation) in enumerate(zip(rows, answered)):
                answer = conversation[-1]
                record = {
                    "id": f"{index * SHARD + offset}", "source": source,
                    "conversations": [{"from": {"system": "system", "user": "human"}[m["role"]], "value": m["content"]} for m in prompt]
                    + [{"from": "gpt", "value": answer["content"]}],
                    "truncated": bool(answer.get("truncated")),
                    "response_tokens": len(target.tokenizer(answer["content"], add_special_tokens=False)["input_ids"]),
                }
                handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp.name, shard_path(index))


def write_card(chosen: list[tuple[str, list[dict]]], counts: dict, target_id: str) -> dict:
    """Step 3: manifest.json and README.md (the data card) from the shards on disk."""
    done = sorted(int(p.name[6:11]) for p in OUT.glob("shard-*.jsonl.gz"))
    records = [json.loads(line) for i in done for line in gzip.open(shard_path(i), "rt", encoding="utf-8")]
    planned = Counter(source for source, _ in chosen)
    generated = Counter(r["source"] for r in records)
    tokens = Counter()
    for r in records:
        tokens[r["source"]] += r["response_tokens"]
    manifest = {
        "target": target_id, "generation": GENERATION | {"seed": SEED, "threads": 2, "multi_turn": False},
        "prompt_tokens": [MIN_PROMPT, MAX_PROMPT], "shard_size": SHARD, "shards_planned": -(-len(chosen) // SHARD),
        "shards_done": done, "conversations_planned": len(chosen), "conversations_done": len(records),
        "response_tokens_done": sum(tokens.values()), "truncated_done": sum(r["truncated"] for r in records),
        "by_source": {name: {"planned": planned[name], "done": generated[name], "response_tokens": tokens[name]} for name in SOURCES},
        "filtering": counts, "sources": {name: {"file": f, "from": where, "licence": lic} for name, (f, where, lic) in SOURCES.items()},
        "updated": time.strftime("%Y-%m-%d"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    rows = "\n".join(f"| {n} | {SOURCES[n][1]} | {SOURCES[n][2]} | {planned[n]} | {generated[n]} | {tokens[n]:,} |" for n in SOURCES)
    (OUT / "README.md").write_text(f"""# smollm2_selfdistill_12k: data card

Self-distilled training data for the standard setting's target, built by
`python scripts/build_selfdistill_set.py` (see its docstring for every rule). Shards are
gzip-compressed JSON lines in ShareGPT format (`conversations` with `human` / `gpt` turns) plus
`source`, `truncated` (the answer hit the token cap) and `response_tokens`; `data.source=<this
folder>` reads the finished ones in order. Status: {len(done)} of {manifest['shards_planned']} shards,
{len(records):,} of {len(chosen):,} conversations, {manifest['response_tokens_done']:,} response tokens
({manifest['truncated_done']:,} answers truncated at 256 tokens). Updated {manifest['updated']}.

- Target: {target_id} (SmolLM2-135M-Instruct, the embedded GGUF converted to float32).
- Generation: greedy, float32, up to 256 new tokens, first user turn only, specdec engine, seed 0.
  Greedy float32 answers do not depend on the batch size (tested), so resumed shards match.
- Prompts: first user turn (+ system) of each record, deduplicated (case and whitespace folded),
  4-384 prompt tokens, the 64 held-out prompts of today's standard set removed, shuffled (seed 0).
  Filtering counts are in manifest.json.

| source | from | licence | planned | generated | response tokens |
|---|---|---|---|---|---|
{rows}

GSM8K contributes its questions only (the answers here are the target's, not the dataset's).
ShareGPT content has no licence of its own; Alpaca data is CC BY-NC 4.0 (non-commercial).
""")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-shards", type=int, default=None, help="generate at most this many missing shards, then stop")
    parser.add_argument("--card", action="store_true", help="only rewrite the data card from the shards on disk")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "selfdistill_12k_cache"), help="self_distill's resumable chunk cache")
    args = parser.parse_args()
    import torch

    from specdec.models.target import load_target

    torch.set_num_threads(2)
    target = load_target("smollm2-135m")
    chosen, counts = prompts(target.tokenizer)
    missing = [i for i in range(-(-len(chosen) // SHARD)) if not shard_path(i).exists()]
    for index in [] if args.card else missing[: args.max_shards]:
        start = time.perf_counter()
        generate_shard(index, chosen, target, Path(args.cache))
        print(f"shard {index}: {time.perf_counter() - start:.0f} s", flush=True)
        write_card(chosen, counts, target.target_id)
    manifest = write_card(chosen, counts, target.target_id)
    print(json.dumps({k: manifest[k] for k in ("conversations_planned", "conversations_done", "response_tokens_done", "by_source")}, indent=2))


if __name__ == "__main__":
    main()
