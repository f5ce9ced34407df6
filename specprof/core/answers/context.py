"""Acceptance against context: α and tokens/iter by position in the continuation and by context length.

A draft trained on short contexts (or an n-gram lookup whose matches thin out) accepts less as the
context grows, and a pooled figure hides it. Each token of a continuation sits at a position t
(0 = the first generated token) and a context length = the prompt's tokens (prompts.parquet, chat
template applied) + t, the tokens the target had seen before it. Both are cut into fixed buckets:

- α in a bucket: Σ accept_prob / tokens over the tokens in it (the match rate at T = 0);
- tokens/iter in a bucket (T = 0 only): Σ emitted / blocks over the blocks at k that *start* in it,
  the blocks being the report's exact trace at k (`block_walk`: the same blocks as
  `trace.count_blocks_exact`, walked one by one to know where each starts).

Intervals are the bootstrap over prompts (`stats`: per-prompt sums per bucket, the domain's resample
weights). "Falls with context": tokens/iter (α at T > 0) in a later bucket is below that of the
first bucket with data by more than the paired bootstrap allows (the 95% interval of later − first
lies below 0), both buckets holding at least `stats.MIN_PROMPTS` prompts.

Example, k = 1, one prompt of 10 tokens, continuation matches 1 1 0 (tokens at positions 0, 1, 2, contexts
10, 11, 12): blocks start at 0 (accepts 1, emits 2) and 2 (accepts 0, emits 1); with buckets cut at
11, α is 1/1 below 11 and 1/2 from 11, tokens/iter 2/1 below and 1/1 from 11.

No torch, no pandas; nothing printed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from specprof.core.answers.analysis import Analysis
from specprof.core.jsonvalues import json_number
from specprof.core.pricing import stats
from specprof.core.pricing.estimate import Estimate
from specprof.core.records import reportfiles
from specprof.core.simulation import trace
from specprof.core.simulation.threads import in_background, settled
from specprof.core.simulation.traces import DraftRows, domain_groups, to_numpy
from specprof.core.vocabulary import ALL

# Lower edges of the buckets, in tokens.
CONTEXT_EDGES = (0, 512, 2048, 8192)
CONTEXT_LABELS = ("< 512", "512–2k", "2k–8k", "≥ 8k")
POSITION_EDGES = (0, 16, 64, 256, 1024)
POSITION_LABELS = ("0–15", "16–63", "64–255", "256–1023", "≥ 1024")
AXES = {"context": (CONTEXT_EDGES, CONTEXT_LABELS), "position": (POSITION_EDGES, POSITION_LABELS)}


@dataclass(frozen=True)
class Buckets:
    """One draft × domain along one axis ("context" or "position"): figures per bucket (nan where empty)."""

    draft: str
    domain: str
    k: int
    axis: str
    labels: tuple[str, ...]
    n_prompts: np.ndarray  # [B] prompts with a token in the bucket
    n_tokens: np.ndarray  # [B]
    alpha: np.ndarray  # [B]
    alpha_lo: np.ndarray
    alpha_hi: np.ndarray
    tokens_per_iter: np.ndarray  # [B] nan at T > 0 (no exact blocks)
    tokens_per_iter_lo: np.ndarray
    tokens_per_iter_hi: np.ndarray
    fall: Fall | None  # the largest significant fall from the first bucket with data, or None


@dataclass(frozen=True)
class Fall:
    figure: str  # "tokens/iter" or "α"
    first: int  # bucket indices
    later: int
    first_value: float
    later_value: float
    diff_lo: float  # 95% interval of later − first
    diff_hi: float


def prompt_lengths(analysis: Analysis, prompt_ids: np.ndarray) -> np.ndarray | None:
    """[n] prompt tokens of each prompt (prompts.parquet), or None when the report has no such records."""
    rep = reportfiles.Report(analysis.path, analysis.run)
    if not rep.path("prompts").exists():
        return None
    table = rep.table("prompts", ["prompt_id", "prompt_tokens"])
    column = table.column("prompt_tokens").combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # an empty table
        return None
    offsets = to_numpy(column.offsets, np.int64)
    lengths = np.diff(offsets)
    index = {p: i for i, p in enumerate(table.column("prompt_id").to_pylist())}
    at = [index.get(str(p), -1) for p in prompt_ids.tolist()]
    if min(at, default=0) < 0:
        return None
    return lengths[np.asarray(at, dtype=np.int64)]


def block_walk(start_accepted: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Every block at k: (prompt row, start, accepted, emitted) arrays, walked vectorised over prompts.

    `start_accepted[p, s]` is how many proposals a block starting at s gets accepted (the run of
    matches from s for a prefix-dependent draft, `trace.run_lengths`; `blockdraft.StartRuns.accepted`
    for a block-dependent one); the block accepts min(k, it) and emits one more, fewer at the end.
    """
    width = start_accepted.shape[1]
    rows = np.flatnonzero(lengths > 0)
    start = np.zeros(len(rows), dtype=np.int64)
    seen: list[tuple[np.ndarray, ...]] = []
    while rows.size:
        take = np.minimum(start_accepted[rows, np.minimum(start, width - 1)], k)
        emitted = np.minimum(take + 1, lengths[rows] - start)
        seen.append((rows, start, take, emitted))
        start = start + take + 1
        going = start < lengths[rows]
        rows, start = rows[going], start[going]
    if not seen:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    return tuple(np.concatenate(parts) for parts in zip(*seen))


def _start_accepted(analysis: Analysis, d: DraftRows, match: np.ndarray) -> np.ndarray:
    if d.draft in analysis.runs:
        r = analysis.runs[d.draft]
        accepted = r.accepted[r.rows([str(p) for p in d.prompt_ids])]
        out = np.zeros(match.shape, dtype=np.int64)
        w = min(match.shape[1], accepted.shape[1])
        out[:, :w] = accepted[:, :w]
        return out
    return trace.run_lengths(match)[:, : match.shape[1]]


class DraftSums:
    """One draft's per-prompt bucket sums, each part computed once: the tokens' (per axis) and the blocks'
    (per k, one walk serving both axes). Each set of rows gets its bucket index once and two bincounts."""

    def __init__(self, analysis: Analysis, d: DraftRows, offsets: dict[str, np.ndarray]):
        self.analysis, self.d, self.offsets = analysis, d, offsets
        self.walks: dict[int, tuple[np.ndarray, ...]] = {}
        self.tokens: dict[str, np.ndarray] = {}
        self.start_accepted: np.ndarray | None = None
        self.values: np.ndarray | None = None  # each token's match (accept_prob at T > 0), in `d.rows` order

    def _cells(self, axis: str, rows: np.ndarray, at: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """[n_prompts, 2·B]: per prompt and bucket Σ weights, then the count of rows."""
        edges = AXES[axis][0]
        n, n_b = len(self.d.prompt_ids), len(edges)
        offsets = self.offsets[axis]
        where = offsets[rows] + at if offsets.any() else at
        cell = rows * n_b  # prompt row × bucket: the bucket is the number of lower edges past the first reached
        for edge in edges[1:]:
            cell += where >= edge
        return np.hstack([np.bincount(cell, weights, minlength=n * n_b).reshape(n, n_b),
                          np.bincount(cell, minlength=n * n_b).reshape(n, n_b)])

    def sums(self, axis: str, k: int) -> np.ndarray:
        """[n_prompts, 4·B]: per prompt and bucket Σ accept_prob, tokens, Σ emitted, blocks (blocks at T = 0 only).
        A token at position t sits at offsets[p] + t (offsets: the prompt lengths, or 0 for positions)."""
        a, d = self.analysis, self.d
        assert a.tokens is not None  # load_analysis keeps the token records
        if axis not in self.tokens:
            if self.values is None:
                self.values = to_numpy(a.tokens.column("match" if a.exact else "accept_prob"), np.float64)[d.rows]
            self.tokens[axis] = self._cells(axis, d.prompt, d.position, self.values)
        n_b = len(AXES[axis][0])
        blocks = np.full((len(d.prompt_ids), 2 * n_b), 0.0)
        if a.exact:
            if k not in self.walks:
                if self.start_accepted is None:
                    match = d.grid(to_numpy(a.tokens.column("match"), np.float64))
                    self.start_accepted = _start_accepted(a, d, match)
                self.walks[k] = block_walk(self.start_accepted, d.n_tokens, k)
            rows, start, _, emitted = self.walks[k]
            blocks = self._cells(axis, rows, start, emitted.astype(np.float64))
        return np.hstack([self.tokens[axis], blocks])


def context_buckets(analysis: Analysis, estimates: Sequence[Estimate], k: int | None = None) -> list[Buckets]:
    """`Buckets` along both axes for each estimate (draft × domain, ALL included), at its best k or `k`.
    Without prompts.parquet only the position axis is given."""
    by_draft = {d.draft: d for d in analysis.index}
    wanted: dict[str, dict[int, None]] = {}  # draft → the ks its estimates ask for, first asked first
    for e in estimates:
        wanted.setdefault(e.draft, {})[e.best_k if k is None else k] = None
    # prompts.parquet is read in the background (Arrow decodes without the GIL) while positions are summed,
    # once for drafts profiled on the same prompts
    prompt_set = {draft: tuple(by_draft[draft].prompt_ids.tolist()) for draft in wanted}
    reads: dict[tuple[str, ...], Any] = {}
    for draft, key in prompt_set.items():
        if key not in reads:
            reads[key] = in_background(prompt_lengths, analysis, by_draft[draft].prompt_ids)
    groups = {draft: domain_groups(analysis.trace(draft), ()) for draft in wanted}
    found: dict[tuple[str, str, int], tuple[np.ndarray, dict[str, np.ndarray]]] = {}  # per prompt, resampled
    for draft, ks in wanted.items():
        d = by_draft[draft]
        sums = DraftSums(analysis, d, {"position": np.zeros(len(d.prompt_ids), dtype=np.int64)})
        parts = {("position", kk): sums.sums("position", kk) for kk in ks}
        length = settled(reads[prompt_set[draft]])
        if length is not None:
            sums.offsets["context"] = length
            parts.update({("context", kk): sums.sums("context", kk) for kk in ks})
        # one bootstrap for all of the draft's columns (the matrix products are the cost, not the columns)
        values = np.hstack(list(parts.values()))
        resampled = stats.stratified_sums(values, groups[draft], ALL)
        edges = np.cumsum([0, *(p.shape[1] for p in parts.values())])
        for (axis, kk), lo, hi in zip(parts, edges[:-1], edges[1:]):
            found[(draft, axis, kk)] = values[:, lo:hi], {name: r[:, lo:hi] for name, r in resampled.items()}
    jobs = []  # (draft, domain, k, axis, ratios) for every bucket set asked for
    for e in estimates:
        kk = e.best_k if k is None else k
        mask = next(m for name, m in groups[e.draft] if name == e.domain)
        for axis in ("context", "position"):
            if (e.draft, axis, kk) in found:
                values, resampled = found[(e.draft, axis, kk)]
                ratios = _ratios(len(AXES[axis][0]), values[mask], resampled[e.domain])
                jobs.append((e.draft, e.domain, kk, axis, ratios))
    if not jobs:
        return []
    # every bucket's α and tokens/iter interval from one quantile call (each column's figures are its own)
    lo, hi = _interval(np.hstack([np.hstack([r.alpha_s, r.tpi_s]) for *_, r in jobs]),
                       np.concatenate([np.concatenate([r.alpha, r.tpi]) for *_, r in jobs]))
    out: list[Buckets] = []
    at = 0
    for draft, domain, kk, axis, r in jobs:
        n_b = len(r.alpha)
        bounds = lo[at: at + 2 * n_b], hi[at: at + 2 * n_b]
        at += 2 * n_b
        out.append(_figures(draft, domain, kk, axis, AXES[axis][1], r, bounds, analysis.exact))
    return out


@dataclass(frozen=True)
class _Ratios:
    """One bucket set's figures: point and resampled α and tokens/iter per bucket."""

    point: np.ndarray  # [4·B] the sums `DraftSums.sums` gives
    n_prompts: np.ndarray  # [B] prompts with a token in each bucket
    alpha: np.ndarray  # [B]
    tpi: np.ndarray
    alpha_s: np.ndarray  # [resamples, B]
    tpi_s: np.ndarray


def _ratios(n_b: int, values: np.ndarray, resampled: np.ndarray) -> _Ratios:
    point = values.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _Ratios(point, (values[:, n_b: 2 * n_b] > 0).sum(axis=0),
                       point[:n_b] / point[n_b: 2 * n_b], point[2 * n_b: 3 * n_b] / point[3 * n_b:],
                       resampled[:, :n_b] / resampled[:, n_b: 2 * n_b],
                       resampled[:, 2 * n_b: 3 * n_b] / resampled[:, 3 * n_b:])


def _figures(draft: str, domain: str, k: int, axis: str, labels: Sequence[str], r: _Ratios,
             bounds: tuple[np.ndarray, np.ndarray], exact: bool) -> Buckets:
    """`Buckets` from the ratios and their intervals (`bounds`: lo and hi of α's buckets, then tokens/iter's)."""
    n_b = len(labels)
    a_lo, t_lo = bounds[0][:n_b], bounds[0][n_b:]
    a_hi, t_hi = bounds[1][:n_b], bounds[1][n_b:]
    tpi = r.tpi
    if not exact:
        tpi = t_lo = t_hi = np.full(n_b, np.nan)
    fall = _fall("tokens/iter", tpi, r.tpi_s, r.n_prompts) if exact else _fall("α", r.alpha, r.alpha_s, r.n_prompts)
    return Buckets(draft, domain, k, axis, tuple(labels), r.n_prompts, r.point[n_b: 2 * n_b].astype(np.int64),
                   r.alpha, a_lo, a_hi, tpi, t_lo, t_hi, fall)


def _interval(samples: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`stats.percentile_interval` of the buckets that hold something; nan bounds for the empty ones."""
    lo, hi = np.full(len(point), np.nan), np.full(len(point), np.nan)
    full = np.flatnonzero(np.isfinite(point))
    if len(full):
        with warnings.catch_warnings():  # a resample may miss every prompt of a bucket: nan there
            warnings.simplefilter("ignore", RuntimeWarning)
            lo[full], hi[full] = stats.percentile_interval(samples[:, full], point[full])
    return lo, hi


def _fall(figure: str, point: np.ndarray, samples: np.ndarray, n_prompts: np.ndarray) -> Fall | None:
    """The largest fall from the first bucket with enough prompts whose 95% interval excludes 0."""
    usable = np.flatnonzero((n_prompts >= stats.MIN_PROMPTS) & np.isfinite(point))
    if len(usable) < 2:
        return None
    first, later = int(usable[0]), usable[1:]
    diff = samples[:, later] - samples[:, [first]]  # [resamples, later buckets]
    if np.isfinite(diff).all():  # every interval in one call
        los, his = stats.percentile_interval(diff, point[later] - point[first])
    else:  # a resample that missed a bucket's prompts is left out of that bucket's interval
        los, his = np.transpose([stats.percentile_interval(d[np.isfinite(d)], np.asarray(point[b] - point[first]))
                                 for d, b in zip(diff.T, later.tolist())])
    best = None
    for b, lo, hi in zip(later.tolist(), los.tolist(), his.tolist()):
        if hi < 0 and (best is None or point[b] < best.later_value):
            best = Fall(figure, first, b, float(point[first]), float(point[b]), lo, hi)
    return best


def fall_line(b: Buckets) -> str:
    f = b.fall
    assert f is not None
    what = f"{f.figure} at k={b.k}" if f.figure == "tokens/iter" else "α"
    unit = " tokens" if b.axis == "context" else ""
    where = "context" if b.axis == "context" else "position in the continuation"
    return (f"{b.draft}  {b.domain}: {what} falls with {where} from {f.first_value:.2f} at {b.labels[f.first]}"
            f"{unit} to {f.later_value:.2f} at {b.labels[f.later]}{unit} (95% interval of the change "
            f"{f.diff_lo:+.2f} to {f.diff_hi:+.2f})")


def summary_lines(buckets: Sequence[Buckets]) -> list[str]:
    """What recommend prints: each draft × domain whose acceptance falls with context or position, or that none does."""
    falls = [fall_line(b) for b in buckets if b.fall is not None]
    if falls:
        return falls
    axes = sorted({b.axis for b in buckets})
    where = " or ".join("context length" if a == "context" else "position in the continuation" for a in axes)
    return [f"acceptance does not fall with {where} beyond its 95% interval in any draft × domain "
            f"(buckets with {stats.MIN_PROMPTS}+ prompts)"]


def buckets_json(buckets: Sequence[Buckets]) -> list[dict[str, Any]]:
    out = []
    for b in buckets:
        rows = [{"bucket": label, "n_prompts": int(b.n_prompts[i]), "n_tokens": int(b.n_tokens[i]),
                 "alpha": json_number(b.alpha[i]), "alpha_lo": json_number(b.alpha_lo[i]),
                 "alpha_hi": json_number(b.alpha_hi[i]), "tokens_per_iter": json_number(b.tokens_per_iter[i]),
                 "tokens_per_iter_lo": json_number(b.tokens_per_iter_lo[i]),
                 "tokens_per_iter_hi": json_number(b.tokens_per_iter_hi[i])}
                for i, label in enumerate(b.labels)]
        fall = None
        if b.fall is not None:
            f = b.fall
            fall = {"figure": f.figure, "from": b.labels[f.first], "to": b.labels[f.later],
                    "from_value": f.first_value, "to_value": f.later_value, "diff_lo": f.diff_lo,
                    "diff_hi": f.diff_hi}
        out.append({"draft": b.draft, "domain": b.domain, "k": b.k, "axis": b.axis, "buckets": rows, "falls": fall})
    return out
