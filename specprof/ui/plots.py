"""The plots of `specprof report`: matplotlib figures drawn from `Estimate`s, as inline SVG or PNG.

- `alpha_plot`: α per domain with its 95% bootstrap interval, every draft.
- `speedup_plot`: per draft, one panel per domain: the empirical speedup against k with its
  interval, Leviathan et al.'s i.i.d. speedup at the same α and costs, the breakeven line at 1.
- `positions_plot`: per draft, per-position acceptance r_i = P(accepted ≥ i) at k = k_max.
- `accepted_plot`: per draft, the histogram of accepted tokens per block (ALL) at the best k and k_max.
- `batch_plot`: per draft, when the costs were measured at several serving batch sizes: the speedup
  at each batch size's best k against the batch size, one line per domain, with intervals.

Figures are `matplotlib.figure.Figure`s rendered by the Agg/SVG canvases directly, never through
pyplot, so no GUI backend or display is touched. SVG text is drawn as paths (no fonts needed to
view it) and each SVG's ids carry a prefix, so several can sit in one HTML page.

What this module does not do: compute figures (`summary`, `decide`) or write files.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specprof.core.pricing.batchcost import BatchPlan
from specprof.core.pricing.estimate import Estimate
from specprof.core.vocabulary import ALL

DRAFT_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
PANEL_COLUMNS = 5


@dataclass(frozen=True)
class Plot:
    name: str  # file stem, e.g. "speedup-early-exit-26"
    title: str  # a heading for the page
    figure: object  # matplotlib.figure.Figure


def slug(text: str) -> str:
    """A file-name-safe form of a draft name: `early-exit:26` → `early-exit-26`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "draft"


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


def _domains(estimates: Sequence[Estimate]) -> list[str]:
    """Corpus domains in report order, ALL last."""
    names = list(dict.fromkeys(e.domain for e in estimates if e.domain != ALL))
    return names + ([ALL] if any(e.domain == ALL for e in estimates) else [])


def alpha_plot(estimates: Sequence[Estimate]) -> Plot:
    """α per domain (rows) with 95% intervals, one marker per draft."""
    drafts = list(dict.fromkeys(e.draft for e in estimates))
    domains = _domains(estimates)
    fig = _figure(8.0, 1.2 + 0.32 * len(domains) * max(1, len(drafts) * 0.6))
    ax = fig.add_subplot()
    by = {(e.draft, e.domain): e for e in estimates}
    step = 0.7 / max(len(drafts), 1)
    for j, d in enumerate(drafts):
        ys, xs, lo, hi = [], [], [], []
        for i, dom in enumerate(domains):
            e = by.get((d, dom))
            if e is None or not np.isfinite(e.alpha):
                continue
            ys.append(i + (j - (len(drafts) - 1) / 2) * step)
            xs.append(e.alpha)
            lo.append(e.alpha - e.alpha_lo)
            hi.append(e.alpha_hi - e.alpha)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=3, color=DRAFT_COLOURS[j % len(DRAFT_COLOURS)],
                    label=d)
    ax.set_yticks(range(len(domains)), [f"$\\bf{{{ALL}}}$" if d == ALL else d for d in domains])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("α (per-token acceptance) with 95% bootstrap interval over prompts")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", title="draft")
    return Plot("alpha", "α per domain", fig)


def speedup_plot(estimates: Sequence[Estimate]) -> Plot:
    """One panel per domain: empirical speedup against k (with interval) and the i.i.d. model."""
    draft = estimates[0].draft
    domains = _domains(estimates)
    by = {e.domain: e for e in estimates}
    cols = min(PANEL_COLUMNS, len(domains))
    rows = -(-len(domains) // cols)
    width, height = 2.3 * cols + 0.8, 1.9 * rows + 1.3
    # Fixed margins in inches rather than constrained layout: the grid is regular, and the layout
    # solver took half the page's build time.
    fig = _figure(width, height, layout=None)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, top=1 - 0.6 / height, bottom=0.75 / height,
                        wspace=0.08, hspace=0.45)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    values = np.concatenate([np.r_[e.speedup_hi, e.speedup_iid] for e in estimates])
    top = max(float(values[np.isfinite(values)].max(initial=0.0)), 1.2)
    for i, (ax, dom) in enumerate(zip(axes.flat, domains)):
        e = by[dom]
        k = np.arange(1, e.k_max + 1)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.fill_between(k, e.speedup_lo, e.speedup_hi, color="#1f77b4", alpha=0.2, lw=0)
        ax.plot(k, e.speedup, "o-", ms=3, color="#1f77b4", label="empirical (95% interval)")
        ax.plot(k, e.speedup_iid, "--", color="#ff7f0e", label="i.i.d. model")
        ax.plot([e.best_k], [e.speedup[e.best_k - 1]], "*", ms=10, color="#1f77b4")
        ax.set_title(f"{dom}: {e.verdict().decision} at k={e.best_k}", fontsize="small",
                     fontweight="bold" if dom == ALL else "normal")
        ax.set_ylim(0, top * 1.05)
        ax.grid(alpha=0.3)
        if i + cols >= len(domains):  # nothing below this panel: it carries the k axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("k")
    for ax in axes.flat[len(domains):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("speedup")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=2, fontsize="small", frameon=False)
    fig.suptitle(f"draft {draft}: expected speedup against draft length k (★ best k)", fontsize="medium")
    return Plot(f"speedup-{slug(draft)}", f"{draft}: speedup against k", fig)


def positions_plot(estimates: Sequence[Estimate]) -> Plot:
    """r_i = P(accepted ≥ i) for i = 1..k_max, one line per domain, ALL in black."""
    draft = estimates[0].draft
    domains = _domains(estimates)
    by = {e.domain: e for e in estimates}
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    colours = _palette(len(domains))
    for c, dom in zip(colours, domains):
        e = by[dom]
        r = e.per_position_acceptance(e.k_max)
        i = np.arange(1, len(r) + 1)
        if dom == ALL:
            ax.plot(i, r, "o-", color="black", lw=2.2, ms=4, label=ALL, zorder=3)
        else:
            ax.plot(i, r, ".-", color=c, lw=1, label=dom)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"position i in the block (k = {by[domains[0]].k_max})")
    ax.set_ylabel("r_i = P(accepted ≥ i)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(f"draft {draft}: per-position acceptance", fontsize="medium")
    return Plot(f"positions-{slug(draft)}", f"{draft}: per-position acceptance r_i", fig)


def accepted_plot(estimates: Sequence[Estimate]) -> Plot:
    """The share of blocks that accepted 0..k draft tokens (the whole corpus), at the best k and at k_max."""
    draft = estimates[0].draft
    e = next((x for x in estimates if x.domain == ALL), estimates[0])
    ks = list(dict.fromkeys([e.best_k, e.k_max]))
    fig = _figure(4.0 * len(ks) + 0.5, 3.0)
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks):
        counts = e.histogram[k - 1, : k + 1]
        share = counts / counts.sum() if counts.sum() else counts
        ax.bar(np.arange(k + 1), share, color="#1f77b4")
        ax.set_xticks(range(k + 1))
        ax.set_xlabel("draft tokens accepted in a block")
        ax.set_ylabel("share of blocks")
        ax.set_title(f"k = {k}" + (" (best)" if k == e.best_k else ""), fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"draft {draft}, {e.domain}: accepted tokens per block", fontsize="medium")
    return Plot(f"accepted-{slug(draft)}", f"{draft}: accepted tokens per block", fig)


def batch_plot(plans: Sequence[BatchPlan]) -> Plot:
    """Speedup (at each batch size's best k, with its 95% interval) against the serving batch size, per domain."""
    draft = plans[0].draft
    fig = _figure(8.0, 3.8)
    ax = fig.add_subplot()
    colours = _palette(len(plans))
    ordered = [p for p in plans if p.domain != ALL] + [p for p in plans if p.domain == ALL]
    for c, p in zip(colours, ordered):
        b = np.array([x.batch_size for x in p.points], dtype=np.float64)
        s = np.array([x.speedup for x in p.points])
        lo = np.array([x.speedup_lo for x in p.points])
        hi = np.array([x.speedup_hi for x in p.points])
        colour, width = ("black", 2.2) if p.domain == ALL else (c, 1.0)
        ax.fill_between(b, lo, hi, color=colour, alpha=0.08 if p.domain == ALL else 0.12, lw=0)
        ax.plot(b, s, "o-", ms=3.5, lw=width, color=colour, label=p.domain, zorder=3 if p.domain == ALL else 2)
        for x in p.points:
            if p.domain == ALL:
                ax.annotate(f"k={x.best_k}", (x.batch_size, x.speedup), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize="x-small")
    ax.axhline(1.0, color="grey", lw=0.8)
    sizes = sorted({x.batch_size for p in plans for x in p.points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("serving batch size b (sequences verified together)")
    ax.set_ylabel("speedup at the best k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(f"draft {draft}: speedup against serving batch size (95% intervals; k = best k of ALL)",
                 fontsize="medium")
    return Plot(f"batch-{slug(draft)}", f"{draft}: speedup against batch size", fig)


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def draft_plots(draft_estimates: Sequence[Estimate]) -> list[Plot]:
    return [speedup_plot(draft_estimates), positions_plot(draft_estimates), accepted_plot(draft_estimates)]


def to_svg(plot: Plot) -> str:
    """The figure as an `<svg>` element for inline HTML: no XML prolog, ids prefixed with the plot's name."""
    import matplotlib

    buf = io.StringIO()
    # Text as paths (the page needs no fonts); a fixed hash salt keeps the output reproducible.
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "specprof"}):
        plot.figure.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)  # RDF boilerplate, nothing to show
    prefix = slug(plot.name) + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", svg)
    return svg


def to_png(plot: Plot, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    plot.figure.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
