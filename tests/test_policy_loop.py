"""The threshold-policy simulation against real speculative loops that implement the policy, prompt by prompt.

On tiny random-init models: `speculate.speculative_generate(..., confidence_threshold=τ)` and
transformers' assisted generation with `assistant_confidence_threshold = τ`. The exact part (every
iteration's start and accepted count, hence tokens per iteration and iterations per prompt) must
agree; the real loop's draft steps must lie within the simulated bounds.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from specprof.core.simulation import trace
from specprof.core.simulation.policy import simulate_policy
from specprof.engines.hf import drafts, models, speculate

K_MAX = 8
MAX_NEW = 32  # the settings of the `greedy_profile` fixture (conftest.py)
# (k_max, τ wanted): the tiny drafts' top-1 probabilities lie around 0.08–0.35, so these stop some
# blocks early, leave others running into a confident mismatch, and stop others at the mismatch.
POLICIES = [(2, 0.16), (4, 0.12), (8, 0.16), (8, 0.2), (5, 0.3), (3, 0.1)]
MODEL_DRAFTS = ["close", "far", "early-exit:1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models are all overhead; a second thread only adds contention
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(greedy_profile):
    tokens = pd.read_parquet(greedy_profile / "tokens.parquet")
    prompts = pd.read_parquet(greedy_profile / "prompts.parquet").set_index("prompt_id")
    return tokens, prompts


def load(path):
    return models.load_model(str(path), torch.device("cpu"), torch.float32)


def draft_name(tiny, which):
    return str(tiny[which]) if which in ("close", "far") else which


def safe_tau(top1: np.ndarray, wanted: float) -> float:
    """A τ near `wanted` half-way between two recorded probabilities, so that float noise between the
    profile's batched pass and a loop's cached steps (~1e-7) cannot put a probability on the other side."""
    values = np.unique(top1)
    i = int(np.searchsorted(values, wanted))
    tau = float((values[i - 1] + values[i]) / 2)
    assert min(abs(values - tau)) > 1e-5
    return tau


def records(tokens, name, prompt_id):
    rows = tokens[(tokens.draft == name) & (tokens.prompt_id == prompt_id)].sort_values("position")
    return rows.target_token.tolist(), rows.match.tolist(), rows.draft_top1_p.astype(np.float64).tolist()


def expected_blocks(blocks, n_tokens):
    """(start, accepted) of the simulated blocks as a real loop counts them: it never drafts the token at
    max_new_tokens (the target supplies it), where the simulation counts it accepted when it matched."""
    out = [(b.start, b.accepted) for b in blocks]
    if n_tokens == MAX_NEW:
        start, accepted = out[-1]
        out[-1] = (start, min(accepted, MAX_NEW - start - 1))
    return out


@pytest.mark.parametrize("which", MODEL_DRAFTS)
def test_speculative_loop_with_threshold_equals_simulation(report, tiny, which):
    tokens, prompts = report
    target = load(tiny["target"])
    spec = str(tiny[which]) if which in ("close", "far") else which
    draft = drafts.load_draft(spec, target, torch.device("cpu"), torch.float32)
    eos = models.eos_token_ids(target)
    name = draft_name(tiny, which)
    all_top1 = tokens[tokens.draft == name].draft_top1_p.to_numpy(np.float64)
    seen = {"confidence stop": 0, "stop at the mismatch": 0, "unseen steps": 0}
    for k_max, wanted in POLICIES:
        tau = safe_tau(all_top1, wanted)
        for prompt_id in prompts.index:
            prompt = [int(x) for x in prompts.loc[prompt_id, "prompt_tokens"]]
            expected, match, top1 = records(tokens, name, prompt_id)
            out = speculate.speculative_generate(target.model, speculate.proposer_for(draft), prompt, k=k_max,
                                                 max_new_tokens=MAX_NEW, eos_ids=eos, confidence_threshold=tau)
            assert out.tokens == expected, (which, prompt_id, k_max, tau)
            sim = simulate_policy(match, top1, k_max, tau)
            where = (which, prompt_id, k_max, tau)
            assert [(it.start, it.accepted) for it in out.iterations] == expected_blocks(sim, len(expected)), where
            for it, b in zip(out.iterations, sim):
                steps = len(it.proposals)  # the draft steps the real loop took
                assert min(b.steps_lo, it.budget) <= steps <= min(b.steps_hi, it.budget), (*where, it, b)
                if b.steps_lo == b.steps_hi:
                    assert steps == min(b.steps_lo, it.budget), (*where, it, b)
                if b.full and b.accepted < k_max and b.accepted < it.budget:
                    seen["confidence stop"] += 1
                    assert it.confident_stop
                elif not b.full and b.steps_lo == b.steps_hi:
                    seen["stop at the mismatch"] += 1
                elif b.steps_lo < b.steps_hi:
                    seen["unseen steps"] += 1
    assert min(seen.values()) >= 10, seen  # every case of the simulation was exercised, many times


def test_ngram_ignores_the_threshold(report, tiny):
    """An n-gram draft has no probabilities: with any τ it proposes as at fixed k, and the simulation
    (its records hold top-1 = 1 wherever it proposes) gives the same blocks."""
    tokens, prompts = report
    target = load(tiny["target"])
    draft = drafts.load_draft("ngram:2", target, torch.device("cpu"), torch.float32)
    eos = models.eos_token_ids(target)
    for prompt_id in prompts.index:
        prompt = [int(x) for x in prompts.loc[prompt_id, "prompt_tokens"]]
        expected, match, top1 = records(tokens, "ngram:2", prompt_id)
        out = speculate.speculative_generate(target.model, speculate.proposer_for(draft), prompt, k=4,
                                             max_new_tokens=MAX_NEW, eos_ids=eos, confidence_threshold=0.5)
        assert out.tokens == expected
        sim = simulate_policy(match, top1, 4, 0.5)
        assert [(it.start, it.accepted) for it in out.iterations] == expected_blocks(sim, len(expected))


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is not None,
                    reason="with scikit-learn installed transformers re-tunes the threshold between iterations")
@pytest.mark.parametrize("which", MODEL_DRAFTS)
def test_assisted_generation_with_threshold_equals_simulation(report, tiny, which):
    """transformers' `assistant_confidence_threshold` (fixed without scikit-learn): same output, and as
    many target forward passes as simulated iterations, prompt by prompt."""
    from specprof.engines.hf.drafts import early_exit_view

    tokens, prompts = report
    target = load(tiny["target"])
    assistant = early_exit_view(target.model, 1) if which == "early-exit:1" else load(tiny[which]).model
    name = draft_name(tiny, which)
    all_top1 = tokens[tokens.draft == name].draft_top1_p.to_numpy(np.float64)
    calls = []
    hook = target.model.register_forward_hook(lambda *a: calls.append(1))
    eos = models.eos_token_ids(target)
    differs = 0  # runs where the threshold changed the iteration count from fixed k = k_max: the check has power
    try:
        for k_max, wanted in POLICIES:
            tau = safe_tau(all_top1, wanted)
            config = assistant.generation_config
            config.num_assistant_tokens, config.num_assistant_tokens_schedule = k_max, "constant"
            config.assistant_confidence_threshold = tau
            for prompt_id in prompts.index:
                expected, match, top1 = records(tokens, name, prompt_id)
                prompt = torch.tensor([list(prompts.loc[prompt_id, "prompt_tokens"])])
                calls.clear()
                out = target.model.generate(prompt, attention_mask=torch.ones_like(prompt), assistant_model=assistant,
                                            max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos,
                                            pad_token_id=eos[0])
                assert out[0, prompt.shape[1]:].tolist() == expected, (which, prompt_id, k_max, tau)
                iterations = len(simulate_policy(match, top1, k_max, tau))
                assert len(calls) == iterations, (which, prompt_id, k_max, tau)
                differs += iterations != len(trace.simulate_blocks(match, k_max))
    finally:
        hook.remove()
    assert differs > 0, differs
