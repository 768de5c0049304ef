"""Record what an acceptance head learns from: decode prompts with a draft (lossless verification)
and keep, for every node of every proposal, its features and whether the target accepted it given
its parent (`specdec.runtime.draft_length.RecordingVerifier`). The records are written as one
safetensors file (no pickles) beside a JSON card of the settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from specdec.models.base import atomic_write
from specdec.eval.benchmark import prompt_ids
from specdec.runtime.draft_length import RecordingVerifier
from specdec.runtime.generator import SpeculativeGenerator
from specdec.runtime.verify import SamplingConfig, resolve_verifier

RECORDS_NAME, CARD_NAME = "acceptance_records.safetensors", "acceptance_records.json"
"""What `save_records` writes into its folder."""


def record_proposals(target, tokenizer, draft, layout, questions: list[dict], max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0, progress: bool = True) -> dict[str, torch.Tensor]:
    """{features, matched, ratio, step} of every node the draft proposed while decoding `questions`
    (MT-Bench-shaped records: `turns[0]` is the prompt) with the layout it will serve with."""
    sampling = SamplingConfig(temperature=temperature)
    recorder = RecordingVerifier(resolve_verifier("auto", sampling))
    generator = SpeculativeGenerator.from_draft(target, draft, layout, tokenizer=tokenizer, verifier=recorder)
    with torch.inference_mode():
        for question in tqdm(questions, desc="record proposals", unit="prompt", disable=not progress):
            generator.generate(prompt_ids(tokenizer, question).to(target.device), max_new_tokens, sampling, seed=seed)
    return recorder.records.tensors()


def save_records(records: dict[str, torch.Tensor], directory: str | Path, card: dict) -> Path:
    """Write the records and their card into `directory`, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in records.items()}
    atomic_write(directory / RECORDS_NAME, lambda p: save_file(tensors, p))
    atomic_write(directory / CARD_NAME, lambda p: Path(p).write_text(json.dumps(card | {"rows": int(records["features"].shape[0])}, indent=2) + "\n"))
    return directory


def load_records(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(records, card) that `save_records` wrote; a missing folder is a FileNotFoundError saying what to run."""
    directory = Path(directory)
    if not (directory / RECORDS_NAME).is_file():
        raise FileNotFoundError(f"{directory / RECORDS_NAME} does not exist: record the draft's proposals first (specdec.eval.acceptance_data.record_proposals)")
    return load_file(directory / RECORDS_NAME), json.loads((directory / CARD_NAME).read_text(encoding="utf-8"))
