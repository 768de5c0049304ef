"""Serving-engine layouts (original Medusa, vLLM, TensorRT-LLM, specdec), specdec-export and Hub upload."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import OfflineModeIsEnabled
from safetensors.torch import load_file

from specdec.models.base import DraftMismatchError, load_draft
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.models.medusa_formats import FORMATS, MEDUSA_PT_FILE, MedusaFormatError, export_medusa, load_medusa_export
from specdec.models.target import EMBEDDED_GGUF, EMBEDDED_HUB_ID, EMBEDDED_NAME
from specdec.runtime.options import target_source
from specdec.train import export as export_module
from specdec.train.cli import main as train_main
from specdec.train.config import RecipeError, load_recipe
from specdec.train.export import HubUploadError, engine_target_name, export_main, push_to_hub
from specdec.train.pipeline import run
from conftest import build_tiny_llama
from test_train import prompts_file, tiny_overrides  # noqa: F401  (fixture + helper of the tiny training run)

K, L, H, V = 3, 2, 32, 320
METRICS = {"val/head1_top1": 0.25, "val/loss": 3.5}


def expected_keys(fmt):
    """(ResBlock keys, projection keys): the upstream names spelled out per layout (sources in specdec.models.medusa_formats)."""
    heads, layers, params = range(K), range(L), ("weight", "bias")
    if fmt == "medusa":  # FasterDecoding/Medusa medusa_head.state_dict(): Sequential(ResBlock x L, Linear)
        return {f"{h}.{l}.linear.{p}" for h in heads for l in layers for p in params}, {f"{h}.{L}.weight" for h in heads}
    if fmt == "vllm":  # vllm/model_executor/models/medusa.py
        return {f"blocks.{h}.layers.{l}.{p}" for h in heads for l in layers for p in params}, {f"lm_heads.{h}.weight" for h in heads}
    # tensorrt_llm/models/medusa/weight.py
    return {f"medusa_heads.{h}.medusa_layers.{l}.linear.{p}" for h in heads for l in layers for p in params}, {f"medusa_heads.{h}.lm_head.weight" for h in heads}


TRTLLM_TARGET_KEYS = {"transformer.vocab_embedding.weight", "transformer.ln_f.weight", "lm_head.weight"} | {
    f"transformer.layers.{i}.{name}.weight"
    for i in range(2)
    for name in ("input_layernorm", "attention.qkv", "attention.dense", "post_layernorm", "mlp.fc", "mlp.gate", "mlp.proj")
}
"""The 2-layer tiny target's tensors as tensorrt_llm/models/llama/convert.py names them (tp=1)."""
WEIGHT_FILES = {"medusa": "medusa_lm_head.safetensors", "vllm": "model.safetensors", "tensorrt_llm": "rank0.safetensors"}


def random_heads(share=True, seed=0):
    torch.manual_seed(seed)
    heads = MedusaHeads(MedusaConfig(hidden_size=H, vocab_size=V, num_heads=K, num_layers=L, share_lm_head=share))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.2)
    return heads


@pytest.fixture(autouse=True)
def _quiet_tied_layer_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FasterDecoding/Medusa's MedusaModel ties")
        yield


@pytest.mark.parametrize("fmt", ["medusa", "vllm", "tensorrt_llm"])
def test_upstream_key_names_shapes_and_config(tmp_path, fmt):
    lm_head = torch.randn(V, H)
    target = build_tiny_llama(V, hidden_size=H) if fmt == "tensorrt_llm" else None
    out = export_medusa(random_heads(), tmp_path / fmt, fmt, lm_head, base_model="org/base", extra_config={"metrics": METRICS}, target_model=target)
    tensors = {k: v for k, v in load_file(out / WEIGHT_FILES[fmt]).items() if k not in TRTLLM_TARGET_KEYS}
    blocks, projections = expected_keys(fmt)
    assert set(tensors) == blocks | projections and len(tensors) == K * L * 2 + K
    for key, tensor in tensors.items():
        expected = (V, H) if key in projections else (H,) if key.endswith("bias") else (H, H)
        assert tuple(tensor.shape) == expected, key
    config = json.loads((out / "config.json").read_text())
    assert config["metrics"] == METRICS
    if fmt == "medusa":
        assert config["medusa_num_heads"] == K and config["medusa_num_layers"] == L and config["base_model_name_or_path"] == "org/base"
        # vLLM loads this layout too: without the sizes its MedusaConfig assumes 4096 / 32001, without medusa_fc_bias it drops the biases
        assert (config["hidden_size"], config["vocab_size"], config["medusa_fc_bias"]) == (H, V, True)
        assert torch.equal(tensors[f"0.{L}.weight"], lm_head)
        # FasterDecoding/Medusa's MedusaModel.from_pretrained reads only medusa_lm_head.pt: the same tensors, plain (weights_only loads it)
        pt = torch.load(out / MEDUSA_PT_FILE, weights_only=True)
        assert pt.keys() == tensors.keys() and all(torch.equal(pt[k], tensors[k]) for k in tensors)
    elif fmt == "vllm":
        assert config["model_type"] == "medusa" and config["num_heads"] == K and config["num_hidden_layers"] == L
        assert (config["hidden_size"], config["vocab_size"], config["truncated_vocab_size"]) == (H, V, V)
        assert config["medusa_fc_bias"] is True and config["original_lm_head"] is False  # else vLLM drops the biases
        assert {"max_paths", "topk"} <= set(config)
        # vLLM's MedusaConfig renames every key holding "num" + "heads"/"layers": only ours may match.
        assert {k for k in config if "num" in k} == {"num_heads", "num_hidden_layers"}
    else:
        assert config["architecture"] == "MedusaForCausalLM" and config["num_medusa_heads"] == K and config["num_medusa_layers"] == L
        assert config["max_draft_len"] == 63 and config["dtype"] == "float32" and (config["hidden_size"], config["vocab_size"]) == (H, V)
    assert (out / MEDUSA_PT_FILE).exists() == (fmt == "medusa")


def test_medusa_folder_with_only_the_pt_file_loads(tmp_path):
    """Upstream Medusa releases ship medusa_lm_head.pt alone."""
    heads, hidden = random_heads(share=False), torch.randn(2, 5, H)
    out = export_medusa(heads, tmp_path / "m", "medusa")
    (out / "medusa_lm_head.safetensors").unlink()
    assert torch.equal(load_medusa_export(out)(hidden), heads(hidden))


class _RunsCode:
    """Unpickling this calls Path.touch: what a crafted medusa_lm_head.pt could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pt_file_is_refused_without_running_it(tmp_path):
    out = export_medusa(random_heads(share=False), tmp_path / "m", "medusa")
    (out / "medusa_lm_head.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"0.0.linear.weight": _RunsCode(marker)}, out / MEDUSA_PT_FILE)
    with pytest.raises(MedusaFormatError, match="not a plain tensor file: it holds objects other than tensors"):
        load_medusa_export(out)
    assert not marker.exists()
    torch.save({"0.0.linear.weight": torch.zeros(H, H)}, out / MEDUSA_PT_FILE)
    (out / MEDUSA_PT_FILE).write_bytes((out / MEDUSA_PT_FILE).read_bytes()[:200])
    with pytest.raises(MedusaFormatError, match="damaged or truncated"):
        load_medusa_export(out)


def test_tensorrt_llm_checkpoint_holds_the_target_as_its_converter_does(tmp_path):
    target = build_tiny_llama(V, hidden_size=H)
    out = export_medusa(random_heads(share=False).to(torch.bfloat16), tmp_path / "trt", "tensorrt_llm", target_model=target)
    tensors = load_file(out / "rank0.safetensors")
    assert TRTLLM_TARGET_KEYS <= set(tensors) and len(tensors) == len(TRTLLM_TARGET_KEYS) + K * (2 * L + 1)
    hf = {k: v.to(torch.bfloat16) for k, v in target.state_dict().items()}
    layer = "transformer.layers.1."
    assert torch.equal(tensors[layer + "attention.qkv.weight"], torch.cat([hf[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]))
    assert tensors[layer + "attention.qkv.weight"].shape == ((4 + 2 + 2) * 8, H)  # 4 query heads, 2 kv heads, head size 8
    pairs = {"attention.dense": "self_attn.o_proj", "mlp.fc": "mlp.gate_proj", "mlp.gate": "mlp.up_proj", "mlp.proj": "mlp.down_proj", "post_layernorm": "post_attention_layernorm"}
    assert all(torch.equal(tensors[layer + f"{theirs}.weight"], hf[f"model.layers.1.{ours}.weight"]) for theirs, ours in pairs.items())
    assert torch.equal(tensors["transformer.vocab_embedding.weight"], hf["model.embed_tokens.weight"]) and torch.equal(tensors["lm_head.weight"], hf["model.embed_tokens.weight"])
    assert torch.equal(tensors["transformer.ln_f.weight"], hf["model.norm.weight"]) and tensors["lm_head.weight"].dtype == torch.bfloat16
    config, hf_config = json.loads((out / "config.json").read_text()), target.config
    fixed = {"architecture": "MedusaForCausalLM", "dtype": "bfloat16", "logits_dtype": "float32", "position_embedding_type": "rope_gpt_neox", "hidden_act": "silu"}
    assert {k: config[k] for k in fixed} == fixed and config["model_type"] == "llama" and config["rotary_scaling"] is None
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"], config["head_size"]) == (2, 4, 2, 8)
    assert (config["intermediate_size"], config["max_position_embeddings"], config["vocab_size"], config["hidden_size"]) == (hf_config.intermediate_size, 512, V, H)
    assert config["rotary_base"] == hf_config.rope_parameters["rope_theta"] and config["norm_epsilon"] == hf_config.rms_norm_eps
    assert config["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None} and config["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    assert (config["num_medusa_heads"], config["num_medusa_layers"], config["max_draft_len"]) == (K, L, 63)


def test_tensorrt_llm_takes_rope_scaling_as_the_hugging_face_dict(tmp_path):
    target = build_tiny_llama(V, hidden_size=H)
    target.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}
    out = export_medusa(random_heads(share=False), tmp_path / "trt", "tensorrt_llm", target_model=target)
    config = json.loads((out / "config.json").read_text())
    assert config["rotary_scaling"] == {"rope_type": "linear", "factor": 2.0} and config["rotary_base"] == 5e5


def test_tensorrt_llm_refuses_what_its_llama_medusa_model_cannot_hold(tmp_path):
    with pytest.raises(MedusaFormatError, match="needs the target's weights"):
        export_medusa(random_heads(share=False), tmp_path / "a", "tensorrt_llm")
    biased = build_tiny_llama(V, hidden_size=H)
    biased.config.attention_bias = True
    with pytest.raises(MedusaFormatError, match="this one has biases. Export format=medusa"):
        export_medusa(random_heads(share=False), tmp_path / "b", "tensorrt_llm", target_model=biased)
    with pytest.raises(DraftMismatchError, match="hidden size 64"):
        export_medusa(random_heads(share=False), tmp_path / "c", "tensorrt_llm", target_model=build_tiny_llama(V, hidden_size=64))
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_the_same_logits(tmp_path, fmt, share):
    heads, lm_head, hidden = random_heads(share), torch.randn(V, H), torch.randn(2, 5, H)
    export_medusa(heads, tmp_path, fmt, lm_head, target_model=build_tiny_llama(V, hidden_size=H) if fmt == "tensorrt_llm" else None)
    back = load_medusa_export(tmp_path)
    if fmt != "specdec":
        assert back.config.share_lm_head is False and back.lm_heads is not None
    assert torch.equal(back(hidden, lm_head), heads(hidden, lm_head))
    assert isinstance(load_medusa_export(tmp_path, fmt), MedusaHeads)


def test_specdec_layout_keeps_a_shared_lm_head_out_of_the_file(tmp_path):
    export_medusa(random_heads(share=True), tmp_path, "specdec", torch.randn(V, H))
    assert not any(k.startswith("lm_heads") for k in load_file(tmp_path / "model.safetensors"))


def test_shared_heads_need_a_matching_lm_head(tmp_path):
    with pytest.raises(MedusaFormatError, match="lm_head"):
        export_medusa(random_heads(share=True), tmp_path, "vllm")
    with pytest.raises(DraftMismatchError, match=r"\(320, 32\)"):
        export_medusa(random_heads(share=True), tmp_path, "vllm", torch.randn(V, 2 * H))
    with pytest.raises(MedusaFormatError, match="medusa, vllm, tensorrt_llm, specdec"):
        export_medusa(random_heads(), tmp_path, "onnx", torch.randn(V, H))


# --- specdec-export on a draft folder --------------------------------------------------------


@pytest.fixture()
def draft_dir(tmp_path, tiny_target_dir):
    """A shared-lm_head draft for the tiny target, as specdec-train writes it (plus evaluator results)."""
    path = tmp_path / "run" / "draft"
    target = {"name_or_path": str(tiny_target_dir), "revision": None, "hidden_size": H, "vocab_size": V, "finetuned_weights": None}
    training = {"steps": 6, "train_examples": 20, "train_tokens": 900, "seconds": 2.0}
    random_heads(share=True).save_pretrained(path, extra={"method": "medusa1", "target": target, "training": training, "metrics": METRICS})
    (path / "recipe.yaml").write_text("method: medusa1\n")
    (path / "eval_results.json").write_text(json.dumps({"eval/acceptance_length": 1.75}))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_exports_each_format_loadable_with_the_target_lm_head(draft_dir, tiny_llama, tmp_path, fmt, capsys):
    out = tmp_path / f"out_{fmt}"
    assert export_main([f"draft={draft_dir}", f"format={fmt}", f"out={out}"]) == 0
    assert str(out) in capsys.readouterr().out
    lm_head = tiny_llama.get_output_embeddings().weight.detach()
    hidden = torch.randn(3, H)
    assert torch.allclose(load_medusa_export(out)(hidden, lm_head), load_draft(draft_dir)(hidden, lm_head), atol=1e-6)
    card = (out / "README.md").read_text()
    assert "val/head1_top1" in card and "eval/acceptance_length" in card and f"({fmt} layout)" in card
    assert json.loads((out / "config.json").read_text())["metrics"] == METRICS
    assert (out / "recipe.yaml").is_file() and (out / "eval_results.json").is_file()


def test_engine_target_name(tmp_path, monkeypatch):
    assert EMBEDDED_GGUF.startswith(EMBEDDED_HUB_ID.split("/")[1] + ".")  # the Hub model the embedded GGUF copies
    assert engine_target_name(EMBEDDED_NAME) == EMBEDDED_HUB_ID
    assert engine_target_name("org/model") == "org/model"
    (tmp_path / "target").mkdir()
    monkeypatch.chdir(tmp_path)
    assert engine_target_name("target") == str(tmp_path.resolve() / "target")


def test_engines_get_the_hub_id_of_the_embedded_target_and_specdec_keeps_the_alias(tmp_path):
    draft = tmp_path / "run" / "draft"
    random_heads(share=False).save_pretrained(draft, extra={"method": "medusa1", "target": {"name_or_path": EMBEDDED_NAME, "hidden_size": H, "vocab_size": V}})
    assert export_main([f"draft={draft}", "format=medusa"]) == 0
    out = tmp_path / "run" / "export_medusa"
    config = json.loads((out / "config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_HUB_ID  # what FasterDecoding/Medusa and vLLM resolve
    assert config["target"]["name_or_path"] == EMBEDDED_NAME and config["target"]["engine_name_or_path"] == EMBEDDED_HUB_ID
    assert target_source(out, config) == target_source(draft, json.loads((draft / "config.json").read_text())) == EMBEDDED_NAME  # specdec-eval/-generate load the embedded copy
    card = (out / "README.md").read_text()
    assert f"base_model: {EMBEDDED_HUB_ID}\n" in card and f"Serving engines load the target `{EMBEDDED_HUB_ID}` (`base_model_name_or_path` in config.json)" in card
    assert "Q4_1" in card


def test_engines_get_a_local_target_as_an_absolute_path(draft_dir, tmp_path, tiny_target_dir):
    out = tmp_path / "vllm"
    assert export_main([f"draft={draft_dir}", "format=vllm", f"out={out}"]) == 0
    card = (out / "README.md").read_text()
    assert f'LLM(model="{tiny_target_dir.resolve()}"' in card and "a local path" in card and "base_model:" not in card
    assert json.loads((out / "config.json").read_text())["target"]["engine_name_or_path"] == str(tiny_target_dir.resolve())


def test_card_passes_the_head_count_to_tensorrt_llms_converter(draft_dir, tmp_path):
    out = tmp_path / "medusa"
    assert export_main([f"draft={draft_dir}", "format=medusa", f"out={out}"]) == 0
    card = (out / "README.md").read_text()
    assert f"--num_medusa_heads {K} " in card and "--medusa_model_dir PATH" in card and 'MedusaModel.from_pretrained("PATH")' in card


def test_cli_default_out_is_next_to_the_draft(draft_dir):
    assert export_main([f"draft={draft_dir}", "format=tensorrt_llm"]) == 0
    assert (draft_dir.parent / "export_tensorrt_llm" / "rank0.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["format=onnx"], 2, "unknown format 'onnx'.*medusa, vllm, tensorrt_llm, specdec"),
        (["format=vlm"], 2, "Did you mean `vllm`"),
        (["fromat=vllm"], 2, "unknown key `fromat` in the command line. Did you mean `format`"),
        (["format=vllm", "push=maybe"], 2, "`push` must be true or false"),
        (["format=vllm", "push=true"], 2, "repo_id"),
    ],
)
def test_cli_argument_errors(draft_dir, capsys, args, code, message):
    assert export_main([f"draft={draft_dir}", *args]) == code
    assert re.search(message, capsys.readouterr().err)


def test_cli_missing_draft_and_target_mismatch(tmp_path, draft_dir, tiny_tokenizer, capsys):
    assert export_main([f"draft={tmp_path / 'nowhere'}", "format=vllm"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    wide = tmp_path / "wide-target"
    build_tiny_llama(V, hidden_size=64).save_pretrained(wide)
    tiny_tokenizer.save_pretrained(wide)
    assert export_main([f"draft={draft_dir}", "format=vllm", f"target={wide}", f"out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err
    assert "trained for another target" in err and "hidden size 64" in err
    assert not (tmp_path / "x").exists()


# --- Hub upload ------------------------------------------------------------------------------


@pytest.fixture()
def fake_hub(monkeypatch):
    """HfApi.create_repo / upload_folder replaced by recorders (nothing leaves the machine)."""
    calls = {}

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kw):
        calls["create"] = {"repo_id": repo_id, "token": token, "private": private, "exist_ok": exist_ok}

    def upload_folder(self, *, repo_id, folder_path, token=None, commit_message=None, ignore_patterns=None, **kw):
        folder = Path(folder_path)
        calls["upload"] = {"repo_id": repo_id, "token": token, "files": sorted(p.name for p in folder.iterdir()), "readme": (folder / "README.md").read_text()}
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_cli_push_uploads_the_export_with_card_and_token(draft_dir, tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out = tmp_path / "vllm"
    assert export_main([f"draft={draft_dir}", "format=vllm", f"out={out}", "push=true", "repo_id=org/tiny-medusa", "private=true"]) == 0
    assert fake_hub["create"] == {"repo_id": "org/tiny-medusa", "token": "hf_test_token", "private": True, "exist_ok": True}
    upload = fake_hub["upload"]
    assert upload["repo_id"] == "org/tiny-medusa" and upload["token"] == "hf_test_token"
    assert upload["files"] == ["README.md", "config.json", "eval_results.json", "model.safetensors", "recipe.yaml"]
    assert "| val/head1_top1 | 0.2500 |" in upload["readme"] and "| eval/acceptance_length | 1.7500 |" in upload["readme"]
    assert "commit/abc" in capsys.readouterr().out


def test_push_token_argument_wins_and_specdec_pushes_the_draft_itself(draft_dir, fake_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    push_to_hub(draft_dir, "org/d", token="explicit")
    assert fake_hub["create"]["token"] == fake_hub["upload"]["token"] == "explicit" and fake_hub["create"]["private"] is False
    assert export_main([f"draft={draft_dir}", "format=specdec", "repo_id=org/d"]) == 0  # push implied by repo_id
    assert fake_hub["upload"]["files"] == ["README.md", "config.json", "eval_results.json", "model.safetensors", "recipe.yaml"]


def test_offline_upload_fails_with_one_message_and_keeps_the_folder(draft_dir, monkeypatch, capsys):
    def offline(self, *args, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    before = load_file(draft_dir / "model.safetensors")
    with pytest.raises(HubUploadError, match=rf"intact at {draft_dir.resolve()}.*specdec-export draft=.* push=true repo_id=org/d.*hf upload org/d"):
        push_to_hub(draft_dir, "org/d")
    assert export_main([f"draft={draft_dir}", "format=specdec", "repo_id=org/d"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OfflineModeIsEnabled" in err and "intact" in err
    after = load_file(draft_dir / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hub_recipe_keys_are_checked_before_training():
    assert load_recipe("medusa1").hub.repo_id is None
    with pytest.raises(RecipeError, match="hub.format"):
        load_recipe("medusa1", {"hub.format": "gguf"})
    with pytest.raises(RecipeError, match="hub.repo_id"):
        load_recipe("medusa1", {"hub.repo_id": "not a repo id"})


def test_training_with_hub_repo_id_exports_and_uploads_once(tmp_path, tiny_target_dir, prompts_file, monkeypatch):
    pushed = []
    monkeypatch.setattr(export_module, "push_to_hub", lambda folder, repo_id, private=False: pushed.append((folder, repo_id, private)) or "url")
    overrides = tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"hub.repo_id": "org/tiny", "hub.private": "true", "hub.format": "vllm"})
    result = run(load_recipe("medusa1", overrides))
    folder = tmp_path / "run" / "export_vllm"
    assert pushed == [(folder, "org/tiny", True)]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "medusa"
    assert load_medusa_export(folder).config.num_heads == load_draft(result.draft_dir).config.num_heads


def test_training_cli_reports_a_failed_upload_in_one_line(tmp_path, tiny_target_dir, prompts_file, monkeypatch, capsys):
    def offline(self, *args, **kwargs):
        raise OfflineModeIsEnabled("offline mode is enabled")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    args = [f"{k}={v}" for k, v in tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"hub.repo_id": "org/tiny"}).items()]
    assert train_main(["recipe=medusa1", *args]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("specdec-train: error: upload to the Hub repo org/tiny failed") and "intact at" in errors[0]
    load_draft(tmp_path / "run" / "draft").check_target(H, V)
