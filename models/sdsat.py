"""SDSAT (Liu & Zhu, 2024): a target fine-tuned to draft for itself with semantic adaptive tokens.

k special "semantic adaptive" (SA) tokens placed after the last verified token x_t make the
tuned target predict the tokens after the next one: SA slot m (m = 1..k) sits at position t+m
and predicts x_{t+m+1}, while ordinary tokens never see an SA token and keep their behaviour.
The slots' ids are `sa_token_ids` (k distinct ids, or one id repeated for every slot).

The "draft" is the tuned target itself, so an `SdsatDraft` holds no weights: its config.json
records k, the slot ids and the measured per-slot accuracies, and the tuned target (LoRA merged,
SA tokens in its tokenizer and in its config.json's `sdsat` entry) lives in the draft folder's
`target/` subfolder, which any transformers user loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specdec.models.base import DraftMismatchError, DraftModel, register_draft

SA_TOKEN_FORMAT = "<|sa_{}|>"
"""Text of the j-th SA token specdec adds to a tokenizer (j = 0-based)."""
TUNED_TARGET_DIR = "target"
"""Subfolder of an SDSAT draft folder that holds the tuned target (what any transformers user loads)."""
TARGET_CONFIG_KEY = "sdsat"
"""Entry of the tuned target's config.json that records k and the slot ids (see `sdsat_config_entry`)."""


@dataclass
class SdsatConfig:
    hidden_size: int
    """Hidden size H of the tuned target."""
    vocab_size: int
    """Vocabulary size of the tuned target (its embedding rows, the SA tokens' included)."""
    num_sa_tokens: int = 5
    """k: SA slots placed after the last verified token; slot m predicts the token m+1 positions past it."""
    sa_token_ids: list[int] = field(default_factory=list)
    """Token id of every slot, slot 1 first (k entries; one id repeated when the slots share a token)."""
    head_rank_accuracy: list[list[float]] | None = None
    """Measured on held-out data: [m][r] = share of labels that were slot m+1's r-th candidate (builds trees)."""

    @property
    def num_heads(self) -> int:
        """Draft positions per step (k), under the name the static-tree machinery reads."""
        return self.num_sa_tokens


@register_draft
class SdsatDraft(DraftModel):
    """What the runtime needs to draft with a tuned SDSAT target: the slot ids (no weights of its own)."""

    draft_type = "sdsat"
    config_class = SdsatConfig

    def __init__(self, config: SdsatConfig):
        super().__init__(config)
        if len(config.sa_token_ids) != config.num_sa_tokens:
            raise DraftMismatchError(f"an SDSAT draft with num_sa_tokens={config.num_sa_tokens} needs that many sa_token_ids, got {len(config.sa_token_ids)}")
        bad = [i for i in config.sa_token_ids if not 0 <= i < config.vocab_size]
        if bad:
            raise DraftMismatchError(f"SA token ids {bad} are outside the tuned target's vocabulary of {config.vocab_size}")
        self.register_buffer("sa_ids", torch.tensor(config.sa_token_ids, dtype=torch.long), persistent=False)

    def slot_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[k] the SA token id of every slot."""
        return self.sa_ids if device is None else self.sa_ids.to(device)


def sdsat_config_entry(config: SdsatConfig) -> dict:
    """The `sdsat` entry written into the tuned target's config.json (k and the slot ids)."""
    return {"num_sa_tokens": config.num_sa_tokens, "sa_token_ids": list(config.sa_token_ids)}


def draft_from_target_config(model_config, hidden_size: int | None = None) -> SdsatDraft:
    """The SdsatDraft a tuned target's own config (its `sdsat` entry) describes; a clear error for a target without one."""
    entry = getattr(model_config, TARGET_CONFIG_KEY, None)
    if not entry:
        raise DraftMismatchError("this model is not an SDSAT-tuned target: its config.json has no `sdsat` entry (train one with specdec-train recipe=sdsat)")
    return SdsatDraft(SdsatConfig(hidden_size or model_config.hidden_size, model_config.vocab_size, entry["num_sa_tokens"], list(entry["sa_token_ids"]), entry.get("head_rank_accuracy")))


def embedding_init(embeddings: torch.Tensor, init_token: int | None) -> torch.Tensor:
    """[H] initial embedding of an SA token: a copy of `init_token`'s row, else the mean of every row."""
    return embeddings.mean(0) if init_token is None else embeddings[init_token].clone()

