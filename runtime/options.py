"""What the runtime's and the evaluator's CLIs share beyond the common command line
(specdec.models.cli_args): the options both take, with their ranges and meanings, the draft's
target, and which failures are inputs that fail (exit 1)."""

from __future__ import annotations

from pathlib import Path

from specdec.models.acceptance_head import load_acceptance_head, read_acceptance_config
from specdec.models.base import DraftMismatchError, read_draft_config
from specdec.models.judge import load_judge, read_judge_config
from specdec.models.cli_args import AT_LEAST_1, NON_NEGATIVE, Option, Rule, UsageError
from specdec.models.target import TargetLoadError
from specdec.runtime.generator import choose_layout
from specdec.runtime import lookup_branch
from specdec.runtime.draft_length import DraftLength, check_draft_length
from specdec.runtime.judge_verifier import JudgeVerifier, KLVerifier, TopKVerifier
from specdec.runtime.proposers import proposer_class
from specdec.runtime.verify import SamplingConfig, Verifier, resolve_verifier, verifier_names

VERIFIER_NAME = Rule(f"one of {', '.join(verifier_names())}", lambda v: v in verifier_names())

SHARED_OPTIONS = {
    "target": Option(str, None, doc="the target that verifies: Hub id, local folder or .gguf (unset: the one in the draft's config.json)"),
    "max_new_tokens": Option(int, 256, AT_LEAST_1, "tokens to generate per answer"),
    "temperature": Option(float, 0.0, NON_NEGATIVE, "sampling temperature; 0 decodes greedily"),
    "verifier": Option(str, "auto", VERIFIER_NAME, f"acceptance rule, one of {', '.join(verifier_names())} (auto: greedy at temperature 0, else sampling)"),
    "judge": Option(str, None, doc="verifier=judge: the judge/ folder specdec-train recipe=judge wrote (LOSSY)"),
    "judge_threshold": Option(float, None, Rule("within [0, 1]", lambda v: 0 <= v <= 1), "verifier=judge: keep a rejected draft token when p(important) < this (unset: the judge's own)"),
    "accept_top_k": Option(int, None, AT_LEAST_1, "verifier=topk: keep a draft token within the target's top-k (LOSSY; 1 = exact; unset: 2)"),
    "kl_threshold": Option(float, None, NON_NEGATIVE, "verifier=kl: keep the draft's token when KL(draft || target) < this (LOSSY; unset: 0.5)"),
    "tree_size": Option(int, None, AT_LEAST_1, "draft tokens verified per step: tree nodes, or the chain's length (unset: the draft type's default)"),
    "depth": Option(int, 5, AT_LEAST_1, "EAGLE: draft steps per tree or chain; tree=tuned: longest chain tried"),
    "tree_top_k": Option(int, 4, AT_LEAST_1, "EAGLE trees: nodes expanded and children per node at each depth"),
    "lookup_branch": Option(int, 0, NON_NEGATIVE, "prompt-lookup tokens added to the draft's tree as an extra branch, within its node budget (0: off; not for SDSAT drafts)"),
    "lookup_ngram": Option(int, 3, AT_LEAST_1, "lookup_branch: longest suffix n-gram matched in the prompt and the output so far"),
    "draft_length": Option(float, None, Rule("within [0, 1]", lambda v: 0 <= v <= 1), "verify a draft node while the product of estimated acceptances on its path is at least this (unset: every node; not for SDSAT)"),
    "draft_min_nodes": Option(int, 1, AT_LEAST_1, "draft_length: draft nodes verified per step at least"),
    "acceptance_head": Option(str, None, doc="draft_length: the acceptance head folder whose estimates it multiplies (unset: the draft's own token probability; with no draft_length, the head's threshold)"),
    "seed": Option(int, 0, doc="random seed of sampling"),
    "threads": Option(int, None, AT_LEAST_1, "torch CPU threads (unset: torch's default)"),
}
"""Options specdec-generate and specdec-eval both take, with the same defaults, ranges and meanings."""

RULE_KEYS = {"judge": "judge", "judge_threshold": "judge", "accept_top_k": "topk", "kl_threshold": "kl"}
"""Key -> the only verifier that reads it (a key given with another verifier is a usage error)."""

RUNTIME_ERRORS = (FileNotFoundError, DraftMismatchError, TargetLoadError)
"""Failures of inputs the command line names correctly (a damaged draft, a target that does not load): exit 1."""


def draft_folder(path: str) -> tuple[Path, dict]:
    """The draft folder a command line names and its config.json; a folder without one is a usage error."""
    try:
        return Path(path), read_draft_config(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def target_source(draft_dir: Path, config: dict) -> str:
    """Where the draft's target lives: the fine-tuned copy inside the draft folder (Medusa-2),
    else `target.name_or_path` from its config.json."""
    target = config.get("target") or {}
    if target.get("finetuned_weights"):
        return str(draft_dir / target["finetuned_weights"])
    if not target.get("name_or_path"):
        raise UsageError(f"{draft_dir}/config.json names no target (target.name_or_path): pass target=NAME_OR_PATH")
    return target["name_or_path"]


def draft_layout(draft, kind: str, options: dict):
    """`choose_layout` with the shared tree options; a layout this draft cannot take (a chain deeper than its heads) is a usage error."""
    try:
        return choose_layout(draft, kind, options["tree_size"], options["depth"], options["tree_top_k"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_lookup_branch(draft, options: dict) -> None:
    """`lookup_branch` against the draft's proposer: one that cannot take the branch losslessly (SDSAT) is a usage error."""
    if options["lookup_branch"]:
        try:
            lookup_branch.check_lookup_branch(proposer_class(draft.draft_type), options["lookup_branch"], options["lookup_ngram"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def draft_length(draft, options: dict) -> DraftLength | None:
    """The `DraftLength` the options ask for (None: verify every node), checked against the draft's proposer;
    an acceptance head that is missing or does not load, or a proposer it cannot prune, is a usage error."""
    threshold, head = options["draft_length"], None
    if options["acceptance_head"]:
        try:
            config = read_acceptance_config(options["acceptance_head"])
            head = load_acceptance_head(options["acceptance_head"])
        except (FileNotFoundError, DraftMismatchError) as exc:
            raise UsageError(str(exc)) from None
        recorded = (config.get("draft") or {}).get("draft_type")
        if recorded and recorded != draft.draft_type:
            raise UsageError(f"{options['acceptance_head']} was trained on a {recorded} draft's proposals, not {draft.draft_type}: record and train one for this draft")
        threshold = config["threshold"] if threshold is None else threshold
    if threshold is None:
        if options["draft_min_nodes"] != 1:
            raise UsageError(f"draft_min_nodes={options['draft_min_nodes']} is only read with draft_length= or acceptance_head=: add one of them or drop draft_min_nodes=")
        return None
    length = DraftLength(threshold, options["draft_min_nodes"], head)
    try:
        check_draft_length(proposer_class(draft.draft_type), length)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return length


def check_verifier(options: dict) -> None:
    """The `verifier` option against `temperature` and its own keys: a rule that cannot decode at it
    (greedy above 0), or `verifier=judge` without `judge=DIR`, is a usage error."""
    if options["verifier"] == "judge" and not options["judge"]:
        raise UsageError("verifier=judge needs judge=DIR: the judge/ folder that `specdec-train recipe=judge` wrote")
    for key, owner in RULE_KEYS.items():
        if options[key] is not None and options["verifier"] != owner:
            raise UsageError(f"{key}={options[key]} is only read by verifier={owner} (got verifier={options['verifier']}): add verifier={owner} or drop {key}=")
    if options["verifier"] == "judge":
        if options["temperature"] > 0:
            raise UsageError(f"verifier=judge decodes at temperature 0 (got temperature={options['temperature']}): set temperature=0")
        try:
            read_judge_config(options["judge"])
        except (FileNotFoundError, DraftMismatchError) as exc:
            raise UsageError(str(exc)) from None
        return  # the judge is loaded (and checked against the target) by build_verifier
    try:
        resolve_verifier(build_verifier(options), SamplingConfig(temperature=options["temperature"]))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def build_verifier(options: dict, hidden_size: int | None = None) -> str | Verifier:
    """The verifier the options name: a registered name as is, or the lossy rules built with their keys
    (`judge` loaded from `judge=DIR` and checked against the target's `hidden_size` when given)."""
    name = options["verifier"]
    if name == "judge":
        judge = load_judge(options["judge"])
        if hidden_size is not None:
            judge.check_target(hidden_size)
        return JudgeVerifier(judge, options["judge_threshold"])
    if name == "topk":
        return TopKVerifier(*[v for v in (options["accept_top_k"],) if v is not None])
    if name == "kl":
        return KLVerifier(*[v for v in (options["kl_threshold"],) if v is not None])
    return name
