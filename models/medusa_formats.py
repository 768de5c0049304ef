"""Medusa heads in the layouts serving engines load, and back again.

Every layout holds, per head h (0-based) and ResBlock l, a Linear(H, H) with bias and one
vocabulary projection Linear(H, V) without bias. Key names and config fields follow:

- `medusa`: FasterDecoding/Medusa `medusa/model/medusa_model.py` (`MedusaConfig` fields
  medusa_num_heads, medusa_num_layers, base_model_name_or_path; `medusa_head` is a ModuleList of
  Sequential(ResBlock x L, Linear(H, V, bias=False)), so keys are `{h}.{l}.linear.*` and
  `{h}.{L}.weight`) and `medusa/train/train_legacy.py` (saves `medusa_head.state_dict()`).
  `MedusaModel.from_pretrained` reads only `medusa_lm_head.pt` (torch.load, then
  load_state_dict(strict=False), so names must be exact); NVIDIA/TensorRT-LLM
  `tensorrt_llm/models/medusa/weight.py` (`load_medusa_hf`) reads that file, else
  `medusa_lm_head.safetensors`, and `examples/medusa/convert_checkpoint.py` takes the head count
  from `--num_medusa_heads` (default 4), not from config.json. We write both files, same tensors.
  Note: upstream's MedusaModel repeats ONE ResBlock instance L times, so with num_layers > 1 only
  loaders that read each `{h}.{l}` key separately (TensorRT-LLM's converter, our loader)
  reproduce our heads.
- `vllm`: vllm-project/vllm `vllm/model_executor/models/medusa.py` (`blocks.{h}.layers.{l}`,
  bias only when `config.medusa_fc_bias`, `lm_heads.{h}.weight`) and
  `vllm/transformers_utils/configs/medusa.py` (`model_type: medusa`, hidden_size, vocab_size,
  num_heads, num_hidden_layers, max_paths, topk, truncated_vocab_size). That config renames every
  top-level key containing "num" and "heads"/"layers", so we write no other such key.
- `tensorrt_llm`: a whole TensorRT-LLM checkpoint (tensor and pipeline parallel size 1) that
  `trtllm-build` takes: the Medusa heads under NVIDIA/TensorRT-LLM
  `tensorrt_llm/models/medusa/weight.py`'s names (`medusa_heads.{h}.medusa_layers.{l}.linear.*`,
  `medusa_heads.{h}.lm_head.weight`) next to the target's weights under the names of
  `tensorrt_llm/models/llama/convert.py` (`load_weights_from_hf_model`, tp=1:
  `transformer.vocab_embedding`, `transformer.layers.{i}.attention.qkv` = cat(q, k, v),
  `attention.dense` = o_proj, `mlp.fc` = gate_proj, `mlp.gate` = up_proj, `mlp.proj` = down_proj,
  `input_layernorm`, `post_layernorm`, `transformer.ln_f`, `lm_head`), all in `rank0.safetensors`.
  `PretrainedModel.load` (`tensorrt_llm/models/modeling_utils.py`) refuses a checkpoint missing
  any of them. config.json carries the fields `examples/medusa/convert_checkpoint.py` writes
  (architecture MedusaForCausalLM, dtype, logits_dtype, num_hidden_layers, num_attention_heads,
  hidden_size, intermediate_size, num_key_value_heads, vocab_size, position_embedding_type
  rope_gpt_neox, max_position_embeddings, hidden_act, rotary_base, rotary_scaling, norm_epsilon,
  quantization, mapping, use_parallel_embedding, embedding_sharding_dim, max_draft_len,
  num_medusa_heads, num_medusa_layers, model_type) plus head_size, attn_bias and mlp_bias of
  `tensorrt_llm/models/llama/config.py` (`LLaMAConfig`), which takes rotary_scaling as the Hugging
  Face rope dict. Llama targets without biases only; the heads' ResBlocks use the config's
  hidden_act there, so it must be silu as in ours.
- `specdec`: our own draft folder (`DraftModel.save_pretrained`), shared lm_head kept shared.

Reduced draft vocabulary (`MedusaConfig.draft_vocab_size`, specdec.models.vocab):
- `vllm` holds it as vLLM's Medusa reads it (`vllm/model_executor/models/medusa.py`): config
  `truncated_vocab_size` = V_draft < vocab_size, a `token_map` tensor [V_draft] of the draft
  tokens' target ids, and `lm_heads.{h}.weight` of V_draft rows; vLLM scatters the logits back
  into the full vocabulary with -inf elsewhere, so it never proposes another token.
- `medusa` and `tensorrt_llm` have bias-free full-vocabulary projections only, so each head's
  rows are scattered back into [V, H] (`full_vocab_rows`): draft token rows at their target ids,
  every other row the mean of the draft rows. A token outside the draft vocabulary then scores
  the mean of the draft logits, strictly below the best draft token's: every head's top-1
  candidate (all that vLLM and a chain use) is a draft token, while the lower ranks of a top-k
  tree may hold such tokens (no bias-free row choice can exclude them; verification keeps the
  output exact either way). `medusa` also carries `token_map` and `truncated_vocab_size` (ignored
  by FasterDecoding's strict=False load), which vLLM uses to slice the rows back and our loader
  to restore the reduced heads exactly; `tensorrt_llm` comes back as full-vocabulary heads.

Importing this module registers the three upstream layouts and the Medusa model-card description
(specdec.models.formats); `specdec` is registered there, for every draft type.
"""

from __future__ import annotations

import functools
import json
import pickle
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from transformers import PreTrainedModel

from specdec.models.base import CONFIG_NAME, DraftMismatchError, atomic_write, lm_head_weight, load_draft, read_draft_config
from specdec.models.decoder import LayerShape
from specdec.models.formats import ExportFormat, ExportJob, FormatError, find_layout, register_description, register_format
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.models.vocab import full_vocab_rows

FORMATS = ("medusa", "vllm", "tensorrt_llm", "specdec")

LAYOUTS = {
    # format: weights file, key templates ({h} head, {l} ResBlock, {p} weight|bias, {L} num_layers),
    # and the config fields that hold the head and ResBlock counts.
    "medusa": {"weights": "medusa_lm_head.safetensors", "block": "{h}.{l}.linear.{p}", "lm_head": "{h}.{L}.weight", "num_heads": "medusa_num_heads", "num_layers": "medusa_num_layers"},
    "vllm": {"weights": "model.safetensors", "block": "blocks.{h}.layers.{l}.{p}", "lm_head": "lm_heads.{h}.weight", "num_heads": "num_heads", "num_layers": "num_hidden_layers"},
    "tensorrt_llm": {"weights": "rank0.safetensors", "block": "medusa_heads.{h}.medusa_layers.{l}.linear.{p}", "lm_head": "medusa_heads.{h}.lm_head.weight", "num_heads": "num_medusa_heads", "num_layers": "num_medusa_layers"},
    "specdec": {"weights": "model.safetensors", "block": "blocks.{h}.{l}.linear.{p}", "lm_head": "lm_heads.{h}.weight", "num_heads": "num_heads", "num_layers": "num_layers"},
}


TOKEN_MAP = "token_map"
"""vLLM's tensor of a reduced draft vocabulary: the target ids of draft tokens 0..V_draft-1."""
MEDUSA_PT_FILE = "medusa_lm_head.pt"
"""The `medusa` layout's second weights file (a plain tensor dict saved with torch.save): the only one
FasterDecoding/Medusa reads. We read it back (weights_only=True) only when the safetensors file is absent."""


class MedusaFormatError(FormatError):
    """An unknown layout, or a folder that does not hold the layout it claims."""


def check_format(fmt: str) -> str:
    """`fmt` if it is one of FORMATS, else a MedusaFormatError listing them."""
    if fmt not in FORMATS:
        raise MedusaFormatError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def key_map(fmt: str, num_heads: int, num_layers: int) -> dict[str, str]:
    """Our per-head state-dict key (`share_lm_head=False`) -> the key `fmt` uses for that tensor."""
    layout = LAYOUTS[check_format(fmt)]
    mapping = {}
    for h in range(num_heads):
        for l in range(num_layers):
            for p in ("weight", "bias"):
                mapping[f"blocks.{h}.{l}.linear.{p}"] = layout["block"].format(h=h, l=l, p=p)
        mapping[f"lm_heads.{h}.weight"] = layout["lm_head"].format(h=h, L=num_layers)
    return mapping


def detect_format(config: dict) -> str:
    """The Medusa layout a folder's parsed config.json describes (`specdec` for any specdec draft folder)."""
    layout = find_layout(config)
    if layout is not None and layout.name in FORMATS:
        return layout.name
    raise MedusaFormatError(f"config.json matches no Medusa layout ({', '.join(FORMATS)}): it has none of the head-count fields {[LAYOUTS[f]['num_heads'] for f in LAYOUTS]}")


def export_medusa(
    heads: MedusaHeads,
    out_dir,
    fmt: str,
    lm_head_weight: torch.Tensor | None = None,
    base_model: str = "",
    extra_config: dict | None = None,
    target_model: PreTrainedModel | None = None,
) -> Path:
    """Write `heads` to `out_dir` in layout `fmt`; returns the folder.

    Heads that share the target lm_head need `lm_head_weight` [V, H] for every layout but
    `specdec`, which keeps the projection shared. `tensorrt_llm` is a whole checkpoint and needs
    the target itself (`target_model`, a Llama causal LM). `extra_config` keys (provenance,
    metrics) are added to the config file without replacing the layout's own fields.
    """
    # Step 1: the specdec layout is our own save_pretrained.
    out_dir = Path(out_dir)
    if check_format(fmt) == "specdec":
        return heads.save_pretrained(out_dir, extra=extra_config)
    if fmt == "medusa" and heads.config.num_layers > 1:
        warnings.warn("FasterDecoding/Medusa's MedusaModel ties the ResBlocks of a head; with num_layers > 1 only TensorRT-LLM's converter (or specdec) loads this export exactly", stacklevel=2)
    # Step 2: per-head tensors under the layout's names (and for TensorRT-LLM the target's, converted).
    state = _vocabulary_state(heads, _per_head_state(heads, lm_head_weight), fmt)
    tensors = {theirs: state[ours] for ours, theirs in key_map(fmt, heads.config.num_heads, heads.config.num_layers).items()}
    if TOKEN_MAP in state:
        tensors[TOKEN_MAP] = state[TOKEN_MAP]
    config = {**(extra_config or {}), **upstream_config(heads.config, fmt, base_model, _dtype_name(heads), target_model, heads.num_draft_tokens if heads.reduced_vocab else None)}
    if fmt == "tensorrt_llm":
        tensors.update(tensorrt_llm_target_weights(target_model, state["blocks.0.0.linear.weight"].dtype))
    # Step 3: weights then config, each atomically.
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / LAYOUTS[fmt]["weights"], lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    if fmt == "medusa":
        atomic_write(out_dir / MEDUSA_PT_FILE, lambda p: torch.save(tensors, p))
    atomic_write(out_dir / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return out_dir


def upstream_config(config: MedusaConfig, fmt: str, base_model: str = "", dtype: str = "float32", target_model: PreTrainedModel | None = None, draft_vocab_size: int | None = None) -> dict:
    """The config.json fields the `fmt` loader reads (see the module docstring for the sources);
    `draft_vocab_size` is V_draft of a reduced draft vocabulary (None: the full one)."""
    counts = {LAYOUTS[fmt]["num_heads"]: config.num_heads, LAYOUTS[fmt]["num_layers"]: config.num_layers}
    truncated = {"truncated_vocab_size": draft_vocab_size or config.vocab_size}
    if fmt == "medusa":
        # FasterDecoding reads the counts and the base model; vLLM (which also takes this layout) needs the
        # sizes (its MedusaConfig defaults to 4096 / 32001) and medusa_fc_bias (else it drops the biases).
        shape = {"hidden_size": config.hidden_size, "vocab_size": config.vocab_size, "medusa_fc_bias": True}
        return {**counts, **shape, **(truncated if draft_vocab_size else {}), "base_model_name_or_path": base_model}
    if fmt == "vllm":
        shape = {"hidden_size": config.hidden_size, "vocab_size": config.vocab_size, **truncated}
        return {"model_type": "medusa", "architectures": ["MedusaModel"], **shape, **counts, "max_paths": 64, "topk": 10, "medusa_fc_bias": True, "original_lm_head": False}
    return {**tensorrt_llm_target_config(target_model, config, dtype), **counts, "max_draft_len": 63}


def tensorrt_llm_target_config(target_model: PreTrainedModel | None, heads: MedusaConfig, dtype: str) -> dict:
    """TensorRT-LLM's checkpoint config fields for a Medusa model on `target_model` (see the module docstring)."""
    # Step 1: a target TensorRT-LLM's Llama Medusa model reproduces, of the heads' sizes.
    cfg = _check_tensorrt_llm_target(target_model, heads)
    shape = LayerShape.from_target_config(cfg)
    # Step 2: the fields, named as TensorRT-LLM's converter writes them.
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if rope.get("rope_type", "default") != "default" else None
    return {
        "architecture": "MedusaForCausalLM",
        "dtype": dtype,
        "logits_dtype": "float32",
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": shape.num_heads,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_key_value_heads": shape.num_kv_heads,
        "head_size": shape.head_dim,
        "vocab_size": heads.vocab_size,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_act": cfg.hidden_act,
        "rotary_base": shape.rope_theta,
        "rotary_scaling": scaling,
        "norm_epsilon": shape.rms_norm_eps,
        "attn_bias": False,
        "mlp_bias": False,
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "model_type": "llama",
    }


TRTLLM_LAYER_NAMES = {
    # TensorRT-LLM name in transformer.layers.{i} -> the Hugging Face Llama module(s) whose weights it holds
    "input_layernorm": ("input_layernorm",),
    "attention.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attention.dense": ("self_attn.o_proj",),
    "post_layernorm": ("post_attention_layernorm",),
    "mlp.fc": ("mlp.gate_proj",),
    "mlp.gate": ("mlp.up_proj",),
    "mlp.proj": ("mlp.down_proj",),
}
"""tensorrt_llm/models/llama/convert.py's names (tp=1): fused q/k/v rows, fc = the gated (SiLU) branch."""


def _check_tensorrt_llm_target(target_model: PreTrainedModel | None, heads: MedusaConfig):
    """The target's text config; MedusaFormatError / DraftMismatchError when the tensorrt_llm layout cannot hold it with these heads."""
    if target_model is None:
        raise MedusaFormatError("the tensorrt_llm layout is a whole TensorRT-LLM checkpoint and needs the target's weights: pass target_model (specdec-export loads the draft's target)")
    cfg = target_model.config.get_text_config()
    problems = []
    if cfg.model_type != "llama":
        problems.append(f"model_type {cfg.model_type!r}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        problems.append("biases")
    if cfg.hidden_act != "silu":
        problems.append(f"hidden_act {cfg.hidden_act!r}")
    if problems:
        raise MedusaFormatError(
            f"format=tensorrt_llm converts bias-free Llama targets with SiLU; this one has {', '.join(problems)}. "
            "Export format=medusa and convert it with TensorRT-LLM's examples/medusa/convert_checkpoint.py instead"
        )
    vocab_size = lm_head_weight(target_model).shape[0]
    if (cfg.hidden_size, vocab_size) != (heads.hidden_size, heads.vocab_size):
        raise DraftMismatchError(f"target has hidden size {cfg.hidden_size} and vocabulary {vocab_size}, the heads {heads.hidden_size} and {heads.vocab_size}; pass the target the heads were trained on")
    return cfg


def tensorrt_llm_target_weights(target_model: PreTrainedModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The target's weights under TensorRT-LLM's Llama checkpoint names, in `dtype`, one copy each."""
    decoder = {k: v.detach() for k, v in target_model.get_decoder().state_dict().items()}

    def tensor(*names: str) -> torch.Tensor:
        return torch.cat([decoder[f"{n}.weight"] for n in names]).to("cpu", dtype).contiguous().clone()

    weights = {"transformer.vocab_embedding.weight": tensor("embed_tokens"), "transformer.ln_f.weight": tensor("norm")}
    for i in range(target_model.config.get_text_config().num_hidden_layers):
        for theirs, ours in TRTLLM_LAYER_NAMES.items():
            weights[f"transformer.layers.{i}.{theirs}.weight"] = tensor(*(f"layers.{i}.{name}" for name in ours))
    weights["lm_head.weight"] = lm_head_weight(target_model).detach().to("cpu", dtype).contiguous().clone()
    return weights


def load_medusa_export(directory, fmt: str | None = None) -> MedusaHeads:
    """Read any layout back into MedusaHeads; upstream layouts come back with per-head projections.

    A `specdec` folder is loaded as saved (a shared lm_head stays shared: pass the target's
    lm_head weight to `forward`).
    """
    # Step 1: the layout, from the argument or the config.
    directory = Path(directory)
    config = read_draft_config(directory)
    fmt = check_format(fmt) if fmt else detect_format(config)
    if fmt == "specdec":
        if config.get("draft_type") != MedusaHeads.draft_type:
            raise MedusaFormatError(f"{directory} holds a {config.get('draft_type')} draft, not Medusa heads")
        return load_draft(directory)
    # Step 2: counts from the config, shapes from the first projection, tensors renamed to ours.
    layout = LAYOUTS[fmt]
    weights_path = directory / layout["weights"]
    if fmt == "medusa" and not weights_path.is_file():
        weights_path = directory / MEDUSA_PT_FILE
    if not weights_path.is_file() or layout["num_heads"] not in config:
        also = f" (or {MEDUSA_PT_FILE})" if fmt == "medusa" else ""
        raise MedusaFormatError(f"{directory} is not a {fmt} Medusa export: it needs {layout['weights']}{also} and `{layout['num_heads']}` in config.json")
    tensors = _read_tensors(weights_path)
    num_heads, num_layers = config[layout["num_heads"]], config[layout["num_layers"]]
    mapping = key_map(fmt, num_heads, num_layers)
    missing = sorted(set(mapping.values()) - set(tensors))
    if missing:
        raise MedusaFormatError(f"{weights_path} lacks {len(missing)} tensor(s) of the {fmt} layout, e.g. {missing[0]}")
    rows, hidden_size = tensors[mapping["lm_heads.0.weight"]].shape
    vocab_size = config.get("vocab_size", rows)
    token_map = tensors.get(TOKEN_MAP) if config.get("truncated_vocab_size", vocab_size) < vocab_size else None
    draft_vocab = None if token_map is None else len(token_map)
    heads = MedusaHeads(MedusaConfig(hidden_size=hidden_size, vocab_size=vocab_size, num_heads=num_heads, num_layers=num_layers, share_lm_head=False, draft_vocab_size=draft_vocab))
    # Step 3: a reduced draft vocabulary keeps the rows of its tokens (vLLM's reading of full-vocabulary rows).
    state = {ours: tensors[theirs] for ours, theirs in mapping.items()}
    if token_map is not None:
        heads.set_vocab(token_map)
        for h in range(num_heads):
            weight = state[f"lm_heads.{h}.weight"]
            state[f"lm_heads.{h}.weight"] = weight[token_map] if len(weight) > len(token_map) else weight
        state.update(d2t=heads.d2t, t2d=heads.t2d)
    heads.load_state_dict(state)
    return heads


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a torch.save'd tensor dict loaded with weights_only=True (no code runs)."""
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        what = "holds objects other than tensors, which were not unpickled" if isinstance(exc, pickle.UnpicklingError) else "is damaged or truncated"
        raise MedusaFormatError(f"{path} is not a plain tensor file: it {what} ({type(exc).__name__}); re-export the heads or copy the file again") from exc


def _per_head_state(heads: MedusaHeads, lm_head_weight: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The heads' tensors with one projection copy per head (the target lm_head's rows of the draft vocabulary when the heads share it)."""
    cfg = heads.config
    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    if not cfg.share_lm_head:
        return state
    if lm_head_weight is None:
        raise MedusaFormatError("these heads share the target lm_head, which is not in the draft: pass the target's lm_head weight (target.get_output_embeddings().weight)")
    if tuple(lm_head_weight.shape) != (cfg.vocab_size, cfg.hidden_size):
        raise DraftMismatchError(f"target lm_head has shape {tuple(lm_head_weight.shape)}, the draft expects ({cfg.vocab_size}, {cfg.hidden_size}); pass the target the draft was trained on")
    dtype, rows = state["blocks.0.0.linear.weight"].dtype, heads.vocab_rows(lm_head_weight.detach())
    for h in range(cfg.num_heads):
        # One clone per head: safetensors refuses tensors that share memory.
        state[f"lm_heads.{h}.weight"] = rows.to("cpu", dtype).clone()
    return state


def _vocabulary_state(heads: MedusaHeads, state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """`state` as layout `fmt` holds a reduced draft vocabulary (see the module docstring): `vllm`
    keeps the V_draft-row projections, the others get them scattered back into full-vocabulary
    rows; `vllm` and `medusa` add `token_map`. A full vocabulary: `state` unchanged."""
    if not heads.reduced_vocab:
        return state
    ids = heads.draft_ids().cpu()
    if fmt != "vllm":
        for h in range(heads.config.num_heads):
            state[f"lm_heads.{h}.weight"] = full_vocab_rows(state[f"lm_heads.{h}.weight"], ids, heads.config.vocab_size)
    return {**state, TOKEN_MAP: ids} if fmt in ("vllm", "medusa") else state


def _dtype_name(heads: MedusaHeads) -> str:
    return str(next(heads.parameters()).dtype).removeprefix("torch.")


def _write(fmt: str, job: ExportJob) -> None:
    """`export_medusa` for specdec-export: the target lm_head when the heads share it or a target
    was named (checked against the heads), the whole target for `tensorrt_llm`."""
    model = job.target.model() if fmt == "tensorrt_llm" else None
    lm_head = job.target.lm_head() if job.target.named or job.draft.config.share_lm_head else None
    export_medusa(job.draft, job.out, fmt, lm_head_weight=lm_head, base_model=job.base_model, extra_config=job.extra_config, target_model=model)


def _head_count(fmt: str, config: dict) -> dict:
    """The model card's `heads` field: the head count a `fmt` config.json records."""
    return {"heads": config.get(LAYOUTS[fmt]["num_heads"])}


def _describe(config: dict, layout: str) -> str:
    """The model card's line on Medusa heads, from a config.json of `layout` (upstream or specdec)."""
    fields = LAYOUTS.get(layout, LAYOUTS["specdec"])
    truncated = config.get("truncated_vocab_size")
    draft_vocab = config.get("draft_vocab_size") or (truncated if truncated != config.get("vocab_size") else None)
    vocabulary = f", {draft_vocab}-token draft vocabulary" if draft_vocab else ""
    return f"{config.get(fields['num_heads'])} heads of {config.get(fields['num_layers'])} ResBlock(s){vocabulary}"



def _detect(fmt: str, config: dict) -> bool:
    """Whether a config.json is of the upstream layout `fmt`: it has that layout's head-count field."""
    return LAYOUTS[fmt]["num_heads"] in config


def _register(fmt: str, use: str, **fields) -> None:
    """Register the upstream layout `fmt` (ExportFormat's other fields in `fields`)."""
    register_format(
        ExportFormat(
            name=fmt,
            draft_types=(MedusaHeads.draft_type,),
            write=functools.partial(_write, fmt),
            read=functools.partial(load_medusa_export, fmt=fmt),
            detect=functools.partial(_detect, fmt),
            use=use,
            use_fields=functools.partial(_head_count, fmt),
            error=MedusaFormatError,
            **fields,
        )
    )


_register(
    "medusa",
    'FasterDecoding/Medusa: `MedusaModel.from_pretrained("PATH")` (reads `medusa_lm_head.pt` and the base model named in config.json; '
    "`medusa_lm_head.safetensors` holds the same tensors). TensorRT-LLM: `python examples/medusa/convert_checkpoint.py --model_dir {base} "
    "--medusa_model_dir PATH --num_medusa_heads {heads} --output_dir CKPT` (without `--num_medusa_heads` it builds 4 heads, whatever config.json says), "
    "then `trtllm-build --checkpoint_dir CKPT --speculative_decoding_mode medusa`.",
    target_field="`base_model_name_or_path` in config.json",
)
_register("vllm", 'vLLM: `LLM(model="{base}", speculative_config={{"model": "PATH", "num_speculative_tokens": {heads}}})`.')
_register(
    "tensorrt_llm",
    "A TensorRT-LLM checkpoint (tp=1): the target's weights under TensorRT-LLM's Llama names and the heads, in `rank0.safetensors`. "
    "Build the engine with `trtllm-build --checkpoint_dir PATH --speculative_decoding_mode medusa --output_dir ENGINE`, and run it with the tokenizer of `{base}`.",
)
register_description(MedusaHeads.draft_type, "Medusa", _describe)
