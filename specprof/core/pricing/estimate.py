"""Pooled figures and their intervals: one draft × domain as an `Estimate`.

`pool` adds up the per-prompt block statistics of a set of prompts (`traces.DraftTrace`): pooling is
over tokens and iterations, not an average of per-prompt ratios, tokens_per_iter = Σ emitted / Σ
iterations. `estimate` turns one draft × domain into an `Estimate`: the pooled figures for every k, their
bootstrap intervals (resampled sums per prompt, `stats`), the price of each k (`costmodel.Costs`),
the best k and the decision at each k. `profile`, `recommend`, `gate` and `compare` all go through
it, so the same report gives the same figures everywhere (`tables` writes them to summary.parquet).
No torch here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from specprof.core.pricing import costmodel, stats
from specprof.core.pricing.timings import Timings, costs_for
from specprof.core.simulation import trace
from specprof.core.simulation.traces import DraftTrace, domain_groups
from specprof.core.vocabulary import ALL


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


@dataclass(frozen=True)
class PointFigures:
    """A set of prompts' pooled figures priced for its blocks, without intervals: `estimate`'s start, and what
    `compare` sets side by side."""

    pooled: Pooled
    costs: costmodel.Costs  # priced for these blocks

    @functools.cached_property
    def speedup(self) -> np.ndarray:
        """[k_max] empirical: tokens_per_iter / iteration time."""
        return self.costs.speedup(self.pooled.tokens_per_iter)

    @functools.cached_property
    def best_k(self) -> int:
        return costmodel.best_k_of(self.speedup)


def point_figures(t: DraftTrace, costs: costmodel.Costs) -> PointFigures:
    """The point figures of `t` (already selected), priced for its blocks."""
    p = pool(t)
    return PointFigures(p, priced(costs, p))


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


def resampled_sums(
    t: DraftTrace, seed: int = stats.SEED, n_resamples: int = stats.N_RESAMPLES, cache: dict | None = None,
    values: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """[B, 2 + 2·k_max] resampled sums for each domain of `t`, and for ALL (stratified: `stats.stratified_sums`).

    `values` [n_prompts, m] replaces `prompt_sums(t)`: other per-prompt sums resampled with the same
    weights (a paired bootstrap, as for the threshold policies against fixed k).
    """
    values = prompt_sums(t) if values is None else values
    return stats.stratified_sums(values, domain_groups(t), ALL, seed, n_resamples, cache)


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
    verdicts: tuple[stats.DomainDecision, ...] = field(init=False)  # [k_max] the decision rule at each k

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "speedup", self.costs.speedup(self.tokens_per_iter))
        set_(self, "speedup_lo", self.costs.speedup(self.tokens_per_iter_lo))
        set_(self, "speedup_hi", self.costs.speedup(self.tokens_per_iter_hi))
        set_(self, "speedup_iid", self.costs.speedup_iid(self.alpha))
        set_(self, "best_k", costmodel.best_k_of(self.speedup))
        verdicts = tuple(
            stats.decision_rule(float(s), float(lo), float(hi), self.n_prompts, self.min_speedup)
            for s, lo, hi in zip(self.speedup, self.speedup_lo, self.speedup_hi)
        )
        set_(self, "verdicts", verdicts)

    @property
    def k_max(self) -> int:
        return len(self.tokens_per_iter)

    def at(self, k: int | None = None) -> int:
        """Index of k (default: the best k) into the per-k arrays."""
        return (self.best_k if k is None else k) - 1

    def verdict(self, k: int | None = None) -> stats.DomainDecision:
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
    figures = point_figures(t, costs)
    p, costs = figures.pooled, figures.costs
    if sums is None:
        sums = stats.draw_weights(seed, domain, p.n_prompts) @ prompt_sums(t)
    alpha_samples, tpi_samples = split_ratios(sums)
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


