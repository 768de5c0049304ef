"""`specdec-prepare recipe=NAME [key=value ...]`: run the target once over the recipe's data and store
the features its drafter reads, for offline training (`data.features=offline`)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from specdec.models.cli_args import UsageError, help_page, run_cli
from specdec.train.config import feature_methods

USAGE = """usage: specdec-prepare recipe=NAME_OR_PATH [key=value ...]

Runs the frozen target over the recipe's (self-distilled) data once and stores what the drafter
reads: the last hidden state, plus the fused layers for EAGLE-3, in data.features_dtype, as
shards in data.features_dir (default <output_dir>/features). Prints the size before writing and
refuses to fill the disk; an interrupted run resumes. Then train with the same recipe and
overrides plus data.features=offline. Methods: {methods}; the default recipe is eagle3.
Exit codes: 0 written, 2 a bad command line or recipe (before any work), 1 a job that failed."""


def help_text() -> str:
    """The usage, then every recipe key with its default and meaning (the same keys as specdec-train)."""
    from specdec.train.cli import recipe_key_sections

    return help_page(USAGE.format(methods=", ".join(feature_methods())), recipe_key_sections())


def parse(argv: list[str]) -> DictConfig:
    """The recipe, validated; the features belong to a feature drafter. `data.features` is ignored,
    so the same command line serves prepare and offline training."""
    from specdec.train.cli import parse as parse_recipe

    cfg = parse_recipe([word for word in argv if not word.startswith("data.features=")], default_recipe="eagle3")
    if cfg.method not in feature_methods():
        raise UsageError(f"method {cfg.method} trains on the live target; specdec-prepare serves {', '.join(feature_methods())}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-prepare`."""
    from specdec.train.pipeline import user_errors

    return run_cli("specdec-prepare", sys.argv[1:] if argv is None else argv, help_text, parse, prepare, user_errors())


def prepare(cfg: DictConfig) -> int:
    """Target, data, then the features; returns 0."""
    from specdec.data.features import PrepareSpec, prepare_features
    from specdec.models.target import load_target
    from specdec.train.export import target_record
    from specdec.train.pipeline import data_settings, feature_layer_ids, features_dir, tokenized_data

    target = load_target(cfg.target.name_or_path, cfg.target.revision, cfg.target.gguf_file, cfg.target.dtype)
    examples = tokenized_data(cfg, target)
    spec = PrepareSpec(
        layer_ids=feature_layer_ids(cfg, target.model.config.num_hidden_layers),
        dtype=cfg.data.features_dtype,
        shard_size=cfg.data.features_shard_size,
        batch_size=cfg.data.batch_size,
    )
    out = prepare_features(target.model, examples, features_dir(cfg), spec, target.tokenizer.pad_token_id, target_record(target), data_settings(cfg))
    print(f"features written to {out}; train with data.features=offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
