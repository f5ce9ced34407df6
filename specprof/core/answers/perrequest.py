"""Request by request: the spread over prompts behind each pooled figure, and the share of requests that lose.

The pooled tokens/iter of a domain (Σ emitted / Σ iterations) weighs every prompt by its length, so
a few long completions that speculate well hide the requests where speculation loses. Here each
request (prompt) gets its own figures at the entry's k (its best k, or `--k`):

- tokens/iter (the mean acceptance length, bonus token included) under the report's convention:
  that prompt's emitted tokens / its iterations (`trace.BlockCounts`);
- its speedup under the cost model: its tokens/iter over the price of one of *its* iterations at
  k (`request_iteration_cost`: the same price as `costmodel.Costs.iteration`, taken over the
  prompt's own blocks: how many tokens its draft proposed, how often it accepted all k);
- a request loses when that speedup is below 1;
- with `--engine vllm`, the mean acceptance length vLLM would attach to the request's response
  (`--per-request-spec-decode-metrics`): 1 + its num_accepted_tokens / its num_drafts under vLLM's
  counting (`conventions.prompt_counters`); a request on which vLLM drafted nothing has none.

Spreads are the median, 10th and 90th percentiles over requests (numpy's linear interpolation).
Example: three requests with tokens/iter 1.0, 2.0, 3.0 → median 2.0, p10 1.2, p90 2.8.

No torch, no pandas; nothing printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specprof.core.answers.analysis import Analysis
from specprof.core.answers.engineplan import CounterCache
from specprof.core.jsonvalues import json_number
from specprof.core.pricing import costmodel
from specprof.core.pricing.estimate import Estimate
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError

CONVENTION = "specprof's own (transformers' assisted generation): every target pass is an iteration"


@dataclass(frozen=True)
class Spread:
    """Median, 10th and 90th percentile of a figure over requests (nan without any)."""

    n: int
    median: float
    p10: float
    p90: float

    def as_dict(self) -> dict[str, Any]:
        return {"n_requests": self.n, "median": json_number(self.median), "p10": json_number(self.p10),
                "p90": json_number(self.p90)}


def spread(values: np.ndarray) -> Spread:
    """`Spread` of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return Spread(0, float("nan"), float("nan"), float("nan"))
    p10, median, p90 = np.percentile(v, [10, 50, 90])
    return Spread(int(v.size), float(median), float(p10), float(p90))


@dataclass(frozen=True)
class PerRequest:
    """One draft × domain at k: each request's figures, in the trace's prompt order."""

    draft: str
    domain: str
    k: int
    prompt_ids: np.ndarray  # [n] str
    tokens_per_iter: np.ndarray  # [n] nan for a prompt without iterations
    speedup: np.ndarray  # [n]
    engine_mal: np.ndarray | None = None  # [n] vLLM's mean acceptance length per request (nan: no drafts)

    @property
    def losing(self) -> np.ndarray:
        """[n] bool: speculation is slower than the target alone on this request."""
        return np.nan_to_num(self.speedup, nan=np.inf) < 1.0

    @property
    def losing_share(self) -> float:
        finite = np.isfinite(self.speedup)
        return float(self.losing[finite].mean()) if finite.any() else float("nan")

    def line(self) -> str:
        """One compact line for recommend's text output."""
        t = spread(self.tokens_per_iter)
        lose = int(self.losing.sum())
        return (f"{self.draft}  {self.domain}  k={self.k}: tokens/iter per request median {t.median:.2f} "
                f"(p10 {t.p10:.2f}, p90 {t.p90:.2f}); speculation loses on {lose} of {t.n} requests "
                f"({100 * self.losing_share:.0f}%)")


def request_iteration_cost(costs: costmodel.Costs, histogram: np.ndarray, proposed: np.ndarray, k: int) -> np.ndarray:
    """[n] one iteration's price at k in target steps for each request, from its blocks at k: `histogram`
    and `proposed` [n, k + 1] (blocks that accepted / proposed exactly m tokens). As `Costs.iteration`:
    E[m·c + v_m] over its blocks' proposals (v_0 = 1), plus its share of fully accepted blocks × t_C;
    a request without blocks is priced at k·c + v_k."""
    by_m = np.concatenate([[1.0], costs.verify_cost])[: k + 1]  # v_m for m = 0..k proposals
    m = np.arange(k + 1)
    blocks = proposed.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (proposed @ (m * costs.cost_ratio + by_m)) / blocks
        full = np.nan_to_num(histogram[:, k] / histogram.sum(axis=1))
    mean = np.where(blocks > 0, mean, k * costs.cost_ratio + costs.verify_cost[k - 1])
    return mean + full * costs.catchup_ratio


def per_request(analysis: Analysis, estimates: Sequence[Estimate], k: int | None = None) -> list[PerRequest]:
    """`PerRequest` for each estimate (draft × domain, ALL included) at its best k, or at `k`."""
    out = []
    for e in estimates:
        kk = e.best_k if k is None else k
        if not 1 <= kk <= e.k_max:
            raise SpecprofError(f"--k {kk}: the report covers k = 1..{e.k_max}")
        t = analysis.trace(e.draft)
        if e.domain != ALL:
            t = t.select(t.domains == e.domain)
        b = t.blocks
        i = kk - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            tpi = np.where(b.iterations[:, i] > 0, b.emitted[:, i] / b.iterations[:, i], np.nan)
        cost = request_iteration_cost(e.costs, b.histogram[:, i, : kk + 1], b.proposed[:, i, : kk + 1], kk)
        out.append(PerRequest(e.draft, e.domain, kk, t.prompt_ids, tpi, tpi / cost))
    return out


def with_engine(rows: Sequence[PerRequest], per_prompt: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]
                ) -> list[PerRequest]:
    """`rows` with vLLM's per-request mean acceptance length added; `per_prompt[(draft, k)]` is (prompt ids,
    `conventions.prompt_counters` table) at the row's k."""
    out = []
    for r in rows:
        ids, table = per_prompt[(r.draft, r.k)]
        index = {p: i for i, p in enumerate(ids.tolist())}
        at = np.array([index[str(p)] for p in r.prompt_ids.tolist()], dtype=np.int64)
        drafts, accepted = table[at, 0].astype(np.float64), table[at, 2].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mal = np.where(drafts > 0, 1.0 + accepted / drafts, np.nan)
        out.append(PerRequest(r.draft, r.domain, r.k, r.prompt_ids, r.tokens_per_iter, r.speedup, mal))
    return out


def by_request(analysis: Analysis, estimates: Sequence[Estimate], k: int | None = None,
               counters: CounterCache | None = None) -> list[PerRequest]:
    """`per_request`, with vLLM's per-request mean acceptance length added when its counters were asked for
    (`counters`: recommend --engine's cache, whose per-prompt tables it fills and reads)."""
    rows = per_request(analysis, estimates, k)
    if counters is None:
        return rows
    for draft, kk in {(r.draft, r.k) for r in rows}:
        counters.counters(draft, ALL, kk)  # fills the per-prompt table
    return with_engine(rows, {key: (counters.records[key[0]].prompt_ids, table)
                              for key, (table, _) in counters.per_prompt.items()})


def per_request_json(rows: Sequence[PerRequest]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        entry = {
            "draft": r.draft,
            "domain": r.domain,
            "k": r.k,
            "tokens_per_iter": spread(r.tokens_per_iter).as_dict(),
            "speedup": spread(r.speedup).as_dict(),
            "losing_requests": int(r.losing.sum()),
            "losing_share": json_number(r.losing_share),
        }
        if r.engine_mal is not None:
            entry["vllm_mean_acceptance_length"] = spread(r.engine_mal).as_dict()
        out.append(entry)
    return out


def per_request_note() -> dict[str, str]:
    return {
        "convention": CONVENTION,
        "speedup": "each request's tokens/iter over the price of one of its iterations at k (its own blocks)",
        "losing": "a request loses when its speedup is below 1",
        "spread": "median, 10th and 90th percentile over requests (linear interpolation)",
    }
