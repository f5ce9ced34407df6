"""Terminal view of `recommend --engine`: the figures an engine's own metrics will show, per draft × domain."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table

from specprof.core.pricing.estimate import Estimate
from specprof.core.simulation.conventions import COUNTING, EngineCounters
from specprof.core.vocabulary import Engine
from specprof.ui.render import fmt, styled


def engine_view(
    estimates: Sequence[Estimate], entries: Sequence[tuple[int, EngineCounters]], engine: Engine, fixed_k: bool
) -> Group:
    parts = []
    notes = []
    for draft in dict.fromkeys(e.draft for e in estimates):
        table = Table(title=f"draft {draft} — {engine}'s counters at {'k' if fixed_k else 'each best k'}",
                      title_justify="left")
        for name in ("domain", "k", "drafts", "draft tokens", "accepted", "mean acceptance length",
                     "per-position acceptance rate", "draft acceptance rate", "decision"):
            table.add_column(name, justify="left" if name in ("domain", "decision") else "right")
        for e, (k, c) in zip(estimates, entries):
            if e.draft != draft:
                continue
            rates = ", ".join(fmt(r, 3) for r in c.per_position_acceptance_rate)
            mark = "" if c.exact else " *"
            table.add_row(e.domain, str(k), str(c.num_drafts), str(c.num_draft_tokens),
                          f"{c.num_accepted_tokens}{mark}", fmt(c.mean_acceptance_length),
                          rates, fmt(c.draft_acceptance_rate, 3), styled(e.verdict(k).decision))
            if c.note and c.note not in notes:
                notes.append(c.note)
        parts.append(table)
    parts.append(COUNTING[engine].caption)
    parts.extend(f"* {n}" for n in notes)
    return Group(*parts)
