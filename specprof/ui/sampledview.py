"""Terminal view of `recommend --engine vllm` on a sampled report: vLLM's expected counters per mode."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table

from specprof.core.answers.sampled_plan import SampledCounters
from specprof.core.pricing.estimate import Estimate
from specprof.ui.render import fmt, styled


def _interval(v: tuple[float, float, float], digits: int = 3) -> str:
    return f"{fmt(v[0], digits)} [{fmt(v[1], digits)}, {fmt(v[2], digits)}]"


def sampled_view(estimates: Sequence[Estimate], entries: Sequence[tuple[int, SampledCounters]],
                 fixed_k: bool) -> Group:
    parts = []
    notes: list[str] = []
    for draft in dict.fromkeys(e.draft for e in estimates):
        modes = {c.mode for e, (_, c) in zip(estimates, entries) if e.draft == draft}
        table = Table(title=f"draft {draft} — vLLM's expected counters at T > 0 (draft_sample_method "
                            f"{'/'.join(sorted(modes))}) at {'k' if fixed_k else 'each best k'}",
                      title_justify="left")
        for name in ("domain", "k", "prompts", "drafts", "draft tokens", "accepted", "mean acceptance length",
                     "per-position acceptance rate", "decision"):
            table.add_column(name, justify="left" if name in ("domain", "decision") else "right")
        for e, (k, c) in zip(estimates, entries):
            if e.draft != draft:
                continue
            rates = ", ".join(_interval(r) for r in c.per_position_acceptance_rate)
            table.add_row(e.domain, str(k), str(c.n_prompts), fmt(c.num_drafts, 1), fmt(c.num_draft_tokens, 1),
                          fmt(c.num_accepted_tokens, 1), _interval(c.mean_acceptance_length, 2), rates,
                          styled(e.verdict(k).decision))
            for n in c.note.split("; "):
                if n and n not in notes:
                    notes.append(n)
        parts.append(table)
    parts.append("as vLLM (v1) counts: the first token from prefill, steps without a proposal are not drafts, "
                 "acceptances past EOS/max_tokens counted; 95% intervals over prompts")
    parts.extend(f"* {n}" for n in notes)
    return Group(*parts)
