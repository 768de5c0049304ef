"""The training-method registry: per-method recipe sections, expected acceptance, and validation
figures checked against an independent computation."""

import json

import pytest
import torch

from specdec.models.acceptance import best_tree, chain_accept_length
from specdec.models.base import load_draft
from specdec.models.target import load_target
from specdec.train.config import RecipeError, load_recipe
from specdec.train.methods import METHODS, method_class
from specdec.train.pipeline import prepare_data, run
from test_train import prompts_file, tiny_overrides  # noqa: F401 (prompts_file is a fixture)


def test_every_bundled_method_is_registered_with_its_draft_type():
    assert {name: cls.draft_type for name, cls in METHODS.items()} == {
        "medusa1": "medusa", "medusa2": "medusa", "eagle1": "eagle1", "eagle3": "eagle3", "chimera": "chimera", "sdsat": "sdsat",
    }
    with pytest.raises(ValueError, match="Did you mean `eagle3`"):
        method_class("eagel3")


def test_a_recipe_shows_and_accepts_only_its_methods_sections():
    assert set(load_recipe("eagle3")) >= {"eagle", "eagle3"} and "medusa" not in load_recipe("eagle3")
    assert "eagle3" not in load_recipe("eagle1") and "medusa2" not in load_recipe("medusa1")
    with pytest.raises(RecipeError, match=r"`eagle3.draft_vocab_size` in the command line belongs to method eagle3, but this recipe trains eagle1"):
        load_recipe("eagle1", {"eagle3.draft_vocab_size": "96"})
    with pytest.raises(RecipeError, match="belongs to method medusa1 / medusa2"):
        load_recipe("eagle3", {"medusa.num_heads": "2"})
    with pytest.raises(RecipeError, match="Did you mean `eagle3`"):
        load_recipe("medusa1", {"method": "eagel3"})
    # The command line's method decides the schema, so its sections can be set in the same call
    # (medusa1.yaml's `medusa` section is Medusa-2's too); a recipe section the new method lacks is named.
    assert load_recipe("medusa1", {"method": "medusa2", "medusa2.lora_r": "8"}).medusa2.lora_r == 8
    with pytest.raises(RecipeError, match=r"`eagle1.draft_vocab_size` in recipe .*eagle1.yaml belongs to method eagle1, but this recipe trains eagle3: drop it or set method=eagle1"):
        load_recipe("eagle1", {"method": "eagle3"})


def test_expected_accept_length_on_hand_made_accuracies():
    accuracy = [[0.5, 0.2], [0.4, 0.1]]
    assert chain_accept_length(accuracy) == pytest.approx(0.5 + 0.5 * 0.4)
    assert chain_accept_length(accuracy, depth=1) == pytest.approx(0.5)
    # Nodes: (0) .5, (1) .2, (0,0) .2, (0,1) .05, (1,0) .08; the tie .2 / .2 goes to the lower ranks.
    paths, expected = best_tree(accuracy, 3)
    assert paths == [(0,), (0, 0), (1,)] and expected == pytest.approx(0.9)
    assert best_tree(accuracy, 5)[1] == pytest.approx(0.5 + 0.2 + 0.2 + 0.08 + 0.05)


def _head1_top1(draft, target_dir, cfg) -> float:
    """Head 1's top-1 accuracy on the run's held-out conversations, recomputed from Hugging Face's
    own forward: head 1 at position t predicts token t+2, scored where that is an assistant token."""
    target = load_target(str(target_dir))
    _, val_rows = prepare_data(cfg, target)
    hits = total = 0
    with torch.no_grad():
        for ids, mask in zip(val_rows["input_ids"], val_rows["loss_mask"]):
            ids, mask = torch.tensor([ids]), torch.tensor(mask)
            hidden = target.model(ids, output_hidden_states=True).hidden_states[-1][0]
            top = draft.project(0, draft.head_features(0, hidden), target.model.lm_head.weight).argmax(-1)
            scored = mask[2:].bool()
            hits += int((top[:-2][scored] == ids[0, 2:][scored]).sum())
            total += int(scored.sum())
    return hits / total


def test_validation_figures_match_an_independent_computation_and_the_best_checkpoint_is_kept(tmp_path, tiny_target_dir, prompts_file):
    overrides = tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.checkpoint_monitor": "val/expected_accept_length", "trainer.val_tree_size": 4, "optim.lr": 0.01})
    cfg = load_recipe("medusa1", overrides)
    result = run(cfg)
    config = json.loads((result.draft_dir / "config.json").read_text())
    metrics, ranks = config["metrics"], config["head_rank_accuracy"]
    # Step 1: head-1 top-1 is what an independent forward measures on the held-out rows.
    assert metrics["val/head1_top1"] == pytest.approx(_head1_top1(load_draft(result.draft_dir), tiny_target_dir, cfg), abs=1e-6)
    # Step 2: expected acceptance follows from the measured per-rank accuracies.
    assert metrics["val/expected_accept_length"] == pytest.approx(chain_accept_length(ranks), abs=1e-4)
    assert metrics["val/expected_accept_length_tree4"] == pytest.approx(best_tree(ranks, 4)[1], abs=1e-4)
    assert metrics["val/expected_accept_length_tree4"] >= metrics["val/expected_accept_length"] - 1e-6  # the 4-head chain is one of the 4-node trees
    # Step 3: the monitored checkpoint is kept beside last.ckpt and holds a validated step.
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] in (3, 6) and all(k.startswith("draft.") for k in best["state_dict"])


def test_feature_drafters_report_a_chain_expectation_only(tmp_path, tiny_target_dir, prompts_file):
    result = run(load_recipe("eagle1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"optim.lr": 0.003})))
    metrics = json.loads((result.draft_dir / "config.json").read_text())["metrics"]
    ranks = load_draft(result.draft_dir).config.head_rank_accuracy
    assert len(ranks) == 4 and metrics["val/expected_accept_length"] == pytest.approx(chain_accept_length(ranks), abs=1e-4)
    assert not any(name.startswith("val/expected_accept_length_tree") for name in metrics)


def test_val_source_replaces_the_held_out_split_and_is_checked_before_work(tmp_path, tiny_target_dir, prompts_file):
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer number {i} is here"}]}) + "\n" for i in range(3)))
    cfg = load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"data.val_source": str(val), "data.val_size": 0}))
    train_rows, val_rows = prepare_data(cfg, load_target(str(tiny_target_dir)))
    # Every one of the 24 source conversations trains; validation is the file, as written (not self-distilled).
    assert len(train_rows) == 24 and len(val_rows) == 3
    assert "answer number 2 is here" in load_target(str(tiny_target_dir)).tokenizer.decode(val_rows["input_ids"][2])
    assert 0.0 <= run(cfg).metrics["val/head1_top1"] <= 1.0
    with pytest.raises(RecipeError, match="set data.val_size=0"):
        load_recipe("medusa1", {"data.val_source": str(val)})
    with pytest.raises(RecipeError, match="`data.val_source`.*missing.jsonl"):
        load_recipe("medusa1", {"data.val_source": str(tmp_path / "missing.jsonl"), "data.val_size": "0"})
    with pytest.raises(RecipeError, match="online training only"):
        load_recipe("eagle3", {"data.val_source": str(val), "data.val_size": "0", "data.features": "offline"})
