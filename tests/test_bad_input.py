"""Bad input to the CLIs ends in one `specdec-<cli>: error: ...` line: exit 2 for a bad command line
or recipe (before anything loads), 1 for an input that exists but fails (a damaged file, a target
that does not load). One test (or parameter) per row of the README's "Bad input" table."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from specdec.eval import cli as eval_cli
from specdec.models.base import CONFIG_NAME, WEIGHTS_NAME, DraftMismatchError, load_draft
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime import cli as generate_cli
from specdec.train import cli as train_cli
from conftest import build_tiny_llama

QUESTION = {"question_id": 1, "category": "writing", "turns": ["Say hello."]}


def error_line(capsys, prog: str) -> str:
    """The one error line `prog` printed (and proof that nothing else went wrong loudly)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def no_training(monkeypatch):
    """Fail the test if specdec-train gets past validation (usage errors must stop before any work)."""
    monkeypatch.setattr("specdec.train.pipeline.run", lambda *a, **k: pytest.fail("the job started"))


@pytest.fixture()
def draft_dir(tmp_path, tiny_target_dir):
    """Three Medusa heads for the tiny target, saved as specdec-train would."""
    heads = MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=320, num_heads=3))
    return heads.save_pretrained(tmp_path / "draft", extra={"method": "medusa1", "target": {"name_or_path": str(tiny_target_dir)}})


@pytest.fixture()
def bench_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps(QUESTION) + "\n")
    return path


def cli_args(prog: str, draft, bench, *extra: str) -> list[str]:
    """A command line of specdec-generate or specdec-eval that would run as it is."""
    common = [f"draft={draft}", "max_new_tokens=4", *extra]
    return [*common, "prompt=Say hello."] if prog == "specdec-generate" else [*common, f"bench={bench}", "baselines=false"]


CLIS = {"specdec-generate": generate_cli.main, "specdec-eval": eval_cli.main}


# specdec-train: recipes and their values ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trainer.max_step=3"], "unknown key `trainer.max_step` in the command line. Did you mean `trainer.max_steps`?"),
        (["trainer.max_steps=many"], "`trainer.max_steps`"),
        (["recipe=medusaa1"], "unknown recipe 'medusaa1'. Did you mean `medusa1`?"),
        (["optim.lr=-1"], "`optim.lr` is -1.0; it must be a finite number > 0"),
        (["optim.lr=0"], "`optim.lr` is 0.0; it must be a finite number > 0"),
        (["optim.lr=inf"], "`optim.lr` is inf; it must be a finite number > 0"),
        (["optim.lr=nan"], "`optim.lr` is nan; it must be a finite number > 0"),
        (["optim.weight_decay=-0.1"], "`optim.weight_decay` is -0.1; it must be a finite number >= 0"),
        (["optim.warmup_steps=-1"], "`optim.warmup_steps` is -1; it must be a finite number >= 0"),
        (["trainer.gradient_clip_val=0"], "`trainer.gradient_clip_val` is 0.0; it must be a finite number > 0"),
        (["data.temperature=-1"], "`data.temperature` is -1.0; it must be a finite number >= 0"),
        (["data.top_p=0"], "`data.top_p` is 0.0; it must be within (0, 1]"),
        (["data.top_p=1.5"], "`data.top_p` is 1.5; it must be within (0, 1]"),
        (["data.val_size=-1"], "`data.val_size` is -1; it must be a finite number >= 0"),
        (["recipe=eagle3", "eagle.ce_loss_weight=-1"], "`eagle.ce_loss_weight` is -1.0; it must be a finite number >= 0"),
        (["recipe=medusa2", "medusa2.lora_r=0"], "`medusa2.lora_r` is 0; it must be at least 1"),
        (["data.max_samples=8"], "`data.max_samples` (8) must be larger than `data.val_size` (16)"),
        (["data.source=missing.jsonl"], "`data.source`: data source 'missing.jsonl' is not a file"),
    ],
)
def test_train_refuses_bad_recipe_values_before_any_work(argv, message, capsys, no_training):
    assert train_cli.main(argv) == 2
    assert message in error_line(capsys, "specdec-train")


def test_train_recipe_with_a_yaml_syntax_error_names_file_and_line(tmp_path, capsys, no_training):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("method: medusa1\ntrainer:\n  max_steps: 5\n   val_every_n_steps: 2\n")
    assert train_cli.main([f"recipe={recipe}"]) == 2
    line = error_line(capsys, "specdec-train")
    assert f"recipe {recipe}:4:" in line and "is not valid YAML" in line


def test_train_data_file_with_an_unsupported_extension(tmp_path, capsys, no_training):
    data = tmp_path / "prompts.csv"
    data.write_text("prompt\nhello\n")
    assert train_cli.main([f"data.source={data}"]) == 2
    assert "unsupported data file extension '.csv'" in error_line(capsys, "specdec-train")


def _train_on(tmp_path, target, data, *extra: str) -> int:
    """specdec-train on the tiny target and `data`, small enough that only loading can fail."""
    return train_cli.main([
        f"target.name_or_path={target}", f"output_dir={tmp_path / 'run'}", f"data.source={data}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.max_samples=8", "data.val_size=2", "data.max_new_tokens=4", "data.max_length=64", "trainer.max_steps=1",
        "trainer.logger=none", "trainer.enable_progress_bar=false", *extra,
    ])  # fmt: skip


def test_train_empty_data_file_is_a_one_line_error(tmp_path, tiny_target_dir, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    assert _train_on(tmp_path, tiny_target_dir, data) == 1
    assert f"{data} holds no usable conversation" in error_line(capsys, "specdec-train")


def test_train_data_line_that_is_not_utf8_stops_with_its_line(tmp_path, tiny_target_dir, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(b'{"prompt": "ok"}\n' + '{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    assert _train_on(tmp_path, tiny_target_dir, data, "data.on_error=raise") == 1
    assert f"{data}:2: not UTF-8 text" in error_line(capsys, "specdec-train")


def test_train_target_folder_that_is_not_a_model(tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("weights are elsewhere")
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "hello"}) + "\n")
    assert _train_on(tmp_path, folder, data) == 1
    line = error_line(capsys, "specdec-train")
    assert f"target folder {folder} is not a Hugging Face model: it has no config.json" in line and "smollm2-135m" in line


# specdec-generate and specdec-eval: the same options, the same answers --------------------------


@pytest.mark.parametrize("prog", CLIS)
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("max_new_token=3", "unknown key `max_new_token` in the command line. Did you mean `max_new_tokens`?"),
        ("max_new_tokens=-5", "max_new_tokens=-5: must be at least 1"),
        ("temperature=-1", "temperature=-1: must be at least 0"),
        ("temperature=nan", "temperature=nan: expected a finite number"),
        ("threads=0", "threads=0: must be at least 1"),
        ("depth=0", "depth=0: must be at least 1"),
        ("max_new_tokens=many", "max_new_tokens=many: expected int"),
    ],
)
def test_generate_and_eval_reject_the_same_options_with_exit_2(prog, option, message, tmp_path, capsys):
    assert CLIS[prog]([f"draft={tmp_path}", "prompt=x", option] if prog == "specdec-generate" else [f"draft={tmp_path}", option]) == 2
    assert message in error_line(capsys, prog)


@pytest.mark.parametrize(("option", "message"), [("top_p=0", "top_p=0: must be within (0, 1]"), ("top_p=1.5", "top_p=1.5: must be within (0, 1]"), ("top_k=-1", "top_k=-1: must be at least 0")])
def test_generate_sampling_options_out_of_range(option, message, tmp_path, capsys):
    assert generate_cli.main([f"draft={tmp_path}", "prompt=x", option]) == 2
    assert message in error_line(capsys, "specdec-generate")


@pytest.mark.parametrize("prog", CLIS)
def test_a_folder_without_a_draft_is_a_usage_error(prog, tmp_path, bench_file, capsys):
    assert CLIS[prog](cli_args(prog, tmp_path / "nope", bench_file)) == 2
    assert "config.json is missing" in error_line(capsys, prog)


@pytest.mark.parametrize("prog", CLIS)
def test_a_chain_longer_than_the_heads_is_a_usage_error(prog, draft_dir, bench_file, capsys):
    option = "chain=true" if prog == "specdec-generate" else "tree=chain"
    assert CLIS[prog](cli_args(prog, draft_dir, bench_file, option, "tree_size=9")) == 2
    assert "tree_size=9 is deeper than the draft's 3 heads" in error_line(capsys, prog)


def _truncate(draft_dir):
    data = (draft_dir / WEIGHTS_NAME).read_bytes()
    (draft_dir / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])


def _set_config(draft_dir, **values):
    config = json.loads((draft_dir / CONFIG_NAME).read_text())
    (draft_dir / CONFIG_NAME).write_text(json.dumps({**config, **values}))


def _drop_a_head(draft_dir):
    tensors = load_file(draft_dir / WEIGHTS_NAME)
    save_file({k: v for k, v in tensors.items() if not k.startswith("blocks.2.")}, draft_dir / WEIGHTS_NAME)


DAMAGED_DRAFTS = {
    "missing weights": (lambda d: (d / WEIGHTS_NAME).unlink(), f"has no {WEIGHTS_NAME}: the folder is incomplete"),
    "truncated weights": (_truncate, f"{WEIGHTS_NAME} is damaged"),
    "config not JSON": (lambda d: (d / CONFIG_NAME).write_text("{draft_type: medusa"), "config.json is not valid JSON"),
    "unknown draft_type": (lambda d: _set_config(d, draft_type="medussa"), "unknown draft_type 'medussa' in"),
    "draft_type of other weights": (lambda d: _set_config(d, draft_type="eagle3"), "does not describe a draft of type 'eagle3': it lacks layer_ids, layer"),
    "weights of another config": (_drop_a_head, "do not fit its config.json (draft_type 'medusa'): missing blocks.2.0.linear.bias"),
}


@pytest.mark.parametrize("case", DAMAGED_DRAFTS)
def test_load_draft_names_what_is_wrong_with_the_folder(case, draft_dir):
    damage, message = DAMAGED_DRAFTS[case]
    damage(draft_dir)
    with pytest.raises((DraftMismatchError, FileNotFoundError)) as err:
        load_draft(draft_dir)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("prog", CLIS)
@pytest.mark.parametrize("case", DAMAGED_DRAFTS)
def test_generate_and_eval_report_a_damaged_draft_with_exit_1(prog, case, draft_dir, bench_file, capsys, monkeypatch):
    damage, message = DAMAGED_DRAFTS[case]
    damage(draft_dir)
    monkeypatch.setattr(f"specdec.{'runtime' if prog == 'specdec-generate' else 'eval'}.cli.load_target", lambda *a: pytest.fail("the target loaded"))
    assert CLIS[prog](cli_args(prog, draft_dir, bench_file)) == 1
    assert message in error_line(capsys, prog)


@pytest.fixture()
def wider_target_dir(tmp_path, tiny_tokenizer):
    """A tiny target of another size (hidden 64) than the draft's (hidden 32)."""
    path = tmp_path / "wider-target"
    build_tiny_llama(len(tiny_tokenizer), hidden_size=64).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("prog", CLIS)
def test_a_target_of_another_size_is_refused_with_exit_1(prog, draft_dir, bench_file, wider_target_dir, capsys):
    assert CLIS[prog](cli_args(prog, draft_dir, bench_file, f"target={wider_target_dir}")) == 1
    assert "was trained for another target: the target has hidden size 64 (draft expects 32)" in error_line(capsys, prog)


@pytest.mark.parametrize("prog", CLIS)
def test_a_target_folder_that_is_not_a_model_is_refused_with_exit_1(prog, draft_dir, bench_file, tmp_path, capsys):
    folder = tmp_path / "empty-target"
    folder.mkdir()
    assert CLIS[prog](cli_args(prog, draft_dir, bench_file, f"target={folder}")) == 1
    assert "is not a Hugging Face model: it has no config.json and no weights" in error_line(capsys, prog)


def test_eval_missing_bench_file_fails_before_draft_and_target_load(draft_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("specdec.eval.cli.load_draft", lambda *a: pytest.fail("the draft loaded"))
    assert eval_cli.main([f"draft={draft_dir}", f"bench={tmp_path / 'missing.jsonl'}"]) == 2
    line = error_line(capsys, "specdec-eval")
    assert f"question file {tmp_path / 'missing.jsonl'} does not exist" in line


def test_eval_bench_file_that_is_not_json_is_exit_1(draft_dir, tmp_path, capsys, monkeypatch):
    bench = tmp_path / "questions.jsonl"
    bench.write_text(json.dumps(QUESTION) + "\n{not json\n")
    monkeypatch.setattr("specdec.eval.cli.load_draft", lambda *a: pytest.fail("the draft loaded"))
    assert eval_cli.main([f"draft={draft_dir}", f"bench={bench}"]) == 1
    assert f"{bench}:2 is not valid JSON" in error_line(capsys, "specdec-eval")


def test_generate_still_runs_with_good_input(draft_dir, capsys):
    """The checks above refuse only what is wrong: the same command line with good values streams an answer."""
    assert generate_cli.main(cli_args("specdec-generate", draft_dir, None, "temperature=0.5", "top_p=0.9", "top_k=5", "threads=1")) == 0
    assert '"new_tokens"' in capsys.readouterr().err
