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

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from specdec.models.base import CONFIG_NAME, WEIGHTS_NAME, DraftMismatchError, atomic_write, config_from_dict, specdec_version

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


class JudgeHead(nn.Module):
    """Standardised features -> the logit of p(important): Linear(F -> 1), or Linear -> SiLU -> Linear."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        f = config.feature_size
        self.register_buffer("feature_mean", torch.zeros(f))
        self.register_buffer("feature_std", torch.ones(f))
        if config.mlp_hidden > 0:
            self.layers = nn.Sequential(nn.Linear(f, config.mlp_hidden), nn.SiLU(), nn.Linear(config.mlp_hidden, 1))
        else:
            self.layers = nn.Sequential(nn.Linear(f, 1))

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Take the mean and standard deviation of each feature from `features` [N, F] (the training set)."""
        self.feature_mean.copy_(features.float().mean(0))
        self.feature_std.copy_(features.float().std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[..., F] -> [...] logits of p(important)."""
        x = (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        return self.layers(x).squeeze(-1)

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
        """Write `config.json` and `model.safetensors` into `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"draft_type": JUDGE_TYPE, **dataclasses.asdict(self.config), "lossy": True, "specdec_version": specdec_version(), **(extra or {})}
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
        return directory


def read_judge_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config.json of a judge folder; a missing folder or a folder that is not a judge raises a clear error."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: judge=DIR must name the judge/ folder that `specdec-train recipe=judge` wrote")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DraftMismatchError(f"{path} is not valid JSON ({exc}); restore the config.json written with the judge") from None
    if not isinstance(config, dict) or config.get("draft_type") != JUDGE_TYPE:
        found = config.get("draft_type") if isinstance(config, dict) else None
        raise DraftMismatchError(f"{directory} holds a {found!r} folder, not a judge: pass the judge/ folder that `specdec-train recipe=judge` wrote")
    return config


def load_judge(directory: str | os.PathLike) -> JudgeHead:
    """Rebuild the judge saved by `JudgeHead.save_pretrained` (no pickles are read)."""
    directory = Path(directory)
    values = read_judge_config(directory)
    if not isinstance(values.get("feature_size"), int):
        raise DraftMismatchError(f"{directory / CONFIG_NAME} lacks an integer feature_size; restore the config.json written with the judge")
    judge = JudgeHead(config_from_dict(JudgeConfig, values))
    try:
        tensors = load_file(directory / WEIGHTS_NAME)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory / WEIGHTS_NAME} does not exist: the judge folder is incomplete; train it again or restore the file") from None
    except SafetensorError as exc:
        raise DraftMismatchError(f"{directory / WEIGHTS_NAME} is damaged ({exc}); train the judge again or restore the file") from None
    expected = judge.state_dict()
    if expected.keys() != tensors.keys() or any(expected[k].shape != tensors[k].shape for k in expected):
        raise DraftMismatchError(f"the weights in {directory / WEIGHTS_NAME} do not fit its {CONFIG_NAME} (feature_size, mlp_hidden): restore the files written together")
    judge.load_state_dict(tensors)
    return judge.eval()
