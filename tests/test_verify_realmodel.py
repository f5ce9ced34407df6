"""`specprof verify` on the real embedded target: SmolLM2-135M with its own early exit at layer 26.

At T = 0 the live speculative loop must reproduce the profile exactly: identical outputs and
tokens/iter equal to the report's, for k = 1 and k = 4, on the shared `smollm2_report` (one thread, as
every real-model test: see conftest). Speed is not asserted: see benchmarks/.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.realmodel


def test_smollm2_early_exit_verify_is_exact(smollm2_report, cli):
    r = cli("verify", smollm2_report, "--k", 1, "--k", 4, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["identical_outputs"] is True and result["divergences"] == []
    assert {(row["domain"], row["k"]) for row in result["rows"]} == {
        (d, k) for d in ("code", "math", "ALL") for k in (1, 4)
    }
    for row in result["rows"]:
        assert row["measured_tokens_per_iter"] == row["predicted_tokens_per_iter"]
        assert row["measured_tokens_per_iter"] > 1.2  # the early exit is accepted often at layer 26
