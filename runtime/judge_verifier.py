"""Lossy greedy verification: keep some draft tokens the target's argmax rejects (temperature 0 only).

Every rule here walks the tree from the root and, at each node, accepts the first child equal to
the target's argmax (exact verification); if none is, the rule may accept a mismatching child. The
walk stops at the first node where no child is accepted, and the bonus token is the target's
argmax there. The output is NOT the target's greedy decoding (`lossless` is False); each verifier
counts the tokens it accepted exactly (`exact_accepted`) and by its relaxed rule (`lossy_accepted`)
until `reset_counts()`.

- judge (Judge Decoding, Bachmann et al. 2025; AutoJudge, Garipov et al. 2025): the first child
  the judge head calls unimportant, p(important) < threshold, read from the target's last hidden
  state at the child (the feature `models/judge.py` is trained on).
- topk (training-free): the first child among the target's top-k tokens at the parent.
- kl (training-free; arXiv 2601.04766): the parent's first child when KL(q || p) < threshold at
  the parent, q the draft's distribution there (`VerifyBlock.draft_dists`), p the target's softmax.
"""

from __future__ import annotations

import torch

from specdec.models.judge import JudgeHead
from specdec.runtime.verify import SamplingConfig, Verifier, VerifyBlock, register_verifier


class RelaxedGreedyVerifier(Verifier):
    """Base of the lossy greedy rules: exact matches first, then `_relaxed_child`; counts both kinds."""

    lossless = False

    def __init__(self):
        self.reset_counts()

    def reset_counts(self) -> None:
        """Zero `exact_accepted` (tokens equal to the target's argmax) and `lossy_accepted` (tokens only the relaxed rule let through)."""
        self.exact_accepted = 0
        self.lossy_accepted = 0

    def check(self, sampling: SamplingConfig) -> None:
        if not sampling.greedy:
            raise ValueError(f"verifier={self.name} decodes at temperature 0 (got temperature={sampling.temperature}): set temperature=0, or verifier=sampling to sample")

    def verify(self, block: VerifyBlock, generator: torch.Generator | None) -> tuple[list[int], int, list[int]]:
        # Step 1: node tokens, the target's argmax and the rule's per-node values in one host sync.
        tokens, predicted, relaxed = self._host_rows(block)
        path = [0]
        while True:
            node = path[-1]
            children = block.tree.children[node]
            # Step 2: a child equal to the target's argmax is accepted first.
            child = next((c for c in children if tokens[c] == predicted[node]), None)
            if child is not None:
                self.exact_accepted += 1
            else:
                # Step 3: otherwise the relaxed rule may accept one; if not, the walk stops here.
                child = self._relaxed_child(node, children, tokens, relaxed)
                if child is None:
                    return path, predicted[node], tokens
                self.lossy_accepted += 1
            path.append(child)

    def _host_rows(self, block: VerifyBlock) -> tuple[list[int], list[int], list[list[int]]]:
        """(node tokens, the target's argmax at every node, `_relaxed_values` per node) as lists."""
        device = block.logits.device
        tokens = torch.as_tensor(block.tokens, device=device).long()
        values = self._relaxed_values(block).long().reshape(len(tokens), -1)
        rows = torch.cat([tokens[:, None], block.logits.argmax(-1)[:, None], values], dim=1).tolist()
        return [r[0] for r in rows], [r[1] for r in rows], [r[2:] for r in rows]

    def _relaxed_values(self, block: VerifyBlock) -> torch.Tensor:
        """[tree.size + 1, m] integer values per node (on the device) that `_relaxed_child` reads."""
        raise NotImplementedError(f"{type(self).__name__} must define _relaxed_values(block)")

    def _relaxed_child(self, node: int, children: tuple[int, ...], tokens: list[int], values: list[list[int]]) -> int | None:
        """The child of `node` the rule accepts although none equals the target's argmax, or None."""
        raise NotImplementedError(f"{type(self).__name__} must define _relaxed_child(node, children, tokens, values)")


@register_verifier
class JudgeVerifier(RelaxedGreedyVerifier):
    """Judge decoding: a mismatching child is kept when the judge calls it unimportant (p(important) < threshold)."""

    name = "judge"

    def __init__(self, judge: JudgeHead | None = None, threshold: float | None = None):
        super().__init__()
        if threshold is None and judge is not None:
            threshold = judge.config.threshold
        self.judge, self.threshold = judge, threshold

    def check(self, sampling: SamplingConfig) -> None:
        if self.judge is None:
            raise ValueError("verifier=judge needs judge=DIR (a folder written by specdec-train recipe=judge)")
        super().check(sampling)

    def describe(self) -> dict:
        return super().describe() | {"threshold": self.threshold}

    def _relaxed_values(self, block):
        # One batched judge call over every node: 1 where the node's token is unimportant.
        judge = self.judge.to(block.hidden.device)
        return judge.p_important(block.hidden) < self.threshold

    def _relaxed_child(self, node, children, tokens, values):
        return next((c for c in children if values[c][0]), None)


@register_verifier
class TopKVerifier(RelaxedGreedyVerifier):
    """Accept a mismatching child whose token is among the target's top-k at its parent (k=1: greedy)."""

    name = "topk"

    def __init__(self, k: int = 2):
        if k < 1:
            raise ValueError(f"verifier=topk needs k >= 1 (got {k})")
        super().__init__()
        self.k = k

    def describe(self) -> dict:
        return super().describe() | {"k": self.k}

    def _relaxed_values(self, block):
        return block.logits.topk(min(self.k, block.logits.shape[-1]), dim=-1).indices

    def _relaxed_child(self, node, children, tokens, values):
        return next((c for c in children if tokens[c] in values[node]), None)


@register_verifier
class KLVerifier(RelaxedGreedyVerifier):
    """Accept the parent's first child when the draft's distribution there is close to the target's: KL(q || p) < threshold.

    q is what the proposer reports for the parent (`Proposal.draft_dists`): EAGLE's drafter state
    after that node; for Medusa, head d's distribution, which does not depend on the tokens drafted
    along the path (p, the target's, does), so deeper Medusa nodes compare an approximation."""

    name = "kl"
    needs_draft_distributions = True

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    def describe(self) -> dict:
        return super().describe() | {"threshold": self.threshold}

    def _relaxed_values(self, block):
        # 1 where the node's draft distribution q exists (a zero row: none, reject) and KL(q || p) < threshold.
        q = block.draft_dists.to(block.logits.device).float()
        log_p = torch.log_softmax(block.logits.float(), dim=-1)
        kl = (torch.xlogy(q, q) - q * log_p).sum(-1)
        return (kl < self.threshold) & (q.sum(-1) > 0)

    def _relaxed_child(self, node, children, tokens, values):
        return children[0] if children and values[node][0] else None
