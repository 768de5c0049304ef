"""`specdec-generate draft=DIR prompt="..."`: stream a speculative-decoding answer to one prompt."""

from __future__ import annotations

import json
import sys

import torch

from specdec.models.base import load_draft
from specdec.models.cli_args import NON_NEGATIVE, PROBABILITY, Option, UsageError, help_page, parse_options, run_cli, spec_rows
from specdec.models.target import load_target
from specdec.runtime.options import RUNTIME_ERRORS, SHARED_OPTIONS, build_verifier, check_lookup_branch, check_verifier, draft_folder, draft_layout, draft_length, target_source
from specdec.runtime.draft_length import find_draft_length
from specdec.runtime.generator import SpeculativeGenerator
from specdec.runtime.verify import SamplingConfig

OPTIONS = {
    "draft": Option(str, None, doc="the draft folder specdec-train wrote (<output_dir>/draft); required"),
    "prompt": Option(str, None, doc="the user message to answer (sent through the target's chat template); required"),
    **SHARED_OPTIONS,
    "top_p": Option(float, 1.0, PROBABILITY, "nucleus sampling threshold (temperature > 0)"),
    "top_k": Option(int, 0, NON_NEGATIVE, "sample among the k most likely tokens only (0: all)"),
    "chain": Option(bool, False, doc="verify a chain of top-1 draft tokens instead of a tree"),
    "stop": Option(str, None, doc="stop once the answer contains this text"),
}
"""key -> Option(type, default, range, meaning)."""
USAGE = """usage: specdec-generate draft=DIR prompt=TEXT [key=value ...]
       specdec-generate diffusion=DIR prompt=TEXT [key=value ...]   (a masked-diffusion LM; its own keys: specdec-generate diffusion= --help)

Streams the target's answer to one prompt, decoded speculatively with the draft, then prints what
it cost (tokens, mean accepted tokens per step, tokens/s) as one JSON line on stderr.
Exit codes: 0 ok, 2 a bad command line, 1 a draft or target that fails to load."""


def help_text() -> str:
    """The usage and every key with its default and meaning."""
    return help_page(USAGE, [("keys:", spec_rows(OPTIONS))])


def parse(argv: list[str]) -> dict:
    """key=value words -> typed options, each in its range (UsageError otherwise)."""
    options = parse_options(argv, OPTIONS)
    if not options["draft"] or options["prompt"] is None:
        raise UsageError("draft= and prompt= are required (usage: specdec-generate draft=DIR prompt=TEXT [key=value ...]; --help lists the keys)")
    check_verifier(options)
    return options


def main(argv: list[str] | None = None) -> int:
    """Entry point of `specdec-generate`: exit 0 ok, 2 bad command line, 1 a draft or target that fails to load;
    a command line with diffusion=DIR answers with a masked-diffusion LM instead (`specdec.runtime.diffusion_cli`)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(word.startswith("diffusion=") for word in argv):
        from specdec.runtime import diffusion_cli

        return diffusion_cli.main(argv)
    return run_cli("specdec-generate", argv, help_text, parse, run, RUNTIME_ERRORS)


def run(options: dict) -> int:
    """Load, stream the answer, print what it cost; returns the exit code."""
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    # Step 1: draft and target (by default the one the draft was trained on).
    draft_dir, config = draft_folder(options["draft"])
    draft = load_draft(draft_dir)
    layout = draft_layout(draft, "chain" if options["chain"] else "default", options)
    check_lookup_branch(draft, options)
    length = draft_length(draft, options)
    source = options["target"] or target_source(draft_dir, config)
    target = load_target(source)
    verifier = build_verifier(options, target.model.config.hidden_size)
    lookup = {"lookup_branch": options["lookup_branch"], "lookup_ngram": options["lookup_ngram"]}
    generator = SpeculativeGenerator.from_draft(target.model, draft, layout, tokenizer=target.tokenizer, verifier=verifier, draft_length=length, **lookup)
    # Step 2: stream the answer as tokens are committed.
    ids = target.tokenizer.apply_chat_template([{"role": "user", "content": options["prompt"]}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    printer = StreamPrinter(target.tokenizer)
    sampling = SamplingConfig(temperature=options["temperature"], top_p=options["top_p"], top_k=options["top_k"])
    result = generator.generate(ids, options["max_new_tokens"], sampling, stop_strings=(options["stop"],) if options["stop"] else (), seed=options["seed"], on_tokens=printer)
    # Step 3: what it cost.
    stats = {
        "new_tokens": len(result.tokens),
        "mean_accepted_tokens": round(result.mean_accepted_tokens, 3),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "stop_reason": result.stop_reason,
        "verification": result.verifier + ("" if result.lossless else " (lossy)"),
        "tree_nodes": generator.proposer.describe().get("tree_size"),
        **({"accepted_lookup_tokens": generator.proposer.accepted_lookup_tokens} if options["lookup_branch"] else {}),
        **({"verified_nodes_per_step": round(find_draft_length(generator.proposer).verified_nodes / max(len(result.accepted_lengths), 1), 2)} if length else {}),
    }
    print("\n" + json.dumps(stats), file=sys.stderr)
    return 0


class StreamPrinter:
    """Prints the text of newly committed tokens (decoding the whole answer keeps multi-byte characters intact)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.shown = tokenizer, ""

    def __call__(self, tokens: list[int]) -> None:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the rest
            return
        print(text[len(self.shown) :], end="", flush=True)
        self.shown = text


if __name__ == "__main__":
    sys.exit(main())
