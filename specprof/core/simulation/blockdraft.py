"""Block-dependent drafts: proposers whose proposal depends on where a speculative block starts.

Engines' prompt lookups (vLLM's `ngram`, transformers' `prompt_lookup_num_tokens`) copy up to k
tokens after one match, in one shot: the token they propose at position t depends on the block's
start, not on the target prefix alone, so one teacher-forced pass does not give their trace
(DESIGN.md §2). Instead the proposer is run from EVERY possible block start s on the target's
continuation, model-free and cheap, and `proposals.parquet` keeps what it proposed there with
k_max tokens. A proposer must have the prefix property: its k-token proposal is the first k tokens
of its k_max-token one (true of both prompt lookups, whose match does not depend on k, and of a
chain of draft heads such as EAGLE's). Then, for every k, the block at s proposes
min(k, len(proposal)) tokens and accepts the leading ones equal to the target's tokens there
(`StartRuns`), and the trace follows block by block (`trace.count_blocks_exact`).

The interface (`BlockProposer`) is what a model head proposing per block (EAGLE-style) would
implement later. tokens.parquet still holds one row per position for these drafts: the first
token the proposer would propose from a block starting there (so α keeps its meaning: how often
the first proposal is right).

No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa

from specprof.core.simulation import kinds, trace
from specprof.errors import SpecprofError

if TYPE_CHECKING:  # pandas loads only where a function needs it: the decision commands start faster
    import pandas as pd


class BlockProposer(Protocol):
    kind: str

    def propose(self, context: Sequence[int], k: int) -> list[int]:
        """Up to k tokens proposed after `context` (possibly none)."""
        ...

    def propose_every_start(self, tokens: Sequence[int], start: int, k_max: int) -> list[list[int]]:
        """`propose(tokens[:t], k_max)` for every t in [start, len(tokens))."""
        ...


@dataclass(frozen=True)
class StartRuns:
    """What a block starting at each position of each continuation proposes and gets accepted (k_max tokens).

    For k ≤ k_max the block at s proposes min(k, proposed[s]) and accepts min(k, accepted[s]).
    """

    prompt_ids: np.ndarray  # [n_prompts] str
    lengths: np.ndarray  # [n_prompts] continuation lengths
    proposed: np.ndarray  # [n_prompts, max_len] tokens proposed from s (0: none; 0 after the end)
    accepted: np.ndarray  # [n_prompts, max_len] leading proposals equal to the target's tokens inside the continuation
    # [n_prompts, max_len] the same, counted on into the target's tokens past the end (None: not recorded)
    accepted_past_end: np.ndarray | None

    def rows(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """Row index of each of `prompt_ids`."""
        index = {p: i for i, p in enumerate(self.prompt_ids.tolist())}
        missing = [p for p in prompt_ids if p not in index]
        if missing:
            raise SpecprofError(f"proposals.parquet: no proposals for prompt {missing[0]!r}; the report is incomplete")
        return np.array([index[p] for p in prompt_ids], dtype=np.int64)


def leading_matches(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[n] how many leading entries of each row of `proposals` [n, m] equal `targets` [n, m]."""
    equal = proposals == targets
    return np.cumprod(equal, axis=1).sum(axis=1) if equal.size else np.zeros(len(proposals), dtype=np.int64)


def start_runs(
    proposals: pd.DataFrame | pa.Table, targets: pd.DataFrame, past_end: pd.DataFrame | None, k_max: int
) -> dict[str, StartRuns]:
    """`StartRuns` of every draft in `proposals` (rows draft, prompt_id, position, proposal).

    `targets` holds the continuation (prompt_id, position, target_token of any one draft), `past_end`
    the target's tokens past the end (same columns; None for a report without them).
    """
    import pandas as pd
    import pyarrow.compute as pc  # on use: its import costs the decision commands 0.1 s

    out: dict[str, StartRuns] = {}
    if proposals is None or not len(proposals):
        return out
    if isinstance(proposals, pd.DataFrame):
        proposals = pa.Table.from_pandas(proposals[["draft", "prompt_id", "position", "proposal"]],
                                         preserve_index=False)
    ids, codes = _prompt_codes(targets)
    index = {p: i for i, p in enumerate(ids)}
    lengths = np.zeros(len(ids), dtype=np.int64)
    np.maximum.at(lengths, codes, targets["position"].to_numpy(np.int64) + 1)
    width = int(lengths.max(initial=0)) + k_max + 1
    inside = np.full((len(ids), width), -2, dtype=np.int64)  # -2: never equal to a proposal
    inside[codes, targets["position"].to_numpy(np.int64)] = targets["target_token"].to_numpy(np.int64)
    extended = None
    if past_end is not None:
        extended = inside.copy()
        rows = past_end["prompt_id"].astype(str).map(index)
        keep = rows.notna().to_numpy() & (past_end["position"].to_numpy(np.int64) < width)
        extended[rows[keep].to_numpy(np.int64), past_end["position"].to_numpy(np.int64)[keep]] = \
            past_end["target_token"].to_numpy(np.int64)[keep]
    names = proposals.column("draft")
    for draft in dict.fromkeys(str(d) for d in pc.unique(names).to_pylist()):
        part = proposals.filter(pc.equal(names, draft))
        row = pd.Series(part.column("prompt_id").to_pylist()).astype(str).map(index)
        if row.isna().any():
            raise SpecprofError(f"proposals.parquet: draft {draft!r} has prompts that tokens.parquet lacks")
        row = row.to_numpy(np.int64)
        start = part.column("position").to_numpy().astype(np.int64)
        padded, count = _pad_lists(part.column("proposal"), k_max)  # [n_rows, k_max], [n_rows]
        at = start[:, None] + np.arange(k_max)[None, :]
        proposed = np.zeros((len(ids), width - k_max - 1), dtype=np.int64)
        accepted = np.zeros_like(proposed)
        proposed[row, start] = count
        accepted[row, start] = leading_matches(padded, inside[row[:, None], at])
        after = None
        if extended is not None:
            after = np.zeros_like(proposed)
            after[row, start] = leading_matches(padded, extended[row[:, None], at])
        out[draft] = StartRuns(np.asarray(ids, dtype=object), lengths, proposed, accepted, after)
    return out


def _prompt_codes(targets: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    codes, ids = pd.factorize(targets["prompt_id"].astype(str), sort=False)
    return [str(p) for p in ids], codes


def _pad_lists(column: pa.ChunkedArray | pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, width] int64 rows padded with -3 (never a token), and each list's length (at most width)."""
    import pyarrow.compute as pc  # on use: its import costs the decision commands 0.1 s

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = cols < width
    out = np.full((len(lengths), width), -3, dtype=np.int64)
    out[rows[keep], cols[keep]] = flat[keep]
    return out, np.minimum(lengths, width)


def block_dependent(run: dict) -> list[str]:
    """Names of the block-dependent drafts a run.json lists."""
    return [d["name"] for d in run.get("drafts") or [] if kinds.kind(d.get("kind")).proposal.per_block_start]


def load_runs(rep, drafts: Sequence[str], k_max: int) -> dict[str, StartRuns]:
    """`StartRuns` of the block-dependent drafts among `drafts`, read from a report (`reportfiles.Report`).

    Proposals hold k_max tokens (the run's k_max): a larger k cannot be simulated from them.
    """
    wanted = [d for d in block_dependent(rep.run) if d in set(drafts)]
    if not wanted:
        return {}
    run_k_max = int((rep.run.get("settings") or {}).get("k_max", 8))
    if k_max > run_k_max:
        raise SpecprofError(
            f"--k-max {k_max}: draft {wanted[0]} was simulated up to k = {run_k_max} when profiled; "
            f"pass --k-max {run_k_max} or less"
        )
    import pyarrow.compute as pc  # here: its import costs the decision commands 0.1 s

    proposals = rep.table("proposals")
    proposals = proposals.filter(pc.is_in(proposals.column("draft"), pa.array(wanted)))
    columns = ["draft", "prompt_id", "position", "target_token"]
    targets = rep.frame("tokens", columns)
    targets = targets[targets["draft"] == wanted[0]]
    past = rep.frame("past_end", columns) if rep.path("past_end").exists() else None
    if past is not None:
        past = past[past["draft"] == wanted[0]]
    return start_runs(proposals, targets, past, run_k_max)


def simulate_blocks(runs: StartRuns, prompt_id: str, k: int) -> list[trace.Block]:
    """One prompt's blocks at draft length k (as `trace.simulate_blocks` for a prefix-dependent draft)."""
    row = int(runs.rows([prompt_id])[0])
    length = int(runs.lengths[row])
    blocks, start = [], 0
    while start < length:
        accepted = min(k, int(runs.accepted[row, start]))
        blocks.append(trace.Block(start, accepted, min(accepted + 1, length - start)))
        start += accepted + 1
    return blocks
