"""Rich tables and one-line messages for the terminal. No torch, no computation beyond formatting."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.table import Table

from specprof.summary import ALL

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
    """One row per draft × domain: the k with the highest speedup (ties to the smaller k)."""
    ordered = summary.sort_values(["draft", "domain", "speedup", "k"], ascending=[True, True, False, True])
    best = ordered.groupby(["draft", "domain"], sort=False).head(1)
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
    ]:
        table.add_column(name, justify=justify)
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
            f"[{DECISION_STYLE.get(decision, '')}]{decision}[/]" if decision else "",
        )
    return table


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
    """One line per `verify.Divergence`: where, which tokens, the margin and the float32 verdict."""
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
