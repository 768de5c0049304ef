"""`specdec-train recipe=NAME_OR_PATH [key=value ...]`: run a training recipe."""

from __future__ import annotations

import sys

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from specdec.models import cli_args
from specdec.models.cli_args import UsageError, help_page
from specdec.train.config import STANDALONE_RECIPES, RecipeError, available_recipes, field_docs, standalone_recipe, load_recipe, method_field_docs, parse_overrides, section_owners

USAGE = """usage: specdec-train recipe=NAME_OR_PATH [key=value ...]

Trains a draft against a frozen target and exports it to <output_dir>/draft. Three recipes train
something else: recipe=judge a judge head (Judge decoding, LOSSY) on the labels specdec-judge-data
mined (data.labels=DIR; writes <output_dir>/judge plus judge_report.json and .png), recipe=acceptance
an acceptance head (learned draft length) on the proposals specdec-acceptance-data recorded
(data.records=DIR; writes <output_dir>/head plus acceptance_report.json), recipe=diffusion_adapt a
masked-diffusion LM adapted from the target (writes <output_dir>/model).
  recipe=NAME_OR_PATH  a bundled recipe ({recipes}) or a path to a YAML file (default: medusa1)
  key=value            override any recipe key below, e.g. trainer.max_steps=200 data.max_samples=500
  resume=last          continue a killed run from <output_dir>/checkpoints/last.ckpt
  --help               this text and every key with its default and meaning
Exit codes: 0 trained, 2 a bad command line or recipe (before any work), 1 a job that failed."""


def help_text() -> str:
    """The usage, then every recipe key with its default and meaning."""
    return help_page(USAGE.format(recipes=", ".join(available_recipes())), recipe_key_sections())


def recipe_key_sections() -> list[tuple[str, list]]:
    """`help_page` sections of the recipe keys: every shared key, then each method's own sections (a recipe reads only its method's),
    then each standalone recipe's keys (it reads only those)."""
    owners = section_owners()
    sections = [("keys of every draft recipe:", field_docs())]
    sections += [(f"keys of section `{name}` (method {' / '.join(owners[name])}):", rows) for name, rows in method_field_docs().items()]
    return sections + [(f"keys of recipe={m} (method {m}; it reads only these):", field_docs(standalone_recipe(m).RECIPE)) for m in STANDALONE_RECIPES]


def parse(argv: list[str], default_recipe: str = "medusa1") -> DictConfig:
    """`recipe=` plus overrides -> the validated recipe; any problem with them is a usage error."""
    overrides = parse_overrides(argv)
    try:
        return load_recipe(overrides.pop("recipe", default_recipe), overrides)
    except RecipeError as exc:
        raise UsageError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-train`."""
    return run_cli(sys.argv[1:] if argv is None else argv)


def run_cli(argv: list[str], callbacks: list | tuple = ()) -> int:
    """`specdec-train` on `argv`, with extra Lightning `callbacks` (for scripts that wrap the CLI); returns the exit code:
    2 for a bad command line or recipe (before any work), 1 for a job that failed on its inputs or lost a rank."""
    from specdec.train.pipeline import user_errors

    head_errors = tuple(error for m in STANDALONE_RECIPES for error in standalone_recipe(m).ERRORS)
    return cli_args.run_cli("specdec-train", argv, help_text, parse, lambda cfg: train(cfg, callbacks), (*user_errors(), *head_errors, DistributedFailure))


class DistributedFailure(RuntimeError):
    """Another rank died or stopped answering during a collective; the message says where to look and how to continue."""


def train(cfg: DictConfig, callbacks: list | tuple = ()) -> int:
    """Print the resolved recipe and run the job (a standalone recipe: its module's `run_recipe`); returns 0."""
    from specdec.train.pipeline import run, user_errors

    rank_zero_only(print)(OmegaConf.to_yaml(cfg), flush=True)
    if cfg.method in STANDALONE_RECIPES:
        standalone_recipe(cfg.method).run_recipe(cfg, callbacks)
        return 0
    try:
        run(cfg, callbacks)
    except RuntimeError as exc:
        if isinstance(exc, user_errors()) or not is_distributed_failure(exc):
            raise
        raise DistributedFailure(
            f"a training process stopped or stopped answering ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"Check that rank's log (out of memory, node failure); checkpoints, once written, are in {cfg.output_dir}/checkpoints: continue with resume=last (or start again if none was written yet)."
        ) from exc
    return 0


DISTRIBUTED_FAILURE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "NCCL", "Gloo", "gloo", "ProcessGroup", "timed out", "Timed out")
"""Words in the errors torch.distributed raises when a peer rank died or a collective timed out."""


def is_distributed_failure(exc: RuntimeError) -> bool:
    """True for a collective that failed because another rank died or stopped answering."""
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or any(marker in str(exc) for marker in DISTRIBUTED_FAILURE_MARKERS)


if __name__ == "__main__":
    sys.exit(main())
