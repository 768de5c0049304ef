"""The key=value command line every specdec console script shares.

specdec-train, specdec-prepare, specdec-export, specdec-eval and specdec-generate all read
`key=value` words: the same word splitting, the same boolean spellings, the same typo
suggestion, the same `--help` layout (usage, then every key with its default and meaning), and
one runner that ends a failed command in exactly one `specdec-<cli>: error: ...` line with exit
code 2 for a usage error (bad command line, unknown key, bad value) or 1 for an input that exists
but fails (one of the command's listed exception types). Any other exception is a bug and keeps
its traceback; a ValueError raised inside the work is never reported as a usage error.

It lives in `specdec.models` because every package may import from here (train, runtime and
eval all import models; models imports none of them).
"""

from __future__ import annotations

import difflib
import math
import sys
from typing import Any, Callable, Iterable, NamedTuple

TRUE_WORDS = ("true", "1", "yes", "on")
"""Spellings of a true boolean value, in any letter case."""
FALSE_WORDS = ("false", "0", "no", "off")
"""Spellings of a false boolean value, in any letter case."""
HELP_WORDS = ("-h", "--help", "help")
"""Words that ask for the help page instead of running the command."""
SUGGESTION_CUTOFF = 0.5
"""How close (difflib ratio) a valid name must be to a mistyped one to be suggested."""


class UsageError(Exception):
    """A command line that cannot be used (exit 2); the message says what to write instead.

    Not a ValueError on purpose: an `except ValueError` somewhere inside the work never turns
    into a usage error, and a usage error is never swallowed by one."""


class Rule(NamedTuple):
    """A range a typed value must lie in."""

    meaning: str
    """What the value must be, as the error says it ("at least 1")."""
    holds: Callable[[Any], bool]
    """True for a value in range."""


AT_LEAST_1 = Rule("at least 1", lambda v: v >= 1)
NON_NEGATIVE = Rule("at least 0", lambda v: v >= 0)
PROBABILITY = Rule("within (0, 1]", lambda v: 0 < v <= 1)


class Option(NamedTuple):
    """One `key=value` option: its type, its default, the range its value must lie in, and what it means."""

    kind: type
    """str, int, float or bool."""
    default: Any
    """Value when the option is not given (None: unset; the doc says what unset does)."""
    rule: Rule | None = None
    """The range the value must lie in (e.g. AT_LEAST_1); None: any value of the type."""
    doc: str = ""
    """What the option does, one line, shown by `--help`."""


def split_words(argv: Iterable[str]) -> dict[str, str]:
    """`key=value` words -> {key: value} with the values still strings (a later word wins); a bare word is a usage error."""
    words = {}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected key=value, got {word!r}: every option is written key=value (--help lists the keys)")
        words[key.strip()] = value
    return words


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """" Did you mean `X`?" for the valid choice closest to a mistyped `word`, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=SUGGESTION_CUTOFF)
    return f" Did you mean `{close[0]}`?" if close else ""


def unknown_key(key: str, valid: Iterable[str], origin: str = "the command line") -> str:
    """The message for a key no schema has: "unknown key `K` in ORIGIN. Did you mean `C`?" (the caller adds where to find every key)."""
    return f"unknown key `{key}` in {origin}.{did_you_mean(key, valid)}"


def parse_bool(key: str, value: str) -> bool:
    """A boolean command-line value in any of the shared spellings (true/false, 1/0, yes/no, on/off)."""
    word = value.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise UsageError(f"`{key}` must be true or false (or yes/no, on/off, 1/0), got {value!r}")
    return word in TRUE_WORDS


def parse_options(argv: Iterable[str], spec: dict[str, Option]) -> dict[str, Any]:
    """`key=value` words -> {key: typed value} for every key of `spec` (defaults for those not given);
    unknown keys name the closest valid one, values of the wrong type or out of range say what they must be."""
    options = {key: option.default for key, option in spec.items()}
    for key, value in split_words(argv).items():
        if key not in spec:
            raise UsageError(f"{unknown_key(key, spec)} Valid keys: {', '.join(spec)}")
        options[key] = convert(key, value, spec[key])
    return options


def convert(key: str, value: str, option: Option) -> Any:
    """One command-line value typed as `option` says and checked against its rule."""
    if option.kind is bool:
        return parse_bool(key, value)
    try:
        typed = option.kind(value)
    except ValueError:
        raise UsageError(f"{key}={value}: expected {option.kind.__name__}") from None
    if option.kind is float and not math.isfinite(typed):
        raise UsageError(f"{key}={value}: expected a finite number")
    if option.rule and not option.rule.holds(typed):
        raise UsageError(f"{key}={value}: must be {option.rule.meaning}")
    return typed


def spec_rows(spec: dict[str, Option]) -> list[tuple[str, Any, str]]:
    """(key, default, doc) rows of a spec, for `help_page`."""
    return [(key, option.default, option.doc) for key, option in spec.items()]


def help_page(usage: str, sections: list[tuple[str, list[tuple[str, Any, str]]]]) -> str:
    """The `--help` text: `usage`, then each (title, rows) section as `key=default  meaning` lines aligned across sections."""
    entries = [(f"{key}={_shown(default)}", doc) for _, rows in sections for key, default, doc in rows]
    width = max((len(entry) for entry, _ in entries), default=0)
    lines = [usage.rstrip("\n")]
    for title, rows in sections:
        lines += ["", title, *(f"  {f'{key}={_shown(default)}'.ljust(width)}  {doc}" for key, default, doc in rows)]
    return "\n".join(lines)


def _shown(default: Any) -> str:
    """A default as it would be written on the command line (nothing for an unset one)."""
    if default is None:
        return ""
    return str(default).lower() if isinstance(default, bool) else str(default)


def wants_help(argv: Iterable[str]) -> bool:
    """True when the command line asks for the help page (-h, --help or help anywhere)."""
    return any(word in HELP_WORDS for word in argv)


def run_cli(prog: str, argv: list[str], help_text: Callable[[], str], parse: Callable[[list[str]], Any], run: Callable[[Any], int], failures: tuple[type[BaseException], ...] = ()) -> int:
    """A console script's body: `--help` prints `help_text()` (exit 0); else `run(parse(argv))`.

    A UsageError, from either step, prints one `PROG: error: ...` line and returns 2; an exception
    of a `failures` type raised by `run` (an input that exists but fails) prints one line and
    returns 1. Anything else propagates with its traceback."""
    if wants_help(argv):
        print(help_text())
        return 0
    try:
        options = parse(argv)
    except UsageError as exc:
        return _fail(prog, exc, 2)
    try:
        return run(options)
    except UsageError as exc:
        return _fail(prog, exc, 2)
    except failures as exc:
        return _fail(prog, exc, 1)


def _fail(prog: str, exc: BaseException, code: int) -> int:
    """Print the error as exactly one line and return `code`."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
