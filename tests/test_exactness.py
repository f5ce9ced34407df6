"""The profile's per-k blocks equal real greedy speculative decoding, prompt by prompt.

Two independent checks on tiny random-init models: a plain speculative loop written here
(reference.py) and transformers' assisted generation (counting the target's forward passes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from reference import greedy_speculative, model_proposer, ngram_proposer

from specprof.core.simulation.traces import trace_drafts
from specprof.engines.hf import models
from specprof.engines.hf.drafts import early_exit_view

K_MAX = 8
MAX_NEW = 40


@pytest.fixture(scope="module")
def report(tiny, corpus, tmp_path_factory):
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("exact") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", tiny["far"],
            "--draft", "early-exit:1", "--draft", "ngram:2", "--k-max", K_MAX, "--max-new-tokens", MAX_NEW,
            "--batch-size", 3, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    tokens = pd.read_parquet(out / "tokens.parquet")
    prompts = pd.read_parquet(out / "prompts.parquet").set_index("prompt_id")
    traces = {t.draft: t for t in trace_drafts(tokens, K_MAX, exact=True)}
    return tokens, prompts, traces


def load(path):
    return models.load_model(str(path), torch.device("cpu"), torch.float32)


def continuation(tokens, draft, prompt_id):
    rows = tokens[(tokens.draft == draft) & (tokens.prompt_id == prompt_id)].sort_values("position")
    return rows.target_token.tolist()


def test_corpus_covers_both_endings(report):
    _, prompts, _ = report
    assert set(prompts.finish_reason) == {"eos", "length"}  # the checks below see EOS and the length limit


@pytest.mark.parametrize("which", ["close", "far", "early-exit:1", "ngram:2"])
def test_blocks_equal_reference_loop(report, tiny, which):
    tokens, prompts, traces = report
    target = load(tiny["target"])
    eos = set(models.eos_token_ids(target))
    if which == "early-exit:1":
        name, propose = which, model_proposer(early_exit_view(target.model, 1))
    elif which == "ngram:2":
        name, propose = which, ngram_proposer(2)
    else:
        name, propose = str(tiny[which]), model_proposer(load(tiny[which]).model)
    t = traces[name]
    for row, prompt_id in enumerate(t.prompt_ids):
        prompt = list(prompts.loc[prompt_id, "prompt_tokens"])
        expected_output = continuation(tokens, name, prompt_id)
        for k in range(1, K_MAX + 1):
            output, iterations = greedy_speculative(target.model, propose, prompt, k, MAX_NEW, eos)
            assert output == expected_output, (prompt_id, k)
            assert t.blocks.iterations[row, k - 1] == iterations, (which, prompt_id, k)


@pytest.mark.parametrize("which", ["close", "far", "early-exit:1"])
def test_blocks_equal_assisted_generation(report, tiny, which):
    tokens, prompts, traces = report
    target = load(tiny["target"])
    if which == "early-exit:1":
        name, assistant = which, early_exit_view(target.model, 1)
    else:
        name, assistant = str(tiny[which]), load(tiny[which]).model
    calls = []
    hook = target.model.register_forward_hook(lambda *a: calls.append(1))
    t = traces[name]
    checked = 0
    try:
        for row, prompt_id in enumerate(t.prompt_ids):
            prompt = torch.tensor([list(prompts.loc[prompt_id, "prompt_tokens"])])
            for k in range(1, K_MAX + 1):
                config = assistant.generation_config
                config.num_assistant_tokens = k
                config.num_assistant_tokens_schedule = "constant"
                config.assistant_confidence_threshold = 0.0
                calls.clear()
                out = target.model.generate(
                    prompt, attention_mask=torch.ones_like(prompt), assistant_model=assistant,
                    max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=models.eos_token_ids(target),
                    pad_token_id=models.eos_token_ids(target)[0],
                )
                assert out[0, prompt.shape[1]:].tolist() == continuation(tokens, name, prompt_id)
                assert t.blocks.iterations[row, k - 1] == len(calls), (which, prompt_id, k)
                checked += 1
    finally:
        hook.remove()
    assert checked == len(t.prompt_ids) * K_MAX


def test_draft_equal_to_target_accepts_everything(tiny, corpus, tmp_path, cli):
    out = tmp_path / "r"
    r = cli("profile", corpus, "--target", tiny["target"], "--draft", tiny["target"], "--k-max", 4,
            "--max-new-tokens", 20, "--out", out)
    assert r.exit_code == 0, r.output
    tokens = pd.read_parquet(out / "tokens.parquet")
    assert tokens["match"].all()
    (t,) = trace_drafts(tokens, 4, exact=True)
    for k in range(1, 5):
        # k + 1 tokens per iteration; only the last block may be cut short by the end of the sequence
        assert (t.blocks.iterations[:, k - 1] == np.ceil(t.n_tokens / (k + 1))).all()
    summary = pd.read_parquet(out / "summary.parquet")
    assert (summary["alpha"] == 1.0).all()


def test_sampling_draft_equal_to_target_accept_prob_is_one(tiny, corpus, tmp_path, cli):
    out = tmp_path / "r"
    r = cli("profile", corpus, "--target", tiny["target"], "--draft", tiny["target"], "--k-max", 3,
            "--max-new-tokens", 20, "--temperature", 0.8, "--top-p", 0.9, "--out", out)
    assert r.exit_code == 0, r.output
    tokens = pd.read_parquet(out / "tokens.parquet")
    np.testing.assert_allclose(tokens["accept_prob"], 1.0, atol=1e-5)
