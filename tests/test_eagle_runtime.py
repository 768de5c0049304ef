"""Runtime for the feature drafters: EAGLE chain and dynamic tree, Chimera trees.

Lossless greedy decoding, the drafter cache against from-scratch recomputation, the training-time
unroll against what the runtime drafts, and exact speculative sampling through the verifier."""

import pytest
import torch

from conftest import build_tiny_llama, enliven
from specdec.models.base import target_states
from specdec.models.chimera import ChimeraConfig, ChimeraDrafter, trigram_embeddings
from specdec.models.decoder import KVCache, LayerShape, causal_mask
from specdec.models.eagle1 import Eagle1Config, Eagle1Drafter
from specdec.models.eagle3 import Eagle3Config, Eagle3Drafter
from specdec.runtime.chimera_proposer import ChimeraProposer
from specdec.runtime.eagle_proposer import EagleOptions, EagleProposer
from specdec.runtime.generator import SpeculativeGenerator, plain_generate
from specdec.runtime.proposers import Committed
from specdec.runtime.tree import DraftTree
from specdec.runtime.verify import SamplingConfig, target_probs
from specdec.train.eagle_losses import eagle_losses
from specdec.train.losses import chimera_losses, unrolled_mask

VOCAB, HIDDEN = 320, 64
NO_EOS = [10**9]


@pytest.fixture(scope="module")
def lively():
    return enliven(build_tiny_llama(VOCAB, hidden_size=HIDDEN, layers=3), seed=2)


def _shape(model):
    return LayerShape.from_target_config(model.config)


def _randomise(module, seed, std=0.3):
    torch.manual_seed(seed)
    for name, p in module.named_parameters():
        if "norm" not in name:
            p.data.normal_(0, std)
    return module.eval()


def drafts(model):
    """One drafter of each type, with large random weights (so their proposals vary)."""
    e1 = _randomise(Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, layer=_shape(model))), 0, std=0.2)
    e3 = Eagle3Drafter(Eagle3Config(HIDDEN, VOCAB, 96, [1, 2, 3], layer=_shape(model)))
    e3.set_vocab(torch.arange(0, VOCAB, 3)[:96], model.lm_head.weight)
    _randomise(e3, 1)
    ch = _randomise(ChimeraDrafter(ChimeraConfig(HIDDEN, VOCAB, num_heads=3, layer=_shape(model))), 2, std=0.2)
    return {"eagle1": e1, "eagle3": e3, "chimera": ch}


def _greedy_corpus(model, count=6, length=40):
    """(prompts, prompt + the target's own greedy continuation as one batch [count, 6 + length])."""
    prompts = [torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(s)) for s in range(count)]
    sequences = [torch.cat([p, torch.tensor([plain_generate(model, p, length, eos_token_ids=NO_EOS).tokens])], dim=1) for p in prompts]
    return prompts, torch.cat(sequences)


def fit(draft, model, steps=150):
    """`draft` fitted with its training loss to the target's greedy continuations, in eval mode."""
    _, batch = _greedy_corpus(model)
    mask = torch.ones_like(batch)
    emb, head = model.get_input_embeddings().weight, model.lm_head.weight
    with torch.no_grad():
        final, features = target_states(model, batch, draft.feature_layers)
    optimizer = torch.optim.AdamW(draft.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        if isinstance(draft, ChimeraDrafter):
            loss = chimera_losses(draft, final, batch, mask, emb, head, with_accuracy=False).loss
        else:
            loss = eagle_losses(draft, features, final, batch, mask, emb, head, steps=2, with_accuracy=False).loss
        loss.backward()
        optimizer.step()
    return draft.eval()


@pytest.fixture(scope="module")
def fitted(lively):
    """One drafter of each type fitted to the target, so the lossless tests see long accepted paths too."""
    e3 = Eagle3Drafter(Eagle3Config(HIDDEN, VOCAB, VOCAB, [1, 2, 3], layer=_shape(lively)))
    e3.set_vocab(torch.arange(VOCAB), lively.lm_head.weight)
    torch.manual_seed(0)
    return {
        "eagle1": fit(Eagle1Drafter(Eagle1Config(HIDDEN, VOCAB, layer=_shape(lively))), lively),
        "eagle3": fit(e3, lively),
        "chimera": fit(ChimeraDrafter(ChimeraConfig(HIDDEN, VOCAB, num_heads=3, layer=_shape(lively))), lively),
    }


SETUPS = [
    ("eagle1", EagleOptions(depth=4)),
    ("eagle1", EagleOptions(depth=4, top_k=3, total_tokens=10)),
    ("eagle3", EagleOptions(depth=3)),
    ("eagle3", EagleOptions(depth=5, top_k=4, total_tokens=24)),
    ("chimera", DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)])),
]
IDS = ["eagle1-chain", "eagle1-tree", "eagle3-chain", "eagle3-tree", "chimera-tree"]


@pytest.mark.parametrize("kind,layout", SETUPS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_speculative_equals_plain_greedy(lively, kind, layout, seed):
    prompt = torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(seed))
    generator = SpeculativeGenerator.from_draft(lively, drafts(lively)[kind], layout)
    generator.eos = set(NO_EOS)
    for max_new in (1, 5, 40):
        assert generator.generate(prompt, max_new).tokens == plain_generate(lively, prompt, max_new, eos_token_ids=NO_EOS).tokens


@pytest.mark.parametrize("kind,layout", SETUPS, ids=IDS)
def test_greedy_speculative_equals_plain_greedy_with_accepted_drafts(lively, fitted, kind, layout):
    """The same with fitted drafts, whose proposals are accepted: multi-token paths (and, for trees,
    paths off the first branch) are committed, and the output is still plain greedy's."""
    prompts, _ = _greedy_corpus(lively)
    generator = SpeculativeGenerator.from_draft(lively, fitted[kind], layout)
    generator.eos = set(NO_EOS)
    for prompt in prompts[:2]:
        out = generator.generate(prompt, 40)
        assert out.tokens == plain_generate(lively, prompt, 40, eos_token_ids=NO_EOS).tokens
        assert out.mean_accepted_tokens > 1.3, f"{kind} drafts were hardly accepted (tau {out.mean_accepted_tokens:.2f}): the test would not exercise accepted paths"


@pytest.mark.parametrize("kind,layout", SETUPS, ids=IDS)
def test_eos_inside_an_accepted_path_stops_there(lively, kind, layout):
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    reference = plain_generate(lively, prompt, 30, eos_token_ids=NO_EOS).tokens
    eos = reference[11]
    result = SpeculativeGenerator(lively, SpeculativeGenerator.from_draft(lively, drafts(lively)[kind], layout).proposer, eos_token_ids=[eos]).generate(prompt, 30)
    assert result.tokens == reference[: reference.index(eos) + 1] and result.stop_reason == "eos"


def _committed(model, draft, ids):
    """The prefill's Committed record for `ids` (the root = the last token of ids)."""
    layers = getattr(draft, "feature_layers", None)
    with torch.no_grad():
        hidden, features = target_states(model, ids[:, :-1], layers)
    return Committed(hidden[0], features[0], ids[0, 1:])


def _reference_chain(model, draft, ids, depth):
    """Draft `depth` tokens WITHOUT a cache: each step reruns the drafter over the whole sequence
    (committed entries, then the drafted entries of this chain) with a plain causal mask."""
    emb = model.get_input_embeddings().weight
    layers = getattr(draft, "feature_layers", None)
    with torch.no_grad():
        _, features = target_states(model, ids[:, :-1], layers)
        committed_hidden = draft.embed_features(features)[0]
        tokens, own = [], []
        for _ in range(depth):
            seq_tokens = torch.cat([ids[0, 1:], torch.tensor(tokens, dtype=torch.long)])
            hidden = torch.cat([committed_hidden, *[h[None] for h in own]])
            n = len(seq_tokens)
            out = draft(emb[seq_tokens][None], hidden[None], torch.arange(n)[None], causal_mask(n, 0, hidden.dtype, "cpu"))[0]
            own.append(out[-1])
            tokens.append(int(draft.to_target_ids(draft.logits(out[-1], model.lm_head.weight).argmax())))
    return tokens


@pytest.mark.parametrize("kind", ["eagle1", "eagle3"])
def test_chain_with_cache_equals_recomputation_and_the_training_unroll(lively, kind):
    draft = drafts(lively)[kind]
    ids = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    proposer = EagleProposer(draft, lively.get_input_embeddings().weight, lively.lm_head.weight, EagleOptions(depth=4))
    proposer.reset(ids)
    drafted = proposer.propose(_committed(lively, draft, ids)).tokens.tolist()
    # Step 1: the cached chain equals the no-cache recomputation.
    assert drafted == _reference_chain(lively, draft, ids, 4)
    # Step 2: the training unroll, teacher-forced with the drafted tokens, predicts the same tokens.
    sequence = torch.cat([ids, torch.tensor([drafted])], dim=1)
    with torch.no_grad():
        final, features = target_states(lively, sequence, draft.feature_layers)
        hidden, cache = draft.embed_features(features), KVCache()
        positions = torch.arange(sequence.shape[1])[None]
        anchor = ids.shape[1] - 2  # the last committed position: its next token is the root
        unrolled = []
        for i in range(4):
            embeds = lively.get_input_embeddings().weight[torch.cat([sequence[0, i + 1 :], torch.zeros(i + 1, dtype=torch.long)])][None]
            hidden = draft(embeds, hidden, positions + i, unrolled_mask(sequence.shape[1], i, hidden.dtype, "cpu"), cache)
            unrolled.append(int(draft.to_target_ids(draft.logits(hidden[0, anchor], lively.lm_head.weight).argmax())))
    assert unrolled == drafted


def test_dynamic_tree_children_are_the_drafters_top_k_along_each_path(lively):
    draft = drafts(lively)["eagle3"]
    ids = torch.randint(3, VOCAB, (1, 10), generator=torch.Generator().manual_seed(4))
    proposer = EagleProposer(draft, lively.get_input_embeddings().weight, lively.lm_head.weight, EagleOptions(depth=4, top_k=3, total_tokens=20))
    proposer.reset(ids)
    proposal = proposer.propose(_committed(lively, draft, ids))
    tree, tokens = proposal.tree, [None] + proposal.tokens.tolist()
    assert tree.size == 20 and tree.depth <= 4 and len(proposer.state.cache) > proposer.state.length
    emb = lively.get_input_embeddings().weight
    with torch.no_grad():
        committed = draft.embed_features(target_states(lively, ids[:, :-1], draft.feature_layers)[1])[0]
    for node in range(tree.size + 1):
        kids = tree.children[node]
        if not kids:
            continue
        # The node's path, recomputed from scratch: the drafter's top 3 after it contain its children, best first.
        path, j = [], node
        while j > 0:
            path.insert(0, tokens[j])
            j = tree.parents[j]
        hidden, own = committed, []
        with torch.no_grad():
            for step in range(len(path) + 1):
                seq = torch.cat([ids[0, 1:], torch.tensor(path[:step], dtype=torch.long)])
                h = torch.cat([hidden, *[o[None] for o in own]])
                out = draft(emb[seq][None], h[None], torch.arange(len(seq))[None], causal_mask(len(seq), 0, h.dtype, "cpu"))[0]
                own.append(out[-1])
            top = draft.to_target_ids(draft.logits(own[-1], None).topk(3).indices).tolist()
        assert [tokens[k] for k in kids] == top[: len(kids)]


def test_chimera_drafts_along_the_argmax_like_the_training_unroll(lively):
    draft = drafts(lively)["chimera"]
    ids = torch.randint(3, VOCAB, (1, 11), generator=torch.Generator().manual_seed(5))
    proposer = ChimeraProposer(draft, lively.get_input_embeddings().weight, lively.lm_head.weight, DraftTree.chain(3))
    proposer.reset(ids)
    drafted = proposer.propose(_committed(lively, draft, ids)).tokens.tolist()
    # The unroll training runs (trigrams of the real tokens, the anchor's h, the unrolled mask),
    # teacher-forced with the drafted tokens, gives each head's argmax at the anchor = the drafted token.
    sequence = torch.cat([ids, torch.tensor([drafted])], dim=1)
    length, anchor = sequence.shape[1], ids.shape[1] - 2
    with torch.no_grad():
        final, _ = target_states(lively, sequence)
        trigrams, cache, unrolled = trigram_embeddings(lively.get_input_embeddings().weight, sequence), KVCache(), []
        for k in range(3):
            shifted = torch.cat([trigrams[:, k + 1 :], torch.zeros_like(trigrams[:, : k + 1])], dim=1)
            features = draft(shifted, final, torch.arange(length)[None] + k, unrolled_mask(length, k, final.dtype, "cpu"), cache)
            unrolled.append(int(draft.head_logits(k, final[0, anchor], features[0, anchor], lively.lm_head.weight).argmax()))
    assert unrolled == drafted


def test_chimera_loss_encodes_the_trigrams_once_as_if_each_head_encoded_its_own(lively):
    """chimera_losses runs the trigram encoder once and shifts its output per head; the loss and
    the encoder's gradients equal those of encoding each head's shifted trigram embeddings."""
    draft = drafts(lively)["chimera"].train()
    _, batch = _greedy_corpus(lively, count=2, length=12)
    mask = torch.ones_like(batch)
    emb, head = lively.get_input_embeddings().weight, lively.lm_head.weight
    with torch.no_grad():
        final, _ = target_states(lively, batch)
    fast = chimera_losses(draft, final, batch, mask, emb, head, with_accuracy=False)
    fast.loss.backward()
    fast_grad = draft.trigram_block.weight.grad.clone()
    draft.zero_grad()
    # Reference: every head encodes its own shifted trigram embeddings (draft.forward), as decoding does.
    length, trigrams, cache, per_head = batch.shape[1], trigram_embeddings(emb, batch), KVCache(), []
    for k in range(draft.config.num_heads):
        shifted = torch.cat([trigrams[:, k + 1 :], torch.zeros_like(trigrams[:, : k + 1])], dim=1)
        features = draft(shifted, final, torch.arange(length)[None] + k, unrolled_mask(length, k, final.dtype, "cpu"), cache)
        anchors = length - k - 2
        logits = draft.head_logits(k, final[:, :anchors], features[:, :anchors], head)
        per_head.append(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, k + 2 :].reshape(-1)))
    reference = torch.stack(per_head)
    reference.sum().backward()
    assert torch.allclose(fast.per_head, reference, atol=1e-5)
    assert torch.allclose(fast_grad, draft.trigram_block.weight.grad, atol=1e-5) and fast_grad.abs().sum() > 0


def test_speculative_sampling_with_a_dynamic_tree_keeps_the_target_distribution(lively):
    """The token after the prefill's is verified against the tree; its distribution, given the
    first token, must be the target's (top-5 warped: chi-square with 4 degrees of freedom)."""
    draft = drafts(lively)["eagle1"]
    cfg = SamplingConfig(temperature=1.0, top_k=5)
    generator = SpeculativeGenerator.from_draft(lively, draft, EagleOptions(depth=2, top_k=3, total_tokens=6))
    generator.eos = set(NO_EOS)
    prompt = torch.tensor([[11, 12, 13, 14]])
    seconds: dict[int, torch.Tensor] = {}
    for seed in range(1500):
        tokens = generator.generate(prompt, 2, sampling=cfg, seed=seed).tokens
        seconds.setdefault(tokens[0], torch.zeros(VOCAB))[tokens[1]] += 1
    first, counts = max(seconds.items(), key=lambda kv: kv[1].sum())
    with torch.no_grad():
        logits = lively(torch.cat([prompt, torch.tensor([[first]])], dim=1)).logits[0, -1]
    probs = target_probs(logits, cfg)
    n = counts.sum()
    keep = probs > 0
    assert counts[~keep].sum() == 0 and n > 300
    chi2 = float(((counts[keep] - probs[keep] * n) ** 2 / (probs[keep] * n)).sum())
    assert chi2 < 18.47  # chi-square critical value, 4 degrees of freedom, p = 0.001


def test_trained_drafter_is_accepted(lively, fitted):
    """A drafter fitted with the EAGLE loss to the target's own greedy continuations gets its tokens accepted."""
    prompts, _ = _greedy_corpus(lively)
    result = SpeculativeGenerator.from_draft(lively, fitted["eagle1"], EagleOptions(depth=3))
    result.eos = set(NO_EOS)
    out = result.generate(prompts[0], 40)
    assert out.tokens == plain_generate(lively, prompts[0], 40, eos_token_ids=NO_EOS).tokens
    assert out.mean_accepted_tokens > 1.5
