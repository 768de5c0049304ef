"""The training side of every method, in one registry: a recipe's `method` names a
`TrainingMethod` subclass, which says which draft type it trains, which recipe sections it reads,
how to build the draft and what its loss is. The shared pipeline and the one LightningModule
(`specdec.train.module.DraftModule`) call these hooks and never branch on the method.

A method is a module `train/<anything>_method.py` with a registered subclass:

    @register_method
    class MyMethod(TrainingMethod):
        name, draft_type = "mine", "mine"
        sections = {"mine": MySection}
        def build_draft(self, record, lm_head, train_rows=None): ...
        def losses(self, module, batch, training, denominators=None): ...

Importing `specdec.train.methods` imports every such module, so nothing lists the methods by hand.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from specdec.data.batching import label_token_counts
from specdec.models.acceptance import best_tree, chain_accept_length
from specdec.models.vocab import build_draft_vocab

METHODS: dict[str, type["TrainingMethod"]] = {}
"""Recipe `method` name -> its TrainingMethod class (filled by `register_method`)."""


class TrainingMethod:
    """What one recipe `method` contributes; `cfg` is the validated recipe."""

    name: ClassVar[str]
    """The recipe's `method` value."""
    draft_type: ClassVar[str]
    """The `DraftModel.draft_type` it trains (the one place the two names are tied)."""
    sections: ClassVar[dict[str, type]] = {}
    """Recipe sections (name -> dataclass) this method reads; only the active method's are validated and shown."""
    reads_target_features: ClassVar[bool] = False
    """True when the draft reads only stored target features, so it can train offline from `specdec-prepare`."""
    static_tree: ClassVar[bool] = False
    """True when the runtime verifies a static tree built from the measured per-rank accuracies (Medusa-style)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    @classmethod
    def check_recipe(cls, config: DictConfig) -> None:
        """Raise RecipeError for a combination of this method's keys that cannot work (ranges and
        choices of single keys are declared on the section dataclasses instead)."""

        # -- the draft and the target --
    def feature_layer_ids(self, num_layers: int) -> list[int] | None:
        """Target hidden states the draft reads besides the last one (None: only the last)."""
        return None

    def prepare_target(self, model: torch.nn.Module) -> torch.nn.Module:
        """The target as training sees it (a method that fine-tunes it wraps it here)."""
        return model

    def build_draft(self, record: dict, lm_head: torch.Tensor, train_rows=None):
        """A fresh draft for the target described by `record` (see `target_record`); `train_rows`
        are the tokenized training conversations (None when rebuilding a draft to load a checkpoint into)."""
        raise NotImplementedError

    # -- the loss --
    def num_positions(self, training: bool) -> int:
        """Draft positions the loss (training) or validation (accuracy) covers."""
        raise NotImplementedError

    def label_counts(self, loss_mask: torch.Tensor) -> torch.Tensor:
        """Labelled positions per loss term in a batch; under DDP their mean over ranks divides each
        rank's summed loss, so the averaged gradient is the global batch's (see `losses`)."""
        from specdec.train.losses import head_label_counts

        return head_label_counts(loss_mask, self.num_positions(training=True))

    def losses(self, module, batch: dict, training: bool, denominators: torch.Tensor | None = None):
        """`HeadLosses` of a batch: `module` (the DraftModule) gives the target's states and weights."""
        raise NotImplementedError

    def training_loss(self, module, batch: dict, denominators: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to minimise, extra values to log) of a training batch; default: the weighted head losses."""
        out = self.losses(module, batch, training=True, denominators=denominators)
        return out.loss, {f"train/head{k + 1}_loss": v for k, v in enumerate(out.per_head.detach())}

    def parameter_groups(self, module) -> list[dict]:
        """Optimizer parameter groups (default: every trainable draft parameter at optim.lr)."""
        return [{"params": [p for p in module.draft.parameters() if p.requires_grad], "lr": self.cfg.optim.lr}]

    def staged(self) -> bool:
        """True when some trainable parameters get no gradient for a while (DDP must look for unused ones)."""
        return False

    # -- validation and export --
    def acceptance_metrics(self, rank_accuracy: torch.Tensor) -> dict[str, float]:
        """Expected accepted draft tokens per step under the measured accuracies: a chain over every
        validated position, and for static-tree methods the best tree of trainer.val_tree_size nodes."""
        rows = rank_accuracy.tolist()
        metrics = {"val/expected_accept_length": chain_accept_length(rows)}
        if self.static_tree:
            metrics[f"val/expected_accept_length_tree{self.cfg.trainer.val_tree_size}"] = best_tree(rows, self.cfg.trainer.val_tree_size)[1]
        return metrics

    def export_extras(self, target, out: Path) -> dict[str, Any]:
        """Write what the draft needs beside its own weights into `out` (e.g. a fine-tuned target);
        returns fields for the `target` record of config.json."""
        return {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: make `cls` the method named `cls.name`."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"training method {cls.name!r} is registered twice ({METHODS[cls.name].__module__} and {cls.__module__})")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[TrainingMethod]:
    """The registered method `name`; a ValueError naming the closest and every registered method otherwise."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def section_owners() -> dict[str, list[str]]:
    """Recipe section name -> the methods that read it."""
    owners: dict[str, list[str]] = {}
    for name, cls in sorted(METHODS.items()):
        for section in cls.sections:
            owners.setdefault(section, []).append(name)
    return owners


def reduced_vocab_size(size: int | None, vocab_size: int) -> int | None:
    """The V_draft a recipe's `draft_vocab_size` asks for: None (the full vocabulary) for 0, null or at least `vocab_size`."""
    return size if size and size < vocab_size else None


def install_draft_vocab(draft, train_rows, min_coverage: float, setting: str, lm_head: torch.Tensor) -> None:
    """Give `draft` (built with a reduced vocabulary) the most frequent labels of `train_rows` as its vocabulary."""
    vocab_ids, coverage = build_draft_vocab(label_token_counts(train_rows, draft.full_vocab_size), draft.num_draft_tokens, min_coverage, setting)
    draft.set_vocab(vocab_ids, lm_head)
    rank_zero_only(print)(f"draft vocabulary: {len(vocab_ids)} tokens cover {coverage:.1%} of the training labels")


def install_vocab(draft, lm_head: torch.Tensor, train_rows, setting: str) -> None:
    """Start a fresh head-type draft's projection from the target lm_head; a reduced vocabulary is first chosen
    from `train_rows`' labels (without rows, when rebuilding a draft for a checkpoint, the checkpoint holds it)."""
    if draft.reduced_vocab and train_rows is not None:
        install_draft_vocab(draft, train_rows, 0.9, setting, lm_head)
    else:
        draft.init_from_target(lm_head)


def _discover() -> None:
    """Import every `*_method` module of this package (each registers its methods)."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.endswith("_method"):
            importlib.import_module(f"{__package__}.{info.name}")


_discover()
