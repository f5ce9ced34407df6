"""Per-prompt block statistics of every draft in a report's token records (`DraftTrace`).

`trace_drafts` groups `tokens.parquet` rows by draft and prompt and runs `trace` on them: exact
blocks at T = 0 (from the proposals simulated at every block start for block-dependent drafts,
`blockdraft`), the chain estimate at T > 0. `domain_groups` lists a trace's domains and ALL, the
whole corpus. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from specprof.core.simulation import blockdraft, trace
from specprof.core.simulation.ngram import NO_PROPOSAL
from specprof.core.simulation.threads import thread_map
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError

if TYPE_CHECKING:
    import pandas as pd



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


@dataclass(frozen=True)
class DraftRows:
    """Where one draft's records sit in a tokens table: its rows, and each row's prompt and position.

    Prompts are numbered in first-seen order, the order of the draft's `DraftTrace`; `grid` lays a
    column of the table out as [n_prompts, longest continuation], zero after each prompt's end.
    """

    draft: str
    rows: np.ndarray  # [n_rows] this draft's rows of the table
    prompt: np.ndarray  # [n_rows] each row's prompt, 0..n_prompts - 1
    position: np.ndarray  # [n_rows] each row's position in its continuation
    prompt_ids: np.ndarray  # [n_prompts] str
    domains: np.ndarray  # [n_prompts] str
    n_tokens: np.ndarray  # [n_prompts] continuation length

    def grid(self, column: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """A whole-table column ([n_table_rows]) as this draft's [n_prompts, max_len] grid."""
        out = np.zeros((len(self.prompt_ids), int(self.n_tokens.max(initial=0))), dtype=dtype)
        out[self.prompt, self.position] = column[self.rows]
        return out


def index_drafts(tokens: pa.Table) -> list[DraftRows]:
    """Every draft's `DraftRows`, drafts in first-seen order; one pass over each key column for all of them."""
    draft_codes, draft_names = first_seen_codes(tokens.column("draft"))
    prompt_codes, prompt_names = first_seen_codes(tokens.column("prompt_id"))
    domain_codes, domain_names = first_seen_codes(tokens.column("domain"))
    positions_all = to_numpy(tokens.column("position"), np.int64)
    out = []
    for d, draft in enumerate(draft_names):
        rows = np.flatnonzero(draft_codes == d)
        codes, prompts, first_at = _renumber(prompt_codes[rows], len(prompt_names))  # this draft's prompts
        positions = positions_all[rows]
        n_tokens = np.zeros(len(prompts), dtype=np.int64)
        np.maximum.at(n_tokens, codes, positions + 1)
        if len(rows) != n_tokens.sum():
            raise SpecprofError(f"tokens.parquet: draft {draft!r} has missing or repeated positions")
        first_row = rows[first_at]
        out.append(DraftRows(str(draft), rows, codes, positions, prompt_names[prompts],
                             domain_names[domain_codes[first_row]], n_tokens))
    return out


def trace_drafts(
    tokens: pa.Table | pd.DataFrame, k_max: int, exact: bool, runs: Mapping[str, blockdraft.StartRuns] | None = None,
    index: Sequence[DraftRows] | None = None,
) -> list[DraftTrace]:
    """Block statistics of every draft in a tokens table, drafts and prompts in first-seen order.

    `runs` holds the block-dependent drafts' simulation from every block start (`blockdraft`): at
    T = 0 their blocks come from it. At T > 0 they follow the chain estimate on the first proposal
    of each position, like every draft (an estimate). `index` is the table's `index_drafts`, when
    the caller has it already.
    """
    if k_max < 1:
        raise SpecprofError(f"--k-max {k_max}: must be ≥ 1")
    if not isinstance(tokens, pa.Table):
        tokens = pa.Table.from_pandas(tokens, preserve_index=False)
    value_all = to_numpy(tokens.column("match" if exact else "accept_prob"), np.float64)
    accept_all = to_numpy(tokens.column("accept_prob"), np.float64)
    no_proposal_all = to_numpy(tokens.column("draft_token"), np.int64) == NO_PROPOSAL

    def trace_one(d: DraftRows) -> DraftTrace:
        padded = d.grid(value_all)
        no_proposal = d.grid(no_proposal_all, bool)
        accept_sum = np.bincount(d.prompt, accept_all[d.rows], minlength=len(d.prompt_ids))
        starts: dict[str, np.ndarray] = {}
        if exact and runs and d.draft in runs:
            r = runs[d.draft]
            at = r.rows([str(p) for p in d.prompt_ids])
            width = padded.shape[1]
            starts = {"start_accepted": r.accepted[at, :width], "start_proposed": r.proposed[at, :width]}
        counts = (
            trace.count_blocks_exact(padded, d.n_tokens, k_max, no_proposal, **starts)
            if exact
            else trace.count_blocks_expected(padded, d.n_tokens, k_max, no_proposal)
        )
        return DraftTrace(d.draft, d.prompt_ids, d.domains, d.n_tokens, accept_sum, counts)

    return thread_map(trace_one, index_drafts(tokens) if index is None else index)  # a draft per core


def first_seen_codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(codes [n_rows], values [n_values] as str) of a string or dictionary column, codes numbered in
    the order values first appear (as pandas' factorize(sort=False)). No pandas, and for a dictionary
    column (as reports are read) no pyarrow.compute either: importing it costs 0.08–0.13 s."""
    if isinstance(column, pa.ChunkedArray):
        column = column.unify_dictionaries() if pa.types.is_dictionary(column.type) else column
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        import pyarrow.compute as pc

        column = pc.dictionary_encode(column)
    codes, entries, _ = _renumber(to_numpy(column.indices, np.int64), len(column.dictionary))
    return codes, np.asarray(column.dictionary.to_pylist(), dtype=object)[entries]


def _renumber(codes: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`codes` (0..size - 1) renumbered 0.. in order of first appearance: (new codes, the original code of
    each new one, the row where each first appears). Rows come in runs of one code (a prompt's
    positions), so only the runs' heads are searched."""
    size = int(codes.max(initial=-1)) + 1 if size is None else size
    heads = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, dtype=np.int64)
    first = np.full(size, len(codes), dtype=np.int64)
    np.minimum.at(first, codes[heads], heads)  # each code's first row
    entries = np.flatnonzero(first < len(codes))
    entries = entries[np.argsort(first[entries], kind="stable")]
    renumbered = np.empty(size, dtype=np.int64)
    renumbered[entries] = np.arange(len(entries))
    return renumbered[codes], np.ascontiguousarray(entries, dtype=np.int64), first[entries]


NUMPY_TYPES = {"uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
               "uint32": np.uint32, "uint64": np.uint64, "float": np.float32, "double": np.float64}


def to_numpy(column: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    """A numeric or boolean column (no nulls) as a numpy array of `dtype`, through Arrow's zero-copy
    view: its other conversion paths import pandas, which the decision commands do without."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise SpecprofError(f"tokens.parquet: a {column.type} column holds nulls")
    if pa.types.is_boolean(column.type):  # one bit per value, least significant first
        bits = np.frombuffer(column.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[column.offset : column.offset + len(column)].astype(dtype)
    kind = NUMPY_TYPES[str(column.type)]
    values = np.frombuffer(column.buffers()[1], dtype=kind, count=len(column) + column.offset)
    return values[column.offset:].astype(dtype)


def is_in(column: pa.ChunkedArray, values: Sequence[str]) -> pa.ChunkedArray:
    """A row mask: the column's value is one of `values` (string or dictionary column)."""
    import pyarrow.compute as pc  # only when filtering

    if pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    return pc.is_in(column, value_set=pa.array(list(values), type=pa.string()))


def domain_groups(t: DraftTrace, domains: Sequence[str] = ()) -> list[tuple[str, np.ndarray]]:
    """(domain, prompt mask) for each domain in first-seen order, then ALL (unless filtered)."""
    listed = t.domains.tolist()
    index = {d: i for i, d in enumerate(dict.fromkeys(listed))}
    codes = np.fromiter((index[d] for d in listed), dtype=np.int64, count=len(listed))  # one pass over the strings
    names = [d for d in index if not domains or d in set(domains)]
    groups = [(d, codes == index[d]) for d in names]
    if not domains or ALL in domains:
        groups.append((ALL, np.ones(len(t.domains), dtype=bool)))
    return groups
