"""The prompt-lookup branch (runtime/lookup_branch.py): merging a lookup chain into hand-made trees,
greedy decoding with the branch equals plain greedy for every learned draft type on a copy-heavy
prompt (and the lookup tokens are accepted), the drafters' caches stay right after a lookup-only
path, the refusals, and the option through the CLIs and the benchmark."""

from types import SimpleNamespace

import pytest
import torch

from conftest import build_tiny_llama, enliven, randomise
from specdec.eval.benchmark import evaluate
from specdec.eval.cli import main as eval_main
from specdec.models.base import target_states
from specdec.models.chimera import ChimeraConfig, ChimeraDrafter
from specdec.models.cli_args import UsageError, parse_options
from specdec.models.decoder import LayerShape
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime.cli import OPTIONS as GENERATE_OPTIONS
from specdec.runtime.eagle_proposer import EagleOptions
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.lookup import ReferenceLookupProposer, find_continuation
from specdec.runtime.lookup_branch import LOOKUP_NODE, LookupBranchProposer, check_lookup_branch, learned_scores, lookup_confidence, merge_lookup
from specdec.runtime.options import check_lookup_branch as check_options
from specdec.runtime.proposers import Committed, ExtraTokens, Outcome, Proposal, Proposer, proposer_class
from specdec.runtime.sdsat_proposer import SdsatProposer
from specdec.runtime.tree import DraftTree

VOCAB, HIDDEN = 320, 64
NO_EOS = [10**9]
SMALL_TREE = DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
SMALL_TOKENS = [10, 20, 11, 12, 21, 13]  # (0,)=10 (1,)=20 (0,0)=11 (0,1)=12 (1,0)=21 (0,0,0)=13


# -- merging ------------------------------------------------------------------------------------
def test_learned_scores_are_cumulative_along_the_path():
    assert learned_scores(SMALL_TREE, None) == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 6, 1 / 8])
    clamped = learned_scores(DraftTree.chain(3), [0.5, 2.0, -1.0])
    assert clamped == pytest.approx([1, 0.5, 0.5, 0.0])
    assert lookup_confidence(1) == 0.5 and lookup_confidence(3) == 0.75


def test_merge_shares_the_agreeing_prefix_adds_nodes_and_drops_the_lowest_leaves():
    scores = learned_scores(SMALL_TREE, None)
    merged = merge_lookup(SMALL_TREE, SMALL_TOKENS, scores, [10, 12, 30, 31], 0.75)
    # 10 and 12 run along (0,) and (0,1); 30, 31 are new. 8 nodes > 6: (0,0,0) (1/8), then (1,0) (1/6) go.
    assert merged.tree.size == SMALL_TREE.size
    assert merged.tree.paths == ((0,), (1,), (0, 0), (0, 1), (0, 1, 0), (0, 1, 0, 0))
    assert merged.tokens == [10, 20, 11, 12, 30, 31]
    assert merged.inner == (0, 1, 2, 3, 4, LOOKUP_NODE, LOOKUP_NODE)
    # (1,) lost its only child; (0,1)'s first child is now the lookup's.
    assert merged.first_child_inner == (True, True, True, True, False, False, True)


def test_merge_within_a_small_budget_keeps_a_tree_and_the_best_scores():
    # A 2-node chain of weak learned nodes against a 3-gram lookup: the lookup's first two tokens win.
    merged = merge_lookup(DraftTree.chain(2), [5, 6], learned_scores(DraftTree.chain(2), [0.3, 0.3]), [7, 8, 9], 0.75)
    assert merged.tokens == [7, 8] and merged.tree.paths == ((0,), (0, 0))
    # Confident learned nodes keep the budget; the lookup chain gets nothing.
    merged = merge_lookup(DraftTree.chain(2), [5, 6], learned_scores(DraftTree.chain(2), [1.0, 1.0]), [7, 8, 9], 0.75)
    assert merged.tokens == [5, 6] and merged.inner == (0, 1, 2)
    # A parent is never dropped before its kept children: every path's prefix is in the tree.
    merged = merge_lookup(SMALL_TREE, SMALL_TOKENS, learned_scores(SMALL_TREE, None), [40, 41, 42, 43, 44, 45, 46], 0.9)
    assert all(p[:-1] in merged.tree.paths for p in merged.tree.paths if len(p) > 1) and merged.tree.size == 6


def test_merge_keeps_siblings_distinct_and_pins_nodes_that_carry_extra_tokens():
    scores = learned_scores(SMALL_TREE, None)
    merged = merge_lookup(SMALL_TREE, SMALL_TOKENS, scores, [20, 21, 50, 51, 52], 0.75, pinned=(6,))
    assert 6 in merged.inner and 5 in merged.inner  # (0,0,0) carries extras; (1,0) is on the lookup chain
    for node, kids in enumerate(merged.tree.children):
        assert len({merged.tokens[c - 1] for c in kids}) == len(kids), f"node {node} has two children with one token"
    assert merged.tree.size == 6


# -- the wrapper on a hand-made inner proposal -------------------------------------------------
class FixedProposer(Proposer):
    """Proposes SMALL_TREE with confidences, draft distributions and extra tokens; records what it observes."""

    name = "fixed"

    def __init__(self, draft_probs=False):
        self.observed, self.draft_probs = [], draft_probs

    def propose(self, committed):
        dists = torch.arange(7 * 4, dtype=torch.float32).reshape(7, 4)
        probs = torch.ones(7, 4) / 4 if self.draft_probs else None
        extra = ExtraTokens([99, 98], (6, 0))
        return Proposal(SMALL_TREE, torch.tensor(SMALL_TOKENS), probs, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), extra, dists, target_forwards=0)

    def observe(self, outcome):
        self.observed.append(outcome)


def test_the_wrapper_reindexes_everything_the_proposal_carries_and_translates_the_outcome():
    inner = FixedProposer()
    wrapper = LookupBranchProposer(inner, tokens=3, ngram=2)
    wrapper.reset(torch.tensor([[1, 2, 10, 30, 31, 5]]))
    # The sequence ends in ..., 5, 1, 2: the 2-gram (1, 2) occurred at the start, followed by 10, 30, 31.
    proposal = wrapper.propose(Committed(torch.zeros(7, 4), torch.zeros(7, 4), torch.tensor([2, 10, 30, 31, 5, 1, 2])))
    # Learned scores .9, .8, .63, .54, .4, .252 (the last pinned: it carries an extra token); lookup 2/3, 4/9, 8/27
    # along 10 (shared) -> 30 -> 31. Two of 8 nodes go: 31 (.296), then (1,0) (.4).
    assert proposal.tree.paths == ((0,), (1,), (0, 0), (0, 1), (0, 2), (0, 0, 0)) and proposal.tokens.tolist() == [10, 20, 11, 12, 30, 13]
    assert wrapper.lookup_steps == 1
    assert proposal.confidences.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 2 / 3, 0.4])
    # Rows: each inner node's own (in its new place); the lookup-only node has none (a zero row).
    rows = torch.arange(7 * 4, dtype=torch.float32).reshape(7, 4)
    assert torch.equal(proposal.draft_dists, torch.stack([rows[0], rows[1], rows[2], rows[3], rows[4], torch.zeros(4), rows[6]]))
    assert proposal.extra.tokens == [99, 98] and proposal.extra.nodes == (6, 0)
    # A path ending on the lookup-only node: the inner proposer sees its own path up to (0,) and the lookup token as the bonus.
    wrapper.observe(Outcome([0, 1, 5], 77, torch.zeros(2, 4), torch.zeros(2, 4)))
    assert inner.observed[-1].path == [0, 1] and inner.observed[-1].bonus == 30
    assert wrapper.accepted_lookup_tokens == 1


def test_extra_tokens_follow_their_node_into_the_merged_tree():
    inner = FixedProposer()
    wrapper = LookupBranchProposer(inner, tokens=5, ngram=2)
    wrapper.reset(torch.tensor([[1, 2, 40, 41, 42, 43, 44, 5]]))
    proposal = wrapper.propose(Committed(torch.zeros(9, 4), torch.zeros(9, 4), torch.tensor([2, 40, 41, 42, 43, 44, 5, 1, 2])))
    # Inner node 6 (path (0,0,0)) carries token 99: it stays, at the merged index of its path.
    merged_node = proposal.extra.nodes[0]
    assert proposal.tree.paths[merged_node - 1] == (0, 0, 0) and proposal.tokens[merged_node - 1] == 13
    assert proposal.extra.nodes[1] == 0 and 40 in proposal.tokens.tolist()
    # A path inside the inner tree goes to the inner proposer unchanged (indices mapped back), with the real bonus.
    node_00 = proposal.tree.paths.index((0, 0)) + 1
    wrapper.observe(Outcome([0, 1, node_00], 77, torch.zeros(2, 4), torch.zeros(2, 4)))
    assert inner.observed[-1].path == [0, 1, 3] and inner.observed[-1].bonus == 77 and wrapper.accepted_lookup_tokens == 0


def test_without_a_match_the_inner_proposal_goes_out_unchanged():
    inner = FixedProposer()
    wrapper = LookupBranchProposer(inner, tokens=3)
    wrapper.reset(torch.tensor([[1, 2, 3]]))
    proposal = wrapper.propose(Committed(torch.zeros(3, 4), torch.zeros(3, 4), torch.tensor([2, 3, 4])))
    assert proposal.tree is SMALL_TREE and wrapper.lookup_steps == 0
    wrapper.observe(Outcome([0, 2], 5, torch.zeros(2, 4), torch.zeros(2, 4)))
    assert inner.observed[-1].path == [0, 2]


def test_reference_lookup_and_the_branch_share_one_matcher():
    sequence = [1, 2, 3, 9, 1, 2, 3, 8, 1, 2, 3]
    assert find_continuation(sequence, 2, 3) == ([8, 1], 3)
    assert find_continuation(sequence, 2, 3, [7, 1, 2, 3, 6, 5]) == ([6, 5], 3)
    assert find_continuation([4, 5, 6], 2, 3) == ([], 0)
    assert ReferenceLookupProposer([7, 1, 2, 3, 6, 5], k=2).lookup(sequence) == [6, 5]


# -- refusals ------------------------------------------------------------------------------------
def test_sampled_candidates_sdsat_and_bad_sizes_are_refused_naming_the_option():
    wrapper = LookupBranchProposer(FixedProposer(draft_probs=True), tokens=3, ngram=2)
    wrapper.reset(torch.tensor([[1, 2, 10, 5]]))
    with pytest.raises(ValueError, match="lookup_branch=3 cannot join"):
        wrapper.propose(Committed(torch.zeros(5, 4), torch.zeros(5, 4), torch.tensor([2, 10, 5, 1, 2])))
    with pytest.raises(ValueError, match="lookup_branch=4 does not apply to SDSAT"):
        check_lookup_branch(SdsatProposer, 4, 3)
    with pytest.raises(ValueError, match="lookup_ngram >= 1"):
        check_lookup_branch(proposer_class("medusa"), 4, 0)
    with pytest.raises(UsageError, match="SDSAT"):
        check_options(SimpleNamespace(draft_type="sdsat"), {"lookup_branch": 4, "lookup_ngram": 3})
    check_options(SimpleNamespace(draft_type="sdsat"), {"lookup_branch": 0, "lookup_ngram": 3})


# -- lossless decoding on a copy-heavy prompt ---------------------------------------------------
@pytest.fixture(scope="module")
def copier():
    """A tiny target whose attention outputs are zeroed: its next token depends on the last token only,
    so a prompt holding its own continuation is copied from (and the lookup is right)."""
    model = enliven(build_tiny_llama(VOCAB, hidden_size=HIDDEN, layers=3), seed=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    return model


def copy_prompt(model, seed: int) -> torch.Tensor:
    """[1, T]: random tokens, the target's own 24-token continuation of a token a, random tokens, then a again."""
    rng = torch.Generator().manual_seed(seed)
    start = int(torch.randint(3, VOCAB, (1,), generator=rng))
    chain = plain_generate(model, torch.tensor([[start]]), 24, eos_token_ids=NO_EOS).tokens
    noise = torch.randint(3, VOCAB, (2, 5), generator=rng)
    return torch.cat([noise[0], torch.tensor([start, *chain]), noise[1], torch.tensor([start])])[None]


def drafts(model) -> dict:
    shape = LayerShape.from_target_config(model.config)
    e3 = Eagle3Drafter(Eagle3Config(HIDDEN, VOCAB, 96, [1, 2, 3], layer=shape))
    e3.set_vocab(torch.arange(0, VOCAB, 3)[:96], model.lm_head.weight)
    return {
        "medusa": randomise(MedusaHeads(MedusaConfig(hidden_size=HIDDEN, vocab_size=VOCAB, num_heads=3)), 0, 0.05),
        "eagle1": randomise(Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, layer=shape)), 0, 0.2),
        "eagle3": randomise(e3, 1, 0.3),
        "chimera": randomise(ChimeraDrafter(ChimeraConfig(HIDDEN, VOCAB, num_heads=3, layer=shape)), 2, 0.2),
    }


SETUPS = [
    ("medusa", DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)])),
    ("eagle1", EagleOptions(depth=4)),
    ("eagle1", EagleOptions(depth=4, top_k=3, total_tokens=10)),
    ("eagle3", EagleOptions(depth=3)),
    ("eagle3", EagleOptions(depth=4, top_k=3, total_tokens=8)),
    ("chimera", DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)])),
]
IDS = ["medusa-tree", "eagle1-chain", "eagle1-tree", "eagle3-chain", "eagle3-tree", "chimera-tree"]


class Recording(Proposer):
    """Passes everything to a proposer and keeps each step's sequence (root last) and inner proposal tokens."""

    def __init__(self, inner):
        self.inner, self.name, self.feature_layers, self.steps = inner, inner.name, inner.feature_layers, []
        self.sequence = []

    def reset(self, prompt_ids):
        self.sequence = prompt_ids.reshape(-1)[:1].tolist()
        self.inner.reset(prompt_ids)

    def propose(self, committed):
        self.sequence += committed.tokens.tolist()
        proposal = self.inner.propose(committed)
        self.steps.append((list(self.sequence), torch.as_tensor(proposal.tokens).tolist()))
        return proposal

    def observe(self, outcome):
        self.inner.observe(outcome)


@pytest.mark.parametrize("kind,layout", SETUPS, ids=IDS)
def test_greedy_with_the_lookup_branch_equals_plain_greedy_and_copies(copier, kind, layout):
    generator = SpeculativeGenerator.from_draft(copier, drafts(copier)[kind], layout, lookup_branch=6, lookup_ngram=3)
    generator.eos = set(NO_EOS)
    assert isinstance(generator.proposer, LookupBranchProposer)
    budget = generator.proposer.inner.describe()["tree_size"]
    for seed in (0, 1):
        prompt = copy_prompt(copier, seed)
        for max_new in (1, 30):
            result = generator.generate(prompt, max_new)
            assert result.tokens == plain_generate(copier, prompt, max_new, eos_token_ids=NO_EOS).tokens
    assert generator.proposer.accepted_lookup_tokens > 10, "the lookup branch was hardly accepted: the copy-heavy prompt did not exercise it"
    assert result.mean_accepted_tokens > 2.0
    assert generator.proposer.describe()["tree_size"] == budget and generator.proposer.describe()["lookup_branch"] == 6


@pytest.mark.parametrize("kind,layout", [SETUPS[2], SETUPS[4], SETUPS[5]], ids=["eagle1-tree", "eagle3-tree", "chimera-tree"])
def test_drafter_caches_stay_right_after_lookup_only_paths(copier, kind, layout):
    """Every step's inner draft equals a fresh drafter's draft over the whole sequence so far, although
    earlier steps committed nodes only the lookup proposed."""
    draft = drafts(copier)[kind]
    built = proposer_class(draft.draft_type).build(copier, draft, layout)
    recording = Recording(built)
    generator = SpeculativeGenerator(copier, LookupBranchProposer(recording, 6), eos_token_ids=NO_EOS)
    prompt = copy_prompt(copier, 0)
    generator.generate(prompt, 24)
    assert generator.proposer.accepted_lookup_tokens > 5
    for sequence, tokens in recording.steps[1::3]:
        fresh = proposer_class(draft.draft_type).build(copier, draft, layout)
        ids = torch.tensor([sequence])
        fresh.reset(ids[:, :1])
        hidden, features = target_states(copier, ids[:, :-1], fresh.feature_layers)
        expected = fresh.propose(Committed(hidden[0], features[0], ids[0, 1:]))
        assert torch.as_tensor(expected.tokens).tolist() == tokens


# -- the option in the CLIs and the benchmark ---------------------------------------------------
def test_lookup_options_parse_with_their_ranges():
    options = parse_options(["draft=d", "prompt=p", "lookup_branch=5", "lookup_ngram=2"], GENERATE_OPTIONS)
    assert options["lookup_branch"] == 5 and options["lookup_ngram"] == 2
    assert parse_options(["draft=d"], GENERATE_OPTIONS)["lookup_branch"] == 0
    with pytest.raises(UsageError, match="lookup_branch"):
        parse_options(["lookup_branch=-1"], GENERATE_OPTIONS)
    with pytest.raises(UsageError, match="lookup_ngram"):
        parse_options(["lookup_ngram=0"], GENERATE_OPTIONS)


def test_eval_refuses_the_branch_in_a_sweep(tmp_path, capsys):
    assert eval_main([f"draft={tmp_path}", "lookup_branch=4", "training_free=topk:2"]) == 2
    assert "lookup_branch=4 is measured against the baselines" in capsys.readouterr().err


def test_the_benchmark_records_the_branch_and_its_accepted_tokens(tiny_llama, tiny_tokenizer):
    heads = randomise(MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=len(tiny_tokenizer), num_heads=2)), 0, 0.05)
    question = {"question_id": 1, "category": "copy", "turns": ["Hello hello hello hello hello hello"]}
    result = evaluate(tiny_llama, tiny_tokenizer, heads, [question], max_new_tokens=16, lookup_branch=4, lookup_ngram=2, baselines=False, progress=False, warmup=False)
    assert result["setting"]["lookup_branch"] == 4 and result["setting"]["lookup_ngram"] == 2 and result["setting"]["proposer"] == "medusa"
    assert result["lossless_failures"] == [] and result["overall"]["lossless_match"] == 1.0
    record = result["questions"][0]
    assert record["accepted_lookup_tokens"] == result["overall"]["accepted_lookup_tokens"] >= 0
    assert "accepted_lookup_tokens" not in evaluate(tiny_llama, tiny_tokenizer, heads, [question], max_new_tokens=4, baselines=False, progress=False, warmup=False)["overall"]
