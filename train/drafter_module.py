"""LightningModule for the feature-level drafters (EAGLE-1, EAGLE-3, Chimera) on a frozen target.

Thin by design: it gets the target's states for a batch, online (a target forward inside the
step) or offline (tensors `specdec-prepare` stored, carried by the batch), and calls the pure
losses in `specdec.train.losses`. Checkpoints keep only the drafter's trainable tensors.
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from specdec.models.base import target_states
from specdec.train.losses import chimera_losses, check_finite, eagle_losses, head_label_counts
from specdec.train.steps import accuracy_metrics, check_trainable_state, keep_trainable_state, log_validation, optimizer_and_schedule, rank_accuracy


class DrafterModule(L.LightningModule):
    """Trains `draft` (method eagle1, eagle3 or chimera).

    Online: pass the frozen `target` model. Offline: pass the target's `embed_weight` and
    `lm_head_weight` only; batches then carry `features` and `final_hidden`.
    """

    def __init__(self, draft: torch.nn.Module, cfg: DictConfig, target: torch.nn.Module | None = None, embed_weight: torch.Tensor | None = None, lm_head_weight: torch.Tensor | None = None):
        super().__init__()
        self.draft, self.cfg, self.target = draft, cfg, target
        if target is None:
            self.register_buffer("embed_weight", embed_weight, persistent=False)
            self.register_buffer("lm_head_weight", lm_head_weight, persistent=False)
        self.strict_loading = False  # checkpoints hold trainable state only
        self._val: list[tuple] = []
        self.validated_at_step = -1

    # -- the target's tensors: from the live target (online) or the stored copies (offline) --
    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embedding [V, H], lm_head [V, H]) of the target."""
        if self.target is None:
            return self.embed_weight, self.lm_head_weight
        return self.target.get_input_embeddings().weight, self.target.get_output_embeddings().weight

    def states(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(features the drafter reads, the target's last hidden state) of a batch."""
        if self.target is None:
            final = batch["final_hidden"].float()
            return (final if self.draft.feature_layers is None else batch["features"].float()), final
        with torch.no_grad():
            final, features = target_states(self.target, batch["input_ids"], self.draft.feature_layers, attention_mask=batch["attention_mask"])
        return features, final

    def num_positions(self, training: bool) -> int:
        if self.cfg.method == "chimera":
            return self.cfg.chimera.num_heads
        return self.cfg.eagle.ttt_steps if training else self.cfg.eagle.val_steps

    def losses(self, batch: dict, training: bool, denominators: torch.Tensor | None = None):
        features, final = self.states(batch)
        embed, lm_head = self.weights()
        if self.cfg.method == "chimera":
            return chimera_losses(
                self.draft, final, batch["input_ids"], batch["loss_mask"], embed, lm_head,
                decay=self.cfg.chimera.head_decay, with_accuracy=not training, denominators=denominators,
            )
        e = self.cfg.eagle
        noise = None
        if training and e.feature_noise > 0:
            noise = (torch.rand_like(features) * 2 - 1) * e.feature_noise
        return eagle_losses(
            self.draft, features, final, batch["input_ids"], batch["loss_mask"], embed, lm_head,
            steps=self.num_positions(training), decay=e.step_decay, feature_weight=e.feature_loss_weight,
            ce_weight=e.ce_loss_weight, noise=noise, with_accuracy=not training, denominators=denominators,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch, training=True, denominators=self._global_label_counts(batch["loss_mask"]))
        check_finite(out.loss, self.global_step)
        self.log("train/loss", out.loss.detach(), prog_bar=True)
        for k, value in enumerate(out.per_head.detach()):
            self.log(f"train/head{k + 1}_loss", value)
        return out.loss

    def _global_label_counts(self, loss_mask: torch.Tensor) -> torch.Tensor | None:
        """Per-position label counts averaged over ranks (None on one process): see MedusaModule."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        counts = head_label_counts(loss_mask, self.num_positions(training=True))
        return self.trainer.strategy.reduce(counts.to(self.device), reduce_op="mean").clamp(min=1)

    # -- validation: accuracy of each draft position, weighted by labelled positions --
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.losses(batch, training=False)
        self._val.append((out.loss.detach().cpu(), out.rank_hits, out.count))

    def on_validation_epoch_end(self) -> None:
        self.validated_at_step = self.global_step
        log_validation(self, self.validation_metrics())

    def rank_accuracy(self) -> torch.Tensor:
        return rank_accuracy(self._val)

    def validation_metrics(self) -> dict[str, float]:
        return accuracy_metrics(self._val, self.cfg.medusa.top_k)

    # -- optimisation and checkpoints --
    def configure_optimizers(self):
        groups = [{"params": [p for p in self.draft.parameters() if p.requires_grad], "lr": self.cfg.optim.lr}]
        return optimizer_and_schedule(groups, self.cfg.optim, self.trainer.max_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep_trainable_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_trainable_state(self, checkpoint)
