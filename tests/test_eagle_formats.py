"""EAGLE layouts (SGLang / EAGLE-3 official, vLLM speculators, EAGLE-1 ea_model): names, configs, round trips, CLI."""

import ast
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, LlamaConfig

from specdec.models.base import load_draft
from specdec.models.decoder import LayerShape, causal_mask
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter
from specdec.models.eagle_formats import EAGLE_FORMATS, EagleFormatError, export_eagle, load_eagle_export
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.models.target import EMBEDDED_HUB_ID, EMBEDDED_NAME
from specdec.models.formats import all_formats
from specdec.train.export import export_main

H, V, VD, T = 32, 320, 64, 5
SHAPE = LayerShape(hidden_size=H, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64, rms_norm_eps=1e-5, rope_theta=500000.0)
IDS = [2, 5, 9]
MAX_POS = 4096


def randomize(draft, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.normal_(0, 0.2)
    return draft


def eagle3(seed=0, layer_ids=IDS):
    draft = randomize(Eagle3Drafter(Eagle3Config(hidden_size=H, vocab_size=V, draft_vocab_size=VD, layer_ids=list(layer_ids), layer=SHAPE)), seed)
    draft.set_vocab(torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:VD].sort().values)
    return draft


def eagle1(seed=0):
    return randomize(Eagle1Drafter(Eagle1Config(hidden_size=H, vocab_size=V, layer=SHAPE)), seed)


def export(draft, out, fmt, **kwargs):
    kwargs.setdefault("max_position_embeddings", MAX_POS)
    return export_eagle(draft, out, fmt, **kwargs)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    embeds, hidden = torch.randn(2, T, H, generator=g), torch.randn(2, T, H, generator=g)
    positions = torch.arange(T).expand(2, T)
    return embeds, hidden, positions, causal_mask(T, 0, torch.float32, "cpu")


def config_of(folder):
    return json.loads((Path(folder) / "config.json").read_text())


# --- layouts: names, shapes, configs -----------------------------------------------------------

ATTN_MLP = {  # Llama decoder-layer tensors: name -> shape (q/k/v read 2H in EAGLE-3, H in EAGLE-1)
    "self_attn.q_proj.weight": (32, None),
    "self_attn.k_proj.weight": (16, None),
    "self_attn.v_proj.weight": (16, None),
    "self_attn.o_proj.weight": (32, 32),
    "post_attention_layernorm.weight": (32,),
    "mlp.gate_proj.weight": (64, 32),
    "mlp.up_proj.weight": (64, 32),
    "mlp.down_proj.weight": (32, 64),
}


def expected_eagle3(prefix):
    """SGLang's llama_eagle3.py (`midlayer.`) / speculators' Eagle3 model (`layers.0.`) tensors and shapes."""
    layer = {prefix + k: tuple(2 * H if d is None else d for d in s) for k, s in ATTN_MLP.items()}
    layer |= {prefix + "input_layernorm.weight": (H,), prefix + "hidden_norm.weight": (H,)}
    return layer | {"fc.weight": (H, 3 * H), "norm.weight": (H,), "lm_head.weight": (VD, H), "d2t": (VD,), "t2d": (V,)}


def expected_eagle1():
    """SafeAILab/EAGLE cnets1.py: fc with bias, layers.0 without input_layernorm."""
    layer = {"layers.0." + k: tuple(H if d is None else d for d in s) for k, s in ATTN_MLP.items()}
    return layer | {"fc.weight": (H, 2 * H), "fc.bias": (H,)}


LLAMA_FIELDS = {
    "model_type": "llama",
    "hidden_size": H,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "num_hidden_layers": 1,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "vocab_size": V,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "max_position_embeddings": MAX_POS,
}


def test_sglang_layout(tmp_path):
    out = export(eagle3(), tmp_path / "sg", "sglang", base_model="org/base")
    tensors = load_file(out / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected_eagle3("midlayer.")
    assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool and "embed_tokens.weight" not in tensors
    config = config_of(out)
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert {k: config[k] for k in LLAMA_FIELDS} == LLAMA_FIELDS
    assert config["draft_vocab_size"] == VD and config["bias"] is False
    # SGLang adds 1 to eagle_config ids (output of layer k -> captured at the input of layer k+1).
    assert config["eagle_config"] == {"eagle_aux_hidden_state_layer_ids": [1, 4, 8], "use_aux_hidden_state": True}
    assert config["eagle_aux_hidden_state_layer_ids"] == IDS  # vLLM's numbering (input of layer k) = ours
    assert config["specdec_layer_ids"]["hf_hidden_states"] == IDS
    assert config["num_aux_hidden_states"] == 3  # vLLM sizes fc by it


def test_speculators_layout(tmp_path):
    out = export(eagle3(), tmp_path / "spec", "speculators", base_model="org/base", num_speculative_tokens=5, verifier_architectures=["Qwen3ForCausalLM"])
    tensors = load_file(out / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected_eagle3("layers.0.")
    config = config_of(out)
    assert config["speculators_model_type"] == "eagle3" and config["architectures"] == ["Eagle3Speculator"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", config["speculators_version"])
    spec = config["speculators_config"]
    assert spec["algorithm"] == "eagle3" and spec["default_proposal_method"] == "greedy"
    assert spec["proposal_methods"][0]["proposal_type"] == "greedy" and spec["proposal_methods"][0]["speculative_tokens"] == 5
    assert spec["verifier"] == {"name_or_path": "org/base", "architectures": ["Qwen3ForCausalLM"]}
    layer = config["transformer_layer_config"]
    assert {k: layer[k] for k in LLAMA_FIELDS} == LLAMA_FIELDS
    assert config["draft_vocab_size"] == VD and config["target_hidden_size"] == H
    assert "norm_before_residual" in config and config["norm_before_residual"] is False  # vLLM assumes true when absent
    assert config["eagle_aux_hidden_state_layer_ids"] == IDS


def vllm_fc_inputs(config: dict) -> int:
    """fc's input width as vLLM 0.32's llama_eagle3.py derives it from the drafter's config.json.

    For the speculators layout that config is transformer_layer_config (configs/speculators/base.py)."""
    hf = config["transformer_layer_config"] if "speculators_config" in config else config
    count = hf.get("num_aux_hidden_states") or len((hf.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") or []) or 3
    return count * config.get("target_hidden_size", hf["hidden_size"])


@pytest.mark.parametrize(("fmt", "ids"), [("sglang", IDS), ("speculators", IDS), ("speculators", [2, 5, 9, 12])])
def test_vllm_reads_the_number_of_fused_layers(tmp_path, fmt, ids):
    out = export(eagle3(layer_ids=ids), tmp_path / fmt, fmt)
    assert vllm_fc_inputs(config_of(out)) == load_file(out / "model.safetensors")["fc.weight"].shape[1] == len(ids) * H
    assert load_eagle_export(out).config.layer_ids == ids


def full_vocab_eagle3(seed=0):
    draft = randomize(Eagle3Drafter(Eagle3Config(hidden_size=H, vocab_size=V, draft_vocab_size=V, layer_ids=IDS, layer=SHAPE)), seed)
    draft.set_vocab(torch.arange(V))
    return draft


@pytest.mark.parametrize("fmt", ["sglang", "speculators"])
def test_full_draft_vocabulary_writes_no_vocab_maps_and_reads_back(tmp_path, fmt):
    draft = full_vocab_eagle3()
    out = export(draft, tmp_path / fmt, fmt)
    assert not {"d2t", "t2d"} & set(load_file(out / "model.safetensors"))  # vLLM has no d2t parameter for a full vocabulary
    back = load_eagle_export(out)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in draft.state_dict().items())
    embeds, hidden, positions, mask = inputs()
    out_states = draft(embeds, hidden, positions, mask)
    assert torch.equal(back.logits(out_states), draft.logits(out_states)) and torch.equal(back.to_target_ids(torch.arange(V)), torch.arange(V))


def test_full_vocabulary_in_another_order_is_refused(tmp_path):
    draft = full_vocab_eagle3()
    draft.d2t.copy_(torch.arange(V).flip(0) - torch.arange(V))
    with pytest.raises(EagleFormatError, match="full target vocabulary in another order"):
        export(draft, tmp_path / "x", "speculators")
    assert not (tmp_path / "x").exists()


def test_eagle1_layout(tmp_path):
    out = export(eagle1(), tmp_path / "e1", "eagle")
    tensors = load_file(out / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected_eagle1()
    config = config_of(out)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["bias"] is True
    assert {k: config[k] for k in LLAMA_FIELDS} == LLAMA_FIELDS
    assert "draft_vocab_size" not in config


@pytest.mark.parametrize("fmt", EAGLE_FORMATS)
def test_transformers_reads_the_layer_config(tmp_path, fmt):
    out = export(eagle1() if fmt == "eagle" else eagle3(), tmp_path / fmt, fmt)
    raw = config_of(out)
    layer = LlamaConfig.from_dict(raw["transformer_layer_config"]) if fmt == "speculators" else AutoConfig.from_pretrained(out)
    assert (layer.hidden_size, layer.num_attention_heads, layer.num_key_value_heads, layer.head_dim) == (H, 4, 2, 8)
    rope = getattr(layer, "rope_parameters", None) or {"rope_theta": layer.rope_theta}
    assert rope["rope_theta"] == 500000.0 and layer.num_hidden_layers == 1 and layer.vocab_size == V


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", EAGLE_FORMATS)
@pytest.mark.parametrize("named", [False, True])
def test_round_trip_is_exact(tmp_path, fmt, named):
    draft = eagle1() if fmt == "eagle" else eagle3()
    back = load_eagle_export(export(draft, tmp_path / fmt, fmt), fmt if named else None)
    assert type(back) is type(draft) and back.config.layer == SHAPE
    assert back.state_dict().keys() == draft.state_dict().keys()
    for key, value in draft.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    embeds, hidden, positions, mask = inputs()
    assert torch.equal(back(embeds, hidden, positions, mask), draft(embeds, hidden, positions, mask))
    if fmt != "eagle":
        assert back.config.layer_ids == IDS and back.config.draft_vocab_size == VD
        features = torch.randn(2, T, 3 * H)
        assert torch.equal(back.embed_features(features), draft.embed_features(features))
        out = draft(embeds, hidden, positions, mask)
        assert torch.equal(back.logits(out), draft.logits(out))
        ids = torch.arange(VD)
        assert torch.equal(back.to_target_ids(ids), draft.to_target_ids(ids))


def test_bfloat16_export_round_trips_in_bfloat16(tmp_path):
    draft = eagle3().to(torch.bfloat16)
    out = export(draft, tmp_path / "bf16", "sglang")
    assert config_of(out)["torch_dtype"] == "bfloat16"
    back = load_eagle_export(out)
    assert back.fc.weight.dtype == torch.bfloat16 and back.d2t.dtype == torch.int64
    assert all(torch.equal(back.state_dict()[k], v) for k, v in draft.state_dict().items())


def test_legacy_eagle1_folder_with_pytorch_model_bin(tmp_path):
    """Older EAGLE-1 releases: pytorch_model.bin, embed_tokens inside, no head_dim/rope_theta in config.json."""
    draft = eagle1()
    out = export(draft, tmp_path / "legacy", "eagle")
    tensors = load_file(out / "model.safetensors") | {"embed_tokens.weight": torch.zeros(V, H)}
    torch.save(tensors, out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    config = {k: v for k, v in config_of(out).items() if k not in ("head_dim", "rope_theta", "rope_parameters")}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="embed_tokens"):
        back = load_eagle_export(out)
    assert back.config.layer.head_dim == 8 and back.config.layer.rope_theta == 10000.0
    assert all(torch.equal(back.state_dict()[k], v) for k, v in draft.state_dict().items())


def test_sglang_folder_without_layer_ids_needs_the_target_depth(tmp_path):
    out = export(eagle3(layer_ids=[2, 16, 29]), tmp_path / "noids", "sglang")
    config = config_of(out)
    for key in ("eagle_config", "eagle_aux_hidden_state_layer_ids", "specdec_layer_ids"):
        config.pop(key)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(EagleFormatError, match="target_num_layers"):
        load_eagle_export(out)
    assert load_eagle_export(out, target_num_layers=32).config.layer_ids == [2, 16, 29]


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "fmt", "message"),
    [
        (eagle1, "sglang", "holds eagle3 drafts, not eagle1; formats that fit it: eagle"),
        (eagle1, "speculators", "formats that fit it: eagle$"),
        (eagle3, "eagle", "holds eagle1 drafts, not eagle3; formats that fit it: sglang, speculators"),
        (lambda: MedusaHeads(MedusaConfig(hidden_size=H, vocab_size=V, num_heads=2, num_layers=1)), "speculators", "not medusa; no EAGLE layout holds it"),
        (eagle3, "onnx", "unknown EAGLE export format 'onnx'"),
        (lambda: eagle3(layer_ids=[5, 2, 9]), "speculators", "strictly increasing"),
        (lambda: eagle3(layer_ids=[0, 5, 9]), "sglang", "cannot capture the embeddings"),
        (lambda: eagle3(layer_ids=[2, 5, 9, 12]), "sglang", "exactly 3 target layers"),
    ],
)
def test_export_refuses_what_the_layout_cannot_hold(tmp_path, make, fmt, message):
    draft = make()
    with pytest.raises(EagleFormatError, match=message):
        export_eagle(draft, tmp_path / "x", fmt, max_position_embeddings=MAX_POS)
    assert not (tmp_path / "x").exists()


def test_unknown_max_positions_warns(tmp_path):
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        export_eagle(eagle3(), tmp_path / "x", "sglang")
    assert "max_position_embeddings" not in config_of(tmp_path / "x")


def test_load_refuses_non_eagle_folders(tmp_path):
    eagle3().save_pretrained(tmp_path / "ours")
    with pytest.raises(EagleFormatError, match="load_draft"):
        load_eagle_export(tmp_path / "ours")
    (tmp_path / "medusa").mkdir()
    (tmp_path / "medusa" / "config.json").write_text(json.dumps({"medusa_num_heads": 3, "medusa_num_layers": 1}))
    with pytest.raises(EagleFormatError, match="matches no EAGLE layout"):
        load_eagle_export(tmp_path / "medusa")
    out = export(eagle3(), tmp_path / "spec", "speculators")
    config = config_of(out) | {"norm_before_residual": True}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(EagleFormatError, match="norm_before_residual"):
        load_eagle_export(out)


def test_models_package_imports_no_other_specdec_package():
    source = Path(__import__("specdec.models.eagle_formats", fromlist=["x"]).__file__).read_text()
    modules = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module}
    assert all(not m.startswith("specdec.") or m.startswith("specdec.models.") for m in modules), modules


# --- specdec-export --------------------------------------------------------------------------


@pytest.fixture
def eagle3_dir(tmp_path):
    path = tmp_path / "run" / "draft"
    eagle3().save_pretrained(path, extra={"method": "eagle3", "target": {"name_or_path": "x", "hidden_size": H, "vocab_size": V}, "metrics": {"val/acc": 0.5}})
    (path / "recipe.yaml").write_text("method: eagle3\n")
    return path


def test_cli_exports_sglang_from_a_saved_draft(eagle3_dir, tmp_path, capsys):
    out = tmp_path / "sg"
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        assert export_main([f"draft={eagle3_dir}", "format=sglang", f"out={out}"]) == 0
    assert str(out) in capsys.readouterr().out
    saved, back = load_draft(eagle3_dir), load_eagle_export(out)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in saved.state_dict().items())
    config = config_of(out)
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["target"]["name_or_path"] == "x" and config["metrics"] == {"val/acc": 0.5}
    assert "draft_type" not in config and "layer_ids" not in config  # our own fields stay in the specdec folder
    card = (out / "README.md").read_text()
    assert "(sglang layout)" in card and "--speculative-algorithm EAGLE3" in card and "[2, 5, 9]" in card and "val/acc" in card
    assert (out / "recipe.yaml").is_file()


def test_cli_speculators_reads_the_named_target_config(eagle3_dir, tmp_path):
    target = tmp_path / "target"
    LlamaConfig(hidden_size=H, vocab_size=V, num_hidden_layers=12, num_attention_heads=4, intermediate_size=64, max_position_embeddings=8192).save_pretrained(target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export_main([f"draft={eagle3_dir}", "format=speculators", f"target={target}"]) == 0
    assert not [w for w in caught if "max_position_embeddings" in str(w.message)]  # the target supplied it
    out = eagle3_dir.parent / "export_speculators"
    config = config_of(out)
    assert config["transformer_layer_config"]["max_position_embeddings"] == 8192
    assert config["speculators_config"]["verifier"] == {"name_or_path": str(target), "architectures": ["LlamaForCausalLM"]}
    assert '"method": "eagle3"' in (out / "README.md").read_text()
    assert all(torch.equal(load_eagle_export(out).state_dict()[k], v) for k, v in load_draft(eagle3_dir).state_dict().items())


def test_cli_speculators_names_the_embedded_target_by_its_hub_id(tmp_path):
    draft_dir = tmp_path / "run" / "draft"
    eagle3().save_pretrained(draft_dir, extra={"method": "eagle3", "target": {"name_or_path": EMBEDDED_NAME, "hidden_size": H, "vocab_size": V, "max_position_embeddings": MAX_POS}})
    assert export_main([f"draft={draft_dir}", "format=speculators"]) == 0
    out = draft_dir.parent / "export_speculators"
    config = config_of(out)
    assert config["speculators_config"]["verifier"]["name_or_path"] == EMBEDDED_HUB_ID  # vLLM and speculators resolve it; the alias they do not
    assert config["target"]["name_or_path"] == EMBEDDED_NAME
    card = (out / "README.md").read_text()
    assert f'LLM(model="{EMBEDDED_HUB_ID}"' in card and "`speculators_config.verifier.name_or_path` in config.json" in card


def test_cli_named_target_of_another_size_fails(eagle3_dir, tmp_path, capsys):
    target = tmp_path / "wide"
    LlamaConfig(hidden_size=64, vocab_size=V, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64).save_pretrained(target)
    assert export_main([f"draft={eagle3_dir}", "format=sglang", f"target={target}", f"out={tmp_path / 'x'}"]) == 1
    assert "hidden size 64" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("eagle", "eagle3 draft, which the eagle layout cannot hold; formats that fit it: sglang, speculators, specdec"),
        ("vllm", "formats that fit it: sglang, speculators, specdec .vLLM loads EAGLE-3 drafts from the speculators layout"),
        ("medusa", "formats that fit it: sglang, speculators, specdec"),
    ],
)
def test_cli_mismatched_format_is_one_line(eagle3_dir, tmp_path, capsys, fmt, message):
    assert export_main([f"draft={eagle3_dir}", f"format={fmt}", f"out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_cli_format_names(eagle3_dir, capsys):
    assert set(EAGLE_FORMATS) <= set(all_formats())
    assert export_main([f"draft={eagle3_dir}", "format=sglangg"]) == 2
    assert "Did you mean `sglang`" in capsys.readouterr().err
    assert export_main(["--help"]) == 0
    assert "speculators (vLLM)" in capsys.readouterr().out


def test_cli_eagle1_layouts(tmp_path):
    draft_dir = tmp_path / "e1" / "draft"
    eagle1().save_pretrained(draft_dir, extra={"method": "eagle1", "target": {"name_or_path": "x"}})
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        assert export_main([f"draft={draft_dir}", "format=eagle"]) == 0
    saved = load_draft(draft_dir)
    back = load_eagle_export(draft_dir.parent / "export_eagle")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in saved.state_dict().items())
    assert "use_eagle3=False" in (draft_dir.parent / "export_eagle" / "README.md").read_text()
    assert export_main([f"draft={draft_dir}", "format=specdec", f"out={tmp_path / 'copy'}"]) == 0
    copy = load_draft(tmp_path / "copy")
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in saved.state_dict().items())
    assert "EAGLE-1" in (tmp_path / "copy" / "README.md").read_text()
