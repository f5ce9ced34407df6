"""The request-by-request plots of `specprof report` (issue 24), beside `plots`.

- `requests_plot`: per draft, the distribution over requests of tokens/iter at each domain's k
  (one row per domain, ALL last: every request a dot, the median a bar, p10–p90 a line), and
  the share of requests where speculation loses in the row's label.
- `context_plot`: per draft, tokens/iter (α at T > 0) against context length and against
  position in the continuation, by bucket with 95% intervals, one line per domain, ALL in black.

What this module does not do: compute figures (`core/answers/perrequest`, `context`) or write files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from specprof.core.answers.context import Buckets
from specprof.core.answers.perrequest import PerRequest, spread
from specprof.core.vocabulary import ALL
from specprof.ui.plots import Plot, _figure, _palette, slug


def requests_plot(rows: Sequence[PerRequest]) -> Plot:
    draft = rows[0].draft
    ordered = [r for r in rows if r.domain != ALL] + [r for r in rows if r.domain == ALL]
    fig = _figure(8.0, 0.35 * len(ordered) + 1.2)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # vertical jitter only, fixed: the page is reproducible
    for y, r in enumerate(ordered):
        values = r.tokens_per_iter[np.isfinite(r.tokens_per_iter)]
        colour = "black" if r.domain == ALL else "#1f77b4"
        ax.scatter(values, y + rng.uniform(-0.15, 0.15, len(values)), s=6, color=colour, alpha=0.5, lw=0)
        s = spread(values)
        if s.n:
            ax.plot([s.p10, s.p90], [y, y], color=colour, lw=1.5)
            ax.plot([s.median, s.median], [y - 0.3, y + 0.3], color="#d62728", lw=2)
    ax.set_yticks(range(len(ordered)))
    ax.set_yticklabels([f"{r.domain} (k={r.k}; {100 * r.losing_share:.0f}% lose)" for r in ordered],
                       fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("tokens/iter of one request (mean acceptance length)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"draft {draft}: tokens/iter request by request (red: median; line: p10–p90)", fontsize="medium")
    return Plot(f"requests-{slug(draft)}", f"{draft}: tokens/iter request by request", fig)


def context_plot(buckets: Sequence[Buckets]) -> Plot:
    draft = buckets[0].draft
    axes_names = [a for a in ("context", "position") if any(b.axis == a for b in buckets)]
    fig = _figure(5.0 * len(axes_names) + 1.5, 3.6)
    axes = fig.subplots(1, len(axes_names), squeeze=False)[0]
    for ax, axis in zip(axes, axes_names):
        mine = [b for b in buckets if b.axis == axis]
        mine = [b for b in mine if b.domain != ALL] + [b for b in mine if b.domain == ALL]
        colours = _palette(len(mine))
        tpi = not all(np.isnan(b.tokens_per_iter).all() for b in mine)
        for c, b in zip(colours, mine):
            y, lo, hi = ((b.tokens_per_iter, b.tokens_per_iter_lo, b.tokens_per_iter_hi) if tpi
                         else (b.alpha, b.alpha_lo, b.alpha_hi))
            x = np.arange(len(b.labels))
            ok = np.isfinite(y)
            style = {"color": "black", "lw": 2.2, "zorder": 3} if b.domain == ALL else {"color": c, "lw": 1}
            ax.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="o-", ms=3, capsize=2,
                        label=b.domain, **style)
        labels = mine[0].labels
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize="x-small")
        ax.set_xlabel("context length (prompt + generated, tokens)" if axis == "context"
                      else "position in the continuation")
        ax.set_ylabel(f"tokens/iter at k={mine[-1].k}" if tpi else "α")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(f"draft {draft}: acceptance against context (95% intervals over prompts)", fontsize="medium")
    return Plot(f"context-{slug(draft)}", f"{draft}: acceptance against context", fig)
