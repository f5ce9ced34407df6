"""A report read and traced, ready to price: what recommend, gate, compare, inspect and report start from.

`load_analysis` reads tokens.parquet and run.json (never summary.parquet, a convenience copy for
other tools), checks the --draft and --domain filters against the report, and traces every draft's
blocks for every k (`traces`); with `policies`, it also simulates the confidence-threshold policies.
No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from specprof.core.pricing.timings import Timings
from specprof.core.records import reportfiles
from specprof.core.simulation import blockdraft, kinds
from specprof.core.simulation.policy import DraftPolicies
from specprof.core.simulation.threads import in_background, settled
from specprof.core.simulation.traces import (
    DraftRows,
    DraftTrace,
    first_seen_codes,
    index_drafts,
    is_in,
    trace_drafts,
)
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError

TOKEN_COLUMNS = ["draft", "prompt_id", "domain", "position", "draft_token", "match", "accept_prob"]
# the kinds that propose without a probability to threshold (block and head proposals record none)
NO_CONFIDENCE = tuple(k.name for k in kinds.KINDS.values() if k.model_free or k.proposal.per_block_start)
MODEL_FREE = tuple(k.name for k in kinds.KINDS.values() if k.model_free)  # of these, the lookups


@dataclass(frozen=True)
class Analysis:
    """A report's traces, ready to price: what all three commands start from."""

    path: Path
    run: dict[str, Any]
    traces: list[DraftTrace]  # one per draft, report order
    timings: Timings | None
    exact: bool  # T = 0: blocks are exact; T > 0: the chain estimate
    domains: tuple[str, ...]  # the corpus domains, first-seen order (without ALL)
    # per draft: confidence-threshold policies (`load(..., policies=True)` at T = 0; else empty), or their walk
    # still running (`policies` waits for it)
    policy_counts: dict[str, DraftPolicies] | Future[dict[str, DraftPolicies]] = field(default_factory=dict)
    # drafts without a confidence to threshold → why (n-gram lookups propose with probability 1 or not at all;
    # block-start proposals and heads record none)
    no_policy: dict[str, str] = field(default_factory=dict)
    # The token records behind the traces, for figures by request and by context (`perrequest`, `context`)
    tokens: pa.Table | None = None
    index: tuple[DraftRows, ...] = ()  # `traces.index_drafts(tokens)`
    runs: dict[str, blockdraft.StartRuns] = field(default_factory=dict)  # block-dependent drafts at T = 0

    @property
    def policies(self) -> dict[str, DraftPolicies]:
        return settled(self.policy_counts)

    def trace(self, draft: str) -> DraftTrace:
        return next(t for t in self.traces if t.draft == draft)


def load_analysis(
    path: str | Path | reportfiles.Report, drafts: Sequence[str] = (), domains: Sequence[str] = (),
    k_max: int | None = None, policies: bool = False,
) -> Analysis:
    """Read a report (its directory or a file in it, or one `reportfiles.load_report` already opened), check the
    filters and trace every k = 1..k_max.

    With `policies` (and T = 0) also simulate the confidence-threshold policies (`policy_estimate`), in a
    background thread when there are cores for it: the answers priced meanwhile (estimates, spreads, context)
    overlap it, and `Analysis.policies` waits for it (its errors are raised there).
    """
    rep = path if isinstance(path, reportfiles.Report) else reportfiles.load_report(path)
    settings = rep.run.get("settings") or {}
    temperature = float(settings.get("temperature", 0.0))
    run_k_max = int(settings.get("k_max", 8))
    if k_max is not None and k_max < 1:
        raise SpecprofError(f"--k-max {k_max}: must be ≥ 1")
    exact = temperature == 0
    columns = TOKEN_COLUMNS + (["draft_top1_p"] if policies and exact else [])
    table = rep.table("tokens", columns, read_dictionary=["draft", "prompt_id", "domain"])
    names = [str(d) for d in first_seen_codes(table.column("draft"))[1]]
    all_domains = tuple(str(d) for d in first_seen_codes(table.column("domain"))[1])
    for d in drafts:
        if d not in names:
            raise SpecprofError(f"--draft {d}: not in {rep.directory} (drafts: {', '.join(sorted(names))})")
    for d in domains:
        if d != ALL and d not in all_domains:
            known = ", ".join(sorted(all_domains))
            raise SpecprofError(f"--domain {d}: not in {rep.directory} (domains: {known}, ALL)")
    # Filtered and traced in Arrow and numpy: pandas takes 0.3 s to import, a third of reading the report.
    if drafts:
        table = table.filter(is_in(table.column("draft"), drafts))
    if domains and ALL not in domains:
        table = table.filter(is_in(table.column("domain"), domains))
    timings = Timings.from_dict(rep.run["timings"]) if rep.run.get("timings") else None
    present = [d for d in names if not drafts or d in drafts]
    runs = blockdraft.load_runs(rep, present, k_max or run_k_max) if exact else {}
    index = index_drafts(table)
    from specprof.core.pricing import policy_estimate

    no_policy = {d["name"]: policy_estimate.no_policy_note(d["kind"] in MODEL_FREE)
                 for d in rep.run.get("drafts") or [] if d.get("kind") in NO_CONFIDENCE}
    simulated: dict[str, DraftPolicies] | Future[dict[str, DraftPolicies]] = {}
    if policies and exact:  # started before the traces: it needs only the index
        with_confidence = [d for d in index if d.draft not in no_policy]
        simulated = in_background(policy_estimate.trace_policies, table, with_confidence, k_max or run_k_max)
    traces = trace_drafts(table, k_max or run_k_max, exact=exact, runs=runs, index=index)
    return Analysis(rep.directory, rep.run, traces, timings, exact, all_domains, simulated,
                    {t.draft: no_policy[t.draft] for t in traces if t.draft in no_policy}, table, tuple(index), runs)
