"""recipe=judge: the judge head trained on mined labels (synthetic label shards), its metrics checked
against hand-computed cases and independent recomputation, the saved folder, the CLI and its errors."""

import itertools
import json
from pathlib import Path

import pytest
import torch

from specdec.models.judge import JudgeConfig, JudgeHead, load_judge, read_judge_config
from specdec.models.judge_data import read_judge_data, shard_path, write_shard
from specdec.train.cli import help_text, main
from specdec.train.config import RecipeError, available_recipes, field_docs, load_recipe
from specdec.train.judge import (
    JudgeModule,
    JudgeRecipeConfig,
    JudgeTrainingError,
    expected_calibration_error,
    recall_threshold,
    reliability_table,
    roc_auc,
    roc_curve,
    split_by_prompt,
    threshold_row,
    train_judge,
)
from specdec.train.losses import NonFiniteLossError

FAST_GRID = "[1e-3,1e-1,10.0]"


def write_labels(folder: Path, n_prompts: int = 40, per_prompt: int = 20, hidden: int = 16, noise: float = 0.3, random_labels: bool = False, seed: int = 0) -> Path:
    """Two shards of labels: important when the features' projection on a fixed direction (plus noise) is
    positive, or by a coin flip (`random_labels`); p_target is an independent draw (an uninformative baseline)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n_prompts * per_prompt, hidden, generator=g) * 3 + 1
    direction = torch.randn(hidden, generator=g)
    score = (features - 1) @ direction / direction.norm() / 3 + noise * torch.randn(len(features), generator=g)
    important = torch.rand(len(features), generator=g) < 0.5 if random_labels else score > 0
    p_target = torch.rand(len(features), generator=g)
    records = [
        {"prompt_index": i // per_prompt, "position": i % per_prompt, "draft_token": 5, "target_token": 7, "p_target": float(p_target[i]), "rule": "search", "checker": "math", "important": int(important[i])}
        for i in range(len(features))
    ]
    half = len(records) // 2
    write_shard(shard_path(folder, 0), features[:half], records[:half])
    write_shard(shard_path(folder, 1), features[half:], records[half:])
    (folder / "data_card.json").write_text(json.dumps({"settings": {"target": "synthetic", "target_id": "synthetic@0", "prompts_file": "/p.jsonl", "skip_prompts": 0}, "counts": {"prompts": 4}}))
    return folder


def recipe(labels: Path, out: Path, **overrides):
    return load_recipe("judge", {"data.labels": str(labels), "output_dir": str(out), "judge.l2_grid": FAST_GRID, **overrides})


def validation_rows(labels: Path, cfg):
    """The validation rows, recomputed from the shards and the split function (not from the report)."""
    data = read_judge_data(labels)
    _, val = split_by_prompt(data.prompt_index, cfg.data.val_fraction, cfg.seed)
    return data.features[val], data.important[val]


# -- metrics --


def test_roc_auc_on_a_hand_case_with_ties():
    # Pairs (important, unimportant): .4 > .1, .4 = .4 (half), .8 > .1, .8 > .4: 3.5 of 4.
    assert roc_auc(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.875)
    assert roc_auc(torch.full((4,), 0.3), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.5)
    assert roc_auc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([0, 0, 1])) == 0.0
    with pytest.raises(JudgeTrainingError, match="both classes"):
        roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_roc_auc_equals_the_pair_count_on_tied_random_scores():
    g = torch.Generator().manual_seed(3)
    scores, labels = torch.randint(0, 5, (60,), generator=g).float(), torch.randint(0, 2, (60,), generator=g)
    pairs = [(s, t) for (s, a), (t, b) in itertools.product(zip(scores.tolist(), labels.tolist()), repeat=2) if a == 1 and b == 0]
    expected = sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs)
    assert roc_auc(scores, labels) == pytest.approx(expected)
    # The plotted curve has the same area (trapezoids: a tie group is one diagonal step).
    fpr, tpr = roc_curve(scores, labels)
    assert sum((b - a) * (c + d) / 2 for a, b, c, d in zip(fpr, fpr[1:], tpr, tpr[1:])) == pytest.approx(expected)


def test_roc_curve_on_the_hand_case():
    assert roc_curve(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1])) == ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])


def test_expected_calibration_error_on_a_hand_case():
    p, labels = torch.tensor([0.05, 0.15, 0.15, 0.95]), torch.tensor([0, 1, 0, 1])
    table = reliability_table(p, labels)
    assert [row["count"] for row in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table[1]["mean_p"] == pytest.approx(0.15) and table[1]["observed"] == pytest.approx(0.5) and table[2]["mean_p"] is None
    # (1 * |.05 - 0| + 2 * |.15 - .5| + 1 * |.95 - 1|) / 4
    assert expected_calibration_error(p, labels) == pytest.approx(0.2)
    assert reliability_table(torch.tensor([1.0]), torch.tensor([1]))[-1]["count"] == 1


def test_threshold_rows_and_the_recall_threshold_on_a_hand_case():
    p, important = torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 0.9]), torch.tensor([0, 0, 1, 0, 1, 1])
    row = threshold_row(p, important, 0.5)  # accepted: .1 .2 .3; flagged: .6 .7 .9
    assert row["accepted_share"] == 0.5 and row["false_accept_rate"] == pytest.approx(1 / 3)
    assert row["unimportant_accepted"] == pytest.approx(2 / 3) and row["precision"] == pytest.approx(2 / 3) and row["recall"] == pytest.approx(2 / 3)
    assert threshold_row(p, important, 0.95)["precision"] is None
    # Important p: .9 .7 .3; recall >= 0.6 needs the top two rejected: threshold .7 (.9 and .7 have p >= .7).
    assert recall_threshold(p, important, 0.6) == pytest.approx(0.7)
    assert recall_threshold(p, important, 1.0) == pytest.approx(0.3)


# -- the split --


def test_the_split_keeps_each_prompt_on_one_side():
    prompt_index = torch.arange(25).repeat_interleave(torch.arange(25) % 4 + 1)
    train, val = split_by_prompt(prompt_index, 0.2, seed=1)
    train_prompts, val_prompts = set(prompt_index[train].tolist()), set(prompt_index[val].tolist())
    assert not train_prompts & val_prompts and train_prompts | val_prompts == set(range(25)) and len(val_prompts) == 5
    assert torch.equal(val, split_by_prompt(prompt_index, 0.2, seed=1)[1]) and not torch.equal(val, split_by_prompt(prompt_index, 0.2, seed=2)[1])
    with pytest.raises(JudgeTrainingError, match="mine more prompts"):
        split_by_prompt(torch.zeros(10, dtype=torch.long), 0.2, seed=0)


# -- training --


def test_separable_labels_give_a_high_auc_random_ones_about_half(tmp_path):
    good = train_judge(recipe(write_labels(tmp_path / "good"), tmp_path / "run_good")).report
    noise = train_judge(recipe(write_labels(tmp_path / "random", random_labels=True), tmp_path / "run_random")).report
    assert good["val_roc_auc"] > 0.95
    assert abs(noise["val_roc_auc"] - 0.5) < 0.1
    assert abs(good["baseline_auc"]["val_roc_auc"] - 0.5) < 0.15  # p_target was drawn independently of the labels
    assert good["counts"]["validation"]["prompts"] == 8 and good["counts"]["train"]["prompts"] == 32


def test_the_grid_keeps_the_best_auc_and_records_every_value(tmp_path):
    labels = write_labels(tmp_path / "labels", n_prompts=40, per_prompt=5, hidden=100, noise=1.0)
    cfg = recipe(labels, tmp_path / "run", **{"judge.l2_grid": "[1e-4,1e-2,1.0,10.0]"})
    result = train_judge(cfg)
    grid = result.report["l2_grid"]
    aucs = [row["val_roc_auc"] for row in grid]
    assert [row["l2"] for row in grid] == [1e-4, 1e-2, 1.0, 10.0] and len(set(aucs)) > 1
    assert result.report["chosen_l2"] == grid[aucs.index(max(aucs))]["l2"]
    # The saved head's AUC, recomputed on the split's validation rows, is the best recorded one.
    x_val, y_val = validation_rows(labels, cfg)
    assert roc_auc(load_judge(result.judge_dir).p_important(x_val), y_val) == pytest.approx(max(aucs))
    assert result.report["val_roc_auc"] == pytest.approx(max(aucs))


@pytest.mark.parametrize("mlp_hidden", [0, 8])
def test_the_saved_judge_reloads_with_identical_outputs_and_its_threshold(tmp_path, mlp_hidden):
    labels = write_labels(tmp_path / "labels")
    cfg = recipe(labels, tmp_path / "run", **{"judge.mlp_hidden": str(mlp_hidden), "judge.class_weight": "balanced"})
    result = train_judge(cfg)
    loaded = load_judge(result.judge_dir)
    x_val, y_val = validation_rows(labels, cfg)
    assert loaded.config.mlp_hidden == mlp_hidden and loaded.config.target == {"name_or_path": "synthetic", "target_id": "synthetic@0", "hidden_size": 16}
    labels_entry = read_judge_config(result.judge_dir)["labels"]
    assert labels_entry["settings"]["prompts_file"] == "/p.jsonl" and labels_entry["counts"]["prompts"] == 4 and labels_entry["folder"] == str(labels.resolve())
    assert torch.equal(loaded(x_val), result.head(x_val))
    # The serving default reaches the target recall on validation, and its row in the report is what it does there.
    recall = float((loaded.p_important(x_val)[y_val.bool()] >= loaded.config.threshold).double().mean())
    assert recall >= cfg.judge.target_recall
    assert threshold_row(loaded.p_important(x_val), y_val, loaded.config.threshold)["accepted_share"] == pytest.approx(result.report["threshold"]["accepted_share"])


def test_a_fixed_threshold_is_written_and_the_table_is_monotone(tmp_path):
    result = train_judge(recipe(write_labels(tmp_path / "labels"), tmp_path / "run", **{"judge.threshold": "0.3"}))
    assert load_judge(result.judge_dir).config.threshold == 0.3 and result.report["threshold"]["rule"] == "judge.threshold"
    table = result.report["thresholds"]
    assert len(table) == 38 and {row["from"] for row in table} >= {"fixed", "quantile 0.5"}
    shares = [row["accepted_share"] for row in table]
    assert shares == sorted(shares)
    median = next(row for row in table if row["from"] == "quantile 0.5")
    assert median["accepted_share"] == pytest.approx(0.5, abs=0.02)


def test_one_class_in_a_split_and_nan_features_are_clear_errors(tmp_path):
    labels = write_labels(tmp_path / "labels", n_prompts=5)
    data = read_judge_data(labels)
    records = [r | {"important": 0} for r in data.records]
    write_shard(shard_path(tmp_path / "one", 0), data.features, records)
    with pytest.raises(JudgeTrainingError, match="only unimportant labels.*mine more prompts with specdec-judge-data"):
        train_judge(recipe(tmp_path / "one", tmp_path / "run"))
    features = data.features.clone()
    features[3, 2] = float("nan")
    write_shard(shard_path(tmp_path / "nan", 0), features, data.records)
    with pytest.raises(ValueError, match="1 of 100 label rows .* NaN"):
        train_judge(recipe(tmp_path / "nan", tmp_path / "run"))


def test_a_nan_loss_stops_the_step():
    head = JudgeHead(JudgeConfig(feature_size=3))
    module = JudgeModule(head, 0.1, 1.0)
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        module.training_step((torch.tensor([[float("nan"), 0.0, 1.0]]), torch.tensor([1]), torch.ones(1)), 0)


# -- recipe and CLI --


def test_the_recipe_is_bundled_and_every_key_documented_in_help(tmp_path):
    assert "judge" in available_recipes()
    cfg = load_recipe("judge", {"data.labels": str(tmp_path)})
    assert cfg.method == "judge" and list(cfg.judge.l2_grid) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0] and cfg.data.val_fraction == 0.2
    rows = field_docs(JudgeRecipeConfig)
    assert [key for key, _, doc in rows if not doc.strip()] == []
    text = help_text()
    assert all(f"{key}=" in text for key, _, _ in rows) and "judge.l2_grid=[0.0001, 0.001, 0.01, 0.1, 1.0]" in text


def test_the_cli_trains_and_writes_the_judge_report_and_plot(tmp_path, capsys):
    labels, out = write_labels(tmp_path / "labels"), tmp_path / "run"
    assert main(["recipe=judge", f"data.labels={labels}", f"output_dir={out}", f"judge.l2_grid={FAST_GRID}"]) == 0
    assert "judge written to" in capsys.readouterr().out
    config = json.loads((out / "judge" / "config.json").read_text())
    report = json.loads((out / "judge_report.json").read_text())
    assert config["draft_type"] == "judge" and config["lossy"] is True and config["metrics"] == report
    assert report["val_roc_auc"] > 0.95 and len(report["reliability"]) == 10 and report["lossy"] is True
    assert "LOSSY" in (out / "judge" / "README.md").read_text()
    assert (out / "judge_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_recipe(str(out / "config.yaml")).data.labels == str(labels)


def test_mistyped_and_misplaced_keys_get_a_suggestion(tmp_path, capsys):
    assert main(["recipe=judge", f"data.labels={tmp_path}", "judge.l2_gird=[1]"]) == 2
    assert "unknown key `judge.l2_gird` in the command line. Did you mean `judge.l2_grid`?" in capsys.readouterr().err
    with pytest.raises(RecipeError, match="Did you mean `data.labels`"):
        load_recipe("judge", {"data.label": str(tmp_path)})
    with pytest.raises(RecipeError, match="unknown key `trainer.max_steps`.*Did you mean `judge.max_steps`"):
        load_recipe("judge", {"trainer.max_steps": "3"})
    with pytest.raises(RecipeError, match="`judge.mlp_hidden` in the command line belongs to method judge, but this recipe trains medusa1"):
        load_recipe("medusa1", {"judge.mlp_hidden": "4"})
    with pytest.raises(RecipeError, match="judge.class_weight.*none, balanced"):
        load_recipe("judge", {"data.labels": str(tmp_path), "judge.class_weight": "balance"})


@pytest.mark.parametrize("words", [[], ["data.labels=/nonexistent/labels"]])
def test_missing_labels_name_specdec_judge_data(words, capsys):
    assert main(["recipe=judge", *words]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "data.labels" in err and "specdec-judge-data" in err


def test_a_single_class_run_fails_in_one_line(tmp_path, capsys):
    folder = tmp_path / "labels"
    write_shard(shard_path(folder, 0), torch.randn(40, 4), [{"prompt_index": i // 4, "important": 1} for i in range(40)])
    assert main(["recipe=judge", f"data.labels={folder}", f"output_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "only important labels" in err and "mine more prompts" in err
