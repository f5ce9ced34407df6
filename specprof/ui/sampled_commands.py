"""`recommend --engine vllm` and `--emit vllm` on a sampled report (T > 0): parse done, answer, render.

The figures come from `core/answers/sampled_plan`; this module only picks them and prints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from specprof.core.answers import decide, sampled_plan
from specprof.core.answers.decide import Analysis
from specprof.core.vocabulary import ALL
from specprof.ui.app import print_json, stderr, stdout


def recommend_sampled(analysis: Analysis, cost_ratio: float | None, domains: Sequence[str], min_speedup: float,
                      k: int | None, mode: str, as_json: bool) -> None:
    """vLLM's expected counters (draft_sample_method `mode`) at each best k or at `k`, with intervals."""
    estimates = decide.estimates(analysis, cost_ratio, domains, min_speedup)
    entries = sampled_plan.sampled_entries(analysis, estimates, mode, k)
    if as_json:
        print_json({
            "report": str(analysis.path),
            "min_speedup": min_speedup,
            "exact": analysis.exact,
            "draft_sampling": mode,
            "recommendations": sampled_plan.with_sampled(decide.recommendations_json(estimates), entries),
        })
        return
    from specprof.ui.sampledview import sampled_view

    stdout.print(sampled_view(estimates, entries, k is not None))


def with_draft_sampling(config: str, analysis: Analysis, choice, domains: Sequence[str], asked: str | None) -> str:
    """The vLLM config with `draft_sample_method` when the draft has probabilities (a model draft): the
    asked mode, else the one that accepts more on this traffic; the comparison goes to stderr."""
    if choice.draft is None or choice.kind in ("ngram", "vllm-ngram", "prompt-lookup"):
        return config  # model-free drafts have no probabilities: vLLM's greedy rule whatever the setting
    where = domains[0] if len(domains) == 1 else ALL
    best, both = sampled_plan.better_mode(analysis, choice.draft, where, choice.k)
    figures = ", ".join(f"{m} {both[m].mean_acceptance_length[0]:.3f} "
                        f"[{both[m].mean_acceptance_length[1]:.3f}, {both[m].mean_acceptance_length[2]:.3f}]"
                        for m in both)
    stderr.print(f"note: vLLM's mean acceptance length at T > 0, k = {choice.k}: {figures}; {best} pays more "
                 "on this traffic")
    out = json.loads(config)
    out["draft_sample_method"] = asked or best
    return json.dumps(out)
