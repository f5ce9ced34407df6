"""`recommend --emit vllm-synthetic | sglang-synthetic | trtllm-synthetic`: benchmark serving at your acceptance.

Each engine can fake acceptance: the draft still runs, but the verifier accepts at a chosen rate,
so throughput and latency can be measured on the user's GPUs at the acceptance of *their* traffic
before any draft is trained or deployed. This module turns a report's figures into each engine's
setting, at the chosen draft and k (`engineplan.choose`) over the domain mix (ALL, or `--domain`):

- vLLM (checked against 0.32.0's config/speculative.py and v1/sample/rejection_sampler.py):
  `"rejection_sample_method": "synthetic"` with `"synthetic_acceptance_rates": [r_1 … r_k]`,
  where entry i (0-based) is the *unconditional* probability that the first i + 1 draft tokens
  of a draft step are all accepted (vLLM converts them to conditional rates itself); the list has
  k entries in [0, 1], non-increasing. specprof gives exactly vLLM's own per-position acceptance
  rate: num_accepted_tokens_per_pos[i] / num_drafts under vLLM's counting conventions
  (`conventions`): the first output token comes from prefill (no draft), a step whose proposer
  returned nothing is not a draft (so an n-gram's empty lookups are left out, as vLLM's metrics
  leave them out), and acceptances past EOS / max_tokens count. A served synthetic run should show
  these rates in its `/metrics` (`scripts/check_synthetic_vllm.py`).
- SGLang: `SGLANG_SIMULATE_ACC_LEN` = the mean acceptance length (1 + accepted / drafts, the
  bonus token included), with `SGLANG_SIMULATE_ACC_METHOD=match-expected`, beside the server's
  speculative flags.
- TensorRT-LLM: `TLLM_SPEC_DECODE_FORCE_NUM_ACCEPTED_TOKENS` = mean acceptance length − 1 (accepted
  draft tokens per step, the bonus token excluded). Older releases parse it as an integer: the
  line also gives the nearest whole number.

No torch here; nothing printed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

import numpy as np

from specprof.core.answers import engineplan
from specprof.core.answers.analysis import Analysis
from specprof.core.simulation import conventions
from specprof.core.vocabulary import ALL, SGLANG_SYNTHETIC, VLLM, VLLM_SYNTHETIC, SyntheticTarget

CONVENTION_NOTE = ("rates under vLLM's counting: first token from prefill (no draft), steps whose proposer "
                   "returned nothing are not drafts, acceptances past EOS / max_tokens counted")


def rates(counters: conventions.EngineCounters) -> list[float]:
    """vLLM's synthetic_acceptance_rates: per-position acceptance rate, r_i = drafts accepting ≥ i + 1 / drafts.
    Non-increasing by construction (a draft that accepted i + 2 tokens accepted i + 1); 0 without drafts."""
    out = [r if r == r else 0.0 for r in counters.per_position_acceptance_rate]
    for i in range(1, len(out)):  # guard against float noise only: the counts are already non-increasing
        out[i] = min(out[i], out[i - 1])
    return out


def mean_acceptance_length(counters: conventions.EngineCounters) -> float:
    mal = counters.mean_acceptance_length
    return mal if mal == mal else 1.0


def vllm_synthetic(choice: engineplan.Choice, target: str, counters: conventions.EngineCounters) -> str:
    """vLLM's --speculative-config with synthetic rejection sampling at the report's rates."""
    config = json.loads(engineplan.vllm_config(choice, target))
    config["rejection_sample_method"] = "synthetic"
    config["synthetic_acceptance_rates"] = rates(counters)
    return json.dumps(config)


def sglang_synthetic(choice: engineplan.Choice, target: str, counters: conventions.EngineCounters) -> str:
    """SGLang's environment and server flags that simulate the report's mean acceptance length."""
    env = f"SGLANG_SIMULATE_ACC_LEN={mean_acceptance_length(counters):.4g} SGLANG_SIMULATE_ACC_METHOD=match-expected"
    server = f"python -m sglang.launch_server --model-path {shlex.quote(target)}"
    return f"{env} {server} {engineplan.sglang_flags(choice, target)}"


def trtllm_synthetic(counters: conventions.EngineCounters) -> str:
    """TensorRT-LLM's forced accepted-token count: mean acceptance length − 1."""
    forced = mean_acceptance_length(counters) - 1.0
    return f"TLLM_SPEC_DECODE_FORCE_NUM_ACCEPTED_TOKENS={forced:.4g}  # integer-only releases: {round(forced)}"


def emit(engine: SyntheticTarget, choice: engineplan.Choice, target: str, counters: conventions.EngineCounters) -> str:
    if engine == VLLM_SYNTHETIC:
        return vllm_synthetic(choice, target, counters)
    if engine == SGLANG_SYNTHETIC:
        return sglang_synthetic(choice, target, counters)
    return trtllm_synthetic(counters)


def emission(engine: SyntheticTarget, analysis: Analysis, choice: engineplan.Choice, domains: Sequence[str],
             target: str) -> tuple[str, list[str]]:
    """The setting and its notes at the chosen draft and k, over the --domain mix (default ALL: the whole corpus)
    under vLLM's counting."""
    assert choice.draft is not None and choice.k is not None
    rec = conventions.load_records(analysis.path, choice.draft)
    mask = np.isin(rec.domains, list(domains)) if domains and ALL not in domains else None
    counters = conventions.counters_of(rec, choice.k, VLLM, mask)
    where = ", ".join(domains) if mask is not None else "the whole corpus (ALL)"
    warning = [choice.warning] if choice.warning else []
    return emit(engine, choice, target, counters), warning + notes(choice, counters, where)


def notes(choice: engineplan.Choice, counters: conventions.EngineCounters, where: str) -> list[str]:
    """What to know beside the emitted setting (for stderr)."""
    out = [f"acceptance of {choice.draft} at k = {choice.k} over {where}: mean acceptance length "
           f"{mean_acceptance_length(counters):.3f}, per-position rates "
           f"{', '.join(f'{r:.3f}' for r in rates(counters))} ({CONVENTION_NOTE})",
           "synthetic acceptance is for throughput and latency only: the accepted tokens are not checked, "
           "so never judge output quality on it"]
    if counters.note:
        out.append(counters.note)
    return out
