"""`specdec-train recipe=learn2pd data.oracle=DIR`: fit a Learn2PD filter (Bao et al., 2025) on the oracle
replay `specdec-learn2pd-data` recorded: per denoising step, the block's confidences in, one logit
per position out ("this masked position already holds its final token").

1. the steps are split into training and validation by prompt;
2. the filter (`specdec.models.learn2pd`) is fitted full-batch with AdamW (lr 3e-3, as the paper)
   on binary cross-entropy over the masked positions only, as a Lightning run on the CPU;
3. the validation report gives, at the serving threshold, the precision (the share of the filter's
   early unmasks that are right), the false-positive rate (wrong positions it unmasks, over all
   wrong ones), the recall and ROC-AUC, beside the confidence alone as a baseline.
Writes `<output_dir>/filter` and `<output_dir>/learn2pd_report.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from specdec.models.base import atomic_write
from specdec.models.cli_args import AT_LEAST_1
from specdec.models.learn2pd import Learn2PDConfig, Learn2PDFilter
from specdec.models.learn2pd_data import OracleDataError, read_oracle_data
from specdec.train.config import NON_NEGATIVE, POSITIVE, RecipeError, check_rules
from specdec.train.judge import FullBatch, quiet_lightning, roc_auc
from specdec.train.losses import NonFiniteLossError

METHOD = SECTION = "learn2pd"
"""This recipe's `method` and its own section."""
FILTER_DIR, REPORT_NAME = "filter", "learn2pd_report.json"
ERRORS = (OracleDataError,)
"""Failures of this job caused by its input, which the CLI reports in one line (exit code 1)."""


@dataclass
class Learn2PDDataSection:
    oracle: Optional[str] = None
    """Oracle folder that `specdec-learn2pd-data` wrote (its out=). Required."""
    val_fraction: float = 0.2
    """Share of the prompts (each with all its steps) held out for the report."""

    ranges: ClassVar[dict] = {"val_fraction": ("within (0, 1)", lambda v: 0 < v < 1)}


@dataclass
class Learn2PDSection:
    hidden: int = 64
    """Width of the filter's two hidden layers."""
    threshold: float = 0.96
    """Serving threshold written into the filter and used by the report (the paper's 0.96)."""
    steps: int = 500
    """Full-batch AdamW steps."""
    lr: float = 3e-3
    """AdamW learning rate (the paper's)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""

    ranges: ClassVar[dict] = {"hidden": AT_LEAST_1, "threshold": ("within (0, 1)", lambda v: 0 < v < 1), "steps": AT_LEAST_1, "lr": POSITIVE, "weight_decay": NON_NEGATIVE}


@dataclass
class Learn2PDRecipeConfig:
    method: str = METHOD
    """learn2pd: fit a Learn2PD filter on oracle data instead of a draft."""
    output_dir: str = "runs/learn2pd"
    """Where the resolved config, filter/ and learn2pd_report.json go."""
    seed: int = 0
    """Seed of the prompt split and of the filter's initialisation."""
    data: Learn2PDDataSection = field(default_factory=Learn2PDDataSection)
    """The oracle data and the validation split."""
    learn2pd: Learn2PDSection = field(default_factory=Learn2PDSection)
    """The filter, its fit and its serving threshold."""


RECIPE = Learn2PDRecipeConfig
"""This recipe's schema."""


def check_recipe(config: DictConfig) -> None:
    """Raise RecipeError for values out of range or a missing oracle folder."""
    ranges = {f"data.{k}": r for k, r in Learn2PDDataSection.ranges.items()} | {f"{SECTION}.{k}": r for k, r in Learn2PDSection.ranges.items()}
    check_rules(config, {}, ranges)
    if config.data.oracle is None:
        raise RecipeError("`data.oracle` is required: the folder `specdec-learn2pd-data` wrote (its out=DIR); record the oracle replay first")
    if not Path(config.data.oracle).is_dir():
        raise RecipeError(f"`data.oracle`: oracle folder {config.data.oracle} does not exist: run specdec-learn2pd-data first (out={config.data.oracle}), or fix the path")


def filter_loss(logits: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the masked positions only (decoded ones carry no label)."""
    weights = masked.float()
    return (F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none") * weights).sum() / weights.sum().clamp_min(1)


class Learn2PDModule(L.LightningModule):
    """Fits one `Learn2PDFilter` full-batch on `filter_loss`."""

    def __init__(self, model: Learn2PDFilter, settings):
        super().__init__()
        self.model, self.settings = model, settings
        self.last_loss = float("nan")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        confidences, labels, masked = batch
        loss = filter_loss(self.model(confidences), labels, masked)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the filter's loss is {loss.item()} at step {self.global_step}; nothing was written. Lower learn2pd.lr or record the oracle again.")
        self.last_loss = float(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay)


def split_by_prompt(prompt_index: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (train, val) over steps, holding out a seeded `val_fraction` of the prompts (at least one)."""
    prompts = prompt_index.unique()
    if len(prompts) < 2:
        raise OracleDataError(f"the oracle data covers {len(prompts)} prompt(s): record at least 2 (specdec-learn2pd-data max_prompts=) so some can be held out")
    order = prompts[torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))]
    held = order[: min(max(1, round(val_fraction * len(prompts))), len(prompts) - 1)]
    val = torch.isin(prompt_index, held)
    return ~val, val


def threshold_report(p: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict:
    """Precision, recall and false-positive rate of `p > threshold` over masked positions' 0/1 `labels`."""
    accepted, right = p > threshold, labels.bool()
    true_pos, false_pos = int((accepted & right).sum()), int((accepted & ~right).sum())
    return {
        "threshold": threshold,
        "accepted_share": float(accepted.float().mean()) if len(p) else None,
        "precision": true_pos / (true_pos + false_pos) if true_pos + false_pos else None,
        "recall": true_pos / int(right.sum()) if int(right.sum()) else None,
        "false_positive_rate": false_pos / int((~right).sum()) if int((~right).sum()) else None,
    }


def run_recipe(cfg: DictConfig, callbacks: list | tuple = ()) -> Path:
    """Run the Learn2PD recipe `cfg` (validated by `load_recipe`); returns the filter folder."""
    # Step 1: output folder with the resolved config; the oracle steps, split by prompt.
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda p: Path(p).write_text(OmegaConf.to_yaml(cfg)))
    rows, card = read_oracle_data(cfg.data.oracle)
    confidences, labels, masked = rows["confidences"].float(), rows["labels"].float(), rows["masked"].bool()
    train, val = split_by_prompt(rows["prompt_index"], cfg.data.val_fraction, cfg.seed)
    # Step 2: fit the filter full-batch.
    settings = cfg.learn2pd
    L.seed_everything(cfg.seed, verbose=False)
    model = Learn2PDFilter(Learn2PDConfig(block_length=confidences.shape[1], hidden=settings.hidden, threshold=settings.threshold, target=card.get("settings") or {}))
    module = Learn2PDModule(model, settings)
    loader = DataLoader(FullBatch((confidences[train], labels[train], masked[train]), settings.steps), batch_size=None)
    with quiet_lightning():
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=settings.steps, max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), default_root_dir=str(out))
        trainer.fit(module, train_dataloaders=loader)
    model.eval()
    # Step 3: the report on the held-out prompts' masked positions, beside the confidence alone.
    keep = masked[val]
    p_filter, p_conf, y = model.p_final(confidences[val])[keep], confidences[val][keep], labels[val][keep]
    both = bool(y.min() < 1 <= y.max()) if len(y) else False
    report = {
        "train_loss": module.last_loss,
        "val_steps": int(val.sum()),
        "val_positions": int(keep.sum()),
        "val_correct_share": float(y.mean()) if len(y) else None,
        "filter": threshold_report(p_filter, y, settings.threshold) | {"roc_auc": roc_auc(p_filter, y) if both else None},
        "confidence": threshold_report(p_conf, y, settings.threshold) | {"roc_auc": roc_auc(p_conf, y) if both else None},
        "oracle": card.get("counts"),
    }
    folder = model.save_pretrained(out / FILTER_DIR, extra={"metrics": report})
    atomic_write(out / REPORT_NAME, lambda p: Path(p).write_text(json.dumps(report, indent=2) + "\n"))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"Learn2PD filter written to {folder}: at threshold {settings.threshold} precision {fmt(report['filter']['precision'])}, "
          f"false-positive rate {fmt(report['filter']['false_positive_rate'])}, recall {fmt(report['filter']['recall'])} (confidence alone: precision {fmt(report['confidence']['precision'])})", flush=True)
    return folder
