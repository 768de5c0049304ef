"""An acceptance head's training data on disk: what `specdec-acceptance-data` writes and
`specdec-train recipe=acceptance` reads.

A records folder holds `acceptance_records.safetensors` (no pickles) with one row per draft node
the runtime verified: `features` [N, F] float32 (`specdec.models.acceptance_head.FEATURES`),
`matched` [N] (1: the node is the target's greedy token at its parent), `ratio` [N] (min(1, p/q),
the sampling acceptance of the node given its parent) and `step` [N] int64 (the verification step,
so splits keep a step's nodes together); and `acceptance_records.json`, the card: target, draft,
layout, prompts, decoding settings and the row count. Both are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from specdec.models.acceptance_head import FEATURES
from specdec.models.base import atomic_write

RECORDS_NAME, CARD_NAME = "acceptance_records.safetensors", "acceptance_records.json"
"""What `save_records` writes into its folder."""
COLUMNS = ("features", "matched", "ratio", "step")
"""The tensors every records file holds."""


class AcceptanceDataError(ValueError):
    """A records folder that cannot be used (damaged file, missing columns, rows that disagree); the message says what to do."""


def save_records(records: dict[str, torch.Tensor], directory: str | Path, card: dict) -> Path:
    """Write the records and their card into `directory`, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: records[k].contiguous() for k in COLUMNS}
    atomic_write(directory / RECORDS_NAME, lambda p: save_file(tensors, p))
    atomic_write(directory / CARD_NAME, lambda p: Path(p).write_text(json.dumps(card | {"rows": int(records["features"].shape[0])}, indent=2) + "\n"))
    return directory


def load_records(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(records, card) that `save_records` wrote; a missing folder is a FileNotFoundError saying what to run,
    a damaged or inconsistent one an AcceptanceDataError."""
    directory = Path(directory)
    path = directory / RECORDS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: record the draft's proposals first (specdec-acceptance-data draft=DIR out={directory})")
    try:
        records = load_file(path)
        card = json.loads((directory / CARD_NAME).read_text(encoding="utf-8"))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise AcceptanceDataError(f"{directory} cannot be read ({type(exc).__name__}: {exc}): record the proposals again with specdec-acceptance-data") from None
    check_records(records, directory)
    return records, card


def check_records(records: dict[str, torch.Tensor], origin: str | Path) -> None:
    """Raise AcceptanceDataError for records without every column, with rows that disagree, the wrong feature width or non-finite values."""
    missing = [c for c in COLUMNS if c not in records]
    if missing:
        raise AcceptanceDataError(f"{origin} lacks the column(s) {', '.join(missing)}: it was not written by specdec-acceptance-data; record again")
    rows = {c: records[c].shape[0] for c in COLUMNS}
    if len(set(rows.values())) != 1 or records["features"].dim() != 2 or records["features"].shape[1] != len(FEATURES):
        raise AcceptanceDataError(f"{origin}: columns of {rows} rows and features of shape {tuple(records['features'].shape)} (expected [N, {len(FEATURES)}]): record again")
    if not all(torch.isfinite(records[c].float()).all() for c in COLUMNS):
        raise AcceptanceDataError(f"{origin} holds non-finite values: record again")
