"""What the runtime's and the evaluator's CLIs share: `key=value` options and the draft's target."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class UsageError(ValueError):
    """A command line that cannot be used; the message says what to write instead."""


def parse_options(argv: list[str], spec: dict[str, tuple[type, Any]]) -> dict[str, Any]:
    """`key=value` words -> {key: typed value}, defaults from `spec` ({key: (type, default)});
    unknown keys name the closest valid one."""
    options = {key: default for key, (_, default) in spec.items()}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {word!r}")
        if key not in spec:
            close = difflib.get_close_matches(key, spec, n=1)
            hint = f"did you mean {close[0]}=? " if close else ""
            raise UsageError(f"unknown key {key!r}: {hint}valid keys: {', '.join(spec)}")
        options[key] = _convert(key, value, spec[key][0])
    return options


def _convert(key: str, value: str, kind: type):
    if kind is bool:
        if value.lower() not in TRUE + FALSE:
            raise UsageError(f"{key}={value}: expected true or false")
        return value.lower() in TRUE
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{key}={value}: expected {kind.__name__}") from None


def target_source(draft_dir: Path, config: dict) -> str:
    """Where the draft's target lives: the fine-tuned copy inside the draft folder (Medusa-2),
    else `target.name_or_path` from its config.json."""
    target = config.get("target") or {}
    if target.get("finetuned_weights"):
        return str(draft_dir / target["finetuned_weights"])
    if not target.get("name_or_path"):
        raise UsageError(f"{draft_dir}/config.json names no target (target.name_or_path): pass target=NAME_OR_PATH")
    return target["name_or_path"]
