"""Medusa-1 (heads on the frozen target, online or offline from `specdec-prepare` features) and
Medusa-2 (heads + joint LoRA fine-tuning of the target, online only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.train.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE
from specdec.train.lora_layers import decoder_layers, linear_names, recorded_output, replayed, top_layer_indices
from specdec.train.losses import head_label_counts, head_targets, heads_ramp, kl_to_original, medusa_head_losses
from specdec.train.methods import TrainingMethod, install_vocab, reduced_vocab_size, register_method
from specdec.train.steps import FaithfulnessMeter

FINETUNED_TARGET_DIR = "target"
"""Folder of the draft that holds Medusa-2's fine-tuned target (LoRA merged)."""
ADAPTER_DIR = "adapter"
"""Folder of the draft that holds Medusa-2's LoRA adapter alone (peft format)."""


@dataclass
class MedusaSection:
    num_heads: int = 4
    """Medusa heads K; head k predicts the token k+1 positions past the target's next token."""
    num_layers: int = 1
    """ResBlocks per head."""
    share_lm_head: bool = True
    """Use the frozen target lm_head as every head's projection (false: per-head copies, trained)."""
    loss_decay: float = 0.8
    """Head k's loss weight is loss_decay**k (k = 0 for the first head)."""
    soft_label_weight: float = 0.0
    """Mix of soft-label distillation from the target's own distribution (0 = hard labels only, 1 = soft only)."""
    draft_vocab_size: Optional[int] = None
    """Heads project onto only the V_draft most frequent training labels (a reduced vocabulary, the d2t / t2d maps of EAGLE-3); 0 or null (or at least the target's V) = the full vocabulary."""

    ranges: ClassVar[dict] = {"num_heads": AT_LEAST_1, "num_layers": AT_LEAST_1, "loss_decay": POSITIVE, "soft_label_weight": FRACTION, "draft_vocab_size": NON_NEGATIVE}


@dataclass
class Medusa2Section:
    lora_r: int = 32
    """LoRA rank on the target's linear layers."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout (non-zero makes resumed runs differ from uninterrupted ones)."""
    lora_target_modules: str = "all-linear"
    """peft target_modules: `all-linear` or a comma-separated list of module names."""
    lora_layers: int = 0
    """LoRA on the top N decoder layers only (0 = every layer). The layers below keep the original weights, so a joint step runs them once, in the original model's forward for the KL term, and the tuned forward reuses their output: the step costs one target forward plus the top N layers' forward and backward, instead of two forwards and a backward through the whole target."""
    kl_top_k: int = 0
    """The KL term over the batch's support only: every token among the original model's top k at some position, both distributions renormalised there (0 = all V tokens). The tuned logits and their backward then cover a few thousand rows instead of V; `val/standard_kl` and `val/greedy_agreement` still measure the full distributions."""
    heads_only_steps: int = 50
    """Stage 1: optimizer steps that train only the heads before joint training starts."""
    heads_coefficient: float = 0.01
    """c in L = L_base + c * ramp(step) * sum_k decay^k L_k (0.2 with human data, 0.01 with self-distillation)."""
    ramp: str = "sine"
    """Schedule that ramps the heads' term in during joint training: sine, linear or none."""
    heads_lr_multiplier: float = 4.0
    """Heads learning rate = optim.lr * this (the LoRA weights use optim.lr)."""
    merge_lora: bool = True
    """Export the fine-tuned target with LoRA merged into <output_dir>/draft/target."""
    save_adapter: bool = False
    """Also export the LoRA adapter alone (peft format) into <output_dir>/draft/adapter."""

    ranges: ClassVar[dict] = {
        "lora_r": AT_LEAST_1, "lora_alpha": POSITIVE, "heads_lr_multiplier": POSITIVE, "lora_dropout": FRACTION,
        "heads_only_steps": NON_NEGATIVE, "heads_coefficient": NON_NEGATIVE, "lora_layers": NON_NEGATIVE, "kl_top_k": NON_NEGATIVE,
    }
    choices: ClassVar[dict] = {"ramp": ("sine", "linear", "none")}


@register_method
class Medusa1Method(TrainingMethod):
    """Medusa heads trained on the frozen target's last hidden state."""

    name, draft_type = "medusa1", MedusaHeads.draft_type
    sections = {"medusa": MedusaSection}
    reads_target_features = True
    static_tree = True

    def build_draft(self, record: dict, lm_head: torch.Tensor, train_rows=None) -> MedusaHeads:
        """Fresh heads; with a reduced vocabulary and `train_rows` it is the most frequent training labels (else it comes from the checkpoint)."""
        m, vocab = self.cfg.medusa, record["vocab_size"]
        config = MedusaConfig(record["hidden_size"], vocab, num_heads=m.num_heads, num_layers=m.num_layers, share_lm_head=m.share_lm_head, draft_vocab_size=reduced_vocab_size(m.draft_vocab_size, vocab))
        heads = MedusaHeads(config)
        install_vocab(heads, lm_head, train_rows, "medusa.draft_vocab_size")
        return heads

    def num_positions(self, training: bool) -> int:
        return self.cfg.medusa.num_heads

    def losses(self, module, batch: dict, training: bool, denominators: torch.Tensor | None = None, hidden: torch.Tensor | None = None):
        _, final = module.states(batch) if hidden is None else (None, hidden)
        m = self.cfg.medusa
        return medusa_head_losses(
            module.draft, final, batch["input_ids"], batch["loss_mask"], module.weights()[1],
            decay=m.loss_decay, soft_label_weight=m.soft_label_weight, with_accuracy=not training, denominators=denominators,
        )


@register_method
class Medusa2Method(Medusa1Method):
    """Medusa heads, then (after medusa2.heads_only_steps) joint LoRA training of the target:
    L = KL(original || tuned) on the next token + c * ramp * heads loss."""

    name = "medusa2"
    sections = {"medusa": MedusaSection, "medusa2": Medusa2Section}
    reads_target_features = False  # it fine-tunes the target, so it needs the live one

    def __init__(self, cfg):
        super().__init__(cfg)
        self.faithfulness = FaithfulnessMeter()

    def prepare_target(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap the target with peft LoRA adapters; only the adapters are trainable."""
        from peft import LoraConfig, get_peft_model

        m = self.cfg.medusa2
        modules = m.lora_target_modules
        targets = modules if modules == "all-linear" else [name.strip() for name in modules.split(",")]
        top = None
        if m.lora_layers:
            top = top_layer_indices(model, m.lora_layers, "medusa2.lora_layers")
            if targets == "all-linear":  # peft takes layers_to_transform with module names only
                targets = linear_names(model)
        return get_peft_model(model, LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets, layers_to_transform=top, task_type="CAUSAL_LM"))

    def label_counts(self, loss_mask: torch.Tensor) -> torch.Tensor:
        """[K] per-head label counts, then the next-token count of the KL term."""
        return torch.cat([head_label_counts(loss_mask, self.cfg.medusa.num_heads), loss_mask[:, 1:].sum().float()[None]])

    def losses(self, module, batch: dict, training: bool, denominators: torch.Tensor | None = None, hidden: torch.Tensor | None = None):
        """The heads' `HeadLosses`; in validation also the guards that the tuned target still behaves as the original."""
        if not training and hidden is None:
            with torch.no_grad():
                original, hidden = self._original_and_tuned(module, batch)
                select, _ = head_targets(torch.zeros_like(batch["loss_mask"]), batch["loss_mask"], 1)
                lm_head = module.weights()[1]
                self.faithfulness.add(module.global_step, original[select] @ lm_head.T, hidden[select] @ lm_head.T)
        return super().losses(module, batch, training, None if denominators is None else denominators[:-1], hidden)

    def acceptance_metrics(self, rank_accuracy: torch.Tensor) -> dict[str, float]:
        """The heads' expected acceptance, and `val/standard_kl` / `val/greedy_agreement` of the tuned target."""
        return {**super().acceptance_metrics(rank_accuracy), **self.faithfulness.metrics()}

    def training_loss(self, module, batch: dict, denominators: torch.Tensor | None = None):
        heads_only = self.cfg.medusa2.heads_only_steps
        if module.global_step < heads_only:
            return super().training_loss(module, batch, denominators)
        # Joint stage: KL to the original model (adapters off) + the ramped heads term.
        original, hidden = self._original_and_tuned(module, batch)
        heads = self.losses(module, batch, True, denominators, hidden=hidden)
        base = kl_to_original(original, hidden, batch["loss_mask"], module.weights()[1], None if denominators is None else denominators[-1], top_k=self.cfg.medusa2.kl_top_k)
        ramp = heads_ramp(module.global_step - heads_only, module.trainer.max_steps - heads_only, self.cfg.medusa2.ramp)
        loss = base + self.cfg.medusa2.heads_coefficient * ramp * heads.loss
        return loss, {"train/base_kl": base.detach(), **{f"train/head{k + 1}_loss": v for k, v in enumerate(heads.per_head.detach())}}

    def _original_and_tuned(self, module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states of the original target (no graph) and of the tuned one (with graph).
        With medusa2.lora_layers the layers below the adapters run once: the tuned forward replays their output."""
        layers = decoder_layers(module.target) if self.cfg.medusa2.lora_layers else []
        split = len(layers) - self.cfg.medusa2.lora_layers if layers else 0
        # Step 1: the original model (adapters off), recording the output of the last layer without adapters.
        with torch.no_grad(), module.target.disable_adapter(), recorded_output(layers[split - 1] if split else None) as bottom:
            original = module.states(batch)[1]
        # Step 2: the tuned model, its layers without adapters replaying that output.
        with replayed(layers[:split], bottom.get("output")):
            tuned = module.states(batch, grad=True)[1]
        return original, tuned

    def parameter_groups(self, module) -> list[dict]:
        """Heads at optim.lr * medusa2.heads_lr_multiplier, LoRA adapters at optim.lr."""
        lr = self.cfg.optim.lr
        groups = [{"params": [p for p in module.draft.parameters() if p.requires_grad], "lr": lr * self.cfg.medusa2.heads_lr_multiplier}]
        lora = [p for p in module.target.parameters() if p.requires_grad]
        return groups + ([{"params": lora, "lr": lr}] if lora else [])

    def staged(self) -> bool:
        return self.cfg.medusa2.heads_only_steps > 0

    def export_extras(self, target, out: Path) -> dict[str, Any]:
        """The fine-tuned target (LoRA merged) in out/target and/or the adapter in out/adapter."""
        m = self.cfg.medusa2
        if m.save_adapter:
            target.model.save_pretrained(out / ADAPTER_DIR)
        if not m.merge_lora:
            return {"finetuned_weights": None}
        merged = target.model.merge_and_unload()
        merged.save_pretrained(out / FINETUNED_TARGET_DIR)
        target.tokenizer.save_pretrained(out / FINETUNED_TARGET_DIR)
        return {"finetuned_weights": FINETUNED_TARGET_DIR}
