"""`recommend` and `gate`: decisions recomputed from a report's tokens.parquet (`compare` is `core/compare`).

Every command here reads tokens.parquet and run.json (never summary.parquet, a convenience copy
for other tools), traces blocks for every k, prices them (`costmodel`) and bootstraps over prompts
(`stats`). The result is plain data: frozen records and JSON-ready dicts; `render` draws them and
`cli` picks the exit code.

What this module does not do: import torch, print, or exit. It answers on a report of a million
token rows in about a second (benchmarks/decide_speed.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specprof.core.answers.analysis import Analysis, load_analysis
from specprof.core.answers.compare import check_comparable, pair_drafts
from specprof.core.jsonvalues import json_number
from specprof.core.pricing import costmodel, policy_estimate, stats
from specprof.core.pricing.estimate import OFF_CAUSES, Estimate, estimate_all
from specprof.core.records.reportfiles import Report
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError


def estimates(
    a: Analysis,
    cost_ratio: float | None = None,
    domains: Sequence[str] = (),
    min_speedup: float = stats.MIN_SPEEDUP,
) -> list[Estimate]:
    """Per draft × domain (then ALL unless filtered): figures for every k with intervals and verdicts."""
    return estimate_all(a.traces, a.timings, cost_ratio, domains, min_speedup)


def policy_estimates(
    a: Analysis, estimates: Sequence[Estimate], cost_ratio: float | None = None
) -> list[policy_estimate.PolicyEstimate]:
    """The best confidence-threshold policy beside each estimate's best fixed k (empty unless loaded with them)."""
    return policy_estimate.estimate_policies(a.traces, a.policies, estimates, a.timings, cost_ratio)


# --- recommend -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraftPlan:
    """The overall line for one draft: where to turn speculation on, and one k for all of them."""

    draft: str
    enable: tuple[str, ...]  # GO domains
    keep_off: tuple[str, ...]  # NO-GO domains
    undecided: tuple[str, ...]  # INCONCLUSIVE domains
    shared_k: int | None  # best single k over the enabled domains, traffic-weighted by prompt count
    shared_speedup: float | None  # prompt-weighted mean speedup of the enabled domains at shared_k


def plan(draft_estimates: Sequence[Estimate]) -> DraftPlan:
    """Which domains to enable, and the k that maximises Σ n_d·S_d(k) / Σ n_d over them."""
    rows = [e for e in draft_estimates if e.domain != ALL]
    by = {d: tuple(e.domain for e in rows if e.verdict().decision == d) for d in stats.DECISIONS}
    enabled = [e for e in rows if e.verdict().decision == "GO"]
    shared_k = shared = None
    if enabled:
        k_max = min(e.k_max for e in enabled)
        weights = np.array([e.n_prompts for e in enabled], dtype=np.float64)
        mean = (weights[:, None] * np.stack([e.speedup[:k_max] for e in enabled])).sum(0) / weights.sum()
        shared_k = costmodel.best_k_of(mean)
        shared = float(mean[shared_k - 1])
    return DraftPlan(draft_estimates[0].draft, by["GO"], by["NO-GO"], by["INCONCLUSIVE"], shared_k, shared)


def plans(all_estimates: Sequence[Estimate]) -> list[DraftPlan]:
    drafts = list(dict.fromkeys(e.draft for e in all_estimates))
    return [plan([e for e in all_estimates if e.draft == d]) for d in drafts]


def recommendation_json(e: Estimate) -> dict[str, Any]:
    i = e.at()
    verdict = e.verdict()
    return {
        "draft": e.draft,
        "domain": e.domain,
        "n_prompts": e.n_prompts,
        "n_tokens": e.n_tokens,
        "best_k": e.best_k,
        "alpha": json_number(e.alpha),
        "alpha_lo": json_number(e.alpha_lo),
        "alpha_hi": json_number(e.alpha_hi),
        "tokens_per_iter": json_number(e.tokens_per_iter[i]),
        "draft_acceptance_rate": json_number(e.draft_acceptance_rate[i]),
        "per_position_acceptance": [json_number(r) for r in e.per_position_acceptance()],
        "speedup": json_number(e.speedup[i]),
        "speedup_lo": json_number(e.speedup_lo[i]),
        "speedup_hi": json_number(e.speedup_hi[i]),
        "speedup_iid": json_number(e.speedup_iid[i]),
        "cost_ratio": json_number(e.costs.cost_ratio),
        "measured_costs": e.costs.measured,
        "decision": verdict.decision,
        "more_prompts_needed": verdict.more_prompts,
        "effectively_off": e.effectively_off,
        "why": (e.why() + (f" (usual causes: {OFF_CAUSES})" if e.effectively_off else "")) or None,
        "model_disagreement": d.line() if (d := e.disagreement()) else None,
        "timing_warning": e.costs.warning,
    }


def recommendations_json(
    estimates: Sequence[Estimate], policies: Sequence[policy_estimate.PolicyEstimate] = ()
) -> list[dict[str, Any]]:
    """`recommendation_json` of each estimate plus its best threshold policy ("threshold_policy", or None)."""
    by = {(p.draft, p.domain): p for p in policies}
    out = []
    for e in estimates:
        p = by.get((e.draft, e.domain))
        out.append({**recommendation_json(e), "threshold_policy": policy_estimate.policy_json(p) if p else None})
    return out


def policy_grid_json(a: Analysis) -> dict[str, Any]:
    """What the threshold policies are, the grid searched, and which of their figures are exact."""
    if not a.exact:
        return {"simulated": False, "note": policy_estimate.SAMPLED_NOTE}
    counts = next(iter(a.policies.values()), None)
    if counts is None:
        short = any(t.blocks.k_max < 2 for t in a.traces)
        why = "threshold policies need k_max ≥ 2" if short else next(iter(a.no_policy.values()),
                                                                      policy_estimate.NGRAM_NOTE)
        return {"simulated": False, "note": why}
    return {
        "simulated": True,
        "rule": "propose the draft's top-1 token; stop after a proposal whose top-1 probability is below tau, "
                "or after k_max proposals (transformers' assistant_confidence_threshold, fixed)",
        "taus": list(counts.taus),
        "k_max": list(counts.k_maxes),
        "pick": "the highest speedup_lo_bound; ties to the smaller k_max, then the higher tau",
        "note": policy_estimate.STEP_BOUND_NOTE,
        "not_simulated": dict(a.no_policy),
    }


def plan_json(p: DraftPlan) -> dict[str, Any]:
    return {
        "draft": p.draft,
        "enable": list(p.enable),
        "keep_off": list(p.keep_off),
        "undecided": list(p.undecided),
        "shared_k": p.shared_k,
        "shared_speedup": json_number(p.shared_speedup),
    }


# --- what-if ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhatIf:
    """The i.i.d. model's k table for a given α and c, with no report."""

    alpha: float
    cost_ratio: float
    rows: tuple[tuple[int, float, float], ...]  # (k, tokens per iteration E(α, k), speedup S(α, k, c))
    best_k: int
    speedup: float  # S at the best k
    breakeven_alpha: float  # α* at the best k (inf when c ≥ 1)

    def to_json(self) -> dict[str, Any]:
        """The `recommend --alpha A --cost-ratio C --json` document."""
        return what_if_json(self)


def what_if(alpha: float, cost_ratio: float, k_max: int) -> WhatIf:
    if not 0.0 <= alpha <= 1.0:
        raise SpecprofError(f"--alpha {alpha}: must be between 0 and 1")
    if not cost_ratio >= 0.0 or math.isinf(cost_ratio):
        raise SpecprofError(f"--cost-ratio {cost_ratio}: must be a finite number ≥ 0")
    if k_max < 1:
        raise SpecprofError(f"--k-max {k_max}: must be ≥ 1")
    rows = tuple(costmodel.iid_table(alpha, cost_ratio, k_max))
    k = costmodel.best_k({r[0]: r[2] for r in rows})
    return WhatIf(alpha, cost_ratio, rows, k, rows[k - 1][2], costmodel.breakeven_alpha(k, cost_ratio))


def what_if_json(w: WhatIf) -> dict[str, Any]:
    return {
        "alpha": w.alpha,
        "cost_ratio": w.cost_ratio,
        "best_k": w.best_k,
        "speedup": w.speedup,
        "breakeven_alpha": json_number(w.breakeven_alpha),
        "rows": [{"k": k, "tokens_per_iter": e, "speedup": s} for k, e, s in w.rows],
    }


# --- gate ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One gate check on one draft × domain."""

    draft: str
    domain: str
    k: int
    name: str  # "speedup", "alpha" or "alpha_drop"
    measured: str  # which figure was checked: "lower bound", "point", "baseline − new"
    value: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class GateResult:
    """`gate`'s answer: every check; the gate passes when all do (exit code 0, else 1)."""

    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The `gate --json` document."""
        return {"passed": self.passed, "checks": [check_json(c) for c in self.checks]}


def gate_report(
    report: str | Path | Report,
    *,
    min_speedup: float | None = None,
    min_alpha: float | None = None,
    domain: Sequence[str] = (),
    draft: Sequence[str] = (),
    k: int | None = None,
    point: bool = False,
    baseline: str | Path | Report | None = None,
    max_alpha_drop: float | None = None,
    force: bool = False,
) -> GateResult:
    """`specprof gate REPORT` with the same flags: load the report (and the baseline) and run the checks."""
    domains = (domain,) if isinstance(domain, str) else tuple(domain)
    drafts = (draft,) if isinstance(draft, str) else tuple(draft)
    analysis = load_analysis(report, drafts, domains)
    old = load_analysis(baseline) if baseline is not None else None
    return GateResult(tuple(gate(analysis, min_speedup, min_alpha, domains, k, point, old, max_alpha_drop, force)))


def gate(
    a: Analysis,
    min_speedup: float | None = None,
    min_alpha: float | None = None,
    domains: Sequence[str] = (),
    k: int | None = None,
    point: bool = False,
    baseline: Analysis | None = None,
    max_alpha_drop: float | None = None,
    force: bool = False,
) -> list[Check]:
    """Every check the flags ask for, on every selected draft × domain (default: every domain and ALL)."""
    if min_speedup is None and min_alpha is None and max_alpha_drop is None:
        raise SpecprofError("nothing to check: pass --min-speedup, --min-alpha or --baseline with --max-alpha-drop")
    if (baseline is None) != (max_alpha_drop is None):
        raise SpecprofError("--baseline and --max-alpha-drop go together: pass both or neither")
    flags = (("--min-speedup", min_speedup), ("--min-alpha", min_alpha), ("--max-alpha-drop", max_alpha_drop))
    for flag, value in flags:
        if value is not None and not (value == value and math.isfinite(value)):
            raise SpecprofError(f"{flag} {value}: must be a finite number")
    if k is not None:
        k_max = min(t.blocks.k_max for t in a.traces)
        if not 1 <= k <= k_max:
            raise SpecprofError(f"--k {k}: the report covers k = 1..{k_max}")
    if baseline is not None:
        check_comparable(baseline, a, force)
    pairs = pair_drafts(baseline, a) if baseline is not None else {}
    base = {(e.draft, e.domain): e for e in estimates(baseline)} if baseline is not None else {}
    checks = []
    current = estimates(a, domains=domains)
    for e in current:
        kk = e.best_k if k is None else k
        i = kk - 1
        if min_speedup is not None:
            value = float(e.speedup[i] if point else e.speedup_lo[i])
            checks.append(Check(e.draft, e.domain, kk, "speedup", _which(point), value, min_speedup,
                                value >= min_speedup))
        if min_alpha is not None:
            value = e.alpha if point else e.alpha_lo
            checks.append(Check(e.draft, e.domain, kk, "alpha", _which(point), value, min_alpha, value >= min_alpha))
        if baseline is not None:
            old = base.get((pairs.get(e.draft, ""), e.domain))
            if old is None:
                if domains and e.domain in domains:
                    raise SpecprofError(f"--domain {e.domain}: not in the baseline report {baseline.path}")
                continue
            drop = old.alpha - e.alpha
            assert max_alpha_drop is not None  # checked above: it goes with --baseline
            checks.append(Check(e.draft, e.domain, kk, "alpha_drop", "baseline − new", drop, max_alpha_drop,
                                drop <= max_alpha_drop))
    return checks


def _which(point: bool) -> str:
    return "point" if point else "lower bound"


def check_json(c: Check) -> dict[str, Any]:
    return {"draft": c.draft, "domain": c.domain, "k": c.k, "check": c.name, "measured": c.measured,
            "value": json_number(c.value), "threshold": c.threshold, "passed": c.passed}


# --- compare ---------------------------------------------------------------------------------------

# What must match for two reports to measure the same thing.
