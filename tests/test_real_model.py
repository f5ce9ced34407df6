"""Exactness on the real embedded target: SmolLM2-135M with its own early exit at layer 26.

The profile's per-k iterations must equal transformers' assisted generation (target forward
passes counted) for k = 1..8, prompt by prompt.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from specprof.core.estimate import trace_drafts
from specprof.engines.hf import models
from specprof.engines.hf.drafts import early_exit_view

pytestmark = pytest.mark.realmodel
K_MAX = 8
MAX_NEW = 32


def test_smollm2_early_exit_matches_assisted_generation(tmp_path, cli):
    out = tmp_path / "r"
    r = cli("profile", "sample_prompts", "--draft", "early-exit:26", "--domain", "code", "--domain", "template",
            "--limit", 1, "--k-max", K_MAX, "--max-new-tokens", MAX_NEW, "--out", out)
    assert r.exit_code == 0, r.output
    tokens = pd.read_parquet(out / "tokens.parquet")
    prompts = pd.read_parquet(out / "prompts.parquet").set_index("prompt_id")
    (t,) = trace_drafts(tokens, K_MAX, exact=True)
    assert 0.3 < tokens["match"].mean() < 0.95  # deep enough to accept often, not always

    target = models.load_model(None, torch.device("cpu"), torch.float32)
    assistant = early_exit_view(target.model, 26)
    config = assistant.generation_config
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0
    eos = models.eos_token_ids(target)
    calls = []
    hook = target.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        for row, prompt_id in enumerate(t.prompt_ids):
            prompt = torch.tensor([list(prompts.loc[prompt_id, "prompt_tokens"])])
            expected = tokens[tokens.prompt_id == prompt_id].sort_values("position").target_token.tolist()
            for k in range(1, K_MAX + 1):
                config.num_assistant_tokens = k
                calls.clear()
                output = target.model.generate(
                    prompt, attention_mask=torch.ones_like(prompt), assistant_model=assistant,
                    max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos, pad_token_id=eos[0],
                )
                assert output[0, prompt.shape[1]:].tolist() == expected, (prompt_id, k)
                assert t.blocks.iterations[row, k - 1] == len(calls), (prompt_id, k)
    finally:
        hook.remove()
