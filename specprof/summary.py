"""From token records to per-prompt block statistics and the report's summary and blocks tables.

`trace_drafts` groups `tokens.parquet` rows by draft and prompt and runs `trace` on them: exact
blocks at T = 0, the chain estimate at T > 0. `summarize` pools the per-prompt figures per domain
(and "ALL") for every k and prices them with `costmodel`. Pooling is over tokens and iterations,
not an average of per-prompt ratios: tokens_per_iter = Σ emitted / Σ iterations.

Intervals and decisions come from `stats` (bootstrap over prompts). No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from specprof import costmodel, trace
from specprof.errors import SpecprofError

ALL = "ALL"


@dataclass(frozen=True)
class Timings:
    """Forward times measured by `profile` on its own hardware (DESIGN.md §3)."""

    target_forward_s: tuple[float, ...]  # [n - 1]: target verifying n = 1..k_max+1 tokens with a KV cache
    draft_step_s: dict[str, float]  # per draft: seconds per proposed token
    context_tokens: int  # the context length the times were taken at
    # per draft: extra seconds of its first step after a fully accepted block (2 tokens instead of 1);
    # absent from older reports (then 0)
    draft_catchup_s: dict[str, float] = field(default_factory=dict)

    def cost_ratio(self, draft: str) -> float:
        return self.draft_step_s[draft] / self.target_forward_s[0]

    def as_dict(self) -> dict:
        return {
            "target_forward_s": list(self.target_forward_s),
            "draft_step_s": dict(self.draft_step_s),
            "context_tokens": self.context_tokens,
            "draft_catchup_s": dict(self.draft_catchup_s),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Timings:
        return cls(tuple(d["target_forward_s"]), dict(d["draft_step_s"]), int(d["context_tokens"]),
                   dict(d.get("draft_catchup_s", {})))


@dataclass(frozen=True)
class DraftTrace:
    """Per-prompt sufficient statistics of one draft: everything the summary and the bootstrap need."""

    draft: str
    prompt_ids: np.ndarray  # [n_prompts] str
    domains: np.ndarray  # [n_prompts] str
    n_tokens: np.ndarray  # [n_prompts] continuation length
    accept_sum: np.ndarray  # [n_prompts] Σ accept_prob over the continuation
    blocks: trace.BlockCounts  # [n_prompts, k_max, ...]

    def select(self, mask: np.ndarray) -> DraftTrace:
        b = self.blocks
        return DraftTrace(
            self.draft,
            self.prompt_ids[mask],
            self.domains[mask],
            self.n_tokens[mask],
            self.accept_sum[mask],
            trace.BlockCounts(b.iterations[mask], b.accepted[mask], b.emitted[mask], b.histogram[mask]),
        )


def trace_drafts(tokens: pd.DataFrame, k_max: int, exact: bool) -> list[DraftTrace]:
    """Block statistics of every draft in a tokens table, prompts in first-seen order."""
    if k_max < 1:
        raise SpecprofError(f"--k-max {k_max}: must be ≥ 1")
    traces = []
    for draft, rows in tokens.groupby("draft", sort=False):
        prompt_codes, prompt_ids = pd.factorize(rows["prompt_id"], sort=False)
        n_prompts = len(prompt_ids)
        positions = rows["position"].to_numpy(np.int64)
        n_tokens = np.zeros(n_prompts, dtype=np.int64)
        np.maximum.at(n_tokens, prompt_codes, positions + 1)
        if len(rows) != n_tokens.sum():
            raise SpecprofError(f"tokens.parquet: draft {draft!r} has missing or repeated positions")
        values = rows["match"].to_numpy(np.float64) if exact else rows["accept_prob"].to_numpy(np.float64)
        padded = np.zeros((n_prompts, int(n_tokens.max(initial=0))))
        padded[prompt_codes, positions] = values
        accept_sum = np.bincount(prompt_codes, rows["accept_prob"].to_numpy(np.float64), minlength=n_prompts)
        domains = rows["domain"].to_numpy()[np.unique(prompt_codes, return_index=True)[1]]
        counts = (
            trace.count_blocks_exact(padded, n_tokens, k_max)
            if exact
            else trace.count_blocks_expected(padded, n_tokens, k_max)
        )
        traces.append(DraftTrace(str(draft), np.asarray(prompt_ids), domains, n_tokens, accept_sum, counts))
    return traces


def domain_groups(t: DraftTrace, domains: Sequence[str] = ()) -> list[tuple[str, np.ndarray]]:
    """(domain, prompt mask) for each domain in first-seen order, then ALL (unless filtered)."""
    names = list(dict.fromkeys(t.domains.tolist()))
    if domains:
        names = [d for d in names if d in set(domains)]
    groups = [(d, t.domains == d) for d in names]
    if not domains or ALL in domains:
        groups.append((ALL, np.ones(len(t.domains), dtype=bool)))
    return groups


@dataclass(frozen=True)
class Pooled:
    """Pooled figures of a set of prompts for k = 1..k_max (arrays indexed k - 1)."""

    n_prompts: int
    n_tokens: int
    alpha: float
    tokens_per_iter: np.ndarray  # [k_max]
    draft_acceptance_rate: np.ndarray  # [k_max]
    histogram: np.ndarray  # [k_max, k_max + 1]


def pool(t: DraftTrace) -> Pooled:
    b = t.blocks
    iterations = b.iterations.sum(0)
    k = np.arange(1, b.k_max + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return Pooled(
            n_prompts=len(t.n_tokens),
            n_tokens=int(t.n_tokens.sum()),
            alpha=float(t.accept_sum.sum() / t.n_tokens.sum()) if t.n_tokens.sum() else float("nan"),
            tokens_per_iter=b.emitted.sum(0) / iterations,
            draft_acceptance_rate=b.accepted.sum(0) / (k * iterations),
            histogram=b.histogram.sum(0),
        )


def full_fraction(histogram: np.ndarray) -> np.ndarray:
    """[k_max] the fraction of iterations at k that accepted all k proposals, from a [k_max, k_max + 1] histogram."""
    k_max = histogram.shape[0]
    full = histogram[np.arange(k_max), np.arange(1, k_max + 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(full / histogram.sum(axis=1))


def speedups(
    tokens_per_iter: np.ndarray, draft: str, timings: Timings | None, cost_ratio: float | None,
    full: np.ndarray | None = None,
) -> np.ndarray:
    """Empirical speedup for k = 1..k_max: measured costs, or a flat verification cost at `cost_ratio`.

    `full` ([k_max], from `full_fraction`) prices the draft's catch-up step after fully accepted blocks.
    """
    ks = range(1, len(tokens_per_iter) + 1)
    if cost_ratio is not None:
        return np.array([costmodel.speedup_from_tokens(e, k, cost_ratio) for e, k in zip(tokens_per_iter, ks)])
    if timings is None:
        raise SpecprofError("the report has no timings; pass --cost-ratio")
    full = np.zeros(len(tokens_per_iter)) if full is None else full
    catchup = timings.draft_catchup_s.get(draft, 0.0)
    return np.array(
        [
            costmodel.speedup_measured(e, k, timings.draft_step_s[draft], timings.target_forward_s, f, catchup)
            for e, k, f in zip(tokens_per_iter, ks, full)
        ]
    )


def summarize(
    traces: Sequence[DraftTrace], timings: Timings | None, cost_ratio: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The point estimates of `summary.parquet` and `blocks.parquet` (intervals equal the point)."""
    summary_rows, block_rows = [], []
    for t in traces:
        c = cost_ratio if cost_ratio is not None else timings.cost_ratio(t.draft) if timings else float("nan")
        for domain, mask in domain_groups(t):
            p = pool(t.select(mask))
            s = speedups(p.tokens_per_iter, t.draft, timings, cost_ratio, full_fraction(p.histogram))
            for ki, k in enumerate(range(1, t.blocks.k_max + 1)):
                iid = costmodel.speedup_iid(min(max(p.alpha, 0.0), 1.0), k, c)
                summary_rows.append(
                    {
                        "draft": t.draft,
                        "domain": domain,
                        "k": k,
                        "n_prompts": p.n_prompts,
                        "n_tokens": p.n_tokens,
                        "alpha": p.alpha,
                        "alpha_lo": p.alpha,
                        "alpha_hi": p.alpha,
                        "tokens_per_iter": p.tokens_per_iter[ki],
                        "draft_acceptance_rate": p.draft_acceptance_rate[ki],
                        "speedup_iid": iid,
                        "speedup": s[ki],
                        "speedup_lo": s[ki],
                        "speedup_hi": s[ki],
                        "cost_ratio": c,
                        "decision": "",
                    }
                )
                for accepted in range(k + 1):
                    block_rows.append(
                        {
                            "draft": t.draft,
                            "domain": domain,
                            "k": k,
                            "accepted": accepted,
                            "iterations": float(p.histogram[ki, accepted]),
                        }
                    )
    return pd.DataFrame(summary_rows), pd.DataFrame(block_rows)
