"""EAGLE drafters in the layouts serving engines and the EAGLE repo load, and back again.

Three layouts (all `config.json` + `model.safetensors`, no `embed_tokens`: the drafter reads the
target's embeddings, which every loader takes from the target):

- `sglang` (EAGLE-3, the "official" layout SGLang loads): sgl-project/sglang
  `python/sglang/srt/models/llama_eagle3.py` (`LlamaForCausalLMEagle3`: `fc` (bias only when
  config `bias`), one `midlayer` = Llama decoder layer with `hidden_norm` and a 2H-wide qkv,
  `norm`, `lm_head` of `draft_vocab_size` rows; `num_hidden_layers` must be 1; `d2t` becomes its
  hot-token map, `t2d` is skipped) and SafeAILab/EAGLE `eagle/model/cnets.py` (same names; the
  residual is the fused hidden state *before* `hidden_norm`, as in our layer).
- `speculators` (EAGLE-3, vLLM's speculators layout): vllm-project/speculators
  `src/speculators/models/eagle3/config.py` (Eagle3SpeculatorConfig: transformer_layer_config,
  draft_vocab_size, norm_before_residual, target_hidden_size, eagle_aux_hidden_state_layer_ids,
  norm_before_fc, fc_norm, norm_output), `src/speculators/config.py` (speculators_config:
  algorithm, proposal_methods, default_proposal_method, verifier {name_or_path, architectures}),
  `src/speculators/proposals/greedy.py`, and `src/speculators/convert/eagle/eagle3_converter.py`
  with `eagle3_legacy_model.py` (renames `midlayer.` to `layers.0.`; `norm_before_residual=False`
  keeps the residual before `hidden_norm`). vllm-project/vllm
  `vllm/transformers_utils/configs/speculators/{base,algos}.py` needs
  `speculators_config.proposal_methods[0].speculative_tokens`, `verifier.name_or_path` and
  `transformer_layer_config`, and reads `norm_before_residual` as TRUE when it is absent, so we
  always write it (false); `vllm/model_executor/models/llama_eagle3.py` maps `d2t` to
  `draft_id_to_target_id` and skips `t2d`.
- EAGLE-3.1 norms (`Eagle3Config.fc_norm`, `norm_output`): speculators' Eagle3SpeculatorConfig
  `fc_norm` = one RMSNorm per fused layer before `fc`, concat(norm_i(h_i)), weights
  `fc_norm.{i}.weight` (a ModuleList); `norm_output` = the final `norm` output is what the next
  TTT step reads and lm_head reads it without a second norm (`src/speculators/models/eagle3/core.py`;
  `norm_before_fc`, one norm over the concatenation, is a different switch we do not implement).
  The `speculators` layout writes both switches and those tensors; SGLang's LlamaForCausalLMEagle3
  and the EAGLE repo have neither, so the `sglang` layout refuses a drafter with one on.
- Count of fused layers: vLLM's `llama_eagle3.py` (0.32) sizes `fc` by the drafter config's
  `num_aux_hidden_states`, else the length of `eagle_config.eagle_aux_hidden_state_layer_ids`,
  else 3; for the speculators layout that config is `transformer_layer_config` (vLLM's
  `configs/speculators/base.py` starts from it and `algos.py` copies no count). We write the count
  there (speculators) or at the top (sglang). speculators' `Eagle3DraftModel` counts the ids.
- Full draft vocabulary (draft_vocab_size == vocab_size, hence d2t = 0): vLLM then has no
  `draft_id_to_target_id` parameter to load `d2t` into, and SafeAILab/EAGLE deletes its d2t/t2d
  buffers before loading; SGLang (no hot-token map without `d2t`) and speculators (d2t/t2d in
  `_keys_to_ignore_on_load_missing`) accept their absence. So neither tensor is written then.
- `eagle` (EAGLE-1, SafeAILab/EAGLE `ea_model` draft folder): `eagle/model/cnets1.py` (`fc`
  Linear(2H, H, bias=config `bias`) on cat(embeds, hidden), `layers.0` = Llama decoder layer with
  no `input_layernorm` at index 0, head_dim = hidden_size / num_attention_heads) and
  `eagle/model/ea_model.py` (`EaModel.from_pretrained(use_eagle3=False, ...)` reads
  `config.json`, then `pytorch_model.bin` or, when that is absent, `model.safetensors`; we write
  the latter only; missing keys are tolerated there, so names must be exact). The layout has no
  lm_head (loaders project with the target's) and no vocabulary map, so a drafter with a reduced
  draft vocabulary (`Eagle1Config.draft_vocab_size`) is written without its `d2t` / `t2d` (older
  EAGLE releases load strictly) and reads back as the full-vocabulary drafter engines run; the
  export warns that engines then score the full vocabulary and may propose tokens outside it.

Aux layer ids (EAGLE-3). Ours (`Eagle3Config.layer_ids`, convention `hf_hidden_states`) index
Hugging Face's `output_hidden_states`: 0 = embeddings, i = output of decoder layer i-1 (= input of
layer i). The engines capture `hidden_states + residual` (the pre-norm residual stream) at the
*input* of a layer, but number it differently:
- vLLM (`vllm/model_executor/models/llama.py`: `if idx in self.aux_hidden_state_layers` before
  layer idx runs; `vllm/v1/worker/gpu_model_runner.py` passes the draft config's
  `eagle_aux_hidden_state_layer_ids` unchanged, and `configs/speculators/algos.py` turns them into
  DFlash's output-of-layer ids by subtracting 1) and speculators (default `[2, n//2, n-3]` in
  `src/speculators/models/utils.py`, the same as EAGLE's) count the input of layer k as k: the
  same numbers as ours. The `speculators` layout writes ours as is.
- SGLang (`python/sglang/srt/models/llama.py` `set_eagle3_layers_to_capture`: "we plus 1 here
  because in sglang, for the ith layer, it takes the output of the (i-1)th layer") reads
  `eagle_config.eagle_aux_hidden_state_layer_ids` as output-of-layer k = our k + 1. The `sglang`
  layout writes ours minus 1 there, and ours unchanged as the top-level
  `eagle_aux_hidden_state_layer_ids` (the key vLLM reads first; SGLang reads `eagle_config`).
- The EAGLE repo ignores both and always fuses the inputs of layers 2, L//2, L-3
  (`eagle/model/modeling_llama_kv.py`), i.e. our default_layer_ids.
Every EAGLE-3 layout also records ours under `specdec_layer_ids`. Engines concatenate captured
states in ascending layer order and cannot capture the embeddings (no residual before layer 0),
so exported ids must be strictly increasing and at least 1.

Importing this module registers the three layouts and the EAGLE model-card descriptions
(specdec.models.formats); `specdec` is registered there, for every draft type.

Sources read: SafeAILab/EAGLE at cb7e0841 (2026-02), vllm-project/speculators at c05b95b3, and
the sgl-project/sglang and vllm-project/vllm files named above as stored by the code index.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from specdec.models.base import CONFIG_NAME, DraftModel, atomic_write, read_draft_config
from specdec.models.decoder import LayerShape
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import LAYER_ID_CONVENTION, Eagle3Config, Eagle3Drafter, default_layer_ids
from specdec.models.formats import ExportFormat, ExportJob, FormatError, find_layout, formats_for, register_description, register_format

EAGLE_FORMATS = ("sglang", "speculators", "eagle")
DRAFT_TYPE_OF = {"sglang": Eagle3Drafter.draft_type, "speculators": Eagle3Drafter.draft_type, "eagle": Eagle1Drafter.draft_type}
"""Layout -> the draft type it holds."""
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"
"""What older EAGLE-1 releases ship; read (never written) by `load_eagle_export`."""
SPECULATORS_VERSION = "0.3.0"
"""speculators release whose config schema we write (eagle_aux_hidden_state_layer_ids and norm_before_residual exist since 0.2.0)."""
DEFAULT_SPECULATIVE_TOKENS = 3
"""speculators' converter default for the greedy proposal's `speculative_tokens`."""
LAYER_PREFIX = {"sglang": "midlayer.", "speculators": "layers.0.", "eagle": "layers.0."}
_LAYER_NAMES = {
    # our DecoderLayer's flat module names -> a Llama decoder layer's
    "input_layernorm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "post_attention_layernorm": "post_attention_layernorm",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
_IN_LAYER = ("input_layernorm", "hidden_norm")
"""Eagle3Drafter norms that upstream keeps inside its decoder layer."""
_IGNORED = ("embed_tokens.weight",)
"""Upstream tensors our drafters take from the target instead."""
_VOCAB_MAPS = ("d2t", "t2d")
"""Vocabulary maps, not written for a full draft vocabulary nor in the EAGLE-1 layout (see the module docstring)."""


class EagleFormatError(FormatError):
    """An unknown layout, a draft type the layout cannot hold, or a folder that is not the layout it claims."""


def check_eagle_format(fmt: str) -> str:
    """`fmt` if it is one of EAGLE_FORMATS, else an EagleFormatError listing them."""
    if fmt not in EAGLE_FORMATS:
        raise EagleFormatError(f"unknown EAGLE export format {fmt!r}; choose one of {', '.join(EAGLE_FORMATS)}")
    return fmt


def key_map(draft: DraftModel, fmt: str) -> dict[str, str]:
    """Our state-dict key -> the key `fmt` uses for that tensor."""
    prefix = LAYER_PREFIX[check_eagle_format(fmt)]
    mapping = {}
    for key in draft.state_dict():
        head, _, rest = key.partition(".")
        if head == "layer":
            module, _, param = rest.rpartition(".")
            mapping[key] = f"{prefix}{_LAYER_NAMES[module]}.{param}"
        elif head in _IN_LAYER:
            mapping[key] = prefix + key
        else:
            mapping[key] = key
    return mapping


def to_sglang_layer_ids(layer_ids) -> list[int]:
    """Ours (input of layer k = k) -> SGLang's eagle_config ids (output of layer k-1 = k-1)."""
    return [int(i) - 1 for i in layer_ids]


def from_sglang_layer_ids(layer_ids) -> list[int]:
    """SGLang's eagle_config ids -> ours."""
    return [int(i) + 1 for i in layer_ids]


def export_eagle(
    draft: DraftModel,
    out_dir,
    fmt: str,
    base_model: str = "",
    extra_config: dict | None = None,
    num_speculative_tokens: int = DEFAULT_SPECULATIVE_TOKENS,
    max_position_embeddings: int | None = None,
    verifier_architectures=("LlamaForCausalLM",),
) -> Path:
    """Write `draft` to `out_dir` in layout `fmt`; returns the folder.

    `base_model` names the target (speculators' verifier.name_or_path). `num_speculative_tokens`
    is the speculators greedy proposal length (vLLM's default num_speculative_tokens).
    `max_position_embeddings` should be the target's: engines size RoPE tables and may cap the
    context by it (omitted when unknown, with a warning). `extra_config` keys (provenance,
    metrics) are added to config.json without replacing the layout's own fields.
    """
    # Step 1: the layout must fit the draft.
    _check_fits(draft, fmt)
    if fmt == "speculators" and (not isinstance(num_speculative_tokens, int) or num_speculative_tokens < 1):
        raise EagleFormatError(f"num_speculative_tokens must be a positive integer, got {num_speculative_tokens!r}")
    if max_position_embeddings is None:
        warnings.warn(f"exporting the {fmt} layout without the target's max_position_embeddings: engines then use their default (2048 for a Llama config) for the drafter", stacklevel=2)
    # Step 2: tensors under the layout's names, and its config.
    state = {k: v.detach().cpu().contiguous() for k, v in draft.state_dict().items()}
    dropped = _VOCAB_MAPS if _full_vocab(draft) or fmt == "eagle" else ()
    tensors = {theirs: state[ours] for ours, theirs in key_map(draft, fmt).items() if ours not in dropped}
    upstream = upstream_config(draft, fmt, base_model, num_speculative_tokens, max_position_embeddings, list(verifier_architectures))
    config = {**(extra_config or {}), **upstream}
    # Step 3: weights then config, each atomically.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(out_dir / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return out_dir


def _check_fits(draft: DraftModel, fmt: str) -> None:
    """EagleFormatError unless `fmt` can hold `draft` exactly (see the module docstring)."""
    check_eagle_format(fmt)
    draft_type = getattr(draft, "draft_type", type(draft).__name__)
    if draft_type != DRAFT_TYPE_OF[fmt]:
        fits = [f for f in formats_for(draft_type) if f in EAGLE_FORMATS]
        hint = f"formats that fit it: {', '.join(fits)}" if fits else "no EAGLE layout holds it"
        raise EagleFormatError(f"the {fmt} layout holds {DRAFT_TYPE_OF[fmt]} drafts, not {draft_type}; {hint}")
    shape = draft.config.layer
    if fmt == "eagle":
        if draft.reduced_vocab:
            warnings.warn(
                f"the eagle layout has no lm_head: engines score this drafter's features with the target's full lm_head, so they may propose "
                f"tokens outside its {draft.num_draft_tokens}-token draft vocabulary (verification keeps the output exact; specdec's runtime never does)",
                stacklevel=3,
            )
        if shape.num_heads * shape.head_dim != shape.hidden_size:
            warnings.warn(
                f"num_heads * head_dim = {shape.num_heads * shape.head_dim} != hidden_size {shape.hidden_size}: SafeAILab/EAGLE's "
                "cnets1 derives head_dim = hidden_size / num_attention_heads and cannot load this layer (load_eagle_export can)",
                stacklevel=3,
            )
        return
    cfg = draft.config
    if cfg.layer_id_convention != LAYER_ID_CONVENTION:
        raise EagleFormatError(f"layer_ids are in the {cfg.layer_id_convention!r} numbering; the export converts from {LAYER_ID_CONVENTION!r} only")
    ids = list(cfg.layer_ids)
    if ids != sorted(set(ids)) or ids[0] < 1:
        raise EagleFormatError(f"layer_ids {ids} cannot be served: engines concatenate the captured layers in ascending order and cannot capture the embeddings (id 0); they must be strictly increasing and >= 1")
    if fmt == "sglang" and (cfg.fc_norm or cfg.norm_output):
        switches = " and ".join(k for k in ("fc_norm", "norm_output") if getattr(cfg, k))
        raise EagleFormatError(f"this drafter uses EAGLE-3.1's {switches}, which SGLang's LlamaForCausalLMEagle3 and the EAGLE repo cannot represent: export format=speculators (vLLM) or format=specdec")
    if fmt == "sglang" and len(ids) != 3:
        raise EagleFormatError(f"SGLang's LlamaForCausalLMEagle3 fuses exactly 3 target layers (fc: 3H -> H); this draft fuses {len(ids)}")
    if cfg.draft_vocab_size == cfg.vocab_size and bool(draft.d2t.any()):
        raise EagleFormatError("the draft vocabulary is the full target vocabulary in another order; engines read a full vocabulary as the target's own order (no d2t): re-install it with set_vocab(torch.arange(vocab_size))")


def _full_vocab(draft: DraftModel) -> bool:
    """An EAGLE-3 drafter whose draft vocabulary is the whole target vocabulary (EAGLE-1 has no draft vocabulary)."""
    return getattr(draft.config, "draft_vocab_size", None) == draft.config.vocab_size


def _dtype_name(draft: DraftModel) -> str:
    return str(next(draft.parameters()).dtype).removeprefix("torch.")


def llama_layer_config(shape: LayerShape, vocab_size: int, dtype: str, max_position_embeddings: int | None = None) -> dict:
    """A one-layer Llama config dict for `shape` (rope written both as transformers 4 and 5 spell it; no scaling)."""
    config = {
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }
    if max_position_embeddings is not None:
        config["max_position_embeddings"] = int(max_position_embeddings)
    return config


def _layer_id_record(layer_ids) -> dict:
    return {
        LAYER_ID_CONVENTION: list(layer_ids),
        "convention": "index into Hugging Face output_hidden_states: 0 = embeddings, i = output of decoder layer i-1 (= input of layer i)",
    }


def upstream_config(
    draft: DraftModel,
    fmt: str,
    base_model: str = "",
    num_speculative_tokens: int = DEFAULT_SPECULATIVE_TOKENS,
    max_position_embeddings: int | None = None,
    verifier_architectures: list[str] | None = None,
) -> dict:
    """The config.json fields the `fmt` loaders read (see the module docstring for the sources)."""
    cfg = draft.config
    layer = llama_layer_config(cfg.layer, cfg.vocab_size, _dtype_name(draft), max_position_embeddings)
    if fmt == "eagle":
        return {"architectures": ["LlamaForCausalLM"], **layer, "bias": True}
    ids = list(cfg.layer_ids)
    if fmt == "sglang":
        return {
            "architectures": ["LlamaForCausalLMEagle3"],
            **layer,
            "draft_vocab_size": cfg.draft_vocab_size,
            "bias": False,
            "num_aux_hidden_states": len(ids),
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": to_sglang_layer_ids(ids), "use_aux_hidden_state": True},
            "eagle_aux_hidden_state_layer_ids": ids,
            "specdec_layer_ids": {**_layer_id_record(ids), "eagle_config": "SGLang numbering: ours - 1", "top_level": "vLLM numbering: ours"},
        }
    proposal = {"proposal_type": "greedy", "speculative_tokens": num_speculative_tokens, "verifier_accept_k": 1, "accept_tolerance": 0.0}
    return {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION,
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [proposal],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": base_model or None, "architectures": list(verifier_architectures or [])},
        },
        "transformer_layer_config": {**layer, "num_aux_hidden_states": len(ids)},
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": cfg.hidden_size,
        "norm_before_residual": False,
        "norm_before_fc": False,
        "fc_norm": bool(cfg.fc_norm),
        "norm_output": bool(cfg.norm_output),
        "embed_requires_grad": False,
        "eagle_aux_hidden_state_layer_ids": ids,
        "specdec_layer_ids": _layer_id_record(ids),
    }


def detect_eagle_format(config: dict) -> str | None:
    """The EAGLE layout a parsed config.json describes, or None when it is none of them."""
    layout = find_layout(config)
    return layout.name if layout is not None and layout.name in EAGLE_FORMATS else None


def _is_speculators(config: dict) -> bool:
    """A speculators EAGLE-3 config (speculators' other model types are no layout of ours)."""
    return config.get("speculators_model_type") == "eagle3"


def _is_sglang(config: dict) -> bool:
    """SGLang's EAGLE-3 config; the EAGLE repo's own EAGLE-3 configs say LlamaForCausalLM but carry draft_vocab_size."""
    archs = config.get("architectures") or []
    return "speculators_model_type" not in config and ("LlamaForCausalLMEagle3" in archs or ("LlamaForCausalLM" in archs and "draft_vocab_size" in config))


def _is_eagle1(config: dict) -> bool:
    """An EAGLE-1 ea_model config: a one-layer Llama without a draft vocabulary."""
    archs = config.get("architectures") or []
    return "speculators_model_type" not in config and not _is_sglang(config) and "LlamaForCausalLM" in archs and config.get("num_hidden_layers") == 1


def load_eagle_export(directory, fmt: str | None = None, target_num_layers: int | None = None) -> DraftModel:
    """Read an EAGLE layout back into our Eagle1Drafter / Eagle3Drafter (tensors as written).

    An EAGLE-3 folder that records no aux layer ids (e.g. SGLang-layout releases relying on the
    engine default) needs `target_num_layers` to rebuild the default [2, L//2, L-3].
    """
    # Step 1: the layout, from the argument or the config.
    directory = Path(directory)
    config = read_draft_config(directory)
    if "draft_type" in config:
        raise EagleFormatError(f"{directory} is a specdec draft folder, not an upstream layout: load it with specdec.models.base.load_draft")
    fmt = check_eagle_format(fmt) if fmt else detect_eagle_format(config)
    if fmt is None:
        raise EagleFormatError(f"{directory / CONFIG_NAME} matches no EAGLE layout ({', '.join(EAGLE_FORMATS)})")
    tensors = _read_weights(directory, fmt)
    # Step 2: an empty drafter of the recorded shape.
    draft = _empty_draft(config, fmt, tensors, target_num_layers, directory)
    # Step 3: tensors renamed to ours, checked, loaded.
    for key in _IGNORED:
        if tensors.pop(key, None) is not None:
            warnings.warn(f"{directory} carries its own {key}; our drafter uses the target's embeddings instead", stacklevel=2)
    mapping = {theirs: ours for ours, theirs in key_map(draft, fmt).items()}
    if fmt == "eagle" and config.get("bias") is False and "fc.bias" not in tensors:
        tensors["fc.bias"] = torch.zeros(draft.config.hidden_size, dtype=tensors["fc.weight"].dtype)
    if _full_vocab(draft) and "d2t" not in tensors and "t2d" not in tensors:
        tensors["d2t"] = torch.zeros(draft.config.vocab_size, dtype=torch.long)
        tensors["t2d"] = torch.ones(draft.config.vocab_size, dtype=torch.bool)
    missing = sorted(set(mapping) - set(tensors))
    unexpected = sorted(set(tensors) - set(mapping))
    if missing or unexpected:
        raise EagleFormatError(f"{directory} does not hold a {fmt} {DRAFT_TYPE_OF[fmt]} drafter: missing {missing[:3]}, unexpected {unexpected[:3]}")
    draft.to(tensors["fc.weight"].dtype)
    try:
        draft.load_state_dict({mapping[k]: v for k, v in tensors.items()})
    except RuntimeError as exc:
        raise EagleFormatError(f"{directory}: tensor shapes do not match its config.json ({str(exc).splitlines()[-1].strip()})") from exc
    return draft


def _read_weights(directory: Path, fmt: str) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if path.is_file():
        return load_file(path)
    legacy = directory / LEGACY_WEIGHTS_FILE
    if fmt == "eagle" and legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise EagleFormatError(f"{directory} is not a {fmt} export: {WEIGHTS_FILE} is missing")


def layer_shape_from_config(config: dict) -> LayerShape:
    """The LayerShape a Llama config dict describes (defaults as LlamaConfig's)."""
    heads = config["num_attention_heads"]
    if (config.get("rope_scaling") or {}).get("rope_type", (config.get("rope_scaling") or {}).get("type", "default")) != "default":
        warnings.warn(f"rope_scaling {config['rope_scaling']} is ignored: specdec's drafter layer applies plain RoPE", stacklevel=3)
    rope = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    return LayerShape(
        hidden_size=config["hidden_size"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate_size=config["intermediate_size"],
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope),
    )


def _empty_draft(config: dict, fmt: str, tensors: dict, target_num_layers: int | None, directory: Path) -> DraftModel:
    """An Eagle1Drafter / Eagle3Drafter built from the layout's config fields."""
    layer_config = config["transformer_layer_config"] if fmt == "speculators" else config
    if layer_config.get("num_hidden_layers", 1) != 1:
        raise EagleFormatError(f"{directory} has {layer_config['num_hidden_layers']} drafter layers; specdec's EAGLE drafters have one")
    shape = layer_shape_from_config(layer_config)
    vocab_size = layer_config["vocab_size"]
    if fmt == "eagle":
        return Eagle1Drafter(Eagle1Config(hidden_size=shape.hidden_size, vocab_size=vocab_size, layer=shape))
    if fmt == "speculators":
        unsupported = ["norm_before_fc"] if config.get("norm_before_fc") else []
        if config.get("norm_before_residual"):
            unsupported.append("norm_before_residual")
        if unsupported:
            raise EagleFormatError(f"{directory} uses {', '.join(unsupported)}, which specdec's Eagle3Drafter does not implement")
        ids = config.get("eagle_aux_hidden_state_layer_ids")
    else:
        sglang_ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        ids = from_sglang_layer_ids(sglang_ids) if sglang_ids else config.get("eagle_aux_hidden_state_layer_ids")
    if not ids:
        if target_num_layers is None:
            raise EagleFormatError(f"{directory} records no aux layer ids; pass target_num_layers to use the engines' default [2, L//2, L-3]")
        ids = default_layer_ids(target_num_layers)
    target_hidden = config.get("target_hidden_size")
    if target_hidden not in (None, shape.hidden_size):
        raise EagleFormatError(f"{directory}: target_hidden_size {target_hidden} != hidden_size {shape.hidden_size}; specdec's Eagle3Drafter needs them equal")
    draft_vocab = config.get("draft_vocab_size") or layer_config.get("draft_vocab_size") or vocab_size
    norms = {k: bool(config.get(k)) for k in ("fc_norm", "norm_output")} if fmt == "speculators" else {}
    return Eagle3Drafter(Eagle3Config(hidden_size=shape.hidden_size, vocab_size=vocab_size, draft_vocab_size=draft_vocab, layer_ids=list(ids), layer=shape, **norms))


def _write(fmt: str, job: ExportJob) -> None:
    """`export_eagle` for specdec-export, with the target's max_position_embeddings and architectures (its config.json when named)."""
    facts = job.target.facts()
    export_eagle(job.draft, job.out, fmt, base_model=job.base_model, extra_config=job.extra_config, max_position_embeddings=facts["max_position_embeddings"], verifier_architectures=facts["architectures"])


def _speculative_tokens(config: dict) -> dict:
    """The model card's `tokens` field: the greedy proposal length a speculators config.json records."""
    proposals = (config.get("speculators_config") or {}).get("proposal_methods") or [{}]
    return {"tokens": proposals[0].get("speculative_tokens", DEFAULT_SPECULATIVE_TOKENS)}


def _describe_eagle3(config: dict, layout: str) -> str:
    """The model card's line on an EAGLE-3 drafter, from its config.json (specdec, sglang or speculators)."""
    ids = config.get("layer_ids") or (config.get("specdec_layer_ids") or {}).get(LAYER_ID_CONVENTION)
    return f"one decoder layer fusing the target hidden states {ids} (Hugging Face output_hidden_states numbering), {config.get('draft_vocab_size')}-token draft vocabulary"


def _register(fmt: str, detect, use: str, help: str, **fields) -> None:
    """Register the layout `fmt` (ExportFormat's other fields in `fields`)."""
    register_format(
        ExportFormat(
            name=fmt,
            draft_types=(DRAFT_TYPE_OF[fmt],),
            write=functools.partial(_write, fmt),
            read=functools.partial(load_eagle_export, fmt=fmt),
            detect=detect,
            use=use,
            error=EagleFormatError,
            help=help,
            **fields,
        )
    )


_register(
    "sglang",
    _is_sglang,
    "SGLang: `python -m sglang.launch_server --model-path {base} --speculative-algorithm EAGLE3 --speculative-draft-model-path PATH` "
    "(tune with --speculative-num-steps, --speculative-eagle-topk, --speculative-num-draft-tokens). SafeAILab/EAGLE loads it too: "
    '`EaModel.from_pretrained(base_model_path="{base}", ea_model_path="PATH", use_eagle3=True)` (it always fuses the inputs of layers 2, L//2, L-3).',
    "SGLang / EAGLE repo",
)
_register(
    "speculators",
    _is_speculators,
    'vLLM: `LLM(model="{base}", speculative_config={{"method": "eagle3", "model": "PATH", "num_speculative_tokens": {tokens}}})`, '
    "or `vllm serve PATH`, which serves the verifier named in config.json with this drafter.",
    "vLLM",
    use_fields=_speculative_tokens,
    target_field="`speculators_config.verifier.name_or_path` in config.json",
    instead_of={"vllm": "vLLM loads EAGLE-3 drafts from the speculators layout"},
)
_register(
    "eagle",
    _is_eagle1,
    'SafeAILab/EAGLE: `EaModel.from_pretrained(base_model_path="{base}", ea_model_path="PATH", use_eagle3=False)` '
    "(EAGLE-1 weights; EAGLE-2's dynamic tree comes from its total_token / depth / top_k arguments).",
    "SafeAILab/EAGLE ea_model folder",
)
register_description(Eagle3Drafter.draft_type, "EAGLE-3", _describe_eagle3)
register_description(
    Eagle1Drafter.draft_type, "EAGLE-1", lambda config, layout: "one decoder layer predicting the target's next last-layer feature, token logits through the target's lm_head"
)
