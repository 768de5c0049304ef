"""Runtime for SDSAT: the tuned target drafts for itself through its SA tokens, fused or two-step.

Lossless greedy decoding for both variants, chains and branchy trees, distinct and shared slot
ids; the fused variant's slot states and the two-step proposer's candidates against from-scratch
forwards; target forwards per step; exact speculative sampling; and a tiny target trained to
count, whose SA slots learn to count ahead, so drafts really are accepted (tau > 1)."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_llama, enliven
from specdec.models.base import DraftMismatchError, target_states
from specdec.models.sdsat import SdsatConfig, SdsatDraft
from specdec.runtime.generator import SpeculativeGenerator, choose_layout, plain_generate
from specdec.runtime.proposers import proposer_class, tree_gather
from specdec.runtime.sdsat_proposer import SdsatOptions, SdsatProposer
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import SamplingConfig, target_probs

VOCAB, HIDDEN, K = 64, 64, 3
SA_IDS = list(range(VOCAB - K, VOCAB))
"""The last K ids of the vocabulary are the SA tokens."""
SHARED_ID = [VOCAB - 1] * K
"""One id for every slot, as the public SDSAT scripts use."""
COUNT_MOD = 60
"""The tuned target counts modulo this (ids 0..59; the SA ids lie above)."""
NO_EOS = [10**9]
FUSED_BRANCHY = DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
"""Fused: two candidates of slots 1 and 2, a third depth under the top path."""
TWO_STEP_BRANCHY = DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (0, 1, 0), (0, 0, 0), (0, 0, 0, 0)])
"""Two-step: depth 1 is the root's own logits, so branch below it too."""
SETUPS = [
    SdsatOptions(DraftTree.chain(K)),
    SdsatOptions(FUSED_BRANCHY),
    SdsatOptions(DraftTree.chain(K + 1), two_step=True),
    SdsatOptions(TWO_STEP_BRANCHY, two_step=True),
]
IDS = ["fused-chain", "fused-tree", "two-step-chain", "two-step-tree"]
MODELS = ["random", "random-shared-id", "tuned"]


def _counting_batch(generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting sequences of a random length ending in the K SA tokens, and their labels: the next
    number at ordinary positions, the number m+1 past the last one at slot m."""
    length = int(torch.randint(2, 40, (1,), generator=generator))
    numbers = (torch.randint(0, COUNT_MOD, (size, 1), generator=generator) + torch.arange(length + K + 1)) % COUNT_MOD
    ids = torch.cat([numbers[:, :length], torch.tensor(SA_IDS).expand(size, K)], dim=1)
    return ids, numbers[:, 1:]


def _tuned_counter() -> torch.nn.Module:
    """A tiny Llama trained (every weight) to count, with slot m after the last number predicting m+1 ahead.

    The SA tokens follow the ordinary ones under a causal mask, so ordinary tokens never see them,
    exactly as at inference."""
    torch.manual_seed(0)
    model = build_tiny_llama(VOCAB, hidden_size=HIDDEN).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        ids, labels = _counting_batch(generator)
        loss = F.cross_entropy(model(ids).logits.reshape(-1, VOCAB), labels.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _draft(ids: list[int]) -> SdsatDraft:
    return SdsatDraft(SdsatConfig(HIDDEN, VOCAB, K, ids))


@pytest.fixture(scope="module")
def models():
    """{name: (tuned target, its SdsatDraft)}: a random model (its SA slots predict nothing useful),
    the same with one id for every slot, and the counting model (its slots predict right)."""
    random = enliven(build_tiny_llama(VOCAB, hidden_size=HIDDEN), seed=1)
    return {"random": (random, _draft(SA_IDS)), "random-shared-id": (random, _draft(SHARED_ID)), "tuned": (_tuned_counter(), _draft(SA_IDS))}


def _prompts(count: int = 3) -> list[torch.Tensor]:
    """A counting prompt and random ones (no SA ids)."""
    random = [torch.randint(0, COUNT_MOD, (1, 7), generator=torch.Generator().manual_seed(s)) for s in range(count - 1)]
    return [torch.tensor([[7, 8, 9, 10, 11]])] + random


def _generator(model, draft, options, eos=NO_EOS) -> SpeculativeGenerator:
    generator = SpeculativeGenerator.from_draft(model, draft, options)
    generator.eos = set(eos)
    return generator


def _record(generator: SpeculativeGenerator, prompt: torch.Tensor) -> list[dict]:
    """Wrap the generator's proposer so every step logs the sequence so far (root last), its proposal and its outcome."""
    proposer, steps = generator.proposer, []
    sequence = prompt[0, :1].tolist()
    propose, observe = proposer.propose, proposer.observe

    def recording_propose(committed):
        sequence.extend(committed.tokens.tolist())
        proposal = propose(committed)
        steps.append({"sequence": list(sequence), "proposal": proposal, "cache": proposer.cache.get_seq_length() if hasattr(proposer, "cache") else None})
        return proposal

    def recording_observe(outcome):
        steps[-1]["outcome"] = outcome
        observe(outcome)

    proposer.propose, proposer.observe = recording_propose, recording_observe
    return steps


def _node_path(tree: DraftTree, tokens: list[int], node: int) -> list[int]:
    """The draft tokens from the root's child down to `node` (empty for the root)."""
    path = []
    while node > 0:
        path.insert(0, tokens[node - 1])
        node = tree.parents[node]
    return path


def _fresh_last_states(model, ids: list[int], count: int) -> torch.Tensor:
    """[count, H] the target's last hidden states at the last `count` positions of a plain forward over `ids`."""
    with torch.no_grad():
        return target_states(model, torch.tensor([ids]))[0][0, -count:]


def _expected_tokens(model, tree: DraftTree, hidden: torch.Tensor) -> list[int]:
    """The tree's tokens when depth d takes the top candidates of `hidden[d - 1]`."""
    needed = tree.ranks_needed()
    logits = hidden @ model.lm_head.weight.T
    top = torch.cat([logits[d].topk(k).indices for d, k in enumerate(needed)])
    return top[tree_gather(tree, "cpu")].tolist()


@pytest.mark.parametrize("options", SETUPS, ids=IDS)
@pytest.mark.parametrize("name", MODELS)
def test_greedy_equals_the_tuned_targets_plain_greedy(models, name, options):
    model, draft = models[name]
    generator = _generator(model, draft, options)
    for prompt in _prompts():
        for max_new in (1, 6, 32):
            assert generator.generate(prompt, max_new).tokens == plain_generate(model, prompt, max_new, eos_token_ids=NO_EOS).tokens


@pytest.mark.parametrize("options", SETUPS, ids=IDS)
def test_eos_inside_an_accepted_path_stops_there(models, options):
    model, draft = models["tuned"]
    prompt = _prompts()[0]
    reference = plain_generate(model, prompt, 30, eos_token_ids=NO_EOS).tokens
    eos = reference[11]
    result = _generator(model, draft, options, eos=[eos]).generate(prompt, 30)
    assert result.tokens == reference[: reference.index(eos) + 1] and result.stop_reason == "eos"
    assert max(result.accepted_lengths) >= 2  # the tuned target's drafts are accepted, EOS among them


@pytest.mark.parametrize("tree", [DraftTree.chain(K), FUSED_BRANCHY], ids=["chain", "tree"])
@pytest.mark.parametrize("name", MODELS)
def test_fused_slot_states_equal_a_fresh_forward(models, name, tree):
    """Every SA slot under every node has the state of a plain forward over the sequence, that
    node's path and slots 1..m; the next step drafts the top candidates of the group under the
    last accepted node."""
    model, draft = models[name]
    generator = _generator(model, draft, SdsatOptions(tree))
    prompt = _prompts()[0 if name == "tuned" else 1]
    steps = _record(generator, prompt)
    generator.generate(prompt, 24)
    assert steps[0]["proposal"].tree.size == 0 and steps[0]["outcome"].path == [0]  # no SA predictions before step 1
    slots = draft.config.sa_token_ids
    for step, following in zip(steps[:4], steps[1:5]):
        proposal, outcome = step["proposal"], step["outcome"]
        tokens = torch.as_tensor(proposal.tokens).tolist()
        assert outcome.extra_hidden.shape == ((proposal.tree.size + 1) * K, HIDDEN)
        for node in range(proposal.tree.size + 1):
            context = step["sequence"] + _node_path(proposal.tree, tokens, node) + slots
            fresh = _fresh_last_states(model, context, K)
            torch.testing.assert_close(outcome.extra_hidden[node * K : (node + 1) * K], fresh, rtol=1e-4, atol=1e-4)
            if node == outcome.path[-1]:
                assert following["proposal"].tokens.tolist() == _expected_tokens(model, tree, fresh)
    if name == "tuned":
        assert any(len(s["outcome"].path) > 1 for s in steps[:4])  # the group under a non-root node was used


@pytest.mark.parametrize("tree", [DraftTree.chain(K + 1), TWO_STEP_BRANCHY], ids=["chain", "tree"])
@pytest.mark.parametrize("name", MODELS)
def test_two_step_candidates_equal_a_fresh_forward(models, name, tree):
    """Depth 1 holds the root's own top tokens and depth d+1 slot d's, as a plain forward over the
    sequence (root last) and the SA slots gives them; the proposer's cache ends at the root."""
    model, draft = models[name]
    generator = _generator(model, draft, SdsatOptions(tree, two_step=True))
    prompt = _prompts()[0 if name == "tuned" else 1]
    steps = _record(generator, prompt)
    generator.generate(prompt, 24)
    assert len(steps) > 3
    for step in steps:
        fresh = _fresh_last_states(model, step["sequence"] + draft.config.sa_token_ids[: tree.depth - 1], tree.depth)
        assert step["proposal"].tokens.tolist() == _expected_tokens(model, tree, fresh)
        assert step["cache"] == len(step["sequence"])


@pytest.mark.parametrize("options,per_step", [(SETUPS[1], 1), (SETUPS[3], 2)], ids=["fused", "two-step"])
def test_target_forwards_per_step(models, options, per_step):
    """The fused variant runs the target once per step (the verification), two-step twice; tau counts both."""
    model, draft = models["tuned"]
    calls = []
    handle = model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    try:
        result = _generator(model, draft, options).generate(_prompts()[0], 30)
    finally:
        handle.remove()
    steps = len(result.accepted_lengths)
    assert result.target_forwards == len(calls) == 1 + per_step * steps


@pytest.mark.parametrize("options", SETUPS, ids=IDS)
def test_a_target_tuned_to_draft_gets_its_drafts_accepted(models, options):
    """The counting model's slots count ahead: several tokens per verification, and more tokens
    than target forwards even counting the two-step proposer's own forward."""
    model, draft = models["tuned"]
    calls = []
    handle = model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    try:
        result = _generator(model, draft, options).generate(_prompts()[0], 40)
    finally:
        handle.remove()
    assert result.tokens == plain_generate(model, _prompts()[0], 40, eos_token_ids=NO_EOS).tokens
    assert result.mean_accepted_tokens == len(result.tokens) / len(calls) and result.mean_accepted_tokens > 1.5
    assert len(result.tokens) / len(result.accepted_lengths) > 2.5  # tokens per verification


@pytest.mark.parametrize("options", [SETUPS[1], SETUPS[3]], ids=["fused", "two-step"])
def test_speculative_sampling_keeps_the_tuned_targets_distribution(models, options):
    """The third token (drafted by SA slots and verified by exact speculative sampling) given the
    first two follows the tuned target's warped distribution: chi-square, 4 degrees of freedom."""
    model, draft = models["tuned"]
    cfg = SamplingConfig(temperature=3.0, top_k=5)
    generator = _generator(model, draft, options)
    prompt = _prompts()[0]
    thirds: dict[tuple[int, int], Counter] = {}
    accepted = Counter()
    for seed in range(900):
        result = generator.generate(prompt, 3, sampling=cfg, seed=seed)
        thirds.setdefault(tuple(result.tokens[:2]), Counter())[result.tokens[2]] += 1
        accepted[result.accepted_lengths[-1] > 0] += 1
    # The step that produced the third token accepted drafts, or rejected every depth-1 candidate (a residual sample).
    assert accepted[True] > 100 and accepted[False] > 20
    first, counts = max(thirds.items(), key=lambda kv: sum(kv[1].values()))
    with torch.no_grad():
        probs = target_probs(model(torch.cat([prompt, torch.tensor([first])], dim=1)).logits[0, -1], cfg)
    observed = torch.zeros(VOCAB)
    for token, count in counts.items():
        observed[token] = count
    n, keep = observed.sum(), probs > 0
    assert observed[~keep].sum() == 0 and n > 300
    chi2 = float(((observed[keep] - probs[keep] * n) ** 2 / (probs[keep] * n)).sum())
    assert chi2 < 18.47  # chi-square critical value, 4 degrees of freedom, p = 0.001


def test_layouts_tuning_candidates_and_description(models):
    model, draft = models["random"]
    assert proposer_class("sdsat") is SdsatProposer
    # Step 1: layouts are fused; a chain is at most k deep, a tree without measured accuracies is a chain.
    assert choose_layout(draft, "chain") == SdsatOptions(DraftTree.chain(K))
    assert choose_layout(draft, "default") == SdsatOptions(DraftTree.chain(K))
    with pytest.raises(ValueError, match=f"tree=chain tree_size={K + 1} is deeper than the draft's {K} heads"):
        choose_layout(draft, "chain", K + 1)
    measured = SdsatDraft(SdsatConfig(HIDDEN, VOCAB, K, SA_IDS, head_rank_accuracy=[[0.6, 0.2, 0.1], [0.4, 0.2, 0.1], [0.3, 0.1, 0.1]]))
    assert choose_layout(measured, "default", 5) == SdsatOptions(DraftTree.from_accuracies(measured.config.head_rank_accuracy, 5))
    # Step 2: tuning candidates, fused and two-step, repeats dropped.
    plain = [f"fused chain {n}" for n in range(1, K + 1)] + [f"two-step chain {n}" for n in range(2, K + 2)]
    assert list(SdsatProposer.tuning_candidates(draft)) == plain
    candidates = SdsatProposer.tuning_candidates(measured, sizes=(4, 8))
    assert list(candidates) == plain[:K] + ["fused tree 4", "fused tree 8"] + plain[K:] + ["two-step tree 4", "two-step tree 8"]
    assert candidates["two-step tree 8"].two_step and candidates["two-step tree 8"].tree.paths[0] == (0,) and candidates["two-step tree 8"].tree.size == 8
    assert candidates["fused tree 8"].tree == DraftTree.from_accuracies(measured.config.head_rank_accuracy, 8) and not candidates["fused tree 8"].two_step
    # Step 3: the description names the variant; trees too deep for a variant are clear errors.
    described = _generator(model, draft, SETUPS[3]).proposer.describe()
    assert described == {"proposer": "sdsat", "variant": "two_step", "tree_size": 7, "tree_depth": 4, "tree_paths": [list(p) for p in TWO_STEP_BRANCHY.paths]}
    assert _generator(model, draft, SETUPS[0]).proposer.describe()["variant"] == "fused"
    with pytest.raises(ValueError, match=f"a fused SDSAT tree with k={K} SA tokens is 1 to {K} deep, got depth {K + 1}"):
        SpeculativeGenerator.from_draft(model, draft, SdsatOptions(DraftTree.chain(K + 1)))
    with pytest.raises(ValueError, match=f"a two_step SDSAT tree with k={K} SA tokens is 1 to {K + 1} deep, got depth {K + 2}"):
        SpeculativeGenerator.from_draft(model, draft, SdsatOptions(DraftTree.chain(K + 2), two_step=True))
    with pytest.raises(ValueError, match="laid out by SdsatOptions, not DraftTree"):
        SpeculativeGenerator.from_draft(model, draft, DraftTree.chain(K))


def test_a_draft_for_another_target_is_a_clear_error(models):
    model, _ = models["random"]
    wider = SdsatDraft(SdsatConfig(HIDDEN, VOCAB + 8, K, SA_IDS))
    with pytest.raises(DraftMismatchError, match=f"this sdsat draft was trained for another target: the target has vocabulary size {VOCAB} \\(draft expects {VOCAB + 8}\\)"):
        SpeculativeGenerator.from_draft(model, wider)
    with pytest.raises(DraftMismatchError, match=f"hidden size {HIDDEN} \\(draft expects 32\\)"):
        SpeculativeGenerator.from_draft(model, SdsatDraft(SdsatConfig(32, VOCAB, K, SA_IDS)))
