"""`specdec-prepare recipe=NAME [key=value ...]`: run the target once over the recipe's data and store
the features its drafter reads, for offline training (`data.features=offline`)."""

from __future__ import annotations

import sys

from specdec.train.config import RecipeError, feature_methods, load_recipe, parse_overrides

USAGE = """usage: specdec-prepare recipe=NAME_OR_PATH [key=value ...]

Runs the frozen target over the recipe's (self-distilled) data once and stores what the drafter
reads: the last hidden state, plus the fused layers for EAGLE-3, in data.features_dtype, as
shards in data.features_dir (default <output_dir>/features). Prints the size before writing and
refuses to fill the disk; an interrupted run resumes. Then train with the same recipe and
overrides plus data.features=offline. Methods: {methods}.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE.format(methods=", ".join(feature_methods())))
        return 0
    # Step 1: the recipe, validated; the features belong to a feature drafter.
    try:
        overrides = parse_overrides(argv)
        overrides.pop("data.features", None)  # the same command line serves prepare and offline training
        cfg = load_recipe(overrides.pop("recipe", "eagle3"), overrides)
        if cfg.method not in feature_methods():
            raise RecipeError(f"method {cfg.method} trains on the live target; specdec-prepare serves {', '.join(feature_methods())}")
    except RecipeError as exc:
        print(f"specdec-prepare: error: {exc}", file=sys.stderr)
        return 2
    # Step 2: target, data, then the features.
    from specdec.data.features import PrepareSpec, prepare_features
    from specdec.models.target import load_target
    from specdec.train.export import target_record
    from specdec.train.pipeline import data_settings, feature_layer_ids, features_dir, tokenized_data, user_errors

    try:
        target = load_target(cfg.target.name_or_path, cfg.target.revision, cfg.target.gguf_file, cfg.target.dtype)
        examples = tokenized_data(cfg, target)
        spec = PrepareSpec(
            layer_ids=feature_layer_ids(cfg, target.model.config.num_hidden_layers),
            dtype=cfg.data.features_dtype,
            shard_size=cfg.data.features_shard_size,
            batch_size=cfg.data.batch_size,
        )
        out = prepare_features(target.model, examples, features_dir(cfg), spec, target.tokenizer.pad_token_id, target_record(target), data_settings(cfg))
    except user_errors() as exc:
        print(f"specdec-prepare: error: {exc}", file=sys.stderr)
        return 1
    print(f"features written to {out}; train with data.features=offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
