"""Guards that stop a run before it writes something bad: a loss that explodes, weights that went
NaN or infinite, a checkpoint the disk has no room for. Each stop says which checkpoint is good."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch

from specdec.train.steps import trainable_keys

MIN_REFERENCE_LOSS = 1.0
"""Floor of the reference loss in the divergence test, so a run whose first loss is near zero
(Medusa-2's joint stage starts with its KL term at 0) is not stopped by ordinary noise."""


class TrainingStoppedError(RuntimeError):
    """Training stopped on purpose because continuing would write bad weights; nothing bad was written."""


class DivergedError(TrainingStoppedError):
    """The training loss grew far beyond its starting value (a learning rate far too high)."""


class NonFiniteWeightsError(TrainingStoppedError):
    """Trainable weights became NaN or infinite."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (most often: the disk is full); the previous one is kept."""


class TrainingGuard(L.Callback):
    """Stops training when the loss explodes relative to its first value, and refuses to write a
    checkpoint whose trainable tensors are not finite (so `last.ckpt` is always resumable)."""

    def __init__(self, divergence_ratio: float | None):
        self.divergence_ratio = divergence_ratio
        self.reference_loss: float | None = None
        self.step = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.step = trainer.global_step  # the optimizer step this batch's loss belongs to (global_step moves on before batch end)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # Step 1: the first loss of the run is the reference (kept across resumption, see state_dict).
        loss = _loss_value(outputs)
        if loss is None or self.divergence_ratio is None:
            return
        if self.reference_loss is None:
            self.reference_loss = loss
        # Step 2: every rank decides together, so one rank never stops alone (its peers would hang).
        limit = self.divergence_ratio * max(self.reference_loss, MIN_REFERENCE_LOSS)
        diverged = trainer.strategy.reduce_boolean_decision(not loss <= limit, all=False)
        if diverged:
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            raise DivergedError(
                f"training diverged: the loss is {loss:.4g} at optimizer step {self.step}, over {self.divergence_ratio:g}x "
                f"its first value {self.reference_loss:.4g} (learning rate now {lr:.3g}). Lower optim.lr (or raise "
                f"trainer.divergence_ratio, null disables this check); no draft was exported."
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        check_finite_weights({k: state[k] for k in trainable_keys(pl_module) if k in state}, trainer.global_step, "the checkpoint was not written")

    def state_dict(self) -> dict:
        return {"reference_loss": self.reference_loss}

    def load_state_dict(self, state_dict: dict) -> None:
        self.reference_loss = state_dict.get("reference_loss")


def _loss_value(outputs) -> float | None:
    """The training step's loss as a float (None when the step returned nothing)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else None


def check_finite_weights(tensors: dict[str, torch.Tensor], step: int, consequence: str) -> None:
    """Raise NonFiniteWeightsError naming the first NaN / infinite tensor of `tensors`."""
    bad = next((name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise NonFiniteWeightsError(
            f"trainable weights are NaN or infinite at optimizer step {step} (first: {bad}); {consequence}. "
            "Lower optim.lr, keep trainer.gradient_clip_val set, or check the data."
        )


def earlier_run_message(checkpoint_dir: Path) -> str | None:
    """Why a fresh run must not start in `checkpoint_dir` (it holds an earlier run's last.ckpt, which
    its first checkpoint would replace), or None when it holds none."""
    last = Path(checkpoint_dir) / "last.ckpt"
    if not last.exists():
        return None
    return (
        f"{last} is an earlier run's checkpoint, and a fresh run would replace it: pass resume=last to continue that run, "
        "or choose another output_dir (or delete the old one) to start over"
    )


def checkpoint_advice(checkpoint_dir: Path) -> str:
    """Which checkpoint a stopped run can go on from: last.ckpt with its step, or none yet."""
    last = Path(checkpoint_dir) / "last.ckpt"
    if last.is_file():
        step = torch.load(last, map_location="cpu", mmap=True, weights_only=True).get("global_step")
        return f"The last good checkpoint is {last} (optimizer step {step}): after the fix, continue with resume=last."
    if last.is_dir():
        return f"The last good checkpoint is {last}: after the fix, continue with resume=last."
    return f"No checkpoint was written yet (in {checkpoint_dir}): after the fix, start the run again."


def write_failure_message(path: Path, exc: BaseException, needed_bytes: int) -> str:
    """One line for a failed checkpoint write: which file, why, the free space, what to do."""
    free = shutil.disk_usage(path.parent).free
    full = getattr(exc, "errno", None) == 28 or free < needed_bytes
    reason = "the disk is full" if full else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"could not write checkpoint {path}: {reason} ({_size(free)} free in {path.parent}, the checkpoint needs about {_size(needed_bytes)}). "
        "The partial file was removed and the previous checkpoint is kept: free disk space (or set output_dir on a larger disk), then continue with resume=last."
    )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def tensor_bytes(tree) -> int:
    """Bytes of all tensors in a nested dict / list (a checkpoint's size, roughly)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0
