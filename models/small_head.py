"""The folder format and loading of specdec's small heads (acceptance heads, Learn2PD filters): tiny
MLPs fitted on recorded data, not drafts. A head folder holds `config.json` (the head's config
dataclass, a `draft_type` tag naming the kind of head, the specdec version and whatever the trainer
adds, e.g. metrics) and `model.safetensors`; no pickles are read. A subclass sets `head_type`,
`config_class`, `what`, `trained_by` and `option`, and may check its config further in `check_config`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from specdec.models.base import CONFIG_NAME, WEIGHTS_NAME, DraftMismatchError, atomic_write, config_from_dict, specdec_version


class SmallHead(nn.Module):
    """Base of a small head with a config dataclass in `self.config`."""

    head_type: ClassVar[str]
    """config.json's `draft_type` in this head's folders (`load_draft` refuses them: they are not drafts)."""
    config_class: ClassVar[type]
    """The config dataclass."""
    what: ClassVar[str]
    """The head's name in error messages (e.g. `an acceptance head`)."""
    trained_by: ClassVar[str]
    """The command that writes such a folder, for error messages."""
    option: ClassVar[str]
    """The option that names such a folder (e.g. `acceptance_head=DIR`), for error messages."""

    def add_standardisation(self, features: int) -> None:
        """Register the per-feature mean and standard deviation buffers that `standardise` applies (identity until `set_standardisation`)."""
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_std", torch.ones(features))

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Take each feature's mean and standard deviation from `features` [N, F] (the training set)."""
        self.feature_mean.copy_(features.float().mean(0))
        self.feature_std.copy_(features.float().std(0).clamp_min(1e-6))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std

    def save_pretrained(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write `config.json` and `model.safetensors` into `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        values = {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(self.config).items()}
        config = {"draft_type": self.head_type, **values, "specdec_version": specdec_version(), **(extra or {})}
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
        return directory

    @classmethod
    def check_config(cls, config: dict, path: Path) -> None:
        """Raise DraftMismatchError for a config this version cannot serve (default: none)."""

    @classmethod
    def read_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        """The config.json of a head folder; a missing folder, or one holding another kind, raises a clear error."""
        directory = Path(directory)
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {cls.option} must name the folder `{cls.trained_by}` wrote")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DraftMismatchError(f"{path} is not valid JSON ({exc}); restore the config.json written with {cls.what}") from None
        if not isinstance(config, dict) or config.get("draft_type") != cls.head_type:
            found = config.get("draft_type") if isinstance(config, dict) else None
            raise DraftMismatchError(f"{directory} holds a {found!r} folder, not {cls.what}: pass the folder `{cls.trained_by}` wrote")
        cls.check_config(config, path)
        return config

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "SmallHead":
        """Rebuild the head `save_pretrained` wrote, in eval mode."""
        directory = Path(directory)
        values = cls.read_config(directory)
        fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
        values = {k: tuple(v) if isinstance(v, list) and k in fields and isinstance(fields[k].default, tuple) else v for k, v in values.items()}
        head = cls(config_from_dict(cls.config_class, values))
        try:
            tensors = load_file(directory / WEIGHTS_NAME)
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory / WEIGHTS_NAME} does not exist: the folder of {cls.what} is incomplete; train it again or restore the file") from None
        except SafetensorError as exc:
            raise DraftMismatchError(f"{directory / WEIGHTS_NAME} is damaged ({exc}); train {cls.what} again or restore the file") from None
        expected = head.state_dict()
        if expected.keys() != tensors.keys() or any(expected[k].shape != tensors[k].shape for k in expected):
            raise DraftMismatchError(f"the weights in {directory / WEIGHTS_NAME} do not fit its {CONFIG_NAME}: restore the files written together")
        head.load_state_dict(tensors)
        return head.eval()
