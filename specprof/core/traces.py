"""Per-prompt block statistics of every draft in a report's token records (`DraftTrace`).

`trace_drafts` groups `tokens.parquet` rows by draft and prompt and runs `trace` on them: exact
blocks at T = 0 (from the proposals simulated at every block start for block-dependent drafts,
`blockdraft`), the chain estimate at T > 0. `domain_groups` lists a trace's domains and ALL, the
whole corpus. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from specprof.core import blockdraft, trace
from specprof.core.ngram import NO_PROPOSAL
from specprof.errors import SpecprofError

ALL = "ALL"  # the domain that stands for the whole corpus


@dataclass(frozen=True)
class DraftTrace:
    """Per-prompt sufficient statistics of one draft: everything the summary and the bootstrap need."""

    draft: str
    prompt_ids: np.ndarray  # [n_prompts] str
    domains: np.ndarray  # [n_prompts] str
    n_tokens: np.ndarray  # [n_prompts] continuation length
    accept_sum: np.ndarray  # [n_prompts] Σ accept_prob over the continuation
    blocks: trace.BlockCounts  # [n_prompts, k_max, ...]

    def select(self, mask: np.ndarray) -> DraftTrace:
        b = self.blocks
        return DraftTrace(
            self.draft,
            self.prompt_ids[mask],
            self.domains[mask],
            self.n_tokens[mask],
            self.accept_sum[mask],
            trace.BlockCounts(b.iterations[mask], b.accepted[mask], b.emitted[mask], b.histogram[mask],
                              b.proposed[mask]),
        )


def trace_drafts(
    tokens: pd.DataFrame, k_max: int, exact: bool, runs: Mapping[str, blockdraft.StartRuns] | None = None
) -> list[DraftTrace]:
    """Block statistics of every draft in a tokens table, prompts in first-seen order.

    `runs` holds the block-dependent drafts' simulation from every block start (`blockdraft`): at
    T = 0 their blocks come from it. At T > 0 they follow the chain estimate on the first proposal
    of each position, like every draft (an estimate).
    """
    if k_max < 1:
        raise SpecprofError(f"--k-max {k_max}: must be ≥ 1")
    traces = []
    for draft, rows in tokens.groupby("draft", sort=False, observed=True):
        prompt_codes, prompt_ids = pd.factorize(rows["prompt_id"], sort=False)
        n_prompts = len(prompt_ids)
        positions = rows["position"].to_numpy(np.int64)
        n_tokens = np.zeros(n_prompts, dtype=np.int64)
        np.maximum.at(n_tokens, prompt_codes, positions + 1)
        if len(rows) != n_tokens.sum():
            raise SpecprofError(f"tokens.parquet: draft {draft!r} has missing or repeated positions")
        values = rows["match"].to_numpy(np.float64) if exact else rows["accept_prob"].to_numpy(np.float64)
        padded = np.zeros((n_prompts, int(n_tokens.max(initial=0))))
        padded[prompt_codes, positions] = values
        no_proposal = np.zeros(padded.shape, dtype=bool)
        no_proposal[prompt_codes, positions] = rows["draft_token"].to_numpy() == NO_PROPOSAL
        accept_sum = np.bincount(prompt_codes, rows["accept_prob"].to_numpy(np.float64), minlength=n_prompts)
        domains = rows["domain"].to_numpy()[np.unique(prompt_codes, return_index=True)[1]]
        starts: dict[str, np.ndarray] = {}
        if exact and runs and str(draft) in runs:
            r = runs[str(draft)]
            at = r.rows([str(p) for p in prompt_ids])
            width = padded.shape[1]
            starts = {"start_accepted": r.accepted[at, :width], "start_proposed": r.proposed[at, :width]}
        counts = (
            trace.count_blocks_exact(padded, n_tokens, k_max, no_proposal, **starts)
            if exact
            else trace.count_blocks_expected(padded, n_tokens, k_max, no_proposal)
        )
        traces.append(DraftTrace(str(draft), np.asarray(prompt_ids), domains, n_tokens, accept_sum, counts))
    return traces


def domain_groups(t: DraftTrace, domains: Sequence[str] = ()) -> list[tuple[str, np.ndarray]]:
    """(domain, prompt mask) for each domain in first-seen order, then ALL (unless filtered)."""
    names = list(dict.fromkeys(t.domains.tolist()))
    if domains:
        names = [d for d in names if d in set(domains)]
    groups = [(d, t.domains == d) for d in names]
    if not domains or ALL in domains:
        groups.append((ALL, np.ones(len(t.domains), dtype=bool)))
    return groups
