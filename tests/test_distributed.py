"""Scale-out on CPU: a real 2-process DDP job (gloo), a dead rank, and the strategy objects built from recipes."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from safetensors.torch import load_file

from specdec.train.config import RecipeError, load_recipe
from specdec.train.losses import head_label_counts, medusa_head_losses
from specdec.train.pipeline import run
from specdec.train.strategies import build_strategy, deepspeed_config
from specdec.models.medusa import MedusaConfig, MedusaHeads

from test_train import prompts_file, tiny_overrides  # noqa: F401  (fixture and helper shared with the training tests)

TIMEOUT_S = 600  # generous: these jobs take ~1-2 min on 2 busy cores


def _cli_args(overrides: dict) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def _launch(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    """Run a job in a fresh interpreter, as a user would, bounded in time."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_two_process_ddp_matches_one_process_with_the_same_effective_batch(tmp_path, tiny_target_dir, prompts_file):  # noqa: F811
    common = {"trainer.accelerator": "cpu", "trainer.num_threads": 1, "trainer.logger": "none", "medusa.share_lm_head": "false", "optim.lr": 0.01}
    single = tiny_overrides(tmp_path / "one", tiny_target_dir, prompts_file, **common, **{"data.batch_size": 4, "data.cache_dir": tmp_path / "cache"})
    result = run(load_recipe("medusa1", single))
    double = tiny_overrides(tmp_path / "two", tiny_target_dir, prompts_file, **common, **{"data.batch_size": 2, "data.cache_dir": tmp_path / "cache", "trainer.devices": 2, "trainer.strategy": "ddp"})
    job = _launch(["-m", "specdec.train.cli", "recipe=medusa1", *_cli_args(double)], tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "effective batch: 4 sequences per optimizer step" in job.stdout
    assert job.stdout.count("draft written to") == 1  # rank 0 alone exports and reports
    one = load_file(result.draft_dir / "model.safetensors")
    two = load_file(tmp_path / "two" / "run" / "draft" / "model.safetensors")
    assert one.keys() == two.keys()
    start = run(load_recipe("medusa1", tiny_overrides(tmp_path / "zero", tiny_target_dir, prompts_file, **{**common, "optim.lr": 1e-30, "data.cache_dir": tmp_path / "cache"})))
    zero = load_file(start.draft_dir / "model.safetensors")
    for key in one:
        moved = (one[key] - zero[key]).abs().max()
        assert moved > 1e-4 or key.endswith("bias"), f"{key} did not train"
        torch.testing.assert_close(two[key], one[key], atol=2e-4, rtol=1e-3)


def test_two_process_ddp_offline_eagle3_matches_one_process(tmp_path, tiny_target_dir, prompts_file):  # noqa: F811
    """The feature drafters under DDP: offline EAGLE-3 (stored features, training-time test) on 2
    processes ends with the weights of 1 process at the same effective batch."""
    from specdec.train.prepare import main as prepare

    common = {"trainer.accelerator": "cpu", "trainer.num_threads": 1, "trainer.logger": "none", "optim.lr": 0.003, "eagle3.draft_vocab_size": 96,
              "data.features": "offline", "data.features_dtype": "float32", "data.features_dir": tmp_path / "features", "data.cache_dir": tmp_path / "cache"}
    single = tiny_overrides(tmp_path / "one", tiny_target_dir, prompts_file, **common, **{"data.batch_size": 4})
    assert prepare(["recipe=eagle3", *_cli_args(single)]) == 0
    one = load_file(run(load_recipe("eagle3", single)).draft_dir / "model.safetensors")
    double = tiny_overrides(tmp_path / "two", tiny_target_dir, prompts_file, **common, **{"data.batch_size": 2, "trainer.devices": 2, "trainer.strategy": "ddp"})
    job = _launch(["-m", "specdec.train.cli", "recipe=eagle3", *_cli_args(double)], tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    two = load_file(tmp_path / "two" / "run" / "draft" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key].float(), one[key].float(), atol=2e-4, rtol=1e-3)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import lightning as L
    from specdec.train.cli import run_cli

    class DieOnRankOne(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_rank == 1 and trainer.global_step == 2:
                os._exit(3)  # a crashed node: no cleanup, no message

    sys.exit(run_cli(sys.argv[1:], callbacks=[DieOnRankOne()]))
    """
)


def test_a_dead_rank_ends_the_job_with_a_clear_error_instead_of_hanging(tmp_path, tiny_target_dir, prompts_file):  # noqa: F811
    script = tmp_path / "kill_rank.py"
    script.write_text(KILL_SCRIPT)
    overrides = tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.num_threads": 1, "trainer.timeout_s": 60, "trainer.max_steps": 8})
    start = time.monotonic()
    job = _launch([str(script), "recipe=medusa1", *_cli_args(overrides)], tmp_path)
    assert job.returncode != 0
    assert time.monotonic() - start < TIMEOUT_S
    assert "a training process stopped" in job.stderr, job.stderr[-3000:]
    assert "resume=last" in job.stderr
    assert f"{tmp_path / 'run'}/checkpoints" in job.stderr  # where the run can be resumed from


def test_data_parallel_denominators_give_the_global_batch_loss():
    """Two ranks' summed losses over the mean count average to the one-process loss of both halves."""
    torch.manual_seed(0)
    heads = MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=11, num_heads=2, share_lm_head=False))
    hidden, ids = torch.randn(4, 9, 8), torch.randint(0, 11, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[0, :6] = 0  # the halves have different token counts
    mask[3, :2] = 0
    whole = medusa_head_losses(heads, hidden, ids, mask, None).per_head
    halves = [slice(0, 2), slice(2, 4)]
    mean_count = torch.stack([head_label_counts(mask[h], 2) for h in halves]).mean(0)
    per_rank = [medusa_head_losses(heads, hidden[h], ids[h], mask[h], None, denominators=mean_count).per_head for h in halves]
    torch.testing.assert_close(torch.stack(per_rank).mean(0), whole)
    naive = [medusa_head_losses(heads, hidden[h], ids[h], mask[h], None).per_head for h in halves]
    assert not torch.allclose(torch.stack(naive).mean(0), whole)  # why the denominators exist


def _trainer_cfg(**overrides):
    return load_recipe("medusa1", {f"trainer.{k}": str(v) for k, v in overrides.items()}).trainer


def test_ddp_strategy_carries_the_timeout():
    strategy = build_strategy(_trainer_cfg(strategy="ddp", timeout_s=42))
    assert isinstance(strategy, DDPStrategy)
    assert strategy._timeout.total_seconds() == 42


def test_fsdp_strategy_shards_the_target_blocks(tiny_llama):
    strategy = build_strategy(_trainer_cfg(strategy="fsdp", fsdp_sharding="HYBRID_SHARD"), tiny_llama)
    assert isinstance(strategy, FSDPStrategy)
    assert {cls.__name__ for cls in strategy.kwargs["auto_wrap_policy"]._module_classes} == {"LlamaDecoderLayer"}
    assert strategy.sharding_strategy.name == "HYBRID_SHARD"
    assert strategy._state_dict_type == "sharded"
    assert strategy.kwargs["use_orig_params"] is True


@pytest.mark.parametrize("name, stage", [("deepspeed_stage_2", 2), ("deepspeed_stage_3", 3)])
def test_deepspeed_strategies_read_the_bundled_editable_configs(name, stage):
    strategy = build_strategy(_trainer_cfg(strategy=name))
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == stage
    assert strategy.exclude_frozen_parameters is True


def test_a_user_deepspeed_config_file_is_used_and_checked(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}))
    strategy = build_strategy(_trainer_cfg(strategy="deepspeed_stage_3", deepspeed_config=path))
    assert strategy.config["zero_optimization"]["offload_param"] == {"device": "cpu"}
    with pytest.raises(RecipeError, match="ZeRO stage 3"):
        build_strategy(_trainer_cfg(strategy="deepspeed_stage_2", deepspeed_config=path))
    path.write_text("{not json")
    with pytest.raises(RecipeError, match="not valid JSON"):
        deepspeed_config(str(path))
    with pytest.raises(RecipeError, match="zero2"):
        deepspeed_config("zero9")


def test_a_mistyped_strategy_fails_before_work_with_a_suggestion():
    with pytest.raises(RecipeError, match="Did you mean `deepspeed_stage_2`"):
        load_recipe("medusa1", {"trainer.strategy": "deepspeed_stage2"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed and FSDP training need CUDA GPUs; this machine has none")
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_2", "deepspeed_stage_3"])
def test_sharded_strategies_train_on_gpus(tmp_path, tiny_target_dir, prompts_file, strategy):  # noqa: F811
    # Through the CLI in its own process: Lightning relaunches the command line once per extra GPU.
    devices = min(torch.cuda.device_count(), 2)
    overrides = tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.strategy": strategy, "trainer.devices": devices, "trainer.accelerator": "gpu"})
    job = _launch(["-m", "specdec.train.cli", "recipe=medusa1", *_cli_args(overrides)], tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert (tmp_path / "run" / "draft" / "model.safetensors").is_file()
    consolidated = _launch(["-m", "specdec.train.export", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'consolidated'}", "trusted=true"], tmp_path)
    assert consolidated.returncode == 0, consolidated.stderr[-3000:]
    assert (tmp_path / "consolidated" / "model.safetensors").is_file()


def test_a_checkpoint_is_consolidated_into_the_plain_draft(tmp_path, tiny_target_dir, prompts_file, capsys):  # noqa: F811
    from specdec.train.export import export_main

    result = run(load_recipe("medusa1", tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.logger": "none"})))
    trained = load_file(result.draft_dir / "model.safetensors")
    # A plain Lightning checkpoint file (DDP or one device).
    assert export_main([f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'from_file'}"]) == 0
    from_file = load_file(tmp_path / "from_file" / "model.safetensors")
    assert from_file.keys() == trained.keys() and all(torch.equal(from_file[k], trained[k]) for k in trained)
    # A sharded folder as Lightning's FSDP strategy writes it: torch.distributed.checkpoint shards + meta.pt.
    import torch.distributed.checkpoint as dcp

    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    sharded = tmp_path / "run" / "checkpoints" / "sharded.ckpt"
    dcp.save({"model": ckpt.pop("state_dict")}, checkpoint_id=sharded, no_dist=True)
    torch.save({"global_step": ckpt["global_step"]}, sharded / "meta.pt")
    assert export_main([f"checkpoint={sharded}", f"out={tmp_path / 'from_shards'}"]) == 1  # sharded readers unpickle: only for folders one trusts
    assert export_main([f"checkpoint={sharded}", f"out={tmp_path / 'from_shards'}", "trusted=true"]) == 0
    from_shards = load_file(tmp_path / "from_shards" / "model.safetensors")
    assert all(torch.equal(from_shards[k], trained[k]) for k in trained)
    config = json.loads((tmp_path / "from_shards" / "config.json").read_text())
    assert config["training"]["steps"] == ckpt["global_step"]


def test_consolidation_errors_are_actionable(tmp_path, capsys):
    from specdec.train.export import export_main

    assert export_main([f"checkpoint={tmp_path / 'missing.ckpt'}"]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints" / "odd").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("method: medusa1\n")
    assert export_main([f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'odd'}", "trusted=true"]) == 1
    assert "neither a DeepSpeed nor an FSDP checkpoint" in capsys.readouterr().err
    assert export_main([f"checkpoint={tmp_path}", "format=vllm"]) == 2
    assert "takes only out=" in capsys.readouterr().err


def test_ranks_share_distillation_only_when_all_of_them_are_running(monkeypatch, tmp_path):
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only

    from specdec.train.pipeline import build_trainer, distill_ranks

    # A Trainer built as rank 1 makes this whole process "rank 1" for Lightning's rank-zero printing: undo that afterwards.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    monkeypatch.setattr(utils_rank_zero_only, "rank", utils_rank_zero_only.rank)

    cfg = load_recipe("medusa1", {"output_dir": str(tmp_path), "trainer.accelerator": "cpu", "trainer.devices": "2", "trainer.strategy": "ddp", "trainer.logger": "none"})
    # The first process of `specdec-train trainer.devices=2`: Lightning starts rank 1 later, inside fit.
    assert distill_ranks(build_trainer(cfg)) == (0, 1)
    # Rank 1 of a torchrun launch: every rank is already running.
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "test", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}
    for key, value in torchrun.items():
        monkeypatch.setenv(key, value)
    assert distill_ranks(build_trainer(cfg)) == (1, 2)


def test_torchrun_launch_splits_self_distillation_and_trains(tmp_path, tiny_target_dir, prompts_file):  # noqa: F811
    overrides = tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.num_threads": 1, "data.batch_size": 2, "data.generation_batch_size": 4, "data.distill_chunk_size": 8})
    job = _launch(["-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29561", "-m", "specdec.train.cli", "recipe=medusa1", *_cli_args(overrides)], tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count("draft written to") == 1
    (key_dir,) = (tmp_path / "cache").iterdir()
    shards = sorted(p.name for p in (key_dir / "shards").iterdir())
    assert len(shards) >= 2 and (key_dir / "dataset").is_dir()
    assert (tmp_path / "run" / "draft" / "model.safetensors").is_file()


def test_two_process_ddp_runs_both_medusa2_stages(tmp_path, tiny_target_dir, prompts_file):  # noqa: F811
    """Stage 1 leaves the LoRA adapters without gradients, stage 2 trains them: DDP must accept both."""
    overrides = tiny_overrides(tmp_path, tiny_target_dir, prompts_file, **{"trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.num_threads": 1, "data.batch_size": 2, "medusa2.heads_only_steps": 3, "trainer.logger": "none"})
    job = _launch(["-m", "specdec.train.cli", "recipe=medusa2", *_cli_args(overrides)], tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert (tmp_path / "run" / "draft" / "target" / "model.safetensors").is_file()


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_3"])
def test_sharded_strategies_without_gpus_fail_before_work_naming_the_cpu_alternative(strategy, tmp_path):
    from specdec.train.pipeline import build_trainer

    cfg = load_recipe("medusa1", {"output_dir": str(tmp_path), "trainer.strategy": strategy, "trainer.accelerator": "cpu"})
    with pytest.raises(RecipeError, match="needs CUDA GPUs.*trainer.strategy=ddp"):
        build_trainer(cfg)
