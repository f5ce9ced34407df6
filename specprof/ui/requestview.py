"""recommend's request-by-request lines (issue 24): the per-request spreads and whether acceptance falls with
context, as the text output ends with them (the figures: core/answers/perrequest.py and context.py, computed
by `core.answers.recommend`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from specprof.ui.app import stdout

if TYPE_CHECKING:
    from specprof.core.answers.context import Buckets
    from specprof.core.answers.perrequest import PerRequest


def print_by_request(rows: Sequence[PerRequest] | None, buckets: Sequence[Buckets] | None) -> None:
    """The lines after recommend's tables (nothing when the request-by-request figures were not asked for)."""
    if rows is None or buckets is None:
        return
    from specprof.core.answers import context

    stdout.print()
    stdout.print("Request by request (at each entry's k):", highlight=False)
    for r in rows:
        stdout.print(f"  {r.line()}", highlight=False, markup=False)
    stdout.print("Acceptance against context:", highlight=False)
    for line in context.summary_lines(buckets):
        stdout.print(f"  {line}", highlight=False, markup=False)
