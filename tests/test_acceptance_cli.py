"""Learned draft length from the command line (issue 13): specdec-acceptance-data records a draft's
verified proposals, specdec-train recipe=acceptance fits a head on them, and specdec-eval serves it
losslessly; bad inputs fail in one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specdec.eval.acceptance_data import main as record_main
from specdec.eval.cli import main as eval_main
from specdec.models.acceptance_data import CARD_NAME, RECORDS_NAME, AcceptanceDataError, load_records
from specdec.models.acceptance_head import FEATURES, load_acceptance_head
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.models.sdsat import SdsatConfig, SdsatDraft
from specdec.train.cli import main as train_main
from conftest import randomise


@pytest.fixture()
def medusa_dir(tmp_path, tiny_target_dir, tiny_tokenizer):
    heads = randomise(MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=len(tiny_tokenizer), num_heads=2)), 0, 0.05)
    return heads.save_pretrained(tmp_path / "draft", extra={"target": {"name_or_path": str(tiny_target_dir)}})


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": f"Say hello {i} times, hello hello"}) + "\n" for i in range(4)))
    return path


def test_record_fit_and_serve(tmp_path, medusa_dir, prompts, capsys):
    records = tmp_path / "records"
    # Step 1: record; the card says what was decoded, every row has the head's features.
    assert record_main([f"draft={medusa_dir}", f"prompts={prompts}", f"out={records}", "max_prompts=3", "max_new_tokens=12", "threads=1", "progress=false"]) == 0
    loaded, card = load_records(records)
    rows = loaded["features"].shape[0]
    assert rows == card["rows"] > 10 and loaded["features"].shape[1] == len(FEATURES)
    assert card["num_prompts"] == 3 and card["draft"]["draft_type"] == "medusa" and card["label"] == "matched" and card["proposer"]["proposer"] == "medusa"
    assert set(loaded["matched"].unique().tolist()) <= {0.0, 1.0} and bool(((loaded["ratio"] >= 0) & (loaded["ratio"] <= 1)).all())
    assert f"{rows} drafted nodes from 3 prompts" in capsys.readouterr().out
    # Step 2: fit; the head folder carries its report and the draft type it serves.
    out = tmp_path / "run"
    assert train_main(["recipe=acceptance", f"data.records={records}", f"output_dir={out}", "acceptance.steps=40", "acceptance.threshold=0.2"]) == 0
    report = json.loads((out / "acceptance_report.json").read_text())
    assert report["label"] == "matched" and report["rows"] == rows and report["val_rows"] > 0 and 0 <= report["val_mean_head"] <= 1
    head = load_acceptance_head(out / "head")
    assert head.config.threshold == 0.2 and head.config.draft["draft_type"] == "medusa"
    assert "serve it with draft_length=0.2" in capsys.readouterr().out
    # Step 3: serve it; greedy stays lossless, fewer nodes are verified than drafted.
    result_path = tmp_path / "eval.json"
    assert eval_main([f"draft={medusa_dir}", f"bench={prompts}", "max_questions=2", "max_new_tokens=12", f"acceptance_head={out / 'head'}", "baselines=false", f"out={result_path}", "plot=false", "threads=1"]) == 0
    result = json.loads(result_path.read_text())
    assert not result_path.with_suffix(".png").exists() and not Path("false.png").exists(), "plot=false writes no figure"
    assert result["overall"]["lossless_match"] == 1.0 and result["setting"]["draft_length_threshold"] == 0.2
    assert result["overall"]["verified_nodes_per_step"] <= result["overall"]["drafted_nodes_per_step"]


def test_bad_inputs_fail_in_one_line(tmp_path, medusa_dir, prompts, tiny_target_dir, tiny_tokenizer, capsys):
    assert record_main([f"draft={medusa_dir}"]) == 2 and "out=DIR is required" in capsys.readouterr().err
    assert record_main([f"draft={medusa_dir}", f"out={tmp_path / 'r'}", "max_prompt=3"]) == 2 and "max_prompts" in capsys.readouterr().err
    assert record_main([f"draft={medusa_dir}", f"out={tmp_path / 'r'}", f"prompts={tmp_path / 'none.jsonl'}"]) == 2 and "does not exist" in capsys.readouterr().err
    sdsat = SdsatDraft(SdsatConfig(32, len(tiny_tokenizer), 2, [len(tiny_tokenizer) - 2, len(tiny_tokenizer) - 1])).save_pretrained(tmp_path / "sdsat", extra={"target": {"name_or_path": str(tiny_target_dir)}})
    assert record_main([f"draft={sdsat}", f"prompts={prompts}", f"out={tmp_path / 'r'}"]) == 2 and "SDSAT" in capsys.readouterr().err
    assert train_main(["recipe=acceptance"]) == 2 and "`data.records` is required" in capsys.readouterr().err
    assert train_main(["recipe=acceptance", f"data.records={tmp_path / 'nowhere'}"]) == 2 and "run specdec-acceptance-data first" in capsys.readouterr().err
    assert train_main(["recipe=acceptance", f"data.records={tmp_path}", "acceptance.hiden=8"]) == 2 and "acceptance.hidden" in capsys.readouterr().err
    assert train_main(["recipe=acceptance", f"data.records={tmp_path}", "acceptance.label=soft"]) == 2 and "choose one of auto, matched, ratio" in capsys.readouterr().err
    assert train_main(["recipe=acceptance", f"data.records={tmp_path}", "judge.max_steps=3"]) == 2 and "belongs to method judge" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / RECORDS_NAME).write_bytes(b"not safetensors")
    (damaged / CARD_NAME).write_text("{}")
    assert train_main(["recipe=acceptance", f"data.records={damaged}", f"output_dir={tmp_path / 'run'}"]) == 1 and "record the proposals again" in capsys.readouterr().err
    with pytest.raises(AcceptanceDataError, match="lacks the column"):
        from specdec.models.acceptance_data import check_records

        check_records({"features": torch.zeros(2, len(FEATURES))}, "here")
