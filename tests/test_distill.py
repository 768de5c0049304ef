"""Tests for specdec.data.distill: batched generation, the on-disk cache and resumption."""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import enliven

from specdec.data import distill
from specdec.data.distill import DistillConfig, DistillTimeoutError, cache_key, self_distill

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "user", "content": "Please write a short poem about the sea."},
        {"role": "assistant", "content": "old"},
    ],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Numbers: 1 2 3"}],
    [{"role": "user", "content": "Hello! How can I help you today?"}, {"role": "user", "content": "The quick brown fox"}],
    [{"role": "user", "content": "Medusa heads predict tokens."}],
]


@pytest.fixture()
def lively_llama(tiny_llama):
    """The tiny Llama with larger random weights: its greedy outputs differ between prompts.

    (With the default small init it answers every prompt with the same repeated newline,
    which would hide batching mistakes.)
    """
    return enliven(tiny_llama)


def _config(**overrides) -> DistillConfig:
    return DistillConfig(**{"max_new_tokens": 5, "batch_size": 2, "chunk_size": 2, **overrides})


def _distill(model, tokenizer, conversations, cache_dir, config=None, **ranks):
    """Run self_distill quietly with the test config and target id "tiny" (``ranks``: rank, world_size, ...)."""
    return self_distill(model, tokenizer, conversations, config or _config(), cache_dir, "tiny", show_progress=False, **ranks)


def _manual_greedy(model, tokenizer, prompt, max_new_tokens=5) -> str:
    """Answer one prompt alone (no padding) with plain greedy `generate`."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=2, eos_token_id=2)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class CountingGenerate:
    """Wraps the engine call that answers one batch of conversations (``distill._answer_turn``, one call per
    batch and turn with every engine), counting calls and optionally failing on one call number."""

    def __init__(self, fail_on_call: int | None = None):
        self.original = distill._answer_turn
        self.fail_on_call = fail_on_call
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated interruption")
        return self.original(*args, **kwargs)


@pytest.mark.parametrize("engine", ["specdec", "hf"])
def test_each_conversation_gets_an_answer_equal_to_unbatched_greedy(lively_llama, tiny_tokenizer, tmp_path, engine):
    dataset = self_distill(lively_llama, tiny_tokenizer, CONVERSATIONS, _config(batch_size=3, engine=engine), tmp_path, "tiny")
    rows = list(dataset["conversations"])
    assert dataset.column_names == ["conversations"] and len(rows) == len(CONVERSATIONS)
    answers = []
    for source, row in zip(CONVERSATIONS, rows):
        prompt = source[: 2 if source[0]["role"] == "system" else 1]
        assert [{"role": m["role"], "content": m["content"]} for m in row[:-1]] == prompt  # old assistant turns and later user turns are not kept
        assert row[-1]["role"] == "assistant"
        assert row[-1]["content"] == _manual_greedy(lively_llama, tiny_tokenizer, prompt)
        answers.append(row[-1]["content"])
    assert len(set(answers)) > 1  # the check above is not trivially satisfied


def test_second_call_is_served_from_the_cache(lively_llama, tiny_tokenizer, tmp_path, monkeypatch, caplog):
    first = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path)

    def must_not_generate(*args, **kwargs):
        raise AssertionError("generate called on a cache hit")

    monkeypatch.setattr(distill, "_answer_turn", must_not_generate)
    with caplog.at_level("INFO", logger="specdec.data.distill"):
        second = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path)
    assert list(second["conversations"]) == list(first["conversations"])
    assert "cache hit" in caplog.text
    with pytest.raises(AssertionError, match="cache hit"):  # a different config is a different key
        _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path, _config(max_new_tokens=4))


@pytest.mark.parametrize("engine", ["specdec", "hf"])
def test_interrupted_run_resumes_from_finished_shards(lively_llama, tiny_tokenizer, tmp_path, monkeypatch, engine):
    conversations = CONVERSATIONS[:4]  # two chunks of two, one generate call per chunk
    config = _config(engine=engine)
    reference = _distill(lively_llama, tiny_tokenizer, conversations, tmp_path / "ref", config)

    failing = CountingGenerate(fail_on_call=2)
    monkeypatch.setattr(distill, "_answer_turn", failing)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _distill(lively_llama, tiny_tokenizer, conversations, tmp_path / "run", config)
    key_dir = tmp_path / "run" / cache_key("tiny", conversations, config)
    assert sorted(p.name for p in (key_dir / "shards").iterdir()) == ["shard-00000.jsonl"]
    assert not (key_dir / "dataset").exists()

    counting = CountingGenerate()
    monkeypatch.setattr(distill, "_answer_turn", counting)
    resumed = _distill(lively_llama, tiny_tokenizer, conversations, tmp_path / "run", config)
    assert counting.calls == 1
    assert list(resumed["conversations"]) == list(reference["conversations"])
    assert (key_dir / "dataset").is_dir()


def test_multi_turn_answers_every_user_turn(lively_llama, tiny_tokenizer, tmp_path):
    dataset = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path, _config(multi_turn=True))
    for source, row in zip(CONVERSATIONS, dataset["conversations"]):
        users = [m for m in row if m["role"] == "user"]
        assert [{"role": m["role"], "content": m["content"]} for m in users] == [m for m in source if m["role"] == "user"]
        roles = [m["role"] for m in row if m["role"] != "system"]
        assert roles == ["user", "assistant"] * len(users)
    # The second answer continues the conversation that holds the generated first answer.
    two_turn = dataset["conversations"][3]
    assert two_turn[3]["content"] == _manual_greedy(lively_llama, tiny_tokenizer, two_turn[:3])


def test_sampling_is_reproducible_with_the_seed(lively_llama, tiny_tokenizer, tmp_path):
    config = _config(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=8)
    first = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path / "a", config)
    second = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path / "b", config)
    assert list(first["conversations"]) == list(second["conversations"])


def test_cache_key_depends_on_prompts_target_and_config_only():
    base = cache_key("tiny", CONVERSATIONS, _config())
    assert len(base) == 16
    assert cache_key("other", CONVERSATIONS, _config()) != base
    assert cache_key("tiny", CONVERSATIONS[:3], _config()) != base
    assert cache_key("tiny", CONVERSATIONS, _config(seed=1)) != base
    assert cache_key("tiny", CONVERSATIONS, _config(batch_size=4)) != base
    # Existing assistant answers are replaced, so they do not change the key.
    without_answers = [[m for m in c if m["role"] != "assistant"] for c in CONVERSATIONS]
    assert cache_key("tiny", without_answers, _config()) == base


def test_conversation_without_user_turn_is_rejected(tiny_llama, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="conversation 1 has no user turn"):
        _distill(tiny_llama, tiny_tokenizer, [CONVERSATIONS[0], [{"role": "system", "content": "s"}]], tmp_path)


def test_answers_cut_off_by_the_length_cap_are_marked_truncated(lively_llama, tiny_tokenizer, tmp_path):
    short = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path / "short", _config(max_new_tokens=1))
    assert all(row[-1]["truncated"] for row in short["conversations"])  # one token never reaches EOS here
    long = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path / "long", _config(max_new_tokens=60))
    for source, row in zip(CONVERSATIONS, long["conversations"]):
        prompt = source[: 2 if source[0]["role"] == "system" else 1]
        text = tiny_tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        inputs = tiny_tokenizer(text, add_special_tokens=False, return_tensors="pt")
        out = lively_llama.generate(**inputs, max_new_tokens=60, do_sample=False, pad_token_id=2, eos_token_id=2)
        stopped = bool((out[0, inputs["input_ids"].shape[1] :] == 2).any())
        assert row[-1]["truncated"] is (not stopped)


@pytest.fixture()
def fast_polling(monkeypatch):
    """Look at the shared cache folder often, so waiting ranks notice their peers quickly."""
    monkeypatch.setattr(distill, "POLL_INTERVAL_S", 0.05)


def test_two_concurrent_ranks_build_the_same_dataset_as_one(lively_llama, tiny_tokenizer, tmp_path, monkeypatch, fast_polling):
    reference = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path / "one")  # 3 chunks: 2 + 2 + 1
    models = [lively_llama, copy.deepcopy(lively_llama)]  # one target per rank, as on two GPUs
    chunks_by_rank = {0: [], 1: []}
    distill_chunk = distill._distill_chunk

    def recording_distill_chunk(model, tokenizer, prompts, config, chunk, progress):
        chunks_by_rank[models.index(model)].append(chunk)
        return distill_chunk(model, tokenizer, prompts, config, chunk, progress)

    monkeypatch.setattr(distill, "_distill_chunk", recording_distill_chunk)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(_distill, models[rank], tiny_tokenizer, CONVERSATIONS, tmp_path / "two", rank=rank, world_size=2, wait_timeout_s=60)
            for rank in (0, 1)
        ]
        results = [future.result() for future in futures]
    assert chunks_by_rank == {0: [0, 2], 1: [1]}
    for result in results:
        assert list(result["conversations"]) == list(reference["conversations"])


def test_rank_without_its_peer_times_out_and_keeps_its_shards(lively_llama, tiny_tokenizer, tmp_path, monkeypatch, fast_polling):
    key_dir = tmp_path / cache_key("tiny", CONVERSATIONS, _config())
    with pytest.raises(DistillTimeoutError, match=r"1 of 3 chunks are still missing \(chunks \[1\], owned by ranks \[1\]\).*rerun resumes"):
        _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path, rank=0, world_size=2, wait_timeout_s=1)
    assert sorted(p.name for p in (key_dir / "shards").iterdir()) == ["shard-00000.jsonl", "shard-00002.jsonl"]
    assert not (key_dir / "dataset").exists()

    # A rerun of rank 0 generates nothing and gives up after about the timeout.
    counting = CountingGenerate()
    monkeypatch.setattr(distill, "_answer_turn", counting)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"chunks \[1\]"):
        _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path, rank=0, world_size=2, wait_timeout_s=1)
    assert counting.calls == 0
    assert 1.0 <= time.monotonic() - start < 5.0

    # Rank 1 adds the missing shard, then waits in vain for rank 0's data set.
    with pytest.raises(DistillTimeoutError, match="rank 1 waited 1 s for rank 0 to write"):
        _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path, rank=1, world_size=2, wait_timeout_s=1)
    assert counting.calls == 1  # chunk 1 holds two prompts: one batch

    # With every shard on disk, rank 0 assembles the data set without generating.
    resumed = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path, rank=0, world_size=2, wait_timeout_s=1)
    assert counting.calls == 1
    monkeypatch.setattr(distill, "_answer_turn", counting.original)
    reference = _distill(lively_llama, tiny_tokenizer, CONVERSATIONS, tmp_path / "ref")
    assert list(resumed["conversations"]) == list(reference["conversations"])


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_rank_outside_the_world_is_rejected(tiny_llama, tiny_tokenizer, tmp_path, rank, world_size):
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        _distill(tiny_llama, tiny_tokenizer, CONVERSATIONS, tmp_path, rank=rank, world_size=world_size)
    assert not any(tmp_path.iterdir())  # rejected before anything is written
