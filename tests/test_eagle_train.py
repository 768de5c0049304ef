"""Training the feature drafters on a tiny target: online = offline, specdec-prepare's guards and
resumption, EAGLE-3's draft vocabulary, resume after a kill, exports and consolidation."""

import csv
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from specdec.data import features as features_module
from specdec.data.features import FeatureStoreError
from specdec.models.base import load_draft
from specdec.models.vocab import build_draft_vocab
from specdec.runtime.generator import SpeculativeGenerator, choose_layout, plain_generate
from specdec.train.cli import main as train_main
from specdec.train.config import load_recipe
from specdec.train.module import DraftModule
from specdec.train.pipeline import export_checkpoint, run
from specdec.train.prepare import main as prepare_main
from test_train import prompts_file, tiny_overrides  # noqa: F401  (prompts_file is a fixture)

METHODS = ("eagle1", "eagle3", "chimera")


def overrides(tmp_path, target_dir, prompts, method="eagle3", **extra):
    """The tiny run's overrides for `method` (only EAGLE-3 has an `eagle3` section)."""
    base = {
        **({"eagle3.draft_vocab_size": 96} if method == "eagle3" else {}),
        "trainer.log_every_n_steps": 1,
        "data.features_dtype": "float32",
        "data.features_dir": str(tmp_path / "features"),
        "optim.lr": "0.003",
    }
    return tiny_overrides(tmp_path, target_dir, prompts, **{**base, **extra})


def _args(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def _loss_curve(run_dir) -> list[float]:
    rows = list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("method", METHODS)
def test_online_and_offline_training_give_the_same_loss_curve(tmp_path, tiny_target_dir, prompts_file, method):
    values = overrides(tmp_path, tiny_target_dir, prompts_file, method)
    online = run(load_recipe(method, values))
    assert prepare_main([f"recipe={method}", *_args(values)]) == 0
    offline_values = {**values, "data.features": "offline", "output_dir": str(tmp_path / "offline")}
    offline = run(load_recipe(method, offline_values))
    curve = _loss_curve(tmp_path / "run")
    assert len(curve) == 6 and curve[-1] < curve[0]
    assert _loss_curve(tmp_path / "offline") == pytest.approx(curve, rel=1e-4)
    assert offline.metrics["val/loss"] == pytest.approx(online.metrics["val/loss"], rel=1e-4)
    a, b = load_file(online.draft_dir / "model.safetensors"), load_file(offline.draft_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_offline_training_does_not_load_the_target(tmp_path, tiny_target_dir, prompts_file, monkeypatch):
    values = overrides(tmp_path, tiny_target_dir, prompts_file)
    assert prepare_main(["recipe=eagle3", *_args(values)]) == 0
    import specdec.train.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("offline training loaded the target")

    monkeypatch.setattr(pipeline, "load_target", refuse)
    result = run(load_recipe("eagle3", {**values, "data.features": "offline"}))
    config = json.loads((result.draft_dir / "config.json").read_text())
    assert config["draft_type"] == "eagle3" and config["training"]["features"] == "offline"
    assert config["target"]["name_or_path"] == str(tiny_target_dir) and config["target"]["vocab_size"] == 320


def test_prepare_prints_the_size_and_refuses_to_fill_the_disk(tmp_path, tiny_target_dir, prompts_file, monkeypatch, capsys):
    values = overrides(tmp_path, tiny_target_dir, prompts_file)
    real = features_module.shutil.disk_usage
    monkeypatch.setattr(features_module.shutil, "disk_usage", lambda path: real(path)._replace(free=10_000))
    assert prepare_main(["recipe=eagle3", *_args(values)]) == 1
    out = capsys.readouterr()
    assert "MB" in out.out or "GB" in out.out
    assert "refusing to write" in out.err and "larger disk" in out.err
    assert not list((tmp_path / "features").glob("shard-*"))


def test_prepare_resumes_at_the_missing_shard(tmp_path, tiny_target_dir, prompts_file):
    values = overrides(tmp_path, tiny_target_dir, prompts_file, **{"data.features_shard_size": 8})
    assert prepare_main(["recipe=eagle3", *_args(values)]) == 0
    shards = sorted((tmp_path / "features").glob("shard-*.safetensors"))
    assert len(shards) == 3  # 24 conversations, 8 per shard
    before = {p.name: (p.stat().st_mtime_ns, load_file(p)) for p in shards}
    shards[1].unlink()
    assert prepare_main(["recipe=eagle3", *_args(values)]) == 0
    after = sorted((tmp_path / "features").glob("shard-*.safetensors"))
    assert [p.name for p in after] == [p.name for p in shards]
    assert after[0].stat().st_mtime_ns == before[after[0].name][0]  # untouched
    rebuilt = load_file(after[1])
    assert all(torch.equal(rebuilt[k], before[after[1].name][1][k]) for k in rebuilt)


def test_offline_without_features_or_with_other_data_is_a_clear_error(tmp_path, tiny_target_dir, prompts_file, capsys):
    values = overrides(tmp_path, tiny_target_dir, prompts_file, **{"data.features": "offline"})
    assert train_main(["recipe=eagle3", *_args(values)]) == 1
    assert "run `specdec-prepare`" in capsys.readouterr().err
    assert prepare_main(["recipe=eagle3", *_args(values)]) == 0
    other = {**values, "data.max_length": 96}
    assert train_main(["recipe=eagle3", *_args(other)]) == 1
    assert "other data settings (max_length)" in capsys.readouterr().err


def test_offline_features_are_only_for_feature_drafters():
    from specdec.train.config import RecipeError

    with pytest.raises(RecipeError, match="data.features=offline"):
        load_recipe("medusa2", {"data.features": "offline"})  # Medusa-2 fine-tunes the target (Medusa-1 trains offline)


def test_draft_vocabulary_is_the_most_frequent_tokens_and_warns_on_low_coverage():
    counts = torch.tensor([5, 0, 9, 1, 7, 0, 3])
    ids, coverage = build_draft_vocab(counts, 3, min_coverage=0.5)
    assert ids.tolist() == [0, 2, 4] and coverage == pytest.approx(21 / 25)
    with pytest.warns(UserWarning, match="covers only 84.0%"):
        build_draft_vocab(counts, 3, min_coverage=0.9)


def test_eagle3_draft_maps_its_vocabulary_to_the_training_tokens(tmp_path, tiny_target_dir, prompts_file):
    result = run(load_recipe("eagle3", overrides(tmp_path, tiny_target_dir, prompts_file, **{"eagle3.draft_vocab_size": 16})))
    draft = load_draft(result.draft_dir)
    ids = draft.draft_ids()
    assert len(ids) == 16 and torch.equal(ids, ids.sort().values) and int(draft.t2d.sum()) == 16
    assert torch.equal(torch.nonzero(draft.t2d).flatten(), ids)
    assert len(draft.config.head_rank_accuracy) == 4  # eagle.val_steps positions measured


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path, tiny_target_dir, prompts_file, monkeypatch):
    full = run(load_recipe("eagle3", overrides(tmp_path / "full", tiny_target_dir, prompts_file)))
    original = DraftModule.training_step

    def dying_step(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("simulated kill")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DraftModule, "training_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(load_recipe("eagle3", overrides(tmp_path / "killed", tiny_target_dir, prompts_file)))
    monkeypatch.setattr(DraftModule, "training_step", original)
    resumed = run(load_recipe("eagle3", overrides(tmp_path / "killed", tiny_target_dir, prompts_file, resume="last")))
    a, b = load_file(full.draft_dir / "model.safetensors"), load_file(resumed.draft_dir / "model.safetensors")
    assert a.keys() == b.keys() and {"d2t", "t2d"} <= set(a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    # The checkpoint alone (with its vocabulary maps) consolidates into the same draft.
    consolidated = export_checkpoint(tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt", tmp_path / "from_ckpt")
    c = load_file(consolidated / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method", METHODS)
def test_trained_draft_decodes_losslessly_and_exports(tmp_path, tiny_target_dir, prompts_file, tiny_llama, method):
    from specdec.train.export import export_main

    result = run(load_recipe(method, overrides(tmp_path, tiny_target_dir, prompts_file, method)))
    draft = load_draft(result.draft_dir)
    generator = SpeculativeGenerator.from_draft(tiny_llama, draft, choose_layout(draft, "default", size=6, depth=3, top_k=2))  # EAGLE: a 6-node dynamic tree; Chimera: the best 6-node tree
    prompt = torch.tensor([[1, 40, 41, 42, 43]])
    out = generator.generate(prompt, 20)
    assert out.tokens == plain_generate(tiny_llama, prompt, 20).tokens
    fmt = {"eagle1": "eagle", "eagle3": "specdec", "chimera": "specdec"}[method]  # engines need >= 4 target layers for EAGLE-3 (tests/test_eagle_formats.py)
    assert export_main([f"draft={result.draft_dir}", f"format={fmt}", f"out={tmp_path / 'export'}"]) == 0
    assert (tmp_path / "export" / "config.json").is_file() and os.listdir(tmp_path / "export")


def test_one_eagle3_store_serves_the_drafters_that_read_only_the_last_hidden_state(tmp_path, tiny_target_dir, prompts_file):
    values = overrides(tmp_path, tiny_target_dir, prompts_file)
    assert prepare_main(["recipe=eagle3", *_args(values)]) == 0
    values = overrides(tmp_path, tiny_target_dir, prompts_file, "eagle1")
    online = run(load_recipe("eagle1", {**values, "output_dir": str(tmp_path / "online")}))
    offline = run(load_recipe("eagle1", {**values, "data.features": "offline", "output_dir": str(tmp_path / "offline")}))
    assert _loss_curve(tmp_path / "offline") == pytest.approx(_loss_curve(tmp_path / "online"), rel=1e-4)
    assert offline.metrics["val/loss"] == pytest.approx(online.metrics["val/loss"], rel=1e-4)
