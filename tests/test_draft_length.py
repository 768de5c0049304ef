"""Learned draft length (issue 13): node features, the acceptance head's folder, pruning by path
acceptance, lossless decoding with it for every draft type, recording labels, and the options."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from specdec.eval.acceptance_data import record_proposals
from specdec.eval.benchmark import evaluate
from specdec.eval.cli import main as eval_main
from specdec.models.acceptance_data import load_records, save_records
from specdec.models.acceptance_head import FEATURES, AcceptanceHead, AcceptanceHeadConfig, load_acceptance_head, node_features
from specdec.models.base import DraftMismatchError
from specdec.models.cli_args import UsageError, parse_options
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime.cli import OPTIONS as GENERATE_OPTIONS
from specdec.runtime.draft_length import DraftLength, DraftLengthProposer, RecordingVerifier, check_draft_length, kept_nodes, path_scores
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.options import draft_length as draft_length_option
from specdec.runtime.proposers import Proposal, Proposer, proposer_class
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import resolve_verifier, SamplingConfig
from specdec.train.acceptance import AcceptanceSettings, fit_acceptance_head
from conftest import randomise
from test_lookup_branch import IDS, NO_EOS, SETUPS, copy_prompt, copier, drafts  # noqa: F401  (copier is a fixture)

TREE = DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])


def test_node_features_read_the_parent_distribution_and_accumulate_down_the_path():
    dists = torch.zeros(TREE.size + 1, 5)
    dists[0] = torch.tensor([0.5, 0.25, 0.25, 0.0, 0.0])
    dists[1] = torch.tensor([0.0, 0.0, 0.0, 0.8, 0.2])
    dists[3] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    tokens = torch.tensor([0, 1, 3, 4, 2, 0])
    features = node_features(TREE.parents, TREE.ranks, TREE.depths, tokens, dists)
    assert features.shape == (TREE.size, len(FEATURES))
    column = {name: features[:, i] for i, name in enumerate(FEATURES)}
    assert torch.allclose(column["log_draft_prob"][:4].exp(), torch.tensor([0.5, 0.25, 0.8, 0.2]))
    assert column["log_draft_prob"][4] < -20, "a token under a zero row gets the floor, not -inf"
    assert torch.allclose(column["path_log_prob"][5], column["log_draft_prob"][[0, 2, 5]].sum())
    assert column["depth"].tolist() == [1, 1, 2, 2, 2, 3] and column["rank"].tolist() == [0, 1, 0, 1, 0, 0]
    assert column["parent_top_prob"][2] == pytest.approx(0.8) and column["parent_entropy"][5] == pytest.approx(0.0, abs=1e-6)


def test_kept_nodes_follow_the_threshold_keep_ancestors_and_honour_the_minimum():
    scores = path_scores(TREE, [0.9, 0.3, 0.8, 0.1, 0.9, 0.5])
    assert scores[6] == pytest.approx(0.9 * 0.8 * 0.5)
    assert kept_nodes(TREE, scores, 0.5, 1) == {0, 1, 3}
    assert kept_nodes(TREE, scores, 0.99, 1) == {0, 1}
    assert kept_nodes(TREE, scores, 0.99, 3) == {0, 1, 3, 6}
    assert kept_nodes(TREE, scores, 0.0, 1) == set(range(TREE.size + 1))
    for threshold in (0.05, 0.2, 0.3, 0.6):
        kept = kept_nodes(TREE, scores, threshold, 2)
        assert all(TREE.parents[n] in kept for n in kept if n), "a kept node's parent is kept"


class Fixed(Proposer):
    """Proposes TREE with fixed tokens and distributions; records what observe gets."""

    name = "fixed"

    def __init__(self):
        self.seen = []

    def propose(self, committed):
        dists = torch.full((TREE.size + 1, 8), 1 / 8)
        dists[0, 2], dists[0, 3] = 0.6, 0.3
        dists[1, 4] = 0.9
        return Proposal(TREE, torch.tensor([2, 3, 4, 5, 6, 7]), draft_dists=dists / dists.sum(-1, keepdim=True), confidences=torch.arange(6.0))

    def observe(self, outcome):
        self.seen.append((outcome.path, outcome.bonus))


def test_the_wrapper_prunes_reindexes_and_maps_the_path_back():
    inner = Fixed()
    wrapper = DraftLengthProposer(inner, DraftLength(0.3))
    out = wrapper.propose(None)
    kept = sorted(wrapper._step.inner)
    assert out.tree.size == len(kept) - 1 < TREE.size
    assert torch.as_tensor(out.tokens).tolist() == [[2, 3, 4, 5, 6, 7][n - 1] for n in wrapper._step.inner[1:]]
    assert out.confidences.tolist() == [float(n - 1) for n in wrapper._step.inner[1:]]
    assert wrapper.drafted_nodes == TREE.size and wrapper.verified_nodes == out.tree.size
    deepest = max(range(1, out.tree.size + 1), key=lambda n: out.tree.depths[n])
    path = [0]
    node = deepest
    while node:
        path.insert(1, node)
        node = out.tree.parents[node]
    wrapper.observe(SimpleNamespace(path=path, bonus=9, extra_hidden=None, extra_features=None))
    assert inner.seen == [([wrapper._step.inner[n] for n in path], 9)]


@pytest.mark.parametrize("kind,layout", SETUPS, ids=IDS)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_greedy_with_a_draft_length_equals_plain_greedy(copier, kind, layout, threshold):
    generator = SpeculativeGenerator.from_draft(copier, drafts(copier)[kind], layout, draft_length=DraftLength(threshold, min_nodes=1))
    generator.eos = set(NO_EOS)
    prompt = copy_prompt(copier, 0)
    assert generator.generate(prompt, 30).tokens == plain_generate(copier, prompt, 30, eos_token_ids=NO_EOS).tokens
    pruner = generator.proposer
    assert pruner.verified_nodes <= pruner.drafted_nodes
    if threshold == 0.0:
        assert pruner.verified_nodes == pruner.drafted_nodes
    if threshold == 0.5:
        assert pruner.verified_nodes < pruner.drafted_nodes, "a high threshold should prune the random drafts' nodes"


def test_exact_sampling_with_a_head_and_a_lookup_branch_still_runs_and_stays_in_budget(copier):
    head = AcceptanceHead(AcceptanceHeadConfig(hidden=8))
    generator = SpeculativeGenerator.from_draft(copier, drafts(copier)["eagle3"], SETUPS[4][1], draft_length=DraftLength(0.1, 2, head), lookup_branch=4)
    generator.eos = set(NO_EOS)
    result = generator.generate(copy_prompt(copier, 0), 20, SamplingConfig(temperature=0.8), seed=0)
    assert len(result.tokens) == 20 and result.lossless
    assert generator.proposer.inner.verified_nodes >= 2 * len(result.accepted_lengths)


def test_recording_labels_the_nodes_the_target_would_accept(copier):
    draft = drafts(copier)["medusa"]
    class TreeRecorder(RecordingVerifier):
        def verify(self, block, generator):
            trees.append(block.tree)
            return super().verify(block, generator)

    trees = []
    recorder = TreeRecorder(resolve_verifier("greedy", SamplingConfig()))
    # The lookup branch copies the prompt's continuation (right for the copier), the random heads are wrong: both labels occur.
    generator = SpeculativeGenerator.from_draft(copier, draft, SETUPS[0][1], verifier=recorder, lookup_branch=3)
    generator.eos = set(NO_EOS)
    result = generator.generate(copy_prompt(copier, 0), 16)
    records = recorder.records.tensors()
    steps = len(result.accepted_lengths)
    assert records["features"].shape == (steps * SETUPS[0][1].size, len(FEATURES))
    assert records["matched"].shape == records["ratio"].shape == (steps * SETUPS[0][1].size,)
    assert ((records["ratio"] >= 0) & (records["ratio"] <= 1)).all()
    # Greedy verification accepts the longest path of nodes that match the target's argmax at their
    # parent, so each step's accepted count must be the deepest all-matched path of its labels.
    matched = records["matched"].reshape(steps, -1).tolist()
    for tree, accepted, row in zip(trees, result.accepted_lengths, matched):
        ok = [True] + [False] * tree.size
        for node in range(1, tree.size + 1):
            ok[node] = bool(row[node - 1]) and ok[tree.parents[node]]
        assert accepted == max(tree.depths[node] for node in range(tree.size + 1) if ok[node])
    assert any(any(row) for row in matched) and not all(all(row) for row in matched), "the copier must both accept and reject some nodes for this to test anything"


def test_records_round_trip_and_a_fitted_head_beats_a_coin(copier, tmp_path):
    records, described = record_proposals(copier, None, drafts(copier)["medusa"], SETUPS[0][1], [], progress=False)
    assert records["features"].shape[0] == 0 and described["proposer"] == "medusa"
    recorder = RecordingVerifier(resolve_verifier("greedy", SamplingConfig()))
    generator = SpeculativeGenerator.from_draft(copier, drafts(copier)["medusa"], SETUPS[0][1], verifier=recorder)
    generator.eos = set(NO_EOS)
    for seed in (0, 1, 2):
        generator.generate(copy_prompt(copier, seed), 24)
    records = recorder.records.tensors()
    save_records(records, tmp_path / "rec", {"draft_type": "medusa"})
    loaded, card = load_records(tmp_path / "rec")
    assert card["rows"] == records["features"].shape[0] and torch.equal(loaded["matched"], records["matched"])
    head, report = fit_acceptance_head(loaded, AcceptanceSettings(steps=60), draft={"draft_type": "medusa"})
    assert report["train_rows_loss"] < 0.69, "a fitted head should beat predicting 1/2 (it can at least learn the base rate)"
    assert report["val_rows"] > 0 and 0 <= report["val_mean_head"] <= 1
    with pytest.raises(FileNotFoundError, match="record the draft"):
        load_records(tmp_path / "none")
    with pytest.raises(ValueError, match="label"):
        fit_acceptance_head(loaded, AcceptanceSettings(label="soft"))


def test_head_folder_round_trips_and_bad_folders_are_clear(tmp_path):
    head = randomise(AcceptanceHead(AcceptanceHeadConfig(hidden=8, threshold=0.4, draft={"draft_type": "medusa"})), 0, 0.5)
    head.set_standardisation(torch.randn(50, len(FEATURES)))
    head.save_pretrained(tmp_path / "head")
    loaded = load_acceptance_head(tmp_path / "head")
    x = torch.randn(7, len(FEATURES))
    assert torch.allclose(loaded.acceptance(x), head.acceptance(x)) and loaded.config.threshold == 0.4
    with pytest.raises(FileNotFoundError, match="acceptance_head=DIR"):
        load_acceptance_head(tmp_path / "missing")
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    (tmp_path / "head" / "config.json").write_text(json.dumps(config | {"features": ["log_draft_prob"]}))
    with pytest.raises(DraftMismatchError, match="train the head again"):
        load_acceptance_head(tmp_path / "head")


def test_options_build_the_draft_length_and_refuse_what_cannot_apply(tmp_path):
    options = parse_options(["draft=d", "prompt=p", "draft_length=0.4", "draft_min_nodes=2"], GENERATE_OPTIONS)
    medusa = SimpleNamespace(draft_type="medusa")
    length = draft_length_option(medusa, options)
    assert (length.threshold, length.min_nodes, length.head) == (0.4, 2, None)
    assert draft_length_option(medusa, parse_options(["draft=d", "prompt=p"], GENERATE_OPTIONS)) is None
    with pytest.raises(UsageError, match="draft_length"):
        parse_options(["draft_length=1.5"], GENERATE_OPTIONS)
    with pytest.raises(UsageError, match="draft_min_nodes=3 is only read with draft_length"):
        draft_length_option(medusa, parse_options(["draft=d", "prompt=p", "draft_min_nodes=3"], GENERATE_OPTIONS))
    with pytest.raises(UsageError, match="SDSAT"):
        draft_length_option(SimpleNamespace(draft_type="sdsat"), options)
    AcceptanceHead(AcceptanceHeadConfig(threshold=0.25, draft={"draft_type": "eagle3"})).save_pretrained(tmp_path / "head")
    with_head = parse_options(["draft=d", "prompt=p", f"acceptance_head={tmp_path / 'head'}"], GENERATE_OPTIONS)
    assert draft_length_option(SimpleNamespace(draft_type="eagle3"), with_head).threshold == 0.25
    with pytest.raises(UsageError, match="trained on a eagle3 draft"):
        draft_length_option(medusa, with_head)
    with pytest.raises(UsageError, match="does not exist"):
        draft_length_option(medusa, with_head | {"acceptance_head": str(tmp_path / "nothing")})
    with pytest.raises(ValueError, match="within"):
        check_draft_length(proposer_class("medusa"), DraftLength(2.0))


def test_sampled_candidates_are_refused(copier):
    class Sampled(Fixed):
        def propose(self, committed):
            proposal = super().propose(committed)
            proposal.draft_probs = proposal.draft_dists
            return proposal

    with pytest.raises(ValueError, match="sampled candidates"):
        DraftLengthProposer(Sampled(), DraftLength(0.3)).propose(None)


def test_eval_records_verified_nodes_and_refuses_a_sweep(tiny_llama, tiny_tokenizer, tmp_path, capsys):
    heads = randomise(MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=len(tiny_tokenizer), num_heads=2)), 0, 0.05)
    question = {"question_id": 1, "category": "copy", "turns": ["Hello hello hello hello hello hello"]}
    result = evaluate(tiny_llama, tiny_tokenizer, heads, [question], max_new_tokens=16, draft_length=DraftLength(0.05), baselines=False, progress=False, warmup=False)
    assert result["overall"]["lossless_match"] == 1.0 and result["setting"]["draft_length_threshold"] == 0.05
    record = result["questions"][0]
    assert 0 < record["verified_nodes"] <= record["drafted_nodes"]
    assert result["overall"]["verified_nodes_per_step"] == pytest.approx(record["verified_nodes"] / record["verify_steps"])
    assert eval_main([f"draft={tmp_path}", "draft_length=0.3", "training_free=topk:2"]) == 2
    assert "measured against the baselines" in capsys.readouterr().err
