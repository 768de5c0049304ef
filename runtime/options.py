"""What the runtime's and the evaluator's CLIs share: `key=value` options with their ranges, the
draft's target, and one way to report errors (exit 2 for a bad command line, 1 for inputs that fail)."""

from __future__ import annotations

import difflib
import math
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from specdec.models.base import DraftMismatchError, read_draft_config
from specdec.models.target import TargetLoadError
from specdec.runtime.generator import choose_layout
from specdec.runtime.verify import SamplingConfig, resolve_verifier, verifier_names

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
NON_NEGATIVE = ("at least 0", lambda v: v >= 0)
PROBABILITY = ("within (0, 1]", lambda v: 0 < v <= 1)
VERIFIER_NAME = (f"one of {', '.join(verifier_names())}", lambda v: v in verifier_names())


class Option(NamedTuple):
    """One `key=value` option: its type, its default, and the range its value must lie in."""

    kind: type
    """str, int, float or bool."""
    default: Any
    """Value when the option is not given (None: unset)."""
    rule: tuple[str, Callable[[Any], bool]] | None = None
    """(what the value must be, test), e.g. AT_LEAST_1; None: any value of the type."""


SHARED_OPTIONS = {
    "target": Option(str, None),
    "max_new_tokens": Option(int, 256, AT_LEAST_1),
    "temperature": Option(float, 0.0, NON_NEGATIVE),
    "verifier": Option(str, "auto", VERIFIER_NAME),
    "tree_size": Option(int, None, AT_LEAST_1),
    "depth": Option(int, 5, AT_LEAST_1),
    "tree_top_k": Option(int, 4, AT_LEAST_1),
    "seed": Option(int, 0),
    "threads": Option(int, None, AT_LEAST_1),
}
"""Options specdec-generate and specdec-eval both take, with the same defaults and ranges."""


class UsageError(ValueError):
    """A command line that cannot be used; the message says what to write instead."""


RUNTIME_ERRORS = (FileNotFoundError, DraftMismatchError, TargetLoadError)
"""Failures of inputs the command line names correctly (a damaged draft, a target that does not load): exit 1."""


def parse_options(argv: list[str], spec: dict[str, Option]) -> dict[str, Any]:
    """`key=value` words -> {key: typed value}, defaults from `spec`; unknown keys name the
    closest valid one, values outside an option's range say what it must be."""
    options = {key: option.default for key, option in spec.items()}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {word!r}")
        if key not in spec:
            close = difflib.get_close_matches(key, spec, n=1)
            hint = f"did you mean {close[0]}=? " if close else ""
            raise UsageError(f"unknown key {key!r}: {hint}valid keys: {', '.join(spec)}")
        options[key] = _convert(key, value, spec[key])
    return options


def _convert(key: str, value: str, option: Option):
    if option.kind is bool:
        if value.lower() not in TRUE + FALSE:
            raise UsageError(f"{key}={value}: expected true or false")
        return value.lower() in TRUE
    try:
        typed = option.kind(value)
    except ValueError:
        raise UsageError(f"{key}={value}: expected {option.kind.__name__}") from None
    if option.kind is float and not math.isfinite(typed):
        raise UsageError(f"{key}={value}: expected a finite number")
    if option.rule and not option.rule[1](typed):
        raise UsageError(f"{key}={value}: must be {option.rule[0]}")
    return typed


def draft_folder(path: str) -> tuple[Path, dict]:
    """The draft folder a command line names and its config.json; a folder without one is a usage error."""
    try:
        return Path(path), read_draft_config(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def target_source(draft_dir: Path, config: dict) -> str:
    """Where the draft's target lives: the fine-tuned copy inside the draft folder (Medusa-2),
    else `target.name_or_path` from its config.json."""
    target = config.get("target") or {}
    if target.get("finetuned_weights"):
        return str(draft_dir / target["finetuned_weights"])
    if not target.get("name_or_path"):
        raise UsageError(f"{draft_dir}/config.json names no target (target.name_or_path): pass target=NAME_OR_PATH")
    return target["name_or_path"]


def draft_layout(draft, kind: str, options: dict):
    """`choose_layout` with the shared tree options; a layout this draft cannot take (a chain deeper than its heads) is a usage error."""
    try:
        return choose_layout(draft, kind, options["tree_size"], options["depth"], options["tree_top_k"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_verifier(options: dict) -> None:
    """The `verifier` option against `temperature`: a rule that cannot decode at it (greedy above 0) is a usage error."""
    try:
        resolve_verifier(options["verifier"], SamplingConfig(temperature=options["temperature"]))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_cli(prog: str, argv: list[str], usage: str, parse: Callable[[list[str]], Any], run: Callable[[Any], int], *more_runtime_errors: type[Exception]) -> int:
    """`--help`, then `run(parse(argv))`; errors print one `PROG: error: ...` line: exit 2 for usage,
    1 for RUNTIME_ERRORS and `more_runtime_errors` (inputs that fail)."""
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage)
        return 0
    try:
        return run(parse(argv))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (*RUNTIME_ERRORS, *more_runtime_errors) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
