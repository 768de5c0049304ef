"""The decode loop: one target forward per step verifies a whole draft tree.

    gen = SpeculativeGenerator.from_draft(target, draft)          # Medusa heads, default tree
    result = gen.generate(input_ids, max_new_tokens=128)         # greedy: lossless
    result.tokens, result.mean_accepted_tokens, result.acceptance_by_depth

`plain_generate` is the baseline with the same cache and forward code, one token per forward.
Batch size 1 only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from transformers import DynamicCache

from specdec.models.base import DraftModel, final_hidden_states, lm_head_weight, target_states
from specdec.models.chimera import ChimeraDrafter
from specdec.models.medusa import MedusaHeads
from specdec.runtime.kv import commit_path
from specdec.runtime.proposers import EAGLE_DRAFT_TYPES, ChimeraProposer, Committed, EagleOptions, EagleProposer, MedusaProposer
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import SamplingConfig, accept, select_token

DEFAULT_TREE_SIZE = 8


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
    """Depth of the draft tree (positions that could be accepted per step)."""
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
    """Speculative decoding with any proposer and the tree verifier."""

    def __init__(self, target, proposer, eos_token_ids: Iterable[int] = (), tokenizer=None):
        self.target, self.proposer, self.tokenizer = target, proposer, tokenizer
        self.eos = set(eos_token_ids) or default_eos_ids(target, tokenizer)
        self.weight = lm_head_weight(target)

    @classmethod
    def from_draft(cls, target, draft: DraftModel, tree: DraftTree | None = None, tokenizer=None, eagle: EagleOptions | None = None) -> "SpeculativeGenerator":
        """Pair a target with a trained draft (its sizes are checked). Medusa and Chimera verify a
        static `tree` (default: from the draft's measured accuracies, else a chain); EAGLE drafts
        a chain or a dynamic tree as `eagle` says."""
        weight = lm_head_weight(target)
        draft.check_target(target.config.hidden_size, weight.shape[0])
        draft = draft.to(weight.device).eval()
        if isinstance(draft, MedusaHeads):
            proposer = MedusaProposer(draft, weight, tree or default_tree(draft))
        elif isinstance(draft, ChimeraDrafter):
            proposer = ChimeraProposer(draft, target.get_input_embeddings().weight, weight, tree or default_tree(draft))
        elif draft.draft_type in EAGLE_DRAFT_TYPES:
            proposer = EagleProposer(draft, target.get_input_embeddings().weight, weight, eagle or EagleOptions())
        else:
            raise ValueError(f"no proposer for draft type {draft.draft_type!r}")
        return cls(target, proposer, tokenizer=tokenizer)

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
        input_ids = _single_sequence(input_ids).to(self.weight.device)
        generator = _generator(seed, self.weight.device)
        start = _now(self.weight)
        # Step 1: prefill; the target's own next token becomes the first root.
        layers = self.proposer.feature_layers
        cache, hidden, features, root = _prefill(self.target, self.weight, input_ids, sampling, generator, layers)
        committed = Committed(hidden, features, torch.cat([input_ids[0, 1:], torch.tensor([root], device=self.weight.device)]))
        self.proposer.reset(input_ids)
        result = GenerationResult([], "max_new_tokens", 1, draft_depth=self.proposer.tree.depth, prefill_s=_now(self.weight) - start)
        past_len = input_ids.shape[1]
        new = [root]
        while not self._finish(result, new, max_new_tokens, stop_strings, on_tokens):
            # Step 2: draft a tree from the target's newly committed states.
            t0 = _now(self.weight)
            proposal = self.proposer.propose(committed)
            t1 = _now(self.weight)
            # Step 3: verify root + all candidates in ONE target forward (tree mask, per-node positions).
            tree = proposal.tree
            block = torch.cat([torch.tensor([root], device=self.weight.device), torch.as_tensor(proposal.tokens, device=self.weight.device)])[None]
            mask = tree.attention_mask(past_len, self.weight.dtype, self.weight.device)
            states, features = target_states(
                self.target, block, layers, attention_mask=mask, position_ids=tree.position_ids(past_len, self.weight.device), past_key_values=cache, use_cache=True
            )
            logits = states[0] @ self.weight.T
            # Step 4: accept the longest verified path; commit exactly its KV entries.
            path, root, tokens = accept(tree, block[0], logits, sampling, proposal.draft_probs, generator)
            commit_path(cache, past_len, path)
            t2 = _now(self.weight)
            past_len += len(path)
            new = [tokens[n] for n in path[1:]] + [root]
            committed = Committed(states[0, path], features[0, path], torch.tensor(new, device=self.weight.device))
            result.target_forwards += 1
            result.accepted_lengths.append(len(path) - 1)
            result.draft_s.append(t1 - t0)
            result.step_s.append(t2 - t1)
        result.total_s = _now(self.weight) - start
        return result

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


def choose_layout(draft: DraftModel, kind: str = "default", size: int | None = None, depth: int = 5, top_k: int = 4) -> tuple[DraftTree | None, EagleOptions | None]:
    """What to verify per step, as (static tree for Medusa / Chimera, options for EAGLE).

    `kind` chain: top-1 tokens only (`size` positions: all heads, or `depth` for EAGLE).
    `kind` default: Medusa / Chimera verify the `size`-node tree best under the draft's measured
    accuracies; EAGLE grows EAGLE-2's dynamic tree of `size` nodes, `depth` deep, expanding
    `top_k` nodes by `top_k` children per depth."""
    if kind not in ("default", "chain"):
        raise ValueError(f"unknown tree {kind!r}: choose default or chain (or tuned, which measures)")
    if draft.draft_type in EAGLE_DRAFT_TYPES:
        if kind == "chain":
            return None, EagleOptions(depth=size or depth)
        return None, EagleOptions(depth=depth, top_k=top_k, total_tokens=size or DEFAULT_TREE_SIZE)
    if kind == "chain":
        length = size or draft.config.num_heads
        if length > draft.config.num_heads:
            raise ValueError(f"tree=chain tree_size={length} is deeper than the draft's {draft.config.num_heads} heads")
        return DraftTree.chain(length), None
    return default_tree(draft, size or DEFAULT_TREE_SIZE), None


def default_tree(draft: MedusaHeads | ChimeraDrafter, size: int = DEFAULT_TREE_SIZE) -> DraftTree:
    """The `size`-node tree with the largest expected acceptance under the draft's measured
    per-rank head accuracies (config `head_rank_accuracy`); without them, a chain."""
    accuracy = draft.config.head_rank_accuracy
    if accuracy:
        return DraftTree.from_accuracies(accuracy, size)
    return DraftTree.chain(min(size, draft.config.num_heads))


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
