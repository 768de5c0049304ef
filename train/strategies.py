"""Scale-out through Lightning's own strategies: DDP, FSDP (frozen target sharded too) and
DeepSpeed ZeRO with an editable JSON config. specdec adds no engine of its own; this module
only turns the recipe's `trainer` section into the Lightning strategy object, with a bounded
collective timeout so that a dead rank ends the job instead of hanging it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, Strategy
from omegaconf import DictConfig

from specdec.train.config import RecipeError, check_strategy_name, recipes_dir

BUNDLED_DEEPSPEED = {"deepspeed": "zero2", "deepspeed_stage_2": "zero2", "deepspeed_stage_3": "zero3"}
"""Strategy name -> bundled DeepSpeed config (`recipes/deepspeed/<name>.json`) used when trainer.deepspeed_config is unset."""


def build_strategy(trainer_cfg: DictConfig, target=None, staged: bool = False) -> str | Strategy:
    """The Lightning strategy for `trainer.strategy`; `target` (the frozen HF model) tells FSDP what
    to wrap; `staged` says some trainable tensors get no gradient in some steps (Medusa-2's heads-only
    stage leaves the LoRA adapters out), which DDP must be told."""
    name = str(trainer_cfg.strategy)
    timeout = timedelta(seconds=trainer_cfg.timeout_s)
    if name in ("auto", "single_device"):
        return name
    if name == "ddp":
        return DDPStrategy(timeout=timeout, find_unused_parameters=staged)
    if name == "fsdp":
        return FSDPStrategy(
            auto_wrap_policy=decoder_layer_classes(target),
            sharding_strategy=trainer_cfg.fsdp_sharding,
            state_dict_type="sharded",
            use_orig_params=True,  # the frozen target and the trainable draft share FSDP units
            timeout=timeout,
        )
    if name in BUNDLED_DEEPSPEED:
        config = deepspeed_config(trainer_cfg.deepspeed_config or BUNDLED_DEEPSPEED[name])
        stage = config.get("zero_optimization", {}).get("stage")
        if name != "deepspeed" and f"stage_{stage}" not in name:
            raise RecipeError(f"trainer.strategy={name} but the DeepSpeed config sets ZeRO stage {stage}: make them agree")
        return DeepSpeedStrategy(config=config, timeout=timeout, exclude_frozen_parameters=True)
    check_strategy_name(name)
    return name  # other Lightning registry names (ddp_spawn, fsdp_cpu_offload, ...) as Lightning defines them


def is_sharded(strategy: str) -> bool:
    """FSDP and DeepSpeed strategies: GPU-only in Lightning, and they write checkpoints as folders."""
    return str(strategy).startswith(("fsdp", "deepspeed"))


def check_devices(trainer_cfg: DictConfig, cuda_available: bool) -> None:
    """Lightning runs FSDP and DeepSpeed on CUDA GPUs only: say so before any work, with the CPU alternative."""
    name = str(trainer_cfg.strategy)
    on_cpu = trainer_cfg.accelerator == "cpu" or (trainer_cfg.accelerator == "auto" and not cuda_available)
    if is_sharded(name) and on_cpu:
        raise RecipeError(f"trainer.strategy={name} needs CUDA GPUs (Lightning runs FSDP and DeepSpeed on GPUs only) and this job has none; use trainer.strategy=ddp for several CPU processes")


def deepspeed_config(name_or_path: str) -> dict:
    """A DeepSpeed JSON config: a path, or a bundled name (zero2, zero3) from recipes/deepspeed/."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipes_dir() / "deepspeed" / f"{name_or_path}.json"
    if not path.is_file():
        bundled = sorted(p.stem for p in (recipes_dir() / "deepspeed").glob("*.json"))
        raise RecipeError(f"DeepSpeed config {name_or_path} not found: give a JSON file path or one of {bundled}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecipeError(f"DeepSpeed config {path} is not valid JSON: {error}") from error
    if "gradient_accumulation_steps" in config or "train_batch_size" in config:
        raise RecipeError(f"{path}: remove gradient_accumulation_steps / train_batch_size; they come from trainer.accumulate_grad_batches and data.batch_size")
    return config


def decoder_layer_classes(target) -> set[type]:
    """The target's transformer block classes (its `_no_split_modules`): FSDP's wrapping unit."""
    names = set(getattr(target, "_no_split_modules", None) or [])
    classes = {type(m) for m in target.modules() if type(m).__name__ in names} if target is not None else set()
    if not classes:
        raise RecipeError("trainer.strategy=fsdp needs a target whose transformer blocks are known (transformers' _no_split_modules)")
    return classes


def effective_batch_size(cfg: DictConfig, world_size: int) -> int:
    """Sequences per optimizer step over all ranks."""
    return cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * world_size
