"""One training job end to end: target -> self-distilled data -> Lightning fit -> draft export."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from specdec.data.batching import pad_collate, split_train_val
from specdec.data.chat import tokenize_conversations
from specdec.data.distill import DistillConfig, self_distill
from specdec.data.features import FeatureDataset, FeatureStore, feature_collate
from specdec.data.sources import load_conversations, user_turns
from specdec.models.base import lm_head_weight
from specdec.train.callbacks import AtomicCheckpointIO, ResumableCSVLogger, StepBatchSampler
from specdec.train.config import RecipeConfig, RecipeError, recipe_schema
from specdec.train.export import HubUploadError, export_draft, publish, target_record
from specdec.train.guards import CheckpointWriteError, TrainingGuard, TrainingStoppedError, check_finite_weights, checkpoint_advice, earlier_run_message
from specdec.train.losses import NonFiniteLossError
from specdec.train.methods import TrainingMethod, method_class
from specdec.train.module import DraftModule
from specdec.train.steps import trainable_state
from specdec.train.strategies import build_strategy, check_devices, effective_batch_size, is_sharded
from specdec.models.target import Target, cache_root, load_target

log = logging.getLogger(__name__)
say = rank_zero_only(print)
"""print on global rank 0 only (every rank runs this module)."""


@dataclass
class TrainResult:
    draft_dir: Path | None
    """Exported draft folder (None on ranks other than 0)."""
    metrics: dict[str, float]
    """Final validation metrics."""
    seconds: float
    """Wall time of the fit."""


def run(cfg: DictConfig, callbacks: list | tuple = ()) -> TrainResult:
    """Run the recipe `cfg` (already validated by `load_recipe`); `callbacks` are added to the Trainer."""
    # Step 1: seed, threads, output folder with the resolved config.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode", category=UserWarning)  # the frozen target, on purpose
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    ckpt_path = resume_path(cfg)
    # Step 2: the frozen target (online) or its stored features (offline), and the Trainer (which knows this process's rank).
    target, store, record = load_sources(cfg)
    trainer = build_trainer(cfg, list(callbacks), target.model if target else None)
    say(f"effective batch: {effective_batch_size(cfg, trainer.world_size)} sequences per optimizer step (data.batch_size {cfg.data.batch_size} x trainer.accumulate_grad_batches {cfg.trainer.accumulate_grad_batches} x {trainer.world_size} ranks)")
    # Step 3: the data the target writes (split across the ranks that are running), or the stored features, and the draft.
    if store is None:
        train_rows, val_rows = prepare_data(cfg, target, *distill_ranks(trainer))
        train_ds, val_ds = train_rows, val_rows
    else:
        train_rows, val_rows = split_train_val(store.examples, cfg.data.val_size, cfg.seed)
        layers = feature_layer_ids(cfg, record["num_layers"]) is not None
        train_ds, val_ds = FeatureDataset(store, train_rows, layers), FeatureDataset(store, val_rows, layers)
    draft, module = build_module(cfg, target, record, store, train_rows)
    # Step 4: fit with Lightning.
    loaders = DataLoaders(cfg, train_ds, val_ds, record["pad_token_id"], offline=store is not None)
    start = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=loaders.train(trainer), val_dataloaders=loaders.val(), ckpt_path=ckpt_path, weights_only=True)
    except (TrainingStoppedError, NonFiniteLossError) as exc:
        raise type(exc)(f"{exc} {checkpoint_advice(out / 'checkpoints')}") from None
    seconds = time.perf_counter() - start
    # Step 5: a validation pass on the final weights (unless the fit just ran one), then the export (rank 0 only).
    if module.validated_at_step != trainer.global_step:
        trainer.validate(module, dataloaders=loaders.val(), verbose=False)
    metrics = module.validation_metrics()
    check_finite_weights(trainable_state(module), trainer.global_step, f"no draft was exported. {checkpoint_advice(out / 'checkpoints')}")
    draft.config.head_rank_accuracy = [[round(float(a), 5) for a in row] for row in module.rank_accuracy()]
    if not trainer.is_global_zero:
        return TrainResult(None, metrics, seconds)
    tokens_per_example = sum(len(x) for x in train_rows["input_ids"]) / max(len(train_rows), 1)
    info = {
        "steps": trainer.global_step,
        "train_examples": len(train_rows),
        "val_examples": len(val_rows),
        "train_tokens": int(trainer.global_step * effective_batch_size(cfg, trainer.world_size) * tokens_per_example),
        "seconds": seconds,
        "features": cfg.data.features,
    }
    draft_dir = export_draft(draft, cfg, record, metrics, info, target=target)
    say(f"draft written to {draft_dir}")
    for name, value in metrics.items():
        say(f"  {name}: {value:.4f}")
    if cfg.hub.repo_id:
        lm_head = lm_head_weight(target.model) if target else module.lm_head_weight
        publish(draft_dir, cfg.hub.format, cfg.hub.repo_id, cfg.hub.private, lm_head=lm_head)
    return TrainResult(draft_dir, metrics, seconds)


def load_sources(cfg: DictConfig) -> tuple[Target | None, FeatureStore | None, dict]:
    """(the target, None, its record) for online training; (None, the checked feature store, the
    record it keeps of the target) for offline training. See `target_record`."""
    if cfg.data.features == "offline":
        store = FeatureStore(features_dir(cfg))
        store.check(feature_layer_ids(cfg, store.target["num_layers"]), data_settings(cfg))
        return None, store, store.target
    target = load_target(cfg.target.name_or_path, cfg.target.revision, cfg.target.gguf_file, cfg.target.dtype)
    return target, None, target_record(target)


def features_dir(cfg: DictConfig) -> Path:
    return Path(cfg.data.features_dir or Path(cfg.output_dir) / "features")


def training_method(cfg: DictConfig) -> TrainingMethod:
    """The recipe's method (its registered `TrainingMethod`), bound to the recipe."""
    return method_class(cfg.method)(cfg)


def feature_layer_ids(cfg: DictConfig, num_layers: int) -> list[int] | None:
    """Target hidden states the recipe's drafter reads besides the last one, checked against the target's depth."""
    return training_method(cfg).feature_layer_ids(num_layers)


def data_settings(cfg: DictConfig) -> dict:
    """The recipe settings that decide which conversations and tokens stored features belong to."""
    keys = ("source", "max_samples", "self_distill", "max_new_tokens", "temperature", "top_p", "multi_turn", "max_length")
    return {**{k: cfg.data[k] for k in keys}, "target": cfg.target.name_or_path, "seed": cfg.seed}


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, trusted: bool = False) -> Path:
    """Turn a training checkpoint into the plain draft export on one machine; returns the draft folder.

    `checkpoint` is a Lightning .ckpt file or a sharded checkpoint folder (DeepSpeed ZeRO or FSDP),
    consolidated with Lightning's own tools. The run's config.yaml (next to `checkpoints/`) says how
    to rebuild the draft; the draft goes to `out` (default: <output_dir>/draft).
    """
    # Step 1: the run's resolved recipe.
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (training writes them to <output_dir>/checkpoints/)")
    config_file = next((d / "config.yaml" for d in (checkpoint.parent, checkpoint.parent.parent) if (d / "config.yaml").is_file()), None)
    if config_file is None:
        raise FileNotFoundError(f"no config.yaml next to {checkpoint} or its parent: pass a checkpoint inside the output_dir of a specdec-train run")
    saved = OmegaConf.load(config_file)
    cfg = OmegaConf.merge(OmegaConf.structured(recipe_schema(saved.get("method", RecipeConfig.method))), saved)
    # Step 2: one full state dict, whatever strategy wrote it.
    state = consolidated_state(checkpoint, trusted)
    # Step 3: rebuild target (or its stored features) and draft as training did, load the trained tensors, export.
    target, store, record = load_sources(cfg)
    draft, module = build_module(cfg, target, record, store)
    module.on_load_checkpoint(state)  # clear error when tensors are missing
    module.load_state_dict(state["state_dict"], strict=False)
    info = {"steps": state.get("global_step"), "consolidated_from": str(checkpoint)}
    return export_draft(draft, cfg, record, {}, info, out=Path(out) if out else None, target=target)


def consolidated_state(checkpoint: Path, trusted: bool = False) -> dict:
    """A checkpoint as one in-memory dict with a full `state_dict`: plain file, DeepSpeed folder or FSDP folder.

    A .ckpt file is read with `weights_only=True` (tensors and plain data only: a crafted file
    cannot run code). DeepSpeed's and torch.distributed.checkpoint's own readers unpickle, so a
    sharded folder is read only when the caller vouches for it (`trusted`: your own run's folder)."""
    if checkpoint.is_file():
        return load_checkpoint_file(checkpoint)
    if not trusted:
        raise RecipeError(
            f"{checkpoint} is a sharded checkpoint folder: DeepSpeed and torch.distributed.checkpoint read such folders with pickle, "
            "which runs any code a crafted folder holds. If your own training run wrote it, pass trusted=true."
        )
    if (checkpoint / "latest").is_file() or any(checkpoint.glob("*/mp_rank_*_model_states.pt")):
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        consolidated = checkpoint.with_name(checkpoint.name + ".consolidated")
        return convert_zero_checkpoint_to_fp32_state_dict(checkpoint, consolidated)
    if any(checkpoint.glob("*.distcp")):
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        state = _load_distributed_checkpoint(checkpoint)
        state["state_dict"] = state.pop("model", state.get("state_dict", {}))
        return state
    raise FileNotFoundError(f"{checkpoint} is a folder but neither a DeepSpeed nor an FSDP checkpoint (no `latest` file, no *.distcp shards)")


def load_checkpoint_file(path: Path) -> dict:
    """A Lightning .ckpt file read with `weights_only=True`; a clear error for anything else
    (a crafted pickle, a file that is not a checkpoint, a truncated one)."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError depending on how the file is broken
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecipeError(f"{path} is not a readable training checkpoint ({first[:200]}); it was not loaded (checkpoints are read without running code). Pass a .ckpt from <output_dir>/checkpoints/.") from None
    if not isinstance(state, dict) or "state_dict" not in state or "global_step" not in state:
        raise RecipeError(f"{path} is not a Lightning training checkpoint (no state_dict / global_step). Pass a .ckpt from <output_dir>/checkpoints/.")
    return state


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from, or None; a clear error, before any work, if it does not exist or is not a checkpoint,
    or if a fresh run would overwrite an earlier run's checkpoint."""
    if not cfg.resume:
        earlier = earlier_run_message(Path(cfg.output_dir) / "checkpoints")
        if earlier:
            raise RecipeError(earlier)
        return None
    path = Path(cfg.output_dir) / "checkpoints" / "last.ckpt" if cfg.resume == "last" else Path(cfg.resume)
    if not path.exists():  # a file, or a folder for sharded (FSDP, DeepSpeed) checkpoints
        raise RecipeError(f"resume checkpoint {path} does not exist (checkpoints are in <output_dir>/checkpoints/)")
    if path.is_file():
        load_checkpoint_file(path)
    return str(path)


def distill_ranks(trainer: L.Trainer) -> tuple[int, int]:
    """(rank, world size) that share self-distillation now.

    Under torchrun, SLURM or in a process Lightning launched, all ranks are running and split
    the work. The first process of a plain `specdec-train trainer.devices=N` launches the others
    only when fitting starts, so it distills alone and they find the finished cache."""
    if trainer.world_size > 1 and trainer.strategy.cluster_environment.creates_processes_externally:
        return trainer.global_rank, trainer.world_size
    return 0, 1


def prepare_data(cfg: DictConfig, target: Target, rank: int = 0, world_size: int = 1):
    """Load prompts, let the target answer them (cached; rank `rank` of `world_size` generates its share), tokenize with loss masks,
    split (or validate on data.val_source)."""
    rows = tokenized_data(cfg, target, rank, world_size)
    if cfg.data.val_source is None:
        return split_train_val(rows, cfg.data.val_size, cfg.seed)
    return rows, validation_rows(cfg, target.tokenizer, rows)


def validation_rows(cfg: DictConfig, tokenizer, train_rows):
    """data.val_source tokenized as it is; says how many of its conversations the training data also holds."""
    rows = tokenize_conversations(tokenizer, load_conversations(cfg.data.val_source, on_error=cfg.data.on_error), cfg.data.max_length)
    seen = {tuple(ids) for ids in train_rows["input_ids"]}
    shared = sum(tuple(ids) in seen for ids in rows["input_ids"])
    if shared:
        say(f"warning: {shared} of the {len(rows)} validation conversations in data.val_source are also training conversations")
    return rows


def tokenized_data(cfg: DictConfig, target: Target, rank: int = 0, world_size: int = 1):
    """Every usable conversation of the recipe's data, answered by the target when self-distilling, tokenized with loss masks."""
    conversations = load_conversations(cfg.data.source, on_error=cfg.data.on_error)
    if cfg.data.self_distill:
        conversations = prompts_that_fit(conversations, target.tokenizer, cfg.data.max_length - cfg.data.max_new_tokens)
    conversations = conversations[: cfg.data.max_samples] if cfg.data.max_samples else conversations
    if cfg.data.self_distill:
        distill = DistillConfig(
            max_new_tokens=cfg.data.max_new_tokens,
            temperature=cfg.data.temperature,
            top_p=cfg.data.top_p,
            batch_size=cfg.data.generation_batch_size,
            memory_mb=cfg.data.generation_memory_mb,
            chunk_size=cfg.data.distill_chunk_size,
            engine=cfg.data.engine,
            dtype=cfg.data.distill_dtype,
            multi_turn=cfg.data.multi_turn,
            seed=cfg.seed,
        )
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_root() / "distill"
        prompts = [user_turns(c) for c in conversations]
        conversations = list(self_distill(target.model, target.tokenizer, prompts, distill, cache_dir, target.target_id, rank=rank, world_size=world_size)["conversations"])
    tokenized = tokenize_conversations(target.tokenizer, conversations, cfg.data.max_length)
    if len(tokenized) <= cfg.data.val_size:
        raise RecipeError(f"only {len(tokenized)} usable conversations for data.val_size={cfg.data.val_size}: raise data.max_samples or lower data.val_size")
    return tokenized


def prompts_that_fit(conversations: list, tokenizer, budget: int) -> list:
    """Keep conversations whose first prompt leaves room for the answer within data.max_length."""
    kept = [c for c in conversations if _prompt_tokens(tokenizer, _first_prompt(c)) <= budget]
    if len(kept) < len(conversations):
        say(f"skipped {len(conversations) - len(kept)} of {len(conversations)} prompts longer than {budget} tokens (data.max_length - data.max_new_tokens)")
    return kept


def _first_prompt(conversation: list) -> list:
    """Messages up to and including the first user turn."""
    roles = [m["role"] for m in conversation]
    return conversation[: roles.index("user") + 1] if "user" in roles else conversation


def _prompt_tokens(tokenizer, messages: list) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_module(cfg: DictConfig, target: Target | None, record: dict, store: FeatureStore | None = None, train_rows=None) -> tuple[torch.nn.Module, DraftModule]:
    """(draft, the LightningModule that trains it) for the target described by `record`: online
    against `target` (which the method may wrap, e.g. with LoRA), offline from `store`.
    `train_rows` (tokenized training conversations) are for drafts that learn something from the
    data before training (EAGLE-3's vocabulary); None when rebuilding a draft to load a checkpoint into."""
    method = training_method(cfg)
    if target is None:
        embed, lm_head = store.weights()
        draft = method.build_draft(record, lm_head, train_rows)
        return draft, DraftModule(method, draft, embed_weight=embed, lm_head_weight=lm_head)
    draft = method.build_draft(record, lm_head_weight(target.model), train_rows)
    target.model = method.prepare_target(target.model)
    return draft, DraftModule(method, draft, target=target.model)


class DataLoaders:
    """Training batches in the resumable order of `StepBatchSampler`; validation in file order."""

    def __init__(self, cfg: DictConfig, train_ds, val_ds, pad_id: int, offline: bool = False):
        self.cfg, self.train_ds, self.val_ds = cfg, train_ds, val_ds
        collate = feature_collate if offline else pad_collate
        self.collate = lambda examples: collate(examples, pad_id)

    def train(self, trainer: L.Trainer) -> DataLoader:
        cfg = self.cfg
        accumulation = cfg.trainer.accumulate_grad_batches
        # The sampler starts where a resumed run left off; Lightning restores global_step before asking for data.
        position = lambda: (trainer.global_step * accumulation, trainer.global_rank, trainer.world_size)  # noqa: E731
        sampler = StepBatchSampler(len(self.train_ds), cfg.data.batch_size, cfg.trainer.max_steps * accumulation, cfg.seed, position)
        return DataLoader(self.train_ds, batch_sampler=sampler, collate_fn=self.collate)

    def val(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=self.cfg.data.batch_size, shuffle=False, collate_fn=self.collate)


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None, target_model=None) -> L.Trainer:
    """The Lightning Trainer of the recipe; `target_model` tells FSDP which blocks to shard."""
    t = cfg.trainer
    check_devices(t, torch.cuda.is_available())
    out = Path(cfg.output_dir)
    checkpoints = [ModelCheckpoint(dirpath=out / "checkpoints", every_n_train_steps=t.checkpoint_every_n_steps, save_last=True, save_top_k=0, enable_version_counter=False)]
    if t.checkpoint_monitor:  # also keep the best validation pass's weights as checkpoints/best.ckpt
        mode = "min" if t.checkpoint_monitor.endswith("loss") else "max"
        checkpoints.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=t.checkpoint_monitor, mode=mode, save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False))
    plugins = [] if is_sharded(t.strategy) else [AtomicCheckpointIO()]  # sharded strategies write checkpoint folders themselves
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t, target_model, staged=training_method(cfg).staged()),
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps,
        logger=build_logger(cfg),
        callbacks=[*checkpoints, TrainingGuard(t.divergence_ratio), *([TQDMProgressBar()] if t.enable_progress_bar else []), *([LearningRateMonitor(logging_interval="step")] if t.logger != "none" else []), *(extra_callbacks or [])],
        plugins=plugins,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(out),
    )


def build_logger(cfg: DictConfig):
    if cfg.trainer.logger == "none":
        return False
    if cfg.trainer.logger == "wandb":
        offline = not os.environ.get("WANDB_API_KEY")
        return WandbLogger(project=cfg.trainer.wandb_project, save_dir=cfg.output_dir, offline=offline)
    return ResumableCSVLogger(save_dir=cfg.output_dir, name="logs", version="")


def user_errors() -> tuple[type[BaseException], ...]:
    """Failures caused by input (recipe, data, files, target, loss) or a failed Hub upload that the CLI reports in one line."""
    from specdec.data.distill import DistillTimeoutError
    from specdec.data.sources import DataError
    from specdec.models.base import DraftMismatchError
    from specdec.models.target import TargetLoadError

    return (RecipeError, DataError, FileNotFoundError, TargetLoadError, DraftMismatchError, NonFiniteLossError, TrainingStoppedError, CheckpointWriteError, HubUploadError, DistillTimeoutError)
