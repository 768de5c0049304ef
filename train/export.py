"""Write the trained draft to `<output_dir>/draft/`: config.json, model.safetensors, the resolved
recipe, a model card, and for Medusa-2 the fine-tuned target (LoRA merged) and/or the adapter."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from specdec.models.base import DraftModel
from specdec.train.target import Target

FINETUNED_TARGET_DIR = "target"
ADAPTER_DIR = "adapter"


def export_draft(draft: DraftModel, cfg: DictConfig, target: Target, metrics: dict[str, float], train_info: dict) -> Path:
    """Export the draft (and Medusa-2's fine-tuned target); returns the draft folder."""
    out = Path(cfg.output_dir) / "draft"
    extra = {
        "method": cfg.method,
        "target": {
            "name_or_path": target.name_or_path,
            "revision": target.revision,
            "target_id": target.target_id,
            "hidden_size": target.hidden_size,
            "vocab_size": target.vocab_size,
            "finetuned_weights": FINETUNED_TARGET_DIR if cfg.method == "medusa2" and cfg.medusa2.merge_lora else None,
        },
        "training": train_info,
        "metrics": metrics,
    }
    draft.save_pretrained(out, extra=extra)
    (out / "recipe.yaml").write_text(OmegaConf.to_yaml(cfg))
    if cfg.method == "medusa2":
        _export_finetuned_target(target, cfg, out)
    (out / "README.md").write_text(model_card(draft, cfg, target, metrics, train_info))
    return out


def _export_finetuned_target(target: Target, cfg: DictConfig, out: Path) -> None:
    peft_model = target.model
    if cfg.medusa2.save_adapter:
        peft_model.save_pretrained(out / ADAPTER_DIR)
    if cfg.medusa2.merge_lora:
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(out / FINETUNED_TARGET_DIR)
        target.tokenizer.save_pretrained(out / FINETUNED_TARGET_DIR)


def model_card(draft: DraftModel, cfg: DictConfig, target: Target, metrics: dict[str, float], train_info: dict) -> str:
    """A short README for the draft folder (also the Hub model card)."""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    return f"""---
library_name: specdec
tags: [speculative-decoding, {draft.draft_type}, {cfg.method}]
base_model: {target.name_or_path}
---
# {cfg.method} draft for `{target.name_or_path}`

Trained with [specdec](https://pypi.org/project/specdec/) `{cfg.method}` against the frozen target
`{target.name_or_path}` (hidden size {target.hidden_size}, vocabulary {target.vocab_size}).

Draft hyper-parameters: `{json.dumps({k: v for k, v in vars(draft.config).items()})}`

Training: {train_info.get('steps')} optimizer steps on {train_info.get('train_examples')} self-distilled
conversations ({train_info.get('train_tokens')} tokens seen), {train_info.get('seconds', 0):.0f} s.

## Held-out metrics (self-distilled validation split)
| metric | value |
|---|---|
{rows}

## Use
```python
from specdec.models.base import load_draft
draft = load_draft("path/to/draft")  # rebuilds the exact module; check_target() guards the pairing
```
The resolved training recipe is in `recipe.yaml`.
"""
