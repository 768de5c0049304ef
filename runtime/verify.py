"""Verification rules: which tree path the target accepts, and the token it adds after it.

- greedy: lossless; the output equals plain greedy decoding.
- sampling: exact speculative sampling (Leviathan et al.; Chen et al.) generalised to trees by
  recursive rejection over siblings (as in SpecInfer): a child proposed with draft
  distribution q is accepted with prob min(1, p(x)/q(x)), else p <- norm(max(0, p - q)) and
  the next sibling is tried; a deterministic candidate (top-k, q = one-hot) is accepted with
  prob p(x), else p <- norm(p with x removed). The bonus token is drawn from what remains.
  The output is distributed exactly as the target's (temperature / top-p / top-k warped).
- typical: Medusa's typical acceptance, LOSSY by design: accept x if
  p(x) > min(epsilon, delta * exp(-H(p))).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.runtime.tree import DraftTree

MODES = ("greedy", "sampling", "typical")


@dataclass
class SamplingConfig:
    temperature: float = 0.0
    """0 = greedy (lossless verification); > 0 samples from the target distribution."""
    top_p: float = 1.0
    """Nucleus threshold applied to the target distribution."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = all)."""
    typical: bool = False
    """Medusa typical acceptance instead of exact speculative sampling (lossy, faster)."""
    typical_epsilon: float = 0.09
    """Typical acceptance: hard probability threshold."""
    typical_delta: float = 0.3
    """Typical acceptance: entropy-scaled threshold factor."""

    @property
    def mode(self) -> str:
        if self.temperature <= 0:
            return "greedy"
        return "typical" if self.typical else "sampling"

    @property
    def lossless(self) -> bool:
        return self.mode != "typical"


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
    if cfg.mode == "greedy":
        return int(logits.argmax())
    return int(torch.multinomial(target_probs(logits, cfg), 1, generator=generator))


def accept(
    tree: DraftTree,
    tokens: torch.Tensor | list[int],
    logits: torch.Tensor,
    cfg: SamplingConfig,
    draft_probs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[int], int, list[int]]:
    """Walk the verified tree from the root; return (accepted path as node indices, root first;
    the bonus token chosen at the path's end; the node tokens as a list).

    `tokens[i]` is node i's token (root included), `logits[i]` the target's logits after node i,
    `draft_probs[i]` (optional) the draft distribution node i was sampled from (None: the nodes
    are deterministic top-k candidates). Greedy acceptance costs one host transfer.
    """
    if cfg.mode == "greedy":
        return _accept_greedy(tree, tokens, logits)
    tokens = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    return (*_accept_stochastic(tree, tokens, logits, cfg, draft_probs, generator), tokens)


def _accept_greedy(tree: DraftTree, tokens, logits: torch.Tensor) -> tuple[list[int], int, list[int]]:
    predicted = logits.argmax(-1)
    if isinstance(tokens, torch.Tensor):
        tokens, predicted = torch.stack([tokens, predicted]).tolist()  # the one host sync of the step
    else:
        tokens, predicted = list(tokens), predicted.tolist()
    path = [0]
    while True:
        node = path[-1]
        match = next((c for c in tree.children[node] if tokens[c] == predicted[node]), None)
        if match is None:
            return path, predicted[node], tokens
        path.append(match)


def _accept_stochastic(tree, tokens, logits, cfg, draft_probs, generator) -> tuple[list[int], int]:
    path = [0]
    while True:
        node = path[-1]
        p = target_probs(logits[node], cfg)
        accepted = None
        for child in tree.children[node]:
            x = tokens[child]
            q = draft_probs[child] if draft_probs is not None else None
            if cfg.mode == "typical":
                if _typical_ok(p, x, cfg):
                    accepted = child
                    break
                continue
            # Step 1: accept with prob min(1, p(x)/q(x)) (q one-hot for top-k candidates).
            ratio = p[x] if q is None else torch.clamp(p[x] / q[x].clamp_min(1e-20), max=1.0)
            if torch.rand((), generator=generator, device=p.device) < ratio:
                accepted = child
                break
            # Step 2: rejected: continue with the residual distribution.
            residual = p.clone()
            if q is None:
                residual[x] = 0.0
            else:
                residual = torch.clamp(p - q, min=0.0)
            total = residual.sum()
            p = residual / total if total > 0 else p
        if accepted is None:
            return path, int(torch.multinomial(p, 1, generator=generator))
        path.append(accepted)


def _typical_ok(p: torch.Tensor, x: int, cfg: SamplingConfig) -> bool:
    entropy = -(p * torch.log(p.clamp_min(1e-20))).sum()
    threshold = torch.minimum(torch.tensor(cfg.typical_epsilon), cfg.typical_delta * torch.exp(-entropy))
    return bool(p[x] > threshold)
