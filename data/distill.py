"""Self-distillation: let the frozen target write the assistant answers the draft is trained on.

Drafts accept more tokens when they are trained on the target's own outputs rather than on
answers written by another model. ``self_distill`` keeps the prompts of each conversation,
regenerates the assistant turns with the target, and caches the result on disk:

    cache_dir/<key>/shards/shard-00000.jsonl   one finished chunk of conversations per file
    cache_dir/<key>/dataset/                    the final data set (``datasets.save_to_disk``)

The key hashes everything that changes the outputs, so an interrupted run resumes from the
last finished shard and a repeated run is served from the cache without touching the model.

In a multi-process job (torchrun, SLURM) every rank calls ``self_distill`` with its ``rank``
and ``world_size``: each generates its own share of the chunks, all wait for the missing
shards to appear, rank 0 writes the data set and the other ranks load it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from specdec.data.sources import DataError, user_turns

logger = logging.getLogger(__name__)

# Hex digits of the sha256 kept in the cache key.
CACHE_KEY_LENGTH = 16
# Seconds between two looks at the shared cache folder while waiting for other ranks.
POLL_INTERVAL_S = 1.0


class DistillTimeoutError(TimeoutError):
    """Other ranks did not finish their share of the self-distillation in time."""


@dataclass
class DistillConfig:
    """How the target generates the assistant answers."""

    max_new_tokens: int = 128  # most tokens generated per assistant turn
    temperature: float = 0.0  # sampling temperature; 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling threshold (used only when temperature > 0)
    top_k: int = 0  # keep the k most likely tokens when sampling; 0 disables top-k
    batch_size: int = 8  # prompts per `model.generate` call (left-padded together)
    multi_turn: bool = False  # False: answer only the first user turn; True: answer every user turn in order
    seed: int = 0  # seed for sampling; each chunk is seeded from it so resumed runs match
    chunk_size: int = 64  # conversations per cache shard (the unit of resumption)


def cache_key(target_id: str, conversations: list[list[dict]], config: DistillConfig) -> str:
    """Return a short sha256 over the target id, the prompt turns and every config field."""
    payload = {
        "target_id": target_id,
        "prompts": [user_turns(conversation) for conversation in conversations],
        "config": dataclasses.asdict(config),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:CACHE_KEY_LENGTH]


def self_distill(
    model,
    tokenizer,
    conversations: list[list[dict]],
    config: DistillConfig,
    cache_dir: str | os.PathLike,
    target_id: str,
    show_progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    wait_timeout_s: float = 3600.0,
) -> datasets.Dataset:
    """Regenerate the assistant turns of ``conversations`` with ``model`` and cache the result.

    Args:
        model: a transformers causal LM in eval mode (the frozen target).
        tokenizer: its tokenizer, with a chat template and an EOS token.
        conversations: the source conversations; only their system and user turns are used.
        config: generation and chunking settings.
        cache_dir: folder holding one sub-folder per cache key.
        target_id: names the target (hub id or path) in the cache key.
        show_progress: show a progress bar over this rank's conversations (on rank 0 only).
        rank: this process's rank in a multi-process job; it generates the chunks with
            ``chunk % world_size == rank``. Chunk boundaries and seeds do not depend on the
            ranks, so the data set is the same for any ``world_size``.
        world_size: number of processes sharing the work; all of them must call
            ``self_distill`` with the same arguments and a ``cache_dir`` on a filesystem
            they all share (each rank polls it for the shards of the others).
        wait_timeout_s: longest wait, in seconds, for the other ranks' shards and then for
            rank 0's data set; past it a ``DistillTimeoutError`` (a ``TimeoutError``) is
            raised. Finished shards are kept, so a rerun resumes.

    Returns:
        A data set with one column ``conversations``: the prompt turns followed by the
        generated assistant turns (one after each answered user turn). Every rank returns
        the same data set.
    """
    # Step 1: check the inputs and find the cache folder.
    _validate(config, conversations, tokenizer)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must satisfy 0 <= rank < world_size, got rank={rank} and world_size={world_size}")
    prompts = [user_turns(conversation) for conversation in conversations]
    key_dir = Path(cache_dir) / cache_key(target_id, conversations, config)
    dataset_dir = key_dir / "dataset"
    if dataset_dir.is_dir():
        logger.info("self-distillation cache hit: %s", dataset_dir)
        return datasets.load_from_disk(str(dataset_dir))
    logger.info("self-distillation cache miss: generating into %s", key_dir)
    # Step 2: generate this rank's chunks that have no finished shard yet.
    shard_dir = key_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    chunks = math.ceil(len(prompts) / config.chunk_size)
    own = range(rank, chunks, world_size)
    total = sum(_chunk_len(len(prompts), config.chunk_size, chunk) for chunk in own)
    finished = [chunk for chunk in own if _shard_path(shard_dir, chunk).exists()]
    done = sum(_chunk_len(len(prompts), config.chunk_size, chunk) for chunk in finished)
    if done:
        logger.info("resuming self-distillation: %d of %d conversations already cached", done, total)
    progress = tqdm(total=total, initial=done, desc="self-distill", disable=not (show_progress and rank == 0))
    with progress:
        for chunk in own:
            path = _shard_path(shard_dir, chunk)
            if path.exists():
                continue
            chunk_prompts = prompts[chunk * config.chunk_size : (chunk + 1) * config.chunk_size]
            answered = _distill_chunk(model, tokenizer, chunk_prompts, config, chunk, progress)
            _write_shard(path, answered)
    # Step 3: wait until every rank has written its shards.
    _wait_for_shards(shard_dir, chunks, rank, world_size, wait_timeout_s)
    # Step 4: rank 0 assembles the shards and saves the data set atomically; the other ranks wait for it.
    if rank == 0:
        rows = [conversation for chunk in range(chunks) for conversation in _read_shard(_shard_path(shard_dir, chunk))]
        save_dataset_atomically(datasets.Dataset.from_dict({"conversations": rows}), dataset_dir)
    elif _wait_for_paths([dataset_dir], wait_timeout_s):
        raise DistillTimeoutError(
            f"rank {rank} waited {wait_timeout_s:g} s for rank 0 to write the self-distilled data set {dataset_dir}. "
            "The finished shards are kept, so a rerun resumes."
        )
    return datasets.load_from_disk(str(dataset_dir))


def _validate(config: DistillConfig, conversations: list[list[dict]], tokenizer) -> None:
    """Raise a clear error for settings or inputs that cannot work."""
    if config.batch_size < 1 or config.chunk_size < 1 or config.max_new_tokens < 1:
        raise ValueError(
            f"batch_size, chunk_size and max_new_tokens must be >= 1, got {config.batch_size}, "
            f"{config.chunk_size} and {config.max_new_tokens}"
        )
    if config.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {config.temperature}")
    if not conversations:
        raise ValueError("self_distill got no conversations")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; generation would never stop. Set tokenizer.eos_token.")
    for index, conversation in enumerate(conversations):
        if not any(message["role"] == "user" for message in conversation):
            raise DataError(f"conversation {index} has no user turn to answer")


def _distill_chunk(model, tokenizer, prompts: list[list[dict]], config: DistillConfig, chunk: int, progress) -> list:
    """Answer one chunk of prompt conversations; returns the finished conversations in order."""
    # Step 1: seed per chunk, so a resumed run samples the same tokens as an uninterrupted one.
    torch.manual_seed(config.seed + chunk)
    finished = []
    for first in range(0, len(prompts), config.batch_size):
        batch = prompts[first : first + config.batch_size]
        # Step 2: split each conversation into the turns answered in order.
        pending = [_turn_groups(conversation, config.multi_turn) for conversation in batch]
        histories: list[list[dict]] = [[] for _ in batch]
        # Step 3: answer turn t of every conversation that has one, feeding back earlier answers.
        for turn in range(max(len(groups) for groups in pending)):
            active = [i for i, groups in enumerate(pending) if turn < len(groups)]
            for i in active:
                histories[i].extend(pending[i][turn])
            answers = _generate(model, tokenizer, [histories[i] for i in active], config)
            for i, (answer, stopped) in zip(active, answers):
                # An answer cut off by max_new_tokens is marked, so its end-of-turn token is not trained on.
                histories[i].append({"role": "assistant", "content": answer, "truncated": not stopped})
        finished.extend(histories)
        progress.update(len(batch))
    return finished


def _turn_groups(prompt: list[dict], multi_turn: bool) -> list[list[dict]]:
    """Split prompt turns into groups that each end with the user turn to answer next.

    System messages stay with the user turn that follows them. Without ``multi_turn`` only
    the first group (everything up to the first user turn) is kept.
    """
    groups: list[list[dict]] = []
    current: list[dict] = []
    for message in prompt:
        current.append(message)
        if message["role"] == "user":
            groups.append(current)
            current = []
    return groups if multi_turn else groups[:1]


@torch.inference_mode()
def _generate(model, tokenizer, histories: list[list[dict]], config: DistillConfig) -> list[tuple[str, bool]]:
    """Generate one assistant answer per conversation with a single left-padded batch.

    Returns (answer text, whether generation stopped at EOS rather than at max_new_tokens).
    """
    # Step 1: render the prompts with the generation prompt and left-pad them by hand.
    encoded = [
        tokenizer(
            tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for history in histories
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=model.device)
    # Step 2: generate greedily or with sampling, stopping at the tokenizer's EOS.
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=config.max_new_tokens,
        **_sampling_kwargs(config),
    )
    # Step 3: drop the prompt and decode only the new tokens.
    new_tokens = output[:, width:]
    stopped = (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
    return list(zip(tokenizer.batch_decode(new_tokens, skip_special_tokens=True), stopped))


def _sampling_kwargs(config: DistillConfig) -> dict:
    """Return the `generate` arguments that select greedy decoding or sampling."""
    if config.temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}


def _wait_for_shards(shard_dir: Path, chunks: int, rank: int, world_size: int, timeout_s: float) -> None:
    """Wait until every chunk has a shard; past ``timeout_s`` raise an error naming the missing chunks."""
    missing = _wait_for_paths([_shard_path(shard_dir, chunk) for chunk in range(chunks)], timeout_s)
    if missing:
        owners = sorted({chunk % world_size for chunk in missing})
        raise DistillTimeoutError(
            f"rank {rank} waited {timeout_s:g} s for the other ranks' self-distillation shards: "
            f"{len(missing)} of {chunks} chunks are still missing (chunks {missing}, owned by ranks {owners}) "
            f"in {shard_dir}. The finished shards are kept, so a rerun resumes; check that every rank runs "
            "and that cache_dir is on a filesystem all ranks share."
        )


def _wait_for_paths(paths: list[Path], timeout_s: float) -> list[int]:
    """Poll until every path exists or ``timeout_s`` passes; return the indices still missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [index for index, path in enumerate(paths) if not path.exists()]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))


def _chunk_len(total: int, chunk_size: int, chunk: int) -> int:
    """Number of conversations in chunk number ``chunk``."""
    return min(chunk_size, total - chunk * chunk_size)


def _shard_path(shard_dir: Path, chunk: int) -> Path:
    """Path of the shard file for chunk number ``chunk``."""
    return shard_dir / f"shard-{chunk:05d}.jsonl"


def _write_shard(path: Path, conversations: list[list[dict]]) -> None:
    """Write a shard atomically: to a temporary file first, then rename it into place."""
    tmp_path = path.with_suffix(".jsonl.tmp")
    with tmp_path.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(json.dumps(conversation, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, path)


def _read_shard(path: Path) -> list[list[dict]]:
    """Read the conversations of one shard file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save_dataset_atomically(dataset: datasets.Dataset, target: Path) -> None:
    """Save with ``save_to_disk`` into a temporary folder next to ``target``, then rename it."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=".dataset-", dir=target.parent))
    try:
        dataset.save_to_disk(str(tmp_dir))
        os.replace(tmp_dir, target)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
