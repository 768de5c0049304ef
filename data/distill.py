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

Three engines generate (``DistillConfig.engine``); all share the cache, the shards and the rank split:

- ``specdec`` (default): this module's own decode loop over the Hugging Face model. Within a
  chunk it sorts the prompts by length, batches as many as ``memory_mb`` allows (when
  ``batch_size`` is None), drops finished answers from the batch and its KV cache every
  ``STOP_CHECK_EVERY`` tokens, and restores the original order. Greedy float32 answers are
  the same tokens as ``hf``'s.
- ``hf``: ``model.generate`` on left-padded batches of ``batch_size`` prompts in their
  original order (the pipeline before the ``specdec`` engine).
- ``vllm``: a vLLM engine (when the ``vllm`` package is installed) loaded from a copy of
  the target saved to a temporary folder.

``dtype`` bfloat16 generates with a bfloat16 copy of the target: faster on CPUs with
avx512_bf16 / AMX, but greedy bfloat16 answers differ from float32 ones, so the dtype is part
of the cache key and of the data set's ``info.description`` (its data card).
"""

from __future__ import annotations

import copy
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
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from specdec.data.sources import DataError, user_turns

logger = logging.getLogger(__name__)

# Hex digits of the sha256 kept in the cache key.
CACHE_KEY_LENGTH = 16
# Seconds between two looks at the shared cache folder while waiting for other ranks.
POLL_INTERVAL_S = 1.0
# Decode steps of the specdec engine between two looks at which answers have finished.
STOP_CHECK_EVERY = 8
ENGINES = ("specdec", "hf", "vllm")
"""Generation engines: this module's decode loop, transformers `generate`, or vLLM."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Dtypes the target may generate in."""


class DistillTimeoutError(TimeoutError):
    """Other ranks did not finish their share of the self-distillation in time."""


@dataclass
class DistillConfig:
    """How the target generates the assistant answers."""

    max_new_tokens: int = 128  # most tokens generated per assistant turn
    temperature: float = 0.0  # sampling temperature; 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling threshold (used only when temperature > 0)
    top_k: int = 0  # keep the k most likely tokens when sampling; 0 disables top-k
    batch_size: int | None = 8  # prompts decoded together (left-padded); None: the most that fit in memory_mb
    memory_mb: int = 2048  # memory bound (KV cache, prefill activations, logits) that chooses batch_size when it is None
    multi_turn: bool = False  # False: answer only the first user turn; True: answer every user turn in order
    seed: int = 0  # seed for sampling; each chunk is seeded from it so resumed runs match
    chunk_size: int = 64  # conversations per cache shard (the unit of resumption)
    engine: str = "specdec"  # specdec (own decode loop), hf (transformers generate) or vllm; see the module docstring
    dtype: str = "float32"  # float32 or bfloat16 (faster on CPUs with bf16 units; greedy answers differ from float32)


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
        generator = None
        for chunk in own:
            path = _shard_path(shard_dir, chunk)
            if path.exists():
                continue
            generator = generator or _generation_model(model, config.dtype)
            chunk_prompts = prompts[chunk * config.chunk_size : (chunk + 1) * config.chunk_size]
            answered = _distill_chunk(generator, tokenizer, chunk_prompts, config, chunk, progress)
            _write_shard(path, answered)
    # Step 3: wait until every rank has written its shards.
    _wait_for_shards(shard_dir, chunks, rank, world_size, wait_timeout_s)
    # Step 4: rank 0 assembles the shards and saves the data set atomically; the other ranks wait for it.
    if rank == 0:
        rows = [conversation for chunk in range(chunks) for conversation in _read_shard(_shard_path(shard_dir, chunk))]
        card = datasets.DatasetInfo(description=data_card(target_id, config))
        save_dataset_atomically(datasets.Dataset.from_dict({"conversations": rows}, info=card), dataset_dir)
    elif _wait_for_paths([dataset_dir], wait_timeout_s):
        raise DistillTimeoutError(
            f"rank {rank} waited {wait_timeout_s:g} s for rank 0 to write the self-distilled data set {dataset_dir}. "
            "The finished shards are kept, so a rerun resumes."
        )
    return datasets.load_from_disk(str(dataset_dir))


def data_card(target_id: str, config: DistillConfig) -> str:
    """The data set's description: JSON naming the target and every generation setting (engine, dtype, ...)."""
    return json.dumps({"self_distilled_by": target_id, "generation": dataclasses.asdict(config)}, sort_keys=True)


def _validate(config: DistillConfig, conversations: list[list[dict]], tokenizer) -> None:
    """Raise a clear error for settings or inputs that cannot work."""
    if (config.batch_size is not None and config.batch_size < 1) or min(config.chunk_size, config.max_new_tokens, config.memory_mb) < 1:
        raise ValueError(
            f"batch_size (or None), chunk_size, max_new_tokens and memory_mb must be >= 1, got {config.batch_size}, "
            f"{config.chunk_size}, {config.max_new_tokens} and {config.memory_mb}"
        )
    if config.engine not in ENGINES:
        raise ValueError(f"unknown self-distillation engine {config.engine!r}: use one of {', '.join(ENGINES)}")
    if config.dtype not in DTYPES:
        raise ValueError(f"unknown self-distillation dtype {config.dtype!r}: use one of {', '.join(DTYPES)}")
    if config.engine == "vllm":
        _import_vllm()
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
    # hf answers each batch of batch_size in order, as before; the other engines batch a whole chunk themselves.
    group = config.batch_size if config.engine == "hf" and config.batch_size else len(prompts)
    for first in range(0, len(prompts), group):
        batch = prompts[first : first + group]
        # Step 2: split each conversation into the turns answered in order.
        pending = [_turn_groups(conversation, config.multi_turn) for conversation in batch]
        histories: list[list[dict]] = [[] for _ in batch]
        # Step 3: answer turn t of every conversation that has one, feeding back earlier answers.
        for turn in range(max(len(groups) for groups in pending)):
            active = [i for i, groups in enumerate(pending) if turn < len(groups)]
            for i in active:
                histories[i].extend(pending[i][turn])
            answers = _answer_turn(model, tokenizer, [histories[i] for i in active], config, config.seed + chunk)
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


def _answer_turn(model, tokenizer, histories: list[list[dict]], config: DistillConfig, seed: int) -> list[tuple[str, bool]]:
    """Generate one assistant answer per conversation with ``config.engine``.

    Returns (answer text, whether generation stopped at EOS rather than at max_new_tokens).
    """
    # Step 1: render the prompts with the generation prompt.
    encoded = [
        tokenizer(
            tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for history in histories
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Step 2: generate the new tokens of every prompt.
    if config.engine == "vllm":
        rows = _vllm_generate(model, tokenizer, encoded, config, seed)
    else:
        rows = generate_token_ids(model, encoded, pad_id, tokenizer.eos_token_id, config)
    # Step 3: cut each answer after its EOS and decode it.
    answers = [_until_eos(row, tokenizer.eos_token_id) for row in rows]
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [(text, bool(answer) and answer[-1] == tokenizer.eos_token_id) for text, answer in zip(texts, answers)]


def generate_token_ids(model, encoded: list[list[int]], pad_id: int, eos_id: int, config: DistillConfig) -> list[list[int]]:
    """New token ids for each prompt of ``encoded`` with the ``hf`` or ``specdec`` engine, in the order given.

    ``specdec`` decodes length-sorted batches (sized from ``memory_mb`` when ``batch_size`` is None);
    ``hf`` calls ``model.generate`` on batches in the given order.
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if config.engine == "specdec" else list(range(len(encoded)))
    rows: list[list[int]] = [[] for _ in encoded]
    first = 0
    while first < len(order):
        size = config.batch_size or auto_batch_size(model.config, len(encoded[order[-1]]), config.max_new_tokens, config.memory_mb, model.dtype.itemsize)
        batch = order[first : first + size]
        decode = _decode_batch if config.engine == "specdec" else _hf_generate
        for index, row in zip(batch, decode(model, [encoded[i] for i in batch], pad_id, eos_id, config)):
            rows[index] = row
        first += size
    return rows


def auto_batch_size(model_config, prompt_len: int, max_new_tokens: int, memory_mb: int, itemsize: int) -> int:
    """The most prompts of up to ``prompt_len`` tokens whose generation state fits in ``memory_mb``.

    Per prompt: the KV cache of prompt and answer, one layer's prefill activations and the
    float32 logits row with its sampling copies. The result depends only on its arguments, so
    every rank and every rerun batches alike.
    """
    layers, hidden = model_config.num_hidden_layers, model_config.hidden_size
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    kv_cache = 2 * layers * kv_heads * head_dim * (prompt_len + max_new_tokens) * itemsize
    prefill = prompt_len * (4 * hidden + 3 * model_config.intermediate_size + heads * prompt_len) * itemsize
    logits = 3 * model_config.vocab_size * 4
    return max(1, memory_mb * 2**20 // (kv_cache + prefill + logits))


@torch.inference_mode()
def _hf_generate(model, encoded: list[list[int]], pad_id: int, eos_id: int, config: DistillConfig) -> list[list[int]]:
    """New tokens of one left-padded batch from ``model.generate`` (rows padded after EOS)."""
    input_ids, attention_mask = _left_pad(encoded, pad_id, model.device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        max_new_tokens=config.max_new_tokens,
        **_sampling_kwargs(config),
    )
    return output[:, input_ids.shape[1] :].tolist()


@torch.inference_mode()
def _decode_batch(model, encoded: list[list[int]], pad_id: int, eos_id: int, config: DistillConfig) -> list[list[int]]:
    """New tokens of one left-padded batch from the specdec decode loop (rows padded after EOS).

    The same forward inputs as ``generate`` (positions from the attention mask, logits of the
    last position in float32), but the KV cache is reserved once for prompt and answer
    (``_ReservedLayer``), finished rows leave the batch and the cache every ``STOP_CHECK_EVERY``
    steps, and the tokens go into one preallocated tensor.
    """
    # Step 1: prefill the left-padded prompts.
    input_ids, mask = _left_pad(encoded, pad_id, model.device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = _reserved_cache(model.config, input_ids.shape[1] + config.max_new_tokens)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1).logits
    tokens = torch.full((len(encoded), config.max_new_tokens), pad_id, dtype=torch.long, device=model.device)
    live = torch.arange(len(encoded), device=model.device)  # batch row -> prompt index
    done = torch.zeros(len(encoded), dtype=torch.bool, device=model.device)
    choose = _token_chooser(config)
    for step in range(config.max_new_tokens):
        # Step 2: pick the next token of every live row; rows past EOS get padding.
        chosen = choose(input_ids, logits[:, -1].to(torch.float32)).masked_fill(done, pad_id)
        tokens[live, step] = chosen
        done |= chosen == eos_id
        if step + 1 == config.max_new_tokens:
            break
        # Step 3: every STOP_CHECK_EVERY steps, drop the finished rows (stop when none is left).
        if (step + 1) % STOP_CHECK_EVERY == 0 and bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            live, done, chosen, mask, positions = live[keep], done[keep], chosen[keep], mask[keep], positions[keep]
        # Step 4: one forward over the chosen tokens.
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions[:, -1:] + 1
        input_ids = chosen[:, None]
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
    return tokens.tolist()


class _ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers reserved for ``capacity`` tokens.

    Each step writes the new states in place instead of concatenating; ``keys`` and ``values``
    are views of the filled part, so attention reads the same numbers in the same shapes.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, _ = key_states.shape
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._show()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._show()

    def _show(self) -> None:
        """Point keys and values at the filled part of the buffers."""
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]


def _reserved_cache(model_config, capacity: int) -> DynamicCache:
    """A DynamicCache for ``model_config`` whose plain layers reserve room for ``capacity`` tokens (others stay as they are)."""
    cache = DynamicCache(config=model_config)
    cache.layers = [_ReservedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _token_chooser(config: DistillConfig):
    """A function (input ids, float32 logits) -> next token per row: argmax, or sampling as ``generate`` warps it."""
    if config.temperature == 0:
        return lambda input_ids, logits: logits.argmax(dim=-1)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(config.temperature)])
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    return lambda input_ids, logits: torch.multinomial(torch.softmax(warpers(input_ids, logits), dim=-1), 1).squeeze(1)


def _left_pad(encoded: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of the prompts left-padded to the longest."""
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    return input_ids, attention_mask


def _until_eos(row: list[int], eos_id: int) -> list[int]:
    """The tokens of one answer up to and including its first EOS (all of them when it has none)."""
    return row[: row.index(eos_id) + 1] if eos_id in row else row


def _generation_model(model, dtype: str):
    """The target itself when it already has ``dtype``, else a copy cast to it (the target stays as it is)."""
    if model.dtype == DTYPES[dtype]:
        return model
    return copy.deepcopy(model).to(DTYPES[dtype])


def _import_vllm():
    """The vllm module, or an ImportError that names the missing package and the alternatives."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("data.engine=vllm needs the vllm package, which is not installed: pip install vllm, or use data.engine=specdec") from exc
    return vllm


_VLLM_ENGINES: dict[int, object] = {}
"""One vLLM engine per target object in this process (id(model) -> vllm.LLM)."""


def _vllm_generate(model, tokenizer, encoded: list[list[int]], config: DistillConfig, seed: int) -> list[list[int]]:
    """New token ids for each prompt from a vLLM engine serving a saved copy of ``model``."""
    vllm = _import_vllm()
    if id(model) not in _VLLM_ENGINES:
        folder = tempfile.mkdtemp(prefix="specdec-vllm-")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _VLLM_ENGINES[id(model)] = vllm.LLM(model=folder, dtype=config.dtype, seed=config.seed)
    params = vllm.SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k or -1,
        max_tokens=config.max_new_tokens,
        seed=seed,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    outputs = _VLLM_ENGINES[id(model)].generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


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
