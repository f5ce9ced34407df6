"""Exactness on the real embedded target: SmolLM2-135M with its own early exit at layer 26.

The profile's per-k iterations must equal transformers' assisted generation (target forward
passes counted) for k = 1..8, prompt by prompt (the shared `smollm2_report`: code and math).

Assisted generation runs about nine hundred forward passes per prompt over k = 1..8, so it checks
the first 16 of the report's 32 tokens: a greedy continuation does not depend on the token budget,
and the trace of its first N tokens is the profile's trace cut at N (the budget changes neither
tokens nor iterations), so this is exactly what a 16-token profile records. Blocks of every k still
occur (about ten per generation), and the outputs are compared token for token.
"""

from __future__ import annotations

import pandas as pd
import pytest
from reference import AssistedGeneration

from specprof.core.simulation.traces import trace_drafts
from specprof.engines.hf import models
from specprof.engines.hf.drafts import early_exit_view

pytestmark = pytest.mark.realmodel
K_MAX = 8
MAX_NEW = 16  # of the report's 32


def test_smollm2_early_exit_matches_assisted_generation(smollm2_report, smollm2):
    report_tokens = pd.read_parquet(smollm2_report / "tokens.parquet")
    assert 0.3 < report_tokens["match"].mean() < 0.95  # deep enough to accept often, not always
    tokens = report_tokens[report_tokens["position"] < MAX_NEW]  # a prompt that ended earlier keeps its end
    prompts = pd.read_parquet(smollm2_report / "prompts.parquet").set_index("prompt_id")
    (t,) = trace_drafts(tokens, K_MAX, exact=True)
    assert len(t.prompt_ids) == 2

    target = smollm2
    assistant = early_exit_view(target.model, 26)  # a view: its own generation config, the target's weights
    assisted = AssistedGeneration(target.model, assistant, models.eos_token_ids(target))
    try:
        for row, prompt_id in enumerate(t.prompt_ids):
            prompt = list(prompts.loc[prompt_id, "prompt_tokens"])
            expected = tokens[tokens.prompt_id == prompt_id].sort_values("position").target_token.tolist()
            for k in range(1, K_MAX + 1):
                output, passes = assisted.run(prompt, k, MAX_NEW)
                assert output == expected, (prompt_id, k)
                assert t.blocks.iterations[row, k - 1] == passes, (prompt_id, k)
    finally:
        assisted.close()
