"""Fit an acceptance head (learned draft length) on what `RecordingVerifier` recorded: the features of
every node a draft proposed and whether the target accepted it given its parent (greedy: the node is
the target's argmax at its parent; sampling: the soft label min(1, p/q)).

`fit_acceptance_head(records, settings)`:
1. rows are split into training and validation by verification step (a step's nodes never straddle the split);
2. the head (`specdec.models.acceptance_head`) is fitted full-batch with AdamW on binary cross-entropy
   with soft labels, as a Lightning run on the CPU (a few thousand rows, seconds);
3. the validation report compares it with the training-free estimate (the draft's own probability):
   BCE, ROC-AUC against the hard labels and the mean predicted vs observed acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from specdec.models.acceptance_head import FEATURES, AcceptanceHead, AcceptanceHeadConfig
from specdec.train.judge import FullBatch, quiet_lightning, roc_auc
from specdec.train.losses import NonFiniteLossError

LABELS = ("matched", "ratio")
"""Label columns of the records: the greedy match, or the sampling ratio min(1, p/q)."""


@dataclass
class AcceptanceSettings:
    """How an acceptance head is fitted."""

    label: str = "matched"
    """Which label to fit: `matched` (greedy decoding) or `ratio` (sampling)."""
    hidden: int = 32
    """Width of the head's two hidden layers."""
    threshold: float = 0.3
    """Serving default written into the head's config (draft_length threshold)."""
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


def fit_acceptance_head(records: dict[str, torch.Tensor], settings: AcceptanceSettings, draft: dict | None = None) -> tuple[AcceptanceHead, dict]:
    """(the fitted head, its validation report) from `records` {features [N, F], matched [N], ratio [N], step [N]}."""
    if settings.label not in LABELS:
        raise ValueError(f"label={settings.label!r}: choose one of {', '.join(LABELS)}")
    features, labels = records["features"].float(), records[settings.label].float()
    if features.shape[0] < 10 or features.shape[1] != len(FEATURES):
        raise ValueError(f"need at least 10 recorded nodes with {len(FEATURES)} features each (got {tuple(features.shape)}): record more proposals")
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
            enable_progress_bar=False, enable_model_summary=False,
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
