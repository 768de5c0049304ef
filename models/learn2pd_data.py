"""Learn2PD's oracle data on disk: what `specdec-learn2pd-data` writes and `specdec-train recipe=learn2pd` reads.

A folder holds `shard_00000.safetensors`, ... (one per chunk of prompts, each written atomically,
so an interrupted run resumes at the first missing shard) and `oracle_card.json` (the diffusion
target, the block schedule, the prompts and counts; its `settings` are the folder's cache key).
Each shard stores one row per denoising step of the oracle replay: `confidences` [n, L] float32
(the block's top-1 probabilities, 1.0 where decoded), `labels` [n, L] (1: the masked position's
prediction already equals the reference token), `masked` [n, L] (only masked positions carry a
label) and `prompt_index` [n] int64 (splits keep a prompt's steps together).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from specdec.models.base import atomic_write

SHARD_GLOB, CARD_NAME = "shard_*.safetensors", "oracle_card.json"
COLUMNS = ("confidences", "labels", "masked", "prompt_index")
"""The tensors of every shard."""


class OracleDataError(ValueError):
    """An oracle folder that cannot be used (damaged shard, other settings, no rows); the message says what to do."""


def shard_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / f"shard_{index:05d}.safetensors"


def write_shard(path: Path, rows: dict[str, torch.Tensor]) -> None:
    """One shard, atomically."""
    tensors = {k: rows[k].contiguous() for k in COLUMNS}
    atomic_write(path, lambda p: save_file(tensors, p))


def read_card(folder: str | Path) -> dict:
    """The folder's card ({} when there is none yet); a damaged one is an OracleDataError."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OracleDataError(f"{path} is not valid JSON ({exc.msg}): delete the folder or choose another out=") from None


def write_card(folder: str | Path, card: dict) -> None:
    atomic_write(Path(folder) / CARD_NAME, lambda p: Path(p).write_text(json.dumps(card, indent=2) + "\n"))


def read_oracle_data(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(every shard's rows concatenated, the card); a missing folder is a FileNotFoundError saying what to run."""
    folder = Path(folder)
    shards = sorted(folder.glob(SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"{folder} holds no oracle shards: write them first (specdec-learn2pd-data target=DIR out={folder})")
    parts = []
    for path in shards:
        try:
            part = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise OracleDataError(f"{path} cannot be read ({type(exc).__name__}: {exc}): delete it and rerun specdec-learn2pd-data (it resumes)") from None
        if any(c not in part for c in COLUMNS):
            raise OracleDataError(f"{path} lacks columns of {COLUMNS}: delete it and rerun specdec-learn2pd-data")
        parts.append(part)
    rows = {c: torch.cat([p[c] for p in parts]) for c in COLUMNS}
    widths = {rows[c].shape[1] for c in ("confidences", "labels", "masked")}
    if len(widths) != 1:
        raise OracleDataError(f"{folder}: shards of different block lengths {sorted(widths)}: one folder holds one schedule")
    return rows, read_card(folder)
