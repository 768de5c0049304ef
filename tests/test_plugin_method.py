"""A whole new method as a plug-in, registered from this module and nowhere else: a draft type
(models), its training method with a recipe section (train), its proposer (runtime); trained for
2 steps from a recipe file, decoded losslessly, exported. No shared file knows its name."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from specdec.models import base
from specdec.models.base import DraftModel, load_draft, register_draft
from specdec.runtime import proposers
from specdec.runtime.generator import SpeculativeGenerator, choose_layout, plain_generate
from specdec.runtime.proposers import Committed, Proposal, StaticTreeProposer, register_proposer
from specdec.train import methods
from specdec.train.config import RecipeError, load_recipe
from specdec.train.export import export_main
from specdec.train.losses import RANKS, HeadLosses, head_targets
from specdec.train.methods import TrainingMethod, register_method
from specdec.train.pipeline import run
from test_train import prompts_file, tiny_overrides  # noqa: F401 (prompts_file is a fixture)

NAME = "skipgram"


@dataclass
class SkipgramConfig:
    hidden_size: int
    """Hidden size H of the target."""
    vocab_size: int
    """Vocabulary size V of the target."""
    num_heads: int = 1
    """Draft positions: one (the token after the target's next one)."""
    head_rank_accuracy: list | None = None
    """Measured per-rank accuracy of the head (builds the default tree)."""


class SkipgramDraft(DraftModel):
    """h_t -> W_lm (h_t + Linear(h_t)) predicts token t+2: one Medusa-like head without a ResBlock stack."""

    draft_type = NAME
    config_class = SkipgramConfig

    def __init__(self, config: SkipgramConfig):
        super().__init__(config)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def logits(self, hidden: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
        return (hidden + self.proj(hidden)) @ lm_head.T


@dataclass
class SkipgramSection:
    label_smoothing: float = 0.0
    """Label smoothing of the head's cross-entropy."""


class SkipgramMethod(TrainingMethod):
    name, draft_type = NAME, NAME
    sections = {NAME: SkipgramSection}

    def build_draft(self, record, lm_head, train_rows=None):
        return SkipgramDraft(SkipgramConfig(record["hidden_size"], record["vocab_size"]))

    def num_positions(self, training: bool) -> int:
        return 1

    def losses(self, module, batch, training, denominators=None):
        _, final = module.states(batch)
        select, labels = head_targets(batch["input_ids"], batch["loss_mask"], 2)
        logits = module.draft.logits(final[select], module.weights()[1]).float()
        loss = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=self.cfg.skipgram.label_smoothing) / (denominators[0] if denominators is not None else max(labels.numel(), 1))
        hits = (logits.topk(RANKS, -1).indices == labels[:, None]).sum(0).float()[None] if not training else None
        return HeadLosses(loss, loss[None], hits, torch.tensor([float(labels.numel())]))


class SkipgramProposer(StaticTreeProposer):
    name = NAME

    def __init__(self, draft, lm_head, tree):
        super().__init__(draft, tree, lm_head.device)
        self.lm_head = lm_head

    @classmethod
    def build(cls, target, draft, options):
        return cls(draft, target.lm_head.weight, options)

    @torch.no_grad()
    def propose(self, committed: Committed) -> Proposal:
        return self._proposal([self.draft.logits(committed.hidden[-1], self.lm_head).topk(k).indices for k in self._needed])


@pytest.fixture()
def plugged(monkeypatch):
    """The method registered in each layer for one test, the registries restored afterwards."""
    monkeypatch.setattr(base, "DRAFT_REGISTRY", dict(base.DRAFT_REGISTRY))
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    monkeypatch.setattr(proposers, "PROPOSERS", dict(proposers.PROPOSERS))
    register_draft(SkipgramDraft)
    register_method(SkipgramMethod)
    register_proposer(NAME)(SkipgramProposer)


def _recipe(tmp_path, target_dir, prompts_file):
    """A recipe file for the new method: the shared sections of the tiny run plus its own."""
    tree: dict = {"method": NAME, NAME: {"label_smoothing": 0.0}}
    for key, value in tiny_overrides(tmp_path, target_dir, prompts_file, **{"trainer.max_steps": 2, "trainer.val_every_n_steps": 2, "trainer.checkpoint_every_n_steps": 2, "optim.lr": 0.05, "optim.warmup_steps": 0}).items():
        section, _, leaf = key.partition(".")
        if leaf:
            tree.setdefault(section, {})[leaf] = yaml.safe_load(str(value))
        else:
            tree[section] = str(value)
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_method_registered_from_a_test_module_trains_decodes_losslessly_and_exports(plugged, tmp_path, tiny_target_dir, tiny_llama, prompts_file):
    # Step 1: the recipe validates against the new method's section (and only it).
    recipe = _recipe(tmp_path, tiny_target_dir, prompts_file)
    cfg = load_recipe(str(recipe))
    assert cfg.method == NAME and cfg.skipgram.label_smoothing == 0.0 and "medusa" not in cfg
    with pytest.raises(RecipeError, match="unknown key `skipgram.label_smoothin`"):
        load_recipe(str(recipe), {"skipgram.label_smoothin": "0.1"})
    # Step 2: 2 training steps through the shared pipeline and DraftModule; the draft moves and is measured.
    result = run(cfg)
    draft = load_draft(result.draft_dir)
    assert isinstance(draft, SkipgramDraft) and draft.proj.weight.abs().sum() > 0
    config = json.loads((result.draft_dir / "config.json").read_text())
    assert config["method"] == NAME and "val/expected_accept_length" in config["metrics"] and len(config["head_rank_accuracy"]) == 1
    # Step 3: the runtime finds its proposer; greedy speculative decoding equals plain greedy.
    prompt = torch.tensor([[1, 40, 41, 42, 43]])
    generator = SpeculativeGenerator.from_draft(tiny_llama, draft, choose_layout(draft, "default", size=3))
    assert generator.generate(prompt, 24).tokens == plain_generate(tiny_llama, prompt, 24).tokens
    # Step 4: the specdec layout exports every registered draft type, and reads back.
    assert export_main([f"draft={result.draft_dir}", "format=specdec", f"out={tmp_path / 'export'}"]) == 0
    again = load_draft(tmp_path / "export")
    assert torch.equal(again.proj.weight, draft.proj.weight)
