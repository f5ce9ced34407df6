"""`recommend --engine vllm` on a sampled report: vLLM's expected counters with intervals, per mode.

For each recommendation (draft × domain, ALL included) at its best k (or `--k`): the expected
num_drafts, num_draft_tokens, num_accepted_tokens and num_accepted_tokens_per_pos per prompt
(`core/simulation/sampled_conventions`, exact in expectation), summed over the domain's prompts, and
the per-position acceptance rates and mean acceptance length as ratios of sums with 95% bootstrap
intervals over prompts (`core/pricing/stats`, the same resamples as every other figure).
`better_mode` says which of vLLM's `draft_sample_method`s accepts more on the user's traffic, and
`with_draft_sampling` the key `--emit vllm` adds to the config when the choice matters.

No torch here; nothing printed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specprof.core.answers.analysis import Analysis
from specprof.core.answers.engineplan import Choice
from specprof.core.jsonvalues import json_number
from specprof.core.pricing import stats
from specprof.core.pricing.estimate import Estimate
from specprof.core.simulation import kinds
from specprof.core.simulation import sampled_conventions as sc
from specprof.core.vocabulary import ALL, DRAFT_SAMPLING
from specprof.errors import SpecprofError


@dataclass(frozen=True)
class SampledCounters:
    """vLLM's counters expected over the domain's prompts at T > 0, with 95% intervals over prompts."""

    mode: str  # draft_sample_method (GREEDY for model-free drafts: they have no probabilities)
    n_prompts: int
    num_drafts: float
    num_draft_tokens: float
    num_accepted_tokens: float
    num_accepted_tokens_per_pos: tuple[float, ...]  # [k]
    per_position_acceptance_rate: tuple[tuple[float, float, float], ...]  # [k] (point, lo, hi)
    mean_acceptance_length: tuple[float, float, float]  # 1 + accepted / drafts, bonus token included
    note: str = ""


class SampledCache:
    """Per draft and mode its records, per (draft, mode, k) its per-prompt expected counters."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.records: dict[tuple[str, str], sc.SampledRecords] = {}
        self.tables: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}

    def counters(self, draft: str, domain: str, k: int, mode: str) -> SampledCounters:
        if (draft, mode) not in self.records:
            self.records[(draft, mode)] = sc.load_sampled(self.analysis.path, draft, mode)
        rec = self.records[(draft, mode)]
        if (draft, mode, k) not in self.tables:
            self.tables[(draft, mode, k)] = sc.prompt_expected(rec, k)
        table, short = self.tables[(draft, mode, k)]
        mask = np.ones(len(table), dtype=bool) if domain == ALL else rec.domains == domain
        return summarize(table[mask], short[mask], rec.mode, domain)


def summarize(table: np.ndarray, short: np.ndarray, mode: str, domain: str) -> SampledCounters:
    """Sum per-prompt expected counters [n, 3 + k] and bootstrap the rates over prompts."""
    total = table.sum(axis=0)
    k = table.shape[1] - 3
    numerators = np.concatenate([table[:, 3:], table[:, 2:3]], axis=1)  # per position, then all accepted
    denominators = np.repeat(table[:, :1], k + 1, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = numerators.sum(axis=0) / denominators.sum(axis=0)
    weights = stats.draw_weights(stats.SEED, f"sampled-counters:{domain}", len(table))
    lo, hi = stats.percentile_interval(stats.ratio_of_sums(weights, numerators, denominators), point)
    rates = tuple((float(point[i]), float(lo[i]), float(hi[i])) for i in range(k))
    notes = [sc.EXACT_NOTE]
    if short.any():
        notes.append("some blocks reach past the recorded tokens: the accepted counts there are lower bounds")
    return SampledCounters(mode, len(table), float(total[0]), float(total[1]), float(total[2]),
                           tuple(float(v) for v in total[3:]), rates,
                           (1.0 + float(point[k]), 1.0 + float(lo[k]), 1.0 + float(hi[k])), "; ".join(notes))


def sampled_entries(analysis: Analysis, estimates: Sequence[Estimate], mode: str,
                    k: int | None = None) -> list[tuple[int, SampledCounters]]:
    """(k, expected counters) for each estimate: at its best k, or at `k`."""
    if mode not in DRAFT_SAMPLING:
        raise SpecprofError(f"--draft-sampling {mode}: unknown (use greedy or probabilistic)")
    if k is not None:
        k_max = min(t.blocks.k_max for t in analysis.traces)
        if not 1 <= k <= k_max:
            raise SpecprofError(f"--k {k}: the report covers k = 1..{k_max}")
    cache = SampledCache(analysis)
    return [(e.best_k if k is None else k, cache.counters(e.draft, e.domain, e.best_k if k is None else k, mode))
            for e in estimates]


def better_mode(analysis: Analysis, draft: str, domain: str, k: int) -> tuple[str, dict[str, SampledCounters]]:
    """Which draft_sample_method gives the longer mean acceptance length for `draft` at k, and both figures."""
    cache = SampledCache(analysis)
    both = {mode: cache.counters(draft, domain, k, mode) for mode in DRAFT_SAMPLING}
    best = max(DRAFT_SAMPLING, key=lambda m: both[m].mean_acceptance_length[0])
    return best, both


def sampled_json(c: SampledCounters) -> dict[str, Any]:
    return {
        "draft_sample_method": c.mode,
        "expected_engine_counters": {
            "num_drafts": json_number(c.num_drafts),
            "num_draft_tokens": json_number(c.num_draft_tokens),
            "num_accepted_tokens": json_number(c.num_accepted_tokens),
            "num_accepted_tokens_per_pos": [json_number(v) for v in c.num_accepted_tokens_per_pos],
        },
        "mean_acceptance_length": [json_number(v) for v in c.mean_acceptance_length],
        "per_position_acceptance_rate": [[json_number(v) for v in r] for r in c.per_position_acceptance_rate],
        "engine_counters_exact": False,
        "engine_counters_note": c.note,
    }


def with_draft_sampling(config: str, analysis: Analysis, choice: Choice, domains: Sequence[str],
                        asked: str | None) -> tuple[str, str | None, str | None]:
    """`--emit vllm` at T > 0: the config with `draft_sample_method` when the draft has probabilities (a model
    draft): the asked mode, else the one that accepts more on this traffic. Returns (config, the note comparing
    both modes, the method written); a model-free draft's config is unchanged (vLLM's greedy rule whatever
    the setting): (config, None, None)."""
    if choice.draft is None or choice.k is None or kinds.kind(choice.kind).model_free:
        return config, None, None
    where = domains[0] if len(domains) == 1 else ALL
    best, both = better_mode(analysis, choice.draft, where, choice.k)
    figures = ", ".join(f"{m} {both[m].mean_acceptance_length[0]:.3f} "
                        f"[{both[m].mean_acceptance_length[1]:.3f}, {both[m].mean_acceptance_length[2]:.3f}]"
                        for m in both)
    note = f"vLLM's mean acceptance length at T > 0, k = {choice.k}: {figures}; {best} pays more on this traffic"
    method = asked or best
    return json.dumps({**json.loads(config), "draft_sample_method": method}), note, method
