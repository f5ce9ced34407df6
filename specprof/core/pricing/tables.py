"""The report's summary.parquet and blocks.parquet rows, from every draft's `Estimate`s."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from specprof.core.pricing.estimate import estimate_all
from specprof.core.pricing.timings import Timings
from specprof.core.simulation.traces import DraftTrace


def summarize(
    traces: Sequence[DraftTrace], timings: Timings | None, cost_ratio: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`summary.parquet` (with bootstrap intervals and each k's decision) and `blocks.parquet` rows."""
    summary_rows, block_rows = [], []
    for e in estimate_all(traces, timings, cost_ratio):
        for ki in range(e.k_max):
            k = ki + 1
            summary_rows.append(
                {
                    "draft": e.draft,
                    "domain": e.domain,
                    "k": k,
                    "n_prompts": e.n_prompts,
                    "n_tokens": e.n_tokens,
                    "alpha": e.alpha,
                    "alpha_lo": e.alpha_lo,
                    "alpha_hi": e.alpha_hi,
                    "tokens_per_iter": e.tokens_per_iter[ki],
                    "draft_acceptance_rate": e.draft_acceptance_rate[ki],
                    "speedup_iid": e.speedup_iid[ki],
                    "speedup": e.speedup[ki],
                    "speedup_lo": e.speedup_lo[ki],
                    "speedup_hi": e.speedup_hi[ki],
                    "cost_ratio": e.costs.cost_ratio,
                    "decision": e.verdicts[ki].decision,
                    "note": e.why(k),
                }
            )
            for accepted in range(k + 1):
                block_rows.append(
                    {"draft": e.draft, "domain": e.domain, "k": k, "accepted": accepted,
                     "iterations": float(e.histogram[ki, accepted])}
                )
    return pd.DataFrame(summary_rows), pd.DataFrame(block_rows)
