"""`specdec-generate draft=DIR prompt="..."`: stream a speculative-decoding answer to one prompt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from specdec.models.base import load_draft, read_draft_config
from specdec.models.target import load_target
from specdec.runtime.options import UsageError, parse_options, target_source
from specdec.runtime.generator import SpeculativeGenerator, choose_layout
from specdec.runtime.verify import SamplingConfig

OPTIONS = {
    "draft": (str, None),
    "prompt": (str, None),
    "target": (str, None),
    "max_new_tokens": (int, 256),
    "temperature": (float, 0.0),
    "top_p": (float, 1.0),
    "top_k": (int, 0),
    "typical": (bool, False),
    "tree_size": (int, None),
    "chain": (bool, False),
    "depth": (int, 5),
    "tree_top_k": (int, 4),
    "stop": (str, None),
    "seed": (int, 0),
    "threads": (int, None),
}
USAGE = "usage: specdec-generate draft=DIR prompt=TEXT [" + " ".join(f"{k}=" for k in list(OPTIONS)[2:]) + "]"


def parse(argv: list[str]) -> dict:
    """key=value words -> typed options; a bad command line exits with the reason and the usage."""
    try:
        options = parse_options(argv, OPTIONS)
    except UsageError as exc:
        raise SystemExit(f"specdec-generate: {exc}\n{USAGE}") from None
    if not options["draft"] or options["prompt"] is None:
        raise SystemExit(f"specdec-generate: draft= and prompt= are required\n{USAGE}")
    return options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    options = parse(argv)
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    # Step 1: draft and target (by default the one the draft was trained on).
    draft_dir = Path(options["draft"])
    config = read_draft_config(draft_dir)
    draft = load_draft(draft_dir)
    try:
        source = options["target"] or target_source(draft_dir, config)
    except UsageError as exc:
        raise SystemExit(f"specdec-generate: {exc}") from None
    target = load_target(source)
    tree, eagle = choose_layout(draft, "chain" if options["chain"] else "default", options["tree_size"], options["depth"], options["tree_top_k"])
    generator = SpeculativeGenerator.from_draft(target.model, draft, tree, tokenizer=target.tokenizer, eagle=eagle)
    # Step 2: stream the answer as tokens are committed.
    ids = target.tokenizer.apply_chat_template([{"role": "user", "content": options["prompt"]}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    printer = _StreamPrinter(target.tokenizer)
    sampling = SamplingConfig(temperature=options["temperature"], top_p=options["top_p"], top_k=options["top_k"], typical=options["typical"])
    result = generator.generate(ids, options["max_new_tokens"], sampling, stop_strings=(options["stop"],) if options["stop"] else (), seed=options["seed"], on_tokens=printer)
    # Step 3: what it cost.
    stats = {
        "new_tokens": len(result.tokens),
        "mean_accepted_tokens": round(result.mean_accepted_tokens, 3),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "stop_reason": result.stop_reason,
        "verification": sampling.mode + ("" if sampling.lossless else " (lossy)"),
        "tree_nodes": tree.size if tree else eagle.total_tokens,
    }
    print("\n" + json.dumps(stats), file=sys.stderr)
    return 0


class _StreamPrinter:
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
