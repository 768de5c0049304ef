"""Tests for specdec.data.chat: loss masks on assistant turns, truncation and template errors."""

from __future__ import annotations

import datasets
import pytest
from conftest import build_tiny_tokenizer

from specdec.data.chat import tokenize_conversation, tokenize_conversations

TWO_TURNS = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "question one"},
    {"role": "assistant", "content": "assistant answer 1"},
    {"role": "user", "content": "question two"},
    {"role": "assistant", "content": "answer 2"},
]


def _masked_text(tokenizer, example):
    """Decode the tokens whose loss_mask is 1, keeping special tokens."""
    return tokenizer.decode([t for t, m in zip(example["input_ids"], example["loss_mask"]) if m])


def _unmasked_text(tokenizer, example):
    """Decode the tokens whose loss_mask is 0, keeping special tokens."""
    return tokenizer.decode([t for t, m in zip(example["input_ids"], example["loss_mask"]) if not m])


def test_mask_covers_exactly_assistant_content_and_end_token(tiny_tokenizer):
    example = tokenize_conversation(tiny_tokenizer, TWO_TURNS)
    assert len(example["input_ids"]) == len(example["loss_mask"])
    assert _masked_text(tiny_tokenizer, example) == "assistant answer 1<|im_end|>answer 2<|im_end|>"
    unmasked = _unmasked_text(tiny_tokenizer, example)
    for text in ("Be terse.", "question one", "question two", "<|im_start|>assistant\n"):
        assert text in unmasked
    # The whole rendering is tokenized unchanged.
    rendered = tiny_tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    assert tiny_tokenizer.decode(example["input_ids"]) == rendered


def test_hand_checked_positions(tiny_tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    example = tokenize_conversation(tiny_tokenizer, messages)
    prompt = tiny_tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    header = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer = tiny_tokenizer("ok", add_special_tokens=False)["input_ids"]
    # header tokens (default system + user turn + "<|im_start|>assistant\n"), answer, <|im_end|>, "\n".
    assert example["loss_mask"] == [0] * header + [1] * len(answer) + [1, 0]
    assert example["input_ids"][header : header + len(answer)] == answer
    assert example["input_ids"][header + len(answer)] == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    assert tiny_tokenizer.decode(example["input_ids"][-1:]) == "\n"


def test_truncation_keeps_the_start(tiny_tokenizer):
    full = tokenize_conversation(tiny_tokenizer, TWO_TURNS)
    cut = tokenize_conversation(tiny_tokenizer, TWO_TURNS, max_length=40)
    assert len(full["input_ids"]) > 40
    assert cut["input_ids"] == full["input_ids"][:40]
    assert cut["loss_mask"] == full["loss_mask"][:40]


def test_user_only_conversation_has_empty_mask(tiny_tokenizer):
    example = tokenize_conversation(tiny_tokenizer, [{"role": "user", "content": "hello"}])
    assert example["input_ids"] and not any(example["loss_mask"])


def test_missing_chat_template_is_a_clear_error():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template.*chat_template"):
        tokenize_conversation(tokenizer, TWO_TURNS)


def test_template_that_is_not_prefix_stable_is_rejected():
    tokenizer = build_tiny_tokenizer()
    # Marks the last message differently, so earlier renderings are not prefixes of later ones.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
        "{% if loop.last %}{{ ' (last)' }}{% endif %}{{ '\n' }}{% endfor %}"
    )
    with pytest.raises(ValueError, match="not prefix-stable"):
        tokenize_conversation(tokenizer, TWO_TURNS)


def test_tokenize_conversations_drops_examples_without_assistant_tokens(tiny_tokenizer, caplog):
    conversations = [TWO_TURNS, [{"role": "user", "content": "no answer"}], TWO_TURNS[1:3]]
    with caplog.at_level("WARNING"):
        dataset = tokenize_conversations(tiny_tokenizer, conversations, max_length=None)
    assert dataset.column_names == ["input_ids", "loss_mask"]
    assert len(dataset) == 2
    assert dataset[0] == tokenize_conversation(tiny_tokenizer, TWO_TURNS)
    assert "dropped 1 of 3" in caplog.text
    # Truncated before the first answer: nothing left to learn, so it is dropped too.
    assert len(tokenize_conversations(tiny_tokenizer, conversations, max_length=10)) == 0


def test_tokenize_conversations_accepts_a_conversations_dataset(tiny_tokenizer):
    dataset = datasets.Dataset.from_dict({"conversations": [TWO_TURNS]})
    tokenized = tokenize_conversations(tiny_tokenizer, dataset, max_length=None)
    assert tokenized[0]["input_ids"] == tokenize_conversation(tiny_tokenizer, TWO_TURNS)["input_ids"]


def test_truncated_answer_keeps_its_content_but_not_the_end_of_turn(tiny_tokenizer):
    messages = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello! How can", "truncated": True}]
    example = tokenize_conversation(tiny_tokenizer, messages)
    masked = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if m]
    assert tiny_tokenizer.decode(masked) == "Hello! How can"
    finished = tokenize_conversation(tiny_tokenizer, [messages[0], {**messages[1], "truncated": False}])
    assert sum(finished["loss_mask"]) == sum(example["loss_mask"]) + 1
