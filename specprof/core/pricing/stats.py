"""Bootstrap over prompts, percentile intervals, and the GO / NO-GO / INCONCLUSIVE rule (docs/design.md §2).

Tokens inside one prompt are correlated (a draft that loses the thread loses it for many tokens),
so the resampling unit is the prompt, never the token. Every figure specprof reports is a ratio of
sums over prompts (α = Σ accept_prob / Σ tokens, tokens/iter = Σ emitted / Σ iterations), so a
resample is a vector of prompt weights (how many times each prompt was drawn) and the whole
bootstrap is one matrix product: weights [B, n_prompts] @ per-prompt sums [n_prompts, m].

Resamples are seeded per (seed, domain) with a stable hash, so a figure does not change when other
drafts or domains are filtered in or out, and two runs print the same intervals. Drafts profiled on
the same prompts share one set of resamples per domain (a paired design, and half the work).

Example: two prompts with (accepted, tokens) = (3, 4) and (1, 4) pool to α = 4/8 = 0.5; the
resamples are {1,1} (α = 0.75), {1,2} (0.5) and {2,2} (0.25) with odds 1:2:1.

What this module does not do: read reports, trace blocks or price k (`summary`, `costmodel`).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Decision = Literal["GO", "NO-GO", "INCONCLUSIVE"]
DECISIONS: tuple[Decision, ...] = ("GO", "NO-GO", "INCONCLUSIVE")

SEED = 0
N_RESAMPLES = 1000
CONFIDENCE = 0.95
MIN_SPEEDUP = 1.1  # docs/design.md §2: GO needs the lower bound of S at the best k to reach this
NO_GO_BELOW = 1.0  # NO-GO when even the upper bound of S stays below break-even
# Below this many prompts a percentile bootstrap has too few distinct resamples to mean anything:
# the decision stays INCONCLUSIVE whatever the interval says.
MIN_PROMPTS = 5
# An estimate of more than this many times the domain's prompts means the point estimate sits on the
# threshold: the 1/√n extrapolation divides by its distance from it, and no realistic sample decides it.
MAX_MORE_FACTOR = 10
AT_THRESHOLD = "marginal: the speedup sits at the threshold; more prompts will not settle it"


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator fixed by the seed and the names (crc32: stable across processes, unlike hash())."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def resample_weights(n_prompts: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_resamples, n_prompts] counts: how often each prompt is drawn in each resample (rows sum to n)."""
    if n_prompts == 0:
        return np.zeros((n_resamples, 0))
    draws = rng.integers(0, n_prompts, size=(n_resamples, n_prompts))
    offsets = (np.arange(n_resamples) * n_prompts)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_prompts).reshape(
        n_resamples, n_prompts
    ).astype(np.float64)


def ratio_of_sums(weights: np.ndarray, numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """Σ w·num / Σ w·den for each weight row: [B, n] with [n, m] and [n, m] → [B, m] (NaN where 0/0)."""
    m = numerators.shape[1]
    sums = weights @ np.concatenate([numerators, denominators], axis=1)  # one product for both: [B, 2m]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, :m] / sums[:, m:]


def percentile_interval(samples: np.ndarray, point: np.ndarray | float, confidence: float = CONFIDENCE) -> tuple:
    """The central `confidence` percentile interval along axis 0, widened to contain `point`.

    A percentile interval can miss its own point estimate when very few prompts make the resample
    distribution lopsided; widening keeps `lo ≤ point ≤ hi` true for every report.
    """
    tail = (1.0 - confidence) / 2
    q = [tail, 1.0 - tail]
    finite = np.isfinite(samples)
    if not samples.shape[0]:
        lo, hi = point, point
    elif finite.all():  # the same figures as nanquantile, in one partition instead of one per column
        lo, hi = np.quantile(samples, q, axis=0)
    else:  # nanquantile works a column at a time: only the columns missing a resample take it
        columns, finite = samples.reshape(len(samples), -1), finite.reshape(len(samples), -1)
        clean = finite.all(axis=0)
        lo, hi = np.empty(columns.shape[1]), np.empty(columns.shape[1])
        lo[clean], hi[clean] = np.quantile(columns[:, clean], q, axis=0)
        with np.errstate(invalid="ignore"):
            lo[~clean], hi[~clean] = np.nanquantile(np.where(finite[:, ~clean], columns[:, ~clean], np.nan), q, axis=0)
        lo, hi = lo.reshape(samples.shape[1:]), hi.reshape(samples.shape[1:])
    point = np.asarray(point, dtype=np.float64)
    return np.fmin(lo, point), np.fmax(hi, point)


@dataclass(frozen=True)
class DomainDecision:
    decision: Decision
    more_prompts: int | None  # INCONCLUSIVE: about how many more prompts in the domain would decide it
    reason: str  # one line for the terminal; "" when the decision speaks for itself


def decision_rule(
    speedup: float,
    speedup_lo: float,
    speedup_hi: float,
    n_prompts: int,
    min_speedup: float = MIN_SPEEDUP,
) -> DomainDecision:
    """docs/design.md §2: GO when lo ≥ min_speedup, NO-GO when hi < 1.0, else INCONCLUSIVE.

    For INCONCLUSIVE, the interval's half-widths are scaled as 1/√n (the standard error of a mean
    over prompts): GO needs n' = n·((S − lo) / (S − min_speedup))², NO-GO n' = n·((hi − S) / (1 − S))².
    The answer is the extra prompts n' − n for whichever decision the point estimate points at; above
    `MAX_MORE_FACTOR`·n the point sits on the threshold and the answer is "marginal" (no count). When
    1.0 ≤ S < min_speedup no number of prompts decides it: the gain is real but small.
    Example: S = 1.3 with [1.05, 1.55] from 12 prompts needs 12·(0.25/0.2)² = 18.75 → 7 more for GO.
    """
    if not all(math.isfinite(v) for v in (speedup, speedup_lo, speedup_hi)):
        return DomainDecision("INCONCLUSIVE", None, "no finite speedup (no tokens in this domain)")
    if n_prompts < MIN_PROMPTS:
        why = f"only {n_prompts} prompt{'' if n_prompts == 1 else 's'}; intervals need {MIN_PROMPTS}+"
        return DomainDecision("INCONCLUSIVE", MIN_PROMPTS - n_prompts, why)
    if speedup_lo >= min_speedup:
        return DomainDecision("GO", None, "")
    if speedup_hi < NO_GO_BELOW:
        return DomainDecision("NO-GO", None, "")
    if speedup > min_speedup:
        more = _more(n_prompts * ((speedup - speedup_lo) / (speedup - min_speedup)) ** 2, n_prompts)
        if more > MAX_MORE_FACTOR * n_prompts:
            return DomainDecision("INCONCLUSIVE", None, AT_THRESHOLD)
        return DomainDecision("INCONCLUSIVE", more, f"likely GO; ~{more} more prompts would decide it")
    if speedup < NO_GO_BELOW:
        more = _more(n_prompts * ((speedup_hi - speedup) / (NO_GO_BELOW - speedup)) ** 2, n_prompts)
        if more > MAX_MORE_FACTOR * n_prompts:
            return DomainDecision("INCONCLUSIVE", None, AT_THRESHOLD)
        return DomainDecision("INCONCLUSIVE", more, f"likely NO-GO; ~{more} more prompts would decide it")
    return DomainDecision("INCONCLUSIVE", None, f"marginal: 1.0 ≤ S < {min_speedup:g}; more prompts won't make it GO")


def _more(needed: float, n_prompts: int) -> int:
    return max(1, math.ceil(needed - 1e-9) - n_prompts)


def difference_significant(diff_lo: float, diff_hi: float) -> bool:
    """A bootstrap interval of B − A that excludes 0."""
    return bool(diff_lo > 0 or diff_hi < 0)


def draw_weights(seed: int, name: str, n_prompts: int, n_resamples: int = N_RESAMPLES,
                 cache: dict | None = None) -> np.ndarray:
    """[n_resamples, n_prompts] resample weights seeded by (seed, name), read-only.

    The one bootstrap of specprof: every interval (figures per domain, threshold policies against
    fixed k, compare's differences) multiplies these weights with per-prompt sums. They depend on
    nothing else, so the last few hundred are kept for the process (`recommend` prices fixed k and
    the threshold policies on the same resamples); `cache`, when given, keeps them as well.
    """
    key = (seed, name, n_prompts, n_resamples)
    if cache is not None and key in cache:
        return cache[key]
    weights = _weights(*key)
    if cache is not None:
        cache[key] = weights
    return weights


@functools.lru_cache(maxsize=256)
def _weights(seed: int, name: str, n_prompts: int, n_resamples: int) -> np.ndarray:
    weights = resample_weights(n_prompts, n_resamples, rng_for(seed, name))
    weights.setflags(write=False)  # shared by every caller
    return weights


def stratified_sums(values: np.ndarray, groups: Sequence[tuple[str, np.ndarray]], total: str, seed: int = SEED,
                    n_resamples: int = N_RESAMPLES, cache: dict | None = None) -> dict[str, np.ndarray]:
    """[n_resamples, m] resampled column sums of `values` [n_prompts, m] for each (name, prompt mask) group.

    The group named `total` is stratified: the sum of the other groups' resamples, so each resample
    keeps their mix (the corpus's domain mix is the traffic you chose, not sampling noise) and costs
    nothing beyond the groups themselves.
    """
    out: dict[str, np.ndarray] = {}
    for name, mask in groups:
        if name == total:
            out[total] = np.sum([out[g] for g in list(out)], axis=0)
        else:
            out[name] = draw_weights(seed, name, int(mask.sum()), n_resamples, cache) @ values[mask]
    return out
