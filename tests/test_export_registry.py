"""Export formats are plug-ins (specdec.models.formats): a draft type and a layout of its own,
registered from this module, export through export_folder and specdec-export, get a model card,
are refused where they do not fit and read back, with no edit to shared code."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from specdec.models import base, formats
from specdec.models.base import DraftModel, load_draft, register_draft
from specdec.models.formats import ExportFormat, ExportJob, FormatError, all_formats, detect_layout, formats_for, get_format, load_export, register_description, register_format
from specdec.models.eagle_formats import export_eagle
from specdec.models.medusa_formats import export_medusa
from specdec.train.config import RecipeError, load_recipe
from specdec.train.export import export_folder, export_main, format_choices
from conftest import build_tiny_llama
from test_eagle_formats import MAX_POS, eagle1, eagle3
from test_export import H, V, random_heads

TOY, LAYOUT = "toy", "toyfmt"


@dataclass
class ToyConfig:
    hidden_size: int
    """Hidden size H of the target."""
    vocab_size: int
    """Vocabulary size V of the target."""


class ToyDraft(DraftModel):
    """A throwaway draft type: one Linear(H, H) in front of the target's lm_head."""

    draft_type = TOY
    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)


class ToyFormatError(FormatError):
    """The toy layout's refusals."""


def write_toy(job: ExportJob) -> None:
    """The toy engine's layout: `toy.safetensors` with its own names and the target lm_head baked in."""
    tensors = {"toy.w": job.draft.proj.weight.detach().clone(), "toy.b": job.draft.proj.bias.detach().clone(), "toy.head": job.target.lm_head().clone()}
    job.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, job.out / "toy.safetensors")
    config = {**job.extra_config, "toy_hidden": job.draft.config.hidden_size, "toy_vocab": job.draft.config.vocab_size, "toy_base": job.base_model}
    (job.out / "config.json").write_text(json.dumps(config))


def read_toy(directory: Path) -> ToyDraft:
    """A toy-layout folder back into a ToyDraft."""
    config = json.loads((directory / "config.json").read_text())
    tensors = load_file(directory / "toy.safetensors")
    draft = ToyDraft(ToyConfig(hidden_size=config["toy_hidden"], vocab_size=config["toy_vocab"]))
    draft.load_state_dict({"proj.weight": tensors["toy.w"], "proj.bias": tensors["toy.b"]})
    return draft


@pytest.fixture()
def toy(monkeypatch):
    """The toy draft type, its layout and its card description, registered as a plug-in would
    (into copies of the registries, which the test's end puts back)."""
    for module, name in ((base, "DRAFT_REGISTRY"), (formats, "FORMAT_REGISTRY"), (formats, "DESCRIPTIONS")):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    register_draft(ToyDraft)
    register_format(
        ExportFormat(
            name=LAYOUT,
            draft_types=(TOY,),
            write=write_toy,
            read=read_toy,
            detect=lambda config: "toy_hidden" in config,
            use="Toy engine: `toy serve --target {base} --draft PATH --width {width}`.",
            use_fields=lambda config: {"width": config["toy_hidden"]},
            error=ToyFormatError,
            help="the toy engine",
            instead_of={"vllm": "vLLM serves no toy drafts"},
        )
    )
    register_description(TOY, "Toy", lambda config, layout: f"one {config.get('hidden_size', config.get('toy_hidden'))}-wide projection ({layout})")


@pytest.fixture()
def toy_dir(toy, tmp_path, tiny_target_dir):
    """A toy draft folder as specdec-train would write it, against the tiny target."""
    torch.manual_seed(0)
    path = tmp_path / "run" / "draft"
    target = {"name_or_path": str(tiny_target_dir), "hidden_size": H, "vocab_size": V}
    ToyDraft(ToyConfig(hidden_size=H, vocab_size=V)).save_pretrained(path, extra={"method": "toy1", "target": target, "metrics": {"val/toy": 0.5}})
    (path / "recipe.yaml").write_text("method: toy1\n")
    return path


def test_the_registry_lists_a_plugged_in_layout_for_its_draft_type_only(toy):
    assert formats_for(TOY) == (LAYOUT, "specdec")
    assert LAYOUT in all_formats() and LAYOUT not in formats_for("medusa") + formats_for("eagle3")
    assert "Toy drafts: toyfmt (the toy engine), specdec" in format_choices().splitlines()[-1]
    assert load_recipe("medusa1", {"hub.format": LAYOUT}).hub.format == LAYOUT  # the recipe check reads the registry


def test_without_the_plug_in_the_layout_is_unknown():
    assert LAYOUT not in all_formats()
    with pytest.raises(FormatError, match=f"unknown export format '{LAYOUT}'; choose one of medusa, vllm, tensorrt_llm, specdec, sglang, speculators, eagle, transformers$"):
        get_format(LAYOUT)
    with pytest.raises(RecipeError, match="hub.format"):
        load_recipe("medusa1", {"hub.format": LAYOUT})


def test_specdec_export_writes_the_plugged_in_layout_with_card_and_side_files(toy_dir, tiny_llama, tiny_target_dir, capsys):
    assert export_main([f"draft={toy_dir}", f"format={LAYOUT}"]) == 0
    out = toy_dir.parent / f"export_{LAYOUT}"
    assert str(out) in capsys.readouterr().out
    tensors = load_file(out / "toy.safetensors")
    assert torch.equal(tensors["toy.head"], tiny_llama.get_output_embeddings().weight)  # the recorded target, loaded because the layout asked
    config = json.loads((out / "config.json").read_text())
    assert config["metrics"] == {"val/toy": 0.5} and config["toy_base"] == str(tiny_target_dir.resolve())
    assert "draft_type" not in config and config["target"]["engine_name_or_path"] == str(tiny_target_dir.resolve())
    card = (out / "README.md").read_text()
    assert f"# toy1 Toy draft for `{tiny_target_dir}` ({LAYOUT} layout)" in card and "one 32-wide projection (toyfmt)" in card
    assert f"`toy serve --target {tiny_target_dir.resolve()} --draft PATH --width 32`" in card and "in the command above" in card
    assert (out / "recipe.yaml").read_text() == "method: toy1\n"
    saved, back = load_draft(toy_dir), load_export(out)
    assert type(back) is ToyDraft and all(torch.equal(back.state_dict()[k], v) for k, v in saved.state_dict().items())


def test_the_specdec_layout_holds_the_plugged_in_draft_type(toy_dir, tmp_path):
    folder = export_folder(toy_dir, "specdec", out=tmp_path / "copy")
    assert detect_layout(json.loads((folder / "config.json").read_text())).name == "specdec"
    assert all(torch.equal(load_export(folder).state_dict()[k], v) for k, v in load_draft(toy_dir).state_dict().items())
    assert "Toy draft" in (folder / "README.md").read_text()


def test_layouts_that_do_not_fit_are_refused_naming_those_that_do(toy_dir, tmp_path, capsys):
    assert export_main([f"draft={toy_dir}", "format=vllm", f"out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a toy draft, which the vllm layout cannot hold; formats that fit it: toyfmt, specdec (vLLM serves no toy drafts)" in err
    medusa = tmp_path / "medusa" / "draft"
    random_heads(share=False).save_pretrained(medusa, extra={"method": "medusa1"})
    with pytest.raises(ToyFormatError, match="which the toyfmt layout cannot hold; formats that fit it: medusa, vllm, tensorrt_llm, specdec$"):
        export_folder(medusa, LAYOUT, out=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _sdsat_export(tmp_path) -> Path:
    """An SDSAT draft folder with its tuned target in target/, exported as format=transformers."""
    from specdec.models.sdsat import SdsatConfig, SdsatDraft, sdsat_config_entry

    config = SdsatConfig(H, V, 2, [V - 2, V - 1], [[0.5] + [0.0] * 9, [0.25] + [0.0] * 9])
    tuned = build_tiny_llama(V, hidden_size=H)
    tuned.config.sdsat = sdsat_config_entry(config)
    tuned.save_pretrained(tmp_path / "sdsat" / "target")
    SdsatDraft(config).save_pretrained(tmp_path / "sdsat", extra={"target": {"finetuned_weights": "target"}})
    out = export_folder(tmp_path / "sdsat", "transformers")
    assert load_export(out).config == config  # the slot accuracies travel too
    return out


@pytest.mark.filterwarnings("ignore:FasterDecoding/Medusa's MedusaModel ties")
def test_every_built_in_export_matches_exactly_one_layout(tmp_path):
    """The upstream layouts' detectors are disjoint on what the writers produce, and a specdec
    folder is read as specdec whatever its fields (the card and load_export rely on both)."""
    target = build_tiny_llama(V, hidden_size=H)
    folders = {fmt: export_medusa(random_heads(), tmp_path / fmt, fmt, torch.randn(V, H), target_model=target if fmt == "tensorrt_llm" else None) for fmt in ("medusa", "vllm", "tensorrt_llm")}
    folders |= {fmt: export_eagle(eagle3(), tmp_path / fmt, fmt, max_position_embeddings=MAX_POS) for fmt in ("sglang", "speculators")}
    folders["eagle"] = export_eagle(eagle1(), tmp_path / "eagle", "eagle", max_position_embeddings=MAX_POS)
    folders["transformers"] = _sdsat_export(tmp_path)
    assert set(folders) | {"specdec"} == set(all_formats())
    for name, folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert [f.name for f in formats.FORMAT_REGISTRY.values() if f.detect(config)] == [name]
        assert detect_layout(config).name == name
    for draft in (random_heads(), eagle3(), eagle1()):  # a specdec Medusa folder has vLLM's num_heads field
        config = json.loads((draft.save_pretrained(tmp_path / draft.draft_type) / "config.json").read_text())
        assert detect_layout(config).name == "specdec"
    with pytest.raises(FormatError, match="matches no export layout"):
        detect_layout({"num_attention_heads": 4})
