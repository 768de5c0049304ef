"""Lossy greedy verifiers (runtime/judge_verifier.py): judge, topk and kl.

Hand-made blocks pin each rule (exact matches first, the relaxed rule next, stop where both
reject); through the generator, the judge at threshold 0 and kl at threshold 0 reproduce plain
greedy decoding, and rules that accept everything commit the whole chain each step; the proposers'
draft distributions line up with the tokens they drafted."""

import random

import pytest
import torch

from conftest import build_tiny_llama, enliven, randomise
from specdec.models.chimera import ChimeraConfig, ChimeraDrafter
from specdec.models.base import target_states
from specdec.models.decoder import LayerShape
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter
from specdec.models.judge import JudgeConfig, JudgeHead
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime.eagle_proposer import EagleOptions
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.judge_verifier import JudgeVerifier, KLVerifier, TopKVerifier
from specdec.runtime.proposers import Proposer
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import GreedyVerifier, SamplingConfig, TypicalVerifier, VerifyBlock, resolve_verifier
from specdec.train.eagle_losses import eagle_losses
from specdec.train.losses import medusa_head_losses

VOCAB, HIDDEN = 320, 64
NO_EOS = [10**9]
PROMPT = torch.tensor([[3, 14, 15, 92, 65, 35]])
MEDUSA_TREE = DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])


@pytest.fixture(scope="module")
def lively():
    return enliven(build_tiny_llama(VOCAB, hidden_size=HIDDEN, layers=3), seed=2)


@pytest.fixture(scope="module")
def drafts(lively):
    """A random draft of each kind; EAGLE-3 drafts over 96 of the 320 target tokens."""
    shape = LayerShape.from_target_config(lively.config)
    e3 = Eagle3Drafter(Eagle3Config(HIDDEN, VOCAB, 96, [1, 2, 3], layer=shape))
    e3.set_vocab(torch.arange(0, VOCAB, 3)[:96], lively.lm_head.weight)
    return {
        "medusa": randomise(MedusaHeads(MedusaConfig(hidden_size=HIDDEN, vocab_size=VOCAB, num_heads=3)), 0, 0.05),
        "eagle1": randomise(Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, layer=shape)), 1, 0.2),
        "eagle3": randomise(e3, 2, 0.3),
        "chimera": randomise(ChimeraDrafter(ChimeraConfig(HIDDEN, VOCAB, num_heads=3, layer=shape)), 3, 0.2),
    }


@pytest.fixture(scope="module")
def fitted(lively):
    """A Medusa and an EAGLE-1 draft fitted to the first 16 tokens of the target's greedy answer to
    PROMPT (and to other prompts' answers), so decoding PROMPT they are accepted exactly at first
    and leave mismatches for the judge later."""
    prompts = [PROMPT] + [torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    batch = torch.cat([torch.cat([p, torch.tensor([_plain(lively, 40, p)])], dim=1) for p in prompts])
    batch[0, PROMPT.shape[1] + 16 :] = batch[1, PROMPT.shape[1] + 16 :]  # PROMPT's answer only up to token 16
    mask, head = torch.ones_like(batch), lively.lm_head.weight
    shape = LayerShape.from_target_config(lively.config)
    medusa = randomise(MedusaHeads(MedusaConfig(hidden_size=HIDDEN, vocab_size=VOCAB, num_heads=3)), 0, 0.05)
    eagle = Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, layer=shape))
    with torch.no_grad():
        final, features = target_states(lively, batch, eagle.feature_layers)
    losses = {
        "medusa": (medusa, lambda: medusa_head_losses(medusa, final, batch, mask, head, with_accuracy=False).loss),
        "eagle1": (eagle, lambda: eagle_losses(eagle, features, final, batch, mask, lively.get_input_embeddings().weight, head, steps=2, with_accuracy=False).loss),
    }
    for draft, loss in losses.values():
        optimizer = torch.optim.AdamW(draft.parameters(), lr=3e-3)
        for _ in range(150):
            optimizer.zero_grad()
            loss().backward()
            optimizer.step()
        draft.eval()
    return {kind: draft for kind, (draft, _) in losses.items()}


def _judge(feature_size=HIDDEN, threshold=0.5, seed=0):
    torch.manual_seed(seed)
    return JudgeHead(JudgeConfig(feature_size=feature_size, threshold=threshold)).eval()


def _generate(lively, draft, layout, verifier, max_new_tokens):
    generator = SpeculativeGenerator.from_draft(lively, draft, layout, verifier=verifier)
    generator.eos = set(NO_EOS)
    return generator, generator.generate(PROMPT, max_new_tokens)


def _plain(lively, max_new_tokens, prompt=PROMPT):
    return plain_generate(lively, prompt, max_new_tokens, eos_token_ids=NO_EOS).tokens


# -- names, settings, checks ---------------------------------------------------------------------
def test_lossy_rules_resolve_by_name_and_describe_their_settings():
    greedy = SamplingConfig()
    topk, kl = resolve_verifier("topk", greedy), resolve_verifier("kl", greedy)
    assert isinstance(topk, TopKVerifier) and isinstance(kl, KLVerifier)
    assert topk.describe() == {"verifier": "topk", "lossless": False, "k": 2}
    assert kl.describe() == {"verifier": "kl", "lossless": False, "threshold": 0.5}
    assert kl.needs_draft_distributions and not topk.needs_draft_distributions and not GreedyVerifier.needs_draft_distributions
    assert GreedyVerifier().describe() == {"verifier": "greedy", "lossless": True}
    assert TypicalVerifier().describe() == {"verifier": "typical", "lossless": False, "epsilon": 0.09, "delta": 0.3}
    judge = _judge(threshold=0.25)
    assert JudgeVerifier(judge, 0.3).describe() == {"verifier": "judge", "threshold": 0.3, "lossless": False}
    assert JudgeVerifier(judge).threshold == 0.25  # the judge's own serving default
    with pytest.raises(ValueError, match=r"^verifier=judge needs judge=DIR \(a folder written by specdec-train recipe=judge\)$"):
        resolve_verifier("judge", greedy)
    for verifier in (JudgeVerifier(judge), TopKVerifier(), KLVerifier()):
        with pytest.raises(ValueError, match=f"verifier={verifier.name} decodes at temperature 0 \\(got temperature=0.7\\)"):
            resolve_verifier(verifier, SamplingConfig(temperature=0.7))
    with pytest.raises(ValueError, match="verifier=topk needs k >= 1"):
        TopKVerifier(0)


# -- judge on a hand-made block ------------------------------------------------------------------
JUDGE_TREE = DraftTree.from_paths([(0,), (1,), (1, 0), (1, 1), (1, 1, 0), (1, 1, 1)])
"""Nodes 1 = (0,), 2 = (1,), 3 = (1, 0), 4 = (1, 1), 5 = (1, 1, 0), 6 = (1, 1, 1)."""
IMPORTANT, UNIMPORTANT = [4.0, 0.0], [-4.0, 0.0]
"""Hidden states the hand-made judge (p = sigmoid(x[0])) scores 0.982 and 0.018."""


def _judge_block(tokens_as_tensor: bool) -> VerifyBlock:
    """Root: argmax 9 matches neither child; node 1 is important, node 2 not. Node 2: argmax 4 is
    node 4's token (node 3 mismatches but is unimportant). Node 4: argmax 8, both children important."""
    tokens = [0, 1, 2, 3, 4, 5, 6]
    argmax = {0: 9, 1: 7, 2: 4, 3: 0, 4: 8, 5: 0, 6: 0}
    logits = torch.zeros(7, 10)
    for node, token in argmax.items():
        logits[node, token] = 5.0
    hidden = torch.tensor([IMPORTANT, IMPORTANT, UNIMPORTANT, UNIMPORTANT, IMPORTANT, IMPORTANT, IMPORTANT])
    return VerifyBlock(JUDGE_TREE, torch.tensor(tokens) if tokens_as_tensor else tokens, logits, hidden)


def _hand_judge() -> JudgeHead:
    judge = JudgeHead(JudgeConfig(feature_size=2))
    with torch.no_grad():
        judge.layers[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        judge.layers[0].bias.zero_()
    return judge


@pytest.mark.parametrize("tokens_as_tensor", [False, True])
def test_judge_accepts_an_unimportant_mismatch_and_stops_where_both_reject(tokens_as_tensor):
    block = _judge_block(tokens_as_tensor)
    verifier = JudgeVerifier(_hand_judge(), threshold=0.5)
    # The judge lets node 2 through at the root, the exact match wins at node 2 (over the unimportant
    # node 3), and node 4's children are both mismatching and important: the bonus is node 4's argmax.
    assert verifier.verify(block, None) == ([0, 2, 4], 8, [0, 1, 2, 3, 4, 5, 6])
    assert (verifier.exact_accepted, verifier.lossy_accepted) == (1, 1)
    verifier.reset_counts()
    assert (verifier.exact_accepted, verifier.lossy_accepted) == (0, 0)
    # Threshold 0: nothing is unimportant enough, as greedy verification; 0.99: node 1 (p 0.982) is the first child kept.
    assert JudgeVerifier(_hand_judge(), threshold=0.0).verify(block, None)[:2] == GreedyVerifier().verify(block, None)[:2] == ([0], 9)
    assert JudgeVerifier(_hand_judge(), threshold=0.99).verify(block, None)[:2] == ([0, 1], 7)


# -- topk ----------------------------------------------------------------------------------------
def _random_block(rng: random.Random, vocab=12) -> VerifyBlock:
    """A random tree whose node tokens are the parent's argmax about half the time."""
    paths = {(rng.randrange(3),)}
    for _ in range(rng.randrange(1, 12)):
        parent = rng.choice(sorted(paths))
        paths.add(parent + (rng.randrange(3),))
    tree = DraftTree.from_paths(paths)
    logits = torch.randn(tree.size + 1, vocab, generator=torch.Generator().manual_seed(rng.randrange(10**6)))
    argmax = logits.argmax(-1).tolist()
    tokens = [rng.randrange(vocab)] + [argmax[tree.parents[n]] if rng.random() < 0.5 else rng.randrange(vocab) for n in range(1, tree.size + 1)]
    return VerifyBlock(tree, torch.tensor(tokens), logits, torch.zeros(tree.size + 1, 4))


def test_topk_with_k_1_is_greedy_verification_on_random_blocks():
    rng, lengths = random.Random(0), []
    for _ in range(200):
        block = _random_block(rng)
        verifier = TopKVerifier(k=1)
        result = verifier.verify(block, None)
        assert result == GreedyVerifier().verify(block, None)
        assert verifier.lossy_accepted == 0 and verifier.exact_accepted == len(result[0]) - 1
        lengths.append(len(result[0]) - 1)
    assert max(lengths) >= 3  # the random blocks do accept paths, not only the root


def test_topk_prefers_the_argmax_child_then_the_first_in_the_top_k():
    tree = DraftTree.from_paths([(0,), (1,), (2,)])
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 9.0, 0.0], [0.0, 9.0, 0.0, 0.0, 0.0]])
    # Children carry the root's 3rd, 2nd and 4th best tokens: k=2 takes node 2 (the only one in the top 2), k=3 node 1 (first in rank order).
    block = VerifyBlock(tree, [0, 2, 1, 3], logits, torch.zeros(4, 1))
    assert TopKVerifier(k=2).verify(block, None)[:2] == ([0, 2], 3)
    assert TopKVerifier(k=3).verify(block, None)[:2] == ([0, 1], 4)
    assert TopKVerifier(k=1).verify(block, None)[:2] == ([0], 0)
    # With the argmax among the children it wins over an earlier top-k child.
    block = VerifyBlock(tree, [0, 1, 2, 0], logits, torch.zeros(4, 1))
    verifier = TopKVerifier(k=3)
    assert verifier.verify(block, None)[:2] == ([0, 3], 1) and (verifier.exact_accepted, verifier.lossy_accepted) == (1, 0)


# -- kl ------------------------------------------------------------------------------------------
def test_kl_accepts_the_first_child_when_the_draft_agrees_with_the_target():
    tree = DraftTree.from_paths([(0,), (1,)])
    logits = torch.tensor([[3.0, 2.5, 0.0, -2.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    p = torch.softmax(logits[0], -1)
    block = lambda tokens, q: VerifyBlock(tree, tokens, logits, torch.zeros(3, 1), draft_dists=torch.stack([q, torch.zeros(4), torch.zeros(4)]))
    # q == p at the root: KL 0, the first child (a mismatch: the root's argmax is 0) is kept.
    verifier = KLVerifier(threshold=0.5)
    assert verifier.verify(block([0, 1, 2], p), None)[:2] == ([0, 1], 1)
    assert (verifier.exact_accepted, verifier.lossy_accepted) == (0, 1)
    # A draft sure of the target's least likely token: KL about 5 > 0.5, rejected (accepted at a threshold above it).
    sure = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert KLVerifier(0.5).verify(block([0, 1, 2], sure), None)[:2] == ([0], 0)
    assert KLVerifier(6.0).verify(block([0, 1, 2], sure), None)[:2] == ([0, 1], 1)
    # A zero row is no distribution: rejected at any threshold; an exact match needs no distribution.
    assert KLVerifier(1e9).verify(block([0, 1, 2], torch.zeros(4)), None)[:2] == ([0], 0)
    assert KLVerifier(1e9).verify(block([0, 2, 0], torch.zeros(4)), None)[:2] == ([0, 2], 2)


def test_kl_with_a_proposer_without_distributions_is_a_clear_error(lively, drafts):
    generator = SpeculativeGenerator.from_draft(lively, drafts["chimera"], verifier="kl")
    assert len(generator.generate(PROMPT, 4).tokens) == 4, "Chimera reports its heads' distributions"

    class NoDistributions(Proposer):
        name = "no_dists"

        def __init__(self, inner):
            self.inner, self.feature_layers = inner, inner.feature_layers

        def reset(self, prompt_ids):
            self.inner.reset(prompt_ids)

        def propose(self, committed):
            proposal = self.inner.propose(committed)
            proposal.draft_dists = None
            return proposal

        def observe(self, outcome):
            self.inner.observe(outcome)

    generator.proposer = NoDistributions(generator.proposer)
    with pytest.raises(ValueError, match="verifier=kl needs draft distributions, which the no_dists proposer does not report; use verifier=judge or topk"):
        generator.generate(PROMPT, 4)


# -- through the generator -----------------------------------------------------------------------
SETUPS = [
    ("medusa", None),
    ("medusa", MEDUSA_TREE),
    ("eagle1", EagleOptions(depth=4)),
    ("eagle1", EagleOptions(depth=4, top_k=3, total_tokens=10)),
    ("eagle3", EagleOptions(depth=3)),
    ("eagle3", EagleOptions(depth=4, top_k=3, total_tokens=12)),
]
IDS = ["medusa-chain", "medusa-tree", "eagle1-chain", "eagle1-tree", "eagle3-chain", "eagle3-tree"]


@pytest.mark.parametrize("kind,layout", [SETUPS[1], SETUPS[3]], ids=[IDS[1], IDS[3]])
def test_judge_at_threshold_0_is_plain_greedy_decoding_and_labelled_lossy(lively, fitted, kind, layout):
    verifier = JudgeVerifier(_judge(), threshold=0.0)
    _, result = _generate(lively, fitted[kind], layout, verifier, 30)
    assert result.tokens == _plain(lively, 30)
    assert result.verifier == "judge" and result.lossless is False
    assert verifier.lossy_accepted == 0 and verifier.exact_accepted == sum(result.accepted_lengths) > 0
    # The same judge at its threshold 0.5 does let mismatches through, and the output leaves plain greedy's.
    verifier = JudgeVerifier(_judge())
    _, result = _generate(lively, fitted[kind], layout, verifier, 30)
    assert verifier.lossy_accepted > 0 and verifier.exact_accepted + verifier.lossy_accepted == sum(result.accepted_lengths)
    assert result.tokens != _plain(lively, 30)


@pytest.mark.parametrize("kind,layout,depth", [("medusa", None, 3), ("eagle1", EagleOptions(depth=4), 4)], ids=["medusa", "eagle1"])
def test_rules_that_accept_everything_commit_the_whole_chain(lively, drafts, kind, layout, depth):
    steps = 5
    for verifier in (JudgeVerifier(_judge(), threshold=1.5), KLVerifier(threshold=1e9)):
        _, result = _generate(lively, drafts[kind], layout, verifier, 1 + steps * (depth + 1))
        assert result.accepted_lengths == [depth] * steps and result.target_forwards == 1 + steps
        assert result.mean_accepted_tokens == len(result.tokens) / (1 + steps) and len(result.tokens) == 1 + steps * (depth + 1)
        assert verifier.lossy_accepted > 0 and verifier.exact_accepted + verifier.lossy_accepted == steps * depth


class RecordingKL(KLVerifier):
    """KL verification that keeps every block it was handed."""

    def __init__(self, threshold):
        super().__init__(threshold)
        self.blocks: list[VerifyBlock] = []

    def verify(self, block, generator):
        self.blocks.append(block)
        return super().verify(block, generator)


def _check_rows(block: VerifyBlock, kind: str, draft, layout) -> None:
    """Every node with children has a distribution over the target vocabulary its children were
    drawn from; nodes at the last drafted depth have none (a zero row)."""
    tree, dists, tokens = block.tree, block.draft_dists, block.tokens.tolist()
    assert dists.shape == (tree.size + 1, VOCAB)
    for node, children in enumerate(tree.children):
        row = dists[node]
        if tree.depths[node] == (tree.depth if layout is None or kind == "medusa" else layout.depth):
            assert not row.any()
        if not children:
            continue
        torch.testing.assert_close(row.sum(), torch.tensor(1.0))
        order = row.argsort(descending=True).tolist()
        child_tokens = [tokens[c] for c in children]
        if kind == "medusa":  # the child of rank r is the r-th candidate of the parent's head
            assert child_tokens == [order[tree.ranks[c]] for c in children]
        else:  # EAGLE keeps children among the top_k of their parent, best first
            assert all(t in order[: layout.top_k] for t in child_tokens) and child_tokens == sorted(child_tokens, key=lambda t: -row[t])
        if kind == "eagle3":  # the drafter's 96-token vocabulary only
            assert set(row.nonzero().flatten().tolist()) <= set(draft.draft_ids().tolist())


@pytest.mark.parametrize("kind,layout", SETUPS, ids=IDS)
def test_kl_at_threshold_0_is_plain_greedy_and_the_distributions_match_the_drafts(lively, drafts, fitted, kind, layout):
    draft = fitted.get(kind, drafts[kind])  # fitted drafts get paths accepted, so later steps start past them
    verifier = RecordingKL(threshold=0.0)
    generator, result = _generate(lively, draft, layout, verifier, 24)
    assert result.tokens == _plain(lively, 24) and result.lossless is False
    assert generator.proposer.keep_distributions and verifier.lossy_accepted == 0 and len(verifier.blocks) > 3
    assert (verifier.exact_accepted > 0) == (kind in fitted)
    for block in verifier.blocks:
        _check_rows(block, kind, draft, layout)
    # Greedy verification does not ask the proposer for distributions.
    generator.verifier = "greedy"
    generator.generate(PROMPT, 2)
    assert not generator.proposer.keep_distributions
