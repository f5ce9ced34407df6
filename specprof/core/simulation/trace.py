"""Turn per-token acceptance into speculative-decoding blocks for every draft length k.

Greedy (T = 0) is exact (docs/design.md §1). The target's continuation y is fixed; `match[t]` says
whether the draft, given the target prefix y[:t], proposed y[t]. A block that starts at s accepts
n = the number of consecutive matches from s (at most k), emits n + 1 tokens (the target adds the
token after the last accepted one; fewer at the end of y) and the next block starts at s + n + 1.
An accepted draft token equals the target's, so the draft's next proposal is conditioned on the
target prefix: one target generation plus one teacher-forced draft pass give the exact trace for
every k at once.

Sampling (T > 0) gives an estimate: the block chain with acceptance probability
`accept_prob[t]` = Σ_v min(p_t(v), q_t(v)) at each position, P(first i accepted | start s) =
Π_{j<i} accept_prob[s+j]. With 0/1 probabilities it reduces to the exact greedy trace.

What this module does not do: read files, pick k or estimate speedups (`costmodel`, `stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    start: int  # position in the continuation where the block's first draft token sits
    accepted: int  # draft tokens the target accepted, 0..k
    emitted: int  # tokens the iteration adds to the output: accepted + 1, fewer at the end


@dataclass(frozen=True)
class BlockCounts:
    """Per-prompt block statistics for k = 1..k_max (index k - 1); floats so T > 0 expectations fit."""

    iterations: np.ndarray  # [n_prompts, k_max] target forward passes (one per block)
    accepted: np.ndarray  # [n_prompts, k_max] accepted draft tokens, summed over blocks
    emitted: np.ndarray  # [n_prompts, k_max] output tokens, summed over blocks (= continuation length)
    histogram: np.ndarray  # [n_prompts, k_max, k_max + 1] blocks that accepted exactly n tokens
    # [n_prompts, k_max, k_max + 1] blocks in which the draft proposed exactly n tokens: k, unless it
    # had nothing to propose (an n-gram draft's lookup found no match) before a proposal was rejected
    proposed: np.ndarray

    @property
    def k_max(self) -> int:
        return self.iterations.shape[1]


def simulate_blocks(match: Sequence[bool], k: int) -> list[Block]:
    """The exact greedy speculative trace of one continuation at draft length k.

    Example: match = 1101110 at k = 2 gives blocks (start 0: accept 2, emit 3), (3: 2, 3),
    (6: 0, 1): 3 iterations for 7 tokens.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    n_tokens = len(match)
    blocks = []
    start = 0
    while start < n_tokens:
        accepted = 0
        while accepted < k and start + accepted < n_tokens and match[start + accepted]:
            accepted += 1
        emitted = min(accepted + 1, n_tokens - start)  # the bonus token only exists inside y
        blocks.append(Block(start, accepted, emitted))
        start += accepted + 1
    return blocks


def pad(rows: Sequence[np.ndarray], dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged 1-D arrays into [n_rows, max_len] with zeros after each row's end, and the lengths."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.zeros((len(rows), int(lengths.max(initial=0))), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths


def run_lengths(match: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """For [n, L] 0/1 matches, the number of consecutive matches starting at each position: [n, L + 1],
    the last column 0. Built from the end, one column at a time over all rows (columns stored as
    contiguous rows: one vectorised step per position, 5× faster than along each row)."""
    n, width = match.shape
    columns = np.ascontiguousarray((np.asarray(match) > 0).T)  # [L, n]
    out = np.zeros((width + 1, n), dtype=dtype)
    for t in range(width - 1, -1, -1):
        np.multiply(out[t + 1] + 1, columns[t], out=out[t])
    return np.ascontiguousarray(out.T)


def proposals_per_block(take: np.ndarray, left: np.ndarray, stopped: np.ndarray, k: int) -> np.ndarray:
    """Draft tokens proposed in blocks that accepted `take`: the draft proposes k, unless the first
    position it failed at (inside the continuation) had no proposal at all (`stopped`), where its
    lookups ended. After a proposal that is rejected the draft goes on drafting on its own wrong
    prefix, which nobody recorded: priced at k, as a model draft always proposes."""
    return np.where((take < k) & (take < left) & stopped, take, k)


def count_blocks_exact(
    match: np.ndarray, lengths: np.ndarray, k_max: int, no_proposal: np.ndarray | None = None,
    start_accepted: np.ndarray | None = None, start_proposed: np.ndarray | None = None,
) -> BlockCounts:
    """Greedy blocks for all prompts and all k; `match` is [n_prompts, max_len], zero-padded, and
    `no_proposal` (same shape, default none) marks positions where the draft proposed nothing.

    A block-dependent draft (`blockdraft`) gives instead, per block start s ([n_prompts, max_len]),
    `start_accepted[s]`: how many of its k_max proposals from s the target accepts, and
    `start_proposed[s]`: how many it proposed; at k the block accepts min(k, start_accepted[s])
    and proposes min(k, start_proposed[s]). `match` is then unused, and the blocks are walked
    (`walk_block_starts`). Otherwise they are counted run by run (`count_run_blocks`). Both equal
    `simulate_blocks` row by row (tests check this).
    """
    if start_accepted is None:
        return count_run_blocks(match, lengths, k_max, no_proposal)
    return walk_block_starts(lengths, k_max, start_accepted, start_proposed, no_proposal)


def count_run_blocks(
    match: np.ndarray, lengths: np.ndarray, k_max: int, no_proposal: np.ndarray | None = None
) -> BlockCounts:
    """`count_blocks_exact` for a draft whose proposal at t depends only on the target prefix y[:t].

    No block reaches past a mismatch: a rejected proposal, or the bonus token right after k
    accepted ones, ends it there, so blocks start afresh after every mismatch. A run of L matches
    followed by a mismatch is q = L // (k + 1) blocks that accept k (k + 1 tokens each), then one
    that accepts r = L % (k + 1) and ends on the mismatch. The run after a row's last mismatch has
    no mismatch to end on: its last block, if r > 0, accepts r and has no bonus token. A block
    proposes k, unless it was rejected where nothing was proposed (`proposals_per_block`).
    Example: 1101110 (runs 2 and 3, the second to the end) at k = 2: run 2 → one block accepting
    2 (the mismatch is its bonus token); run 3 → one block accepting 2, then one accepting 1 with
    no bonus: 3 iterations, as `simulate_blocks` walks them.
    """
    n, width = match.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    inside = np.arange(width)[None, :] < lengths[:, None]
    row, at = np.nonzero(inside & (match == 0))  # every mismatch, by row then position
    first = np.ones(len(row), dtype=bool)  # a row's first mismatch: its run starts at 0
    first[1:] = row[1:] != row[:-1]
    last = np.ones(len(row), dtype=bool)
    last[:-1] = row[:-1] != row[1:]
    run = at.copy()
    run[~first] -= at[np.flatnonzero(~first) - 1] + 1  # [n_mismatches] matches before each mismatch
    tail = lengths.copy()  # [n] matches after a row's last mismatch, to its end
    tail[row[last]] -= at[last] + 1
    stopped = no_proposal[row, at] if no_proposal is not None else np.zeros(len(row), dtype=bool)
    any_stopped = bool(stopped.any())
    runs_of = row[first]  # rows with a mismatch; their runs sit in `run` from `np.flatnonzero(first)` on
    histogram = np.zeros((n, k_max, k_max + 1))
    proposed = np.zeros((n, k_max, k_max + 1))
    for ki in range(k_max):
        k = ki + 1
        q, r = np.divmod(run, k + 1)  # per run that ends on a mismatch: q full blocks, then one accepting r
        q_tail, r_tail = np.divmod(tail, k + 1)  # per row: q_tail full blocks, then one accepting r_tail if > 0
        cells = np.bincount(row * (k + 1) + r, minlength=n * (k + 1)).reshape(n, k + 1)
        cells[:, k] += q_tail
        if len(q):
            cells[runs_of, k] += np.add.reduceat(q, np.flatnonzero(first))
        ends = np.flatnonzero(r_tail > 0)
        cells[ends, r_tail[ends]] += 1
        histogram[:, ki, : k + 1] = cells
        if any_stopped:  # rejected where nothing was proposed: it proposed r, not k
            short = stopped & (r < k)
            proposed[:, ki, : k + 1] = np.bincount(row[short] * (k + 1) + r[short], minlength=n * (k + 1)).reshape(
                n, k + 1)
    iterations = histogram.sum(-1)
    proposed[:, np.arange(k_max), np.arange(1, k_max + 1)] = iterations - proposed.sum(-1)
    accepted = histogram @ np.arange(k_max + 1)
    return BlockCounts(iterations, accepted, lengths[:, None] * np.ones(k_max), histogram, proposed)


def walk_block_starts(
    lengths: np.ndarray, k_max: int, start_accepted: np.ndarray, start_proposed: np.ndarray | None,
    no_proposal: np.ndarray | None = None,
) -> BlockCounts:
    """`count_blocks_exact` for a block-dependent draft, walking the blocks.

    Vectorised over prompts: each step advances every unfinished prompt by one block, and prompts
    drop out of the working set as they finish, so the work is the number of blocks, not
    prompts × max_len. Block records are tallied with one bincount per k.
    """
    # Long on purpose: one vectorised block walk per k, kept whole so it reads against simulate_blocks.
    n = start_accepted.shape[0]
    runs = np.zeros((n, start_accepted.shape[1] + 1), dtype=np.int64)
    runs[:, : start_accepted.shape[1]] = start_accepted
    block_proposed = None
    if start_proposed is not None:
        block_proposed = np.zeros(runs.shape, dtype=np.int64)
        block_proposed[:, : start_proposed.shape[1]] = start_proposed
        block_proposed = block_proposed.ravel()
    flat_runs = runs.ravel()
    row_base = np.arange(n, dtype=np.int64) * runs.shape[1]
    lengths = np.asarray(lengths, dtype=np.int64)
    iterations = np.zeros((n, k_max))
    accepted = np.zeros((n, k_max))
    emitted = np.zeros((n, k_max))
    histogram = np.zeros((n, k_max, k_max + 1))
    proposed = np.zeros((n, k_max, k_max + 1))
    stopped = np.zeros(runs.shape, dtype=bool)  # [n, max_len + 1] like runs, so the flat indices agree
    if no_proposal is not None:
        stopped[:, : no_proposal.shape[1]] = no_proposal
    flat_stopped = stopped.ravel()
    for ki in range(k_max):
        k = ki + 1
        rows = np.flatnonzero(lengths > 0)  # [n_active] prompts with a block still to place
        start = np.zeros(len(rows), dtype=np.int64)  # [n_active] where each one's next block starts
        seen_rows, seen_take, seen_emit, seen_proposed = [], [], [], []
        while rows.size:
            at = row_base[rows] + start
            take = np.minimum(flat_runs[at], k)  # accepted draft tokens in this block
            left = lengths[rows] - start
            seen_rows.append(rows)
            seen_take.append(take)
            seen_emit.append(np.minimum(take + 1, left))  # the bonus token only exists inside y
            if block_proposed is None:
                seen_proposed.append(proposals_per_block(take, left, flat_stopped[at + take], k))
            else:
                seen_proposed.append(np.minimum(block_proposed[at], k))
            start = start + take + 1
            going = start < lengths[rows]
            rows, start = rows[going], start[going]
        if not seen_rows:
            continue
        block_rows = np.concatenate(seen_rows)  # [n_blocks] one entry per block of every prompt
        block_take = np.concatenate(seen_take)
        iterations[:, ki] = np.bincount(block_rows, minlength=n)
        accepted[:, ki] = np.bincount(block_rows, weights=block_take, minlength=n)
        emitted[:, ki] = np.bincount(block_rows, weights=np.concatenate(seen_emit), minlength=n)
        histogram[:, ki, : k + 1] = np.bincount(block_rows * (k + 1) + block_take, minlength=n * (k + 1)).reshape(
            n, k + 1
        )
        proposed[:, ki, : k + 1] = np.bincount(
            block_rows * (k + 1) + np.concatenate(seen_proposed), minlength=n * (k + 1)
        ).reshape(n, k + 1)
    return BlockCounts(iterations, accepted, emitted, histogram, proposed)


def count_blocks_expected(
    accept_prob: np.ndarray, lengths: np.ndarray, k_max: int, no_proposal: np.ndarray | None = None
) -> BlockCounts:
    """Expected block statistics from per-position acceptance probabilities (the chain estimate);
    `no_proposal` as in `count_blocks_exact` (there the acceptance probability is 0).

    `accept_prob` is [n_prompts, max_len], zero-padded. A block starting at s accepts exactly n < k
    with probability Π_{j<n} a[s+j] · (1 − a[s+n]) and all k with Π_{j<k} a[s+j]; `start_prob[s]`
    is the probability that some block starts at s. Exact when every probability is 0 or 1.
    """
    n_prompts, max_len = accept_prob.shape
    padded = np.concatenate([accept_prob, np.zeros((n_prompts, k_max + 1))], axis=1)
    remaining = lengths[:, None] - np.arange(max_len)[None, :]  # [n_prompts, max_len] tokens left at s
    iterations = np.zeros((n_prompts, k_max))
    accepted = np.zeros((n_prompts, k_max))
    emitted = np.zeros((n_prompts, k_max))
    histogram = np.zeros((n_prompts, k_max, k_max + 1))
    proposed = np.zeros((n_prompts, k_max, k_max + 1))
    stopped = np.zeros((n_prompts, max_len + k_max + 1), dtype=bool)
    if no_proposal is not None:
        stopped[:, : no_proposal.shape[1]] = no_proposal
    for ki in range(k_max):
        k = ki + 1
        offsets = np.arange(k)  # where in a block the draft can fail
        # prob_n[:, s, n]: block at s accepts exactly n.
        window = np.stack([padded[:, j : j + max_len] for j in range(k + 1)], axis=2)
        prefix = np.concatenate([np.ones((n_prompts, max_len, 1)), np.cumprod(window[:, :, :k], axis=2)], axis=2)
        prob_n = prefix.copy()
        prob_n[:, :, :k] *= 1.0 - window[:, :, :k]
        start_prob = np.zeros((n_prompts, max_len + k + 2))
        start_prob[:, 0] = 1.0
        for s in range(max_len):
            live = np.where(remaining[:, s] > 0, start_prob[:, s], 0.0)
            weight = live[:, None] * prob_n[:, s, :]  # [n_prompts, k + 1]
            histogram[:, ki, : k + 1] += weight
            short = np.where(stopped[:, s : s + k] & (offsets < remaining[:, s, None]), weight[:, :k], 0.0)
            proposed[:, ki, :k] += short  # rejected where nothing was proposed: the lookups ended there
            proposed[:, ki, k] += weight.sum(1) - short.sum(1)
            iterations[:, ki] += live
            for n in range(k + 1):
                start_prob[:, s + n + 1] += weight[:, n]
            emitted[:, ki] += (weight * np.minimum(np.arange(k + 1)[None, :] + 1, remaining[:, s, None])).sum(1)
        accepted[:, ki] = (histogram[:, ki, :] * np.arange(k_max + 1)[None, :]).sum(1)
    return BlockCounts(iterations, accepted, emitted, histogram, proposed)


def per_position_acceptance(histogram: np.ndarray, k: int) -> np.ndarray:
    """[k] r_1..r_k, r_i = P(accepted ≥ i) (glossary.PER_POSITION), from a histogram of accepted counts 0..k.

    Mean acceptance length (vLLM's, bonus token included) is 1 + Σ_{i=1..k} r_i away from the sequence end.
    """
    counts = np.asarray(histogram, dtype=np.float64)[: k + 1]
    total = counts.sum()
    if total == 0:
        return np.zeros(k)
    at_least = counts[::-1].cumsum()[::-1]  # at_least[n] = blocks with accepted ≥ n
    return at_least[1 : k + 1] / total
