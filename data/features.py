"""Offline target features: run the target once over the training data, store exactly what a drafter
reads, and serve it to training without the target's transformer layers.

A features folder holds:
- `manifest.json`: the target's facts (ids, sizes, layer shape), which states were stored
  (`layer_ids`: Hugging Face output_hidden_states indices, or null for the last hidden state only),
  the dtype, the data settings they were computed from, and the shard list;
- `examples/`: the tokenized conversations (a `datasets` folder: input_ids, loss_mask, row);
- `shard-NNNNN.safetensors`: per shard, `final_hidden` [tokens, H] (after the final norm), for
  EAGLE-3 also `features` [tokens, k*H], and `offsets` [examples + 1] into the token axis;
- `target_weights.safetensors`: the target's input embedding and lm_head (one tensor when tied).

Shards are written atomically and skipped when already present, so an interrupted run resumes.
"""

from __future__ import annotations

import bisect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from specdec.data.batching import pad_collate
from specdec.data.distill import save_dataset_atomically
from specdec.data.sources import DataError

MANIFEST = "manifest.json"
WEIGHTS = "target_weights.safetensors"
EXAMPLES = "examples"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DISK_HEADROOM = 0.9
"""Refuse to write when the features would take more than this share of the free disk space."""


class FeatureStoreError(DataError):
    """Stored features that are missing, incomplete or computed for other data / another target."""


@dataclass
class PrepareSpec:
    layer_ids: list[int] | None
    """Hugging Face output_hidden_states indices to store (concatenated) besides the last hidden state; None: only that."""
    dtype: str = "bfloat16"
    """Storage dtype: bfloat16, float16 or float32."""
    shard_size: int = 128
    """Conversations per shard file."""
    batch_size: int = 4
    """Conversations per target forward."""


def feature_bytes(num_tokens: int, hidden_size: int, spec: PrepareSpec) -> int:
    """Bytes the shards will take: per token, H for the last hidden state plus k*H for k stored layers."""
    width = hidden_size * (1 + len(spec.layer_ids or []))
    return num_tokens * width * torch.finfo(DTYPES[spec.dtype]).bits // 8


def prepare_features(
    model: torch.nn.Module,
    examples: datasets.Dataset,
    out_dir: Path,
    spec: PrepareSpec,
    pad_id: int,
    target_info: dict[str, Any],
    data_settings: dict[str, Any],
    say=print,
) -> Path:
    """Run the frozen `model` over `examples` (input_ids, loss_mask) and store its states in `out_dir`."""
    # Step 1: say what will be written, and refuse to fill the disk.
    out_dir.mkdir(parents=True, exist_ok=True)
    num_tokens = sum(len(ids) for ids in examples["input_ids"])
    size = feature_bytes(num_tokens, model.config.hidden_size, spec)
    free = shutil.disk_usage(out_dir).free
    say(f"specdec-prepare: {len(examples)} conversations, {num_tokens} tokens -> {size / 1e9:.2f} GB of {spec.dtype} features in {out_dir} ({free / 1e9:.1f} GB free)")
    existing = {p.name: p.stat().st_size for p in out_dir.glob("shard-*.safetensors")}
    if size - sum(existing.values()) > DISK_HEADROOM * free:
        raise FeatureStoreError(f"refusing to write {size / 1e9:.2f} GB into {out_dir}: only {free / 1e9:.1f} GB free. Point data.features_dir at a larger disk, lower data.max_samples, or use data.features_dtype=bfloat16")
    # Step 2: manifest first (what the shards are), then the examples and the target's shared weights.
    examples = examples.add_column("row", list(range(len(examples)))) if "row" not in examples.column_names else examples
    shards = [list(range(i, min(i + spec.shard_size, len(examples)))) for i in range(0, len(examples), spec.shard_size)]
    manifest = {
        "target": target_info,
        "layer_ids": spec.layer_ids,
        "dtype": spec.dtype,
        "data": data_settings,
        "shards": [{"file": f"shard-{n:05d}.safetensors", "rows": [rows[0], rows[-1] + 1]} for n, rows in enumerate(shards)],
    }
    old = _read_manifest(out_dir) if (out_dir / MANIFEST).is_file() else None
    if old is not None and {k: old.get(k) for k in manifest} != manifest:
        raise FeatureStoreError(f"{out_dir} holds features of other data, another target or other settings; delete it or choose another data.features_dir")
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if not (out_dir / EXAMPLES).is_dir():
        save_dataset_atomically(examples.select_columns(["input_ids", "loss_mask", "row"]), out_dir / EXAMPLES)
    if not (out_dir / WEIGHTS).is_file():
        _save_weights(model, out_dir / WEIGHTS)
    # Step 3: the shards, skipping those already written.
    for entry, rows in zip(tqdm(manifest["shards"], desc="target features", unit="shard"), shards):
        if (out_dir / entry["file"]).is_file():
            continue
        tensors = _shard_tensors(model, examples.select(rows), spec, pad_id)
        _atomic_save(tensors, out_dir / entry["file"])
    return out_dir


@torch.no_grad()
def _shard_tensors(model, examples: datasets.Dataset, spec: PrepareSpec, pad_id: int) -> dict[str, torch.Tensor]:
    finals, features, lengths = [], [], []
    for start in range(0, len(examples), spec.batch_size):
        rows = [examples[i] for i in range(start, min(start + spec.batch_size, len(examples)))]
        batch = pad_collate(rows, pad_id)
        out = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=spec.layer_ids is not None)
        for row, example in enumerate(rows):
            n = len(example["input_ids"])
            lengths.append(n)
            finals.append(out.last_hidden_state[row, :n])
            if spec.layer_ids is not None:
                features.append(torch.cat([out.hidden_states[i][row, :n] for i in spec.layer_ids], dim=-1))
    dtype = DTYPES[spec.dtype]
    tensors = {"final_hidden": torch.cat(finals).to(dtype), "offsets": torch.tensor([0, *lengths]).cumsum(0)}
    if features:
        tensors["features"] = torch.cat(features).to(dtype)
    return tensors


def _save_weights(model, path: Path) -> None:
    embed, lm_head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    tensors = {"embed_tokens": embed.detach().cpu().contiguous()}
    if lm_head.data_ptr() != embed.data_ptr():
        tensors["lm_head"] = lm_head.detach().cpu().contiguous()
    _atomic_save(tensors, path)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def _read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


class FeatureStore:
    """A prepared features folder: its examples, the target's embedding / lm_head, and per-row states."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not (self.dir / MANIFEST).is_file():
            raise FeatureStoreError(f"no prepared features in {self.dir}: run `specdec-prepare` with the same recipe and overrides first (or train with data.features=online)")
        self.manifest = _read_manifest(self.dir)
        missing = [s["file"] for s in self.manifest["shards"] if not (self.dir / s["file"]).is_file()]
        if missing or not (self.dir / WEIGHTS).is_file():
            raise FeatureStoreError(f"{self.dir} is incomplete ({len(missing)} shard(s) missing, e.g. {(missing or [WEIGHTS])[0]}): rerun `specdec-prepare`, which resumes where it stopped")
        self.examples = datasets.load_from_disk(str(self.dir / EXAMPLES))
        self._starts = [s["rows"][0] for s in self.manifest["shards"]]
        self._open: dict[int, tuple[Any, list[int]]] = {}  # shard -> (open file, its offsets)

    @property
    def target(self) -> dict[str, Any]:
        return self.manifest["target"]

    def check(self, layer_ids: list[int] | None, data_settings: dict[str, Any]) -> None:
        """Refuse features stored for other layers or other data than the recipe asks for (a drafter
        that reads only the last hidden state can use any store: every store has it)."""
        if layer_ids is not None and self.manifest["layer_ids"] != layer_ids:
            raise FeatureStoreError(f"{self.dir} stores target layers {self.manifest['layer_ids']} but this recipe reads {layer_ids}: rerun `specdec-prepare` with this recipe")
        differing = sorted(k for k in data_settings if self.manifest["data"].get(k) != data_settings[k])
        if differing:
            raise FeatureStoreError(f"{self.dir} was prepared with other data settings ({', '.join(differing)}): rerun `specdec-prepare` with this recipe, or set data.features_dir")

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embedding [V, H], lm_head [V, H]) of the target, in float32."""
        tensors = load_file(str(self.dir / WEIGHTS))
        embed = tensors["embed_tokens"].float()
        return embed, tensors["lm_head"].float() if "lm_head" in tensors else embed

    def states(self, row: int, layers: bool = True) -> dict[str, torch.Tensor]:
        """`final_hidden` [T, H] of one conversation, and `features` [T, k*H] when `layers` and the store has them."""
        shard = bisect.bisect_right(self._starts, row) - 1
        handle, offsets = self._shard(shard)
        local = row - self._starts[shard]
        begin, end = offsets[local], offsets[local + 1]
        names = ("final_hidden", "features") if layers else ("final_hidden",)
        return {name: handle.get_slice(name)[begin:end] for name in names if name in handle.keys()}

    def _shard(self, index: int) -> tuple[Any, list[int]]:
        if index not in self._open:
            handle = safe_open(str(self.dir / self.manifest["shards"][index]["file"]), framework="pt")
            self._open[index] = (handle, handle.get_tensor("offsets").tolist())
        return self._open[index]


class FeatureDataset(torch.utils.data.Dataset):
    """Rows of a split of `store.examples` with their stored target states attached (the fused
    layers only when `layers`: a drafter reading the last hidden state alone skips them)."""

    def __init__(self, store: FeatureStore, rows: datasets.Dataset, layers: bool = True):
        self.store, self.rows, self.layers = store, rows, layers

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        example = self.rows[index]
        return {**example, **self.store.states(example["row"], self.layers)}


def feature_collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """`pad_collate` plus the stored states, zero-padded to the batch's longest row."""
    batch = pad_collate(examples, pad_id)
    width = batch["input_ids"].shape[1]
    for name in ("final_hidden", "features"):
        if name in examples[0]:
            batch[name] = torch.stack([torch.nn.functional.pad(e[name], (0, 0, 0, width - e[name].shape[0])) for e in examples])
    return batch
