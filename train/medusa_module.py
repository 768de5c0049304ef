"""LightningModule for Medusa-1 (frozen target) and Medusa-2 (joint LoRA) training.

Thin by design: it fetches hidden states from the target and calls the pure functions in
`specdec.train.losses`. Checkpoints keep only trainable state (heads, LoRA), never the target.
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from omegaconf import DictConfig

from specdec.models.base import final_hidden_states, lm_head_weight
from specdec.models.medusa import MedusaHeads
from specdec.train.losses import check_finite, head_label_counts, heads_ramp, kl_to_original, medusa_head_losses
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


class MedusaModule(L.LightningModule):
    """Trains `heads` on a frozen `target`; with method=medusa2, `target` carries peft LoRA adapters."""

    def __init__(self, target: torch.nn.Module, heads: MedusaHeads, cfg: DictConfig):
        super().__init__()
        self.target = target
        self.heads = heads
        self.cfg = cfg
        self.joint = cfg.method == "medusa2"
        self.strict_loading = False  # checkpoints hold trainable state only
        self._val = []
        self.validated_at_step = -1  # global step of the last full validation pass

    # -- hidden states (the seam where a cached-feature source would plug in) --
    def hidden_states(self, batch: dict, grad: bool = False) -> torch.Tensor:
        with contextlib.nullcontext() if grad else torch.no_grad():
            return final_hidden_states(self.target, batch["input_ids"], batch["attention_mask"])

    def in_joint_stage(self) -> bool:
        return self.joint and self.global_step >= self.cfg.medusa2.heads_only_steps

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with full_parameter(lm_head_weight(self.target)) as weight:
            return self._training_step(batch, weight)

    def _training_step(self, batch: dict, weight: torch.Tensor) -> torch.Tensor:
        head_counts, kl_count = self._global_label_counts(batch["loss_mask"])
        if self.in_joint_stage():
            # Medusa-2 joint stage: KL to the original model (adapters off) + ramped heads term.
            with torch.no_grad(), self.target.disable_adapter():
                original = self.hidden_states(batch)
            hidden = self.hidden_states(batch, grad=True)
            heads = self._head_losses(hidden, batch, weight, head_counts)
            base = kl_to_original(original, hidden, batch["loss_mask"], weight, kl_count)
            joint_steps = self.trainer.max_steps - self.cfg.medusa2.heads_only_steps
            ramp = heads_ramp(self.global_step - self.cfg.medusa2.heads_only_steps, joint_steps, self.cfg.medusa2.ramp)
            loss = base + self.cfg.medusa2.heads_coefficient * ramp * heads.loss
            self.log("train/base_kl", base.detach())
        else:
            heads = self._head_losses(self.hidden_states(batch), batch, weight, head_counts)
            loss = heads.loss
        check_finite(loss, self.global_step)
        self.log("train/loss", loss.detach(), prog_bar=True)
        for k, value in enumerate(heads.per_head.detach()):
            self.log(f"train/head{k + 1}_loss", value)
        return loss

    def _global_label_counts(self, loss_mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """([K] per-head, scalar next-token) label counts averaged over ranks, in one all-reduce;
        (None, None) on one process, where the losses use plain per-batch means.

        Dividing each rank's summed loss by them makes DDP's gradient average equal the gradient of
        the global batch's mean loss, whatever the ranks' token counts."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None, None
        counts = torch.cat([head_label_counts(loss_mask, self.heads.config.num_heads), loss_mask[:, 1:].sum().float()[None]])
        mean = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="mean").clamp(min=1)
        return mean[:-1], mean[-1]

    def _head_losses(self, hidden, batch, weight, denominators=None):
        return medusa_head_losses(
            self.heads,
            hidden,
            batch["input_ids"],
            batch["loss_mask"],
            weight,
            decay=self.cfg.medusa.loss_decay,
            soft_label_weight=self.cfg.medusa.soft_label_weight,
            with_accuracy=not self.training,
            denominators=denominators,
        )

    # -- validation: per-head top-1 / top-k accuracy, weighted by labelled positions --
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with full_parameter(lm_head_weight(self.target)) as weight:
            out = self._head_losses(self.hidden_states(batch), batch, weight)
        self._val.append((out.loss.detach().cpu(), out.rank_hits, out.count))

    def on_validation_epoch_end(self) -> None:
        self.validated_at_step = self.global_step
        log_validation(self, self.validation_metrics())

    def rank_accuracy(self) -> torch.Tensor:
        """[K, RANKS] share of validation labels found at each candidate rank of each head."""
        return rank_accuracy(self._val)

    def validation_metrics(self) -> dict[str, float]:
        """Metrics of the last validation pass: loss and per-head top-1/top-k accuracy."""
        return accuracy_metrics(self._val, self.cfg.medusa.top_k)

    # -- optimisation --
    def configure_optimizers(self):
        groups = [{"params": [p for p in self.heads.parameters() if p.requires_grad], "lr": self.cfg.optim.lr * self._heads_lr_scale()}]
        lora = [p for n, p in self.target.named_parameters() if p.requires_grad]
        if lora:
            groups.append({"params": lora, "lr": self.cfg.optim.lr})
        return optimizer_and_schedule(groups, self.cfg.optim, self.trainer.max_steps)

    def _heads_lr_scale(self) -> float:
        return self.cfg.medusa2.heads_lr_multiplier if self.joint else 1.0

    # -- checkpoints: trainable state only --
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep_trainable_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_trainable_state(self, checkpoint)
