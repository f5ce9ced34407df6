"""`compare`: α and speedup of report B against report A per draft × domain, with paired bootstrap intervals.

Reports of different targets or sampling settings are refused unless forced. Drafts pair by name,
or in report order when no name is shared (a new checkpoint of one draft). When both reports hold
the same prompts one resample drives both (paired); otherwise each is resampled on its own. A
difference is significant when its 95% interval excludes 0 and both reports hold enough prompts
in the domain (recommend's rule). No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specprof.core.answers.analysis import Analysis, load_analysis
from specprof.core.jsonvalues import json_number
from specprof.core.pricing import stats
from specprof.core.pricing.estimate import point_figures, prompt_sums, split_ratios
from specprof.core.pricing.stats import draw_weights
from specprof.core.pricing.timings import costs_for
from specprof.core.records.reportfiles import Report
from specprof.core.simulation.threads import thread_map
from specprof.core.simulation.traces import DraftTrace, domain_groups
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError

COMPARABLE_SETTINGS = ("temperature", "top_p", "max_new_tokens", "chat_template")


def check_comparable(a: Analysis, b: Analysis, force: bool) -> None:
    """Refuse reports of different targets or sampling settings (unless `force`)."""
    if force:
        return
    ta, tb = a.run.get("target") or {}, b.run.get("target") or {}
    ida = ta.get("fingerprint") or ta.get("name")
    idb = tb.get("fingerprint") or tb.get("name")
    if ida != idb:
        raise SpecprofError(
            f"{a.path} and {b.path} profile different targets ({ta.get('name')} vs {tb.get('name')}); "
            "pass --force to compare anyway"
        )
    sa, sb = a.run.get("settings") or {}, b.run.get("settings") or {}
    for key in COMPARABLE_SETTINGS:
        if sa.get(key) != sb.get(key):
            raise SpecprofError(
                f"{a.path} and {b.path} differ in {key} ({sa.get(key)} vs {sb.get(key)}); "
                "pass --force to compare anyway"
            )


def pair_drafts(a: Analysis, b: Analysis) -> dict[str, str]:
    """Draft in `b` → its counterpart in `a`: same name, or (no shared names, same count) report order.

    A new checkpoint usually has a new name (`ckpt-2000` vs `ckpt-1000`), so with one draft per
    report the two are paired.
    """
    names_a = [t.draft for t in a.traces]
    names_b = [t.draft for t in b.traces]
    shared = [n for n in names_b if n in names_a]
    if shared:
        return {n: n for n in shared}
    if len(names_a) == len(names_b):
        return dict(zip(names_b, names_a))
    raise SpecprofError(
        f"{a.path} and {b.path} share no draft names ({', '.join(names_a)} vs {', '.join(names_b)}); "
        "select one draft in each with --draft"
    )


@dataclass(frozen=True)
class Difference:
    """B − A for one figure with its bootstrap interval."""

    a: float
    b: float
    diff: float
    lo: float
    hi: float
    enough_prompts: bool = True  # both sides hold ≥ stats.MIN_PROMPTS prompts, as a decision needs

    @property
    def significant(self) -> bool:
        """The interval excludes 0, and both sides have enough prompts for an interval to mean something."""
        return self.enough_prompts and stats.difference_significant(self.lo, self.hi)


@dataclass(frozen=True)
class Comparison:
    draft_a: str
    draft_b: str
    domain: str
    paired: bool  # the same prompts in both: one resample drives both reports
    k_a: int  # each report's own best k
    k_b: int
    alpha: Difference
    speedup: Difference  # at each report's best k
    n_prompts_a: int = 0
    n_prompts_b: int = 0

    @property
    def caveat(self) -> str | None:
        """Why no difference is marked significant although an interval may exclude 0 (recommend's rule)."""
        few = [(side, n) for side, n in (("A", self.n_prompts_a), ("B", self.n_prompts_b)) if n < stats.MIN_PROMPTS]
        if not few:
            return None
        unit = "prompt" if few[0][1] == 1 else "prompts"
        counts = f"{few[0][1]} {unit} in {few[0][0]}" + "".join(f" and {n} in {side}" for side, n in few[1:])
        return f"only {counts}; a difference needs {stats.MIN_PROMPTS}+ prompts on each side to be marked *"


@dataclass(frozen=True)
class ComparisonResult:
    """`compare`'s answer: B against A per draft × domain."""

    a: Path  # report A's directory
    b: Path
    comparisons: tuple[Comparison, ...]

    def to_json(self) -> dict[str, Any]:
        """The `compare --json` document."""
        return {"a": str(self.a), "b": str(self.b), "comparisons": [comparison_json(c) for c in self.comparisons]}


def compare_reports(report_a: str | Path | Report, report_b: str | Path | Report, force: bool = False
                    ) -> ComparisonResult:
    """`specprof compare REPORT_A REPORT_B`: load both reports and compare B against A."""
    a, b = thread_map(load_analysis, [report_a, report_b])  # both read at once: Arrow decodes without the GIL
    return ComparisonResult(a.path, b.path, tuple(compare(a, b, force)))


def compare(a: Analysis, b: Analysis, force: bool = False, seed: int = stats.SEED) -> list[Comparison]:
    """α and speedup of B against A per draft × domain (domains in both, then ALL), with bootstrap
    intervals of the differences."""
    check_comparable(a, b, force)
    pairs = pair_drafts(a, b)
    out = []
    cache: dict = {}  # drafts profiled on the same prompts share their resample weights
    for tb in b.traces:
        if tb.draft not in pairs:
            continue
        ta = a.trace(pairs[tb.draft])
        costs_a = costs_for(ta.draft, a.timings, None, ta.blocks.k_max)
        costs_b = costs_for(tb.draft, b.timings, None, tb.blocks.k_max)
        sums_a, sums_b, paired = _joint_sums(ta, tb, seed, cache)
        groups_a = dict(domain_groups(ta))
        for domain, mask_b in domain_groups(tb):
            if domain not in groups_a:
                continue
            # point figures only: compare prints no interval of either side, only of the difference
            pa, pb = point_figures(ta.select(groups_a[domain]), costs_a), point_figures(tb.select(mask_b), costs_b)
            alpha_a, tpi_a = split_ratios(sums_a[domain])
            alpha_b, tpi_b = split_ratios(sums_b[domain])
            # the resamples priced like their points: each side's blocks (full acceptances, proposal counts)
            speed_a = pa.costs.speedup(tpi_a)[:, pa.best_k - 1]
            speed_b = pb.costs.speedup(tpi_b)[:, pb.best_k - 1]
            n_a, n_b = pa.pooled.n_prompts, pb.pooled.n_prompts
            enough = min(n_a, n_b) >= stats.MIN_PROMPTS
            out.append(Comparison(
                ta.draft, tb.draft, domain, paired[domain], pa.best_k, pb.best_k,
                _difference(pa.pooled.alpha, pb.pooled.alpha, alpha_b - alpha_a, enough),
                _difference(float(pa.speedup[pa.best_k - 1]), float(pb.speedup[pb.best_k - 1]), speed_b - speed_a,
                            enough),
                n_a, n_b,
            ))
    return out


def _joint_sums(
    ta: DraftTrace, tb: DraftTrace, seed: int, cache: dict | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, bool]]:
    """Resampled sums of both reports per domain (and ALL, stratified), paired where the prompts agree.

    Where a domain holds the same prompts in both reports, one weight matrix drives both (prompt
    difficulty then cancels in B − A, and the interval is much narrower); elsewhere the two are
    resampled independently.
    """
    values_a, values_b = prompt_sums(ta), prompt_sums(tb)
    groups_a, groups_b = dict(domain_groups(ta)), dict(domain_groups(tb))
    sums_a, sums_b, paired = {}, {}, {}
    for domain in dict.fromkeys([*groups_a, *groups_b]):
        if domain == ALL:
            continue
        mask_a, mask_b = groups_a.get(domain), groups_b.get(domain)
        ids_a = ta.prompt_ids[mask_a] if mask_a is not None else np.array([])
        ids_b = tb.prompt_ids[mask_b] if mask_b is not None else np.array([])
        same_order = len(ids_a) == len(ids_b) > 0 and bool((ids_a == ids_b).all())  # the usual case: no reordering
        paired[domain] = same_order or (len(ids_a) == len(ids_b) > 0 and set(ids_a) == set(ids_b))
        if mask_a is not None:
            weights = draw_weights(seed, f"compare:{domain}", len(ids_a), stats.N_RESAMPLES, cache)
            sums_a[domain] = weights @ values_a[mask_a]
        if mask_b is not None:
            if paired[domain]:  # one weight per prompt, whatever the order B holds them in
                if not same_order:
                    order = {p: i for i, p in enumerate(ids_a)}
                    weights = weights[:, [order[p] for p in ids_b]]
            else:
                weights = draw_weights(seed, f"compare-b:{domain}", len(ids_b), stats.N_RESAMPLES, cache)
            sums_b[domain] = weights @ values_b[mask_b]
    sums_a[ALL] = np.sum(list(sums_a.values()), axis=0)
    sums_b[ALL] = np.sum(list(sums_b.values()), axis=0)
    paired[ALL] = all(paired.values())
    return sums_a, sums_b, paired


def _difference(a: float, b: float, samples: np.ndarray, enough_prompts: bool = True) -> Difference:
    lo, hi = stats.percentile_interval(samples[:, None], np.array([b - a]))
    return Difference(a, b, b - a, float(lo[0]), float(hi[0]), enough_prompts)


def comparison_json(c: Comparison) -> dict[str, Any]:
    def diff(d: Difference) -> dict[str, Any]:
        return {"a": json_number(d.a), "b": json_number(d.b), "diff": json_number(d.diff),
                "diff_lo": json_number(d.lo), "diff_hi": json_number(d.hi), "significant": d.significant}

    return {"draft_a": c.draft_a, "draft_b": c.draft_b, "domain": c.domain, "paired": c.paired,
            "best_k_a": c.k_a, "best_k_b": c.k_b, "alpha": diff(c.alpha), "speedup": diff(c.speedup),
            "n_prompts_a": c.n_prompts_a, "n_prompts_b": c.n_prompts_b, "caveat": c.caveat}
