"""Where a decoding step's time goes, with and without draft-length pruning (EAGLE-3, the 8-node tree).

    python scripts/profile_draft_length.py [DRAFT_DIR] [THREADS]   # default runs/dl_eagle3/draft (bench_draft_length.py drafts), 2 threads

Decodes the first MT-Bench question (64 new tokens, greedy) twice under cProfile: the full tree,
then pruned by the draft probability at bench_draft_length.THRESHOLD. Prints ms per step, tau and
the per-step time of the target's verification forward and of the proposer.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

from specdec.eval.benchmark import load_questions, prompt_ids
from specdec.models.base import load_draft
from specdec.models.target import load_target
from specdec.runtime.draft_length import DraftLength
from specdec.runtime.generator import SpeculativeGenerator, choose_layout

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_draft_length import THRESHOLD  # noqa: E402  (the benchmark's pruning threshold, one place)


def profile(generator: SpeculativeGenerator, ids: torch.Tensor, max_new_tokens: int = 64) -> dict:
    """{ms_per_step, tau, verify_ms_per_step, propose_ms_per_step} of one decode under cProfile."""
    generator.generate(ids, 8)  # warm-up
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    result = generator.generate(ids, max_new_tokens)
    prof.disable()
    wall, steps = time.perf_counter() - start, max(len(result.accepted_lengths), 1)
    stats = pstats.Stats(prof).stats
    # the outermost of a name (a pruning proposer's propose wraps the draft's own)
    cumulative = lambda name: max((v[3] for (file, _, func), v in stats.items() if func == name and "runtime" in file), default=0.0)  # noqa: E731
    return {"ms_per_step": 1000 * wall / steps, "tau": result.mean_accepted_tokens, "verify_ms_per_step": 1000 * cumulative("_verify_forward") / steps,
            "propose_ms_per_step": 1000 * cumulative("propose") / steps}


def main(draft_dir: str = "runs/dl_eagle3/draft", threads: str = "2") -> None:
    torch.set_num_threads(int(threads))
    draft, target = load_draft(draft_dir), load_target("smollm2-135m")
    layout = choose_layout(draft, "default", 8, 5, 4)
    ids = prompt_ids(target.tokenizer, load_questions("mt-bench", max_questions=1)[0])
    for name, length in (("full", None), ("draft_prob", DraftLength(THRESHOLD))):
        generator = SpeculativeGenerator.from_draft(target.model, draft, layout, tokenizer=target.tokenizer, draft_length=length)
        print(name, {k: round(v, 2) for k, v in profile(generator, ids).items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
