"""`specdec-train recipe=acceptance data.records=DIR`: fit an acceptance head (learned draft length) on
what `specdec-acceptance-data` recorded: the features of every node a draft proposed and whether the
target accepted it given its parent (greedy: the node is the target's argmax at its parent;
sampling: the soft label min(1, p/q)). The head is not a draft, so the recipe has its own schema
(`AcceptanceRecipeConfig`) and job (`train_acceptance`), which writes `<output_dir>/head` (served
with specdec-generate / specdec-eval `acceptance_head=DIR`) and `<output_dir>/acceptance_report.json`.

`fit_acceptance_head(records, settings)`:
1. rows are split into training and validation by verification step (a step's nodes never straddle the split);
2. the head (`specdec.models.acceptance_head`) is fitted full-batch with AdamW on binary cross-entropy
   with soft labels, as a Lightning run on the CPU (a few thousand rows, seconds);
3. the validation report compares it with the training-free estimate (the draft's own probability):
   BCE, ROC-AUC against the hard labels and the mean predicted vs observed acceptance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from specdec.models.acceptance_data import AcceptanceDataError, load_records
from specdec.models.acceptance_head import FEATURES, AcceptanceHead, AcceptanceHeadConfig
from specdec.models.base import atomic_write
from specdec.models.cli_args import AT_LEAST_1
from specdec.train.config import POSITIVE, NON_NEGATIVE, RecipeError, check_rules
from specdec.train.judge import FullBatch, quiet_lightning, roc_auc
from specdec.train.losses import NonFiniteLossError

METHOD = "acceptance"
"""The `method` of this recipe."""
SECTION = "acceptance"
"""The recipe's own section (beside data)."""
HEAD_DIR, REPORT_NAME = "head", "acceptance_report.json"
"""What the job writes into output_dir."""
LABELS = ("matched", "ratio")
"""Label columns of the records: the greedy match, or the sampling ratio min(1, p/q)."""
ERRORS = (AcceptanceDataError,)
"""Failures of this job caused by its input, which the CLI reports in one line (exit code 1)."""


@dataclass
class AcceptanceSettings:
    """How an acceptance head is fitted."""

    label: str = "auto"
    """Which label to fit: `matched` (greedy decoding), `ratio` (sampling), or auto: the one the records were decoded for."""
    hidden: int = 32
    """Width of the head's two hidden layers."""
    threshold: float = 0.1
    """Serving default written into the head's config (the draft_length threshold on a node's path acceptance); 0.1 is a starting point (whether it pays depends on the verify cost: `specdec-eval tree=tuned` times it against verifying every node)."""
    steps: int = 400
    """Full-batch AdamW steps."""
    lr: float = 3e-3
    """AdamW learning rate (Learn2PD's filter uses 3e-3)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    val_fraction: float = 0.2
    """Share of verification steps held out for the report."""
    seed: int = 0
    """Seed of the split and the head's initialisation."""

    ranges: ClassVar[dict] = {
        "hidden": AT_LEAST_1, "threshold": ("within [0, 1]", lambda v: 0 <= v <= 1), "steps": AT_LEAST_1, "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE, "val_fraction": ("within (0, 1)", lambda v: 0 < v < 1),
    }
    choices: ClassVar[dict] = {"label": ("auto", *LABELS)}


@dataclass
class AcceptanceDataSection:
    records: Optional[str] = None
    """Records folder that `specdec-acceptance-data` wrote (its out=). Required."""


@dataclass
class AcceptanceRecipeConfig:
    method: str = METHOD
    """acceptance: fit an acceptance head (learned draft length) on recorded proposals instead of a draft."""
    output_dir: str = "runs/acceptance"
    """Where the resolved config, head/ (the acceptance head) and acceptance_report.json go."""
    data: AcceptanceDataSection = field(default_factory=AcceptanceDataSection)
    """The recorded proposals."""
    acceptance: AcceptanceSettings = field(default_factory=AcceptanceSettings)
    """The head, its fit and its serving threshold."""


RECIPE = AcceptanceRecipeConfig
"""This recipe's schema."""


def check_recipe(config: DictConfig) -> None:
    """Raise RecipeError for an acceptance recipe that cannot run: values out of range, no records folder."""
    prefixed = {kind: {f"{SECTION}.{key}": rule for key, rule in getattr(AcceptanceSettings, kind).items()} for kind in ("choices", "ranges")}
    check_rules(config, prefixed["choices"], prefixed["ranges"])
    records = config.data.records
    if records is None:
        raise RecipeError("`data.records` is required: the folder `specdec-acceptance-data` wrote (its out=DIR); record the draft's proposals first")
    if not Path(records).is_dir():
        raise RecipeError(f"`data.records`: records folder {records} does not exist: run specdec-acceptance-data first (out={records}), or fix the path")


def run_recipe(cfg: DictConfig, callbacks: list | tuple = ()) -> Path:
    """Run the acceptance recipe `cfg` (validated by `load_recipe`); returns the head folder."""
    # Step 1: output folder with the resolved config; the records.
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda p: Path(p).write_text(OmegaConf.to_yaml(cfg)))
    records, card = load_records(cfg.data.records)
    settings = AcceptanceSettings(**OmegaConf.to_container(cfg.acceptance))
    if settings.label == "auto":
        settings = replace(settings, label=card.get("label", "matched"))
    # Step 2: fit, then the head folder (its report in config.json) and the report.
    head, report = fit_acceptance_head(records, settings, draft=card.get("draft") or {}, callbacks=callbacks)
    report |= {"label": settings.label, "rows": int(records["features"].shape[0]), "records": str(Path(cfg.data.records).resolve()), "proposer": card.get("proposer")}
    head_dir = head.save_pretrained(out / HEAD_DIR, extra={"metrics": report, "target": {"name_or_path": card.get("target"), "target_id": card.get("target_id")}})
    atomic_write(out / REPORT_NAME, lambda p: Path(p).write_text(json.dumps(report, indent=2) + "\n"))
    print(
        f"acceptance head written to {head_dir}: validation AUC {fmt(report['val_auc_head'])} (draft probability {fmt(report['val_auc_draft_prob'])}), "
        f"BCE {fmt(report['val_bce_head'])} ({fmt(report['val_bce_draft_prob'])}); serve it with draft_length={settings.threshold} acceptance_head={head_dir}",
        flush=True,
    )
    return head_dir


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def acceptance_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the head's logits against soft labels in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, labels.float())


class AcceptanceModule(L.LightningModule):
    """Fits one `AcceptanceHead` full-batch on `acceptance_loss`."""

    def __init__(self, head: AcceptanceHead, settings: AcceptanceSettings):
        super().__init__()
        self.head, self.settings = head, settings
        self.last_loss = float("nan")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        features, labels = batch
        loss = acceptance_loss(self.head(features), labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the acceptance head's loss is {loss.item()} at step {self.global_step}; nothing was written. Lower lr or record the proposals again.")
        self.last_loss = float(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.head.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay)


def split_by_step(steps: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (train, val) over rows, holding out a seeded `val_fraction` of the distinct `steps`."""
    distinct = steps.unique()
    order = distinct[torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))]
    held = order[: max(1, round(val_fraction * len(distinct)))]
    val = torch.isin(steps, held)
    return ~val, val


def fit_acceptance_head(records: dict[str, torch.Tensor], settings: AcceptanceSettings, draft: dict | None = None, callbacks: list | tuple = ()) -> tuple[AcceptanceHead, dict]:
    """(the fitted head, its validation report) from `records` {features [N, F], matched [N], ratio [N], step [N]};
    label auto fits `matched`. `callbacks` join the Lightning Trainer."""
    if settings.label == "auto":
        settings = replace(settings, label="matched")
    if settings.label not in LABELS:
        raise ValueError(f"label={settings.label!r}: choose one of {', '.join(LABELS)}")
    features, labels = records["features"].float(), records[settings.label].float()
    if features.shape[0] < 10 or features.shape[1] != len(FEATURES):
        raise AcceptanceDataError(f"need at least 10 recorded nodes with {len(FEATURES)} features each (got {tuple(features.shape)}): record more proposals (specdec-acceptance-data max_prompts=)")
    # Step 1: split by verification step.
    train, val = split_by_step(records["step"], settings.val_fraction, settings.seed)
    # Step 2: fit the head full-batch.
    L.seed_everything(settings.seed, verbose=False)
    head = AcceptanceHead(AcceptanceHeadConfig(hidden=settings.hidden, threshold=settings.threshold, draft=draft or {}))
    head.set_standardisation(features[train])
    module = AcceptanceModule(head, settings)
    loader = DataLoader(FullBatch((features[train], labels[train]), settings.steps), batch_size=None)
    with quiet_lightning():
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=settings.steps, max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
        )
        trainer.fit(module, train_dataloaders=loader)
    head.eval()
    # Step 3: the report on the held-out steps, beside the draft's own probability.
    return head, validation_report(head, features[val], labels[val], records["matched"][val], module.last_loss)


def validation_report(head: AcceptanceHead, features: torch.Tensor, labels: torch.Tensor, matched: torch.Tensor, train_loss: float) -> dict:
    """BCE, ROC-AUC (against `matched`) and mean predicted acceptance of the head and of the draft probability, with the observed mean."""
    estimates = {"head": head.acceptance(features), "draft_prob": features[:, FEATURES.index("log_draft_prob")].exp().clamp(1e-6, 1 - 1e-6)}
    both = bool(matched.min() < 1 <= matched.max()) if len(matched) else False
    report = {"train_rows_loss": train_loss, "val_rows": len(labels), "val_observed_acceptance": float(labels.mean()) if len(labels) else None}
    for name, p in estimates.items():
        report[f"val_bce_{name}"] = float(F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), labels)) if len(labels) else None
        report[f"val_auc_{name}"] = roc_auc(p, matched) if both else None
        report[f"val_mean_{name}"] = float(p.mean()) if len(labels) else None
    return report
