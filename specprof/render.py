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
