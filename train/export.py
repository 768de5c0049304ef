"""Write the trained draft to `<output_dir>/draft/`: config.json, model.safetensors, the resolved
recipe, a model card, and whatever the method adds (Medusa-2 and SDSAT: the fine-tuned target,
LoRA merged, and/or the adapter).

Also: `specdec-export` (the draft in a serving engine's layout: any format registered in
specdec.models.formats, see specdec.models.medusa_formats and specdec.models.eagle_formats) and
`push_to_hub` (upload a folder with a refreshed model card).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from specdec.models.base import CONFIG_NAME, DraftMismatchError, DraftModel, atomic_write, load_draft, read_draft_config
from specdec.models.decoder import LayerShape
from specdec.models.formats import ExportFormat, ExportJob, ExportTarget, FormatError, all_formats, describe_draft, detect_layout, draft_kind, fitting_format, format_draft_types, formats_for, get_format
from specdec.models.cli_args import Option, UsageError, did_you_mean, help_page, parse_options, run_cli, spec_rows
from specdec.train.config import RecipeError
from specdec.models.target import EMBEDDED_HUB_ID, EMBEDDED_NAME, Target, TargetLoadError


def export_draft(draft: DraftModel, cfg: DictConfig, target_info: dict, metrics: dict[str, float], train_info: dict, out: Path | None = None, target: Target | None = None) -> Path:
    """Export the draft to `out` (default <output_dir>/draft); returns that folder.

    `target_info` describes the target (see `target_record`); Medusa-2 also passes the live
    `target`, whose fine-tuned weights are exported beside the heads."""
    from specdec.train.methods import method_class

    out = out or Path(cfg.output_dir) / "draft"
    out.mkdir(parents=True, exist_ok=True)
    extras = method_class(cfg.method)(cfg).export_extras(target, out) if target is not None else {}
    extra = {
        "method": cfg.method,
        "target": {
            **{k: target_info.get(k) for k in ("name_or_path", "revision", "target_id", "hidden_size", "vocab_size", "max_position_embeddings", "architectures")},
            "finetuned_weights": None,
            **extras,
        },
        "training": train_info,
        "metrics": metrics,
    }
    draft.save_pretrained(out, extra=extra)
    (out / "recipe.yaml").write_text(OmegaConf.to_yaml(cfg))
    write_model_card(out)
    return out


def target_record(target: Target) -> dict:
    """What a draft, a features folder and a report need to know of the target."""
    return {
        "name_or_path": target.name_or_path,
        "revision": target.revision,
        "target_id": target.target_id,
        "hidden_size": target.hidden_size,
        "vocab_size": target.vocab_size,
        "num_layers": target.model.config.num_hidden_layers,
        "layer_shape": dataclasses.asdict(LayerShape.from_target_config(target.model.config)),
        "pad_token_id": target.tokenizer.pad_token_id,
        "tokenizer_size": len(target.tokenizer),
        "max_position_embeddings": getattr(target.model.config, "max_position_embeddings", None),
        "architectures": getattr(target.model.config, "architectures", None),
    }


EVAL_RESULTS = "eval_results.json"
"""Written into a draft folder by the evaluator: {metric name: value}; shown on the model card."""
SIDE_FILES = ("recipe.yaml", EVAL_RESULTS)
"""Files of a draft folder that travel with every export."""
class HubUploadError(RuntimeError):
    """An upload to the Hugging Face Hub failed; the local folder is intact and the message says how to retry."""


def model_card(config: dict, eval_results: dict | None = None) -> str:
    """The README of a draft or export folder (also the Hub model card), from its parsed config.json."""
    # Step 1: what the folder holds and what it was trained for.
    layout = detect_layout(config)
    target = config.get("target") or {}
    base = target.get("name_or_path") or config.get("base_model_name_or_path") or ((config.get("speculators_config") or {}).get("verifier") or {}).get("name_or_path") or "unknown"
    kind, summary = describe_draft(config, layout)
    method = config.get("method", layout.draft_type_of(config))
    engine = target.get("engine_name_or_path")
    hub_base = f"base_model: {engine or base}\n" if _is_hub_id(engine or base) else ""
    train = config.get("training") or {}
    # Step 2: metric tables (training-time validation, then the evaluator's numbers).
    sections = [_metrics_table("Held-out metrics (self-distilled validation split)", config.get("metrics") or {})]
    if eval_results:
        sections.append(_metrics_table(f"Evaluation ({EVAL_RESULTS})", eval_results))
    finetuned = f"\nThe draft goes with a fine-tuned target (`{target['finetuned_weights']}/` of the specdec draft folder, LoRA merged): serve it with that target.\n" if target.get("finetuned_weights") else ""
    return f"""---
library_name: specdec
tags: [speculative-decoding, {kind.split('-')[0].lower()}, {method}]
{hub_base}---
# {method} {kind} draft for `{base}` ({layout.name} layout)

Trained with specdec `{method}` against the frozen target
`{base}` (hidden size {target.get('hidden_size', config.get('hidden_size'))}, vocabulary {target.get('vocab_size', config.get('vocab_size'))}): {summary}.
{finetuned}
Training: {train.get('steps')} optimizer steps on {train.get('train_examples')} self-distilled
conversations ({train.get('train_tokens')} tokens seen), {train.get('seconds', 0):.0f} s.

{chr(10).join(sections)}
## Use
{layout.usage(config, base=engine or "BASE_MODEL")}
{_engine_target_note(base, engine, layout)}The resolved training recipe is in `recipe.yaml`.
"""


def engine_target_name(name_or_path: str) -> str:
    """The target as a serving engine must be told it: the Hub id of the embedded target for its
    alias, an existing local folder or file as an absolute path, anything else (a Hub id) unchanged."""
    if name_or_path == EMBEDDED_NAME:
        return EMBEDDED_HUB_ID
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def _engine_target_note(trained: str, engine: str | None, layout: ExportFormat) -> str:
    """The model card's line on which target the engine commands (and config field) name, and why."""
    if not engine or layout.native:
        return ""
    where = layout.target_field
    if trained == EMBEDDED_NAME:
        why = (
            f"the Hub id of specdec's embedded target `{EMBEDDED_NAME}`, an alias no engine resolves. The draft was trained against the "
            "embedded Q4_1 GGUF copy (dequantized), so acceptance with the Hub's full-precision weights can differ slightly"
        )
    elif Path(engine).is_absolute():
        why = "a local path, as the draft was trained with it (or as passed to specdec-export); on another machine put the target's Hub id or path there"
    else:
        why = "the Hub id the draft was trained with (or as passed to specdec-export)"
    return f"Serving engines load the target `{engine}` ({where}): {why}.\n"


def write_model_card(folder) -> Path:
    """(Re)write `<folder>/README.md` from its config.json and, when present, eval_results.json."""
    folder = Path(folder)
    config = read_draft_config(folder)
    eval_path = folder / EVAL_RESULTS
    eval_results = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    path = folder / "README.md"
    card = model_card(config, eval_results)
    atomic_write(path, lambda p: Path(p).write_text(card))
    return path


def _metrics_table(title: str, metrics: dict) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, (int, float)) else f"| {k} | {v} |" for k, v in sorted(metrics.items()))
    return f"## {title}\n| metric | value |\n|---|---|\n{rows}\n"


def _is_hub_id(name: str) -> bool:
    """Only a Hub id may go into the card's `base_model` field (the Hub rejects local paths there)."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def push_to_hub(folder, repo_id: str, private: bool = False, token: str | None = None, commit_message: str = "Upload specdec Medusa draft") -> str:
    """Upload `folder` to the Hub model repo `repo_id` (created if missing) after refreshing its model card.

    The token is `token`, else $HF_TOKEN, else the stored `hf auth login` token. Returns the
    commit URL. Any network or Hub failure raises HubUploadError; nothing local is changed.
    """
    from huggingface_hub import HfApi

    # Step 1: the model card, from the folder's own config and eval results.
    folder = Path(folder)
    write_model_card(folder)
    # Step 2: repo + upload (hidden temporary files stay local).
    token = token or os.environ.get("HF_TOKEN")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, token=token, ignore_patterns=[".*"])
    except _hub_errors() as exc:
        raise HubUploadError(_upload_failure(folder, repo_id, private, exc)) from exc
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Network/Hub failures: OSError covers ConnectionError, requests' errors, HfHubHTTPError and
    OfflineModeIsEnabled; errors.HTTPError is the HTTP library's base (httpx in huggingface_hub >= 1)."""
    from huggingface_hub import errors

    return (OSError, errors.HFValidationError, getattr(errors, "HTTPError", OSError))


def _upload_failure(folder: Path, repo_id: str, private: bool, exc: BaseException) -> str:
    path = folder.resolve()
    reason = (str(exc).strip().splitlines() or [""])[0]
    retry = f"`hf upload {repo_id} {path}` (huggingface-cli upload in older huggingface_hub)"
    if (folder / CONFIG_NAME).is_file() and "draft_type" in read_draft_config(folder):
        retry = f"`specdec-export draft={path} format=specdec push=true repo_id={repo_id}{' private=true' if private else ''}` or " + retry
    return f"upload to the Hub repo {repo_id} failed ({type(exc).__name__}: {reason}). The local folder is intact at {path}. Retry when online (HF_TOKEN set or `hf auth login`): {retry}"


def export_folder(draft_dir, fmt: str, out=None, target: str | None = None, lm_head: torch.Tensor | None = None) -> Path:
    """Write the draft in `draft_dir` in layout `fmt` (any registered format that holds its draft type) to `out`; returns the folder.

    `out` defaults to the draft itself for `specdec` and to `<draft_dir>/../export_<fmt>`
    otherwise. The layout asks for what it needs of the target (see ExportTarget): the target is
    `target` when named (checked against the draft), else the one recorded in the draft (its
    fine-tuned copy for Medusa-2); `lm_head` is a target lm_head weight already at hand. Medusa
    layouts take the target lm_head when the heads share it, `tensorrt_llm` the whole target, the
    EAGLE layouts only its config.json (max_position_embeddings, architectures).
    """
    # Step 1: the draft, a layout that holds it, and the provenance its config.json carries.
    draft_dir = Path(draft_dir)
    draft = load_draft(draft_dir)
    layout = fitting_format(fmt, draft.draft_type, draft_dir)
    config = read_draft_config(draft_dir)
    own = {"draft_type", "specdec_version", *type(draft).config_class.__dataclass_fields__}
    provenance = {k: v for k, v in config.items() if k not in own}
    out = Path(out) if out else (draft_dir if layout.native else draft_dir.parent / f"export_{fmt}")
    if out.resolve() == draft_dir.resolve():
        if not layout.native:
            raise layout.error(f"out={out} is the draft folder itself; pick another folder for the {fmt} layout")
        return out
    # Step 2: the layout, naming the target as engines resolve it.
    access = ExportTarget(draft, draft_dir, config, target, lm_head)
    base = engine_target_name(access.name) if access.name else ""
    if base:
        provenance["target"] = {**(provenance.get("target") or {}), "engine_name_or_path": base}
    layout.write(ExportJob(draft=draft, out=out, base_model=base, extra_config=provenance, target=access))
    # Step 3: the files that travel with it (and, for the native layout, the draft's subfolders: Medusa-2's target).
    for entry in draft_dir.iterdir():
        if entry.name in SIDE_FILES:
            shutil.copy2(entry, out / entry.name)
        elif layout.native and entry.is_dir():
            shutil.copytree(entry, out / entry.name, dirs_exist_ok=True)
    write_model_card(out)
    return out


def publish(draft_dir, fmt: str, repo_id: str, private: bool = False, lm_head: torch.Tensor | None = None) -> Path:
    """Export the draft in `fmt` (the draft folder itself for specdec) and push that folder; returns it."""
    folder = export_folder(draft_dir, fmt, lm_head=lm_head)
    url = push_to_hub(folder, repo_id, private=private)
    print(f"{folder} uploaded: {url}")
    return folder


def format_choices(indent: str = " " * 12) -> str:
    """The layouts of each draft type that has its own, one line each ("EAGLE-3 drafts: sglang (SGLang / EAGLE repo), ..."), for `--help`."""
    lines = []
    for draft_type in format_draft_types():
        names = [f"{name} ({get_format(name).help})" if get_format(name).help else name for name in formats_for(draft_type)]
        lines.append(f"{draft_kind(draft_type)} drafts: {', '.join(names)}")
    return f"\n{indent}".join(lines)


EXPORT_USAGE = """usage: specdec-export draft=DIR format=FORMAT [out=DIR] [target=NAME_OR_PATH] [push=true repo_id=ORG/NAME [private=true]]
       specdec-export checkpoint=PATH [out=DIR] [trusted=true]

Writes a trained draft in a serving engine's layout and optionally uploads it, or consolidates a
training checkpoint into a plain draft folder.
Exit codes: 0 written, 2 a bad command line, 1 an export or upload that failed."""
EXPORT_OPTIONS = {
    "draft": Option(str, None, doc="the draft folder specdec-train wrote (<output_dir>/draft)"),
    "checkpoint": Option(str, None, doc="a training checkpoint (.ckpt file, or a sharded DeepSpeed / FSDP folder), consolidated on this machine into a draft folder at out (unset out: <output_dir>/draft)"),
    "trusted": Option(bool, False, doc="read a sharded checkpoint folder: its readers unpickle, which runs code a crafted folder holds, so only for your own run's folders (a .ckpt file is always read without running code)"),
    "format": Option(str, None, doc="the layout to write: one of the formats below"),
    "out": Option(str, None, doc="where to write (unset: <draft>/../export_<format>; the draft itself for specdec)"),
    "target": Option(str, None, doc="target whose lm_head fills shared-lm_head Medusa heads and whose weights tensorrt_llm converts; EAGLE layouts read only its config.json (unset: the draft's recorded target); checked against the draft"),
    "push": Option(bool, None, doc="upload out to the Hugging Face Hub (unset: true when repo_id is given)"),
    "repo_id": Option(str, None, doc="Hub model repo, ORG/NAME (created if missing; token from HF_TOKEN or `hf auth login`)"),
    "private": Option(bool, False, doc="create the Hub repo as private"),
}
"""key -> Option(type, default, range, meaning) of specdec-export."""


def export_help() -> str:
    """The usage, every key with its default and meaning, and each draft type's formats (read from the registry when asked)."""
    return help_page(EXPORT_USAGE, [("keys:", spec_rows(EXPORT_OPTIONS))]) + "\n\nformats:\n  " + format_choices(indent="  ")


def parse_export_args(argv: list[str]) -> dict:
    """`key=value` words -> typed, checked export arguments; UsageError (one actionable line) otherwise."""
    args = parse_options(argv, EXPORT_OPTIONS)
    if args["checkpoint"]:
        extra = sorted(key for key, value in args.items() if key not in ("checkpoint", "out", "trusted") and value != EXPORT_OPTIONS[key].default)
        if extra:
            raise UsageError(f"checkpoint=... takes only out=... and trusted=...; export the consolidated draft in a second call (got {', '.join(extra)})")
        return args
    for key in ("draft", "format"):
        if not args[key]:
            raise UsageError(f"missing {key}=...; see `specdec-export --help`")
    formats = all_formats()
    if args["format"] not in formats:
        raise UsageError(f"unknown format {args['format']!r}.{did_you_mean(args['format'], formats)} Choose one of {', '.join(formats)}")
    if not (Path(args["draft"]) / CONFIG_NAME).is_file():
        raise UsageError(f"no draft at {args['draft']}: {CONFIG_NAME} is missing. Pass the draft/ folder that specdec-train wrote (<output_dir>/draft)")
    if args["push"] is None:
        args["push"] = bool(args["repo_id"])
    if args["push"] and not args["repo_id"]:
        raise UsageError("push=true needs repo_id=ORG/NAME")
    return args


def export_main(argv: list[str] | None = None) -> int:
    """`specdec-export`: 0 on success, 2 for bad arguments (checked before anything loads), 1 when the export or upload fails."""
    failures = (RecipeError, FileNotFoundError, TargetLoadError, DraftMismatchError, FormatError, HubUploadError)
    return run_cli("specdec-export", sys.argv[1:] if argv is None else argv, export_help, parse_export_args, _export, failures)


def _export(args: dict) -> int:
    """Consolidate the checkpoint, or write the draft in its format and upload it when asked; returns 0."""
    if args["checkpoint"]:
        from specdec.train.pipeline import export_checkpoint

        print(f"draft written to {export_checkpoint(args['checkpoint'], args['out'], args['trusted'])}")
        return 0
    folder = export_folder(args["draft"], args["format"], args["out"], args["target"])
    print(f"{args['format']} layout written to {folder}")
    if args["push"]:
        print(f"uploaded: {push_to_hub(folder, args['repo_id'], private=args['private'])}")
    return 0


if __name__ == "__main__":
    sys.exit(export_main())
