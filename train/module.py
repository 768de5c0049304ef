"""The one LightningModule of specdec: it trains any draft against the frozen target with the
losses its `TrainingMethod` supplies.

Thin by design: it gets the target's states for a batch (online: a target forward inside the
step; offline: the tensors `specdec-prepare` stored, carried by the batch), asks the method for
the loss, and does what every method shares: logging, validation accuracy per draft position
and expected acceptance, DDP label normalisation, the optimizer, and checkpoints that keep only
the trainable state (never the frozen target).
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch

from specdec.models.base import base_weight, lm_head_weight, target_states
from specdec.train.losses import check_finite
from specdec.train.methods import TrainingMethod
from specdec.train.steps import accuracy_metrics, check_trainable_state, keep_trainable_state, log_validation, optimizer_and_schedule, rank_accuracy


@contextlib.contextmanager
def full_parameter(weight: torch.Tensor):
    """The whole tensor of a parameter the losses read directly (the target lm_head): DeepSpeed
    ZeRO-3 partitions every parameter and gathers it only inside its module's forward, so the
    losses gather it for the step; any other strategy sees it whole already."""
    if not hasattr(weight, "ds_id"):
        yield weight
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight]):
        yield weight


class DraftModule(L.LightningModule):
    """Trains `draft` with `method`. Online: pass the frozen `target` model (a method may have
    wrapped it, e.g. with LoRA). Offline: pass the target's `embed_weight` and `lm_head_weight`
    only; batches then carry `final_hidden` (and `features` when the draft fuses other layers)."""

    def __init__(self, method: TrainingMethod, draft: torch.nn.Module, target: torch.nn.Module | None = None, embed_weight: torch.Tensor | None = None, lm_head_weight: torch.Tensor | None = None):
        super().__init__()
        self.method, self.cfg, self.draft, self.target = method, method.cfg, draft, target
        if target is None:
            self.register_buffer("embed_weight", embed_weight, persistent=False)
            self.register_buffer("lm_head_weight", lm_head_weight, persistent=False)
        self.strict_loading = False  # checkpoints hold trainable state only
        self._val: list[tuple] = []
        self.validated_at_step = -1  # global step of the last full validation pass

    # -- the target's tensors: from the live target (online) or the stored copies (offline) --
    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embedding [V, H], lm_head [V, H]) of the target."""
        if self.target is None:
            return self.embed_weight, self.lm_head_weight
        return self.target.get_input_embeddings().weight, lm_head_weight(self.target)

    def states(self, batch: dict, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(features the draft reads, the target's last hidden state) of a batch; `grad` keeps the
        graph through the target (a method that fine-tunes it)."""
        if self.target is None:
            final = batch["final_hidden"].float()
            return (final if self.draft.feature_layers is None else batch["features"].float()), final
        with contextlib.nullcontext() if grad else torch.no_grad():
            final, features = target_states(self.target, batch["input_ids"], self.draft.feature_layers, attention_mask=batch["attention_mask"])
        return features, final

    # -- training --
    def head_parameter(self) -> torch.Tensor:
        """The target lm_head's weight parameter, as DeepSpeed partitions it (not a merged copy a wrapper builds)."""
        return self.lm_head_weight if self.target is None else base_weight(self.target.get_output_embeddings())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with full_parameter(self.head_parameter()):
            loss, logs = self.method.training_loss(self, batch, self._global_label_counts(batch["loss_mask"]))
        check_finite(loss, self.global_step)
        self.log("train/loss", loss.detach(), prog_bar=True)
        for name, value in logs.items():
            self.log(name, value)
        return loss

    def _global_label_counts(self, loss_mask: torch.Tensor) -> torch.Tensor | None:
        """The method's label counts averaged over ranks, in one all-reduce (None on one process,
        where the losses use plain per-batch means). Dividing each rank's summed loss by them makes
        DDP's gradient average the gradient of the global batch's mean loss, whatever the ranks' token counts."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        counts = self.method.label_counts(loss_mask)
        return self.trainer.strategy.reduce(counts.to(self.device), reduce_op="mean").clamp(min=1)

    # -- validation: accuracy of each draft position, weighted by labelled positions --
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with full_parameter(self.head_parameter()):
            out = self.method.losses(self, batch, training=False)
        self._val.append((out.loss.detach().cpu(), out.rank_hits, out.count))

    def on_validation_epoch_end(self) -> None:
        self.validated_at_step = self.global_step
        log_validation(self, self.validation_metrics())

    def rank_accuracy(self) -> torch.Tensor:
        """[K, RANKS] share of validation labels found at each candidate rank of each draft position."""
        return rank_accuracy(self._val)

    def validation_metrics(self) -> dict[str, float]:
        """Metrics of the last validation pass: loss, per-position top-1 / top-k accuracy, expected acceptance."""
        metrics = accuracy_metrics(self._val, self.cfg.trainer.val_top_k)
        return {**metrics, **self.method.acceptance_metrics(self.rank_accuracy())} if metrics else metrics

    # -- optimisation and checkpoints (trainable state only) --
    def configure_optimizers(self):
        return optimizer_and_schedule(self.method.parameter_groups(self), self.cfg.optim, self.trainer.max_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep_trainable_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_trainable_state(self, checkpoint)
