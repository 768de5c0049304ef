"""The Learn2PD filter (Bao et al., 2025): during block decoding of a masked-diffusion LM, one logit
per position of the block saying "this position already holds its final token", from the block's
per-position top-1 confidences (1.0 where a position is already decoded). The runtime unmasks
every masked position whose sigmoid is above the serving threshold, beside the usual most
confident one(s) (`specdec.runtime.diffusion.LowConfidenceRemasking`).

A filter folder holds `config.json` (`Learn2PDConfig`, the diffusion target and schedule its oracle
data came from, training metrics) and `model.safetensors` (`specdec.models.small_head`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from specdec.models.small_head import SmallHead

FILTER_TYPE = "learn2pd_filter"
"""Value of `config.json`'s `draft_type` in a filter folder."""


@dataclass
class Learn2PDConfig:
    """Shape and serving default of a Learn2PD filter."""

    block_length: int = 32
    """Positions per block: the filter reads and scores this many (it serves only that block length)."""
    hidden: int = 64
    """Width of the two hidden layers (block_length -> hidden -> hidden -> block_length; about 8k parameters at 32 / 64)."""
    threshold: float = 0.96
    """Serving default: a masked position is unmasked early when the filter's probability is above this (the paper's 0.96)."""
    target: dict = field(default_factory=dict)
    """The diffusion target and block schedule whose oracle decodes the filter learned from."""


class Learn2PDFilter(SmallHead):
    """[.., block_length] confidences -> [.., block_length] logits of "this position is final"."""

    head_type, config_class = FILTER_TYPE, Learn2PDConfig
    what, trained_by, option = "a Learn2PD filter", "specdec-train recipe=learn2pd (its filter/)", "filter=DIR"

    def __init__(self, config: Learn2PDConfig):
        super().__init__()
        self.config = config
        length, hidden = config.block_length, config.hidden
        self.layers = nn.Sequential(nn.Linear(length, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, length))

    def forward(self, confidences: torch.Tensor) -> torch.Tensor:
        return self.layers(confidences.to(self.layers[0].weight.dtype))

    @torch.no_grad()
    def p_final(self, confidences: torch.Tensor) -> torch.Tensor:
        """[.., L] confidences -> [.., L] probabilities that each position already holds its final token."""
        return torch.sigmoid(self(confidences))


def load_filter(directory: str | os.PathLike) -> Learn2PDFilter:
    """Rebuild the filter `Learn2PDFilter.save_pretrained` wrote (no pickles are read)."""
    return Learn2PDFilter.from_pretrained(directory)
