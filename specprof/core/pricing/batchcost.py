"""The speedup at the load the user serves: costs per serving batch size, decisions per batch size.

A report prices every k with forward times measured at batch 1 (one stream). An engine serving b
requests verifies them together, so the costs become t_T(n; b), t_D(b) and t_C(b), the times of
one batched pass (`costmodel.speedup_at_batch`). `profile --concurrency` and `specprof costs`
measure them for a grid of batch sizes (`engines/hf/measure.py`) and store them beside the batch-1
figures in run.json["timings"]["by_batch_size"] (a costs file holds the same "timings" object).
A report without them (every report before them) is batch 1 only.

Here, from an `Estimate` (acceptance, intervals) and those timings: the best k, the speedup with
its interval and the decision at each batch size (`BatchPlan`), the crossover batch size beyond
which speculation stops paying, and vLLM's `num_speculative_tokens_per_batch_size` rows
(`vllm_schedule`). The acceptance part is the same at every batch size: only the costs change.

What this module does not do: measure times (engines), print, or model anything the batch cost
formula ignores (mixed prefill and decode steps, requests of different lengths, the scheduler).
No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from specprof.core.jsonvalues import json_number
from specprof.core.pricing import costmodel
from specprof.core.pricing.estimate import Estimate
from specprof.core.pricing.stats import Decision
from specprof.core.pricing.timings import Timings, costs_for
from specprof.core.records import reportfiles
from specprof.errors import SpecprofError

COSTS_JSON = "costs.json"  # what `specprof costs --out DIR` writes
COSTS_KIND = "costs"  # run.json-like record of timings only: run["kind"]

# What the batch cost model leaves out (costmodel.speedup_at_batch says it in full).
IGNORED = "steps that mix prefill and decoding, requests of different lengths in one batch, and the engine's scheduler"
IGNORES = f"the batch cost model ignores {IGNORED}"


def parse_batch_sizes(values: Sequence[str | int], flag: str = "--concurrency") -> tuple[int, ...]:
    """`["1,4", "16"]` → (1, 4, 16): sorted, without repeats, each ≥ 1."""
    sizes = set()
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                b = int(part)
            except ValueError:
                raise SpecprofError(f"{flag} {value}: batch sizes are whole numbers, e.g. 1,4,16") from None
            if b < 1:
                raise SpecprofError(f"{flag} {value}: batch sizes must be ≥ 1")
            sizes.add(b)
    if values and not sizes:
        raise SpecprofError(f"{flag}: give batch sizes, e.g. 1,4,16")
    return tuple(sorted(sizes))


def measured_batch_sizes(timings: Timings | None) -> tuple[int, ...]:
    """The batch sizes `timings` cover: (1,) for a report timed at batch 1 only, () without timings."""
    if timings is None:
        return ()
    return tuple(sorted({1, *(t.batch_size for t in timings.by_batch_size)}))


def timings_at(timings: Timings, batch_size: int) -> Timings:
    """The figures at `batch_size`; batch 1 is always the top-level figures (priced as before)."""
    if batch_size == 1:
        return timings
    for t in timings.by_batch_size:
        if t.batch_size == batch_size:
            return t
    sizes = ", ".join(map(str, measured_batch_sizes(timings)))
    raise SpecprofError(
        f"--concurrency {batch_size}: the costs were measured at batch size {sizes} only "
        f"(measure it: specprof costs --concurrency {sizes},{batch_size} --out costs.json, then --costs costs.json)"
    )


def choose_batch_sizes(timings: Timings | None, requested: Sequence[int]) -> tuple[int, ...]:
    """`requested` (each one measured), or every measured size when none is requested."""
    if timings is None:
        raise SpecprofError("--concurrency: the report has no measured timings to price batch sizes with")
    if not requested:
        return measured_batch_sizes(timings)
    for b in requested:
        timings_at(timings, b)
    return tuple(requested)


@dataclass(frozen=True)
class BatchPoint:
    """One draft × domain at one batch size, at that batch size's best k."""

    batch_size: int
    best_k: int
    speedup: float
    speedup_lo: float  # 95% bootstrap interval over prompts (acceptance only: the times are taken as exact)
    speedup_hi: float
    decision: Decision


@dataclass(frozen=True)
class Crossover:
    """The batch size beyond which speculation stops paying, and the same from the interval's ends.

    None: `batch_size` when it pays at every measured size or at none; `lo` (from the speedup's lower
    bound) when that is below 1 at every size, i.e. at or below the smallest one; `hi` (from the upper
    bound) when that pays at the largest measured size, i.e. beyond it.
    """

    batch_size: float | None
    lo: float | None
    hi: float | None


@dataclass(frozen=True)
class BatchPlan:
    draft: str
    domain: str
    points: tuple[BatchPoint, ...]  # one per batch size, ascending
    crossover: Crossover


def at_batch(e: Estimate, costs: costmodel.Costs) -> Estimate:
    """`e` priced with the costs of another batch size: the same blocks (f_k, proposals), other times."""
    blocks = replace(costs, full_fraction=e.costs.full_fraction, proposed_fraction=e.costs.proposed_fraction)
    return replace(e, costs=blocks)


def crossover(batch_sizes: Sequence[int], speedups: Sequence[float]) -> float | None:
    """Where the speedup crosses 1 for the last time as the batch grows, interpolated linearly in b.

    Between the last measured size b₀ where S ≥ 1 and the next one b₁ (S < 1):
    b* = b₀ + (S₀ − 1) / (S₀ − S₁) · (b₁ − b₀). None when S ≥ 1 at the largest size or at no size.
    Example: S = 1.5, 1.2, 0.8 at b = 1, 4, 16: b* = 4 + 0.2 / 0.4 · 12 = 10.
    """
    pays = [s >= 1.0 for s in speedups]  # NaN: does not pay
    if not any(pays) or pays[-1]:
        return None
    j = max(i for i, p in enumerate(pays) if p)
    b0, b1, s0, s1 = batch_sizes[j], batch_sizes[j + 1], float(speedups[j]), float(speedups[j + 1])
    if not math.isfinite(s1):
        return None
    return b0 + (s0 - 1.0) / (s0 - s1) * (b1 - b0)


def batch_plan(e: Estimate, timings: Timings, batch_sizes: Sequence[int]) -> BatchPlan:
    """The best k, speedup, interval and decision of `e` at each batch size, and the crossover.

    At batch 1 the figures are `e`'s own (priced with the top-level timings)."""
    points = []
    for b in batch_sizes:
        eb = e if b == 1 else at_batch(e, costs_for(e.draft, timings_at(timings, b), None, e.k_max))
        i = eb.at()
        points.append(BatchPoint(b, eb.best_k, float(eb.speedup[i]), float(eb.speedup_lo[i]),
                                 float(eb.speedup_hi[i]), eb.verdict().decision))
    sizes = [p.batch_size for p in points]
    cross = Crossover(
        crossover(sizes, [p.speedup for p in points]),
        crossover(sizes, [p.speedup_lo for p in points]),
        crossover(sizes, [p.speedup_hi for p in points]),
    )
    return BatchPlan(e.draft, e.domain, tuple(points), cross)


def batch_plans(estimates: Sequence[Estimate], timings: Timings | None, batch_sizes: Sequence[int]) -> list[BatchPlan]:
    if timings is None:
        raise SpecprofError("--concurrency: the report has no measured timings to price batch sizes with")
    return [batch_plan(e, timings, batch_sizes) for e in estimates]


def batch_json(p: BatchPlan) -> dict[str, Any]:
    """The keys every `recommend --json` entry gains when batch sizes are priced."""
    return {
        "by_batch_size": [
            {"batch_size": x.batch_size, "best_k": x.best_k, "speedup": json_number(x.speedup),
             "speedup_lo": json_number(x.speedup_lo), "speedup_hi": json_number(x.speedup_hi),
             "decision": x.decision}
            for x in p.points
        ],
        "crossover_batch_size": json_number(p.crossover.batch_size),
        "crossover_batch_size_lo": json_number(p.crossover.lo),
        "crossover_batch_size_hi": json_number(p.crossover.hi),
    }


def vllm_schedule(points: Sequence[BatchPoint], max_batch_size: int | None = None) -> list[list[int]]:
    """vLLM's `num_speculative_tokens_per_batch_size` rows [[min_bs, max_bs, k], ...] from one plan.

    k at a measured batch size is its best k where the decision there is GO, else 0 (off). A batch
    size between two measured ones takes the larger one's k: the speedup falls as the batch grows,
    so the schedule never turns speculation on where it was not measured to pay. The rows cover
    1..the largest measured size; with `max_batch_size` above it (the engine's max_num_seqs), one
    more row turns speculation off there (not measured). Without it, vLLM applies the last row's
    k to every larger batch. Adjacent rows with the same k merge. vLLM clamps each k to
    num_speculative_tokens, which must be at least the largest k here.

    Example: GO at k = 4 (b = 1), GO at k = 3 (b = 4), INCONCLUSIVE (b = 16), NO-GO (b = 64), with
    max_batch_size 256: [[1, 1, 4], [2, 4, 3], [5, 256, 0]].
    """
    if not points:
        raise ValueError("no batch sizes to schedule")
    rows: list[list[int]] = []
    start = 1
    for p in sorted(points, key=lambda x: x.batch_size):
        k = p.best_k if p.decision == "GO" else 0
        if rows and rows[-1][2] == k:
            rows[-1][1] = p.batch_size
        else:
            rows.append([start, p.batch_size, k])
        start = p.batch_size + 1
    if max_batch_size is not None and max_batch_size >= start:
        if rows[-1][2] == 0:
            rows[-1][1] = max_batch_size
        else:
            rows.append([start, max_batch_size, 0])
    return rows


# --- costs files: timings measured apart from a profile (`specprof costs`) ----------------------------


def read_costs(path: str | Path) -> dict[str, Any]:
    """A costs file (or a report's run.json, or a directory holding either) as a run.json-like dict."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in (COSTS_JSON, reportfiles.RUN_JSON) if (path / name).exists()]
        if not found:
            raise SpecprofError(f"--costs {path}: no {COSTS_JSON} or {reportfiles.RUN_JSON} in it")
        path = found[0]
    elif not path.exists():
        raise SpecprofError(f"--costs {path}: no such file (write one with: specprof costs --out {path})")
    record = reportfiles.read_run(path)
    if not record.get("timings"):
        raise SpecprofError(f"--costs {path}: holds no measured timings")
    return record | {"path": str(path)}


def costs_for_report(record: dict[str, Any], run: dict[str, Any]) -> Timings:
    """The timings of a costs record, keyed by the report's draft names.

    The target must be the report's (same fingerprint); each draft of the report is found by name,
    or by fingerprint for a model draft loaded from another path. Drafts the record lacks are left
    out (pricing them is refused by name, with the fix).
    """
    where = f"--costs {record.get('path', '')}".rstrip()
    mine, theirs = record.get("target") or {}, run.get("target") or {}
    if mine.get("fingerprint") != theirs.get("fingerprint"):
        raise SpecprofError(
            f"{where}: measured for target {mine.get('name')} ({mine.get('fingerprint')}), the report profiled "
            f"{theirs.get('name')} ({theirs.get('fingerprint')}); measure with specprof costs --target for it"
        )
    t = Timings.from_dict(record["timings"])
    names = {}
    for d in run.get("drafts") or []:
        match = next((m for m in record.get("drafts") or [] if m.get("name") == d.get("name")), None)
        if match is None and d.get("fingerprint"):
            match = next((m for m in record.get("drafts") or []
                          if m.get("kind") == d.get("kind") and m.get("fingerprint") == d.get("fingerprint")), None)
        if match is not None and match["name"] in t.draft_step_s:
            names[match["name"]] = d["name"]

    def rename(x: Timings) -> Timings:
        return replace(x, draft_step_s={names[n]: s for n, s in x.draft_step_s.items() if n in names},
                       draft_catchup_s={names[n]: s for n, s in x.draft_catchup_s.items() if n in names})

    return replace(rename(t), by_batch_size=tuple(rename(b) for b in t.by_batch_size))


def check_costs_cover(timings: Timings, drafts: Sequence[str], where: str, k_max: int) -> None:
    """Refuse, naming the draft or the k, when a costs record cannot price the drafts at k = 1..k_max."""
    timed = len(timings.target_forward_s) - 1
    if timed < k_max:
        raise SpecprofError(
            f"{where}: timed draft lengths k ≤ {timed}, the report is priced at k = 1..{k_max} "
            f"(measure with specprof costs --k-max {k_max}, or pass --k-max {timed})"
        )
    for d in drafts:
        if d not in timings.draft_step_s:
            raise SpecprofError(
                f"{where}: no costs for draft {d!r} (measure it with specprof costs --draft {d}, "
                "or choose drafts with --draft)"
            )


def load_costs(path: str | Path, run: dict[str, Any], drafts: Sequence[str], k_max: int) -> Timings:
    """`--costs PATH` for a report with run.json `run`: the timings to price `drafts` at k = 1..k_max with."""
    record = read_costs(path)
    timings = costs_for_report(record, run)
    check_costs_cover(timings, drafts, f"--costs {path}", k_max)
    return timings
