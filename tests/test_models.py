"""Draft contract, registry and Medusa heads."""

import json
import os
import stat

import pytest
import torch

from specdec.models.base import DRAFT_REGISTRY, DraftMismatchError, load_draft
from specdec.models.medusa import MedusaConfig, MedusaHeads


def test_registry_maps_type_names_to_classes():
    assert DRAFT_REGISTRY["medusa"] is MedusaHeads


def test_resblocks_have_independent_weights_and_start_as_identity():
    heads = MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=11, num_heads=2, num_layers=3))
    blocks = [block for head in heads.blocks for block in head]
    assert len({id(b.linear.weight) for b in blocks}) == 6
    x = torch.randn(3, 8)
    assert torch.equal(heads.head_features(0, x), x)


@pytest.mark.parametrize("share", [True, False])
def test_save_load_round_trip_rebuilds_the_exact_module(tmp_path, share):
    torch.manual_seed(0)
    lm_head = torch.randn(11, 8)
    heads = MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=11, num_heads=3, num_layers=2, share_lm_head=share))
    heads.init_from_target(lm_head)
    for p in heads.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    heads.save_pretrained(tmp_path / "draft", extra={"method": "medusa1"})
    loaded = load_draft(tmp_path / "draft")
    assert isinstance(loaded, MedusaHeads) and loaded.config == heads.config
    hidden = torch.randn(2, 5, 8)
    assert torch.equal(loaded(hidden, lm_head), heads(hidden, lm_head))
    config = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert config["draft_type"] == "medusa" and config["method"] == "medusa1" and "specdec_version" in config


def test_shared_projection_is_not_stored_and_is_required():
    heads = MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=11, share_lm_head=True))
    assert not any("lm_head" in k for k in heads.state_dict())
    with pytest.raises(ValueError, match="lm_head_weight"):
        heads(torch.randn(1, 8))


def test_mismatched_target_is_refused_with_both_sizes():
    heads = MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=11))
    heads.check_target(8, 11)
    with pytest.raises(DraftMismatchError, match=r"hidden size 16 \(draft expects 8\)"):
        heads.check_target(16, 11)
    with pytest.raises(DraftMismatchError, match=r"vocabulary size 12 \(draft expects 11\)"):
        heads.check_target(8, 12)


def test_loading_a_missing_draft_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_draft(tmp_path)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_saved_draft_files_follow_the_umask(tmp_path, umask, mode):
    """Draft files are readable as the umask allows (mkstemp alone would make them private 0600)."""
    previous = os.umask(umask)
    try:
        MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=11)).save_pretrained(tmp_path / "draft")
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "draft").iterdir()} == {"config.json": mode, "model.safetensors": mode}
