"""SDSAT: fine-tune the target so that k semantic adaptive (SA) tokens after the last verified
token predict the tokens after the next one, while ordinary tokens keep their behaviour.

Each batch runs one forward over the standard tokens plus A anchors x k SA slots (a side branch
under a 4-D mask, see `specdec.train.sdsat_losses`). The loss is a standard-token term (KL to the
original model with the adapters off, or plain LM cross-entropy) plus the weighted CE of the
slots. Stage 1 (`sdsat.sa_only_steps`) trains only the SA tokens' embedding rows; stage 2 adds
the LoRA adapters (or, with `sdsat.finetune=full`, every weight). Every validation pass reports
what guards "standard tokens are unaffected": KL(original || tuned) at standard positions and
the share of the original model's greedy tokens the tuned model reproduces (teacher-forced, on
the held-out self-distilled conversations). The export is the tuned target itself (LoRA merged,
the SA tokens in its tokenizer, k and their ids in its config.json) in the draft's `target/`.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from transformers import DynamicCache

from specdec.models.base import base_weight
from specdec.models.sdsat import SA_TOKEN_FORMAT, TARGET_CONFIG_KEY, TUNED_TARGET_DIR, SdsatConfig, SdsatDraft, embedding_init, sdsat_config_entry
from specdec.train.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, RecipeError
from specdec.train.lora_layers import decoder_layers, linear_names, recorded_output, replayed, top_layer_indices, without_grad_below
from specdec.train.losses import standard_kl, top_k_support
from specdec.train.methods import TrainingMethod, register_method
from specdec.train.sdsat_losses import IGNORE, TunedRows, batch_seed, sample_anchors, side_branch, slot_labels, slot_losses, span_lengths, standard_ce, standard_positions
from specdec.train.steps import FaithfulnessMeter
from specdec.train.strategies import BUNDLED_DEEPSPEED, deepspeed_config

ADAPTER_DIR = "adapter"
"""Folder of the draft that holds the LoRA adapter alone (peft format), when asked for."""
MAX_SA_TOKENS = 15
"""Largest k (the paper's released models use up to 15 slots)."""


@dataclass
class SdsatSection:
    num_sa_tokens: int = 5
    """k: SA slots after the last verified token; slot m learns the token m+1 positions past it (1..15)."""
    distinct_tokens: bool = True
    """One new token per slot; false: one new SA token repeated in every slot (as the paper's released models)."""
    token_id: Optional[int] = None
    """An existing token id to use for every slot instead of new tokens (e.g. a reserved id); None: add SA tokens."""
    init_token_id: Optional[int] = None
    """Initialise the SA embedding rows as a copy of this token's row; None: the mean of all embedding rows."""
    anchors_per_sequence: int = 32
    """Anchor positions sampled per sequence each batch, each with its k slots; 0: every assistant position."""
    span: str = "fixed"
    """fixed: every anchor trains all k slots; poisson: an anchor trains slots 1..s, s ~ Poisson(poisson_lambda) clamped to 1..k."""
    poisson_lambda: float = 3.0
    """Mean span length when span=poisson."""
    slot_decay: float = 0.8
    """Slot m's CE weight is slot_decay**(m-1)."""
    sa_weight: float = 1.0
    """Weight of the SA slots' term in the loss."""
    standard_loss: str = "kl"
    """Standard-token term: kl (KL(original || tuned), self-distillation as Medusa-2) or ce (LM cross-entropy on assistant tokens)."""
    standard_weight: float = 1.0
    """Weight of the standard-token term."""
    kl_top_k: int = 0
    """The KL term over the batch's support only: every token among the original model's top k at some standard position, plus the SA tokens (so the tuned model is still held from predicting them), both distributions renormalised there (0 = all V tokens). The support is picked from the original's logits computed in bfloat16 (a third of the float32 matmul on a CPU with bfloat16 units); the KL over it is float32. The tuned logits and their backward then cover a few thousand rows instead of V; `val/standard_kl` and `val/greedy_agreement` still measure the full distributions."""
    sa_only_steps: int = 50
    """Stage 1: optimizer steps that train only the SA tokens' embedding rows before the adapters join (lora only)."""
    finetune: str = "lora"
    """lora: peft LoRA adapters plus the SA embedding rows; full: every weight of the target (a frozen copy serves the KL)."""
    sa_lr_multiplier: float = 4.0
    """Learning rate of the SA embedding rows = optim.lr * this (the LoRA weights use optim.lr; lora only: a full fine-tune trains every weight at optim.lr)."""
    lora_r: int = 32
    """LoRA rank on the target's linear layers."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout (non-zero makes resumed runs differ from uninterrupted ones)."""
    lora_target_modules: str = "all-linear"
    """peft target_modules: `all-linear` or a comma-separated list of module names."""
    lora_layers: int = 0
    """LoRA on the top N decoder layers only (0 = every layer; lora only). A step then runs the standard tokens through the layers below once, without gradient (the original model's KL forward reuses their output), and the SA slots in a pass of their own over those tokens' cached keys and values, so the backward through every layer covers the slots alone; the gradients equal those of the one-block forward with the same adapters."""
    save_adapter: bool = False
    """Also export the LoRA adapter alone (peft format) into <output_dir>/draft/adapter."""

    ranges: ClassVar[dict] = {
        "num_sa_tokens": (f"an integer in 1..{MAX_SA_TOKENS}", lambda v: 1 <= v <= MAX_SA_TOKENS),
        "anchors_per_sequence": NON_NEGATIVE, "poisson_lambda": POSITIVE, "slot_decay": POSITIVE, "sa_weight": POSITIVE,
        "standard_weight": NON_NEGATIVE, "sa_only_steps": NON_NEGATIVE, "sa_lr_multiplier": POSITIVE,
        "lora_r": AT_LEAST_1, "lora_alpha": POSITIVE, "lora_dropout": FRACTION, "token_id": NON_NEGATIVE, "init_token_id": NON_NEGATIVE, "lora_layers": NON_NEGATIVE, "kl_top_k": NON_NEGATIVE,
    }
    choices: ClassVar[dict] = {"span": ("fixed", "poisson"), "standard_loss": ("kl", "ce"), "finetune": ("lora", "full")}


def output_rows(target: torch.nn.Module) -> TunedRows:
    """The tuned target's output rows: peft's trainable tokens (frozen base rows, the SA rows trainable) or the plain head."""
    return _tuned_rows(target.get_output_embeddings())[1]


def input_rows(target: torch.nn.Module) -> TunedRows | None:
    """The tuned target's input embedding rows, or None when its embedding is not a plain lookup (a scaled
    embedding, as Gemma's, keeps its own forward)."""
    base, rows = _tuned_rows(target.get_input_embeddings())
    return rows if type(base) is torch.nn.Embedding else None


def _tuned_rows(layer: torch.nn.Module) -> tuple[torch.nn.Module, TunedRows]:
    """(the wrapped base layer, its rows as training sees them) of an embedding or head, wrapped by peft's trainable tokens or not."""
    adapter = getattr(layer, "token_adapter", None)
    if adapter is None:
        return layer, TunedRows(layer.weight)
    name = adapter.active_adapters[0]
    return adapter.base_layer, TunedRows(base_weight(layer), torch.tensor(adapter.token_indices[name]), adapter.trainable_tokens_delta[name])


@register_method
class SdsatMethod(TrainingMethod):
    """The target fine-tuned with SA tokens; the draft is the tuned target itself (see module docstring)."""

    name, draft_type = "sdsat", SdsatDraft.draft_type
    sections = {"sdsat": SdsatSection}
    static_tree = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.sa_ids: list[int] = []
        self.new_rows: list[int] = []
        self.original: torch.nn.Module | None = None  # full fine-tune: the frozen target before training
        self.joint = True  # False in stage 1: the LoRA weights' gradients are zeroed (see `_hold_in_stage_1`)
        self.faithfulness = FaithfulnessMeter()

    @classmethod
    def check_recipe(cls, config) -> None:
        s = config.sdsat
        if s.finetune == "full" and s.sa_only_steps > 0:
            raise RecipeError("`sdsat.sa_only_steps` trains only the SA embedding rows through peft's trainable tokens, which `sdsat.finetune=full` does not use: set sdsat.sa_only_steps=0 or sdsat.finetune=lora")
        if s.finetune == "full" and s.lora_layers:
            raise RecipeError("`sdsat.lora_layers` places the LoRA adapters, which `sdsat.finetune=full` does not use: set sdsat.lora_layers=0 or sdsat.finetune=lora")
        if s.kl_top_k and s.standard_loss != "kl":
            raise RecipeError(f"`sdsat.kl_top_k` narrows the KL term, which sdsat.standard_loss={s.standard_loss} does not use: set sdsat.kl_top_k=0 or sdsat.standard_loss=kl")
        strategy = str(config.trainer.strategy)
        if strategy.startswith("fsdp") or "stage_3" in strategy or (strategy == "deepspeed" and deepspeed_config(config.trainer.deepspeed_config or BUNDLED_DEEPSPEED[strategy]).get("zero_optimization", {}).get("stage") == 3):
            raise RecipeError(f"trainer.strategy={strategy} shards the target's weights, and SDSAT reads its embedding rows outside the modules' forwards (where a sharded weight is empty): use trainer.strategy=ddp or deepspeed_stage_2")
        if s.token_id is not None and s.distinct_tokens:
            raise RecipeError("`sdsat.token_id` puts one existing token in every slot: set sdsat.distinct_tokens=false with it (or unset token_id to add distinct SA tokens)")

    # -- the tuned target --
    def build_draft(self, record: dict, lm_head: torch.Tensor, train_rows=None) -> SdsatDraft:
        """Choose the slot ids: an existing `token_id`, else new tokens at the tokenizer's next ids
        (unused embedding rows where the model has them, else rows `prepare_target` adds)."""
        s = self.cfg.sdsat
        if s.token_id is not None and s.token_id >= record["vocab_size"]:
            raise RecipeError(f"`sdsat.token_id` {s.token_id} is outside the target's vocabulary of {record['vocab_size']}")
        if s.init_token_id is not None and s.init_token_id >= record["vocab_size"]:
            raise RecipeError(f"`sdsat.init_token_id` {s.init_token_id} is outside the target's vocabulary of {record['vocab_size']}")
        self.sa_ids, self.new_rows = self._slot_ids(record.get("tokenizer_size") or record["vocab_size"])
        vocab = max(record["vocab_size"], max(self.sa_ids) + 1)
        return SdsatDraft(SdsatConfig(record["hidden_size"], vocab, s.num_sa_tokens, list(self.sa_ids)))

    def _slot_ids(self, tokenizer_size: int) -> tuple[list[int], list[int]]:
        """(the id of every slot, the new rows among them): `sdsat.token_id` k times, else new tokens
        at the tokenizer's next ids (one per slot, or one shared)."""
        s = self.cfg.sdsat
        k = s.num_sa_tokens
        if s.token_id is not None:
            return [s.token_id] * k, []
        rows = list(range(tokenizer_size, tokenizer_size + (k if s.distinct_tokens else 1)))
        return (rows if s.distinct_tokens else rows * k), rows

    def prepare_target(self, model: torch.nn.Module) -> torch.nn.Module:
        """Add and initialise the SA rows, then make the target trainable (LoRA + the SA rows, or every weight)."""
        # Step 1: embedding rows for the new SA tokens (the tokenizer gets them at export).
        s = self.cfg.sdsat
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            raise RecipeError("SDSAT training reads the target's lm_head as a matrix, and this target's lm_head has a bias: train SDSAT on a target whose head has none (Llama, Qwen, Mistral, ...)")
        if self.new_rows:
            rows = max(self.new_rows) + 1
            if rows > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(rows, mean_resizing=False)
            start = self.new_rows[0]
            with torch.no_grad():
                for weight in {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values():
                    weight[self.new_rows] = embedding_init(weight[:start], s.init_token_id).to(weight.dtype)
        # Step 2: what trains.
        if s.finetune == "full":
            self.original = copy.deepcopy(model).eval().requires_grad_(False)
            return model.requires_grad_(True).train()
        from peft import LoraConfig, get_peft_model

        modules = s.lora_target_modules
        targets = modules if modules == "all-linear" else [name.strip() for name in modules.split(",")]
        head = next((name for name, child in model.named_modules() if child is model.get_output_embeddings()), "lm_head").rsplit(".", 1)[-1]
        if targets != "all-linear" and head in targets:
            raise RecipeError(f"`sdsat.lora_target_modules` names the output head `{head}`: SDSAT trains its SA rows of the head and reads the rest as the frozen matrix, so a LoRA there would get no gradient; leave `{head}` out")
        top = None
        if s.lora_layers:
            top = top_layer_indices(model, s.lora_layers, "sdsat.lora_layers")
            if targets == "all-linear":  # peft takes layers_to_transform with module names only
                targets = linear_names(model)
        lora = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=targets, layers_to_transform=top, trainable_token_indices=sorted(set(self.sa_ids)), task_type="CAUSAL_LM")
        return self._hold_in_stage_1(get_peft_model(model, lora))

    def _hold_in_stage_1(self, model: torch.nn.Module) -> torch.nn.Module:
        """Zero the LoRA weights' gradients while `self.joint` is False: lora_B stays 0, so in stage 1
        only the SA rows move and the adapters leave every output unchanged. (Zero gradients, not
        frozen weights, so checkpoints and DDP see the same trainable tensors in both stages.)"""
        for name, param in model.named_parameters():
            if "lora_" in name and param.requires_grad:
                param.register_hook(lambda grad: grad if self.joint else torch.zeros_like(grad))
        return model

    # -- the loss --
    def num_positions(self, training: bool) -> int:
        return self.cfg.sdsat.num_sa_tokens

    def label_counts(self, loss_mask: torch.Tensor) -> torch.Tensor:
        """[k] trained entries per slot (the same anchors the loss samples), then the standard positions."""
        k = self.cfg.sdsat.num_sa_tokens
        labels = slot_labels(torch.zeros_like(loss_mask), loss_mask, *self._anchors_and_spans(loss_mask), k)  # no block, no mask
        trained = (labels != IGNORE).reshape(loss_mask.shape[0], -1, k).sum((0, 1)).float()
        return torch.cat([trained, standard_positions(loss_mask).sum().float()[None]])

    def losses(self, module, batch: dict, training: bool, denominators: torch.Tensor | None = None):
        """The slots' `HeadLosses`; in validation also the standard-token guards (see `acceptance_metrics`)."""
        branch, hidden, bottom = self._forward(module, batch, grad=training)
        out = self._slot_losses(module, branch, hidden, batch, with_accuracy=not training, denominators=denominators)
        if not training:
            with torch.no_grad():
                original, original_rows, tuned_hidden = self._standard_states(module, batch, hidden, bottom)
                self.faithfulness.add(module.global_step, original_rows.logits(original), output_rows(module.target).logits(tuned_hidden))
        return out

    def training_loss(self, module, batch: dict, denominators: torch.Tensor | None = None):
        # Step 1: stage 1 trains the SA rows only; stage 2 the adapters too.
        s = self.cfg.sdsat
        self.joint = module.global_step >= s.sa_only_steps
        # Step 2: one forward over standard tokens + SA side branch; the slots' weighted CE.
        branch, hidden, bottom = self._forward(module, batch, grad=True)
        slots = self._slot_losses(module, branch, hidden, batch, with_accuracy=False, denominators=None if denominators is None else denominators[:-1])
        # Step 3: the standard-token term against the original model (or the data).
        std_denominator = None if denominators is None else denominators[-1]
        if s.standard_loss == "kl":
            standard = self._standard_kl(module, batch, hidden, bottom, std_denominator)
        else:
            tuned = output_rows(module.target).logits(self._tuned_states(batch, hidden))
            next_tokens = batch["input_ids"][:, 1:][standard_positions(batch["loss_mask"])[:, :-1]]
            standard = standard_ce(tuned, next_tokens, std_denominator)
        loss = s.standard_weight * standard + s.sa_weight * slots.loss
        logs = {f"train/standard_{s.standard_loss}": standard.detach(), "train/sa_loss": slots.loss.detach()}
        return loss, {**logs, **{f"train/slot{m + 1}_loss": v for m, v in enumerate(slots.per_head)}}

    def _anchors_and_spans(self, loss_mask):
        """The batch's anchors [B, A] and their trained span lengths [B, A] (fixed by the batch, see `batch_seed`)."""
        s = self.cfg.sdsat
        anchors = sample_anchors(loss_mask, s.anchors_per_sequence, self.cfg.seed)
        return anchors, span_lengths(anchors, s.num_sa_tokens, s.poisson_lambda if s.span == "poisson" else None, batch_seed(loss_mask, self.cfg.seed))

    def _branch(self, input_ids, attention_mask, loss_mask, dtype):
        anchors, spans = self._anchors_and_spans(loss_mask)
        return side_branch(input_ids, attention_mask, loss_mask, anchors, torch.tensor(self.sa_ids), spans, dtype)

    def _forward(self, module, batch: dict, grad: bool):
        """(the side branch, the tuned target's last hidden states over it [B, T + A k, H], the output of
        the last layer without adapters over the standard tokens, or None when every layer has them)."""
        dtype = base_weight(module.target.get_input_embeddings()).dtype
        branch = self._branch(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], dtype)
        decoder = module.target.get_decoder()
        with contextlib.nullcontext() if grad else torch.no_grad():
            inputs = self._inputs(module.target)
            if not self.cfg.sdsat.lora_layers:
                out = decoder(**inputs(branch.input_ids), attention_mask=branch.attention_mask, position_ids=branch.position_ids)
                return branch, out.last_hidden_state, None
            # Step 1: the standard tokens, the layers below the adapters without gradient (their output kept for the original's forward).
            layers = decoder_layers(module.target)
            split, length = len(layers) - self.cfg.sdsat.lora_layers, batch["input_ids"].shape[1]
            cache = DynamicCache(config=module.target.config)
            with without_grad_below(layers, split), recorded_output(layers[split - 1] if split else None) as bottom:
                standard = decoder(**inputs(batch["input_ids"]), attention_mask=batch["attention_mask"], cache=cache, use_cache=True).last_hidden_state
            # Step 2: the SA slots alone, attending to the standard tokens' cached keys and values (the branch mask's slot rows).
            slots = decoder(**inputs(branch.input_ids[:, length:]), attention_mask=branch.attention_mask[:, :, length:], position_ids=branch.position_ids[:, length:], cache=cache, use_cache=True).last_hidden_state
        return branch, torch.cat([standard, slots], dim=1), bottom.get("output")

    @staticmethod
    def _inputs(target):
        """ids -> the decoder's input keywords: embeddings gathered by `input_rows` (peft's trainable tokens would copy
        the whole matrix per call), or the ids themselves when the embedding is not a plain lookup."""
        rows = input_rows(target)
        return (lambda ids: {"input_ids": ids}) if rows is None else (lambda ids: {"inputs_embeds": rows.rows(ids)})

    def _slot_losses(self, module, branch, hidden, batch, with_accuracy, denominators):
        length = batch["input_ids"].shape[1]
        s = self.cfg.sdsat
        return slot_losses(hidden[:, length:], branch.labels, branch.slots, output_rows(module.target).logits, s.num_sa_tokens, decay=s.slot_decay, with_accuracy=with_accuracy, denominators=denominators)

    def _standard_kl(self, module, batch: dict, hidden: torch.Tensor, bottom, denominator) -> torch.Tensor:
        """KL(original || tuned) at the standard positions, over every token or over the batch's support (`sdsat.kl_top_k`)."""
        # Step 1: the support, chosen from the original's logits in bfloat16 (a matmul over all V rows at a third of the cost).
        original, original_rows, tuned_hidden = self._standard_states(module, batch, hidden, bottom)
        top_k, support = self.cfg.sdsat.kl_top_k, None
        with torch.no_grad():
            if 0 < top_k < original_rows.weight.shape[0]:
                support = top_k_support(original.to(torch.bfloat16) @ self._bfloat16(original_rows.weight).T, top_k, torch.tensor(sorted(set(self.sa_ids)), device=original.device))
            original_logits = original_rows.logits(original, support)
        # Step 2: both models' float32 logits over the same rows.
        return standard_kl(original_logits, output_rows(module.target).logits(tuned_hidden, support), denominator)

    def _bfloat16(self, weight: torch.Tensor) -> torch.Tensor:
        """A bfloat16 copy of the original's (frozen) output matrix, made once and renewed when another matrix, or
        the same one after an in-place write through autograd, comes in (writes through `.data` are not seen: the matrix is frozen)."""
        key = (id(weight), weight.data_ptr(), tuple(weight.shape), weight._version, weight.device)
        if getattr(self, "_bf16_key", None) != key:
            self._bf16_key, self._bf16_weight = key, weight.detach().to(torch.bfloat16)
        return self._bf16_weight

    def _standard_states(self, module, batch: dict, hidden: torch.Tensor, bottom=None) -> tuple[torch.Tensor, TunedRows, torch.Tensor]:
        """(the original's last hidden states [N, H] without gradient, its output rows, the tuned target's last hidden
        states [N, H]) at the standard positions (with `bottom`, the layers below the adapters replay it instead of running again)."""
        select = standard_positions(batch["loss_mask"])
        tuned = self._tuned_states(batch, hidden)
        below = list(decoder_layers(module.target))[: -self.cfg.sdsat.lora_layers] if bottom is not None else []
        with torch.no_grad(), self._original_model(module.target) as original, replayed(below, bottom):
            states = original.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            return states[select], TunedRows(base_weight(original.get_output_embeddings())), tuned

    @staticmethod
    def _tuned_states(batch: dict, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] the tuned target's last hidden states at the standard positions."""
        return hidden[:, : batch["input_ids"].shape[1]][standard_positions(batch["loss_mask"])]

    @contextlib.contextmanager
    def _original_model(self, target):
        """The target as it was before training (SA rows at their initial value): the adapters
        switched off, or the frozen copy of a full fine-tune."""
        if self.original is not None:
            yield self.original.to(target.device)
            return
        with target.disable_adapter():
            yield target

    def parameter_groups(self, module) -> list[dict]:
        """The SA rows at optim.lr * sdsat.sa_lr_multiplier, every other trainable target weight at optim.lr."""
        lr = self.cfg.optim.lr
        named = [(n, p) for n, p in module.target.named_parameters() if p.requires_grad]
        rows = [p for n, p in named if "trainable_tokens" in n]
        rest = [p for n, p in named if "trainable_tokens" not in n]
        return [g for g in ({"params": rows, "lr": lr * self.cfg.sdsat.sa_lr_multiplier}, {"params": rest, "lr": lr}) if g["params"]]

    # -- validation and export --
    def acceptance_metrics(self, rank_accuracy: torch.Tensor) -> dict[str, float]:
        """The chain's expected accept length over the k slots, and the standard-token guards."""
        return {**super().acceptance_metrics(rank_accuracy), **self.faithfulness.metrics()}

    def export_extras(self, target, out: Path) -> dict[str, Any]:
        """The tuned target in out/target: LoRA merged, SA tokens in its tokenizer, k and their ids in its config.json."""
        # Step 1: the adapter alone (if asked), then the merged model (this hook runs on a fresh method object: nothing is kept from training).
        s = self.cfg.sdsat
        lora = hasattr(target.model, "merge_and_unload")
        if s.save_adapter and lora:
            target.model.save_pretrained(out / ADAPTER_DIR)
        model = target.model.merge_and_unload() if lora else target.model
        target.model = model
        # Step 2: the SA tokens in the tokenizer, at the ids training used.
        tokenizer = target.tokenizer
        sa_ids, new_rows = self._slot_ids(len(tokenizer))
        if new_rows:
            tokenizer.add_special_tokens({"additional_special_tokens": [SA_TOKEN_FORMAT.format(j) for j in range(len(new_rows))]}, replace_extra_special_tokens=False)
            if tokenizer.convert_tokens_to_ids(SA_TOKEN_FORMAT.format(0)) != new_rows[0]:
                raise RecipeError(f"the tokenizer did not take the SA tokens at ids {new_rows}; export from the run's own target")
        # Step 3: k and the ids in the config; one folder transformers loads.
        entry = SdsatConfig(model.config.hidden_size, model.config.vocab_size, s.num_sa_tokens, sa_ids)
        setattr(model.config, TARGET_CONFIG_KEY, sdsat_config_entry(entry))
        model.save_pretrained(out / TUNED_TARGET_DIR)
        tokenizer.save_pretrained(out / TUNED_TARGET_DIR)
        return {"finetuned_weights": TUNED_TARGET_DIR}
