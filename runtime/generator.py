"""The decode loop: one target forward per step verifies a whole draft tree.

    gen = SpeculativeGenerator.from_draft(target, draft)          # the draft type's proposer, default layout
    result = gen.generate(input_ids, max_new_tokens=128)         # verifier auto: greedy at temperature 0, lossless
    result.tokens, result.mean_accepted_tokens, result.acceptance_by_depth

The proposer comes from the registry by the draft's `draft_type` (see `proposers`), the
verifier by name (see `verify`). `plain_generate` is the baseline with the same cache and
forward code, one token per forward. Batch size 1 only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from transformers import DynamicCache

from specdec.models.base import DraftModel, final_hidden_states, lm_head_weight, target_states
from specdec.runtime.draft_length import DraftLength, DraftLengthProposer
from specdec.runtime.kv import commit_path
from specdec.runtime.lookup_branch import LookupBranchProposer
from specdec.runtime.proposers import LAYOUT_KINDS, Committed, Outcome, Proposer, proposer_class
from specdec.runtime.verify import AUTO, SamplingConfig, Verifier, VerifyBlock, resolve_verifier, select_token


@dataclass
class GenerationResult:
    tokens: list[int]
    """New tokens (prompt excluded), EOS included when generation stopped at it."""
    stop_reason: str
    """eos, max_new_tokens or stop_string."""
    target_forwards: int
    """Target forwards, prefill included."""
    accepted_lengths: list[int] = field(default_factory=list)
    """Draft tokens accepted in each verification step."""
    draft_depth: int = 0
    """Depth of the deepest tree verified (positions that could be accepted in a step; trees may change per step)."""
    verifier: str | None = None
    """Name of the verification rule (None: plain decoding, nothing verified)."""
    lossless: bool = True
    """False when the verifier is lossy (its output is not distributed as the target's)."""
    prefill_s: float = 0.0
    """Seconds of the prefill forward."""
    step_s: list[float] = field(default_factory=list)
    """Seconds of each target forward after prefill (verify, or plain decode step)."""
    draft_s: list[float] = field(default_factory=list)
    """Seconds of each draft proposal."""
    total_s: float = 0.0
    """Wall time of the whole generation."""

    @property
    def mean_accepted_tokens(self) -> float:
        """tau: tokens committed per target forward, counting the target's own token (plain = 1.0)."""
        return len(self.tokens) / max(self.target_forwards, 1)

    @property
    def acceptance_by_depth(self) -> list[float]:
        """Fraction of verification steps in which draft position d (1-based) was accepted."""
        steps = max(len(self.accepted_lengths), 1)
        return [sum(a >= d for a in self.accepted_lengths) / steps for d in range(1, self.draft_depth + 1)]

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.total_s if self.total_s > 0 else 0.0


class SpeculativeGenerator:
    """Speculative decoding with any proposer and any verifier."""

    def __init__(self, target, proposer: Proposer, eos_token_ids: Iterable[int] = (), tokenizer=None, verifier: str | Verifier = AUTO):
        self.target, self.proposer, self.tokenizer, self.verifier = target, proposer, tokenizer, verifier
        self.eos = set(eos_token_ids) or default_eos_ids(target, tokenizer)
        self.weight = lm_head_weight(target)

    @classmethod
    def from_draft(
        cls,
        target,
        draft: DraftModel,
        layout=None,
        tokenizer=None,
        verifier: str | Verifier = AUTO,
        lookup_branch: int = 0,
        lookup_ngram: int = 3,
        draft_length: DraftLength | None = None,
    ) -> "SpeculativeGenerator":
        """Pair a target with a trained draft (its sizes are checked) through the proposer registered
        for its draft type. `layout`: that proposer's options (see `choose_layout`; None: its default);
        `verifier`: a name from `verify.verifier_names()` or a `Verifier`; `lookup_branch` > 0: wrap the
        proposer in a `LookupBranchProposer` adding up to that many prompt-lookup tokens, matched by
        suffixes of up to `lookup_ngram` tokens, to its tree (same node budget); `draft_length`: verify
        only the nodes likely to be accepted (`DraftLengthProposer`, before any lookup branch joins)."""
        weight = lm_head_weight(target)
        draft.check_target(target.config.hidden_size, weight.shape[0])
        draft = draft.to(weight.device).eval()
        proposer = proposer_class(draft.draft_type)
        options = proposer.layout(draft) if layout is None else layout
        if not isinstance(options, proposer.options_class):
            raise ValueError(
                f"a {draft.draft_type} draft is laid out by {proposer.options_class.__name__}, not {type(options).__name__}: build the layout with choose_layout(draft, ...)"
            )
        built = proposer.build(target, draft, options)
        if draft_length is not None:
            built = DraftLengthProposer(built, draft_length)
        if lookup_branch:
            built = LookupBranchProposer(built, lookup_branch, lookup_ngram)
        return cls(target, built, tokenizer=tokenizer, verifier=verifier)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 128,
        sampling: SamplingConfig | None = None,
        stop_strings: tuple[str, ...] = (),
        seed: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate up to `max_new_tokens` after `input_ids` ([1, T] or [T])."""
        sampling = sampling or SamplingConfig()
        verifier = resolve_verifier(self.verifier, sampling)
        self.proposer.keep_distributions = verifier.needs_draft_distributions
        input_ids = _single_sequence(input_ids).to(self.weight.device)
        generator = _generator(seed, self.weight.device)
        start = _now(self.weight)
        # Step 1: prefill; the target's own next token becomes the first root.
        layers = self.proposer.feature_layers
        cache, hidden, features, root = _prefill(self.target, self.weight, input_ids, sampling, generator, layers)
        committed = Committed(hidden, features, torch.cat([input_ids[0, 1:], torch.tensor([root], device=self.weight.device)]))
        self.proposer.reset(input_ids)
        result = GenerationResult([], "max_new_tokens", 1, verifier=verifier.name, lossless=verifier.lossless, prefill_s=_now(self.weight) - start)
        past_len = input_ids.shape[1]
        new = [root]
        while not self._finish(result, new, max_new_tokens, stop_strings, on_tokens):
            # Step 2: draft a tree from the target's newly committed states.
            t0 = _now(self.weight)
            proposal = self.proposer.propose(committed)
            t1 = _now(self.weight)
            _check_distributions(verifier, self.proposer, proposal)
            # Step 3: verify root + all candidates (+ any extra tokens) in ONE target forward (tree mask, per-node positions).
            tokens, hidden, features = self._verify_forward(root, proposal, past_len, cache, layers)
            tree, n = proposal.tree, proposal.tree.size + 1
            block = VerifyBlock(tree, tokens, hidden[:n] @ self.weight.T, hidden[:n], sampling, proposal.draft_probs, proposal.confidences, proposal.draft_dists)
            # Step 4: accept a verified path; commit exactly its KV entries (never the extra tokens').
            path, root, tokens = verifier.verify(block, generator)
            commit_path(cache, past_len, path)
            self.proposer.observe(Outcome(path, root, hidden[n:], features[n:]))
            t2 = _now(self.weight)
            past_len += len(path)
            new = [tokens[i] for i in path[1:]] + [root]
            committed = Committed(hidden[path], features[path], torch.tensor(new, device=self.weight.device))
            result.draft_depth = max(result.draft_depth, tree.depth)
            result.target_forwards += 1 + proposal.target_forwards
            result.accepted_lengths.append(len(path) - 1)
            result.draft_s.append(t1 - t0)
            result.step_s.append(t2 - t1)
        result.total_s = _now(self.weight) - start
        return result

    def _verify_forward(self, root: int, proposal, past_len: int, cache, layers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The target over [root, tree nodes, extra tokens] at the block's positions, through the cache;
        returns (root + node tokens [n+1], last hidden states [n+1+m, H], drafter features [n+1+m, F])."""
        device, extra = self.weight.device, proposal.extra
        nodes = extra.nodes if extra is not None else ()
        tokens = torch.cat([torch.tensor([root], device=device), torch.as_tensor(proposal.tokens, device=device)])
        block = tokens if extra is None else torch.cat([tokens, torch.as_tensor(extra.tokens, device=device)])
        mask = proposal.tree.attention_mask(past_len, self.weight.dtype, device, nodes)
        positions = proposal.tree.position_ids(past_len, device, nodes)
        hidden, features = target_states(self.target, block[None], layers, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        return tokens, hidden[0], features[0]

    def _finish(self, result, new, max_new_tokens, stop_strings, on_tokens) -> bool:
        return _append_and_check(result, new, max_new_tokens, self.eos, stop_strings, self.tokenizer, on_tokens)


@torch.no_grad()
def plain_generate(
    target,
    input_ids: torch.Tensor,
    max_new_tokens: int = 128,
    sampling: SamplingConfig | None = None,
    eos_token_ids: Iterable[int] = (),
    tokenizer=None,
    stop_strings: tuple[str, ...] = (),
    seed: int | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
) -> GenerationResult:
    """Baseline: one token per target forward, with the same cache and forward code as the generator."""
    sampling = sampling or SamplingConfig()
    weight = lm_head_weight(target)
    eos = set(eos_token_ids) or default_eos_ids(target, tokenizer)
    input_ids = _single_sequence(input_ids).to(weight.device)
    generator = _generator(seed, weight.device)
    start = _now(weight)
    cache, _, _, token = _prefill(target, weight, input_ids, sampling, generator)
    result = GenerationResult([], "max_new_tokens", 1, prefill_s=_now(weight) - start)
    while not _append_and_check(result, [token], max_new_tokens, eos, stop_strings, tokenizer, on_tokens):
        t0 = _now(weight)
        hidden = final_hidden_states(target, torch.tensor([[token]], device=weight.device), past_key_values=cache, use_cache=True)[0, -1]
        token = select_token(hidden @ weight.T, sampling, generator)
        result.step_s.append(_now(weight) - t0)
        result.target_forwards += 1
    result.total_s = _now(weight) - start
    return result


def _prefill(target, weight, input_ids, sampling, generator, layer_ids=None):
    """Run the prompt into a fresh cache; return (cache, last hidden states [T, H], drafter
    features [T, F] (see `target_states`), the target's next token)."""
    cache = DynamicCache(config=target.config)
    hidden, features = target_states(target, input_ids, layer_ids, past_key_values=cache, use_cache=True)
    return cache, hidden[0], features[0], select_token(hidden[0, -1] @ weight.T, sampling, generator)


def choose_layout(draft: DraftModel, kind: str = "default", size: int | None = None, depth: int = 5, top_k: int = 4):
    """The layout options of `draft`'s proposer (a `DraftTree` for Medusa / Chimera, `EagleOptions`
    for EAGLE), as its `layout` chooses them for `kind`.

    `kind` chain: top-1 tokens only (`size` positions: all heads, or `depth` for EAGLE).
    `kind` default: Medusa / Chimera verify the `size`-node tree best under the draft's measured
    accuracies; EAGLE grows EAGLE-2's dynamic tree of `size` nodes, `depth` deep, expanding
    `top_k` nodes by `top_k` children per depth."""
    if kind not in LAYOUT_KINDS:
        raise ValueError(f"unknown tree {kind!r}: choose {' or '.join(LAYOUT_KINDS)} (or tuned, which measures)")
    return proposer_class(draft.draft_type).layout(draft, kind, size, depth, top_k)


def _append_and_check(result, new, max_new_tokens, eos, stop_strings, tokenizer, on_tokens) -> bool:
    """Append newly committed tokens, trimming at EOS / the token budget / a stop string; True when done."""
    done = False
    for i, token in enumerate(new):
        if len(result.tokens) >= max_new_tokens:
            result.stop_reason, done = "max_new_tokens", True
            break
        result.tokens.append(token)
        if token in eos:
            result.stop_reason, done = "eos", True
            break
    if not done and len(result.tokens) >= max_new_tokens:
        result.stop_reason, done = "max_new_tokens", True
    if not done and stop_strings and tokenizer is not None:
        tail = tokenizer.decode(result.tokens[-64:])
        if any(s in tail for s in stop_strings):
            result.stop_reason, done = "stop_string", True
    if on_tokens is not None:
        on_tokens(result.tokens)
    return done


def default_eos_ids(target, tokenizer=None) -> set[int]:
    """End-of-sequence ids: the target's generation config plus the tokenizer's eos."""
    ids = set()
    configured = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, (list, tuple)) else [configured] if configured is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _check_distributions(verifier: Verifier, proposer: Proposer, proposal) -> None:
    """A rule that reads the draft's distributions, with a proposer that does not report them, is a ValueError."""
    if verifier.needs_draft_distributions and proposal.draft_dists is None:
        raise ValueError(f"verifier={verifier.name} needs draft distributions, which the {proposer.name} proposer does not report; use verifier=judge or topk")


def _single_sequence(input_ids: torch.Tensor) -> torch.Tensor:
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise ValueError(f"batch size {input_ids.shape[0]} is not supported: the runtime decodes one sequence at a time (batch size 1); loop over prompts")
    return input_ids


def _generator(seed: int | None, device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def _now(reference: torch.Tensor) -> float:
    """A timestamp; on CUDA, after the queued work has finished (synchronised timing)."""
    if reference.is_cuda:
        torch.cuda.synchronize(reference.device)
    return time.perf_counter()
