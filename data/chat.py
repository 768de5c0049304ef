"""Turn conversations into token ids plus a loss mask that covers the assistant turns only.

The chat template of the tokenizer is applied to the whole conversation. Which tokens belong
to assistant turns is found without knowing the template: the conversation is also rendered
up to each assistant turn (with the generation prompt) and up to its end, and the length of
those renderings marks where the turn's tokens start and stop. This works for any template
whose rendering of earlier turns does not change when later turns are appended.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import datasets
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# Above this many conversations, `tokenize_conversations` shows a progress bar.
PROGRESS_BAR_MIN = 200

# Column types of the tokenized data set.
TOKENIZED_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "loss_mask": datasets.List(datasets.Value("int8")),
    }
)


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int | None = None) -> dict:
    """Apply the chat template and mark the tokens the draft is trained on.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        messages: the conversation, a list of ``{"role", "content"}`` messages.
        max_length: keep at most this many tokens (the end of the conversation is cut off).

    Returns:
        ``{"input_ids": list[int], "loss_mask": list[int]}`` of equal length. ``loss_mask`` is 1
        on the content tokens of every assistant turn and on its end-of-turn token(s) (for
        ChatML: the content and ``<|im_end|>``), and 0 on system/user turns, role headers and
        whitespace the template puts after a turn. An assistant message with ``"truncated":
        True`` (cut off by a length cap) keeps only its content tokens.

    Raises:
        ValueError: if the tokenizer has no chat template, or the template is not prefix-stable.
    """
    _require_chat_template(tokenizer)
    # Step 1: render and tokenize the whole conversation.
    full_text = _render(tokenizer, messages, add_generation_prompt=False)
    input_ids = _encode(tokenizer, full_text)
    loss_mask = [0] * len(input_ids)
    # Step 2: locate each assistant turn between two prefix renderings and mask it in.
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _prefix_boundary(tokenizer, messages[:index], True, full_text, input_ids)
        end = _prefix_boundary(tokenizer, messages[: index + 1], False, full_text, input_ids)
        end = _strip_trailing_whitespace(tokenizer, input_ids, start, end)
        if message.get("truncated"):
            # Step 2b: an answer cut off at a length cap did not end there: leave its end-of-turn out.
            content_text = _render(tokenizer, messages[:index], True) + message["content"]
            if full_text.startswith(content_text):
                end = min(end, _text_boundary(tokenizer, content_text, input_ids))
        loss_mask[start:end] = [1] * (end - start)
    # Step 3: cut off the end of the conversation beyond max_length.
    if max_length is not None:
        input_ids, loss_mask = input_ids[:max_length], loss_mask[:max_length]
    return {"input_ids": input_ids, "loss_mask": loss_mask}


def tokenize_conversations(
    tokenizer, conversations: Iterable[list[dict]] | datasets.Dataset, max_length: int | None
) -> datasets.Dataset:
    """Tokenize many conversations into a data set with ``input_ids`` and ``loss_mask`` columns.

    ``conversations`` may be a list of conversations or a data set with a ``conversations``
    column (as returned by ``specdec.data.distill.self_distill``). Examples with no assistant
    token left after truncation are dropped, and the number dropped is logged.
    """
    _require_chat_template(tokenizer)
    if isinstance(conversations, datasets.Dataset):
        conversations = conversations["conversations"]
    conversations = list(conversations)
    # Step 1: tokenize every conversation, with a progress bar for large inputs.
    rows = {"input_ids": [], "loss_mask": []}
    dropped = 0
    progress = tqdm(conversations, desc="tokenize", disable=len(conversations) <= PROGRESS_BAR_MIN)
    for messages in progress:
        example = tokenize_conversation(tokenizer, messages, max_length)
        # Step 2: keep only examples that still have something to learn from.
        if not any(example["loss_mask"]):
            dropped += 1
            continue
        rows["input_ids"].append(example["input_ids"])
        rows["loss_mask"].append(example["loss_mask"])
    if dropped:
        logger.warning(
            "dropped %d of %d conversations with no assistant tokens (after truncation to %s tokens)",
            dropped,
            len(conversations),
            max_length,
        )
    return datasets.Dataset.from_dict(rows, features=TOKENIZED_FEATURES)


def _require_chat_template(tokenizer) -> None:
    """Raise a ValueError telling the user to set a chat template if the tokenizer has none."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')!r}) has no chat "
            "template. Set `tokenizer.chat_template` to a Jinja chat template (for example the one of the "
            "model's instruct version) before tokenizing conversations."
        )


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Apply the chat template and return the text (not tokens)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    """Tokenize a rendered template; it already holds any BOS/special tokens it needs."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prefix_boundary(
    tokenizer, prefix: list[dict], add_generation_prompt: bool, full_text: str, full_ids: list[int]
) -> int:
    """Return the number of leading tokens of ``full_ids`` that the rendered ``prefix`` covers.

    A token that merges across the boundary (the prefix's tokens are then not exactly a
    token-prefix of ``full_ids``) is counted as after the boundary.
    """
    # Step 1: the rendered prefix must be a text prefix of the whole rendering.
    prefix_text = _render(tokenizer, prefix, add_generation_prompt)
    if not full_text.startswith(prefix_text):
        raise ValueError(
            f"the chat template is not prefix-stable: rendering the first {len(prefix)} message(s)"
            f"{' with the generation prompt' if add_generation_prompt else ''} does not give a prefix of the "
            "rendering of the whole conversation, so assistant turns cannot be located. Templates that rewrite "
            "earlier turns (for example drop reasoning from past assistant turns) are not supported; use a "
            "template that renders each turn the same whatever follows it."
        )
    return _text_boundary(tokenizer, prefix_text, full_ids)


def _text_boundary(tokenizer, prefix_text: str, full_ids: list[int]) -> int:
    """Number of leading tokens of ``full_ids`` shared with the tokenization of ``prefix_text``."""
    prefix_ids = _encode(tokenizer, prefix_text)
    shared = 0
    for prefix_id, full_id in zip(prefix_ids, full_ids):
        if prefix_id != full_id:
            break
        shared += 1
    return shared


def _strip_trailing_whitespace(tokenizer, input_ids: list[int], start: int, end: int) -> int:
    """Move ``end`` back over tokens that decode to whitespace only (e.g. the newline after ``<|im_end|>``)."""
    while end > start and not tokenizer.decode([input_ids[end - 1]]).strip():
        end -= 1
    return end
