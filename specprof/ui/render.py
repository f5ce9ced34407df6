"""Rich tables and one-line messages for the terminal. No torch, no computation beyond formatting."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from specprof.core.answers.compare import Comparison
from specprof.core.answers.decide import Check, DraftPlan, WhatIf
from specprof.core.pricing import costmodel
from specprof.core.pricing.estimate import OFF_CAUSES, Estimate
from specprof.core.pricing.policy_estimate import STEP_BOUND_NOTE, PolicyEstimate
from specprof.core.vocabulary import ALL

if TYPE_CHECKING:  # pandas loads only where a function needs it: the decision commands start faster
    import pandas as pd

DECISION_STYLE = {"GO": "bold green", "NO-GO": "bold red", "INCONCLUSIVE": "yellow", "": ""}


def fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def fmt_interval(point: float, lo: float, hi: float, digits: int = 2) -> str:
    if any(v is None or math.isnan(v) for v in (point, lo, hi)) or lo == hi == point:
        return fmt(point, digits)
    return f"{fmt(point, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def best_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per draft × domain: the k with the highest speedup (ties to the smaller k, as costmodel.best_k)."""

    keep = [
        rows.index[rows["k"] == costmodel.best_k(dict(zip(rows["k"], rows["speedup"])))][0]
        for _, rows in summary.groupby(["draft", "domain"], sort=False)
    ]
    best = summary.loc[keep]
    order = {d: i for i, d in enumerate(dict.fromkeys(summary["domain"]))}
    drafts = {d: i for i, d in enumerate(dict.fromkeys(summary["draft"]))}
    return best.sort_values(
        ["draft", "domain"], key=lambda s: s.map(drafts) if s.name == "draft" else s.map(order)
    ).reset_index(drop=True)


def profile_table(summary: pd.DataFrame, draft: str) -> Table:
    rows = best_rows(summary[summary["draft"] == draft])
    table = Table(title=f"draft {draft}", title_justify="left")
    for name, justify in [
        ("domain", "left"),
        ("prompts", "right"),
        ("tokens", "right"),
        ("α", "right"),
        ("best k", "right"),
        ("tokens/iter", "right"),
        ("speedup", "right"),
        ("decision", "left"),
        ("why", "left"),
    ]:
        table.add_column(name, justify=justify, overflow="fold")
    for r in rows.itertuples():
        decision = r.decision or ""
        table.add_row(
            f"[bold]{r.domain}[/]" if r.domain == ALL else r.domain,
            str(r.n_prompts),
            str(r.n_tokens),
            fmt_interval(r.alpha, r.alpha_lo, r.alpha_hi),
            str(r.k),
            fmt(r.tokens_per_iter),
            fmt_interval(r.speedup, r.speedup_lo, r.speedup_hi),
            styled(decision),
            Text(str(getattr(r, "note", "") or "")),
        )
    return table


def styled(decision: str) -> Text:
    return Text(decision, style=DECISION_STYLE.get(decision, ""))


def costs_caption(e: Estimate) -> str:
    c = e.costs
    if not c.measured:
        return f"--cost-ratio c = {c.cost_ratio:g}, verification as one target step"
    line = (
        f"measured costs: a draft step is {100 * c.cost_ratio:.3g}% of a target step; verifying k + 1 tokens costs "
        f"{min(c.verify_cost):.2f}–{max(c.verify_cost):.2f}× one target step"
    )
    return line + (f"\nwarning: {c.warning}" if c.warning else "")


def disagreement_note(estimates: Sequence[Estimate]) -> str | None:
    """One line for a draft: where the i.i.d. and empirical speedups differ by > 10%, and why."""
    found = [(e, d) for e in estimates if e.domain != ALL and (d := e.disagreement()) is not None]
    if not found:
        return None
    ratios = [d.ratio - 1.0 for _, d in found]
    n_domains = sum(e.domain != ALL for e in estimates)
    reasons = list(dict.fromkeys(d.cost_reason() for _, d in found if d.costs_differ))
    tokens = [e.domain for e, d in found if d.tokens_differ]
    if tokens:
        runs = sum(d.tokens_factor > 1 for _, d in found if d.tokens_differ)
        kind = "matches come in runs" if runs * 2 >= len(tokens) else "mismatches cluster"
        reasons.append(
            f"measured tokens/iter differs from the i.i.d. E(α, k) in {len(tokens)} of them "
            f"(acceptance is not i.i.d. along a sequence: {kind})"
        )
    span = f"{min(ratios):+.0%}" if len(found) == 1 else f"{min(ratios):+.0%} to {max(ratios):+.0%}"
    return (
        f"empirical vs i.i.d. speedup at the best k differ by more than 10% in {len(found)} of {n_domains} "
        f"domains ({span}): " + "; ".join(reasons or ["both effects small but together > 10%"])
    )


def recommend_view(
    estimates: Sequence[Estimate], plans: Sequence[DraftPlan], min_speedup: float,
    policies: Sequence[PolicyEstimate] = (), no_policy: Mapping[str, str] | None = None,
) -> Group:
    """Per draft: the table at each domain's best k, the reasons and notes under it, the overall line,
    then the best confidence-threshold policy per domain beside the best fixed k (when simulated)."""
    parts: list = []
    for p in plans:
        rows = [e for e in estimates if e.draft == p.draft]
        table = Table(title=f"draft {p.draft}", title_justify="left", caption=costs_caption(rows[0]),
                      caption_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
        for name in ("domain", "prompts", "α [95% CI]", "best k", "tokens/iter", "draft acc.", "r_1..r_k (%)",
                     "speedup [95% CI]", "i.i.d.", "decision"):
            table.add_column(name, justify="left" if name in ("domain", "r_1..r_k (%)", "decision") else "right",
                             no_wrap=True)
        reasons: dict[str, list[str]] = {}  # one note per distinct reason, naming its domains
        for e in rows:
            i = e.at()
            table.add_row(
                f"[bold]{e.domain}[/]" if e.domain == ALL else e.domain,
                str(e.n_prompts),
                fmt_interval(e.alpha, e.alpha_lo, e.alpha_hi),
                str(e.best_k),
                fmt(e.tokens_per_iter[i]),
                fmt(e.draft_acceptance_rate[i]),
                " ".join(f"{100 * r:.0f}" for r in e.per_position_acceptance()),
                fmt_interval(e.speedup[i], e.speedup_lo[i], e.speedup_hi[i]),
                fmt(e.speedup_iid[i]),
                styled(e.verdict().decision),
            )
            if e.why():
                reasons.setdefault(f"{e.verdict().decision} — {e.why()}", []).append(e.domain)
        notes = [f"  {', '.join(domains)}: {reason}" for reason, domains in reasons.items()]
        off = [e.domain for e in rows if e.effectively_off and e.domain != ALL]
        if off:
            notes.append(f"speculation is effectively off for {', '.join(off)}; usual causes: {OFF_CAUSES}")
        if (line := disagreement_note(rows)) is not None:
            notes.append(line)
        parts += [table, *(Text(n) for n in notes), Text(plan_line(p, min_speedup))]
        mine = [q for q in policies if q.draft == p.draft]
        if mine:
            parts.append(policy_table(mine))
        elif no_policy and p.draft in no_policy:
            parts.append(Text(f"{p.draft}: {no_policy[p.draft]}"))
        parts.append(Text(""))
    if policies:
        parts.append(Text(f"note: {STEP_BOUND_NOTE}"))
        parts.append(Text(""))
    return Group(*parts[:-1])


POLICY_CAPTION = ("speedup bounds: unrecorded draft steps after a rejection priced at their dearest (lower) and "
                  "cheapest (upper) count; 95% CI over prompts; gain vs fixed k: both together")
POLICY_MARK = {"beats fixed k": "[bold green]beats fixed k[/]", "worse than fixed k": "[red]worse than fixed k[/]"}


def policy_table(policies: Sequence[PolicyEstimate]) -> Table:
    """Per domain: the best "draft while top-1 p ≥ τ, at most k_max" policy against the best fixed k."""
    table = Table(title="confidence-threshold drafting: stop after a proposal whose top-1 p < τ, at most k_max",
                  title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  caption=POLICY_CAPTION,
                  caption_justify="left")
    for name in ("domain", "fixed k", "speedup", "k_max", "τ", "tokens/iter", "draft steps/iter",
                 "speedup bounds [95% CI]", "gain vs fixed k", "verdict"):
        table.add_column(name, justify="left" if name in ("domain", "verdict") else "right", no_wrap=True)
    for q in policies:
        table.add_row(
            f"[bold]{q.domain}[/]" if q.domain == ALL else q.domain,
            str(q.fixed_k),
            fmt(q.fixed_speedup),
            str(q.k_max),
            f"{q.tau:g}",
            fmt_interval(q.tokens_per_iter, q.tokens_per_iter_lo, q.tokens_per_iter_hi),
            fmt_range(q.draft_steps_lo_bound, q.draft_steps_hi_bound),
            f"{fmt_range(q.speedup_lo_bound, q.speedup_hi_bound)} [{fmt(q.speedup_lo)}, {fmt(q.speedup_hi)}]",
            f"[{q.gain_lo:+.3f}, {q.gain_hi:+.3f}]",
            POLICY_MARK.get(q.verdict, q.verdict),
        )
    return table


def fmt_range(lo: float, hi: float, digits: int = 2) -> str:
    """"a–b" for a bounded figure, one number when the bounds agree at this precision."""
    a, b = fmt(lo, digits), fmt(hi, digits)
    return a if a == b else f"{a}–{b}"


def plan_line(p: DraftPlan, min_speedup: float) -> str:
    if not p.enable:
        head = f"{p.draft}: enable speculation nowhere (no domain's lower bound reaches {min_speedup:g}x)"
    else:
        head = (
            f"{p.draft}: enable speculation for {', '.join(p.enable)}; one k for all of them: "
            f"k={p.shared_k} ({fmt(p.shared_speedup)}x, weighted by prompts)"
        )
    tail = []
    if p.keep_off:
        tail.append(f"keep it off for {', '.join(p.keep_off)}")
    if p.undecided:
        tail.append(f"undecided: {', '.join(p.undecided)}")
    return head + ("; " + "; ".join(tail) if tail else "")


def what_if_view(w: WhatIf) -> Group:
    table = Table(title=f"i.i.d. model: α = {w.alpha:g}, c = {w.cost_ratio:g}", title_justify="left")
    for name in ("k", "tokens/iter", "speedup"):
        table.add_column(name, justify="right")
    for k, e, s in w.rows:
        mark = "[bold]" if k == w.best_k else ""
        table.add_row(f"{mark}{k}", f"{mark}{e:.3f}", f"{mark}{s:.3f}")
    breakeven = "none (c ≥ 1: a draft as slow as the target never pays)" if math.isinf(w.breakeven_alpha) \
        else f"{w.breakeven_alpha:.3f}"
    return Group(
        table,
        Text(f"best k = {w.best_k}: {w.speedup:.2f}x; breakeven α at k={w.best_k}: {breakeven}"),
    )


def gate_view(checks: Sequence[Check]) -> Group:
    table = Table(title="specprof gate", title_justify="left")
    for name, justify in [("draft", "left"), ("domain", "left"), ("k", "right"), ("check", "left"),
                          ("measured", "right"), ("threshold", "right"), ("result", "left")]:
        table.add_column(name, justify=justify)
    for c in checks:
        op = "≤" if c.name == "alpha_drop" else "≥"
        result = Text("PASS", style="green") if c.passed else Text("FAIL", style="bold red")
        table.add_row(c.draft, c.domain, str(c.k), f"{c.name} ({c.measured})", fmt(c.value, 3),
                      f"{op} {c.threshold:g}", result)
    failed = sum(not c.passed for c in checks)
    n = len(checks)
    verdict = f"gate: FAIL ({failed} of {n} checks failed)" if failed else f"gate: PASS ({n} checks)"
    return Group(table, Text(verdict))


COMPARE_FOOTER = "* the 95% bootstrap interval of B − A excludes 0"


def compare_view(comparisons: Sequence[Comparison], a: str, b: str) -> Group:
    starred = any(c.alpha.significant or c.speedup.significant for c in comparisons)
    table = Table(title=f"B − A (A = {a}, B = {b})", title_justify="left",
                  caption=COMPARE_FOOTER if starred else None, caption_justify="left")
    for name, justify in [("draft", "left"), ("domain", "left"), ("α A", "right"), ("α B", "right"),
                          ("Δα [95% CI]", "right"), ("k A/B", "right"), ("speedup A", "right"),
                          ("speedup B", "right"), ("Δspeedup [95% CI]", "right")]:
        table.add_column(name, justify=justify)
    for c in comparisons:
        draft = c.draft_b if c.draft_a == c.draft_b else f"{c.draft_a} → {c.draft_b}"
        table.add_row(
            draft, f"[bold]{c.domain}[/]" if c.domain == ALL else c.domain,
            fmt(c.alpha.a, 3), fmt(c.alpha.b, 3),
            diff_cell(c.alpha.diff, c.alpha.lo, c.alpha.hi, c.alpha.significant, 3),
            f"{c.k_a}/{c.k_b}", fmt(c.speedup.a), fmt(c.speedup.b),
            diff_cell(c.speedup.diff, c.speedup.lo, c.speedup.hi, c.speedup.significant, 2),
        )
    caveats: dict[tuple[str, str], list[str]] = {}  # one line per draft and caveat, naming its domains
    for c in comparisons:
        if c.caveat:
            draft = c.draft_b if c.draft_a == c.draft_b else f"{c.draft_a} → {c.draft_b}"
            caveats.setdefault((draft, c.caveat), []).append(c.domain)
    notes = [Text(f"  {draft} in {', '.join(domains)}: {caveat}") for (draft, caveat), domains in caveats.items()]
    return Group(table, *notes)


def diff_cell(diff: float, lo: float, hi: float, significant: bool, digits: int) -> str:
    sign = lambda x: f"{x:+.{digits}f}"  # noqa: E731
    return f"{sign(diff)} [{sign(lo)}, {sign(hi)}]{' *' if significant else ''}"


def print_error(console: Console, message: str) -> None:
    console.print(f"specprof: error: {message}", markup=False, highlight=False, emoji=False)


def verify_table(rows: list, temperature: float) -> Table:
    """Predicted against measured, per draft × domain × k (rows are `verify.VerifyRow`).

    Speedups compare decode phases (what the cost model prices); end-to-end includes prefill.
    """
    table = Table(title="verify: predicted vs measured on this machine", title_justify="left")
    columns = ["draft", "domain", "k", "prompts", "tok/iter pred", "tok/iter meas", "speedup pred",
               "speedup meas", "error", "end-to-end"]
    if temperature > 0:
        columns += ["α report", "α measured"]
    columns.append("check")
    for name in columns:
        table.add_column(name, justify="left" if name in ("draft", "domain", "check") else "right")
    for r in rows:
        cells = [
            r.draft,
            f"[bold]{r.domain}[/]" if r.domain == ALL else r.domain,
            str(r.k),
            str(r.n_prompts),
            fmt(r.predicted_tokens_per_iter, 3),
            fmt(r.measured_tokens_per_iter, 3),
            fmt(r.predicted_speedup),
            fmt(r.measured_speedup),
            "–" if math.isnan(r.relative_error) else f"{r.relative_error:+.1%}",
            fmt(r.measured_speedup_end_to_end),
        ]
        if temperature > 0:
            cells += [fmt_interval(r.alpha, r.alpha_lo, r.alpha_hi, 3), fmt(r.measured_alpha, 3)]
        cells.append(f"[red]{r.check}[/]" if r.check else "[green]ok[/]")
        table.add_row(*cells)
    return table


def divergence_line(d) -> str:
    """One line per `diagnose.Divergence`: where, which tokens, the margin and the float32 verdict."""
    what = {
        "speculative": "speculative output ≠ target alone",
        "target": "target alone ≠ the report's continuation",
        "draft": "draft proposal ≠ the report's",
        "iterations": "iterations ≠ the report's (outputs and proposals agree)",
    }[d.kind]
    where = f"draft {d.draft}" + (f", k={d.k}" if d.k else "")
    if d.kind == "iterations":
        return f"{what}: prompt {d.prompt_id} ({where}): report {d.expected_token}, live {d.got_token} [{d.verdict}]"
    verdict = (
        "near-tie: the two tokens' float32 logits differ by "
        f"{abs(d.float32_gap):.2g}; low-precision or differently batched kernels may order them either way"
        if d.verdict == "near-tie"
        else f"not a near-tie (float32 gap {fmt(d.float32_gap, 3)}): a real difference"
    )
    return (
        f"{what}: prompt {d.prompt_id} ({where}) position {d.position}: expected token {d.expected_token}, "
        f"got {d.got_token}; top-1/top-2 logit margin {fmt(d.margin, 4)}; {verdict}"
    )


# --- inspect ---------------------------------------------------------------------------------------
