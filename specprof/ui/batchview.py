"""The terminal view of `recommend --concurrency`: per draft, the decision at each serving batch size.

One row per domain (ALL last), one column per batch size ("k=3 1.42 [1.30, 1.55]" over "GO"), and
the crossover batch size with its interval. No computation beyond formatting (`core/pricing/batchcost.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from specprof.core.pricing.batchcost import IGNORES, BatchPlan, Crossover
from specprof.core.pricing.timings import Timings
from specprof.core.vocabulary import ALL
from specprof.ui.render import DECISION_STYLE, fmt_interval


def crossover_text(c: Crossover, smallest: int, largest: int) -> str:
    """"≈ 10.0" over "[6.5, 14.2]" (an end beyond the measured sizes as "≤ 1" or "> 32"); "–" for none."""
    if c.batch_size is None:
        return "–"
    lo = f"≤ {smallest}" if c.lo is None else f"{c.lo:.1f}"
    hi = f"> {largest}" if c.hi is None else f"{c.hi:.1f}"
    return f"≈ {c.batch_size:.1f}\n[{lo}, {hi}]"


def batch_view(plans: Sequence[BatchPlan], source: str) -> Group:
    """One table per draft; `source` says where the costs come from (the report, a costs file)."""
    parts: list = []
    drafts = list(dict.fromkeys(p.draft for p in plans))
    for draft in drafts:
        rows = [p for p in plans if p.draft == draft]
        sizes = [x.batch_size for x in rows[0].points]
        table = Table(title=f"draft {draft}: best k, speedup [95% CI] and decision at each serving batch size",
                      title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                      show_lines=True)
        table.add_column("domain", no_wrap=True)
        for b in sizes:
            table.add_column(f"batch {b}", no_wrap=True)
        table.add_column("crossover", no_wrap=True)
        for p in rows:
            cells = []
            for x in p.points:
                cell = Text(f"k={x.best_k} {fmt_interval(x.speedup, x.speedup_lo, x.speedup_hi)}\n")
                cell.append(x.decision, style=DECISION_STYLE.get(x.decision, ""))
                cells.append(cell)
            cross = crossover_text(p.crossover, sizes[0], sizes[-1])
            if p.crossover.batch_size is None:
                pays = [x.speedup >= 1.0 for x in p.points]
                cross = "pays at every size" if all(pays) else "pays at none" if not any(pays) else "–"
            table.add_row(f"[bold]{p.domain}[/]" if p.domain == ALL else p.domain, *cells, cross)
        parts += [table, Text("")]
    parts.append(Text(f"costs measured at each batch size ({source}); speedup at batch b = tokens/iter · t_T(1; b) / "
                      "(k·t_D(b) + t_T(k+1; b) + f_k·t_C(b)); crossover: the batch size beyond which the speedup "
                      "falls below 1 (linear in b between measured sizes) [the same from the lower, upper bound]"))
    parts.append(Text(f"note: {IGNORES}"))
    return Group(*parts)


def costs_table(timings: Timings) -> Table:
    """Measured costs per batch size: t_T(1; b), the verification ratios t_T(n; b) / t_T(1; b) and each draft's step."""
    by = timings.by_batch_size or (timings,)
    n_max = len(timings.target_forward_s)
    drafts = list(timings.draft_step_s)
    table = Table(title=f"forward times per serving batch size (KV cache of {timings.context_tokens} tokens per "
                        "sequence)", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  caption="n=2.. : t_T(n; b) / t_T(1; b), the target verifying n tokens for each of b sequences "
                          "in one pass against 1 token each; t_D(b): one draft step for all b (c = t_D / t_T(1))",
                  caption_justify="left")
    table.add_column("batch", justify="right")
    table.add_column("t_T(1) ms", justify="right")
    for n in range(2, n_max + 1):
        table.add_column(f"n={n}", justify="right")
    for d in drafts:
        table.add_column(f"{d}: t_D ms (c)", justify="right", no_wrap=True)
    for t in by:
        t1 = t.target_forward_s[0]
        table.add_row(str(t.batch_size), f"{1000 * t1:.2f}", *(f"{x / t1:.2f}" for x in t.target_forward_s[1:]),
                      *(f"{1000 * t.draft_step_s[d]:.3g} ({t.draft_step_s[d] / t1:.2f})" for d in drafts))
    return table
