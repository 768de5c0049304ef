"""Load chat data from files, bundled assets or the Hugging Face Hub into one conversation format.

A *message* is ``{"role": "system" | "user" | "assistant", "content": str}`` and a
*conversation* is a ``list`` of messages. Every loader in this module returns
``list[conversation]`` whatever the input format was (ShareGPT, OpenAI ``messages``,
Alpaca, MT-Bench style ``turns``, GSM8K style ``question``/``answer`` or plain
``prompt``/``response`` records). Files are ``.json``, ``.jsonl`` or ``.jsonl.gz``; a folder
stands for its ``.jsonl`` / ``.jsonl.gz`` files in name order (shards).
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ASSETS_DIR = Path(__file__).parent / "assets"

# Builtin source name -> file in `data/assets/` (see data/assets/ATTRIBUTION.md).
BUILTIN_SOURCES: dict[str, str] = {
    "sharegpt-prompts": "sharegpt_prompts.jsonl",
    "mt-bench": "mt_bench.jsonl",
    "smollm2-selfdistill": "smollm2_selfdistill_160.jsonl",
}

ON_ERROR_CHOICES = ("skip", "raise")

# ShareGPT `from` values and OpenAI `role` values -> normalised role.
_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}

# Number of line numbers quoted in the "skipped records" warning.
_MAX_QUOTED_LINES = 5


class DataError(ValueError):
    """A record or file that cannot be read as chat data."""


def load_conversations(
    source: str,
    *,
    max_samples: int | None = None,
    on_error: str = "skip",
    split: str = "train",
) -> list[list[dict]]:
    """Load conversations from a ``.json``/``.jsonl`` path, a builtin name or ``hf:NAME[:CONFIG]``.

    Args:
        source: a path to a ``.json`` file (a list of records) or ``.jsonl`` file (one record
            per line); a key of ``BUILTIN_SOURCES``; or ``hf:NAME`` / ``hf:NAME:CONFIG`` for a
            Hugging Face Hub data set (needs network access).
        max_samples: keep only the first N valid conversations (``None`` keeps all).
        on_error: ``"skip"`` drops unreadable records with one warning that counts them;
            ``"raise"`` raises ``DataError`` at the first one, naming its file and line.
        split: the split to load for ``hf:`` sources.

    Returns:
        The conversations, each a list of ``{"role", "content"}`` messages.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples}")
    label, records = _open_source(source, split)
    conversations = _parse_records(label, records, max_samples=max_samples, on_error=on_error)
    if not conversations:
        raise DataError(f"{label} holds no usable conversation: it is empty or every record was skipped. Pass a file with one chat record per line (.jsonl) or a list of them (.json).")
    return conversations


def user_turns(conversation: list[dict]) -> list[dict]:
    """Return the conversation without its assistant messages (system and user turns only)."""
    return [message for message in conversation if message["role"] != "assistant"]


def normalize_record(record: Any) -> list[dict]:
    """Convert one record of any supported format into a conversation.

    Raises:
        DataError: if the record has an unknown shape, a bad turn or no user turn.
    """
    # Step 1: detect the format from the record's keys and convert it.
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        conversation = _from_turn_list(record["conversations"], "conversations")
    elif "messages" in record:
        conversation = _from_turn_list(record["messages"], "messages")
    elif "instruction" in record:
        conversation = _from_alpaca(record)
    elif "turns" in record:
        conversation = _from_question_turns(record["turns"])
    elif "prompt" in record:
        conversation = _from_prompt(record)
    elif "question" in record:
        conversation = _from_question(record)
    else:
        raise DataError(
            f"unknown record shape with keys {sorted(record)}; expected one of "
            "'conversations' (ShareGPT), 'messages', 'instruction' (Alpaca), 'turns', 'prompt' or 'question' (GSM8K)"
        )
    # Step 2: a usable conversation needs at least one user message.
    if not conversation:
        raise DataError("empty conversation")
    if not any(message["role"] == "user" for message in conversation):
        raise DataError("conversation has no user turn")
    return conversation


def check_source(source: str) -> Path | None:
    """The file a data source names (None for a builtin or ``hf:`` source), or the reason it cannot be read.

    Raises:
        FileNotFoundError: a path that is not a file.
        DataError: a file that is neither ``.json`` nor ``.jsonl``.
    """
    if source in BUILTIN_SOURCES or source.startswith("hf:"):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        if not _shards(path):
            raise DataError(f"data folder {path} holds no .jsonl or .jsonl.gz file")
        return path
    if not path.is_file():
        raise FileNotFoundError(
            f"data source {str(path)!r} is not a file. Pass a .json/.jsonl/.jsonl.gz path, a folder of .jsonl(.gz) shards, "
            f"'hf:NAME[:CONFIG]' or one of the builtin sources: {', '.join(sorted(BUILTIN_SOURCES))}"
        )
    if path.suffix not in (".json", ".jsonl") and not path.name.endswith(".jsonl.gz"):
        raise DataError(f"unsupported data file extension {path.suffix!r} for {path}: use .json, .jsonl or .jsonl.gz (a list of records, or one record per line)")
    return path


def _shards(folder: Path) -> list[Path]:
    """The .jsonl and .jsonl.gz files of a data folder, in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".jsonl" or p.name.endswith(".jsonl.gz")))


def _open_source(source: str, split: str) -> tuple[str, Iterable[tuple[int, Any]]]:
    """Resolve ``source`` into a label for messages and an iterator of (line number, record)."""
    if source in BUILTIN_SOURCES:
        return _open_file(ASSETS_DIR / BUILTIN_SOURCES[source])
    if source.startswith("hf:"):
        return _open_hub(source, split)
    return _open_file(check_source(source))


def _open_file(path: Path) -> tuple[str, Iterable[tuple[int | str, Any]]]:
    """Open a ``.json``, ``.jsonl`` or ``.jsonl.gz`` file, or a folder of shards, as (line, record) pairs."""
    if path.is_dir():
        return str(path), ((f"{shard.name}:{line}", record) for shard in _shards(path) for line, record in _iter_jsonl(shard))
    if path.suffix == ".json":
        return str(path), _iter_json_list(path)
    return str(path), _iter_jsonl(path)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) for each non-blank line (gzip-compressed for .gz); a line that is not UTF-8 text or not JSON yields a DataError."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield line_number, DataError(f"not UTF-8 text (byte {err.start + 1} of the line); save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_number, DataError(f"invalid JSON: {err.msg} (column {err.colno})")


def _iter_json_list(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (record number, record) from a file holding one JSON list of records."""
    try:
        text = path.read_text(encoding="utf-8")
        records = json.loads(text) if text.strip() else []
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start + 1}); save the file as UTF-8") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from err
    if not isinstance(records, list):
        raise DataError(f"{path}: a .json data file must hold a list of records, got {type(records).__name__}")
    yield from enumerate(records, start=1)


def _open_hub(source: str, split: str) -> tuple[str, Iterable[tuple[int, Any]]]:
    """Load ``hf:NAME`` or ``hf:NAME:CONFIG`` with ``datasets.load_dataset``."""
    import datasets

    name, _, config = source[len("hf:"):].partition(":")
    if not name:
        raise ValueError(f"bad Hub source {source!r}: expected 'hf:NAME' or 'hf:NAME:CONFIG'")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split)
    except (ConnectionError, OSError) as err:
        raise DataError(
            f"could not load Hub data set {name!r} ({type(err).__name__}: {err}). It needs network access or a "
            "populated Hugging Face cache; otherwise export it to a .jsonl file and pass that path."
        ) from err
    return f"{source} (split {split})", enumerate(dataset, start=1)


def _parse_records(
    label: str, records: Iterable[tuple[int, Any]], *, max_samples: int | None, on_error: str
) -> list[list[dict]]:
    """Normalise records, skipping or raising on bad ones as ``on_error`` says."""
    conversations: list[list[dict]] = []
    skipped: list[tuple[int, str]] = []
    for line_number, record in records:
        # Step 1: normalise the record (a JSON syntax error arrives as a DataError).
        try:
            if isinstance(record, DataError):
                raise record
            conversation = normalize_record(record)
        except DataError as err:
            if on_error == "raise":
                raise DataError(f"{label}:{line_number}: {err}") from None
            skipped.append((line_number, str(err)))
            continue
        # Step 2: stop once enough valid conversations were read.
        conversations.append(conversation)
        if max_samples is not None and len(conversations) >= max_samples:
            break
    # Step 3: report the skipped records once.
    if skipped:
        quoted = ", ".join(str(line) for line, _ in skipped[:_MAX_QUOTED_LINES])
        more = ", ..." if len(skipped) > _MAX_QUOTED_LINES else ""
        warnings.warn(
            f"{label}: skipped {len(skipped)} unreadable record(s) at line(s) {quoted}{more}; "
            f"first problem: {skipped[0][1]}. Pass on_error='raise' (recipes: data.on_error=raise) to stop at the first one.",
            stacklevel=3,
        )
    return conversations


def _from_turn_list(turns: Any, key: str) -> list[dict]:
    """Convert a ShareGPT (``from``/``value``) or OpenAI (``role``/``content``) turn list."""
    if not isinstance(turns, list):
        raise DataError(f"'{key}' must be a list of turns, got {type(turns).__name__}")
    conversation = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"'{key}'[{index}] must be an object, got {type(turn).__name__}")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in _ROLE_ALIASES:
            raise DataError(f"'{key}'[{index}] has unknown role {role!r}; expected one of {sorted(_ROLE_ALIASES)}")
        conversation.append(_message(_ROLE_ALIASES[role], content, f"'{key}'[{index}]"))
    return conversation


def _from_alpaca(record: dict) -> list[dict]:
    """Convert an Alpaca record: user = instruction (+ blank line + input), assistant = output."""
    instruction = _text(record["instruction"], "'instruction'")
    extra = _text(record.get("input") or "", "'input'")
    answer = _text(record.get("output") or "", "'output'")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    conversation = [_message("user", prompt, "'instruction'")]
    if answer.strip():
        conversation.append({"role": "assistant", "content": answer})
    return conversation


def _from_question_turns(turns: Any) -> list[dict]:
    """Convert an MT-Bench style question: a list of user prompts with no answers."""
    if not isinstance(turns, list):
        raise DataError(f"'turns' must be a list of strings, got {type(turns).__name__}")
    return [_message("user", turn, f"'turns'[{index}]") for index, turn in enumerate(turns)]


def _from_question(record: dict) -> list[dict]:
    """Convert a GSM8K style ``question`` record with an optional ``answer``."""
    conversation = [_message("user", record["question"], "'question'")]
    if record.get("answer"):
        conversation.append({"role": "assistant", "content": _text(record["answer"], "'answer'")})
    return conversation


def _from_prompt(record: dict) -> list[dict]:
    """Convert a ``prompt`` record with an optional ``response``/``completion``/``output``."""
    conversation = [_message("user", record["prompt"], "'prompt'")]
    for key in ("response", "completion", "output"):
        answer = record.get(key)
        if answer:
            conversation.append({"role": "assistant", "content": _text(answer, f"'{key}'")})
            break
    return conversation


def _message(role: str, content: Any, where: str) -> dict:
    """Build a message, requiring non-empty string content."""
    text = _text(content, where)
    if not text.strip():
        raise DataError(f"{where} is empty")
    return {"role": role, "content": text}


def _text(value: Any, where: str) -> str:
    """Return ``value`` if it is a string, else raise a DataError naming the field."""
    if not isinstance(value, str):
        raise DataError(f"{where} must be a string, got {type(value).__name__}")
    return value
