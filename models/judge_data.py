"""The judge's labelled data on disk: what `specdec-judge-data` writes and `recipe=judge` reads.

A label folder holds `shard_00000.safetensors`, `shard_00001.safetensors`, ... (one per chunk of
prompts, each written atomically, so an interrupted run resumes at the first missing shard) and
`data_card.json` (target, draft, checker, settings, counts). Each shard stores, per labelled
draft token (a mismatch between the draft's top token and the target's), the tensors
`target_hidden` [n, H] float32 (the target's last hidden state at the draft token's position),
`important` [n] int8 (1: the mismatch changes the outcome) and `prompt_index` [n] int64, and in its
metadata `records`: one JSON object per label (`LABEL_FIELDS`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from specdec.models.base import atomic_write

SHARD_GLOB = "shard_*.safetensors"
DATA_CARD = "data_card.json"
LABEL_FIELDS = {
    "prompt_index": "index of the prompt in the mined prompt list (train/validation splits keep prompts whole)",
    "position": "index of the draft token in the response (0 = first response token)",
    "draft_token": "the draft's top token there (teacher-forced on the current response)",
    "target_token": "the target's greedy token there",
    "p_target": "the target's probability of the draft token",
    "rule": "search (the target regenerated the rest and the checker compared) or low_prob (under the probability floor: important without a search)",
    "checker": "the outcome checker that decided (math, code, general)",
    "important": "1: the mismatch changes the outcome (keep the target's token); 0: it does not",
}
"""Field of every label record -> meaning (also written into the data card)."""


class JudgeDataError(ValueError):
    """A label folder that cannot be read: missing, empty, or a damaged shard (named)."""


@dataclass
class JudgeData:
    """All labels of a folder, in shard order."""

    features: torch.Tensor
    """[N, H] float32 target states."""
    important: torch.Tensor
    """[N] int8 labels."""
    prompt_index: torch.Tensor
    """[N] int64 prompt of each label."""
    records: list[dict]
    """[N] the label records (`LABEL_FIELDS`)."""
    card: dict
    """The folder's data card (empty if it has none)."""


def shard_path(folder: Path, index: int) -> Path:
    """Where shard `index` of a label folder goes."""
    return Path(folder) / f"shard_{index:05d}.safetensors"


def write_shard(path: Path, features: torch.Tensor, records: list[dict], prompts: tuple[int, int] | None = None) -> None:
    """Write one shard atomically: `features` [n, H] and one record per row (an empty shard is valid);
    `prompts`: (first prompt index, number of prompts) the shard covers, kept in its metadata so a
    resumed run knows which prompts it holds (`shard_prompts`)."""
    if features.shape[0] != len(records):
        raise ValueError(f"{features.shape[0]} feature rows but {len(records)} records: give one record per row")
    tensors = {
        "target_hidden": features.detach().float().contiguous().cpu(),
        "important": torch.tensor([int(r["important"]) for r in records], dtype=torch.int8),
        "prompt_index": torch.tensor([int(r["prompt_index"]) for r in records], dtype=torch.int64),
    }
    metadata = {"format": "pt", "records": json.dumps(records)} | ({"prompts": json.dumps(list(prompts))} if prompts is not None else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(tensors, p, metadata=metadata))


def read_shard(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict]]:
    """(features, important, prompt_index, records) of one shard; a damaged shard is a JudgeDataError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            records = json.loads(f.metadata()["records"])
            features, important, prompt_index = f.get_tensor("target_hidden"), f.get_tensor("important"), f.get_tensor("prompt_index")
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
        raise JudgeDataError(f"{path} is damaged ({type(exc).__name__}: {exc}); delete it and rerun specdec-judge-data, which regenerates missing shards") from None
    if not features.shape[0] == important.shape[0] == prompt_index.shape[0] == len(records):
        raise JudgeDataError(
            f"{path} is damaged: {features.shape[0]} feature rows, {important.shape[0]} labels, {prompt_index.shape[0]} prompt indices and {len(records)} records; "
            "delete it and rerun specdec-judge-data, which regenerates missing shards"
        )
    return features, important, prompt_index, records


def shard_prompts(path: Path) -> tuple[int, int] | None:
    """(first prompt index, number of prompts) a shard covers, from its metadata; None when it does not say."""
    try:
        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get("prompts")
    except (SafetensorError, OSError):
        return None
    return tuple(json.loads(value)) if value else None


def read_judge_data(folder: str | os.PathLike) -> JudgeData:
    """Every shard of a label folder, concatenated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise JudgeDataError(f"label folder {folder} does not exist: run specdec-judge-data first (its out= is this folder)")
    shards = sorted(folder.glob(SHARD_GLOB))
    parts = [read_shard(p) for p in shards]
    records = [r for part in parts for r in part[3]]
    if not records:
        raise JudgeDataError(f"{folder} holds no labels ({len(shards)} shard(s)): mine more prompts with specdec-judge-data")
    card_path = folder / DATA_CARD
    try:
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise JudgeDataError(f"{card_path} is not valid JSON ({exc.msg}): rerun specdec-judge-data on the folder, which rewrites it") from None
    return JudgeData(
        torch.cat([p[0] for p in parts]).float(),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
        records,
        card,
    )
