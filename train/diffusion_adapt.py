"""`specdec-train recipe=diffusion_adapt`: adapt a causal LM (by default the embedded SmolLM2-135M)
into a masked-diffusion LM (issue 13, the target Learn2PD's filter is measured on).

The adapted model is the same network with three changes (as DiffuLLaMA / Dream adapt AR models):
1. attention is bidirectional (an all-visible 4D mask over the real tokens; the weights stay a plain
   Llama, so any Hugging Face loader reads them);
2. a mask token joins the vocabulary (`specdec.models.diffusion.MASK_TOKEN` when the tokenizer has none);
3. the next-token shift is kept: position i is predicted from the output at i - 1, so the AR head
   is reused from the first step.
Training is masked denoising on chat data (the answers only, as supervised fine-tuning: the prompt
stays visible): per conversation a ratio t ~ U(min_mask_ratio, 1), each answer token masked with
probability t, cross-entropy on the masked tokens weighted by 1/t and averaged over the answer's
tokens (`denoising_loss`). Every step is one forward and backward of the whole model.

Writes `<output_dir>/model` (`save_diffusion_model`: the model, tokenizer and diffusion.json),
checkpoints (atomic; `resume=last` continues) and a CSV log with `val/denoising_loss` and
`val/masked_top1` (top-1 accuracy on the masked answer tokens at t = 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from specdec.data.batching import pad_collate, split_train_val
from specdec.data.chat import tokenize_conversations
from specdec.data.sources import DataError, load_conversations
from specdec.models.base import atomic_write
from specdec.models.cli_args import AT_LEAST_1
from specdec.models.diffusion import MASK_TOKEN, DiffusionConfig, DiffusionLM, DiffusionTargetError, save_diffusion_model
from specdec.models.target import load_target
from specdec.train.callbacks import AtomicCheckpointIO, ResumableCSVLogger, StepBatchSampler
from specdec.train.config import NON_NEGATIVE, POSITIVE, RecipeError, TargetConfig, check_rules
from specdec.train.guards import earlier_run_message
from specdec.train.losses import NonFiniteLossError
from specdec.train.steps import SCHEDULES, optimizer_and_schedule

METHOD = SECTION = "diffusion_adapt"
"""This recipe's `method` and its own section."""
MODEL_DIR = "model"
"""Where the adapted model goes inside output_dir."""
ERRORS = (DataError, DiffusionTargetError, NonFiniteLossError)
"""Failures of this job caused by its input, which the CLI reports in one line (exit code 1)."""
VAL_MASK_RATIO = 0.5
"""The mask ratio of every validation batch (fixed, so validation passes compare)."""


@dataclass
class AdaptDataSection:
    source: str = "smollm2-selfdistill"
    """Chat data whose answers are denoised: a builtin name (smollm2-selfdistill: 160 conversations the target answered) or a .json/.jsonl file (the standard set: ../shared/data/train/sharegpt_smollm2_selfdistill.jsonl)."""
    max_samples: Optional[int] = None
    """Conversations used; null for all."""
    max_length: int = 128
    """Tokens per conversation (the end is cut off)."""
    val_size: int = 16
    """Conversations held out for validation (a seeded draw)."""
    batch_size: int = 4
    """Conversations per optimizer step."""

    ranges: ClassVar[dict] = {"max_samples": AT_LEAST_1, "max_length": ("at least 8", lambda v: v >= 8), "val_size": AT_LEAST_1, "batch_size": AT_LEAST_1}


@dataclass
class AdaptOptimSection:
    lr: float = 5e-5
    """Peak AdamW learning rate (the whole model is trained)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    schedule: str = "cosine"
    """After warmup: cosine (to zero at the last step), linear, or constant."""

    ranges: ClassVar[dict] = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE}
    choices: ClassVar[dict] = {"schedule": tuple(SCHEDULES)}


@dataclass
class AdaptSection:
    max_steps: int = 300
    """Optimizer steps."""
    val_every_n_steps: int = 100
    """Validation interval (steps)."""
    checkpoint_every_n_steps: int = 100
    """Checkpoint interval (steps); the last one is always kept as checkpoints/last.ckpt."""
    min_mask_ratio: float = 0.001
    """Smallest mask ratio t drawn (t ~ U(min_mask_ratio, 1)); the 1/t weight is bounded by its inverse."""
    num_threads: Optional[int] = None
    """torch CPU threads (null: torch's default)."""
    enable_progress_bar: bool = True
    """Show a progress bar over the steps."""

    ranges: ClassVar[dict] = {
        "max_steps": AT_LEAST_1, "val_every_n_steps": AT_LEAST_1, "checkpoint_every_n_steps": AT_LEAST_1,
        "min_mask_ratio": ("within (0, 1)", lambda v: 0 < v < 1), "num_threads": AT_LEAST_1,
    }


@dataclass
class DiffusionAdaptConfig:
    method: str = METHOD
    """diffusion_adapt: turn a causal LM into a masked-diffusion LM (not a draft)."""
    output_dir: str = "runs/diffusion_adapt"
    """Where the resolved config, checkpoints, logs and model/ (the adapted diffusion LM) go."""
    seed: int = 0
    """Seed of the data order, the masks and the validation split."""
    resume: Optional[str] = None
    """last: continue from <output_dir>/checkpoints/last.ckpt; or a checkpoint path; null: start fresh."""
    target: TargetConfig = field(default_factory=TargetConfig)
    """The causal LM to adapt."""
    data: AdaptDataSection = field(default_factory=AdaptDataSection)
    """The chat data and batching."""
    optim: AdaptOptimSection = field(default_factory=AdaptOptimSection)
    """The optimizer."""
    diffusion_adapt: AdaptSection = field(default_factory=AdaptSection)
    """Steps, intervals and the mask ratios."""


RECIPE = DiffusionAdaptConfig
"""This recipe's schema."""


def check_recipe(config: DictConfig) -> None:
    """Raise RecipeError for values out of range, a resume checkpoint that does not exist, or a fresh run over an earlier one's checkpoints."""
    sections = {"data": AdaptDataSection, "optim": AdaptOptimSection, SECTION: AdaptSection}
    choices = {f"{name}.{key}": rule for name, section in sections.items() for key, rule in getattr(section, "choices", {}).items()}
    ranges = {f"{name}.{key}": rule for name, section in sections.items() for key, rule in getattr(section, "ranges", {}).items()}
    check_rules(config, choices, ranges)
    if config.resume and not resume_checkpoint(config).is_file():
        raise RecipeError(f"resume checkpoint {resume_checkpoint(config)} does not exist (checkpoints are in <output_dir>/checkpoints/)")
    earlier = None if config.resume else earlier_run_message(Path(config.output_dir) / "checkpoints")
    if earlier:
        raise RecipeError(earlier)


def resume_checkpoint(config: DictConfig) -> Path:
    return Path(config.output_dir) / "checkpoints" / "last.ckpt" if config.resume == "last" else Path(config.resume)


# -- the objective (pure functions) --


def mask_batch(input_ids: torch.Tensor, loss_mask: torch.Tensor, mask_id: int, min_ratio: float, generator: torch.Generator, ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy ids, masked [B, T] bool, t [B]): each answer token (`loss_mask`) masked with its row's
    probability t ~ U(min_ratio, 1), or the fixed `ratio`."""
    batch = input_ids.shape[0]
    if ratio is None:
        t = min_ratio + (1 - min_ratio) * torch.rand(batch, generator=generator)
    else:
        t = torch.full((batch,), float(ratio))
    t = t.to(input_ids.device)
    draws = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    masked = (draws < t[:, None]) & loss_mask.bool()
    return input_ids.masked_fill(masked, mask_id), masked, t


def denoising_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean over conversations of sum(CE of the masked tokens / t) / answer tokens (the masked-diffusion ELBO's weighting)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    per_row = (ce * masked / t[:, None]).sum(-1) / loss_mask.sum(-1).clamp_min(1)
    return per_row.mean()


# -- the job --


class DiffusionAdaptModule(L.LightningModule):
    """Trains the whole `lm` on `denoising_loss`."""

    def __init__(self, lm: DiffusionLM, cfg: DictConfig):
        super().__init__()
        self.lm, self.cfg = lm, cfg
        self.val_records: list[tuple[float, int, int]] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.global_step)
        noisy, masked, t = mask_batch(batch["input_ids"], batch["loss_mask"], self.lm.config.mask_token_id, self.cfg.diffusion_adapt.min_mask_ratio, generator)
        loss = denoising_loss(self.lm(noisy, batch["attention_mask"]), batch["input_ids"], masked, t, batch["loss_mask"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the denoising loss is {loss.item()} at step {self.global_step}; lower optim.lr, or resume=last from the last good checkpoint")
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(batch_idx)
        noisy, masked, t = mask_batch(batch["input_ids"], batch["loss_mask"], self.lm.config.mask_token_id, 0.0, generator, ratio=VAL_MASK_RATIO)
        logits = self.lm(noisy, batch["attention_mask"])
        loss = denoising_loss(logits, batch["input_ids"], masked, t, batch["loss_mask"])
        hits = int(((logits.argmax(-1) == batch["input_ids"]) & masked).sum())
        self.val_records.append((float(loss), hits, int(masked.sum())))

    def on_validation_epoch_end(self) -> None:
        if self.val_records:
            losses, hits, counts = zip(*self.val_records)
            self.log("val/denoising_loss", sum(losses) / len(losses))
            self.log("val/masked_top1", sum(hits) / max(sum(counts), 1))
        self.val_records = []

    def configure_optimizers(self):
        groups = [{"params": [p for p in self.lm.parameters() if p.requires_grad], "lr": self.cfg.optim.lr}]
        return optimizer_and_schedule(groups, self.cfg.optim, self.cfg.diffusion_adapt.max_steps)


def trainable_diffusion_lm(cfg: DictConfig):
    """(a trainable DiffusionLM from the recipe's causal LM, with a mask token added when its tokenizer has none, its tokenizer)."""
    target = load_target(cfg.target.name_or_path, cfg.target.revision, cfg.target.gguf_file, cfg.target.dtype)
    model, tokenizer = target.model, target.tokenizer
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    return DiffusionLM(model, DiffusionConfig(tokenizer.mask_token_id, shift=True, base=cfg.target.name_or_path), bidirectional_mask=True), tokenizer


def run_recipe(cfg: DictConfig, callbacks: list | tuple = ()) -> Path:
    """Run the adaptation recipe `cfg` (validated by `load_recipe`); returns the model folder."""
    # Step 1: output folder and the resolved config; threads and seed.
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda p: Path(p).write_text(OmegaConf.to_yaml(cfg)))
    settings = cfg.diffusion_adapt
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    L.seed_everything(cfg.seed, verbose=False)
    # Step 2: the model with its mask token, then the chat data (answers only) split for validation.
    lm, tokenizer = trainable_diffusion_lm(cfg)
    conversations = load_conversations(cfg.data.source, max_samples=cfg.data.max_samples)
    data = tokenize_conversations(tokenizer, conversations, cfg.data.max_length)
    train_ds, val_ds = split_train_val(data, cfg.data.val_size, cfg.seed)
    collate = lambda rows: pad_collate(rows, tokenizer.pad_token_id)  # noqa: E731
    module = DiffusionAdaptModule(lm, cfg)
    position = lambda: (trainer.global_step, 0, 1)  # noqa: E731  (a resumed run continues the data order)
    sampler = StepBatchSampler(len(train_ds), cfg.data.batch_size, settings.max_steps, cfg.seed, position)
    # Step 3: train with atomic checkpoints, then write the adapted model.
    trainer = L.Trainer(
        accelerator="cpu" if not torch.cuda.is_available() else "auto", devices=1, max_steps=settings.max_steps, max_epochs=-1,
        val_check_interval=settings.val_every_n_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=1,
        logger=ResumableCSVLogger(save_dir=str(out), name="logs", version=""), plugins=[AtomicCheckpointIO()], enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=out / "checkpoints", every_n_train_steps=settings.checkpoint_every_n_steps, save_last=True, save_top_k=0, enable_version_counter=False),
                   *([TQDMProgressBar()] if settings.enable_progress_bar else []), *callbacks],
        enable_progress_bar=settings.enable_progress_bar, default_root_dir=str(out),
    )
    trainer.fit(
        module, train_dataloaders=DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate),
        val_dataloaders=DataLoader(val_ds, batch_size=cfg.data.batch_size, collate_fn=collate), ckpt_path=str(resume_checkpoint(cfg)) if cfg.resume else None,
    )
    lm.model.eval()
    folder = save_diffusion_model(lm.model, tokenizer, lm.config, out / MODEL_DIR)
    print(f"masked-diffusion LM written to {folder} (mask token {lm.config.mask_token_id}; adapted from {cfg.target.name_or_path} in {settings.max_steps} steps)", flush=True)
    return folder
