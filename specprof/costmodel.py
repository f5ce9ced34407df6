"""The α–k cost model: expected tokens per iteration, speedup, breakeven α and the best k.

i.i.d. model (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding",
arXiv 2211.17192, eq. 1 and Theorem 3.8): with acceptance rate α, draft length k and cost ratio
c = (one draft step) / (one target step),

    E(α, k) = (1 − α^{k+1}) / (1 − α)        tokens per iteration (k + 1 at α = 1)
    S(α, k, c) = E(α, k) / (k·c + 1)          walltime speedup over the target alone

Example: α = 0.75, k = 4, c = 0.05 gives E = 3.05 and S = 3.05 / 1.2 = 2.54.

Empirical model (DESIGN.md §3): E is replaced by the measured tokens per iteration for that k,
and (k·c + 1) by measured forward times, S = E_emp(k)·t_T(1) / (k·t_D + t_T(k+1) + f_k·t_C). On a
GPU verifying k + 1 tokens costs about one step, t_T(k+1) ≈ t_T(1); on a CPU it does not. f_k·t_C
is the draft's catch-up: after a block that accepted all k proposals (a fraction f_k of blocks) the
draft has not seen its last proposal, so its next step feeds 2 tokens, t_C = t_D(2) − t_D(1) more
(about 0.4–0.7·t_D on a CPU, about 0 on a GPU and for n-gram drafts).

Pure maths: no torch, no files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def expected_tokens(alpha: float, k: int) -> float:
    """E(α, k) = 1 + α + … + α^k: expected tokens per iteration, the bonus token included."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def speedup_iid(alpha: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al.'s walltime speedup E(α, k) / (k·c + 1)."""
    return expected_tokens(alpha, k) / (k * cost_ratio + 1.0)


def speedup_from_tokens(tokens_per_iter: float, k: int, cost_ratio: float) -> float:
    """Measured tokens per iteration with a flat verification cost: E_emp(k) / (k·c + 1)."""
    return tokens_per_iter / (k * cost_ratio + 1.0)


def speedup_measured(
    tokens_per_iter: float, k: int, draft_step_s: float, target_forward_s: Sequence[float],
    full_fraction: float = 0.0, draft_catchup_s: float = 0.0,
) -> float:
    """Empirical speedup E_emp(k)·t_T(1) / (k·t_D + t_T(k+1) + f_k·t_C).

    `target_forward_s[n - 1]` is the target's time to verify n tokens with a KV cache; it must
    cover n = 1..k + 1. `full_fraction` f_k: blocks that accepted all k; `draft_catchup_s` t_C.
    """
    iteration_s = k * draft_step_s + target_forward_s[k] + full_fraction * draft_catchup_s
    return tokens_per_iter * target_forward_s[0] / iteration_s


def breakeven_alpha(k: int, cost_ratio: float, tol: float = 1e-12) -> float:
    """The α* at which speculation neither wins nor loses: S(α*, k, c) = 1.

    E(α, k) rises from 1 at α = 0 to k + 1 at α = 1, so α* exists when c < 1 (then found by
    bisection) and is +inf otherwise: a draft as slow as the target never pays.
    """
    if cost_ratio < 0:
        raise ValueError(f"cost_ratio must be ≥ 0, got {cost_ratio}")
    goal = k * cost_ratio + 1.0
    if goal >= k + 1:
        return math.inf
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if expected_tokens(mid, k) < goal:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def best_k(speedups: Mapping[int, float]) -> int:
    """The k with the highest speedup; ties go to the smaller k (less wasted draft work)."""
    return max(sorted(speedups), key=lambda k: (speedups[k], -k))


def iid_table(alpha: float, cost_ratio: float, k_max: int) -> list[tuple[int, float, float]]:
    """(k, E(α, k), S(α, k, c)) for k = 1..k_max: the what-if table."""
    return [(k, expected_tokens(alpha, k), speedup_iid(alpha, k, cost_ratio)) for k in range(1, k_max + 1)]
