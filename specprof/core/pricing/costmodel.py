"""The α–k cost model: expected tokens per iteration, speedup, breakeven α and the best k.

i.i.d. model (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding",
arXiv 2211.17192, eq. 1 and Theorem 3.8): with acceptance rate α, draft length k and cost ratio
c = (one draft step) / (one target step),

    E(α, k) = (1 − α^{k+1}) / (1 − α)        tokens per iteration (k + 1 at α = 1)
    S(α, k, c) = E(α, k) / (k·c + 1)          walltime speedup over the target alone

Example: α = 0.75, k = 4, c = 0.05 gives E = 3.05 and S = 3.05 / 1.2 = 2.54.

Empirical model (docs/design.md §2): E is replaced by the measured tokens per iteration for that k,
and (k·c + 1) by measured forward times, S = E_emp(k)·t_T(1) / (k·t_D + t_T(k+1) + f_k·t_C). On a
GPU verifying k + 1 tokens costs about one step, t_T(k+1) ≈ t_T(1); on a CPU it does not. f_k·t_C
is the draft's catch-up: after a block that accepted all k proposals (a fraction f_k of blocks) the
draft has not seen its last proposal, so its next step feeds 2 tokens, t_C = t_D(2) − t_D(1) more
(about 0.4–0.7·t_D on a CPU, about 0 on a GPU and for n-gram drafts).

Both models price one iteration (k draft steps, then the target verifying k + 1 tokens) in units
of one target step: k·c + v_k, plus the catch-up f_k·t_C/t_T(1) when measured. v_k = t_T(k+1)/t_T(1)
is measured (`Costs.measured`) or taken as 1 (`Costs.flat`, Leviathan's assumption, and what
`--cost-ratio` plans with).

At a serving batch of b sequences (`speedup_at_batch`, docs/design.md §2) every time becomes the
time of one batched pass, S(k, b) = E_emp(k)·t_T(1; b) / (k·t_D(b) + t_T(k+1; b) + f_k·t_C(b)); the
acceptance part is the same at every b (at T = 0 it does not depend on the batch).

Pure maths: no torch, no files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

# Where the i.i.d. and the empirical speedup differ by more than this (relative), the output says why.
DISAGREEMENT = 0.10


def expected_tokens(alpha: float, k: int) -> float:
    """E(α, k) = 1 + α + … + α^k: expected tokens per iteration, the bonus token included.

    Summed term by term rather than as (1 − α^{k+1}) / (1 − α): the closed form cancels
    catastrophically near α = 1, the sum is exact there (k + 1 at α = 1) and monotone in α.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    total, term = 0.0, 1.0
    for _ in range(k + 1):
        total += term
        term *= alpha
    return total


def speedup_iid(alpha: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al.'s walltime speedup E(α, k) / (k·c + 1)."""
    return expected_tokens(alpha, k) / (k * cost_ratio + 1.0)


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


def speedup_at_batch(
    tokens_per_iter: float, k: int, draft_step_s: float, target_forward_s: Sequence[float],
    full_fraction: float = 0.0, draft_catchup_s: float = 0.0,
) -> float:
    """Empirical speedup at a serving batch of b sequences:

        S(k, b) = E_emp(k)·t_T(1; b) / (k·t_D(b) + t_T(k+1; b) + f_k·t_C(b))

    with every time that of one batched pass over the b sequences (`target_forward_s[n - 1]` =
    t_T(n; b): b·n new tokens; `draft_step_s` = t_D(b): one draft step for all b; `draft_catchup_s`
    = t_C(b)). Without speculation a step emits b tokens in t_T(1; b); with it an iteration emits
    b·E_emp(k) in the denominator's time. At b = 1 this is `speedup_measured`.

    What it ignores: steps that mix one request's prefill with the others' decoding (chunked
    prefill); requests of different lengths in one batch (every sequence is taken at the typical
    context, and the catch-up as a fraction f_k of one batched 2-token step); requests that join or
    leave between iterations, and every other decision of the engine's scheduler; the per-step
    overhead of the engine itself (sampling, scheduling, CUDA graphs of fixed sizes).
    Example: t_T(1; 8) = 20 ms, t_T(4; 8) = 50 ms, t_D(8) = 3 ms, k = 3, E = 2.5:
    S = 2.5·20 / (9 + 50) = 0.85 — a draft that pays at batch 1 can lose at batch 8.
    """
    return speedup_measured(tokens_per_iter, k, draft_step_s, target_forward_s, full_fraction, draft_catchup_s)


def breakeven_alpha(k: int, cost_ratio: float) -> float:
    """The α* at which speculation neither wins nor loses: S(α*, k, c) = 1, i.e. E(α*, k) = k·c + 1.

    E(α, k) rises from 1 at α = 0 to k + 1 at α = 1, so α* exists when c < 1 (found by bisection
    down to adjacent floats) and is +inf otherwise: a draft as slow as the target never pays.
    Example: k = 1 gives E = 1 + α, so α* = c.
    """
    if cost_ratio < 0:
        raise ValueError(f"cost_ratio must be ≥ 0, got {cost_ratio}")
    goal = k * cost_ratio + 1.0
    if goal >= k + 1:
        return math.inf
    lo, hi = 0.0, 1.0
    while True:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if expected_tokens(mid, k) < goal:
            lo = mid
        else:
            hi = mid
    return lo if goal - expected_tokens(lo, k) <= expected_tokens(hi, k) - goal else hi


# Speedups within this relative distance of the best count as tied: float noise must not pick a
# longer draft (and so the best k stays monotone in c, as it is mathematically).
TIE = 1e-12


def best_k(speedups: Mapping[int, float]) -> int:
    """The k with the highest speedup; ties go to the smaller k (less wasted draft work)."""
    finite = {k: s for k, s in speedups.items() if s == s}
    if not finite:
        return min(speedups)
    top = max(finite.values())
    return min(k for k, s in finite.items() if s >= top - TIE * abs(top))


def best_k_of(speedup: Sequence[float] | np.ndarray) -> int:
    """`best_k` of speedups for k = 1, 2, … in order."""
    return best_k({k + 1: float(s) for k, s in enumerate(speedup)})


def best_k_iid(alpha: float, cost_ratio: float, k_max: int) -> int:
    """argmax over k = 1..k_max of S(α, k, c), ties to the smaller k."""
    return best_k({k: speedup_iid(alpha, k, cost_ratio) for k in range(1, k_max + 1)})


def iid_table(alpha: float, cost_ratio: float, k_max: int) -> list[tuple[int, float, float]]:
    """(k, E(α, k), S(α, k, c)) for k = 1..k_max: the what-if table."""
    return [(k, expected_tokens(alpha, k), speedup_iid(alpha, k, cost_ratio)) for k in range(1, k_max + 1)]


def timing_warning(target_forward_s: np.ndarray) -> str | None:
    """A line when measured verification times cannot describe one machine at rest, else None.

    One pass over n tokens should never cost more than n one-token steps (decoding them one by one
    would be cheaper), nor a third less than a one-token step (it reads the same weights). Either
    means the machine was busy while `profile` timed it. A curve that is not monotone is not flagged:
    CPU matmul kernels differ by shape, and t_T(4) < t_T(3) holds on an idle machine too.
    """
    t = np.asarray(target_forward_s, dtype=np.float64)
    n = np.arange(1, len(t) + 1)
    slow = np.flatnonzero(t > n * t[0] * 1.05)
    fast = np.flatnonzero(t < 0.67 * t[0])
    if not slow.size and not fast.size:
        return None
    where = f"t_T({slow[0] + 1}) = {t[slow[0]] / t[0]:.1f}× t_T(1)" if slow.size else (
        f"t_T({fast[0] + 1}) < t_T(1)"
    )
    return (
        f"the measured verification times look disturbed ({where}): the machine was probably busy while "
        "profiling; re-run profile on an idle machine (on a shared one, with OMP_NUM_THREADS=1) or plan with "
        "--cost-ratio"
    )


@dataclass(frozen=True)
class Costs:
    """The price of one iteration at each k, in target steps: k·c + v_k (the denominator of S).

    With `for_blocks`, priced over the blocks a trace holds: an iteration in which the draft proposed
    n tokens costs n·c + v_n (v_0 = 1: the target alone), plus the catch-up after fully accepted blocks.
    """

    cost_ratio: float  # c = t_D / t_T(1): one draft step over one target step
    verify_cost: tuple[float, ...]  # [k - 1]: v_k = t_T(k+1) / t_T(1), the target verifying k + 1 tokens
    measured: bool  # True: v_k from timings on the profiling machine; False: flat, v_k = 1
    warning: str | None = None  # measured times that cannot be right (a busy machine): say so, don't hide it
    catchup_ratio: float = 0.0  # t_C / t_T(1): the draft's extra cost of a 2-token catch-up step
    full_fraction: tuple[float, ...] = ()  # [k - 1]: f_k, blocks at k that accepted all k (empty: none known)
    # [k - 1][n]: the fraction of blocks at k in which the draft proposed n = 0..k tokens (empty: always k)
    proposed_fraction: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def flat(cls, cost_ratio: float, k_max: int) -> Costs:
        """Leviathan's assumption (and `--cost-ratio`): verifying k + 1 tokens costs one target step."""
        if not cost_ratio >= 0:
            raise ValueError(f"cost_ratio must be ≥ 0, got {cost_ratio}")
        return cls(float(cost_ratio), (1.0,) * k_max, measured=False)

    @classmethod
    def from_times(
        cls, draft_step_s: float, target_forward_s: Sequence[float], k_max: int, draft_catchup_s: float = 0.0
    ) -> Costs:
        """From measured seconds; `target_forward_s[n - 1]` = t_T(n) must cover n = 1..k_max + 1.
        `draft_catchup_s` is t_C = t_D(2) − t_D(1), priced once `for_blocks` knows f_k.

        Each t_T(n) is priced as measured, dips included: on a CPU the kernels change with the
        number of rows, and verifying 4 tokens can really cost less than 3 (`verify` confirms it
        on SmolLM2). Only t_T(n) < t_T(1) is taken as timer noise (a pass over n tokens reads
        the same weights as a one-token step), so v_k ≥ 1.
        """
        if len(target_forward_s) < k_max + 1:
            raise ValueError(f"target times cover k ≤ {len(target_forward_s) - 1}, asked for {k_max}")
        raw = np.asarray(target_forward_s[: k_max + 1], dtype=np.float64)
        times = np.maximum(raw, raw[0])
        t1 = float(times[0])
        verify = tuple(float(t / t1) for t in times[1:])
        return cls(draft_step_s / t1, verify, measured=True, warning=timing_warning(raw),
                   catchup_ratio=draft_catchup_s / t1)

    def for_blocks(self, full_fraction: Sequence[float] | np.ndarray,
                   proposed_fraction: np.ndarray | None = None) -> Costs:
        """These costs for a set of prompts whose blocks at k accepted all k a fraction f_k of the time,
        and proposed n tokens a fraction `proposed_fraction[k - 1, n]` of the time (default: always k)."""
        proposed = () if proposed_fraction is None else tuple(
            tuple(float(x) for x in row[: k + 1]) for k, row in enumerate(proposed_fraction[: self.k_max], 1)
        )
        return replace(self, full_fraction=tuple(float(f) for f in full_fraction[: self.k_max]),
                       proposed_fraction=proposed)

    @property
    def k_max(self) -> int:
        return len(self.verify_cost)

    def catchup(self) -> np.ndarray:
        """[k_max] f_k·t_C / t_T(1): the draft's catch-up after fully accepted blocks, per iteration."""
        full = np.zeros(self.k_max)
        full[: len(self.full_fraction)] = self.full_fraction
        return full * self.catchup_ratio

    def iteration(self) -> np.ndarray:
        """[k_max] k·c + v_k + f_k·t_C/t_T(1): one iteration's time in target steps, or with the blocks'
        proposal counts E[n·c + v_n] + f_k·t_C/t_T(1). Read-only: worked out once per `Costs`."""
        return self._iteration

    @functools.cached_property
    def _iteration(self) -> np.ndarray:
        k = np.arange(1, self.k_max + 1)
        full = k * self.cost_ratio + np.asarray(self.verify_cost)
        by_n = np.concatenate([[1.0], self.verify_cost])  # v_n for n = 0..k_max proposals
        for i, fractions in enumerate(self.proposed_fraction):
            f = np.asarray(fractions)
            if f.sum() > 0:
                n = np.arange(len(f))
                full[i] = float(f @ (n * self.cost_ratio + by_n[: len(f)]) / f.sum())
        out = full + self.catchup()
        out.setflags(write=False)
        return out

    def speedup(self, tokens_per_iter: np.ndarray) -> np.ndarray:
        """Empirical S for [..., k_max] tokens per iteration: E_emp(k) / (k·c + v_k)."""
        return np.asarray(tokens_per_iter) / self.iteration()

    def speedup_iid(self, alpha: float) -> np.ndarray:
        """[k_max] Leviathan's S(α, k, c) at this c (always the flat verification cost)."""
        a = min(max(alpha, 0.0), 1.0) if alpha == alpha else float("nan")
        if a != a:
            return np.full(self.k_max, np.nan)
        return np.array([speedup_iid(a, k, self.cost_ratio) for k in range(1, self.k_max + 1)])


@dataclass(frozen=True)
class Disagreement:
    """Why the empirical speedup at k is off the i.i.d. one: S_emp / S_iid = tokens_factor · cost_factor.

    tokens_factor = E_emp / E(α, k): acceptance is not i.i.d. along a sequence (matches come in runs,
    or mismatches cluster). cost_factor = (k·c + 1) / (k·c + v_k): verification is not free on every
    device (v_k > 1 on a CPU).
    """

    k: int
    ratio: float  # S_emp / S_iid
    tokens_per_iter: float  # measured E_emp(k)
    expected_tokens: float  # E(α, k)
    verify_cost: float  # v_k
    threshold: float

    @property
    def tokens_factor(self) -> float:
        return self.tokens_per_iter / self.expected_tokens

    @property
    def tokens_differ(self) -> bool:
        return abs(self.tokens_factor - 1.0) > self.threshold / 3

    @property
    def costs_differ(self) -> bool:
        return abs(self.verify_cost - 1.0) > self.threshold / 3

    def tokens_reason(self) -> str:
        runs = "matches come in runs" if self.tokens_factor > 1 else "mismatches cluster"
        return (
            f"measured tokens/iter {self.tokens_per_iter:.2f} vs i.i.d. {self.expected_tokens:.2f}: "
            f"acceptance is not i.i.d. along a sequence ({runs})"
        )

    def cost_reason(self) -> str:
        return (
            f"verifying {self.k + 1} tokens costs {self.verify_cost:.2f}× one target step on this device "
            "(the i.i.d. model assumes 1×)"
        )

    def line(self) -> str:
        parts = [r for r, on in ((self.tokens_reason(), self.tokens_differ), (self.cost_reason(), self.costs_differ))
                 if on]
        why = "; ".join(parts) or "both small effects together"
        side = "below" if self.ratio < 1.0 else "above"
        return f"empirical speedup is {abs(self.ratio - 1.0):.0%} {side} the i.i.d. model at k={self.k}: {why}"


def explain_disagreement(
    alpha: float, k: int, tokens_per_iter: float, costs: Costs, threshold: float = DISAGREEMENT
) -> Disagreement | None:
    """The breakdown when the empirical speedup at k differs from the i.i.d. one by more than
    `threshold` (relative), else None."""
    if not (alpha == alpha and tokens_per_iter == tokens_per_iter):
        return None
    e_iid = expected_tokens(min(max(alpha, 0.0), 1.0), k)
    v = costs.verify_cost[k - 1]
    flat = k * costs.cost_ratio + 1.0
    ratio = (tokens_per_iter / e_iid) * (flat / float(costs.iteration()[k - 1]))
    if abs(ratio - 1.0) <= threshold:
        return None
    return Disagreement(k, ratio, tokens_per_iter, e_iid, v, threshold)
