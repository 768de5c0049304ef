"""Outcome checkers: does a candidate answer reach the same outcome as the reference answer?

AutoJudge's label miner (`specdec-judge-data`) asks one after every substitution it tries; a
checker is chosen by name from `CHECKERS` (`build_checker`). Each has `same_outcome(prompt_record,
reference_text, candidate_text) -> bool`, `describe()` (its name and settings, for data cards),
`max_regen_tokens` (how many tokens after a substitution it needs to see: None = the whole rest
of the answer) and `judges_locally` (True: it judges the continuation right after the first
difference, so the miner hands it the current response, whose continuation there is the target's
own, rather than the original answer).

- math: the final number (GSM8K's `#### N`, else the last number of the text).
- code: whether the answer's last ```python block passes the record's `tests` (run in a subprocess).
- general: open chat, no final outcome: the continuation rejoins the reference within a few tokens.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from specdec.models.cli_args import did_you_mean

GSM8K_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
"""GSM8K's final-answer line: `#### 72`."""
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
"""A number in text: digits with optional thousands commas and decimals."""
PYTHON_BLOCK = re.compile(r"```(?:python|py)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
"""A fenced Python block (an unclosed block runs to the end of the text: a truncated answer)."""
WORD = re.compile(r"\w+|[^\w\s]")
"""The general checker's default tokens: words and single punctuation marks."""


class CheckerError(ValueError):
    """A prompt record a checker cannot judge (the code checker without `tests`)."""


class OutcomeChecker:
    """Base of every checker; a subclass sets `name` and defines `same_outcome`."""

    name: ClassVar[str]
    """Registry key (the `checker=` option)."""
    judges_locally: ClassVar[bool] = False
    """True: the rule looks at the continuation right after the first difference (the miner passes the current response as the reference)."""

    @property
    def max_regen_tokens(self) -> int | None:
        """Tokens after a substitution the rule needs to see (None: the whole rest of the answer)."""
        return None

    def same_outcome(self, prompt_record: dict, reference_text: str, candidate_text: str) -> bool:
        """True when `candidate_text` reaches the outcome of `reference_text` for this prompt."""
        raise NotImplementedError(f"{type(self).__name__} must define same_outcome(prompt_record, reference_text, candidate_text)")

    def describe(self) -> dict:
        """JSON-able name and settings (written into data cards)."""
        return {"checker": self.name}


@dataclass
class MathChecker(OutcomeChecker):
    """Same final number: the one after GSM8K's `####` if the text has one, else the text's last
    number; commas dropped and trailing decimal zeros removed (`1,000.0` = `1000`). When neither
    text holds a number, the texts' last non-empty lines (stripped) must be equal; a number in
    only one of them is a different outcome."""

    name: ClassVar[str] = "math"

    def same_outcome(self, prompt_record: dict, reference_text: str, candidate_text: str) -> bool:
        reference, candidate = final_number(reference_text), final_number(candidate_text)
        if reference is None and candidate is None:
            return last_line(reference_text) == last_line(candidate_text)
        return reference == candidate


def final_number(text: str) -> str | None:
    """The normalised final number of a text (GSM8K `#### N` first, else the last number), or None."""
    marked = GSM8K_FINAL.findall(text)
    found = marked or NUMBER.findall(text)
    return normalise_number(found[-1]) if found else None


def normalise_number(number: str) -> str:
    """`1,234.50` -> `1234.5`, `72.0` -> `72`, `-0` -> `0`."""
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".") or "0"
    if number.startswith("."):
        number = "0" + number
    if number.startswith("-."):
        number = "-0" + number[1:]
    return "0" if number in ("-0", "") else number


def last_line(text: str) -> str:
    """The last non-empty line, stripped ("" for a blank text)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class CodeChecker(OutcomeChecker):
    """Same pass/fail status: the answer's last ```python block, followed by the record's `tests`
    (a list of assert statements or one test string), runs as one script with `python -I` in a
    fresh temporary folder; it passes when it exits with status 0 within `timeout_s` seconds. An
    answer without a python block fails. Results are cached per (program, tests)."""

    name: ClassVar[str] = "code"
    timeout_s: float = 5.0
    """Wall-clock limit of one run; a script that runs longer fails."""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    """Program -> its pass status, so R's own tests run once per prompt."""

    def same_outcome(self, prompt_record: dict, reference_text: str, candidate_text: str) -> bool:
        tests = record_tests(prompt_record)
        return self.passes(reference_text, tests) == self.passes(candidate_text, tests)

    def passes(self, answer_text: str, tests: str) -> bool:
        """Whether the answer's last python block passes `tests`."""
        blocks = PYTHON_BLOCK.findall(answer_text)
        if not blocks:
            return False
        program = blocks[-1] + "\n\n" + tests + "\n"
        if program not in self._cache:
            self._cache[program] = run_python(program, self.timeout_s)
        return self._cache[program]

    def describe(self) -> dict:
        return {"checker": self.name, "timeout_s": self.timeout_s}


def record_tests(prompt_record: dict) -> str:
    """The record's `tests` as one script (a list of asserts joined by lines); a record without them is a CheckerError."""
    tests = prompt_record.get("tests")
    if isinstance(tests, list) and all(isinstance(t, str) for t in tests) and tests:
        return "\n".join(tests)
    if isinstance(tests, str) and tests.strip():
        return tests
    raise CheckerError(f"the code checker needs a `tests` entry (a list of assert strings or a test string) in every prompt record; this one has keys {sorted(prompt_record)}")


def run_python(program: str, timeout_s: float) -> bool:
    """True when `program` exits with status 0 within `timeout_s` (isolated mode, in a fresh temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="specdec-check-") as folder:
        script = Path(folder) / "check.py"
        script.write_text(program, encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-I", script.name], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


@dataclass
class GeneralChecker(OutcomeChecker):
    """Open chat: the candidate rejoins the reference soon after the first difference.

    Both texts are split into tokens (`tokenize`: the miner passes the target's tokenizer; default
    words and single punctuation marks). Let a be the first index where candidate c and reference
    r differ (none and equal lengths: same). The outcome is the same when, for some window start
    i with a < i <= a + 1 + `rejoin_tokens`:
    - c has `window` tokens from i and they equal r[i+s : i+s+window] for some shift |s| <= `max_shift`
      (the substitution may insert or drop a few tokens), or
    - c ends before a full window from i, its last tokens c[i:] are r's last tokens and the two
      lengths differ by at most `max_shift` (both answers end the same way).
    The first start with less than a full window decides (later ones are shorter still). So the
    rule reads at most a + 1 + rejoin_tokens + window tokens of c: after a substitution at a, the
    miner regenerates only `max_regen_tokens` = rejoin_tokens + window + max_shift tokens (the
    margin keeps a full window when decoding and re-tokenizing the text shifts a few tokens, so a
    cut-off candidate is not read as one that ended)."""

    name: ClassVar[str] = "general"
    judges_locally: ClassVar[bool] = True
    rejoin_tokens: int = 8
    """Tokens after the first difference within which a matching window must start."""
    window: int = 4
    """Consecutive tokens that must match the reference."""
    max_shift: int = 4
    """How far (tokens) the matching stretch of the reference may sit from the candidate's."""
    tokenize: Callable[[str], list] | None = field(default=None, repr=False, compare=False)
    """Text -> tokens (None: words and punctuation marks)."""

    def __post_init__(self):
        if self.rejoin_tokens < 0 or self.window < 1 or self.max_shift < 0:
            raise ValueError(f"the general checker needs rejoin_tokens >= 0, window >= 1 and max_shift >= 0, got {self.rejoin_tokens}, {self.window}, {self.max_shift}")

    @property
    def max_regen_tokens(self) -> int:
        return self.rejoin_tokens + self.window + self.max_shift

    def same_outcome(self, prompt_record: dict, reference_text: str, candidate_text: str) -> bool:
        split = self.tokenize or WORD.findall
        return self.rejoins(list(split(reference_text)), list(split(candidate_text)))

    def rejoins(self, reference: list, candidate: list) -> bool:
        """The rule on token lists (see the class docstring)."""
        a = next((i for i, (x, y) in enumerate(zip(reference, candidate)) if x != y), min(len(reference), len(candidate)))
        if a == len(reference) == len(candidate):
            return True
        shifts = range(-self.max_shift, self.max_shift + 1)
        for i in range(a + 1, a + 2 + self.rejoin_tokens):
            piece = candidate[i : i + self.window]
            if len(piece) < self.window:
                # The candidate ends before a full window: same when both end alike and about as long.
                ending = reference[len(reference) - len(piece) :] if piece else []
                return ending == piece and abs(len(reference) - len(candidate)) <= self.max_shift
            # A full window of the candidate found in the reference near the same place.
            if any(i + s >= 0 and reference[i + s : i + s + self.window] == piece for s in shifts):
                return True
        return False

    def describe(self) -> dict:
        tokens = "words" if self.tokenize is None else "target tokenizer"
        return {"checker": self.name, "rejoin_tokens": self.rejoin_tokens, "window": self.window, "max_shift": self.max_shift, "tokens": tokens}


CHECKERS: dict[str, type[OutcomeChecker]] = {c.name: c for c in (MathChecker, CodeChecker, GeneralChecker)}
"""Checker name -> class."""


def build_checker(name: str, **settings) -> OutcomeChecker:
    """The checker called `name`, given the settings it takes (others are ignored, so one CLI can pass them all);
    an unknown name raises ValueError suggesting the closest."""
    if name not in CHECKERS:
        raise ValueError(f"unknown checker {name!r}: choose one of {', '.join(CHECKERS)}.{did_you_mean(name, CHECKERS)}")
    cls = CHECKERS[name]
    taken = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    return cls(**{key: value for key, value in settings.items() if key in taken})
