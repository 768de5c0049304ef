"""Masked-diffusion targets (issue 13, Learn2PD): a bidirectional denoiser that predicts every masked
position of a sequence at once.

Two kinds load through `load_diffusion_target`:
- specdec's own: a Hugging Face Llama-style causal LM adapted to denoise (bidirectional attention,
  a mask token, the next-token shift so its AR head is reused), saved as a normal model folder plus
  `diffusion.json` (`DiffusionConfig`). Attention is made bidirectional here with an all-visible 4D
  mask, so the checkpoint stays a plain `LlamaForCausalLM`.
- LLaDA / Dream checkpoints: their modelling code ships inside the checkpoint (`auto_map` in
  config.json), so loading them runs that code; it needs an explicit `trust_remote_code=True` and is
  refused otherwise, with an error that says why.

`DiffusionLM.forward(input_ids)` returns [B, T, V] logits aligned to positions: row i predicts the
token at position i (the shift, when the model has one, is applied here).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from specdec.models.base import atomic_write, freeze
from specdec.models.decoder import additive

DIFFUSION_NAME = "diffusion.json"
"""The file that marks a folder as specdec's own masked-diffusion LM."""
MASK_TOKEN = "<|mdm_mask|>"
"""The mask token specdec adds to a tokenizer it adapts (when the tokenizer has none)."""
REMOTE_KINDS = {"llada": False, "dream": True}
"""model_type of the remote-code families -> whether their logits are shifted (Dream: row i-1 predicts token i; LLaDA: row i predicts i)."""
LLADA_MASK_ID = 126336
"""LLaDA's mask token id (its config does not always name it)."""


class DiffusionTargetError(ValueError):
    """A diffusion target that cannot be loaded or used; the message says what to do."""


@dataclass
class DiffusionConfig:
    """What a masked-diffusion LM needs beside its weights."""

    mask_token_id: int
    """Token id that marks a masked position."""
    shift: bool = True
    """True: the logits at position i-1 predict the token at i (an adapted AR model reuses its next-token head; Dream); False: position i predicts itself (LLaDA)."""
    base: str | None = None
    """The causal LM it was adapted from (specdec's own), for the model card."""


class DiffusionLM(nn.Module):
    """A frozen masked-diffusion LM: `forward(input_ids)` -> [B, T, V] logits, row i predicting position i."""

    def __init__(self, model: nn.Module, config: DiffusionConfig, bidirectional_mask: bool):
        super().__init__()
        self.model, self.config, self.bidirectional_mask = model, config, bidirectional_mask

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] ids (and [B, T] 1/0 real/pad) -> [B, T, V] logits, row i predicting position i."""
        if self.bidirectional_mask:
            # Step 1: every position sees every real token (an additive 4D mask overrides the causal one).
            batch, length = input_ids.shape
            keys = torch.ones(batch, length, dtype=torch.bool, device=input_ids.device) if attention_mask is None else attention_mask.bool()
            visible = keys[:, None, None, :].expand(batch, 1, length, length)
            logits = self.model(input_ids=input_ids, attention_mask=additive(visible, next(self.model.parameters()).dtype)).logits
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        # Step 2: align rows to positions (position 0 is never predicted: it is always the prompt's).
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if self.config.shift else logits


def save_diffusion_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: DiffusionConfig, directory: str | Path) -> Path:
    """Write specdec's own diffusion LM: the Hugging Face model and tokenizer plus `diffusion.json` (written last, atomically: it marks the folder complete)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    atomic_write(directory / DIFFUSION_NAME, lambda p: Path(p).write_text(json.dumps(dataclasses.asdict(config) | {"format": "specdec-diffusion"}, indent=2) + "\n"))
    return directory


def load_diffusion_target(name_or_path: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32) -> tuple[DiffusionLM, PreTrainedTokenizerBase]:
    """(the frozen diffusion LM, its tokenizer) from specdec's own folder, or a LLaDA / Dream checkpoint when `trust_remote_code`."""
    folder = Path(name_or_path)
    if (folder / DIFFUSION_NAME).is_file():
        # Step 1: specdec's own: a plain causal LM made bidirectional by the mask.
        config = read_diffusion_config(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        return DiffusionLM(freeze(model), config, bidirectional_mask=True), AutoTokenizer.from_pretrained(folder)
    # Step 2: a remote-code family, only when trusted.
    kind = remote_kind(folder)
    if not trust_remote_code:
        raise DiffusionTargetError(
            f"{name_or_path} is a {kind} checkpoint whose modelling code ships inside it: loading it runs that code. "
            "If you trust its source, pass target.trust_remote_code=true (trust_remote_code=true on the runtime's command line)."
        )
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    mask_id = getattr(model.config, "mask_token_id", None) or (LLADA_MASK_ID if kind == "llada" else tokenizer.mask_token_id)
    if mask_id is None:
        raise DiffusionTargetError(f"{name_or_path}: neither its config nor its tokenizer names a mask token")
    return DiffusionLM(freeze(model), DiffusionConfig(int(mask_id), shift=REMOTE_KINDS[kind], base=str(name_or_path)), bidirectional_mask=False), tokenizer


def read_diffusion_config(folder: Path) -> DiffusionConfig:
    """`diffusion.json` of specdec's own diffusion LM; a damaged file is a DiffusionTargetError."""
    try:
        values = json.loads((folder / DIFFUSION_NAME).read_text(encoding="utf-8"))
        return DiffusionConfig(int(values["mask_token_id"]), bool(values.get("shift", True)), values.get("base"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DiffusionTargetError(f"{folder / DIFFUSION_NAME} is damaged ({type(exc).__name__}: {exc}); adapt the model again or restore the file") from None


def remote_kind(folder: Path) -> str:
    """`llada` or `dream` from a checkpoint folder's config.json; anything else is a DiffusionTargetError naming what to pass."""
    path = folder / "config.json"
    if not path.is_file():
        raise DiffusionTargetError(f"{folder} holds no diffusion LM (no {DIFFUSION_NAME}, no config.json): pass specdec's adapted folder or a LLaDA / Dream checkpoint")
    config = json.loads(path.read_text(encoding="utf-8"))
    model_type = str(config.get("model_type", "")).lower()
    kind = next((k for k in REMOTE_KINDS if k in model_type), None)
    if kind is None:
        raise DiffusionTargetError(
            f"{folder} is a {model_type or 'unknown'} model, not a masked-diffusion LM: adapt a causal LM into one first (specdec's diffusion adaptation), "
            f"or pass a LLaDA / Dream checkpoint"
        )
    return kind
