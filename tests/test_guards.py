"""Runs that must not write bad weights or run code: crafted checkpoints, NaN weights, divergence,
a full disk, and a resumed run's log history."""

import csv
import os
import subprocess

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import OmegaConf

from specdec.train.cli import main
from specdec.train.config import RecipeError, load_recipe
from specdec.train.export import export_main
from specdec.train.guards import NonFiniteWeightsError, TrainingStoppedError
from specdec.train.losses import NonFiniteLossError
from specdec.train.medusa_method import Medusa1Method
from specdec.train.module import DraftModule
from specdec.train.pipeline import run
from test_train import prompts_file, tiny_overrides  # noqa: F401 (prompts_file is a fixture)


class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_checkpoint(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": 1, "payload": _Payload(marker)}, path)
    return path


def test_export_of_a_crafted_checkpoint_runs_no_code(tmp_path, tiny_target_dir, prompts_file, capsys):
    run_dir = tmp_path / "run"
    cfg = load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file))
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    marker = tmp_path / "pwned"
    evil = _crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    # The payload does run when unpickled without restrictions: the test would see a real attack.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    assert export_main([f"checkpoint={evil}"]) == 1
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "not a readable training checkpoint" in err and "without running code" in err and len(err.strip().splitlines()) == 1


def test_resume_from_a_crafted_checkpoint_fails_before_work_and_runs_no_code(tmp_path, tiny_target_dir, prompts_file, capsys):
    marker = tmp_path / "pwned"
    evil = _crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    args = [f"{k}={v}" for k, v in tiny_overrides(tmp_path, tiny_target_dir, prompts_file, resume=evil).items()]
    assert main(["recipe=medusa1", *args]) == 1
    assert not marker.exists()
    assert "not a readable training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists(), "the check must come before self-distillation"


def test_a_file_that_is_not_a_checkpoint_is_refused_by_resume(tmp_path, tiny_target_dir, prompts_file):
    not_ckpt = tmp_path / "weights.ckpt"
    torch.save({"w": torch.zeros(2)}, not_ckpt)
    with pytest.raises(RecipeError, match="not a Lightning training checkpoint"):
        run(load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, resume=not_ckpt)))


def test_a_sharded_folder_is_read_only_when_trusted(tmp_path, tiny_target_dir, prompts_file, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file))))
    folder = run_dir / "checkpoints" / "last.ckpt"
    folder.mkdir(parents=True)
    (folder / "latest").write_text("global_step3")
    assert export_main([f"checkpoint={folder}"]) == 1
    assert "pass trusted=true" in capsys.readouterr().err


class _PoisonAt(Callback):
    """Sets every head weight to NaN right after optimizer step `step` (before that step's checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.draft.parameters():
                    p.fill_(float("nan"))


def _last_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_nan_weights_never_reach_a_checkpoint_and_the_error_names_the_good_one(tmp_path, tiny_target_dir, prompts_file):
    cfg = load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file))
    with pytest.raises(NonFiniteWeightsError) as info:
        run(cfg, callbacks=[_PoisonAt(6)])
    run_dir = tmp_path / "run"
    assert "checkpoint was not written" in str(info.value)
    assert f"{run_dir / 'checkpoints' / 'last.ckpt'} (optimizer step 3)" in str(info.value)
    ckpt = _last_checkpoint(run_dir)
    assert ckpt["global_step"] == 3 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (run_dir / "draft").exists()
    # The advice holds: resuming from the named checkpoint finishes and exports finite weights.
    result = run(load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, resume="last")))
    assert result.draft_dir is not None and _last_checkpoint(run_dir)["global_step"] == 6


def test_infinite_learning_rate_writes_no_checkpoint_and_says_so(tmp_path, tiny_target_dir, prompts_file):
    cfg = load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.checkpoint_every_n_steps": 1}))
    cfg.optim.lr = float("inf")  # the recipe check refuses it; the guards must hold even so
    with pytest.raises((NonFiniteWeightsError, NonFiniteLossError)) as info:
        run(cfg)
    assert "No checkpoint was written yet" in str(info.value)
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_diverging_run_stops_and_exports_nothing(tmp_path, tiny_target_dir, prompts_file, capsys):
    args = [f"{k}={v}" for k, v in tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"optim.lr": 1e30, "trainer.checkpoint_every_n_steps": 1}).items()]
    assert main(["recipe=medusa1", *args]) == 1
    err = capsys.readouterr().err
    assert "specdec-train: error:" in err and ("diverged" in err or "NaN or infinite" in err)
    assert not (tmp_path / "run" / "draft").exists()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert not last.exists() or all(torch.isfinite(v).all() for v in _last_checkpoint(tmp_path / "run")["state_dict"].values())


def test_divergence_ratio_stops_on_an_exploding_loss_but_not_on_a_normal_run(tmp_path, tiny_target_dir, prompts_file):
    original = Medusa1Method.losses

    def exploding(self, module, batch, training, denominators=None, hidden=None):
        out = original(self, module, batch, training, denominators, hidden)
        if training and module.global_step >= 4:
            out.loss = out.loss * 1e6  # finite, so only the divergence test can catch it
        return out

    normal = run(load_recipe("medusa1", tiny_overrides(tmp_path / "normal", tiny_target_dir, prompts_file)))
    assert normal.draft_dir is not None
    Medusa1Method.losses = exploding
    try:
        with pytest.raises(TrainingStoppedError, match="training diverged: .* optimizer step 4"):
            run(load_recipe("medusa1", tiny_overrides(tmp_path / "boom", tiny_target_dir, prompts_file)))
        off = run(load_recipe("medusa1", tiny_overrides(tmp_path / "off", tiny_target_dir, prompts_file, **{"trainer.divergence_ratio": "null"})))
        assert off.draft_dir is not None
    finally:
        Medusa1Method.losses = original


def _fail_second_save(monkeypatch):
    """torch.save as a full disk makes it fail: the second checkpoint write stops half-way."""
    import specdec.train.callbacks as callbacks

    real_save, calls = torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            open(path, "wb").write(b"PK partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(callbacks.torch, "save", save)


def _assert_failed_write_kept_the_previous_checkpoint(run_dir, err):
    [line] = [line for line in err.splitlines() if line.startswith("specdec-train: error:")]
    assert "could not write checkpoint" in line and str(run_dir / "checkpoints") in line and "free in" in line
    assert "previous checkpoint is kept" in line and "resume=last" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no partial file left
    assert _last_checkpoint(run_dir)["global_step"] == 3


def test_a_failed_checkpoint_write_removes_the_partial_file_and_keeps_the_previous(tmp_path, tiny_target_dir, prompts_file, monkeypatch, capsys):
    _fail_second_save(monkeypatch)
    args = [f"{k}={v}" for k, v in tiny_overrides(tmp_path, tiny_target_dir, prompts_file).items()]
    assert main(["recipe=medusa1", *args]) == 1
    _assert_failed_write_kept_the_previous_checkpoint(tmp_path / "run", capsys.readouterr().err)


def _mount_tmpfs(path, size_bytes):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs (a real full disk) needs root; the simulated test above covers the logic")
def test_a_really_full_disk_names_the_folder_and_the_free_space(tmp_path, tiny_target_dir, prompts_file, capsys):
    # Step 1: the size of one checkpoint of this run, measured.
    probe = run(load_recipe("medusa1", tiny_overrides(tmp_path / "probe", tiny_target_dir, prompts_file, **{"trainer.max_steps": 3})))
    size = (probe.draft_dir.parent / "checkpoints" / "last.ckpt").stat().st_size
    # Step 2: a disk with room for one checkpoint and the logs, not for the second copy an atomic replace needs.
    disk = tmp_path / "disk"
    assert _mount_tmpfs(disk, size + size // 2 + 16 * 1024), "mount -t tmpfs failed as root"
    try:
        overrides = tiny_overrides(tmp_path, tiny_target_dir, prompts_file, output_dir=disk / "run", **{"trainer.logger": "none"})
        assert main(["recipe=medusa1", *[f"{k}={v}" for k, v in overrides.items()]]) == 1
        err = capsys.readouterr().err
        assert "the disk is full" in err and "Traceback" not in err
        _assert_failed_write_kept_the_previous_checkpoint(disk / "run", err)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _metric_rows(run_dir):
    with open(run_dir / "logs" / "metrics.csv", newline="") as file:
        return [(int(r["step"]), round(float(r["train/loss"]), 5)) for r in csv.DictReader(file) if r.get("train/loss")]


def test_resuming_keeps_the_logged_history(tmp_path, tiny_target_dir, prompts_file, monkeypatch):
    every_step = {"trainer.log_every_n_steps": 1}
    run(load_recipe("medusa1", tiny_overrides(tmp_path / "full", tiny_target_dir, prompts_file, **every_step)))
    original_step = DraftModule.training_step

    def dying_step(self, batch, batch_idx):
        if self.global_step == 5:
            raise RuntimeError("simulated kill")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(DraftModule, "training_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(load_recipe("medusa1", tiny_overrides(tmp_path / "killed", tiny_target_dir, prompts_file, **every_step)))
    killed_rows = _metric_rows(tmp_path / "killed" / "run")
    assert [s for s, _ in killed_rows] == [0, 1, 2, 3, 4]
    monkeypatch.setattr(DraftModule, "training_step", original_step)
    run(load_recipe("medusa1", tiny_overrides(tmp_path / "killed", tiny_target_dir, prompts_file, resume="last", **every_step)))
    # The resumed log holds the killed run's rows up to its checkpoint (step 3), then the new ones:
    # the same rows as the uninterrupted run.
    assert _metric_rows(tmp_path / "killed" / "run") == _metric_rows(tmp_path / "full" / "run")
