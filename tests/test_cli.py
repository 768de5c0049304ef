"""Every console script reads its command line through specdec.models.cli_args: `--help` lists its
keys, and the same bad word, bad boolean or typo gets the same one-line answer and exit code."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

from specdec.eval.acceptance_data import OPTIONS as ACCEPTANCE_DATA_OPTIONS
from specdec.eval.cli import OPTIONS as EVAL_OPTIONS
from specdec.eval.judge_data import OPTIONS as JUDGE_DATA_OPTIONS
from specdec.eval.learn2pd_data import OPTIONS as LEARN2PD_DATA_OPTIONS
from specdec.models.cli_args import FALSE_WORDS, TRUE_WORDS, Option, Rule, UsageError, parse_bool, parse_options, run_cli
from specdec.runtime.cli import OPTIONS as GENERATE_OPTIONS
from specdec.train.cli import recipe_key_sections
from specdec.train.config import load_recipe, parse_overrides
from specdec.train.export import EXPORT_OPTIONS

SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


def entry_point(prog: str):
    """The function pyproject.toml installs as `prog`."""
    module, _, name = SCRIPTS[prog].partition(":")
    return getattr(importlib.import_module(module), name)


def recipe_keys() -> list[str]:
    return [key for _, rows in recipe_key_sections() for key, _, _ in rows]


CASES = {
    # prog: (its keys, a boolean key, a mistyped key and the key it should suggest)
    "specdec-train": (recipe_keys, "data.self_distill", "trainer.max_step", "trainer.max_steps"),
    "specdec-prepare": (recipe_keys, "data.self_distill", "trainer.max_step", "trainer.max_steps"),
    "specdec-export": (lambda: list(EXPORT_OPTIONS), "push", "fromat", "format"),
    "specdec-eval": (lambda: list(EVAL_OPTIONS), "baselines", "max_new_token", "max_new_tokens"),
    "specdec-generate": (lambda: list(GENERATE_OPTIONS), "chain", "max_new_token", "max_new_tokens"),
    "specdec-judge-data": (lambda: list(JUDGE_DATA_OPTIONS), "progress", "max_prompt", "max_prompts"),
    "specdec-acceptance-data": (lambda: list(ACCEPTANCE_DATA_OPTIONS), "progress", "max_prompt", "max_prompts"),
    "specdec-learn2pd-data": (lambda: list(LEARN2PD_DATA_OPTIONS), "progress", "max_prompt", "max_prompts"),
}


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch):
    """A usage error must stop every script before its work starts."""
    for name in ("specdec.train.pipeline.run", "specdec.train.pipeline.tokenized_data", "specdec.train.export.export_folder", "specdec.runtime.cli.load_draft", "specdec.eval.cli.load_draft", "specdec.eval.judge_data.load_draft", "specdec.eval.acceptance_data.load_draft", "specdec.eval.learn2pd_data.load_diffusion_target"):
        monkeypatch.setattr(name, lambda *a, **k: pytest.fail("the work started"))


def error_line(capsys, prog: str) -> str:
    """The single line on stderr, which must be `prog`'s error line."""
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    return err.rstrip("\n")


def test_the_table_covers_every_console_script():
    assert set(CASES) == set(SCRIPTS)


@pytest.mark.parametrize("prog", CASES)
@pytest.mark.parametrize("word", ["--help", "-h", "help"])
def test_help_lists_every_key_with_its_default(prog, word, capsys):
    keys = CASES[prog][0]()
    assert entry_point(prog)([word]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ")
    lines = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and "=" in line.split()[0]}
    assert all(any(line.startswith(f"{key}=") for line in lines) for key in keys)


@pytest.mark.parametrize(("prog", "shown"), [("specdec-eval", ["baselines=true", "bench=mt-bench", "max_new_tokens=256"]), ("specdec-train", ["trainer.max_steps=60", "data.multi_turn=false"])])
def test_help_writes_defaults_as_a_command_line_would(prog, shown, capsys):
    entry_point(prog)(["--help"])
    out = capsys.readouterr().out.split()
    assert all(item in out for item in shown)


@pytest.mark.parametrize("prog", CASES)
def test_the_same_bad_boolean_gets_the_same_answer(prog, capsys):
    key = CASES[prog][1]
    assert entry_point(prog)([f"{key}=maybe"]) == 2
    assert error_line(capsys, prog) == f"{prog}: error: `{key}` must be true or false (or yes/no, on/off, 1/0), got 'maybe'"


@pytest.mark.parametrize("prog", CASES)
def test_the_same_typo_gets_the_same_suggestion(prog, capsys):
    _, _, typo, meant = CASES[prog]
    assert entry_point(prog)([f"{typo}=3"]) == 2
    line = error_line(capsys, prog)
    assert line.startswith(f"{prog}: error: unknown key `{typo}` in the command line. Did you mean `{meant}`? "), line


@pytest.mark.parametrize("prog", CASES)
def test_a_bare_word_is_a_usage_error(prog, capsys):
    assert entry_point(prog)(["oops"]) == 2
    assert error_line(capsys, prog) == f"{prog}: error: expected key=value, got 'oops': every option is written key=value (--help lists the keys)"


@pytest.mark.parametrize("value", [*TRUE_WORDS, *FALSE_WORDS, "TRUE", "Off"])
def test_boolean_spellings(value):
    assert parse_bool("k", value) is (value.lower() in TRUE_WORDS)


@pytest.mark.parametrize(("word", "expected"), [("yes", True), ("0", False), ("off", False), ("ON", True)])
def test_recipe_booleans_take_the_shared_spellings(word, expected):
    cfg = load_recipe("medusa1", parse_overrides([f"data.self_distill={word}", f"medusa.share_lm_head={word}"]))
    assert cfg.data.self_distill is expected and cfg.medusa.share_lm_head is expected


def test_recipe_values_other_than_booleans_stay_for_omegaconf():
    assert parse_overrides(["trainer.max_steps=7", "data.max_samples=null", "output_dir=a=b"]) == {"trainer.max_steps": "7", "data.max_samples": "null", "output_dir": "a=b"}


SPEC = {"n": Option(int, 3, Rule("at least 1", lambda v: v >= 1), "a count"), "x": Option(float, 0.5), "flag": Option(bool, False), "name": Option(str, None)}


def test_parse_options_types_values_and_keeps_defaults():
    assert parse_options(["n=4", "flag=on", "name=a=b"], SPEC) == {"n": 4, "x": 0.5, "flag": True, "name": "a=b"}


@pytest.mark.parametrize(
    ("word", "message"),
    [("n=0", "n=0: must be at least 1"), ("n=two", "n=two: expected int"), ("x=inf", "x=inf: expected a finite number"), ("flag=maybe", "`flag` must be true or false"), ("=3", "expected key=value")],
)
def test_parse_options_refuses_bad_values(word, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_options([word], SPEC)


def _runner(run, failures=()):
    return run_cli("specdec-demo", ["n=1"], lambda: "usage: specdec-demo", lambda argv: parse_options(argv, SPEC), run, failures)


def _raise(exc):
    def run(options):
        raise exc

    return run


def test_runner_exit_codes(capsys):
    assert _runner(lambda options: 0 if options["n"] == 1 else 5) == 0
    assert _runner(_raise(UsageError("bad layout for this draft"))) == 2
    assert error_line(capsys, "specdec-demo") == "specdec-demo: error: bad layout for this draft"
    assert _runner(_raise(FileNotFoundError("no file X\n  second line")), (FileNotFoundError,)) == 1
    assert error_line(capsys, "specdec-demo") == "specdec-demo: error: no file X second line"


def test_runner_never_turns_an_internal_value_error_into_a_usage_error():
    with pytest.raises(ValueError, match="internal"):
        _runner(_raise(ValueError("internal")), (FileNotFoundError,))
    assert not issubclass(UsageError, ValueError)


def test_runner_help_runs_nothing(capsys):
    assert run_cli("specdec-demo", ["n=0", "--help"], lambda: "usage: specdec-demo", lambda argv: pytest.fail("parsed"), lambda o: pytest.fail("ran")) == 0
    assert capsys.readouterr().out == "usage: specdec-demo\n"
