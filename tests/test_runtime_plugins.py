"""Runtime plug-ins: the proposer and verifier registries, and the decode-step hooks.

Each hook is exercised by a small proposer registered from this module for a draft type of its
own: extra query tokens whose target states read back equal a from-scratch forward, per-node
confidences that reach the verifier, and a different tree every step; greedy output stays plain greedy."""

import json
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from conftest import build_tiny_llama, enliven
from specdec.models.base import DraftModel, target_states
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime.eagle_proposer import EagleOptions
from specdec.runtime.generator import SpeculativeGenerator, choose_layout, plain_generate
from specdec.runtime.proposers import ExtraTokens, Proposal, Proposer, register_proposer
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import VERIFIERS, GreedyVerifier, SamplingConfig, TypicalOptions, TypicalVerifier, VerifyBlock, register_verifier, resolve_verifier

VOCAB, HIDDEN = 320, 64
NO_EOS = [10**9]
BRANCHY = DraftTree.from_paths([(0,), (1,), (1, 0), (1, 0, 0)])
"""Nodes 1 = (0,), 2 = (1,), 3 = (1, 0), 4 = (1, 0, 0): the probes put the right tokens on 2-3-4, so the accepted path is not a block prefix."""


@pytest.fixture(scope="module")
def lively():
    return enliven(build_tiny_llama(VOCAB, hidden_size=HIDDEN), seed=1)


@dataclass
class ProbeConfig:
    hidden_size: int = HIDDEN
    vocab_size: int = VOCAB


class ProbeDraft(DraftModel):
    """A weightless draft that carries the plain greedy continuation its probe proposer drafts from."""

    config_class = ProbeConfig

    def __init__(self, draft_type: str, reference: list[int], prompt_len: int):
        super().__init__(ProbeConfig())
        self.draft_type, self.reference, self.prompt_len = draft_type, reference, prompt_len


class OracleProbe(Proposer):
    """Drafts from the known continuation: at each depth one rank holds the right token."""

    name = "probe"
    options_class = DraftTree

    def __init__(self, draft: ProbeDraft, tree: DraftTree):
        self.reference, self.prompt_len, self.tree = draft.reference, draft.prompt_len, tree
        self.steps: list[dict] = []

    @classmethod
    def layout(cls, draft, kind="default", size=None, depth=5, top_k=4):
        return BRANCHY

    @classmethod
    def build(cls, target, draft, options):
        return cls(draft, options)

    def reset(self, prompt_ids):
        self.sequence = prompt_ids[0, :1].tolist()

    def propose(self, committed):
        self.sequence += committed.tokens.tolist()  # the whole sequence, root last
        tree = self.next_tree()
        right = {d: self.right_rank(tree, d) for d in range(1, tree.depth + 1)}
        done = len(self.sequence) - self.prompt_len
        tokens = []
        for path in tree.paths:
            want = self.reference[done + len(path) - 1]
            tokens.append(want if path[-1] == right[len(path)] else (want + 1 + path[-1]) % VOCAB)
        self.steps.append({"sequence": list(self.sequence), "tree": tree, "tokens": tokens})
        return Proposal(tree, tokens)

    def next_tree(self) -> DraftTree:
        return self.tree

    def right_rank(self, tree: DraftTree, depth: int) -> int:
        return 1 if depth == 1 else 0  # BRANCHY: the path 2-3-4


def _probe_draft(lively, draft_type, prompt, max_new_tokens):
    reference = plain_generate(lively, prompt, max_new_tokens + 8, eos_token_ids=NO_EOS).tokens
    return ProbeDraft(draft_type, reference, prompt.shape[1])


def _decode(lively, draft, prompt, max_new_tokens, **kwargs):
    generator = SpeculativeGenerator.from_draft(lively, draft, **kwargs)
    generator.eos = set(NO_EOS)
    return generator, generator.generate(prompt, max_new_tokens)


# -- (a) extra query tokens -------------------------------------------------------------------
EXTRA_NODES = (0, 3, 0, 1, 1)
"""Two extras under the root, one under node 3, two under node 1, interleaved."""


@register_proposer("probe_extras")
class ExtrasProbe(OracleProbe):
    """Appends EXTRA_NODES extra tokens (random ids) to every block and keeps their states."""

    rng = random.Random(0)

    def propose(self, committed):
        proposal = super().propose(committed)
        extra = [self.rng.randrange(3, VOCAB) for _ in EXTRA_NODES]
        self.steps[-1]["extra"] = extra
        return Proposal(proposal.tree, proposal.tokens, extra=ExtraTokens(extra, EXTRA_NODES))

    def observe(self, outcome):
        self.steps[-1] |= {"path": outcome.path, "extra_hidden": outcome.extra_hidden.clone()}


def _extra_context(step, i):
    """Tokens a from-scratch forward must see to reproduce extra token i: sequence, the node's path, its group so far."""
    tree, node = step["tree"], EXTRA_NODES[i]
    path, j = [], node
    while j > 0:
        path.insert(0, step["tokens"][j - 1])
        j = tree.parents[j]
    group = [t for t, n in zip(step["extra"][: i + 1], EXTRA_NODES[: i + 1]) if n == node]
    return step["sequence"] + path + group


def test_extra_tokens_states_equal_a_fresh_forward_and_are_never_committed(lively):
    prompt = torch.tensor([[5, 9, 33, 70, 12]])
    draft = _probe_draft(lively, "probe_extras", prompt, 24)
    generator, result = _decode(lively, draft, prompt, 24)
    # Step 1: lossless, with drafts accepted along a path that is not a prefix of the block.
    assert result.tokens == plain_generate(lively, prompt, 24, eos_token_ids=NO_EOS).tokens
    steps = generator.proposer.steps
    assert result.mean_accepted_tokens > 2 and [0, 2, 3, 4] in [s["path"] for s in steps]
    # Step 2: every extra token's state is the target's last state after prefix + its node's path + its group.
    for step in steps[:3]:
        assert step["extra_hidden"].shape == (len(EXTRA_NODES), HIDDEN)
        for i in range(len(EXTRA_NODES)):
            with torch.no_grad():
                fresh = target_states(lively, torch.tensor([_extra_context(step, i)]))[0][0, -1]
            torch.testing.assert_close(step["extra_hidden"][i], fresh, rtol=1e-4, atol=1e-4)


def test_block_layout_of_extra_tokens():
    tree = DraftTree.from_paths([(0,), (0, 0)])  # root r, a, b under a; extras x0, x1 under r, y under a
    nodes = (0, 1, 0)
    visible = tree.block_visibility(nodes).int().tolist()
    assert visible == [
        [1, 0, 0, 0, 0, 0],  # r
        [1, 1, 0, 0, 0, 0],  # a
        [1, 1, 1, 0, 0, 0],  # b
        [1, 0, 0, 1, 0, 0],  # x0: r, itself
        [1, 1, 0, 0, 1, 0],  # y: r, a, itself
        [1, 0, 0, 1, 0, 1],  # x1: r, x0, itself
    ]
    assert tree.position_ids(4, extra_nodes=nodes).tolist() == [[4, 5, 6, 5, 6, 6]]
    with pytest.raises(ValueError, match="nodes 0 \\(the root\\) to 2"):
        tree.block_visibility((3,))


# -- (b) per-node confidences ------------------------------------------------------------------
@register_proposer("probe_confidence")
class ConfidenceProbe(OracleProbe):
    """Attaches a distinct confidence to every node of every step."""

    def propose(self, committed):
        proposal = super().propose(committed)
        confidences = torch.arange(proposal.tree.size, dtype=torch.float32) / 10 + len(self.steps)
        self.steps[-1]["confidences"] = confidences
        return Proposal(proposal.tree, proposal.tokens, confidences=confidences)


@register_verifier
class RecordingGreedy(GreedyVerifier):
    """Greedy verification that keeps every block it was handed."""

    name = "test_recording_greedy"
    blocks: list[VerifyBlock] = []

    def verify(self, block, generator):
        RecordingGreedy.blocks.append(block)
        return super().verify(block, generator)


def test_confidences_and_the_targets_states_reach_the_verifier(lively):
    prompt = torch.tensor([[7, 8, 9, 10]])
    draft = _probe_draft(lively, "probe_confidence", prompt, 16)
    RecordingGreedy.blocks.clear()
    generator, result = _decode(lively, draft, prompt, 16, verifier="test_recording_greedy")
    assert result.tokens == plain_generate(lively, prompt, 16, eos_token_ids=NO_EOS).tokens
    assert result.verifier == "test_recording_greedy" and result.lossless
    blocks, steps = RecordingGreedy.blocks, generator.proposer.steps
    assert len(blocks) == len(steps) == len(result.accepted_lengths) > 1
    for block, step in zip(blocks, steps):
        assert torch.equal(block.confidences, step["confidences"])
        assert block.hidden.shape == (BRANCHY.size + 1, HIDDEN)
        torch.testing.assert_close(block.logits, block.hidden @ lively.lm_head.weight.T)
    # The root's state in the block is the target's state after the sequence so far.
    with torch.no_grad():
        fresh = target_states(lively, torch.tensor([steps[1]["sequence"]]))[0][0, -1]
    torch.testing.assert_close(blocks[1].hidden[0], fresh, rtol=1e-4, atol=1e-4)


# -- (c) a different tree every step -------------------------------------------------------------
LAYOUTS = [DraftTree.chain(1), BRANCHY, DraftTree.chain(2), DraftTree.from_paths([(r,) for r in range(3)] + [(r, 0) for r in range(3)])]


@register_proposer("probe_layouts")
class LayoutProbe(OracleProbe):
    """Cycles through LAYOUTS, one per step, with the right token at a rank that changes per step."""

    def next_tree(self):
        return LAYOUTS[len(self.steps) % len(LAYOUTS)]

    def right_rank(self, tree, depth):
        return len(self.steps) % tree.ranks_needed()[depth - 1]


def test_a_layout_per_step_stays_lossless_and_is_measured_at_every_depth(lively):
    prompt = torch.tensor([[3, 14, 15, 92, 65]])
    draft = _probe_draft(lively, "probe_layouts", prompt, 30)
    generator, result = _decode(lively, draft, prompt, 30)
    assert result.tokens == plain_generate(lively, prompt, 30, eos_token_ids=NO_EOS).tokens
    used = [s["tree"] for s in generator.proposer.steps]
    assert len(set(used)) == len(LAYOUTS) and result.mean_accepted_tokens > 1.5
    assert result.draft_depth == max(t.depth for t in used) == 3
    accepted = result.accepted_lengths
    assert result.acceptance_by_depth == [sum(a >= d for a in accepted) / len(accepted) for d in (1, 2, 3)]


# -- registries -----------------------------------------------------------------------------------
def test_importing_the_runtime_registers_every_method():
    code = "import json, specdec.runtime.proposers as p; print(json.dumps({t: c.name for t, c in sorted(p.PROPOSERS.items())}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"chimera": "chimera", "eagle1": "eagle", "eagle3": "eagle", "medusa": "medusa", "sdsat": "sdsat"}


def test_unknown_draft_types_and_foreign_layouts_are_clear_errors(lively):
    with pytest.raises(ValueError, match="no proposer for draft type 'nonesuch': registered are chimera, eagle1, eagle3, medusa.*@register_proposer\\('nonesuch'\\)"):
        SpeculativeGenerator.from_draft(lively, ProbeDraft("nonesuch", [], 1))
    heads = MedusaHeads(MedusaConfig(hidden_size=HIDDEN, vocab_size=VOCAB, num_heads=3))
    with pytest.raises(ValueError, match="a medusa draft is laid out by DraftTree, not EagleOptions: build the layout with choose_layout"):
        SpeculativeGenerator.from_draft(lively, heads, EagleOptions())
    with pytest.raises(ValueError, match="unknown tree 'wide': choose default or chain"):
        choose_layout(heads, "wide")
    assert choose_layout(heads, "chain") == DraftTree.chain(3)
    assert SpeculativeGenerator.from_draft(lively, heads).proposer.describe() == {"proposer": "medusa", "tree_size": 3, "tree_depth": 3, "tree_paths": [[0], [0, 0], [0, 0, 0]]}


def test_verifiers_by_name_with_their_lossless_flags():
    assert {name: VERIFIERS[name].lossless for name in ("greedy", "sampling", "typical")} == {"greedy": True, "sampling": True, "typical": False}
    assert resolve_verifier("auto", SamplingConfig()).name == "greedy"
    assert resolve_verifier("auto", SamplingConfig(temperature=0.7)).name == "sampling"
    with pytest.raises(ValueError, match="unknown verifier 'jugde': choose one of auto, greedy, sampling, typical, judge, topk, kl"):
        resolve_verifier("jugde", SamplingConfig())
    with pytest.raises(ValueError, match="verifier=greedy decodes at temperature 0 \\(got temperature=0.5\\)"):
        resolve_verifier("greedy", SamplingConfig(temperature=0.5))


def test_typical_thresholds_are_the_typical_verifiers_options():
    tree, cfg = DraftTree.chain(1), SamplingConfig(temperature=1.0)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # p(1) after the root is about 0.24
    block = VerifyBlock(tree, [5, 1], logits, torch.zeros(2, 1), cfg)
    assert TypicalVerifier().verify(block, None)[0] == [0, 1]  # 0.24 > min(0.09, 0.3 * exp(-H))
    assert TypicalVerifier(TypicalOptions(epsilon=0.5, delta=1.0)).verify(block, None)[0] == [0]  # 0.24 < min(0.5, exp(-H)) = 0.43


def test_generate_cli_takes_a_verifier_and_labels_a_lossy_one(tmp_path, tiny_target_dir, capsys):
    from specdec.runtime.cli import main

    heads = MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=VOCAB, num_heads=2))
    heads.save_pretrained(tmp_path / "draft", extra={"target": {"name_or_path": str(tiny_target_dir)}})
    assert main([f"draft={tmp_path / 'draft'}", "prompt=Hi", "max_new_tokens=4", "temperature=0.7", "verifier=typical"]) == 0
    assert '"verification": "typical (lossy)"' in capsys.readouterr().err
    assert main([f"draft={tmp_path / 'draft'}", "prompt=Hi", "verifier=jugde"]) == 2
    assert "verifier=jugde: must be one of auto, greedy, sampling, typical, judge, topk, kl" in capsys.readouterr().err
    assert main([f"draft={tmp_path / 'draft'}", "prompt=Hi", "verifier=judge"]) == 2
    assert "verifier=judge needs judge=DIR" in capsys.readouterr().err
    assert main([f"draft={tmp_path / 'draft'}", "prompt=Hi", "verifier=greedy", "temperature=0.5"]) == 2
    assert "specdec-generate: error: verifier=greedy decodes at temperature 0" in capsys.readouterr().err
