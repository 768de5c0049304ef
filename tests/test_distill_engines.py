"""Tests for the self-distillation engines: specdec's decode loop against transformers `generate`
token for token, the memory-bound batch size, bfloat16 in the cache key and the data card, and the
vLLM backend (its missing-package error, and its glue through a stand-in module)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from conftest import enliven

from specdec.data import distill
from specdec.data.distill import DistillConfig, auto_batch_size, cache_key, generate_token_ids, self_distill

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Please write a short poem about the sea."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Numbers: 1 2 3"}],
    [{"role": "user", "content": "Hello! How can I help you today?"}, {"role": "user", "content": "The quick brown fox"}],
    [{"role": "user", "content": "Medusa heads predict tokens."}, {"role": "user", "content": "1 2"}, {"role": "user", "content": "lazy dog"}],
    [{"role": "user", "content": "Speculative decoding drafts several tokens and verifies them."}],
    [{"role": "user", "content": "fox"}],
]
EOS = 2


@pytest.fixture()
def lively_llama(tiny_llama):
    """The tiny Llama with larger random weights and a doubled EOS output row, so answers differ between
    prompts and end at EOS after 8 to 33 tokens, or not within 40."""
    model = enliven(tiny_llama)
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 2.0
    return model


def _encoded(tokenizer, conversations):
    """Chat-templated prompt ids of the first user turn of each conversation."""
    texts = [tokenizer.apply_chat_template(c[: 2 if c[0]["role"] == "system" else 1], tokenize=False, add_generation_prompt=True) for c in conversations]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def _answers(rows):
    return [distill._until_eos(row, EOS) for row in rows]


@pytest.mark.parametrize("stop_check_every", [1, 8])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_specdec_engine_equals_generate_token_for_token(lively_llama, tiny_tokenizer, monkeypatch, batch_size, stop_check_every):
    monkeypatch.setattr(distill, "STOP_CHECK_EVERY", stop_check_every)
    encoded = _encoded(tiny_tokenizer, CONVERSATIONS)
    assert len({len(ids) for ids in encoded}) > 3  # prompts of different lengths: sorting and padding matter
    old = _answers(generate_token_ids(lively_llama, encoded, EOS, EOS, DistillConfig(max_new_tokens=40, batch_size=3, engine="hf")))
    new = _answers(generate_token_ids(lively_llama, encoded, EOS, EOS, DistillConfig(max_new_tokens=40, batch_size=batch_size, engine="specdec")))
    assert new == old
    lengths = [len(row) for row in old]
    assert any(row[-1] == EOS and len(row) < 40 for row in old)  # some answers stop at EOS early (their rows leave the batch) ...
    assert any(len(row) == 40 and EOS not in row for row in old)  # ... and some run to the cap
    assert len(set(lengths)) > 2


def test_multi_turn_self_distill_is_the_same_with_both_engines(lively_llama, tiny_tokenizer, tmp_path):
    def run(engine, batch_size):
        config = DistillConfig(max_new_tokens=30, batch_size=batch_size, chunk_size=4, multi_turn=True, engine=engine)
        return list(self_distill(lively_llama, tiny_tokenizer, CONVERSATIONS, config, tmp_path / engine, "tiny", show_progress=False)["conversations"])

    old, new = run("hf", 2), run("specdec", None)
    assert new == old
    assert [sum(m["role"] == "assistant" for m in row) for row in new] == [1, 1, 1, 2, 3, 1, 1]
    truncated = [m["truncated"] for row in new for m in row if m["role"] == "assistant"]
    assert True in truncated and False in truncated  # EOS and the length cap both occur


def test_batch_size_from_the_memory_bound(lively_llama, tiny_tokenizer, monkeypatch):
    kwargs = {"prompt_len": 40, "max_new_tokens": 20, "itemsize": 4}
    sizes = [auto_batch_size(lively_llama.config, memory_mb=mb, **kwargs) for mb in (1, 8, 64)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert auto_batch_size(lively_llama.config, memory_mb=1, prompt_len=4000, max_new_tokens=128, itemsize=4) == 1
    assert auto_batch_size(lively_llama.config, memory_mb=64, itemsize=2, prompt_len=40, max_new_tokens=20) > sizes[2]  # bfloat16 fits more
    # A bound that holds only a few prompts splits the chunk into more batches; the answers stay the same.
    batches = []
    decode = distill._decode_batch
    monkeypatch.setattr(distill, "_decode_batch", lambda model, encoded, *args: batches.append(len(encoded)) or decode(model, encoded, *args))
    encoded = _encoded(tiny_tokenizer, CONVERSATIONS)
    small = auto_batch_size(lively_llama.config, max(len(ids) for ids in encoded), 20, 1, 4)
    assert 1 < small < len(encoded)
    tight = generate_token_ids(lively_llama, encoded, EOS, EOS, DistillConfig(max_new_tokens=20, batch_size=None, memory_mb=1))
    assert max(batches) <= small and len(batches) > 1
    batches.clear()
    roomy = generate_token_ids(lively_llama, encoded, EOS, EOS, DistillConfig(max_new_tokens=20, batch_size=None, memory_mb=64))
    assert batches == [len(encoded)]
    assert _answers(tight) == _answers(roomy)


def test_bfloat16_is_in_the_cache_key_and_the_data_card(lively_llama, tiny_tokenizer, tmp_path):
    float32 = DistillConfig(max_new_tokens=6, batch_size=None)
    bfloat16 = DistillConfig(max_new_tokens=6, batch_size=None, dtype="bfloat16")
    assert cache_key("tiny", CONVERSATIONS, bfloat16) != cache_key("tiny", CONVERSATIONS, float32)
    assert cache_key("tiny", CONVERSATIONS, DistillConfig(max_new_tokens=6, batch_size=None, engine="hf")) != cache_key("tiny", CONVERSATIONS, float32)
    weights = lively_llama.model.embed_tokens.weight.clone()
    dataset = self_distill(lively_llama, tiny_tokenizer, CONVERSATIONS, bfloat16, tmp_path, "tiny", show_progress=False)
    card = json.loads(dataset.info.description)
    assert card["self_distilled_by"] == "tiny"
    assert card["generation"]["dtype"] == "bfloat16" and card["generation"]["engine"] == "specdec"
    assert len(dataset) == len(CONVERSATIONS) and all(row[-1]["role"] == "assistant" for row in dataset["conversations"])
    # The target itself is left in float32, untouched (generation used a bfloat16 copy).
    assert lively_llama.dtype == torch.float32 and torch.equal(lively_llama.model.embed_tokens.weight, weights)


def test_unknown_engine_or_dtype_is_refused(tiny_llama, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown self-distillation engine 'sglang': use one of specdec, hf, vllm"):
        self_distill(tiny_llama, tiny_tokenizer, CONVERSATIONS, DistillConfig(engine="sglang"), tmp_path, "tiny")
    with pytest.raises(ValueError, match="unknown self-distillation dtype 'float16': use one of float32, bfloat16"):
        self_distill(tiny_llama, tiny_tokenizer, CONVERSATIONS, DistillConfig(dtype="float16"), tmp_path, "tiny")
    assert not any(tmp_path.iterdir())


def test_vllm_engine_without_the_package_is_one_clear_line(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError) as caught:
        self_distill(tiny_llama, tiny_tokenizer, CONVERSATIONS, DistillConfig(engine="vllm"), tmp_path, "tiny")
    message = str(caught.value)
    assert message == "data.engine=vllm needs the vllm package, which is not installed: pip install vllm, or use data.engine=specdec"
    assert not any(tmp_path.iterdir())  # refused before any shard is written


class FakeVllm(types.ModuleType):
    """A stand-in `vllm` module: LLM answers every prompt with its own last two prompt tokens, then EOS."""

    def __init__(self):
        super().__init__("vllm")
        self.engines, self.params = [], []
        fake = self

        class LLM:
            def __init__(self, model, dtype, seed):
                fake.engines.append({"model": model, "dtype": dtype, "seed": seed})

            def generate(self, prompts, params, use_tqdm):
                fake.params.append(params)
                outputs = []
                for prompt in prompts:
                    ids = prompt["prompt_token_ids"][-2:] + params.stop_token_ids
                    outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids)]))
                return outputs

        self.LLM = LLM
        self.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)


def test_vllm_engine_shares_the_cache_shards_and_rank_split(lively_llama, tiny_tokenizer, tmp_path, monkeypatch):
    fake = FakeVllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(distill, "_VLLM_ENGINES", {})
    config = DistillConfig(engine="vllm", max_new_tokens=9, chunk_size=3)
    key_dir = tmp_path / cache_key("tiny", CONVERSATIONS, config)
    # Rank 1 of 2 generates only its own chunk (chunk 1 of 0, 1, 2), then waits in vain for rank 0.
    with pytest.raises(distill.DistillTimeoutError):
        self_distill(lively_llama, tiny_tokenizer, CONVERSATIONS, config, tmp_path, "tiny", show_progress=False, rank=1, world_size=2, wait_timeout_s=0)
    assert sorted(p.name for p in (key_dir / "shards").iterdir()) == ["shard-00001.jsonl"]
    dataset = self_distill(lively_llama, tiny_tokenizer, CONVERSATIONS, config, tmp_path, "tiny", show_progress=False)
    assert len(fake.engines) == 1 and fake.engines[0]["dtype"] == "float32"  # one engine per target, reused
    assert len(fake.params) == 3  # one call per chunk: chunk 1 by rank 1, chunks 0 and 2 by rank 0
    params = fake.params[0]
    assert (params.temperature, params.max_tokens, params.stop_token_ids, params.top_k) == (0.0, 9, [EOS], -1)
    for source, prompt_ids, row in zip(CONVERSATIONS, _encoded(tiny_tokenizer, CONVERSATIONS), dataset["conversations"]):
        assert row[-1] == {"role": "assistant", "content": tiny_tokenizer.decode(prompt_ids[-2:], skip_special_tokens=True), "truncated": False}
    assert json.loads(dataset.info.description)["generation"]["engine"] == "vllm"
