"""Training end to end on a tiny target: CLI, export, resume equality, NaN stop, Medusa-2."""

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import build_tiny_llama, enliven
from specdec.models.base import DraftMismatchError, load_draft, target_states
from specdec.train.cli import main
from specdec.train.config import load_recipe
from specdec.train.losses import NonFiniteLossError
from specdec.train.lora_layers import decoder_layers
from specdec.train.medusa_method import Medusa1Method, Medusa2Method
from specdec.train.module import DraftModule
from specdec.train.pipeline import run

PROMPTS = ["Say hello.", "Write a poem about the sea.", "How can I help you today?", "Tell me a number.", "What is speculative decoding?", "Name a fox."]


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{PROMPTS[i % 6]} {i}"}) + "\n" for i in range(30)))
    return path


def tiny_overrides(tmp_path, target_dir, prompts_file, **extra):
    overrides = {
        "target.name_or_path": str(target_dir),
        "output_dir": str(tmp_path / "run"),
        "data.source": str(prompts_file),
        "data.cache_dir": str(tmp_path / "cache"),
        "data.max_samples": "24",
        "data.val_size": "4",
        "data.max_new_tokens": "12",
        "data.max_length": "128",
        "trainer.max_steps": "6",
        "trainer.val_every_n_steps": "3",
        "trainer.checkpoint_every_n_steps": "3",
        "trainer.enable_progress_bar": "false",
        "optim.warmup_steps": "2",
    }
    overrides.update({k: str(v) for k, v in extra.items()})
    return overrides


def _draft_tensors(path):
    return load_file(path / "draft" / "model.safetensors")


def test_cli_trains_and_exports_a_loadable_draft(tmp_path, tiny_target_dir, prompts_file, capsys):
    args = [f"{k}={v}" for k, v in tiny_overrides(tmp_path, tiny_target_dir, prompts_file).items()]
    assert main(["recipe=medusa1", *args]) == 0
    run_dir = tmp_path / "run"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    config = json.loads((run_dir / "draft" / "config.json").read_text())
    assert config["method"] == "medusa1" and config["target"]["hidden_size"] == 32 and config["target"]["vocab_size"] == 320
    ranks = config["head_rank_accuracy"]
    assert len(ranks) == 4 and all(len(row) == 10 and sum(row) <= 1.0 + 1e-6 for row in ranks)
    assert ranks[0][0] == pytest.approx(config["metrics"]["val/head1_top1"], abs=1e-4)
    assert sum(ranks[1][:5]) == pytest.approx(config["metrics"]["val/head2_top5"], abs=1e-4)
    assert (run_dir / "draft" / "README.md").read_text().count("val/head1_top1") == 1
    draft = load_draft(run_dir / "draft")
    draft.check_target(32, 320)
    with pytest.raises(DraftMismatchError):
        draft.check_target(64, 320)
    # The checkpoint holds the heads (and optimizer state), never the frozen target.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("draft.") for k in ckpt["state_dict"])
    assert "val/head1_top1" in capsys.readouterr().out


def test_training_lowers_the_head_loss(tmp_path, tiny_target_dir, prompts_file):
    cfg = load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.max_steps": 40, "optim.lr": 0.01, "trainer.val_every_n_steps": 40, "medusa.share_lm_head": "false"}))
    # optim.lr must be > 0: 1e-30 moves no weight, so this draft stays as initialised.
    start_cfg = load_recipe("medusa1", tiny_overrides(tmp_path / "zero", tiny_target_dir, prompts_file, **{"optim.lr": 1e-30, "medusa.share_lm_head": "false"}))
    trained, untrained = run(cfg), run(start_cfg)
    assert trained.metrics["val/loss"] < 0.8 * untrained.metrics["val/loss"]


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path, tiny_target_dir, prompts_file, monkeypatch):
    full = run(load_recipe("medusa1", tiny_overrides(tmp_path / "full", tiny_target_dir, prompts_file)))
    # Kill the second run at step 4 (after the step-3 checkpoint), then resume it.
    killed_cfg = load_recipe("medusa1", tiny_overrides(tmp_path / "killed", tiny_target_dir, prompts_file))
    original_step = DraftModule.training_step

    def dying_step(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("simulated kill")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(DraftModule, "training_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(killed_cfg)
    assert not (tmp_path / "killed" / "run" / "draft").exists()
    monkeypatch.setattr(DraftModule, "training_step", original_step)
    resumed = run(load_recipe("medusa1", tiny_overrides(tmp_path / "killed", tiny_target_dir, prompts_file, resume="last")))
    a, b = _draft_tensors(tmp_path / "full" / "run"), _draft_tensors(tmp_path / "killed" / "run")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert resumed.metrics["val/loss"] == pytest.approx(full.metrics["val/loss"], rel=1e-5)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, tiny_target_dir, prompts_file, monkeypatch):
    cfg = load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file))
    original = Medusa1Method.losses

    def poisoned(self, module, batch, training, denominators=None, hidden=None):
        out = original(self, module, batch, training, denominators, hidden)
        if training and module.global_step == 4:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Medusa1Method, "losses", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 4"):
        run(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_resume_from_a_missing_checkpoint_fails_before_work(tmp_path, tiny_target_dir, prompts_file, capsys):
    args = [f"{k}={v}" for k, v in tiny_overrides(tmp_path, tiny_target_dir, prompts_file, resume="last").items()]
    assert main(["recipe=medusa1", *args]) == 1
    assert "last.ckpt does not exist" in capsys.readouterr().err


def test_a_fresh_run_never_replaces_an_earlier_runs_checkpoint(tmp_path, tiny_target_dir, prompts_file, capsys):
    args = [f"{k}={v}" for k, v in tiny_overrides(tmp_path, tiny_target_dir, prompts_file).items()]
    earlier = tmp_path / "run" / "checkpoints" / "last.ckpt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run")
    assert main(["recipe=medusa1", *args]) == 1
    err = capsys.readouterr().err
    assert "earlier run's checkpoint" in err and "resume=last" in err and "another output_dir" in err
    assert earlier.read_bytes() == b"an earlier run" and sorted(p.name for p in earlier.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("lora_layers", [0, 1])
def test_medusa2_trains_lora_jointly_and_exports_the_merged_target(tmp_path, tiny_target_dir, prompts_file, lora_layers):
    # The top-layer run also takes the KL over the original's top-8 support (of the tiny target's 64 tokens).
    extra = {"medusa2.heads_only_steps": 3, "medusa2.lora_r": 4, "medusa2.save_adapter": "true", "optim.lr": 0.01, "medusa2.lora_layers": lora_layers, "medusa2.kl_top_k": 8 if lora_layers else 0}
    result = run(load_recipe("medusa2", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **extra)))
    # Validation measures how far the tuned target moved from the original: over every token, whatever the KL's support.
    assert result.metrics["val/standard_kl"] > 0 and 0.0 <= result.metrics["val/greedy_agreement"] <= 1.0
    draft_dir = result.draft_dir
    config = json.loads((draft_dir / "config.json").read_text())
    assert config["method"] == "medusa2" and config["target"]["finetuned_weights"] == "target"
    assert (draft_dir / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(draft_dir / "target")
    base = AutoModelForCausalLM.from_pretrained(tiny_target_dir)
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert changed, "joint training should have changed the target through LoRA"
    if lora_layers:  # only the top layer (of the tiny target's 2) has adapters
        assert all(".layers.1." in n for n in changed)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert any("lora_" in k for k in ckpt["state_dict"]) and all(("lora_" in k) or k.startswith("draft.") for k in ckpt["state_dict"])


class _LiveTarget:
    """What Medusa-2's joint step needs of the LightningModule: the (peft) target and its states."""

    def __init__(self, target):
        self.target = target

    def states(self, batch, grad=False):
        with contextlib.nullcontext() if grad else torch.no_grad():
            final, _ = target_states(self.target, batch["input_ids"], attention_mask=batch["attention_mask"])
        return final, final


def test_medusa2_lora_on_the_top_layer_runs_the_layers_below_once_and_changes_nothing_else():
    method = Medusa2Method(load_recipe("medusa2", {"medusa2.lora_layers": "1", "medusa2.lora_r": "4"}))
    target = method.prepare_target(enliven(build_tiny_llama(64, layers=3), seed=1))
    assert {n.split(".layers.")[1].split(".")[0] for n, p in target.named_parameters() if p.requires_grad} == {"2"}
    for name, param in target.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # adapters that change the output
    batch = {"input_ids": torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(0)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    calls = []
    handle = decoder_layers(target)[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    original, tuned = method._original_and_tuned(_LiveTarget(target), batch)
    handle.remove()
    assert len(calls) == 1  # the bottom layers ran in the original forward only
    tuned.square().sum().backward()
    replay_grads = {n: p.grad.clone() for n, p in target.named_parameters() if p.requires_grad}
    target.zero_grad()
    with target.disable_adapter():
        assert torch.allclose(original, _LiveTarget(target).states(batch)[1], atol=1e-6)
    direct = _LiveTarget(target).states(batch, grad=True)[1]  # every layer computed, adapters on
    assert torch.allclose(tuned, direct, atol=1e-6) and not torch.allclose(tuned, original, atol=1e-3)
    direct.square().sum().backward()
    assert all(torch.allclose(replay_grads[n], p.grad, atol=1e-5) for n, p in target.named_parameters() if p.requires_grad)
    assert all(not hasattr(layer, "forward") or "forward" not in vars(layer) for layer in decoder_layers(target))  # replay undone


def test_medusa2_lora_layers_above_the_depth_of_the_target_is_refused():
    method = Medusa2Method(load_recipe("medusa2", {"medusa2.lora_layers": "4"}))
    with pytest.raises(ValueError, match="only 3 decoder layers: use at most 3"):
        method.prepare_target(build_tiny_llama(64, layers=3))


def test_wandb_logger_is_offline_without_a_key_and_csv_is_the_default(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from specdec.train.pipeline import build_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = build_logger(load_recipe("medusa1", {"output_dir": str(tmp_path), "trainer.logger": "wandb"}))
    assert isinstance(logger, WandbLogger) and logger._offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert build_logger(load_recipe("medusa1", {"output_dir": str(tmp_path), "trainer.logger": "wandb"}))._offline is False
    assert isinstance(build_logger(load_recipe("medusa1", {"output_dir": str(tmp_path)})), CSVLogger)
    assert build_logger(load_recipe("medusa1", {"output_dir": str(tmp_path), "trainer.logger": "none"})) is False


def test_final_validation_runs_once_when_the_last_step_is_a_validation_step(tmp_path, tiny_target_dir, prompts_file, monkeypatch):
    calls = []
    original = DraftModule.on_validation_epoch_end

    def counting(self):
        calls.append(self.global_step)
        original(self)

    monkeypatch.setattr(DraftModule, "on_validation_epoch_end", counting)
    run(load_recipe("medusa1", tiny_overrides(tmp_path / "a", tiny_target_dir, prompts_file)))  # 6 steps, validation every 3
    assert calls == [3, 6]
    calls.clear()
    run(load_recipe("medusa1", tiny_overrides(tmp_path / "b", tiny_target_dir, prompts_file, **{"trainer.val_every_n_steps": 4})))
    assert calls == [4, 6]  # the final weights are validated by the extra pass
