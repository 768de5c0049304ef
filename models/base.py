"""The small contract every draft type follows, and the registry that maps names to types.

A draft folder holds `config.json` (the draft's own hyper-parameters plus `draft_type`,
target facts and the specdec version) and `model.safetensors` (only the draft's weights:
frozen target tensors it shares, such as the lm_head, are never copied in).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tempfile
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

DRAFT_REGISTRY: dict[str, type["DraftModel"]] = {}
"""Draft type name (as written in config.json's `draft_type`) -> class."""


class DraftMismatchError(ValueError):
    """A draft that does not fit what it is loaded with: a target of another hidden size or
    vocabulary, or a draft folder whose config.json, `draft_type` and weights disagree (or are damaged)."""


def register_draft(cls: type["DraftModel"]) -> type["DraftModel"]:
    """Class decorator: make `cls` loadable by `load_draft` under `cls.draft_type`."""
    DRAFT_REGISTRY[cls.draft_type] = cls
    return cls


def specdec_version() -> str:
    try:
        return metadata.version("specdec")
    except metadata.PackageNotFoundError:
        return "unknown"


class DraftModel(nn.Module):
    """What every draft provides: a dataclass config, a target check, and save/load.

    Subclasses set `draft_type` and `config_class`, and build themselves from one config.
    """

    draft_type: ClassVar[str]
    config_class: ClassVar[type]
    feature_layers: tuple[int, ...] | None = None
    """Target hidden states (HF output_hidden_states indices) the draft reads besides the last one; None: only the last."""

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def check_target(self, hidden_size: int, vocab_size: int) -> None:
        """Raise `DraftMismatchError` unless the target has this draft's hidden size and vocabulary."""
        problems = []
        if hidden_size != self.config.hidden_size:
            problems.append(f"hidden size {hidden_size} (draft expects {self.config.hidden_size})")
        if vocab_size != self.config.vocab_size:
            problems.append(f"vocabulary size {vocab_size} (draft expects {self.config.vocab_size})")
        if problems:
            raise DraftMismatchError(
                f"this {self.draft_type} draft was trained for another target: the target has "
                + " and ".join(problems)
                + ". Load the target the draft was trained on (see target.name_or_path in its config.json)."
            )

    def save_pretrained(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write `config.json` and `model.safetensors` into `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "draft_type": self.draft_type,
            **dataclasses.asdict(self.config),
            "specdec_version": specdec_version(),
            **(extra or {}),
        }
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "DraftModel":
        """Rebuild the exact module saved by `save_pretrained` (use `load_draft` for any type)."""
        # Step 1: the config, which must hold every field this draft type needs.
        directory = Path(directory)
        config = read_draft_config(directory)
        missing = missing_fields(cls.config_class, config)
        if missing:
            raise DraftMismatchError(
                f"{directory / CONFIG_NAME} does not describe a draft of type {cls.draft_type!r}: it lacks {', '.join(missing)}. "
                f"Its `draft_type` was changed or the file was edited; restore the config.json that was written with the weights."
            )
        model = cls(config_from_dict(cls.config_class, config))
        # Step 2: the weights, which must be readable and fit that config.
        tensors = _read_weights(directory)
        problem = _state_mismatch(model.state_dict(), tensors)
        if problem:
            raise DraftMismatchError(
                f"the weights in {directory / WEIGHTS_NAME} do not fit its {CONFIG_NAME} (draft_type {cls.draft_type!r}): {problem}. "
                "Restore the config.json that was written with these weights."
            )
        model.load_state_dict(tensors)
        return model


def missing_fields(config_class: type, values: dict[str, Any]) -> list[str]:
    """Fields of `config_class` a config.json dict must hold but lacks: those without a default, and nested shapes (a drafter's LayerShape)."""
    hints = typing.get_type_hints(config_class)
    missing = []
    for f in dataclasses.fields(config_class):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if (required and f.name not in values) or (dataclasses.is_dataclass(hints[f.name]) and not isinstance(values.get(f.name), dict)):
            missing.append(f.name)
    return missing


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between the tensors a module expects and those of a file (empty when they fit)."""
    problems = []
    if missing := expected.keys() - found.keys():
        problems.append(f"missing {_first_names(missing)}")
    if unexpected := found.keys() - expected.keys():
        problems.append(f"unexpected {_first_names(unexpected)}")
    if reshaped := [k for k in expected.keys() & found.keys() if expected[k].shape != found[k].shape]:
        problems.append(f"other shapes for {_first_names(reshaped)}")
    return "; ".join(problems)


def _first_names(names) -> str:
    """The first three tensor names, sorted, and how many more there are."""
    names = sorted(names)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    """A config dataclass from a config.json dict: unknown keys ignored, nested dataclass fields (a drafter's LayerShape) rebuilt."""
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for f in dataclasses.fields(config_class):
        if f.name in values:
            value, kind = values[f.name], hints[f.name]
            kwargs[f.name] = kind(**value) if dataclasses.is_dataclass(kind) and isinstance(value, dict) else value
    return config_class(**kwargs)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of `directory/model.safetensors`, with one clear error when the file is missing or damaged."""
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"draft {directory} has no {WEIGHTS_NAME}: the folder is incomplete. Copy the whole draft folder again (or export it again from its training run).")
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise DraftMismatchError(f"{path} is damaged ({exc}): it was truncated or is not a safetensors file. Copy the draft folder again (or export it again from its training run).") from exc


def read_draft_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a draft folder, with a clear error when it is missing or not a JSON object."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no draft at {directory}: {CONFIG_NAME} is missing. Pass the `draft/` folder that "
            "specdec-train wrote (<output_dir>/draft)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DraftMismatchError(f"{path} is not valid JSON ({exc}): copy the draft folder again (or export it again from its training run).") from exc
    if not isinstance(config, dict):
        raise DraftMismatchError(f"{path} holds a JSON {type(config).__name__}, not an object: copy the draft folder again (or export it again from its training run).")
    return config


def load_draft(directory: str | os.PathLike) -> DraftModel:
    """Load any registered draft type from its folder; a wrong `draft_type` or weights that do not fit raise `DraftMismatchError`."""
    draft_type = read_draft_config(directory).get("draft_type")
    if draft_type not in DRAFT_REGISTRY:
        close = difflib.get_close_matches(str(draft_type), DRAFT_REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DraftMismatchError(f"unknown draft_type {draft_type!r} in {Path(directory) / CONFIG_NAME}: {hint}set it to one of {', '.join(sorted(DRAFT_REGISTRY))} (the type the weights were trained as).")
    return DRAFT_REGISTRY[draft_type].from_pretrained(directory)


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` then move the file into place, so readers never see half a file.

    The file gets the permissions of any new file (0666 less the umask), not mkstemp's private 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    """This process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of `module` and put it in eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def lm_head_weight(target: nn.Module) -> torch.Tensor:
    """The target's vocabulary projection weight [V, H]."""
    return target.get_output_embeddings().weight


def base_weight(layer: nn.Module) -> torch.Tensor:
    """The weight parameter of an embedding or head, under peft's trainable-token wrapper where one wraps it
    (the wrapper's own `.weight` builds a merged copy of the whole matrix at every read)."""
    adapter = getattr(layer, "token_adapter", None)
    return (adapter.base_layer if adapter is not None else layer).weight


def final_hidden_states(target: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The target's last hidden state h_t (after its final norm), without computing vocabulary logits.

    Extra keyword arguments (position_ids, past_key_values, ...) go to the target's decoder.
    """
    return target_states(target, input_ids, attention_mask=attention_mask, **kwargs)[0]


def target_states(target: nn.Module, input_ids: torch.Tensor, layer_ids=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state after the final norm, features a drafter reads) of the target.

    `layer_ids` None: the features are the last hidden state itself; else the Hugging Face
    `output_hidden_states` entries with those indices (0 = embeddings, i = output of layer i-1),
    concatenated (EAGLE-3). Extra keyword arguments go to the target's decoder."""
    out = target.get_decoder()(input_ids=input_ids, output_hidden_states=layer_ids is not None, **kwargs)
    if layer_ids is None:
        return out.last_hidden_state, out.last_hidden_state
    return out.last_hidden_state, torch.cat([out.hidden_states[i] for i in layer_ids], dim=-1)
