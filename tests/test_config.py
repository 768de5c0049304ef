"""Recipe loading: bundled recipes resolve, bad keys and values fail early with a suggestion."""

import pytest
from omegaconf import OmegaConf

from specdec.train.cli import help_text, main
from specdec.train.config import RecipeConfig, _attribute_docstrings, RecipeError, available_recipes, field_docs, load_recipe, valid_keys

REQUIRED_KEYS = ["output_dir", "target.name_or_path", "trainer.max_steps", "data.max_samples", "data.max_new_tokens", "seed"]


@pytest.mark.parametrize("name", ["medusa1", "medusa2"])
def test_bundled_recipes_load_with_required_keys(name):
    assert name in available_recipes()
    cfg = load_recipe(name)
    assert cfg.method == name
    for key in REQUIRED_KEYS:
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING"


def test_overrides_are_typed_and_applied():
    cfg = load_recipe("medusa1", {"trainer.max_steps": "7", "data.max_samples": "null", "medusa.share_lm_head": "false"})
    assert cfg.trainer.max_steps == 7 and cfg.data.max_samples is None and cfg.medusa.share_lm_head is False


def test_mistyped_key_suggests_the_right_one():
    with pytest.raises(RecipeError, match="`trainer.max_steps`"):
        load_recipe("medusa1", {"trainer.max_step": "3"})
    with pytest.raises(RecipeError, match="unknown key `data.max_sample`.*data.max_samples"):
        load_recipe("medusa1", {"data.max_sample": "3"})


def test_unknown_key_inside_a_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("method: medusa1\nmedusa:\n  num_head: 3\n")
    with pytest.raises(RecipeError, match=r"medusa.num_head.*medusa.num_heads"):
        load_recipe(str(path))


def test_wrong_type_and_bad_choice_fail():
    with pytest.raises(RecipeError, match="trainer.max_steps"):
        load_recipe("medusa1", {"trainer.max_steps": "many"})
    with pytest.raises(RecipeError, match="optim.schedule"):
        load_recipe("medusa1", {"optim.schedule": "cos"})
    with pytest.raises(RecipeError, match="at least 1"):
        load_recipe("medusa1", {"medusa.num_heads": "0"})


def test_unknown_recipe_name_suggests_a_bundled_one():
    with pytest.raises(RecipeError, match="medusa1"):
        load_recipe("medusaa1")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe("/nonexistent/recipe.yaml")


def test_every_field_is_documented():
    undocumented = [key for key, _, doc in field_docs() if not doc.strip()]
    assert undocumented == []
    sections = _attribute_docstrings(RecipeConfig)
    assert set(sections) == set(RecipeConfig.__dataclass_fields__)
    assert {key for key, _, _ in field_docs()} <= set(valid_keys())


def test_cli_help_lists_keys_and_bad_key_exits_2(capsys):
    assert "trainer.max_steps" in help_text()
    assert main(["recipe=medusa1", "trainer.max_step=3"]) == 2
    assert "Did you mean `trainer.max_steps`" in capsys.readouterr().err
    assert main(["--help"]) == 0
