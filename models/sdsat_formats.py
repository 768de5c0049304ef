"""SDSAT's export layout and model-card line.

`transformers`: the tuned target alone, as the folder `AutoModelForCausalLM.from_pretrained`
loads (LoRA merged, the SA tokens in its tokenizer, k and the slot ids in config.json's `sdsat`
entry). It is the draft folder's `target/` copied out, with specdec's provenance (method,
training, held-out metrics) added to config.json so the model card can show it. Any engine that
serves a Llama-style model serves it; drafting with the SA tokens needs specdec's runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from specdec.models.base import CONFIG_NAME, atomic_write
from specdec.models.formats import ExportFormat, ExportJob, FormatError, register_description, register_format
from specdec.models.sdsat import TARGET_CONFIG_KEY, TUNED_TARGET_DIR, SdsatDraft, draft_from_target_config

PROVENANCE_KEYS = ("method", "training", "metrics")
"""specdec's fields copied into the exported config.json (the model card reads them)."""


def _write(job: ExportJob) -> None:
    """Copy the tuned target out of the draft folder and add specdec's provenance to its config.json."""
    source = job.target.draft_dir / TUNED_TARGET_DIR
    if not (source / CONFIG_NAME).is_file():
        raise FormatError(f"{job.target.draft_dir} has no tuned target in {TUNED_TARGET_DIR}/: export the SDSAT run again (specdec-train writes it there)")
    shutil.copytree(source, job.out, dirs_exist_ok=True)
    config = json.loads((job.out / CONFIG_NAME).read_text())
    config.update({k: job.extra_config[k] for k in PROVENANCE_KEYS if k in job.extra_config})
    config[TARGET_CONFIG_KEY] = {**config.get(TARGET_CONFIG_KEY, {}), "head_rank_accuracy": job.draft.config.head_rank_accuracy}
    atomic_write(job.out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))


def _read(folder: Path) -> SdsatDraft:
    from transformers import AutoConfig

    return draft_from_target_config(AutoConfig.from_pretrained(folder))


def _describe(config: dict, layout: str) -> str:
    """The model card's line on an SDSAT draft (specdec folder or tuned-target folder)."""
    entry = config.get(TARGET_CONFIG_KEY) or config
    ids = entry.get("sa_token_ids") or []
    shared = " (one id in every slot)" if len(set(ids)) == 1 and len(ids) > 1 else ""
    return (
        f"the target itself, fine-tuned so that {entry.get('num_sa_tokens')} semantic adaptive tokens (ids {ids}{shared}) placed after the "
        "last verified token draft the next ones; greedy decoding with specdec's sdsat proposer reproduces this tuned model's plain greedy "
        "output token for token, which differs from the original target's where the held-out greedy agreement is below 1"
    )


register_format(
    ExportFormat(
        name="transformers",
        draft_types=(SdsatDraft.draft_type,),
        write=_write,
        read=_read,
        detect=lambda config: TARGET_CONFIG_KEY in config and "architectures" in config,
        use='`AutoModelForCausalLM.from_pretrained("PATH")` (the SA ids are in config.json\'s `sdsat` entry); speculative decoding with them: `specdec-generate draft=DRAFT_FOLDER`.',
        help="the tuned target, loaded by transformers",
    )
)
register_description(SdsatDraft.draft_type, "SDSAT", _describe)
