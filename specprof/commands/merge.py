"""`specprof merge`: the shards' reports (`profile --shard i/n`) merged into the unsharded run's report.

A prompt belongs to shard 1 + (SHA-256 of its id mod n): the split depends on the ids alone, so
it is stable when the corpus is reordered or re-read, and any job runner can hand out `i/n`.
Each shard's run.json records `shard` = {index, count, corpus_fingerprint, n_prompts} of the
whole selected corpus, which is how `merge` knows the shards belong to one run.

`merge` refuses reports that are not shards of the same run (schema and specprof version, target,
drafts, device, dtype, settings, shard count and corpus), or a missing or repeated shard, naming the
difference. It concatenates the shards' tokens and prompts tables (whatever columns their schema
version has) in the order the unsharded run would have written them (its length-sorted batches,
drafts in run order), so the summary and blocks recomputed from them with `estimate` are the
unsharded run's, bootstrap intervals included. Timings: each shard measured its own; the merged
report prices with their mean (each time averaged over shards) and lists each shard's in
`merged_from`. `phases_s` holds the sums over shards (machine time, not wall time).

Equal to the unsharded report holds when no shard halved its batch size on running out of GPU
memory (which reorders rows inside a batch; the figures then differ only in the bootstrap's draws).
No torch here.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specprof.core.pricing.tables import summarize
from specprof.core.pricing.timings import Timings
from specprof.core.records import logs, reportfiles, schema, store
from specprof.core.records.shards import SAME
from specprof.core.simulation import blockdraft
from specprof.core.simulation.traces import trace_drafts
from specprof.errors import SpecprofError


def batch_order(lengths: dict[str, int], batch_size: int) -> list[list[str]]:
    """Prompt ids in the unsharded run's batches: `engines.text.make_batches`'s rule (longest first, equal sizes)."""
    order = sorted(lengths, key=lambda pid: (-lengths[pid], pid))
    n_batches = max(1, -(-len(order) // batch_size))
    size = -(-len(order) // n_batches)
    return [order[i : i + size] for i in range(0, len(order), size)]


def _load_shards(paths: Sequence[str | Path]) -> list[reportfiles.Report]:
    reports = [reportfiles.load_report(p) for p in paths]
    for r in reports:
        if not isinstance(r.run.get("shard"), dict):
            raise SpecprofError(f"{r.directory}: not a shard (profile it with --shard i/n)")
    first = reports[0]
    count = first.run["shard"]["count"]
    for r in reports[1:]:
        for key, words in {**SAME, "shard.count": "shard count", "shard.corpus_fingerprint": "corpus"}.items():
            a, b = (logs.lookup(x.run, key) for x in (first, r))
            if a != b:
                raise SpecprofError(f"{r.directory}: not a shard of the same run as {first.directory}: the {words} "
                                    f"differ ({store.describe_difference(a, b)})")
    seen: dict[int, Path] = {}
    for r in reports:
        i = r.run["shard"]["index"]
        if i in seen:
            raise SpecprofError(f"{r.directory}: shard {i}/{count} again (also {seen[i]})")
        seen[i] = r.directory
    missing = [i for i in range(1, count + 1) if i not in seen]
    if missing:
        raise SpecprofError(f"shard {missing[0]}/{count} is missing ({len(seen)} of {count} given); "
                            "merge all the shards of a run")
    return sorted(reports, key=lambda r: r.run["shard"]["index"])


def _mean_timings(reports: Sequence[reportfiles.Report]) -> Timings | None:
    shards = [Timings.from_dict(r.run["timings"]) for r in reports if r.run.get("timings")]  # empty shards: none
    if not shards:  # shards of a remote engine (`profile --engine vllm`) measure no forward times
        return None
    first = shards[0]
    return Timings(
        target_forward_s=tuple(statistics.fmean(t.target_forward_s[i] for t in shards)
                               for i in range(len(first.target_forward_s))),
        draft_step_s={d: statistics.fmean(t.draft_step_s[d] for t in shards) for d in first.draft_step_s},
        context_tokens=round(statistics.fmean(t.context_tokens for t in shards)),
        draft_catchup_s={d: statistics.fmean(t.draft_catchup_s.get(d, 0.0) for t in shards)
                         for d in first.draft_catchup_s},
    )


def _ordered(tables: Sequence[pa.Table], rank: dict[str, tuple[int, int]], drafts: dict[str, int]) -> pa.Table:
    """Concatenate and sort rows as the unsharded run wrote them: batch, then draft, then prompt, then position."""
    table = pa.concat_tables(tables)
    ids = table.column("prompt_id").to_pylist()
    batch = np.array([rank[i][0] for i in ids])
    within = np.array([rank[i][1] for i in ids])
    keys = [within, batch]
    if "draft" in table.column_names:
        keys = [table.column("position").to_numpy(), within,
                np.array([drafts[d] for d in table.column("draft").to_pylist()]), batch]
    return table.take(np.lexsort(keys))


def merge_reports(paths: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Merge the shard reports under `paths` into one report in `out`; returns its run.json."""
    # Long on purpose: one report's files written in dependency order (tables, then summary, run.json last).
    if not paths:
        raise SpecprofError("merge: give the shard reports to merge")
    reports = _load_shards(paths)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise SpecprofError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / reportfiles.RUN_JSON).unlink(missing_ok=True)  # an overwritten report is unfinished until the end
    base = reports[0].run
    prompts = [r.table("prompts") for r in reports]
    tokens = [pq.read_table(r.path("tokens")) for r in reports]  # every column the shards' version has
    for r, t in zip(reports, tokens):
        schema.check_version(t.schema.metadata, str(r.path("tokens")))

    lengths = {pid: len(ids) for p in prompts
               for pid, ids in zip(p.column("prompt_id").to_pylist(), p.column("prompt_tokens").to_pylist())}
    batches = batch_order(lengths, int(base["settings"]["batch_size"]))
    rank = {pid: (b, j) for b, ids in enumerate(batches) for j, pid in enumerate(ids)}
    drafts = {d["name"]: i for i, d in enumerate(base["drafts"])}
    merged_tokens = _ordered(tokens, rank, drafts)
    merged_prompts = _ordered(prompts, rank, drafts)

    # The block-dependent drafts' proposals and the target's tokens past each end, when the shards have them
    optional = {name: _ordered([pq.read_table(r.path(name)) for r in reports], rank, drafts)
                for name in schema.OPTIONAL_TABLES if all(r.path(name).exists() for r in reports)}
    timings = _mean_timings(reports)
    k_max = int(base["settings"]["k_max"])
    run = {key: value for key, value in base.items() if key != "shard"}
    run["corpus"] = {**base["corpus"], "n_prompts": base["shard"]["n_prompts"]}
    run["corpus_fingerprint"] = base["shard"]["corpus_fingerprint"]
    run["started_at"] = min(r.run["started_at"] for r in reports)
    run["finished_at"] = max(r.run["finished_at"] for r in reports)
    run["merged_at"] = store.now()
    run["completed_batches"] = list(range(len(batches)))
    run["completed_prompts"] = [pid for ids in batches for pid in ids]
    run["skipped_prompts"] = [pid for r in reports for pid in r.run.get("skipped_prompts", [])]
    run["final_batch_size"] = min(int(r.run.get("final_batch_size") or base["settings"]["batch_size"])
                                  for r in reports)
    run["timings"] = timings.as_dict() if timings is not None else None
    phases = [r.run.get("phases_s") or {} for r in reports]
    run["phases_s"] = {k: sum(p.get(k, 0.0) for p in phases) for k in dict.fromkeys(k for p in phases for k in p)}
    logged = [(r.run.get("logged_responses") or {}).get("prompts", {}) for r in reports]  # none in an empty shard
    if any(logged):
        rows = {pid: row for shard_rows in logged for pid, row in shard_rows.items()}
        rows = {pid: rows[pid] for pid in run["completed_prompts"] if pid in rows}
        run["logged_responses"] = {**logs.agreement_summary(rows), "prompts": rows}
    run["merged_from"] = [
        {"path": str(r.directory), "shard": f"{r.run['shard']['index']}/{r.run['shard']['count']}",
         "n_prompts": r.run["corpus"]["n_prompts"],
         "started_at": r.run["started_at"], "finished_at": r.run["finished_at"], "timings": r.run["timings"],
         "phases_s": r.run.get("phases_s")}
        for r in reports
    ]

    for name, table in (("tokens", merged_tokens), ("prompts", merged_prompts), *optional.items()):
        reportfiles.atomic_write(out / reportfiles.FILES[name],
                                 lambda f, t=table: pq.write_table(t, f, compression="zstd"))
    exact = float(base["settings"]["temperature"]) == 0
    # Block-dependent drafts are traced from the merged proposals, read back as any report's are.
    runs = blockdraft.load_runs(reportfiles.Report(out, run), list(drafts), k_max) if exact else {}
    traces = trace_drafts(merged_tokens.to_pandas(), k_max, exact=exact, runs=runs)
    summary, blocks = summarize(traces, timings, cost_ratio=0.0 if timings is None else None)  # as the shards'
    reportfiles.write_table(out / reportfiles.FILES["summary"], summary, "summary")
    reportfiles.write_table(out / reportfiles.FILES["blocks"], blocks, "blocks")
    reportfiles.write_json(out / reportfiles.RUN_JSON, run)  # last: a report is complete once run.json says so
    return run
