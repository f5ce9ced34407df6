"""From token records to per-prompt block statistics and the report's summary and blocks tables.

`trace_drafts` groups `tokens.parquet` rows by draft and prompt and runs `trace` on them: exact
blocks at T = 0, the chain estimate at T > 0. `summarize` pools the per-prompt figures per domain
(and "ALL") for every k and prices them with `costmodel`. Pooling is over tokens and iterations,
not an average of per-prompt ratios: tokens_per_iter = Σ emitted / Σ iterations.

`estimate` turns one draft × domain into an `Estimate`: the pooled figures for every k, their
bootstrap intervals (resampled sums per prompt, `stats`), the price of each k (`costmodel.Costs`),
the best k and the decision at each k. `profile`, `recommend`, `gate` and `compare` all go through
it, so the same report gives the same figures everywhere. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from specprof.core import blockdraft, costmodel, stats, trace
from specprof.core.ngram import NO_PROPOSAL
from specprof.errors import SpecprofError

ALL = "ALL"


@dataclass(frozen=True)
class Timings:
    """Forward times measured by `profile` on its own hardware (docs/design.md §2)."""

    target_forward_s: tuple[float, ...]  # [n - 1]: target verifying n = 1..k_max+1 tokens with a KV cache
    draft_step_s: dict[str, float]  # per draft: seconds per proposed token
    context_tokens: int  # the context length the times were taken at
    # per draft: extra seconds of its first step after a fully accepted block (2 tokens instead of 1);
    # absent from older reports (then 0)
    draft_catchup_s: dict[str, float] = field(default_factory=dict)
    # the same figures at each measured serving batch size (`core/batchcost.py`), batch 1 included and
    # equal to the figures above; empty in reports measured at batch 1 only (every report before them)
    by_batch_size: tuple[Timings, ...] = ()
    batch_size: int = 1  # the sequences verified together when these times were taken

    def cost_ratio(self, draft: str) -> float:
        return self.draft_step_s[draft] / self.target_forward_s[0]

    def as_dict(self) -> dict:
        return {
            "target_forward_s": list(self.target_forward_s),
            "draft_step_s": dict(self.draft_step_s),
            "context_tokens": self.context_tokens,
            "draft_catchup_s": dict(self.draft_catchup_s),
        } | ({"by_batch_size": [
            {"batch_size": t.batch_size, "target_forward_s": list(t.target_forward_s),
             "draft_step_s": dict(t.draft_step_s), "draft_catchup_s": dict(t.draft_catchup_s)}
            for t in self.by_batch_size
        ]} if self.by_batch_size else {})

    @classmethod
    def from_dict(cls, d: dict) -> Timings:
        by_batch = tuple(
            cls(tuple(b["target_forward_s"]), dict(b["draft_step_s"]), int(d["context_tokens"]),
                dict(b.get("draft_catchup_s", {})), batch_size=int(b["batch_size"]))
            for b in d.get("by_batch_size") or ()
        )
        return cls(tuple(d["target_forward_s"]), dict(d["draft_step_s"]), int(d["context_tokens"]),
                   dict(d.get("draft_catchup_s", {})), by_batch)


def costs_for(draft: str, timings: Timings | None, cost_ratio: float | None, k_max: int) -> costmodel.Costs:
    """Measured costs from the run's timings, or a flat verification cost at `cost_ratio` (`--cost-ratio`)."""
    if cost_ratio is not None:
        return costmodel.Costs.flat(cost_ratio, k_max)
    if timings is None or draft not in timings.draft_step_s:
        raise SpecprofError(f"the report has no timings for draft {draft!r}; pass --cost-ratio")
    if len(timings.target_forward_s) < k_max + 1:
        raise SpecprofError(
            f"--k-max {k_max}: the report's timings cover k ≤ {len(timings.target_forward_s) - 1}; "
            "pass --cost-ratio to plan for longer drafts"
        )
    return costmodel.Costs.from_times(
        timings.draft_step_s[draft], timings.target_forward_s, k_max, timings.draft_catchup_s.get(draft, 0.0)
    )


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
            trace.BlockCounts(b.iterations[mask], b.accepted[mask], b.emitted[mask], b.histogram[mask],
                              b.proposed[mask]),
        )


def trace_drafts(
    tokens: pd.DataFrame, k_max: int, exact: bool, runs: Mapping[str, blockdraft.StartRuns] | None = None
) -> list[DraftTrace]:
    """Block statistics of every draft in a tokens table, prompts in first-seen order.

    `runs` holds the block-dependent drafts' simulation from every block start (`blockdraft`): at
    T = 0 their blocks come from it. At T > 0 they follow the chain estimate on the first proposal
    of each position, like every draft (an estimate).
    """
    if k_max < 1:
        raise SpecprofError(f"--k-max {k_max}: must be ≥ 1")
    traces = []
    for draft, rows in tokens.groupby("draft", sort=False, observed=True):
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
        no_proposal = np.zeros(padded.shape, dtype=bool)
        no_proposal[prompt_codes, positions] = rows["draft_token"].to_numpy() == NO_PROPOSAL
        accept_sum = np.bincount(prompt_codes, rows["accept_prob"].to_numpy(np.float64), minlength=n_prompts)
        domains = rows["domain"].to_numpy()[np.unique(prompt_codes, return_index=True)[1]]
        starts: dict[str, np.ndarray] = {}
        if exact and runs and str(draft) in runs:
            r = runs[str(draft)]
            at = r.rows([str(p) for p in prompt_ids])
            width = padded.shape[1]
            starts = {"start_accepted": r.accepted[at, :width], "start_proposed": r.proposed[at, :width]}
        counts = (
            trace.count_blocks_exact(padded, n_tokens, k_max, no_proposal, **starts)
            if exact
            else trace.count_blocks_expected(padded, n_tokens, k_max, no_proposal)
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
    proposed: np.ndarray  # [k_max, k_max + 1] iterations in which the draft proposed exactly n tokens


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
            proposed=b.proposed.sum(0),
        )


def full_fraction(histogram: np.ndarray) -> np.ndarray:
    """[k_max] the fraction of iterations at k that accepted all k proposals, from a [k_max, k_max + 1] histogram."""
    k_max = histogram.shape[0]
    full = histogram[np.arange(k_max), np.arange(1, k_max + 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(full / histogram.sum(axis=1))


def priced(costs: costmodel.Costs, p: Pooled) -> costmodel.Costs:
    """`costs` for these blocks: how often all k proposals were accepted, and how many were proposed."""
    with np.errstate(invalid="ignore", divide="ignore"):
        proposed = np.nan_to_num(p.proposed / p.proposed.sum(axis=1, keepdims=True))
    return costs.for_blocks(full_fraction(p.histogram), proposed)


def prompt_sums(t: DraftTrace) -> np.ndarray:
    """[n_prompts, 2 + 2·k_max]: numerators (Σ accept_prob, emitted per k), then denominators (tokens,
    iterations per k). Every figure is a ratio of column sums, so these are all a bootstrap needs."""
    b = t.blocks
    return np.column_stack([t.accept_sum, b.emitted, t.n_tokens, b.iterations])


def split_ratios(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """α [B] and tokens/iter [B, k_max] from resampled sums [B, 2 + 2·k_max]."""
    m = sums.shape[1] // 2
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = sums[:, :m] / sums[:, m:]
    return ratios[:, 0], ratios[:, 1:]


def draw_weights(seed: int, name: str, n_prompts: int, n_resamples: int, cache: dict | None) -> np.ndarray:
    """Resample weights for `n_prompts` prompts seeded by (seed, name), drawn once per cache."""
    key = (seed, name, n_prompts, n_resamples)
    if cache is None or key not in cache:
        weights = stats.resample_weights(n_prompts, n_resamples, stats.rng_for(seed, name))
        if cache is None:
            return weights
        cache[key] = weights
    return cache[key]


def resampled_sums(
    t: DraftTrace, seed: int = stats.SEED, n_resamples: int = stats.N_RESAMPLES, cache: dict | None = None,
    values: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """[B, 2 + 2·k_max] resampled sums for each domain of `t`, and for ALL.

    ALL is stratified: prompts are resampled within their domain and the domains' sums added, so each
    resample keeps the corpus's domain mix (the mix is the traffic you chose, not sampling noise),
    and ALL costs nothing beyond the domains themselves.

    `values` [n_prompts, m] replaces `prompt_sums(t)`: other per-prompt sums resampled with the same
    weights (a paired bootstrap, as for the threshold policies against fixed k).
    """
    values = prompt_sums(t) if values is None else values
    out: dict[str, np.ndarray] = {}
    for domain, mask in domain_groups(t):
        if domain == ALL:
            out[ALL] = np.sum([out[d] for d in list(out)], axis=0)
        else:
            out[domain] = draw_weights(seed, domain, int(mask.sum()), n_resamples, cache) @ values[mask]
    return out


# Below this many tokens per iteration at every k a draft saves (almost) nothing: speculation is off.
EFFECTIVELY_OFF = 1.1
OFF_CAUSES = "a draft from another model family, a wrong chat template, an untrained shallow early exit"


@dataclass(frozen=True)
class Estimate:
    """One draft × domain: pooled figures for k = 1..k_max (arrays indexed k − 1) with bootstrap intervals."""

    draft: str
    domain: str
    n_prompts: int
    n_tokens: int
    alpha: float
    alpha_lo: float
    alpha_hi: float
    tokens_per_iter: np.ndarray  # [k_max] mean acceptance length, bonus token included
    tokens_per_iter_lo: np.ndarray  # [k_max]
    tokens_per_iter_hi: np.ndarray  # [k_max]
    draft_acceptance_rate: np.ndarray  # [k_max] accepted / drafted
    histogram: np.ndarray  # [k_max, k_max + 1] iterations that accepted exactly n
    costs: costmodel.Costs
    min_speedup: float  # the GO threshold the verdicts were taken at
    speedup: np.ndarray = field(init=False)  # [k_max] empirical: tokens_per_iter / (k·c + v_k)
    speedup_lo: np.ndarray = field(init=False)  # [k_max] S is linear in tokens/iter: its bounds map across
    speedup_hi: np.ndarray = field(init=False)
    speedup_iid: np.ndarray = field(init=False)  # [k_max] Leviathan's model at α and c
    best_k: int = field(init=False)  # argmax of the point speedup, ties to the smaller k
    verdicts: tuple[stats.Verdict, ...] = field(init=False)  # [k_max] the decision rule at each k

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "speedup", self.costs.speedup(self.tokens_per_iter))
        set_(self, "speedup_lo", self.costs.speedup(self.tokens_per_iter_lo))
        set_(self, "speedup_hi", self.costs.speedup(self.tokens_per_iter_hi))
        set_(self, "speedup_iid", self.costs.speedup_iid(self.alpha))
        set_(self, "best_k", costmodel.best_k({k + 1: float(s) for k, s in enumerate(self.speedup)}))
        verdicts = tuple(
            stats.decide(float(s), float(lo), float(hi), self.n_prompts, self.min_speedup)
            for s, lo, hi in zip(self.speedup, self.speedup_lo, self.speedup_hi)
        )
        set_(self, "verdicts", verdicts)

    @property
    def k_max(self) -> int:
        return len(self.tokens_per_iter)

    def at(self, k: int | None = None) -> int:
        """Index of k (default: the best k) into the per-k arrays."""
        return (self.best_k if k is None else k) - 1

    def verdict(self, k: int | None = None) -> stats.Verdict:
        return self.verdicts[self.at(k)]

    def per_position_acceptance(self, k: int | None = None) -> np.ndarray:
        """[k] r_1..r_k, r_i = P(accepted ≥ i), at draft length k (default: the best k)."""
        k = self.best_k if k is None else k
        return trace.per_position_acceptance(self.histogram[k - 1], k)

    @property
    def effectively_off(self) -> bool:
        finite = self.tokens_per_iter[np.isfinite(self.tokens_per_iter)]
        return bool(finite.size) and bool((finite < EFFECTIVELY_OFF).all())

    def why(self, k: int | None = None) -> str:
        """A short reason for a NO-GO or INCONCLUSIVE at k (default: the best k); "" for GO."""
        i = self.at(k)
        verdict = self.verdicts[i]
        if verdict.decision == "GO":
            return ""
        if self.effectively_off:
            return f"effectively off: tokens/iter < {EFFECTIVELY_OFF} at every k"
        if verdict.decision == "NO-GO":
            # An iteration costs k·c + v_k target steps; name the larger of the two overheads.
            k, c, v = i + 1, self.costs.cost_ratio, self.costs.verify_cost[i]
            if k * c >= v - 1.0:
                cause = f"draft step costs {100 * c:.3g}% of a target step"
            else:
                cause = f"verifying {k + 1} tokens costs {v:.2f}× one target step"
            return f"{cause}; breaks even at {self.costs.iteration()[i]:.2f} tokens/iter"
        return verdict.reason

    def disagreement(self, k: int | None = None) -> costmodel.Disagreement | None:
        """Why the i.i.d. and empirical speedups at k (default: the best k) differ by more than 10%, or None."""
        k = self.best_k if k is None else k
        return costmodel.explain_disagreement(self.alpha, k, float(self.tokens_per_iter[k - 1]), self.costs)


def estimate(
    t: DraftTrace,
    domain: str,
    costs: costmodel.Costs,
    min_speedup: float = stats.MIN_SPEEDUP,
    sums: np.ndarray | None = None,
    seed: int = stats.SEED,
) -> Estimate:
    """Point figures of one set of prompts (`t`, already selected) and their bootstrap intervals.

    `sums` are its resampled sums [B, 2 + 2·k_max] (`resampled_sums`); by default they are drawn
    here, a plain bootstrap over `t`'s prompts.
    """
    p = pool(t)
    if sums is None:
        sums = draw_weights(seed, domain, p.n_prompts, stats.N_RESAMPLES, None) @ prompt_sums(t)
    alpha_samples, tpi_samples = split_ratios(sums)
    costs = priced(costs, p)
    alpha_lo, alpha_hi = stats.percentile_interval(alpha_samples, p.alpha)
    tpi_lo, tpi_hi = stats.percentile_interval(tpi_samples, p.tokens_per_iter)
    return Estimate(
        draft=t.draft,
        domain=domain,
        n_prompts=p.n_prompts,
        n_tokens=p.n_tokens,
        alpha=p.alpha,
        alpha_lo=float(alpha_lo),
        alpha_hi=float(alpha_hi),
        tokens_per_iter=p.tokens_per_iter,
        tokens_per_iter_lo=tpi_lo,
        tokens_per_iter_hi=tpi_hi,
        draft_acceptance_rate=p.draft_acceptance_rate,
        histogram=p.histogram,
        costs=costs,
        min_speedup=min_speedup,
    )


def estimate_all(
    traces: Sequence[DraftTrace],
    timings: Timings | None,
    cost_ratio: float | None = None,
    domains: Sequence[str] = (),
    min_speedup: float = stats.MIN_SPEEDUP,
    seed: int = stats.SEED,
) -> list[Estimate]:
    """Estimates per draft × domain (then ALL), in trace order and first-seen domain order.

    Drafts profiled on the same prompts share one set of resample weights per domain.
    """
    out: list[Estimate] = []
    cache: dict = {}
    for t in traces:
        costs = costs_for(t.draft, timings, cost_ratio, t.blocks.k_max)
        sums = resampled_sums(t, seed, cache=cache)
        for domain, mask in domain_groups(t, domains):
            out.append(estimate(t.select(mask), domain, costs, min_speedup, sums[domain]))
    return out


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
