"""Confidence-threshold drafting simulated from a greedy report (docs/design.md §2, dynamic drafting).

The policy: the draft proposes its next token; when its probability of that token (at T = 0 its
top-1 probability, `draft_top1_p`) is below τ, the block ends *after* that proposal, otherwise the
draft goes on, up to k_max proposals. The low-confidence token is still proposed and verified, and
every block proposes at least one token. These are the semantics of transformers'
`assistant_confidence_threshold` (`ConfidenceCriteria` is a stopping criterion of the assistant's
own `generate`: it looks at the token just appended and stops after it), with a fixed τ
(transformers re-tunes τ between iterations when scikit-learn is installed; we price fixed values).

What is exact and what is bounded, at T = 0. A block starts at s on the target's own prefix. Every
proposal up to and including the first mismatch is made on the target's prefix, where the profile
recorded the draft's match and top-1 probability, so whether the draft stopped before the first
mismatch, hence the accepted count, the tokens per iteration and the number of iterations, is
exact. After a mismatch the draft goes on proposing on its own wrong prefix, which nobody recorded:
the number of draft steps of such a block is only bounded, below by stopping at the mismatch
(`steps_lo`) and above by running on to k_max (`steps_hi`). When the draft stops before the first
mismatch, or the mismatch itself falls below τ, or is the k_max-th proposal, the count is exact
and the two bounds agree.

Example: match 1101011, draft_top1_p 0.9 0.4 0.9 0.9 0.8 0.3 0.9, k_max 4, τ 0.5.
  block at 0: position 0 matches (0.9), position 1 matches but 0.4 < τ: stop. 2 proposals, both
              accepted, 3 tokens emitted, exactly 2 draft steps; the draft catches up next.
  block at 3: position 3 matches (0.9), position 4 is a mismatch proposed at 0.8 ≥ τ: the draft went
              on past it on its own prefix. 1 accepted, 2 emitted, draft steps between 2 and 4.
  block at 5: position 5 matches at 0.3 < τ: stop. 1 accepted, 2 emitted, exactly 1 step.

Like `trace.simulate_blocks`, the simulation ignores the max_new_tokens budget of a real loop (which
drafts at most max_new_tokens − t − 1 tokens at position t); tokens and iterations are unaffected.

What this module does not do: read files, import torch, or decide anything (`policy_estimate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specprof.core.simulation import trace
from specprof.core.simulation.threads import thread_map

TAUS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the grid recommend searches
SMALL_TALLY = 1 << 16  # counters that a bincount of a few steps' records may fill while they are in cache


@dataclass(frozen=True)
class PolicyBlock:
    start: int  # position in the continuation of the block's first proposal
    accepted: int  # draft tokens the target accepted
    emitted: int  # tokens the iteration adds: accepted + 1, fewer at the end of y
    steps_lo: int  # draft steps (proposals), lower bound: stop at the first mismatch
    steps_hi: int  # upper bound: run on to k_max after it; = steps_lo when the stop point was observed
    full: bool  # every proposal was accepted: the draft catches up on 2 tokens next iteration


def simulate_policy(match: Sequence[bool], top1_p: Sequence[float], k_max: int, tau: float) -> list[PolicyBlock]:
    """The greedy trace of one continuation under "draft while top-1 p ≥ τ, at most k_max".

    Example (the module docstring's): match 1101011, top1_p 0.9 0.4 0.9 0.9 0.8 0.3 0.9, k_max 4,
    τ 0.5 gives (start 0: accepted 2, emitted 3, steps 2–2, full), (3: 1, 2, 2–4, not full),
    (5: 1, 2, 1–1, full).
    """
    if k_max < 1:
        raise ValueError(f"k_max must be ≥ 1, got {k_max}")
    n_tokens = len(match)
    blocks = []
    start = 0
    while start < n_tokens:
        accepted, stop = 0, None  # stop: the number of proposals, when the stop point was observed
        while start + accepted < n_tokens:
            pos = start + accepted  # this proposal is made on the target's prefix: its record is valid
            confident = top1_p[pos] >= tau
            if not match[pos]:  # proposed and rejected; the draft goes on only if confident and below k_max
                if not confident or accepted + 1 == k_max:
                    stop = accepted + 1
                break
            accepted += 1
            if not confident or accepted == k_max:
                stop = accepted
                break
        full = stop == accepted
        steps_lo, steps_hi = (stop, stop) if stop is not None else (accepted + 1, k_max)
        blocks.append(PolicyBlock(start, accepted, min(accepted + 1, n_tokens - start), steps_lo, steps_hi, full))
        start += accepted + 1
    return blocks



FULL, SEEN, OPEN = 0, 1, 2  # block classes: all proposals accepted; stopped at the rejection; steps unseen


@dataclass(frozen=True)
class PolicyCounts:
    """Block counts of every policy of a grid (τ × k_max) for one draft, per prompt or per group of prompts.

    `histogram` [n_rows, n_taus, n_k, 3, k_top + 1] counts the blocks by class and accepted count a:
    FULL (every proposal accepted: a draft steps, then the catch-up), SEEN (stopped at the rejected
    proposal: a + 1 steps) and OPEN (went on past the rejection, unseen: a + 1 to k_max steps). The
    other arrays are views of it, built when asked for: [n_prompts, n_taus, n_k] and, for the step
    histograms, a last axis 0..k_top.
    """

    taus: tuple[float, ...]
    k_maxes: tuple[int, ...]
    histogram: np.ndarray  # [n_rows (prompts or groups), n_taus, n_k, 3, k_top + 1] int

    @property
    def iterations(self) -> np.ndarray:  # target forward passes (one per block)
        return self.histogram.sum((-2, -1))

    @property
    def accepted(self) -> np.ndarray:  # accepted draft tokens, summed over blocks
        return self.histogram.sum(-2) @ np.arange(self.histogram.shape[-1])

    @property
    def full(self) -> np.ndarray:  # blocks whose proposals were all accepted
        return self.histogram[..., FULL, :].sum(-1)

    @property
    def open_blocks(self) -> np.ndarray:  # blocks with unseen steps (a + 1 to k_max), by accepted count a
        return self.histogram[..., OPEN, :]

    @property
    def steps_lo(self) -> np.ndarray:  # blocks with exactly n draft steps, at the lower bound
        h = self.histogram
        out = h[..., FULL, :].copy()
        out[..., 1:] += h[..., SEEN, :-1] + h[..., OPEN, :-1]
        return out

    @property
    def steps_hi(self) -> np.ndarray:  # the same at the upper bound: unseen steps run on to k_max
        h = self.histogram
        out = h[..., FULL, :].copy()
        out[..., 1:] += h[..., SEEN, :-1]
        for q, k_max in enumerate(self.k_maxes):
            out[..., q, k_max] += h[..., q, OPEN, :].sum(-1)
        return out

    def select(self, mask: np.ndarray) -> PolicyCounts:
        return PolicyCounts(self.taus, self.k_maxes, self.histogram[mask])

    def draft_steps(self, mask: np.ndarray, j: int, q: int) -> tuple[float, float]:
        """Total draft steps of the prompts in `mask` under policy (τ index j, k_max index q): (lo, hi)."""
        h = self.histogram[mask, j, q].sum(0).astype(np.float64)  # [3, k_top + 1]
        a = np.arange(h.shape[-1])
        seen = h[FULL] @ a + h[SEEN] @ (a + 1)
        return float(seen + h[OPEN] @ (a + 1)), float(seen + h[OPEN].sum() * self.k_maxes[q])


def count_policy_blocks(
    match: np.ndarray, top1_p: np.ndarray, lengths: np.ndarray, k_maxes: Sequence[int], taus: Sequence[float]
) -> PolicyCounts:
    """`simulate_policy` for every prompt × τ × k_max at once, a histogram row per prompt; `match` and `top1_p`
    are [n_prompts, max_len] (`PolicyWalk.counts` also tallies per group of prompts)."""
    return PolicyWalk(match, top1_p, lengths, k_maxes).counts(taus)


class PolicyWalk:
    """One draft's continuations, ready to walk under any threshold policy with a k_max of `k_maxes`.

    Per block at s with a = the run of matches from s and c = the run of confident positions
    (top-1 p ≥ τ) from s, and e = min(a, c + 1) the proposals the draft would get accepted with no
    k_max: accepted = min(e, k_max). All proposals were accepted iff c + 1 ≤ a (a stop on a doubted
    match) or e ≥ k_max; otherwise e = a, the draft proposed the mismatch at s + a (a + 1 steps)
    and went on past it, unseen, only if it was confident there (c > a) and a + 1 < k_max. Positions
    past a row's end count as confident, so a run of matches to the end leaves the count open, as it is.

    So a block depends only on k_max and one small code per position, (e, c + 1 ≤ a, c = a): a table
    maps (k_max, code) to the block's histogram cell (class × accepted) and its length. Per τ, every
    (prompt, k_max) row advances one block per step: one gather of its code, one table look-up, and
    its cell recorded; one bincount per τ tallies the records, per prompt or per group of prompts (a
    domain: `recommend` picks each domain's policy on its totals, then bootstraps only the picked
    policies per prompt, `counts(..., ks=...)`). A row that reaches its end sits on an END code that
    records into a spare cell and advances by 0. The τs walk in threads (`threads`). Equal to
    `simulate_policy` row by row (tests).
    """

    def __init__(self, match: np.ndarray, top1_p: np.ndarray, lengths: np.ndarray, k_maxes: Sequence[int]):
        n, width = match.shape
        self.k_maxes = tuple(int(k) for k in k_maxes)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        inside = np.arange(width)[None, :] < self.lengths[:, None]
        self.top1_p = np.asarray(top1_p)
        small = 4 * (width + 2) < 2**15  # the position codes (and the runs they are made of) fit int16
        self.grid = _Grid(self.k_maxes, self.lengths, inside,
                          trace.run_lengths(np.where(inside, match, 0), np.int16 if small else np.int32),
                          *_block_table(self.k_maxes, width))

    def counts(self, taus: Sequence[float], groups: np.ndarray | None = None,
               ks: Sequence[int] | None = None) -> PolicyCounts:
        """Block counts for τ in `taus` × the k_maxes at indices `ks` (default all): a histogram row per
        prompt, or per group with `groups` ([n_prompts] ints ≥ 0; row g sums group g's prompts)."""
        n = len(self.lengths)
        taus = tuple(float(t) for t in taus)
        at = np.arange(len(self.k_maxes)) if ks is None else np.asarray(ks, dtype=np.int64)
        k_top = max(self.k_maxes, default=0)
        tally_row = np.arange(n) if groups is None else np.asarray(groups, dtype=np.int64)
        n_rows = n if groups is None else int(tally_row.max(initial=-1)) + 1
        # τ by τ, spread over the cores: each walk's codes stay in cache while its rows walk them (walking
        # all τs at once, in calls 9× longer, took 1.6× the time)
        walks = thread_map(lambda tau: self.grid.walk(self.top1_p >= tau, tally_row, n_rows, at), taus)
        counts = np.empty((n_rows, len(taus), len(at), 3, k_top + 1), dtype=np.int32)
        for j, tally in enumerate(walks):  # [cells + 1, rows, n_k]: the spare cell dropped, cells moved last
            counts[:, j] = tally[:-1].transpose(1, 2, 0).reshape(n_rows, len(at), 3, k_top + 1)
        return PolicyCounts(taus, tuple(self.k_maxes[q] for q in at.tolist()), counts)


@dataclass(frozen=True)
class DraftPolicies:
    """One draft's threshold policies: every policy's block counts per group of prompts (its domains), and
    the walk that counts any of them per prompt (to bootstrap the policies picked on those totals)."""

    by_group: PolicyCounts  # histogram [n_groups, n_taus, n_k, 3, k_top + 1]
    group: np.ndarray  # [n_prompts] each prompt's row in by_group
    walk: PolicyWalk

    @property
    def taus(self) -> tuple[float, ...]:
        return self.by_group.taus

    @property
    def k_maxes(self) -> tuple[int, ...]:
        return self.by_group.k_maxes

    def total(self, mask: np.ndarray) -> np.ndarray:
        """[n_taus, n_k, 3, k_top + 1] the counts summed over the prompts in `mask`, a union of whole groups."""
        rows = np.unique(self.group[mask])
        return self.by_group.histogram[rows].sum(0)

    def total_counts(self, mask: np.ndarray) -> PolicyCounts:
        """`total` as the counts of one row (what `policy_estimate.policy_cost` prices)."""
        return PolicyCounts(self.taus, self.k_maxes, self.total(mask)[None])

    def per_prompt(self, picks: Sequence[int]) -> dict[int, tuple[PolicyCounts, int]]:
        """For each grid index g = τ index · n_k + k_max index: the counts per prompt of that policy, as
        (counts of its τ and the picked k_maxes of that τ, g's index among those k_maxes); one walk per τ."""
        n_k = len(self.k_maxes)
        by_tau: dict[int, list[int]] = {}
        for g in sorted(set(picks)):
            by_tau.setdefault(g // n_k, []).append(g % n_k)
        walks = thread_map(lambda item: self.walk.counts((self.taus[item[0]],), ks=item[1]), by_tau.items())
        return {j * n_k + q: (counts, i) for (j, qs), counts in zip(by_tau.items(), walks) for i, q in enumerate(qs)}


@dataclass(frozen=True)
class _Grid:
    """What every τ's walk shares: the rows (prompt × k_max), the runs of matches and the block table."""

    k_maxes: tuple[int, ...]
    lengths: np.ndarray  # [n]
    inside: np.ndarray  # [n, width] positions inside each continuation
    runs: np.ndarray  # [n, width + 1] runs of matches from each position (int16 when the codes fit it)
    cell: np.ndarray  # [n_k · n_codes] the block's cell (class × accepted)
    advance: np.ndarray  # [n_k · n_codes] its length, accepted + 1
    end_code: int

    def walk(self, confident_at: np.ndarray, tally_row: np.ndarray, n_tally: int, ks: np.ndarray) -> np.ndarray:
        """The block counts of one τ (`confident_at`: [n, width] top-1 p ≥ τ) for the k_maxes at indices `ks`,
        each prompt's blocks counted in its `tally_row` (< `n_tally`): [cells + 1, n_tally, len(ks)] int32."""
        # Long on purpose: the codes, then the walk, read against simulate_policy.
        n, width = self.inside.shape
        n_k, k_top = len(ks), max(self.k_maxes, default=0)
        cells = 3 * (k_top + 1)  # class × accepted, then one spare cell for rows that are done
        n_out = n_tally * n_k  # the tally's rows: (tally row, k_max) in C order
        # The tally is cell-major (cell · n_out + row): a step's records, rows ascending, fall in a few
        # runs of nearby counters rather than one counter per 28 (1.7× faster bincount). One look-up gives
        # both the cell's offset (low bits) and the block's length (above).
        shift = (cells * n_out).bit_length()
        wide = shift + (k_top + 1).bit_length() > 31
        packed = (self.advance.astype(np.int64) << shift) | (self.cell.astype(np.int64) * n_out)
        packed = packed if wide else packed.astype(np.int32)
        n_codes = self.end_code + 1
        confident = np.ones((n, width + 1), dtype=bool)  # one column past the widest row: confident
        confident[:, :width] = ~self.inside | confident_at
        runs = self.runs
        conf_runs = trace.run_lengths(confident, runs.dtype.type)[:, : width + 1]
        # [n, width + 2] (e, c + 1 ≤ a, c = a) packed; int16 while it fits: half the memory the walk reads
        code = np.empty((n, width + 2), dtype=runs.dtype)
        code[:, : width + 1] = (np.minimum(runs, conf_runs + 1) << 2) | ((conf_runs + 1 <= runs) << 1) | (
            conf_runs == runs)
        code[np.arange(n)[:, None], np.stack([self.lengths, self.lengths + 1], axis=1)] = self.end_code  # a
        flat = code.ravel()  # block may step one past the end (its bonus token): END there too
        first = np.arange(n * n_k)  # row = (prompt, k_max) in C order
        prompt, q = first // n_k, first % n_k
        walked = self.lengths[prompt] > 0
        prompt, q = prompt[walked], q[walked]
        index = packed.dtype.type
        row = (tally_row[prompt] * n_k + q).astype(index)  # each row's counter in cell 0 of the tally
        table = ks[q].astype(index) * n_codes  # each row's k_max block of the table
        position = (prompt * (width + 2)).astype(np.int32 if flat.size < 2**31 else np.int64)
        stop = position + self.lengths[prompt].astype(position.dtype)
        size = (cells + 1) * n_out
        tally = np.zeros(size, dtype=np.int64)
        seen, steps = [], 0
        while row.size:
            block = packed.take(table + flat.take(position))
            seen.append((block & ((1 << shift) - 1)) + row)
            position += (block >> shift).astype(position.dtype, copy=False)
            steps += 1
            if steps % 8 == 0:  # drop finished rows now and then, not at every step
                if size <= SMALL_TALLY:  # a few counters (per domain): tally while the records are in cache
                    tally += np.bincount(np.concatenate(seen), minlength=size)
                    seen = []
                going = position < stop
                if going.sum() < 0.75 * len(going):
                    row, table, position, stop = row[going], table[going], position[going], stop[going]
        if seen:  # many counters (per prompt): one bincount over every record
            tally += np.bincount(np.concatenate(seen), minlength=size)
        return tally.astype(np.int32).reshape(cells + 1, n_tally, n_k)


def _block_table(k_maxes: tuple[int, ...], width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For every (k_max, position code): the block's cell (class × accepted) and its length accepted + 1;
    flattened [n_k · n_codes]. The last code, END, records into the spare cell and stays put."""
    k_top = max(k_maxes, default=0)
    codes = np.arange(4 * (width + 2) + 1)  # e ≤ width + 1, two flags; then END
    end_code = len(codes) - 1
    e, stop_on_match, doubted = codes >> 2, (codes & 2) != 0, (codes & 1) != 0
    k = np.array(k_maxes)[:, None]
    take = np.minimum(e[None], k)
    full = stop_on_match[None] | (e[None] >= k)
    kind = (~full).astype(np.int64) + (~full & ~doubted[None] & (e[None] + 1 < k))  # FULL, SEEN or OPEN
    cell = kind * (k_top + 1) + take
    advance = take + 1
    cell[:, end_code], advance[:, end_code] = 3 * (k_top + 1), 0
    return cell.astype(np.int32).ravel(), advance.astype(np.int32).ravel(), end_code
