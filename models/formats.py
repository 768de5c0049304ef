"""Export formats: the layouts a draft is written in for serving engines, keyed by draft type.

Each layout is one `ExportFormat` record (its name, the draft types it holds, a writer, a reader,
a detector, and the model card's text on how engines load it), registered with `register_format`
by the module of its draft types' layouts (specdec.models.medusa_formats,
specdec.models.eagle_formats), so importing specdec.models fills the registry as it fills the
draft registry. `specdec`, the draft folder itself, holds every draft type and is registered here.
A draft type's one-line description for model cards is registered with `register_description`.

Writers get an `ExportJob`: the draft, the folder, the provenance for config.json, the target's
name as engines resolve it, and an `ExportTarget` that loads what the layout needs of the target
(its lm_head, its weights, or only its config.json) on first use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from specdec.models.base import CONFIG_NAME, DraftModel, lm_head_weight, load_draft, read_draft_config
from specdec.models.target import TargetLoadError, load_target


class FormatError(ValueError):
    """An unknown layout, a layout that cannot hold a draft, or a folder that is not the layout it claims."""


class ExportTarget:
    """The target a draft is exported with, loaded only when a layout asks for it (once)."""

    def __init__(self, draft: DraftModel, draft_dir: Path, config: dict, target: str | None = None, lm_head: torch.Tensor | None = None):
        """`target` is the one named by the user (else the draft's own, see `name`); `lm_head` a target lm_head weight already at hand."""
        self.draft, self.draft_dir, self.config, self.named_target, self.given_lm_head = draft, Path(draft_dir), config, target, lm_head

    @property
    def named(self) -> bool:
        """Whether the user named a target (it is then checked against the draft)."""
        return bool(self.named_target)

    @property
    def name(self) -> str | None:
        """The target the draft goes with: the named one, else the Medusa-2 fine-tuned copy inside the draft folder, else the recorded one."""
        recorded = self.config.get("target") or {}
        finetuned = recorded.get("finetuned_weights")
        return self.named_target or (str(self.draft_dir / finetuned) if finetuned else recorded.get("name_or_path"))

    @functools.cached_property
    def _loaded(self):
        recorded = self.config.get("target") or {}
        if not self.name:
            raise TargetLoadError(f"{self.draft_dir / CONFIG_NAME} records no target; pass target=NAME_OR_PATH")
        loaded = load_target(self.name, None if self.named_target or recorded.get("finetuned_weights") else recorded.get("revision"))
        self.draft.check_target(loaded.hidden_size, loaded.vocab_size)
        return loaded

    def model(self):
        """The target's causal LM (named, fine-tuned copy or recorded; see `name`), checked against the draft."""
        return self._loaded.model

    def lm_head(self) -> torch.Tensor:
        """The target's lm_head weight [V, H]: the one at hand, else the loaded target's."""
        return self.given_lm_head if self.given_lm_head is not None else lm_head_weight(self.model()).detach()

    def facts(self) -> dict:
        """max_position_embeddings and architectures of the target: read from the named target's
        config.json (its sizes checked against the draft), else as the draft recorded them (if it did)."""
        recorded = self.config.get("target") or {}
        facts = {"max_position_embeddings": recorded.get("max_position_embeddings"), "architectures": recorded.get("architectures") or ["LlamaForCausalLM"]}
        if not self.named:
            return facts
        from transformers import AutoConfig

        try:
            target_config = AutoConfig.from_pretrained(self.named_target)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise TargetLoadError(f"cannot read the config of target {self.named_target!r} ({type(exc).__name__}: {reason}); pass a model id or a folder with config.json") from exc
        text = target_config.get_text_config()
        self.draft.check_target(text.hidden_size, text.vocab_size)
        return {"max_position_embeddings": getattr(text, "max_position_embeddings", None), "architectures": list(target_config.architectures or facts["architectures"])}


@dataclass
class ExportJob:
    """What a layout's writer is handed."""

    draft: DraftModel
    """The draft to write."""
    out: Path
    """The folder to write it to (created by the writer)."""
    base_model: str
    """The target as serving engines must be told it (empty when unknown)."""
    extra_config: dict
    """Provenance (method, target, training, metrics) to add to the layout's config.json without replacing its own fields."""
    target: ExportTarget
    """The target, loaded on demand."""


def _no_fields(config: dict) -> dict:
    """`use_fields` of a layout whose `use` names only `base`."""
    return {}


@dataclass(frozen=True)
class ExportFormat:
    """One layout specdec-export writes (`format=NAME`)."""

    name: str
    """The `format=` value (specdec-export, the recipe's hub.format)."""
    draft_types: tuple[str, ...] | None
    """The draft types the layout holds, the one an upstream folder is read as first; None: every draft type."""
    write: Callable[[ExportJob], Any]
    """Writes `job.draft` to `job.out` in this layout, asking `job.target` for what it needs of the target."""
    read: Callable[[Path], DraftModel]
    """Reads a folder of this layout back into a draft."""
    detect: Callable[[dict], bool]
    """Whether a parsed config.json is of this layout; asked only of configs without `draft_type`
    (those are specdec folders), and no config.json a writer produces may match two layouts."""
    use: str
    """How it is loaded, for the model card: str.format template of `base` (the target engines load)
    and the keys `use_fields` returns; PATH stands for the folder."""
    use_fields: Callable[[dict], dict] = _no_fields
    """The folder's config.json -> the other fields `use` names (e.g. a head count)."""
    error: type[FormatError] = FormatError
    """What a refusal of this layout raises."""
    help: str = ""
    """Who loads it, shown after the name in `specdec-export --help` (empty: the name says it)."""
    target_field: str = "in the command above"
    """Where engines are told the target (a config.json field, for the model card)."""
    native: bool = False
    """The draft folder itself: exported in place by default, with the draft's subfolders (a
    Medusa-2 fine-tuned target), and no engine note on the card."""
    instead_of: Mapping[str, str] = field(default_factory=dict)
    """Layout names users ask for by mistake for this layout's drafts -> why this one is the one (refusal hint)."""

    def holds(self, draft_type: str) -> bool:
        """Whether the layout can hold a `draft_type` draft."""
        return self.draft_types is None or draft_type in self.draft_types

    def draft_type_of(self, config: dict) -> str:
        """The draft type a folder of this layout holds (its recorded one, else the layout's first)."""
        return config.get("draft_type") or self.draft_types[0]

    def usage(self, config: dict, base: str) -> str:
        """The model card's line on loading a folder of this layout whose config.json is `config`."""
        return self.use.format(base=base, **self.use_fields(config))


FORMAT_REGISTRY: dict[str, ExportFormat] = {}
"""Layout name -> its record, in registration order."""
DESCRIPTIONS: dict[str, tuple[str, Callable[[dict, str], str]]] = {}
"""Draft type -> (its name on model cards, e.g. "EAGLE-3"; config.json and layout name -> one-line description)."""


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Make `fmt` a layout specdec-export writes, model cards describe and `load_export` reads."""
    FORMAT_REGISTRY[fmt.name] = fmt
    return fmt


def register_description(draft_type: str, kind: str, describe: Callable[[dict, str], str]) -> None:
    """Name a draft type on model cards (`kind`) and describe a draft of it from its config.json and layout name."""
    DESCRIPTIONS[draft_type] = (kind, describe)


def get_format(name: str) -> ExportFormat:
    """The registered layout `name`, else a FormatError listing them."""
    if name not in FORMAT_REGISTRY:
        raise FormatError(f"unknown export format {name!r}; choose one of {', '.join(all_formats())}")
    return FORMAT_REGISTRY[name]


def formats_for(draft_type: str) -> tuple[str, ...]:
    """The layouts that hold a `draft_type` draft: its own, in registration order, then those holding every draft type."""
    own = [f.name for f in FORMAT_REGISTRY.values() if f.draft_types is not None and f.holds(draft_type)]
    return (*own, *(f.name for f in FORMAT_REGISTRY.values() if f.draft_types is None))


def format_draft_types() -> tuple[str, ...]:
    """The draft types some layout of their own holds, in the order their first layout was registered."""
    return tuple(dict.fromkeys(t for f in FORMAT_REGISTRY.values() for t in f.draft_types or ()))


def all_formats() -> tuple[str, ...]:
    """Every registered layout, grouped by draft type (each type's own, then those holding every type)."""
    grouped = [name for draft_type in format_draft_types() for name in formats_for(draft_type)]
    return tuple(dict.fromkeys([*grouped, *FORMAT_REGISTRY]))


def fitting_format(name: str, draft_type: str, where) -> ExportFormat:
    """The layout `name` when it holds a `draft_type` draft (the one in `where`), else its error naming those that do."""
    fmt = FORMAT_REGISTRY.get(name)
    fits = formats_for(draft_type)
    if fmt is None or not fmt.holds(draft_type):
        hints = [get_format(f).instead_of[name] for f in fits if name in get_format(f).instead_of]
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise (fmt.error if fmt else FormatError)(f"{where} holds a {draft_type} draft, which the {name} layout cannot hold; formats that fit it: {', '.join(fits)}{hint}")
    return fmt


def find_layout(config: dict) -> ExportFormat | None:
    """The layout a folder's parsed config.json describes, or None: a config.json that records a
    `draft_type` is a specdec draft folder (the native layout); the others' detectors see the rest."""
    native = "draft_type" in config
    return next((fmt for fmt in FORMAT_REGISTRY.values() if fmt.native == native and fmt.detect(config)), None)


def detect_layout(config: dict) -> ExportFormat:
    """The layout a folder's parsed config.json describes, else a FormatError listing the layouts."""
    layout = find_layout(config)
    if layout is None:
        raise FormatError(f"config.json matches no export layout ({', '.join(all_formats())}): pass a specdec draft folder or a folder specdec-export wrote")
    return layout


def load_export(directory) -> DraftModel:
    """Read a folder of any registered layout back into a draft."""
    return detect_layout(read_draft_config(directory)).read(Path(directory))


def draft_kind(draft_type: str) -> str:
    """A draft type's name on model cards and in help texts (e.g. "EAGLE-3"; the type itself when none was registered)."""
    return DESCRIPTIONS[draft_type][0] if draft_type in DESCRIPTIONS else draft_type


def describe_draft(config: dict, layout: ExportFormat) -> tuple[str, str]:
    """(kind, one-line description) of the draft in a folder of `layout` with config.json `config`."""
    draft_type = layout.draft_type_of(config)
    if draft_type not in DESCRIPTIONS:
        return draft_type, f"a {draft_type} draft"
    return draft_kind(draft_type), DESCRIPTIONS[draft_type][1](config, layout.name)


def _write_specdec(job: ExportJob) -> None:
    """specdec's own folder (`save_pretrained`); a named target is loaded and checked against the draft first."""
    if job.target.named:
        job.target.model()
    job.draft.save_pretrained(job.out, extra=job.extra_config)


register_format(
    ExportFormat(
        name="specdec",
        draft_types=None,
        write=_write_specdec,
        read=load_draft,
        detect=lambda config: "draft_type" in config,
        use='`from specdec.models.base import load_draft; draft = load_draft("PATH")` (`check_target()` guards the pairing).',
        native=True,
    )
)
