"""A judge: which draft tokens that exact verification rejects are still fine to keep (Judge
Decoding, Bachmann et al. 2025; labels mined as in AutoJudge, Garipov et al. 2025). LOSSY by design.

A judge reads one feature vector per draft token: the target's last hidden state (after the
final norm) at the draft token's position of the verification forward, which serving computes
anyway. It outputs the logit of p(important): the probability that replacing the target's own
token by this draft token changes the outcome of the answer. The runtime keeps a rejected draft
token when p(important) < threshold.

A judge folder holds `config.json` (`JudgeConfig` plus the target's facts and the training
metrics) and `model.safetensors` (standardisation statistics and the layers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specdec.models.base import DraftMismatchError
from specdec.models.small_head import SmallHead

JUDGE_TYPE = "judge"
"""Value of `config.json`'s `draft_type` in a judge folder (it is not a draft: `load_draft` refuses it)."""


@dataclass
class JudgeConfig:
    """Shape and serving default of a judge head."""

    feature_size: int
    """Length of the feature vector: the target's hidden size."""
    mlp_hidden: int = 0
    """Width of the one hidden layer of a small MLP; 0: logistic regression (one Linear(F -> 1))."""
    threshold: float = 0.5
    """Serving default: a draft token the target rejects is kept when p(important) < threshold."""
    target: dict = field(default_factory=dict)
    """The target the features came from (`name_or_path`, `hidden_size`)."""


class JudgeHead(SmallHead):
    """Standardised features -> the logit of p(important): Linear(F -> 1), or Linear -> SiLU -> Linear."""

    head_type, config_class = JUDGE_TYPE, JudgeConfig
    what, trained_by, option = "a judge", "specdec-train recipe=judge (its judge/)", "judge=DIR"

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        f = config.feature_size
        self.add_standardisation(f)
        if config.mlp_hidden > 0:
            self.layers = nn.Sequential(nn.Linear(f, config.mlp_hidden), nn.SiLU(), nn.Linear(config.mlp_hidden, 1))
        else:
            self.layers = nn.Sequential(nn.Linear(f, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[..., F] -> [...] logits of p(important)."""
        return self.layers(self.standardise(features)).squeeze(-1)

    @torch.no_grad()
    def p_important(self, features: torch.Tensor) -> torch.Tensor:
        """[..., F] -> [...] p(important) in [0, 1]."""
        return torch.sigmoid(self(features))

    def check_target(self, hidden_size: int) -> None:
        """Raise `DraftMismatchError` unless the target's hidden size is this judge's feature size."""
        if hidden_size != self.config.feature_size:
            raise DraftMismatchError(
                f"this judge reads {self.config.feature_size}-dimensional target states but the target's hidden size is {hidden_size}: "
                f"use the target it was trained on ({self.config.target.get('name_or_path', 'see its config.json')})"
            )

    def save_pretrained(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write `config.json` (marked lossy) and `model.safetensors` into `directory`, each atomically."""
        return super().save_pretrained(directory, {"lossy": True, **(extra or {})})

    @classmethod
    def check_config(cls, config: dict, path: Path) -> None:
        if not isinstance(config.get("feature_size"), int):
            raise DraftMismatchError(f"{path} lacks an integer feature_size; restore the config.json written with the judge")


def read_judge_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config.json of a judge folder; a missing folder or a folder that is not a judge raises a clear error."""
    return JudgeHead.read_config(directory)


def load_judge(directory: str | os.PathLike) -> JudgeHead:
    """Rebuild the judge saved by `JudgeHead.save_pretrained` (no pickles are read)."""
    return JudgeHead.from_pretrained(directory)
