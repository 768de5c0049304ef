"""`specdec-train recipe=NAME_OR_PATH [key=value ...]`: run a training recipe."""

from __future__ import annotations

import sys

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from specdec.train.config import RecipeError, available_recipes, field_docs, load_recipe, method_field_docs, parse_overrides
from specdec.train.methods import section_owners

USAGE = """usage: specdec-train recipe=NAME_OR_PATH [key=value ...]

Trains a draft against a frozen target and exports it to <output_dir>/draft.
  recipe        a bundled recipe ({recipes}) or a path to a YAML file (default: medusa1)
  key=value     override any recipe key, e.g. trainer.max_steps=200 data.max_samples=500
  resume=last   continue a killed run from <output_dir>/checkpoints/last.ckpt
  --help        this text and every key with its default and meaning
"""


def help_text() -> str:
    """The usage, every shared key, then each method's own sections (a recipe reads only its method's)."""
    sections = method_field_docs()
    owners = section_owners()
    width = max(len(key) for key, _, _ in [*field_docs(), *(row for rows in sections.values() for row in rows)])
    lines = [USAGE.format(recipes=", ".join(available_recipes())), "keys of every recipe:", *_rows(field_docs(), width)]
    for name, rows in sections.items():
        lines += ["", f"keys of section `{name}` (method {' / '.join(owners[name])}):", *_rows(rows, width)]
    return "\n".join(lines)


def _rows(rows, width: int) -> list[str]:
    return [f"  {key.ljust(width)}  {str(default):>14}  {doc}" for key, default, doc in rows]


def main(argv: list[str] | None = None) -> int:
    return run_cli(sys.argv[1:] if argv is None else argv)


def run_cli(argv: list[str], callbacks: list | tuple = ()) -> int:
    """`specdec-train` on `argv`, with extra Lightning `callbacks` (for scripts that wrap the CLI); returns the exit code."""
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text())
        return 0
    # Step 1: recipe + overrides, validated before any work starts.
    try:
        overrides = parse_overrides(argv)
        cfg = load_recipe(overrides.pop("recipe", "medusa1"), overrides)
    except RecipeError as exc:
        print(f"specdec-train: error: {exc}", file=sys.stderr)
        return 2
    rank_zero_only(print)(OmegaConf.to_yaml(cfg), flush=True)
    # Step 2: the job; expected failures print one actionable line instead of a traceback.
    from specdec.train.pipeline import run, user_errors

    try:
        run(cfg, callbacks)
    except user_errors() as exc:
        print(f"specdec-train: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if not is_distributed_failure(exc):
            raise
        print(f"specdec-train: error: a training process stopped or stopped answering ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
              f"Check that rank's log (out of memory, node failure); checkpoints, once written, are in {cfg.output_dir}/checkpoints: continue with resume=last (or start again if none was written yet).", file=sys.stderr)
        return 1
    return 0


DISTRIBUTED_FAILURE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "NCCL", "Gloo", "gloo", "ProcessGroup", "timed out", "Timed out")
"""Words in the errors torch.distributed raises when a peer rank died or a collective timed out."""


def is_distributed_failure(exc: RuntimeError) -> bool:
    """True for a collective that failed because another rank died or stopped answering."""
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or any(marker in str(exc) for marker in DISTRIBUTED_FAILURE_MARKERS)


if __name__ == "__main__":
    sys.exit(main())
