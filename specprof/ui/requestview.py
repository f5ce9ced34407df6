"""recommend's request-by-request output (issue 24): the per-request spreads and context lines, their JSON keys,
and the synthetic-acceptance settings of `--emit *-synthetic` (the figures: core/answers/perrequest.py,
context.py, synthetic.py)."""

from __future__ import annotations

from collections.abc import Sequence

from specprof.core.vocabulary import ALL
from specprof.ui.app import stderr, stdout


def by_request(analysis, estimates, k: int | None, counters) -> tuple[list, list]:
    """Per-request spreads (with vLLM's per-request figures when its counters were asked for) and context buckets."""
    from specprof.core.answers import context, perrequest

    rows = perrequest.per_request(analysis, estimates, k)
    if counters is not None:
        for draft, kk in {(r.draft, r.k) for r in rows}:
            counters.counters(draft, ALL, kk)  # fills the per-prompt table
        rows = perrequest.with_engine(rows, {key: (counters.records[key[0]].prompt_ids, None, table)
                                             for key, (table, _) in counters.per_prompt.items()})
    return rows, context.context_buckets(analysis, estimates, k)


def by_request_json(rows, buckets) -> dict:
    from specprof.core.answers import context, perrequest

    return {"per_request": perrequest.per_request_json(rows), "per_request_note": perrequest.per_request_note(),
            "context": context.buckets_json(buckets)}


def print_by_request(rows, buckets) -> None:
    from specprof.core.answers import context

    stdout.print()
    stdout.print("Request by request (at each entry's k):", highlight=False)
    for r in rows:
        stdout.print(f"  {r.line()}", highlight=False, markup=False)
    stdout.print("Acceptance against context:", highlight=False)
    for line in context.summary_lines(buckets):
        stdout.print(f"  {line}", highlight=False, markup=False)


def synthetic(engine: str, analysis, choice, domains: Sequence[str], target: str) -> str:
    """recommend --emit *-synthetic: the engine's forced acceptance at the chosen draft and k, over the
    --domain mix (default ALL: the whole corpus) under vLLM's counting (core/answers/synthetic.py)."""
    import numpy as np

    from specprof.core.answers import synthetic
    from specprof.core.simulation import conventions

    rec = conventions.load_records(analysis.path, choice.draft)
    mask = np.isin(rec.domains, list(domains)) if domains and ALL not in domains else None
    counters = conventions.counters_of(rec, choice.k, "vllm", mask)
    where = ", ".join(domains) if mask is not None else "the whole corpus (ALL)"
    for note in [choice.warning] if choice.warning else []:
        stderr.print(f"note: {note}")
    for note in synthetic.notes(choice, counters, where):
        stderr.print(f"note: {note}")
    return synthetic.emit(engine, choice, target, counters)
