"""The speculative-decoding loop: acceptance rules by hand, greedy exactness against the profile,
and speculative sampling preserving the target's distribution (statistical, fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from specprof.core.simulation import trace
from specprof.core.simulation.traces import trace_drafts
from specprof.engines.hf import drafts, models, sampling, speculate

K_MAX = 8
MAX_NEW = 32  # the settings of the `greedy_profile` fixture (conftest.py)
DRAFT_KINDS = ["close", "far", "early-exit:1", "ngram:2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all overhead; a second thread only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load(path):
    return models.load_model(str(path), torch.device("cpu"), torch.float32)


def load_draft(tiny, target, which):
    spec = str(tiny[which]) if which in ("close", "far") else which
    return drafts.load_draft(spec, target, torch.device("cpu"), torch.float32)


# --- acceptance rules, worked by hand ---------------------------------------------------------

def test_accept_greedy_worked_example():
    # target argmax per row: [5, 7, 2, 4]; proposals [5, 7, 9]: 5 = 5, 7 = 7, 9 ≠ 2 → accept 2, then the target's 2
    logits = torch.full((4, 10), -1.0)
    for row, token in enumerate([5, 7, 2, 4]):
        logits[row, token] = 1.0
    assert speculate.accept_greedy(logits, [5, 7, 9]) == (2, 2)
    assert speculate.accept_greedy(logits, [5, 7, 2]) == (3, 4)  # all accepted: the bonus token is row 3's
    assert speculate.accept_greedy(logits, [1, 7, 2]) == (0, 5)  # first rejected: the target's own token
    assert speculate.accept_greedy(logits[:1], []) == (0, 5)  # nothing drafted: plain decoding


def test_accept_sampled_edge_cases():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    for _ in range(50):
        # the draft's distribution equals the target's: min(1, p/q) = 1, everything is accepted
        assert speculate.accept_sampled(p, p[:2].clone(), [0, 2], g)[0] == 2
        # n-gram (point mass) proposing a token the target never emits: rejected, and never emitted
        accepted, token = speculate.accept_sampled(p, None, [2, 0], g)
        assert accepted == 0 and token in (0, 1)
        # point mass on the target's only token at row 2: always accepted, then the bonus from row 2
        assert speculate.accept_sampled(p[2:].repeat(2, 1), None, [2], g) == (1, 2)


def test_accept_sampled_residual_distribution():
    # p = (0.6, 0.4), q = (0.9, 0.1), proposal 0: accept with 0.6/0.9 = 2/3; the residual
    # max(0, p − q) = (0, 0.3) puts everything on token 1. So P(output 0) = 0.9 · 2/3 = 0.6 = p(0).
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    q = torch.tensor([[0.9, 0.1]])
    g = torch.Generator().manual_seed(1)
    n, accepted = 6000, 0
    for _ in range(n):
        a, token = speculate.accept_sampled(p, q, [0], g)
        accepted += a
        assert a == 1 or token == 1
    # binomial(6000, 2/3): s.d. 0.0061; 5 s.d. → false-failure odds < 1e-6 (fixed seed: deterministic)
    assert abs(accepted / n - 2 / 3) < 5 * math.sqrt(2 / 9 / n)


# --- greedy: the loop reproduces the profile exactly ------------------------------------------

@pytest.fixture(scope="module")
def greedy_report(greedy_profile):
    tokens = pd.read_parquet(greedy_profile / "tokens.parquet")
    prompts = pd.read_parquet(greedy_profile / "prompts.parquet").set_index("prompt_id")
    return tokens, prompts, {t.draft: t for t in trace_drafts(tokens, K_MAX, exact=True)}


@pytest.mark.parametrize("which", DRAFT_KINDS)
def test_greedy_loop_equals_profile_block_by_block(greedy_report, tiny, which):
    tokens, prompts, traces = greedy_report
    target = load(tiny["target"])
    draft = load_draft(tiny, target, which)
    eos = models.eos_token_ids(target)
    t = traces[draft.name]
    assert set(prompts.finish_reason) == {"eos", "length"}  # both endings are exercised
    exact_checked = set()
    for row, prompt_id in enumerate(t.prompt_ids):
        prompt = [int(x) for x in prompts.loc[prompt_id, "prompt_tokens"]]
        rows = tokens[(tokens.draft == draft.name) & (tokens.prompt_id == prompt_id)].sort_values("position")
        expected = rows.target_token.tolist()
        alone = speculate.autoregressive_generate(target.model, prompt, max_new_tokens=MAX_NEW, eos_ids=eos)
        assert alone.tokens == expected and alone.n_iterations == len(expected), prompt_id
        for k in range(1, K_MAX + 1):
            out = speculate.speculative_generate(target.model, speculate.proposer_for(draft), prompt, k=k,
                                                 max_new_tokens=MAX_NEW, eos_ids=eos)
            assert out.tokens == expected, (which, prompt_id, k)
            blocks = [(b.start, b.accepted) for b in trace.simulate_blocks(rows.match.tolist(), k)]
            if len(expected) == MAX_NEW:
                # A real loop never drafts the token at max_new_tokens (the target supplies it, as in
                # transformers); the trace counts it as accepted when it matched. Same iterations and tokens.
                start, accepted = blocks[-1]
                blocks[-1] = (start, min(accepted, MAX_NEW - start - 1))
            assert [(it.start, it.accepted) for it in out.iterations] == blocks, (which, prompt_id, k)
            assert out.n_iterations == t.blocks.iterations[row, k - 1], (which, prompt_id, k)
            # Proposals per iteration, as the cost model prices them: where the draft's lookups ended
            # before a rejection, exactly that many; otherwise k, a bound the loop never exceeds.
            priced = [it.accepted if len(it.proposals) == it.accepted < k else k for it in out.iterations]
            assert all(len(it.proposals) <= n for it, n in zip(out.iterations, priced))
            histogram = t.blocks.proposed[row, k - 1]
            if len(expected) + k < MAX_NEW:  # max_new_tokens never cut a budget below k: the very blocks
                assert np.bincount(priced, minlength=K_MAX + 1).tolist() == histogram.tolist(), (which, k)
                exact_checked.add(which)
            else:
                assert sum(priced) <= histogram @ np.arange(K_MAX + 1)
    assert which in exact_checked


def test_greedy_ngram_proposes_k_lookups_on_the_growing_context():
    # context 1 2 3 1 2: lookups give 3 (after "1 2"), then 1 (after "2 3"), then 2, then 3
    proposer = speculate.NgramProposer(2)
    assert proposer.propose([1, 2, 3, 1, 2], 4, 0.0, 1.0, None) == ([3, 1, 2, 3], None)
    # no earlier occurrence of the last token: no proposal, the block ends before it starts
    assert proposer.propose([1, 2, 3, 4], 3, 0.0, 1.0, None) == ([], None)


def test_draft_cache_rolls_back_and_catches_up(tiny):
    """After each iteration the draft's cache holds exactly the accepted context (minus what it has
    not seen yet), so its next proposals equal a fresh draft's on the whole context."""
    target = load(tiny["target"])
    close = load(tiny["close"]).model
    prompt = target.tokenizer("The quick brown fox")["input_ids"]
    proposer = speculate.ModelProposer(close)
    fresh = speculate.ModelProposer(close)
    proposer.start(prompt)
    context = list(prompt)
    for accepted in [0, 3, 1, 3, 2]:  # rejection, full acceptance (catch-up of 2 tokens), partial ones
        proposals, _ = proposer.propose(context, 3, 0.0, 1.0, None)
        fresh.start(context)
        assert proposals == fresh.propose(context, 3, 0.0, 1.0, None)[0]
        proposer.rollback(len(context) + accepted)
        context += proposals[:accepted] + [7]  # 7: some bonus token
        assert proposer.cache.get_seq_length() == proposer.cached <= len(context) - 1


# --- speculative sampling: distribution-preserving --------------------------------------------

def small_vocab_model(seed: int, vocab: int = 8):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # random weights: seeded so every run tests the same distributions
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         initializer_range=0.2, tie_word_embeddings=False, bos_token_id=0, eos_token_id=vocab - 1)
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
def two_token_probs(model, prompt, temperature, top_p) -> torch.Tensor:
    """Exact [V, V] probabilities of the first two tokens under the model's own (processed) sampling."""
    first = sampling.probabilities(model(torch.tensor([prompt])).logits[0, -1], temperature, top_p)
    vocab = first.shape[0]
    nxt = model(torch.tensor([prompt + [a] for a in range(vocab)])).logits[:, -1]
    return first[:, None] * sampling.probabilities(nxt, temperature, top_p)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson χ² of counts against probabilities, cells with expected count < 5 pooled into one."""
    n = counts.sum()
    expected = probs.flatten() * n
    counts = counts.flatten().double()
    small = expected < 5
    e = torch.cat([expected[~small], expected[small].sum()[None]]).double()
    c = torch.cat([counts[~small], counts[small].sum()[None]])
    keep = e > 0
    return float(((c[keep] - e[keep]) ** 2 / e[keep]).sum()), int(keep.sum()) - 1


def chi_square_critical(dof: int, z: float = 4.753) -> float:
    """Upper quantile of χ²(dof) at one-sided normal z (Wilson–Hilferty); z = 4.753 ↔ odds 1e-6."""
    a = 2.0 / (9 * dof)
    return dof * (1 - a + z * math.sqrt(a)) ** 3


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9)])
def test_speculative_sampling_preserves_the_target_distribution(temperature, top_p):
    """3000 seeded runs (k = 2, 3 new tokens: both drafts and the bonus are judged) from a tiny model
    with 8 tokens, against a different random draft: the first token and the first two tokens are
    distributed as the target's own samples. Threshold: the χ² quantile at false-failure odds 1e-6
    per check; the same counts against the draft's distribution fail by far, so the check has power."""
    target, draft = small_vocab_model(2), small_vocab_model(3)
    prompt = [1, 2, 3]
    exact = two_token_probs(target, prompt, temperature, top_p)  # [8, 8]
    drafted = two_token_probs(draft, prompt, temperature, top_p)
    n = 3000
    counts = torch.zeros(8, 8)
    proposer = speculate.ModelProposer(draft)
    for seed in range(n):
        out = speculate.speculative_generate(target, proposer, prompt, k=2, max_new_tokens=3, eos_ids=[],
                                             temperature=temperature, top_p=top_p,
                                             generator=torch.Generator().manual_seed(seed))
        counts[out.tokens[0], out.tokens[1]] += 1
    for observed, p, q in [(counts.sum(1), exact.sum(1), drafted.sum(1)), (counts, exact, drafted)]:
        stat, dof = chi_square(observed, p)
        assert stat < chi_square_critical(dof), (stat, dof)
        against_draft, dof_q = chi_square(observed, q)
        assert against_draft > 10 * chi_square_critical(dof_q)  # a loop emitting the draft's tokens would fail
    # total variation of the first token, Bretagnolle–Huber–Carol: P(TV ≥ ε) ≤ 2^8 exp(−2nε²) = 1e-6 at ε = 0.057
    tv = 0.5 * float((counts.sum(1) / n - exact.sum(1)).abs().sum())
    assert tv < math.sqrt((8 * math.log(2) + math.log(1e6)) / (2 * n))


def test_ngram_point_mass_sampling_preserves_the_target_distribution():
    """An n-gram draft has no distribution: a point mass at its proposal. The prompt repeats, so
    it proposes at every step; 3000 seeded runs as above (same thresholds, same odds)."""
    target = small_vocab_model(2)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    exact = two_token_probs(target, prompt, 1.0, 1.0)
    n = 3000
    counts = torch.zeros(8, 8)
    proposer = speculate.NgramProposer(2)
    drafted = 0
    for seed in range(n):
        out = speculate.speculative_generate(target, proposer, prompt, k=2, max_new_tokens=3, eos_ids=[],
                                             temperature=1.0, generator=torch.Generator().manual_seed(seed))
        counts[out.tokens[0], out.tokens[1]] += 1
        drafted += out.drafted
    assert drafted >= 2 * n  # the draft really proposed (k = 2 in the first iteration of every run)
    for observed, p in [(counts.sum(1), exact.sum(1)), (counts, exact)]:
        stat, dof = chi_square(observed, p)
        assert stat < chi_square_critical(dof), (stat, dof)


# --- speculative sampling: acceptance agrees with the profile's Σ min(p, q) ------------------

SEEDS = 200


@pytest.fixture(scope="module")
def sampled_report(tiny, tmp_path_factory):
    """One prompt under 40 ids: the profile's per-prompt seeds give 40 independent sampled continuations."""
    import json

    from typer.testing import CliRunner

    from specprof.ui.cli import app

    root = tmp_path_factory.mktemp("sampled")
    corpus = root / "same.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"s{i}", "domain": "d", "prompt": "The quick brown fox"}) + "\n"
                              for i in range(40)))
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", tiny["far"],
            "--k-max", 2, "--max-new-tokens", 16, "--temperature", 1.0, "--out", root / "r"]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    prompts = pd.read_parquet(root / "r" / "prompts.parquet")
    return pd.read_parquet(root / "r" / "tokens.parquet"), [int(x) for x in prompts.prompt_tokens.iloc[0]]


@pytest.mark.parametrize("which", ["close", "far"])
def test_sampling_acceptance_agrees_with_profile_accept_prob(sampled_report, tiny, which):
    """200 seeded speculative-sampling runs (k = 1, 16 tokens) of the prompt the profile sampled 40 times.

    Exact: the first draft token is judged on the prompt alone, so it is accepted with probability
    β₀ = Σ min(p, q) at position 0, which the profile records. Binomial(200, β₀), 4.5 s.d.: false-failure
    odds 7e-6. Approximate: the pooled rate Σ accepted / Σ judged against α = mean β over the profile's
    continuations. Speculative sampling judges the positions after a rejection more often than those
    after an acceptance, so the two are not the same expectation in general; the tolerance is 4.5
    standard errors of the difference (per-continuation and per-seed spread), with no bias allowance.
    """
    tokens, prompt = sampled_report
    target = load(tiny["target"])
    draft = load_draft(tiny, target, which)
    rows = tokens[tokens.draft == draft.name]
    beta0 = rows[rows.position == 0].accept_prob.to_numpy()
    assert beta0.std() < 1e-5 and 0.05 < beta0.mean() < 0.95  # the same prompt: the same first β
    eos = models.eos_token_ids(target)
    first, rates = [], []
    for seed in range(SEEDS):
        out = speculate.speculative_generate(target.model, speculate.proposer_for(draft), prompt, k=1,
                                             max_new_tokens=16, eos_ids=eos, temperature=1.0,
                                             generator=torch.Generator().manual_seed(seed))
        first.append(out.iterations[0].accepted)
        rates.append((out.accepted, out.num_judged_tokens))
    b = float(beta0.mean())
    assert abs(sum(first) / SEEDS - b) < 4.5 * math.sqrt(b * (1 - b) / SEEDS)

    per_prompt = rows.groupby("prompt_id").accept_prob.mean()
    measured = sum(a for a, _ in rates) / sum(t for _, t in rates)
    per_seed = torch.tensor([a / t for a, t in rates if t])
    se = math.sqrt(per_prompt.var() / len(per_prompt) + float(per_seed.var()) / len(per_seed))
    assert abs(measured - per_prompt.mean()) < 4.5 * se, (measured, per_prompt.mean(), se)
