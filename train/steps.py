"""What every LightningModule of specdec shares: the optimizer and schedule, validation
accuracy bookkeeping, and checkpoints that keep only the trainable state (never the target)."""

from __future__ import annotations

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from specdec.train.losses import greedy_agreement, standard_kl

SCHEDULES = {
    "cosine": get_cosine_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
}


def optimizer_and_schedule(groups: list[dict], optim_cfg, max_steps: int) -> dict:
    """AdamW over parameter `groups` with the recipe's warmup + schedule, stepped per optimizer step."""
    optimizer = torch.optim.AdamW(groups, weight_decay=optim_cfg.weight_decay)
    scheduler = SCHEDULES[optim_cfg.schedule](optimizer, optim_cfg.warmup_steps, max_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def rank_accuracy(records: list[tuple]) -> torch.Tensor:
    """[K, RANKS] share of validation labels found at each candidate rank of each head / draft position,
    from (loss, rank_hits [K, RANKS], count [K]) records of a validation pass."""
    hits = torch.stack([r[1] for r in records]).sum(0)
    return hits / torch.stack([r[2] for r in records]).sum(0).clamp(min=1)[:, None]


def accuracy_metrics(records: list[tuple], top_k: int) -> dict[str, float]:
    """val/loss and per-head top-1 / top-k accuracy of a validation pass (empty before the first)."""
    if not records:
        return {}
    accuracy = rank_accuracy(records)
    metrics = {"val/loss": float(torch.stack([r[0] for r in records]).mean())}
    for k in range(accuracy.shape[0]):
        metrics[f"val/head{k + 1}_top1"] = float(accuracy[k, 0])
        metrics[f"val/head{k + 1}_top{top_k}"] = float(accuracy[k, :top_k].sum())
    return metrics


def log_validation(module, metrics: dict[str, float]) -> None:
    """Log a validation pass's metrics (averaged over ranks), head-1 top-1 on the progress bar."""
    for name, value in metrics.items():
        module.log(name, value, prog_bar=name.endswith("head1_top1"), sync_dist=True)


def trainable_keys(module: torch.nn.Module) -> set[str]:
    """Trainable parameters plus the draft's own saved buffers (EAGLE-3's vocabulary maps); never the target's."""
    params = {n for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in module.named_buffers() if not n.startswith("target.")}
    return params | (buffers & set(module.state_dict()))


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of `module` that training changes (see `trainable_keys`)."""
    keep = trainable_keys(module)
    return {k: v for k, v in module.state_dict().items() if k in keep}


def keep_trainable_state(module: torch.nn.Module, checkpoint: dict) -> None:
    """Drop frozen tensors (the target) from a checkpoint about to be written."""
    keep = trainable_keys(module)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}


def check_trainable_state(module: torch.nn.Module, checkpoint: dict) -> None:
    """A clear error when a checkpoint lacks trainable tensors of this recipe (another recipe's run)."""
    missing = trainable_keys(module) - set(checkpoint["state_dict"])
    if missing:
        raise RuntimeError(
            f"checkpoint does not match this recipe: {len(missing)} trainable tensors missing "
            f"(e.g. {sorted(missing)[0]}). Resume with the recipe and overrides the run was started with."
        )


class FaithfulnessMeter:
    """Validation guards of a method that fine-tunes the target: KL(original || tuned) at the
    standard positions and the share of the original model's greedy tokens the tuned one
    reproduces (teacher-forced), weighted by positions over one validation pass."""

    def __init__(self):
        self._step, self._sums = None, torch.zeros(3)

    def add(self, step: int, original_logits: torch.Tensor, tuned_logits: torch.Tensor) -> None:
        """Accumulate one validation batch's next-token logits [N, V] (a new pass starts at a new global step)."""
        if step != self._step:
            self._step, self._sums = step, torch.zeros(3)
        count = tuned_logits.shape[0]
        if count:
            self._sums += torch.tensor([float(standard_kl(original_logits, tuned_logits)) * count, float(greedy_agreement(original_logits, tuned_logits)) * count, count])

    def metrics(self) -> dict[str, float]:
        """`val/standard_kl` and `val/greedy_agreement` of the last pass (empty before any)."""
        kl, agree, count = self._sums.tolist()
        return {"val/standard_kl": kl / count, "val/greedy_agreement": agree / count} if count else {}
