"""Shared fixtures: a tiny ChatML tokenizer and tiny random Llama targets, built offline."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts several tokens and verifies them in one forward pass.",
    "Medusa heads predict tokens further ahead from the last hidden state.",
    "Hello! How can I help you today? Please write a short poem about the sea.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } ' \"",
    "system user assistant You are a tiny test assistant.",
]


def build_tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens and a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(vocab_size: int, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama small enough for unit tests (fp32, eval mode)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def enliven(model, std: float = 0.3, seed: int = 0):
    """Redraw a tiny model's weights (norms kept) with a larger std, so its greedy outputs vary
    between prompts instead of repeating one token."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def randomise(module, seed: int, std: float):
    """Redraw a draft's weights (norms kept) from N(0, std) with `seed`, in eval mode: a random draft that still proposes varied tokens."""
    torch.manual_seed(seed)
    for name, p in module.named_parameters():
        if "norm" not in name:
            p.data.normal_(0, std)
    return module.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_llama(tiny_tokenizer) -> LlamaForCausalLM:
    return build_tiny_llama(len(tiny_tokenizer))


@pytest.fixture()
def tiny_target_dir(tmp_path, tiny_tokenizer, tiny_llama):
    """A tiny target saved as a local Hugging Face directory (model + tokenizer)."""
    path = tmp_path / "tiny-target"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
