"""Verification: which tree path the target accepts, and the token it adds after it.

A verifier is an object chosen by name from `VERIFIERS` (`register_verifier` adds one; a module
named `*_verifier.py` in this package is imported with `specdec.runtime`). Each has a `name`, a
`lossless` flag (read by eval, the CLIs and the model card), `describe()` (its settings, for
result JSON) and `verify(block, generator) -> (accepted path, bonus token, node tokens)`, where
the `VerifyBlock` holds the tree, its tokens, the target's logits and hidden states at every
node, and what the proposer attached (draft distributions, per-node confidences).

- greedy: lossless; the output equals plain greedy decoding (temperature 0 only).
- sampling: exact speculative sampling (Leviathan et al.; Chen et al.) generalised to trees by
  recursive rejection over siblings (as in SpecInfer): a child proposed with draft
  distribution q is accepted with prob min(1, p(x)/q(x)), else p <- norm(max(0, p - q)) and
  the next sibling is tried; a deterministic candidate (top-k, q = one-hot) is accepted with
  prob p(x), else p <- norm(p with x removed). The bonus token is drawn from what remains.
  The output is distributed exactly as the target's (temperature / top-p / top-k warped).
- typical: Medusa's typical acceptance, LOSSY by design: accept x if
  p(x) > min(epsilon, delta * exp(-H(p))).
- auto (the default name): greedy at temperature 0, sampling above.

LOSSY greedy rules (temperature 0; `judge_verifier.py`): at each node a child equal to the
target's argmax is accepted first, else the rule may accept a mismatching child; the bonus token
is the target's argmax where the walk stops. Each counts the tokens it accepted each way.
- judge: the first child the judge head calls unimportant (p(important) < threshold, read from
  the target's hidden state at the child; Judge Decoding / AutoJudge).
- topk: the first child among the target's top-k tokens at the parent (k=1 is greedy).
- kl: the parent's first child when KL(draft || target) at the parent < threshold (needs the
  proposer's `draft_dists`, see `Verifier.needs_draft_distributions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from specdec.runtime.tree import DraftTree

AUTO = "auto"
"""Verifier name resolved by temperature: greedy at 0, sampling above."""


@dataclass
class SamplingConfig:
    """How the target's next-token distribution is sampled (verification rules are `Verifier`s)."""

    temperature: float = 0.0
    """0 = greedy; > 0 samples from the target distribution."""
    top_p: float = 1.0
    """Nucleus threshold applied to the target distribution."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = all)."""

    @property
    def greedy(self) -> bool:
        """True at temperature 0: every token is the target's argmax."""
        return self.temperature <= 0


@dataclass
class VerifyBlock:
    """What one verification step sees: the draft tree and the target's forward over it."""

    tree: DraftTree
    """Layout of the verified nodes (node 0 is the root)."""
    tokens: torch.Tensor | list[int]
    """[tree.size + 1] token of every node, root first."""
    logits: torch.Tensor
    """[tree.size + 1, V] the target's logits after every node."""
    hidden: torch.Tensor
    """[tree.size + 1, H] the target's last hidden state (after the final norm) at every node."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Temperature, top-p and top-k of the target distribution."""
    draft_probs: torch.Tensor | None = None
    """[tree.size + 1, V] draft distribution each node was sampled from; None: deterministic top-k candidates."""
    confidences: torch.Tensor | None = None
    """[tree.size] the proposer's confidence in every non-root node (tree order), or None."""
    draft_dists: torch.Tensor | None = None
    """[tree.size + 1, V] the draft's next-token distribution at every node (`Proposal.draft_dists`), or None."""


class Verifier:
    """A verification rule; subclasses set `name` and `lossless` and define `verify`."""

    name: ClassVar[str]
    """Registry key (the `verifier=` option of the CLIs)."""
    lossless: ClassVar[bool]
    """True when the output is distributed exactly as the target's own decoding."""
    needs_draft_distributions: ClassVar[bool] = False
    """True when the rule reads `VerifyBlock.draft_dists` (the generator then asks the proposer for them)."""

    def check(self, sampling: SamplingConfig) -> None:
        """Raise ValueError (one line: what to change) when this rule cannot verify under `sampling`."""

    def verify(self, block: VerifyBlock, generator: torch.Generator | None) -> tuple[list[int], int, list[int]]:
        """(accepted path as node indices, root first; the bonus token after the path; the node tokens as a list)."""
        raise NotImplementedError(f"{type(self).__name__} must define verify(block, generator)")

    def describe(self) -> dict:
        """JSON-able settings for result JSON: `verifier`, `lossless` and the rule's own options."""
        return {"verifier": self.name, "lossless": self.lossless}


VERIFIERS: dict[str, type[Verifier]] = {}
"""Verifier name -> class (built with no arguments when chosen by name)."""


def register_verifier(cls: type[Verifier]) -> type[Verifier]:
    """Class decorator: make `cls` selectable by `cls.name`."""
    VERIFIERS[cls.name] = cls
    return cls


def verifier_names() -> tuple[str, ...]:
    """Every name `resolve_verifier` takes: `auto`, then the registered verifiers."""
    return (AUTO, *VERIFIERS)


def resolve_verifier(verifier: str | Verifier, sampling: SamplingConfig) -> Verifier:
    """The verifier for a name (`auto`: greedy at temperature 0, else sampling) or the object itself,
    checked against `sampling`; an unknown name raises ValueError naming the registered ones."""
    if isinstance(verifier, str):
        name = ("greedy" if sampling.greedy else "sampling") if verifier == AUTO else verifier
        if name not in VERIFIERS:
            raise ValueError(f"unknown verifier {verifier!r}: choose one of {', '.join(verifier_names())}")
        verifier = VERIFIERS[name]()
    verifier.check(sampling)
    return verifier


def target_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The warped target distribution (temperature, top-k, top-p) over the last dimension."""
    logits = logits.float() / max(cfg.temperature, 1e-6)
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= cfg.top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def select_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> int:
    """One token from one logits row: argmax when greedy, else a sample of the warped distribution."""
    if cfg.greedy:
        return int(logits.argmax())
    return int(torch.multinomial(target_probs(logits, cfg), 1, generator=generator))


@register_verifier
class GreedyVerifier(Verifier):
    """Accept the longest path of the target's argmax tokens; the bonus is the argmax after it."""

    name, lossless = "greedy", True

    def check(self, sampling: SamplingConfig) -> None:
        if not sampling.greedy:
            raise ValueError(f"verifier=greedy decodes at temperature 0 (got temperature={sampling.temperature}): set temperature=0, or verifier=sampling to sample")

    def verify(self, block: VerifyBlock, generator: torch.Generator | None) -> tuple[list[int], int, list[int]]:
        tokens, predicted = block.tokens, block.logits.argmax(-1)
        if isinstance(tokens, torch.Tensor):
            tokens, predicted = torch.stack([tokens, predicted]).tolist()  # the one host sync of the step
        else:
            tokens, predicted = list(tokens), predicted.tolist()
        path = [0]
        while True:
            node = path[-1]
            match = next((c for c in block.tree.children[node] if tokens[c] == predicted[node]), None)
            if match is None:
                return path, predicted[node], tokens
            path.append(match)


class _SiblingWalk(Verifier):
    """Walk the tree from the root, trying each node's children in rank order against the warped
    target distribution p; the bonus token is drawn from p as it stands where the walk stops."""

    def verify(self, block: VerifyBlock, generator: torch.Generator | None) -> tuple[list[int], int, list[int]]:
        tokens = block.tokens.tolist() if isinstance(block.tokens, torch.Tensor) else list(block.tokens)
        path = [0]
        while True:
            node = path[-1]
            p = target_probs(block.logits[node], block.sampling)
            accepted = None
            for child in block.tree.children[node]:
                q = block.draft_probs[child] if block.draft_probs is not None else None
                ok, p = self._try(p, tokens[child], q, generator)
                if ok:
                    accepted = child
                    break
            if accepted is None:
                return path, int(torch.multinomial(p, 1, generator=generator)), tokens
            path.append(accepted)

    def _try(self, p: torch.Tensor, x: int, q: torch.Tensor | None, generator) -> tuple[bool, torch.Tensor]:
        """(accept candidate x?, the distribution the next sibling and the bonus are judged by)."""
        raise NotImplementedError


@register_verifier
class SamplingVerifier(_SiblingWalk):
    """Exact speculative sampling over the tree (recursive rejection over siblings)."""

    name, lossless = "sampling", True

    def _try(self, p, x, q, generator):
        # Step 1: accept with prob min(1, p(x)/q(x)) (q one-hot for top-k candidates).
        ratio = p[x] if q is None else torch.clamp(p[x] / q[x].clamp_min(1e-20), max=1.0)
        if torch.rand((), generator=generator, device=p.device) < ratio:
            return True, p
        # Step 2: rejected: continue with the residual distribution.
        if q is None:
            residual = p.clone()
            residual[x] = 0.0
        else:
            residual = torch.clamp(p - q, min=0.0)
        total = residual.sum()
        return False, residual / total if total > 0 else p


@dataclass
class TypicalOptions:
    """Thresholds of Medusa's typical acceptance."""

    epsilon: float = 0.09
    """Hard probability threshold."""
    delta: float = 0.3
    """Entropy-scaled threshold factor."""


@register_verifier
class TypicalVerifier(_SiblingWalk):
    """Medusa's typical acceptance (lossy): the first child with p(x) > min(epsilon, delta * exp(-H(p)))."""

    name, lossless = "typical", False

    def __init__(self, options: TypicalOptions | None = None):
        self.options = options or TypicalOptions()

    def describe(self) -> dict:
        return super().describe() | {"epsilon": self.options.epsilon, "delta": self.options.delta}

    def _try(self, p, x, q, generator):
        entropy = -(p * torch.log(p.clamp_min(1e-20))).sum()
        threshold = torch.clamp(self.options.delta * torch.exp(-entropy), max=self.options.epsilon)
        return bool(p[x] > threshold), p
