"""EAGLE-1 and EAGLE-3 feature-level drafters on the frozen target (training-time test unrolled)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from specdec.models.decoder import LayerShape
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter, default_layer_ids
from specdec.train.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, RecipeError
from specdec.train.eagle_losses import EagleObjectives, eagle_losses
from specdec.train.methods import TrainingMethod, install_draft_vocab, register_method


@dataclass
class EagleSection:
    ttt_steps: int = 1
    """Draft steps unrolled in training (training-time test): step i>0 feeds the drafter its own outputs (EAGLE-1: 1; EAGLE-3: 7 in EAGLE, 3 in vLLM's trainer)."""
    step_decay: float = 0.8
    """Unrolled step i's loss weight is step_decay**i."""
    feature_noise: float = 0.0
    """Half-width of the uniform noise added to the target features the drafter reads (EAGLE-1: 0.1)."""
    feature_loss_weight: float = 0.0
    """Weight of the SmoothL1 feature regression (EAGLE-1: 1.0; EAGLE-3 has none)."""
    ce_loss_weight: float = 1.0
    """Weight of the soft cross-entropy against the target's distribution (EAGLE-1: 0.1); 0 trains on the other terms alone (e.g. the LK loss)."""
    hass_topk: int = 10
    """K of `hass_topk_weight`'s term: the target's K most likely draft-vocabulary tokens (HASS, arXiv 2408.15766, uses 10)."""
    hass_topk_weight: float = 0.0
    """HASS harmonized objective distillation (arXiv 2408.15766): weight of -sum over the target's top-K tokens of p_v log q_v, beside the soft CE (HASS: 1.0; 0 = off)."""
    hass_context: bool = False
    """Harmonized context alignment (after HASS, arXiv 2408.15766): training step i > 0 sees the drafter's own step-(i-1) features for every prefix position, not the target's (specdec.train.eagle_losses.context_aligned_mask has the exact layout); validation keeps the decode-time layout."""
    lk_loss_weight: float = 0.0
    """LK-style loss (arXiv 2602.23881): weight of 1 - sum_v min(p_v, q_v), the draft's rejection rate under the target's distribution restricted to the draft vocabulary (0 = off)."""
    griffin_threshold: float = 0.0
    """GRIFFIN-style token masking (arXiv 2502.11018): at training step i >= 1 drop the anchors whose chain gave an earlier step's label a draft probability under this (decoding rejects that chain before step i); validation is never masked (0 = off)."""
    val_steps: int = 4
    """Draft positions whose accuracy validation measures (unrolled like training)."""

    ranges: ClassVar[dict] = {
        "ttt_steps": AT_LEAST_1, "val_steps": AT_LEAST_1, "step_decay": POSITIVE,
        "feature_noise": NON_NEGATIVE, "feature_loss_weight": NON_NEGATIVE, "ce_loss_weight": NON_NEGATIVE,
        "hass_topk": AT_LEAST_1, "hass_topk_weight": NON_NEGATIVE, "lk_loss_weight": NON_NEGATIVE,
        "griffin_threshold": ("within [0, 1) (0 = off)", lambda v: 0 <= v < 1),
    }


@dataclass
class Eagle1Section:
    draft_vocab_size: Optional[int] = None
    """Size of the drafter's own vocabulary, the most frequent training tokens: its logits use only the target lm_head's rows for them (0 or null = the full vocabulary)."""
    min_vocab_coverage: float = 0.9
    """Warn when the draft vocabulary covers less than this share of the training tokens."""

    ranges: ClassVar[dict] = {"draft_vocab_size": ("0 (full vocabulary) or a positive size", lambda v: v >= 0), "min_vocab_coverage": FRACTION}


@dataclass
class Eagle3Section:
    draft_vocab_size: int = 8192
    """Size of the drafter's own vocabulary: the most frequent tokens of the training data."""
    min_vocab_coverage: float = 0.9
    """Warn when the draft vocabulary covers less than this share of the training tokens."""
    layer_ids: Optional[list[int]] = None
    """Target hidden states fused as input, as indices into Hugging Face's output_hidden_states (0 = embeddings, i = output of layer i-1); null: EAGLE's [2, L//2, L-3]."""
    fc_norm: bool = False
    """EAGLE-3.1 (as vLLM speculators' `fc_norm`): an RMSNorm on each fused target layer's state before the fc projection; exported to format=speculators, refused by format=sglang."""
    norm_output: bool = False
    """EAGLE-3.1 (as vLLM speculators' `norm_output`): the drafter's output hidden state passes the final norm before the next draft step reads it (stops its magnitude growing over unrolled steps); exported to format=speculators, refused by format=sglang."""

    ranges: ClassVar[dict] = {"draft_vocab_size": AT_LEAST_1, "min_vocab_coverage": FRACTION}


@register_method
class Eagle1Method(TrainingMethod):
    """EAGLE-1: fc(cat(E(x), f)) and one decoder layer, regressing the target's next feature."""

    name, draft_type = "eagle1", Eagle1Drafter.draft_type
    sections = {"eagle": EagleSection, "eagle1": Eagle1Section}
    reads_target_features = True

    @classmethod
    def check_recipe(cls, config) -> None:
        e = config.eagle
        if e.val_steps < e.ttt_steps:
            raise RecipeError(f"`eagle.val_steps` ({e.val_steps}) must be at least `eagle.ttt_steps` ({e.ttt_steps})")
        if e.ce_loss_weight + e.feature_loss_weight + e.hass_topk_weight + e.lk_loss_weight == 0:
            raise RecipeError("every EAGLE loss weight is 0 (eagle.ce_loss_weight, feature_loss_weight, hass_topk_weight, lk_loss_weight): set at least one")

    def build_draft(self, record: dict, lm_head: torch.Tensor, train_rows=None):
        """A fresh drafter; with `eagle1.draft_vocab_size` and `train_rows` its vocabulary is the most frequent training labels (else it comes from the checkpoint)."""
        torch.manual_seed(self.cfg.seed)
        e1, vocab = self.cfg.eagle1, record["vocab_size"]
        size = min(e1.draft_vocab_size, vocab) if e1.draft_vocab_size else None
        draft = Eagle1Drafter(Eagle1Config(record["hidden_size"], vocab, draft_vocab_size=size, layer=LayerShape(**record["layer_shape"])))
        if size is not None and train_rows is not None:
            install_draft_vocab(draft, train_rows, e1.min_vocab_coverage, "eagle1.draft_vocab_size", lm_head)
        return draft

    def num_positions(self, training: bool) -> int:
        return self.cfg.eagle.ttt_steps if training else self.cfg.eagle.val_steps

    def objectives(self, training: bool) -> EagleObjectives:
        """The `eagle` section's loss terms; validation runs the decode-time layout (no harmonized context, no GRIFFIN masking)."""
        e = self.cfg.eagle
        return EagleObjectives(
            ce_weight=e.ce_loss_weight, feature_weight=e.feature_loss_weight, hass_topk=e.hass_topk,
            hass_topk_weight=e.hass_topk_weight, lk_weight=e.lk_loss_weight,
            griffin_threshold=e.griffin_threshold if training else 0.0, hass_context=bool(e.hass_context) and training,
        )

    def losses(self, module, batch: dict, training: bool, denominators: torch.Tensor | None = None):
        features, final = module.states(batch)
        embed, lm_head = module.weights()
        e = self.cfg.eagle
        noise = (torch.rand_like(features) * 2 - 1) * e.feature_noise if training and e.feature_noise > 0 else None
        return eagle_losses(
            module.draft, features, final, batch["input_ids"], batch["loss_mask"], embed, lm_head,
            steps=self.num_positions(training), decay=e.step_decay, objectives=self.objectives(training),
            noise=noise, with_accuracy=not training, denominators=denominators,
        )


@register_method
class Eagle3Method(Eagle1Method):
    """EAGLE-3: three target layers fused, its own reduced-vocabulary lm_head."""

    name, draft_type = "eagle3", Eagle3Drafter.draft_type
    sections = {"eagle": EagleSection, "eagle3": Eagle3Section}

    def feature_layer_ids(self, num_layers: int) -> list[int]:
        """`eagle3.layer_ids` (default EAGLE's [2, L//2, L-3]), checked against the target's depth."""
        ids = list(self.cfg.eagle3.layer_ids) if self.cfg.eagle3.layer_ids else default_layer_ids(num_layers)
        if not all(0 <= i <= num_layers for i in ids):
            raise RecipeError(f"`eagle3.layer_ids` {ids} must index the target's output_hidden_states, 0..{num_layers} (0 = embeddings, i = output of layer i-1)")
        return ids

    def build_draft(self, record: dict, lm_head: torch.Tensor, train_rows=None):
        """A fresh drafter; with `train_rows` its vocabulary is the most frequent training labels (else it comes from the checkpoint)."""
        torch.manual_seed(self.cfg.seed)
        e3, vocab = self.cfg.eagle3, record["vocab_size"]
        config = Eagle3Config(record["hidden_size"], vocab, draft_vocab_size=min(e3.draft_vocab_size, vocab), layer_ids=self.feature_layer_ids(record["num_layers"]), layer=LayerShape(**record["layer_shape"]), fc_norm=bool(e3.fc_norm), norm_output=bool(e3.norm_output))
        draft = Eagle3Drafter(config)
        if train_rows is not None:
            install_draft_vocab(draft, train_rows, e3.min_vocab_coverage, "eagle3.draft_vocab_size", lm_head)
        return draft
