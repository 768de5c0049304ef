"""Runtime: tree layout and masks, KV commits, lossless greedy decoding, exact speculative sampling."""

import random

import pytest
import torch
from transformers import DynamicCache

from conftest import build_tiny_llama, enliven
from specdec.models.medusa import MedusaConfig, MedusaHeads
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.kv import commit_path
from specdec.runtime.proposers import Proposal, Proposer
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import SamplingConfig, SamplingVerifier, TypicalVerifier, VerifyBlock, resolve_verifier, target_probs

SMALL_TREE = DraftTree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])


@pytest.fixture(scope="module")
def lively():
    """A tiny Llama with large random weights, so greedy continuations vary."""
    return enliven(build_tiny_llama(320, hidden_size=64), seed=1)


# -- trees ------------------------------------------------------------------------------------
def test_tree_order_parents_depths_and_ranks():
    tree = SMALL_TREE
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    assert tree.parents == (-1, 0, 0, 1, 1, 2, 3)
    assert tree.depths == (0, 1, 1, 2, 2, 2, 3)
    assert tree.ranks == (0, 0, 1, 0, 1, 0, 0)
    assert tree.children[1] == (3, 4) and tree.children[0] == (1, 2)
    assert tree.ranks_needed() == [2, 2, 1]
    with pytest.raises(ValueError, match="no parent"):
        DraftTree.from_paths([(0,), (1, 0)])


def test_attention_mask_and_positions_match_a_hand_built_tree():
    tree = DraftTree.from_paths([(0,), (1,), (0, 0)])  # root r, a=(0,), b=(1,), c=(0,0)
    mask = tree.attention_mask(past_len=2, dtype=torch.float32)
    visible = (mask[0, 0] == 0).int().tolist()
    assert visible == [
        [1, 1, 1, 0, 0, 0],  # r: prefix + itself
        [1, 1, 1, 1, 0, 0],  # a: prefix, r, a
        [1, 1, 1, 0, 1, 0],  # b: prefix, r, b
        [1, 1, 1, 1, 0, 1],  # c: prefix, r, a, c
    ]
    assert mask.min() == torch.finfo(torch.float32).min
    assert tree.position_ids(2).tolist() == [[2, 3, 3, 4]]


def test_tree_from_accuracies_expands_the_most_probable_nodes():
    acc = [[0.6, 0.2, 0.1], [0.5, 0.1], [0.4]]
    tree = DraftTree.from_accuracies(acc, size=4)
    # values: (0,)=.6, (0,0)=.3, (1,)=.2, (0,0,0)=.12, (0,1)=.06, (2,)=.1
    assert tree.paths == ((0,), (1,), (0, 0), (0, 0, 0))
    assert DraftTree.from_accuracies(acc, size=1).paths == ((0,),)


# -- KV commit --------------------------------------------------------------------------------
def test_commit_path_leaves_the_cache_of_a_fresh_forward(lively):
    torch.manual_seed(0)
    prompt = torch.randint(3, 320, (1, 6))
    cache = DynamicCache(config=lively.config)
    lively(prompt, past_key_values=cache, use_cache=True)
    tree = SMALL_TREE
    tokens = [5, 6, 7, 8, 9, 10, 11]
    lively(torch.tensor([tokens]), attention_mask=tree.attention_mask(6, torch.float32), position_ids=tree.position_ids(6), past_key_values=cache, use_cache=True)
    path = [0, 2, 5]  # root, (1,), (1,0): not a prefix of the block, so entries must move
    commit_path(cache, 6, path)
    assert cache.get_seq_length() == 9
    after = lively(torch.tensor([[42]]), past_key_values=cache, use_cache=True).logits[0, -1]
    fresh = lively(torch.cat([prompt, torch.tensor([[5, 7, 10, 42]])], 1)).logits[0, -1]
    torch.testing.assert_close(after, fresh, rtol=1e-4, atol=1e-4)


# -- lossless greedy --------------------------------------------------------------------------
class OracleProposer(Proposer):
    """Knows the plain greedy continuation; places the right token at a random rank (or omits it)."""

    name = "oracle"

    def __init__(self, tree, reference, prompt_len, seed=0, hit_rate=0.7):
        self.tree, self.reference, self.prompt_len = tree, reference, prompt_len
        self.rng, self.hit_rate, self.position = random.Random(seed), hit_rate, 0
        self.generator = None

    def propose(self, committed):
        # The generator calls propose once per step; it tells us how far it got through `done`.
        done = self.generator.done
        tokens = []
        needed = self.tree.ranks_needed()
        right_rank = {d: (self.rng.randrange(needed[d - 1]) if self.rng.random() < self.hit_rate else -1) for d in range(1, self.tree.depth + 1)}
        for path in self.tree.paths:
            depth = len(path)
            want = self.reference[done + depth] if done + depth < len(self.reference) else 1
            tokens.append(want if path[-1] == right_rank[depth] else (want + 1 + path[-1]) % 320)
        return Proposal(self.tree, tokens)


def _oracle_generate(model, prompt, tree, max_new_tokens, eos=(), seed=0):
    reference = plain_generate(model, prompt, max_new_tokens + 8, eos_token_ids=eos or [10**9]).tokens
    proposer = OracleProposer(tree, reference, prompt.shape[1], seed)
    gen = SpeculativeGenerator(model, proposer, eos_token_ids=eos or [10**9])
    progress = {"n": 0}

    def track(tokens):
        progress["n"] = len(tokens)
        gen.done = len(tokens) - 1  # index of the current root in the reference

    gen.done = 0
    proposer.generator = gen
    return gen.generate(prompt, max_new_tokens, on_tokens=track), reference


@pytest.mark.parametrize("tree", [DraftTree.chain(4), SMALL_TREE, DraftTree.from_paths([(r,) for r in range(3)] + [(r, s) for r in range(3) for s in range(3)])], ids=["chain", "tree", "wide"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_speculative_equals_plain_greedy(lively, tree, seed):
    torch.manual_seed(seed)
    prompt = torch.randint(3, 320, (1, 5 + seed))
    result, _ = _oracle_generate(lively, prompt, tree, max_new_tokens=30, seed=seed)
    plain = plain_generate(lively, prompt, 30, eos_token_ids=[10**9])
    assert result.tokens == plain.tokens
    assert result.mean_accepted_tokens > 1.2  # the oracle's drafts were accepted, so paths were committed
    assert result.target_forwards < plain.target_forwards


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7])
def test_max_new_tokens_edge_truncates_an_overshooting_step(lively, max_new_tokens):
    prompt = torch.tensor([[5, 9, 33, 70]])
    result, reference = _oracle_generate(lively, prompt, DraftTree.chain(4), max_new_tokens, seed=3)
    assert result.tokens == reference[:max_new_tokens] and result.stop_reason == "max_new_tokens"


def test_eos_inside_an_accepted_path_stops_there(lively):
    prompt = torch.tensor([[7, 8, 9, 10, 11]])
    reference = plain_generate(lively, prompt, 20, eos_token_ids=[10**9]).tokens
    eos = reference[6]  # pretend the 7th token is EOS
    result, _ = _oracle_generate(lively, prompt, DraftTree.chain(4), 20, eos=[eos], seed=4)
    plain = plain_generate(lively, prompt, 20, eos_token_ids=[eos])
    assert result.tokens == plain.tokens == reference[: reference.index(eos) + 1]
    assert result.stop_reason == plain.stop_reason == "eos"


def test_medusa_heads_through_from_draft_are_lossless(lively):
    heads = MedusaHeads(MedusaConfig(hidden_size=64, vocab_size=320, num_heads=3))
    torch.manual_seed(0)
    for p in heads.parameters():
        p.data.normal_(0, 0.05)
    prompt = torch.tensor([[3, 14, 15, 92, 65]])
    for tree in (None, SMALL_TREE):
        result = SpeculativeGenerator.from_draft(lively, heads, tree).generate(prompt, 25)
        assert result.tokens == plain_generate(lively, prompt, 25).tokens
        assert len(result.acceptance_by_depth) == (tree or DraftTree.chain(3)).depth


def test_batch_larger_than_one_is_refused(lively):
    heads = MedusaHeads(MedusaConfig(hidden_size=64, vocab_size=320, num_heads=2))
    with pytest.raises(ValueError, match="batch size 1"):
        SpeculativeGenerator.from_draft(lively, heads).generate(torch.ones(2, 4, dtype=torch.long), 4)


def test_mismatched_draft_is_refused(lively):
    with pytest.raises(ValueError, match="hidden size 64"):
        SpeculativeGenerator.from_draft(lively, MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=320)))


def test_stop_strings_end_generation(lively, tiny_tokenizer):
    prompt = torch.tensor([[5, 6, 7]])
    full = plain_generate(lively, prompt, 30, tokenizer=tiny_tokenizer, eos_token_ids=[10**9]).tokens
    stop = tiny_tokenizer.decode(full[:12])[-3:]
    result = plain_generate(lively, prompt, 30, tokenizer=tiny_tokenizer, eos_token_ids=[10**9], stop_strings=(stop,))
    assert result.stop_reason == "stop_string" and len(result.tokens) <= 12


# -- exact speculative sampling (statistical) -------------------------------------------------
V = 6
CRITICAL_CHI2_DF5_P001 = 20.52  # chi-square critical value, 5 degrees of freedom, p = 0.001


def _chi2(counts, probs, n):
    expected = probs * n
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token the target gives probability 0"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


_LOGITS: dict[tuple, torch.Tensor] = {}


def _logits_after(prefix: tuple) -> torch.Tensor:
    """The toy target: logits after a token prefix, a fixed random function of the prefix."""
    if prefix not in _LOGITS:
        gen = torch.Generator().manual_seed(hash(prefix) % (2**31))
        _LOGITS[prefix] = torch.randn(V, generator=gen) * 1.5
    return _LOGITS[prefix]


def _prefixes(tree, tokens):
    out = []
    for node in range(tree.size + 1):
        path, j = [], node
        while j >= 0:
            path.append(tokens[j])
            j = tree.parents[j]
        out.append(tuple(reversed(path)))
    return out


def _draft_topk(tree):
    """Deterministic candidates: node of rank r = the target's r-th most likely token after its parent."""
    tokens = [0]
    for node in range(1, tree.size + 1):
        parent_prefix = _prefixes(tree, tokens + [0] * (tree.size + 1 - len(tokens)))[tree.parents[node]]
        tokens.append(int(_logits_after(parent_prefix).argsort(descending=True)[tree.ranks[node]]))
    return tokens


@pytest.mark.parametrize(
    "tree,draft_q",
    [(DraftTree.chain(2), False), (DraftTree.from_paths([(0,), (1,), (2,), (0, 0), (1, 0)]), False), (DraftTree.from_paths([(0,), (1,), (0, 0)]), True)],
    ids=["chain-topk", "tree-topk", "tree-sampled-q"],
)
def test_speculative_sampling_keeps_the_target_distribution(tree, draft_q):
    cfg = SamplingConfig(temperature=0.8)
    gen = torch.Generator().manual_seed(0)
    q_rows = torch.softmax(torch.randn(tree.size + 1, V, generator=torch.Generator().manual_seed(5)), -1) if draft_q else None
    fixed = None if draft_q else _draft_topk(tree)
    n = 12000
    first = torch.zeros(V)
    second_given: dict[int, torch.Tensor] = {}
    for _ in range(n):
        # Step 1: draft tokens: the top-k candidates, or one sample per node from a draft q.
        tokens = fixed or [0] + [int(torch.multinomial(q_rows[i], 1, generator=gen)) for i in range(1, tree.size + 1)]
        logits = torch.stack([_logits_after(p) for p in _prefixes(tree, tokens)])
        path, bonus, _ = SamplingVerifier().verify(_block(tree, tokens, logits, cfg, q_rows), gen)
        emitted = [tokens[i] for i in path[1:]] + [bonus]
        first[emitted[0]] += 1
        if len(emitted) > 1:
            second_given.setdefault(emitted[0], torch.zeros(V))[emitted[1]] += 1
    # Step 2: the first token follows the target's distribution after the root.
    assert _chi2(first, target_probs(_logits_after((0,)), cfg), n) < CRITICAL_CHI2_DF5_P001
    # Step 3: the second token, given the first, follows the target's conditional after both.
    x1, counts = max(second_given.items(), key=lambda kv: kv[1].sum())
    conditional = target_probs(_logits_after((0, x1)), cfg)
    assert counts.sum() > 1000 and _chi2(counts, conditional, int(counts.sum())) < CRITICAL_CHI2_DF5_P001


def _block(tree, tokens, logits, cfg, draft_probs=None):
    """A verify block over toy logits (the toy target has no hidden states: zeros stand in)."""
    return VerifyBlock(tree, tokens, logits, torch.zeros(len(tokens), 1), cfg, draft_probs)


def test_a_wrong_acceptance_rule_is_caught_by_the_same_check():
    """Guard for the test above: accepting a top-1 candidate always (a biased rule) fails the chi-square."""
    tree, cfg, n = DraftTree.chain(1), SamplingConfig(temperature=0.8), 4000
    tokens = _draft_topk(tree)
    first = torch.zeros(V)
    first[tokens[1]] = n  # what "always accept the draft" would emit
    assert _chi2(first, target_probs(_logits_after((0,)), cfg), n) > CRITICAL_CHI2_DF5_P001


def test_typical_acceptance_is_labelled_lossy():
    assert resolve_verifier("typical", SamplingConfig(temperature=0.7)).lossless is False
    assert resolve_verifier("auto", SamplingConfig(temperature=0.7)).lossless and resolve_verifier("auto", SamplingConfig()).lossless
    tree, cfg = DraftTree.chain(1), SamplingConfig(temperature=1.0)
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # root confident in token 0
    path, _, _ = TypicalVerifier().verify(_block(tree, [5, 0], logits, cfg), None)
    assert path == [0, 1]
    path, _, _ = TypicalVerifier().verify(_block(tree, [5, 2], logits, cfg), None)
    assert path == [0]


# -- tree tuning and the CLI ------------------------------------------------------------------
def _accurate_heads(hidden=64, vocab=320, heads=3):
    draft = MedusaHeads(MedusaConfig(hidden_size=hidden, vocab_size=vocab, num_heads=heads))
    draft.config.head_rank_accuracy = [[0.5, 0.2, 0.1], [0.3, 0.1, 0.05], [0.2, 0.05, 0.02]][:heads]
    return draft


def test_tune_tree_measures_each_size_and_returns_the_fastest(lively):
    from specdec.runtime.autotune import tune_tree

    draft = _accurate_heads()
    tree, length, speeds = tune_tree(lively, draft, [torch.tensor([[5, 6, 7]])], sizes=(1, 3, 6), max_new_tokens=6)
    assert length is None
    assert set(speeds) == {1, 3, 6} and all(s > 0 for s in speeds.values()) and isinstance(tree, DraftTree)
    assert tree.size == max(speeds, key=speeds.get)
    assert tree == DraftTree.from_accuracies(draft.config.head_rank_accuracy, tree.size)


def test_tune_tree_times_every_layout_with_the_lookup_branch_it_will_decode_with(lively, monkeypatch):
    from specdec.runtime import autotune
    from specdec.runtime.lookup_branch import LookupBranchProposer

    made, build = [], autotune.SpeculativeGenerator.from_draft
    monkeypatch.setattr(autotune.SpeculativeGenerator, "from_draft", lambda *a, **kw: made.append(build(*a, **kw)) or made[-1])
    _, _, speeds = autotune.tune_tree(lively, _accurate_heads(), [torch.tensor([[5, 6, 7, 5, 6]])], sizes=(1, 3), max_new_tokens=6, lookup_branch=4)
    assert set(speeds) == {1, 3} and len(made) == 2
    assert all(isinstance(g.proposer, LookupBranchProposer) for g in made)



def test_tune_tree_times_every_layout_full_and_pruned_and_keeps_the_faster(lively, monkeypatch):
    from specdec.runtime import autotune
    from specdec.runtime.draft_length import DraftLength, find_draft_length

    made, build = [], autotune.SpeculativeGenerator.from_draft
    monkeypatch.setattr(autotune.SpeculativeGenerator, "from_draft", lambda *a, **kw: made.append(build(*a, **kw)) or made[-1])
    length = DraftLength(threshold=0.5)
    tree, kept, speeds = autotune.tune_tree(lively, _accurate_heads(), [torch.tensor([[5, 6, 7]])], sizes=(3, 6), max_new_tokens=6, draft_length=length)
    assert set(speeds) == {3, 6, "3 pruned", "6 pruned"} and len(made) == 4
    pruners = [find_draft_length(g.proposer) for g in made]
    assert pruners[:2] == [None, None], "the unpruned candidates verify every node"
    assert all(p is not None and p.length is length and p.verified_nodes > 0 for p in pruners[2:])
    best = max(speeds, key=speeds.get)
    assert (kept is length) == isinstance(best, str) and tree.size == int(str(best).split()[0]), "the fastest candidate, pruned only if its pruned run won"

def test_generate_cli_streams_the_plain_greedy_answer(tmp_path, tiny_target_dir, tiny_tokenizer, capsys):
    from transformers import AutoModelForCausalLM

    from specdec.runtime.cli import main

    target = AutoModelForCausalLM.from_pretrained(tiny_target_dir)
    with torch.no_grad():  # larger weights, so the answer is not just newlines
        for name, p in target.named_parameters():
            if "norm" not in name:
                p.mul_(15)
    target.save_pretrained(tiny_target_dir)
    draft = _accurate_heads(hidden=32, vocab=320)
    draft.save_pretrained(tmp_path / "draft", extra={"target": {"name_or_path": str(tiny_target_dir)}})
    assert main([f"draft={tmp_path / 'draft'}", "prompt=Say hello.", "max_new_tokens=12"]) == 0
    out, err = capsys.readouterr()
    ids = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    expected = plain_generate(target, ids, 12, tokenizer=tiny_tokenizer).tokens
    text = tiny_tokenizer.decode(expected, skip_special_tokens=True)
    assert text.strip() and out == text
    assert '"mean_accepted_tokens"' in err and '"verification": "greedy"' in err
    assert main([f"draft={tmp_path / 'draft'}", "prompt=x", "max_new_token=3"]) == 2  # exit 2 like the other CLIs (was SystemExit 1)
    assert "specdec-generate: error: unknown key `max_new_token` in the command line. Did you mean `max_new_tokens`?" in capsys.readouterr().err


def test_generate_help_lists_every_option(capsys):
    from specdec.runtime.cli import OPTIONS, main as generate_main

    assert generate_main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"{key}=" in usage for key in list(OPTIONS)[2:])
