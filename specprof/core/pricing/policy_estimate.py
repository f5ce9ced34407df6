"""Confidence-threshold drafting against fixed k, per draft × domain: what `recommend` shows beside the best k.

For every (k_max, τ) of a grid (`policy.TAUS` × k_max = 2..the report's k_max; k_max = 1 proposes
one token whatever τ is, the same as fixed k = 1) this prices the policy simulated by `policy`
with the draft's own `Costs` (a block of n draft steps costs n·c + v_n, plus the catch-up after a
fully accepted block: the same price as a fixed-k iteration) and pools it per domain.

Tokens per iteration are exact at T = 0. The draft steps after the first rejected proposal are not
observed (anywhere from stopping at the rejection to running on to k_max), so each policy has two
speedups: `speedup_lo_bound` prices every such block at its dearest possible step count and
`speedup_hi_bound` at its cheapest (`policy_cost`). When t_T(n) rises with n these are "runs
on to k_max" and "stops at the rejection"; a measured t_T(n) need not rise, and taking the dearest
and cheapest keeps lo ≤ hi by construction, whatever the cost curve does. The best policy is the
one with the highest `speedup_lo_bound` (its guaranteed figure), ties to the smaller k_max, then
the higher τ.

"Beats fixed k" needs both uncertainties to agree: the 95% bootstrap interval over prompts of
speedup_lo_bound(policy) − speedup(best fixed k), resampled with the same prompt weights as the
fixed-k figures (paired), lies above 0. The gain interval printed is [2.5% quantile of that
pessimistic difference, 97.5% quantile of the optimistic one]. Like the best k, the best policy is
picked on the same prompts it is judged on: a small selection optimism, shared by both sides.

At T > 0 nothing here is computed: the draft samples its proposal and transformers stops on the
sampled token's probability, which the report does not hold (`recommend` says so).

What this module does not do: simulate blocks (`policy`), print (`render`), import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from specprof.core.jsonvalues import json_number
from specprof.core.pricing import costmodel, stats
from specprof.core.pricing.estimate import Estimate, prompt_sums, resampled_sums, split_ratios
from specprof.core.pricing.timings import Timings, costs_for
from specprof.core.simulation.policy import FULL, OPEN, SEEN, TAUS, DraftPolicies, PolicyCounts, PolicyWalk
from specprof.core.simulation.traces import DraftRows, DraftTrace, domain_groups, to_numpy

PolicyVerdict = Literal["beats fixed k", "within uncertainty", "worse than fixed k", "too few prompts"]

STEP_BOUND_NOTE = (
    "tokens/iter of a threshold policy is exact at T = 0; its draft steps are bounded: after the first rejected "
    "proposal the draft drafts on its own wrong prefix, which the report did not record, so those blocks are priced "
    "at the dearest (lower speedup) and the cheapest (upper speedup) step count between stopping at the rejection "
    "and running on to k_max"
)
NGRAM_NOTE = "an n-gram draft proposes with probability 1 or not at all: no threshold policy"
HEAD_NOTE = ("its proposals are simulated from every block start and record no confidence to threshold: "
             "no threshold policy")
SAMPLED_NOTE = (
    "threshold policies are simulated only at T = 0: when sampling, the draft stops on its sampled token's "
    "probability, which the report does not hold"
)


def no_policy_note(model_free: bool) -> str:
    """Why a draft of a kind without a confidence gets no threshold policy (`analysis.NO_CONFIDENCE`)."""
    return NGRAM_NOTE if model_free else HEAD_NOTE


def policy_cost(counts: PolicyCounts, costs: costmodel.Costs) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt time in target steps, cheapest and dearest: [n_prompts, n_taus, n_k] each, lo ≤ hi.

    A block of n draft steps costs n·c + v_n (the target verifies n + 1 tokens; v_0 = 1), plus the
    catch-up t_C/t_T(1) when all its proposals were accepted: the same price as a fixed-k iteration.
    A block whose steps were not observed (a + 1 to k_max) is priced at the cheapest and the dearest
    of those counts. When v_n rises with n these are its step bounds; a measured t_T(n) need not rise
    (CPU kernels change with the row count), and then running on to k_max can be the cheaper end.
    """
    k_top = counts.histogram.shape[-1] - 1
    if costs.k_max < k_top:
        raise ValueError(f"costs cover k ≤ {costs.k_max}, the policies draft up to {k_top}")
    steps = np.arange(k_top + 1)
    per_block = steps * costs.cost_ratio + np.concatenate([[1.0], costs.verify_cost[:k_top]])  # [k_top + 1]
    price = np.zeros((2, len(counts.k_maxes), 3, k_top + 1))  # [cheapest | dearest, n_k, class, accepted]
    price[:, :, FULL] = per_block + costs.catchup_ratio
    price[:, :, SEEN, :-1] = per_block[1:]
    for q, k_max in enumerate(counts.k_maxes):
        for a in range(k_max):
            price[0, q, OPEN, a] = per_block[a + 1 : k_max + 1].min()
            price[1, q, OPEN, a] = per_block[a + 1 : k_max + 1].max()
    flat = counts.histogram.reshape(*counts.histogram.shape[:3], -1)
    return tuple(np.einsum("ntkc,kc->ntk", flat, p.reshape(len(counts.k_maxes), -1)) for p in price)


def trace_policies(
    tokens: pa.Table, index: Sequence[DraftRows], k_max: int, taus: Sequence[float] = TAUS
) -> dict[str, DraftPolicies]:
    """Per draft of `index` (`traces.index_drafts` of `tokens`): `DraftPolicies` for τ × k_max = 2..`k_max`,
    counted per domain, prompts in first-seen order (its `DraftTrace`'s). `tokens` has the columns match and
    draft_top1_p. With k_max = 1 there are no policies.
    """
    out: dict[str, DraftPolicies] = {}
    if k_max < 2:
        return out
    match = to_numpy(tokens.column("match"), np.int8)
    top1_p = to_numpy(tokens.column("draft_top1_p"), np.float64)
    for d in index:
        walk = PolicyWalk(d.grid(match, np.int8), d.grid(top1_p), d.n_tokens, range(2, k_max + 1))
        group = np.unique(d.domains, return_inverse=True)[1].ravel()
        out[d.draft] = DraftPolicies(walk.counts(taus, group), group, walk)
    return out


@dataclass(frozen=True)
class PolicyEstimate:
    """The best threshold policy of one draft × domain, beside that domain's best fixed k."""

    draft: str
    domain: str
    n_prompts: int
    k_max: int  # the policy's longest draft
    tau: float  # stop after a proposal whose top-1 probability is below τ
    tokens_per_iter: float  # exact at T = 0 (bonus token included, as everywhere)
    tokens_per_iter_lo: float  # 95% bootstrap interval over prompts
    tokens_per_iter_hi: float
    draft_steps_lo_bound: float  # mean draft steps per iteration: stopping at each rejection
    draft_steps_hi_bound: float  # running on to k_max after it
    speedup_lo_bound: float  # every unobserved block priced at its dearest step count (≤ speedup_hi_bound)
    speedup_hi_bound: float  # at its cheapest
    speedup_lo: float  # 2.5% bootstrap quantile of speedup_lo_bound
    speedup_hi: float  # 97.5% bootstrap quantile of speedup_hi_bound
    fixed_k: int  # the domain's best fixed k
    fixed_speedup: float
    gain_lo: float  # 2.5% quantile of speedup_lo_bound − fixed speedup (paired resamples)
    gain_hi: float  # 97.5% quantile of speedup_hi_bound − fixed speedup

    @property
    def beats_fixed_k(self) -> bool:
        return self.n_prompts >= stats.MIN_PROMPTS and self.gain_lo > 0

    @property
    def verdict(self) -> PolicyVerdict:
        if self.n_prompts < stats.MIN_PROMPTS:
            return "too few prompts"
        if self.gain_lo > 0:
            return "beats fixed k"
        if self.gain_hi < 0:
            return "worse than fixed k"
        return "within uncertainty"


def best_policy(speedup_lo_bound: np.ndarray, taus: Sequence[float], k_maxes: Sequence[int]) -> tuple[int, int]:
    """(τ index, k_max index) of the highest [n_taus, n_k] lower-bound speedup; ties to the smaller k_max,
    then the higher τ (less drafting for the same guaranteed speedup)."""
    order = [(j, q) for q in np.argsort(k_maxes, kind="stable") for j in np.argsort(taus)[::-1]]
    finite = [s for s in speedup_lo_bound.ravel() if s == s]
    if not finite:
        return order[0]
    top = max(finite)
    return next((j, q) for j, q in order if speedup_lo_bound[j, q] >= top - costmodel.TIE * abs(top))


def estimate_policies(
    traces: Sequence[DraftTrace],
    counts: dict[str, DraftPolicies],
    estimates: Sequence[Estimate],
    timings: Timings | None,
    cost_ratio: float | None = None,
    seed: int = stats.SEED,
) -> list[PolicyEstimate]:
    """The best policy for every estimate (draft × domain) whose draft has policies, in estimate order.

    The bootstrap draws the same prompt weights as `summary.estimate_all` (same seed, same domains),
    so each resample of the policy is paired with the same resample of the fixed-k figures.
    """
    # Long on purpose: pick, price and bootstrap each domain's best policy in one pass over the same resamples.
    wanted = {(e.draft, e.domain): e for e in estimates}
    found: dict[tuple[str, str], PolicyEstimate] = {}
    cache: dict = {}
    for t in traces:
        pc = counts.get(t.draft)
        if pc is None:
            continue
        n_k = len(pc.k_maxes)
        costs = costs_for(t.draft, timings, cost_ratio, t.blocks.k_max)
        groups = [(d, m) for d, m in domain_groups(t) if (t.draft, d) in wanted]
        # Pick each domain's policy on its totals, then count and resample only the picked ones per prompt.
        picks = {d: _pick(t.n_tokens[m].sum(), policy_cost(pc.total_counts(m), costs)[1].ravel(), pc.by_group)
                 for d, m in groups}
        chosen = sorted(set(picks.values()))
        picked = pc.per_prompt(chosen)  # g → (counts per prompt of g's τ, g's k_max index there)
        columns = []  # per chosen policy: [n] iterations, cost lo, cost hi
        for g in chosen:
            per_prompt, i = picked[g]
            lo, hi = policy_cost(per_prompt, costs)  # [n, 1, k_maxes picked at that τ]
            columns.append((per_prompt.iterations[:, 0, i], lo[:, 0, i], hi[:, 0, i]))
        iterations, cost_lo, cost_hi = (np.column_stack(c) for c in zip(*columns))
        base = prompt_sums(t)  # [n, 2 + 2·k_max]: the fixed-k sums, resampled with the same weights
        values = np.column_stack([base, iterations, cost_lo, cost_hi])
        sums = resampled_sums(t, seed, cache=cache, values=values)
        m0, width = base.shape[1], len(chosen)
        for domain, mask in groups:
            e = wanted[(t.draft, domain)]
            g = picks[domain]
            j, q = divmod(g, n_k)
            tokens = float(t.n_tokens[mask].sum())
            c = chosen.index(g)
            iters = float(iterations[mask, c].sum())
            point_lo, point_hi = tokens / cost_hi[mask, c].sum(), tokens / cost_lo[mask, c].sum()
            s = sums[domain]
            col = m0 + c
            resampled_tokens = s[:, 1 + t.blocks.k_max]  # Σ n_tokens: prompt_sums' first denominator
            with np.errstate(invalid="ignore", divide="ignore"):
                tpi = resampled_tokens / s[:, col]
                shi = resampled_tokens / s[:, col + width]  # priced at the lower step bound
                slo = resampled_tokens / s[:, col + 2 * width]
            fixed = e.costs.speedup(split_ratios(s[:, :m0])[1])[:, e.best_k - 1]  # [B] the same resamples
            fixed_point = float(e.speedup[e.best_k - 1])
            per_prompt, i = picked[g]
            steps_lo, steps_hi = per_prompt.draft_steps(mask, 0, i)
            tpi_lo, tpi_hi = _interval(tpi, tokens / iters)
            found[(t.draft, domain)] = PolicyEstimate(
                draft=t.draft,
                domain=domain,
                n_prompts=int(mask.sum()),
                k_max=pc.k_maxes[q],
                tau=pc.taus[j],
                tokens_per_iter=tokens / iters,
                tokens_per_iter_lo=tpi_lo,
                tokens_per_iter_hi=tpi_hi,
                draft_steps_lo_bound=steps_lo / iters,
                draft_steps_hi_bound=steps_hi / iters,
                speedup_lo_bound=point_lo,
                speedup_hi_bound=point_hi,
                speedup_lo=_interval(slo, point_lo)[0],
                speedup_hi=_interval(shi, point_hi)[1],
                fixed_k=e.best_k,
                fixed_speedup=fixed_point,
                gain_lo=_interval(slo - fixed, point_lo - fixed_point)[0],
                gain_hi=_interval(shi - fixed, point_hi - fixed_point)[1],
            )
    return [found[(e.draft, e.domain)] for e in estimates if (e.draft, e.domain) in found]


def _pick(tokens: float, cost_hi: np.ndarray, pc: PolicyCounts) -> int:
    """The flat grid index (τ-major) of the best policy by its lower-bound speedup tokens / cost_hi [grid]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lo_bound = (tokens / cost_hi).reshape(len(pc.taus), len(pc.k_maxes))
    j, q = best_policy(lo_bound, pc.taus, pc.k_maxes)
    return int(j * len(pc.k_maxes) + q)


def _interval(samples: np.ndarray, point: float) -> tuple[float, float]:
    lo, hi = stats.percentile_interval(np.asarray(samples)[:, None], np.array([point], dtype=np.float64))
    return float(lo[0]), float(hi[0])


def policy_json(p: PolicyEstimate) -> dict[str, Any]:
    num = json_number
    return {
        "k_max": p.k_max,
        "tau": p.tau,
        "tokens_per_iter": num(p.tokens_per_iter),
        "tokens_per_iter_lo": num(p.tokens_per_iter_lo),
        "tokens_per_iter_hi": num(p.tokens_per_iter_hi),
        "tokens_per_iter_exact": True,
        "draft_steps_per_iter_lo_bound": num(p.draft_steps_lo_bound),
        "draft_steps_per_iter_hi_bound": num(p.draft_steps_hi_bound),
        "speedup_lo_bound": num(p.speedup_lo_bound),
        "speedup_hi_bound": num(p.speedup_hi_bound),
        "speedup_lo": num(p.speedup_lo),
        "speedup_hi": num(p.speedup_hi),
        "fixed_k": p.fixed_k,
        "fixed_speedup": num(p.fixed_speedup),
        "gain_lo": num(p.gain_lo),
        "gain_hi": num(p.gain_hi),
        "beats_fixed_k": p.beats_fixed_k,
        "verdict": p.verdict,
    }
