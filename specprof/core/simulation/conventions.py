"""Engine counting conventions: the exact counters an engine reports after serving a report's prompts.

specprof's own figures count the way transformers' assisted generation runs (the "transformers"
convention, DESIGN.md §2): the first block starts at the first new token, every target forward
pass is an iteration (one whose draft proposed nothing included), k tokens are drafted per
iteration, and nothing past the end of the continuation is accepted.

vLLM (v1, checked in 0.32.0: spec_decode/metrics.py, ngram_proposer.py, core/sched/scheduler.py)
counts otherwise, and users hold their report against vLLM's own metrics:
  - the first output token is sampled in the prefill step, with no draft: drafting starts at the
    second token (block starts 1, …);
  - a step whose proposer returned no tokens is not a draft (an n-gram lookup without a match):
    it emits one token and counts nowhere;
  - per draft: num_drafts += 1, num_draft_tokens += tokens proposed (k for a model draft, up to k
    for n-gram), num_accepted_tokens += n accepted, num_accepted_tokens_per_pos[i] += 1 for i < n;
  - n is counted BEFORE the output is truncated at EOS or max_tokens, so a block that runs past
    the end still counts its acceptances against the target's own tokens past the stop point
    (a profile records up to k_max of them: past_end.parquet);
  - mean acceptance length = 1 + num_accepted_tokens / num_drafts ("includes the bonus token"),
    per-position acceptance rate = num_accepted_tokens_per_pos[i] / num_drafts, draft acceptance
    rate = num_accepted_tokens / num_draft_tokens.

Exact at temperature 0. A report written before schema 2 has no tokens past the end: its counters
are exact unless some block's acceptances reach the end of a continuation, where they are a lower
bound (`EngineCounters.exact` False, `note` says so). specprof's own `ngram` draft is no engine's
proposer (profile `vllm-ngram` to predict vLLM's): its counters follow vLLM's counting of its
blocks and are flagged.

What this module does not do: talk to an engine (engines/vllm), print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from specprof.core.records import reportfiles
from specprof.core.simulation import blockdraft, kinds
from specprof.core.simulation.ngram import NO_PROPOSAL
from specprof.core.vocabulary import ENGINES, MODEL, TRANSFORMERS, VLLM, Engine
from specprof.errors import SpecprofError

if TYPE_CHECKING:  # pandas loads when engine counters are asked for: recommend starts without it
    import pandas as pd



@dataclass(frozen=True)
class Counting:
    """How an engine counts a greedy run's speculative steps (the module docstring says why)."""

    first_block: int  # where drafting starts: vLLM samples the first token in prefill, without a draft
    skips_empty: bool  # a step whose proposer returned nothing is no draft (it emits one token, counts nowhere)
    counts_proposed: bool  # num_draft_tokens counts the tokens proposed (else k per step)
    past_end: bool  # acceptances are counted before the output is cut at EOS / max_tokens
    flags_rules: bool  # a kind with an `engine_note` (no proposer of this engine) gets its counters flagged
    caption: str  # how it counts, in a sentence (recommend --engine's table)


COUNTING: dict[Engine, Counting] = {
    VLLM: Counting(first_block=1, skips_empty=True, counts_proposed=True, past_end=True, flags_rules=True,
                   caption="as vLLM (v1) counts: the first token from prefill, steps without a proposal are not "
                           "drafts, acceptances past EOS/max_tokens counted; mean acceptance length = 1 + accepted "
                           "/ drafts"),
    TRANSFORMERS: Counting(first_block=0, skips_empty=False, counts_proposed=False, past_end=False,
                           flags_rules=False,
                           caption="as transformers' assisted generation runs: every target pass an iteration, k "
                                   "drafted each"),
}
NO_PAST_END = (
    "the report records no target tokens past the end of the continuations (schema 1; re-profile "
    "with this specprof): blocks that accept up to the end may accept more in the engine, so "
    "num_accepted_tokens is a lower bound"
)
SHORT_PAST_END = (
    "the report records fewer than k target tokens past the end of some continuations (the model's "
    "context ran out, or the responses were logged, which end where the log ends): blocks that accept up to "
    "there may accept more, so num_accepted_tokens is a lower bound"
)


@dataclass(frozen=True)
class EngineCounters:
    """The counters an engine's metrics report (vLLM: `vllm:spec_decode_num_drafts_total`, …)."""

    num_drafts: int
    num_draft_tokens: int
    num_accepted_tokens: int
    num_accepted_tokens_per_pos: tuple[int, ...]  # [k] drafts that accepted at least i + 1 tokens
    exact: bool = True  # False: a lower bound or an approximation, `note` says which
    note: str = ""

    @property
    def mean_acceptance_length(self) -> float:
        """vLLM's: 1 + accepted / drafts, the bonus token included (nan without drafts)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else float("nan")

    @property
    def per_position_acceptance_rate(self) -> tuple[float, ...]:
        """accepted at position i / drafts, i = 0..k-1."""
        return tuple(a / self.num_drafts if self.num_drafts else float("nan") for a in self.num_accepted_tokens_per_pos)

    @property
    def draft_acceptance_rate(self) -> float:
        """accepted / drafted tokens."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else float("nan")

    def as_dict(self) -> dict[str, int | list[int]]:
        """The four counters under the names vLLM's metrics use (without the vllm:spec_decode_ prefix)."""
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_accepted_tokens_per_pos": list(self.num_accepted_tokens_per_pos),
        }


@dataclass(frozen=True)
class DraftRecords:
    """One draft's records as the conventions need them, prompts in report order."""

    draft: str
    kind: str  # a registered kind (`kinds.KINDS`)
    prompt_ids: np.ndarray  # [n_prompts] str
    domains: np.ndarray  # [n_prompts] str
    lengths: np.ndarray  # [n_prompts] continuation lengths
    match: np.ndarray  # [n_prompts, width] bool: the continuation, then the recorded positions past the end
    no_proposal: np.ndarray  # [n_prompts, width] bool: the draft proposed nothing there
    runs: blockdraft.StartRuns | None  # block-dependent drafts: what a block from each start does
    has_past_end: bool  # the report records the target's tokens past the end
    recorded: np.ndarray  # [n_prompts] positions with a record: the continuation plus those past its end
    k_max: int


def load_records(report: str | Path | reportfiles.Report, draft: str) -> DraftRecords:
    """Read what the conventions need about `draft` from a report (its directory or a file in it)."""
    rep = report if isinstance(report, reportfiles.Report) else reportfiles.load_report(report)
    settings = rep.run.get("settings") or {}
    if float(settings.get("temperature", 0.0)) != 0.0:
        raise SpecprofError(
            f"{rep.directory}: engine counters are exact at temperature 0 only; this report was sampled at "
            f"T = {settings.get('temperature')} (compare acceptance rates with `verify` instead)"
        )
    k_max = int(settings.get("k_max", 8))
    named = {d.get("name"): kinds.kind(d.get("kind")).name for d in rep.run.get("drafts") or []}
    columns = ["draft", "prompt_id", "domain", "position", "target_token", "draft_token", "match"]
    tokens = rep.frame("tokens", columns)
    if draft not in set(tokens["draft"]):
        known = ", ".join(sorted(set(tokens["draft"])))
        raise SpecprofError(f"--draft {draft}: not in {rep.directory} (drafts: {known})")
    rows = tokens[tokens["draft"] == draft]
    past = None
    if rep.path("past_end").exists():
        past_all = rep.frame("past_end", columns)
        past = past_all[past_all["draft"] == draft]
    return records_from_frames(draft, named.get(draft, MODEL), rows, past, _proposals(rep, draft), k_max)


def _proposals(rep: reportfiles.Report, draft: str) -> pa.Table | None:
    if not rep.path("proposals").exists():
        return None
    import pyarrow.compute as pc  # here: its import costs the decision commands 0.1 s

    table = rep.table("proposals")
    return table.filter(pc.equal(table.column("draft"), draft))


def records_from_frames(
    draft: str, kind: str, rows: pd.DataFrame, past: pd.DataFrame | None, proposals: pa.Table | None, k_max: int
) -> DraftRecords:
    """`DraftRecords` from one draft's tokens rows, past-end rows (None: not recorded) and proposals."""
    import pandas as pd

    codes, ids = pd.factorize(rows["prompt_id"].astype(str), sort=False)
    n = len(ids)
    positions = rows["position"].to_numpy(np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    np.maximum.at(lengths, codes, positions + 1)
    width = int(lengths.max(initial=0)) + k_max + 1
    match = np.zeros((n, width), dtype=bool)
    no_proposal = np.zeros((n, width), dtype=bool)
    match[codes, positions] = rows["match"].to_numpy(bool)
    no_proposal[codes, positions] = rows["draft_token"].to_numpy() == NO_PROPOSAL
    if past is not None and len(past):
        index = {p: i for i, p in enumerate(ids)}
        prow = past["prompt_id"].astype(str).map(index)
        ppos = past["position"].to_numpy(np.int64)
        keep = prow.notna().to_numpy() & (ppos < width)
        prow = prow[keep].to_numpy(np.int64)
        match[prow, ppos[keep]] = past["match"].to_numpy(bool)[keep]
        no_proposal[prow, ppos[keep]] = past["draft_token"].to_numpy()[keep] == NO_PROPOSAL
    recorded = lengths.copy()
    if past is not None and len(past):
        np.maximum.at(recorded, prow, ppos[keep] + 1)
    domains = rows["domain"].astype(str).to_numpy()[np.unique(codes, return_index=True)[1]]
    runs = None
    if kinds.kind(kind).proposal.per_block_start:
        if proposals is None or not len(proposals):
            raise SpecprofError(f"draft {draft!r} ({kind}) has no proposals.parquet records; the report is incomplete")
        targets = rows[["prompt_id", "position", "target_token"]]
        runs = blockdraft.start_runs(proposals, targets, past, k_max)[draft]
    return DraftRecords(draft, kind, np.asarray([str(i) for i in ids], dtype=object), domains, lengths, match,
                        no_proposal, runs, past is not None, recorded, k_max)


def prompt_counters(rec: DraftRecords, k: int, engine: Engine = VLLM) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt [n_prompts, 3 + k]: num_drafts, num_draft_tokens, num_accepted_tokens, then accepted
    per position; and [n_prompts] bool: whether the prompt's counters may miss acceptances past the end
    (vLLM: a block accepted everything up to the last recorded position and had more to check)."""
    if engine not in ENGINES:
        raise SpecprofError(f"--engine {engine}: unknown engine (known: {', '.join(ENGINES)})")
    counting = COUNTING[engine]
    if not 1 <= k <= rec.k_max:
        raise SpecprofError(f"--k {k}: the report covers k = 1..{rec.k_max}")
    out = np.zeros((len(rec.lengths), 3 + k), dtype=np.int64)
    short = np.zeros(len(rec.lengths), dtype=bool)
    rows = rec.runs.rows(rec.prompt_ids.tolist()) if rec.runs is not None else None
    for i, length in enumerate(rec.lengths.tolist()):
        if rec.runs is not None:
            assert rows is not None  # read with the runs
            counts, unseen = _block_dependent(rec.runs, int(rows[i]), length, int(rec.recorded[i]), k, counting)
        else:
            counts, unseen = _prefix_dependent(rec, i, length, k, counting)
        out[i, :3] = counts[:3]
        out[i, 3:] = counts[3]
        short[i] = unseen and counting.past_end
    return out, short


def _prefix_dependent(rec: DraftRecords, i: int, length: int, k: int, counting: Counting) -> tuple[tuple, bool]:
    """One prompt's counters for a draft whose proposal depends on the target prefix alone."""
    match = rec.match[i] if counting.past_end else np.concatenate([rec.match[i, :length], [False] * (k + 1)])
    stopped = rec.no_proposal[i]
    per_pos = np.zeros(k, dtype=np.int64)
    drafts = drafted = accepted = 0
    unseen = False  # a block stopped only because the records ended
    lookup = kinds.kind(rec.kind).may_propose_nothing
    start = counting.first_block
    while start < length:
        if counting.skips_empty and lookup and stopped[start]:
            start += 1  # the proposer returned nothing: not a draft
            continue
        n = 0
        while n < k and match[start + n]:
            n += 1
        if lookup and n < k and stopped[start + n] and counting.counts_proposed:
            proposed = n  # the lookups ran out where the draft had nothing to propose
        else:
            proposed = k
        unseen |= n < proposed and start + n >= rec.recorded[i]
        drafts, drafted, accepted = drafts + 1, drafted + proposed, accepted + n
        per_pos[:n] += 1
        start += n + 1
    return (drafts, drafted, accepted, per_pos), unseen


def _block_dependent(runs: blockdraft.StartRuns, row: int, length: int, recorded: int, k: int,
                     counting: Counting) -> tuple[tuple, bool]:
    """One prompt's counters for a draft simulated from every block start (`blockdraft`)."""
    past_end = counting.past_end and runs.accepted_past_end is not None
    accepted_from = runs.accepted_past_end if past_end else runs.accepted
    assert accepted_from is not None  # past_end is set only when the report has the past-end records
    per_pos = np.zeros(k, dtype=np.int64)
    drafts = drafted = accepted = 0
    unseen = False
    start = counting.first_block
    while start < length:
        proposed = min(k, int(runs.proposed[row, start]))
        if counting.skips_empty and proposed == 0:
            start += 1  # the proposer returned nothing: not a draft
            continue
        n = min(proposed, int(accepted_from[row, start]))
        unseen |= n < proposed and start + n >= recorded
        drafts, drafted, accepted = drafts + 1, drafted + (proposed if counting.counts_proposed else k), accepted + n
        per_pos[:n] += 1
        start += n + 1
    return (drafts, drafted, accepted, per_pos), unseen


def counters_of(rec: DraftRecords, k: int, engine: Engine = VLLM, mask: np.ndarray | None = None,
                per_prompt: tuple[np.ndarray, np.ndarray] | None = None) -> EngineCounters:
    """Sum the per-prompt counters over `mask` (default all prompts) into `EngineCounters`."""
    table, short = per_prompt if per_prompt is not None else prompt_counters(rec, k, engine)
    if mask is not None:
        table, short = table[mask], short[mask]
    total = table.sum(axis=0)
    notes = []
    note = kinds.kind(rec.kind).engine_note
    if note and COUNTING[engine].flags_rules:
        notes.append(note)
    if short.any():
        notes.append(SHORT_PAST_END if rec.has_past_end else NO_PAST_END)
    return EngineCounters(int(total[0]), int(total[1]), int(total[2]), tuple(int(v) for v in total[3:]),
                          exact=not notes, note="; ".join(notes))


def engine_counters(
    report: Path | str,
    draft: str,
    k: int,
    *,
    prompt_ids: Sequence[str] | None = None,
    engine: Engine = VLLM,
) -> EngineCounters:
    """The counters `engine` would report after serving the report's prompts (default: all of them,
    else `prompt_ids`) greedily with `draft` at draft length k.

    Example (vLLM, a model draft, k = 2): matches 11101 in the continuation, then 10 past its end.
    Blocks start at 1 (accepts 2) and 4 (accepts 2, the second one past the end) → num_drafts 2,
    num_draft_tokens 4, num_accepted_tokens 4, per position (2, 2), mean acceptance length 3.0.
    The transformers convention counts blocks at 0 (accepts 2), 3 (0) and 4 (1, cut at the end).
    """
    rec = load_records(report, draft)
    mask = None
    if prompt_ids is not None:
        index = {p: i for i, p in enumerate(rec.prompt_ids.tolist())}
        missing = [p for p in prompt_ids if str(p) not in index]
        if missing:
            raise SpecprofError(f"prompt {missing[0]!r}: not in the report")
        mask = np.zeros(len(rec.prompt_ids), dtype=bool)
        mask[[index[str(p)] for p in prompt_ids]] = True
    return counters_of(rec, k, engine, mask)
