"""`recommend` as one call: a report in, the whole answer out as typed records (`Recommendation`, `Emission`).

`recommend(report, ...)` is what `specprof recommend REPORT` computes and what a notebook calls
(`from specprof import load_report, recommend`): per draft × domain (ALL included) the estimate at
every k with its verdict, the best confidence-threshold policy beside it, the figures per serving
batch size when they are priced, and an engine's own counters when one is named (on a sampled
report, vLLM's expected counters for one `draft_sampling` mode: `SampledEngineFigures`); per draft the
plan (which domains to enable, one shared k). `Recommendation.to_json()` is the `--json` document,
key for key. `emit(report, engine, ...)` is `recommend --emit`: the configuration to paste and the
notes to print beside it.

A later section is one more optional field on `Entry` or `Recommendation` plus its keys in
`to_json`; the computations stay in `decide`, `engineplan`, `batchcost` and `policy_estimate`
(request by request: `perrequest` and `context`, asked with `per_request=True`; the synthetic
acceptance settings of `emit`: `synthetic`).

No torch, no pandas on this path (engine counters load pandas), nothing printed: the UI renders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specprof.core.answers import context as contexts
from specprof.core.answers import decide, engineplan, perrequest, sampled_plan, synthetic
from specprof.core.answers.analysis import Analysis, load_analysis
from specprof.core.answers.decide import DraftPlan
from specprof.core.flags import check_range
from specprof.core.pricing import batchcost, policy_estimate, stats
from specprof.core.pricing.estimate import Estimate
from specprof.core.records.reportfiles import Report
from specprof.core.simulation import conventions
from specprof.core.vocabulary import ALL, EMIT_TARGETS, GREEDY, SYNTHETIC_TARGETS, VLLM, engine_named
from specprof.errors import SpecprofError

SAMPLING_ONLY = "--draft-sampling goes with --engine vllm or --emit vllm on a sampled report (T > 0)"


@dataclass(frozen=True)
class EngineFigures:
    """What an engine's own metrics will say for one entry, at `k` (the entry's best k, or --k)."""

    engine: str
    k: int
    counters: conventions.EngineCounters

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "engine_k": self.k, **engineplan.counters_json(self.counters)}


@dataclass(frozen=True)
class SampledEngineFigures:
    """On a sampled report (T > 0): what vLLM's metrics will say in expectation for one entry, at `k`."""

    engine: str
    k: int
    counters: sampled_plan.SampledCounters  # for one draft_sample_method (`counters.mode`), with intervals

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "engine_k": self.k, **sampled_plan.sampled_json(self.counters)}


@dataclass(frozen=True)
class Entry:
    """One draft × domain of the answer: its estimate and the optional sections asked for."""

    estimate: Estimate  # every k, with intervals and the verdict at the best k
    policy: policy_estimate.PolicyEstimate | None = None  # best confidence-threshold policy (T = 0, model drafts)
    batch: batchcost.BatchPlan | None = None  # per serving batch size (when batch sizes are priced)
    engine: EngineFigures | None = None  # --engine
    sampled: SampledEngineFigures | None = None  # --engine vllm on a sampled report

    def to_json(self) -> dict[str, Any]:
        p = self.policy
        out = {**decide.recommendation_json(self.estimate),
               "threshold_policy": policy_estimate.policy_json(p) if p else None}
        if self.batch is not None:
            out.update(batchcost.batch_json(self.batch))
        if self.engine is not None:
            out.update(self.engine.to_json())
        if self.sampled is not None:
            out.update(self.sampled.to_json())
        return out


@dataclass(frozen=True)
class Recommendation:
    """`recommend REPORT`'s answer: per draft × domain entries, per draft plans, and how they were priced."""

    report: Path  # the report directory
    min_speedup: float
    exact: bool  # T = 0: exact blocks; T > 0: the chain estimate
    entries: tuple[Entry, ...]  # draft × domain, report order, ALL after each draft's domains
    plans: tuple[DraftPlan, ...]  # one per draft
    threshold_policy: dict[str, Any]  # the policy grid searched and which figures are exact (JSON as is)
    no_policy: dict[str, str]  # drafts without a confidence to threshold → why
    costs: Path | None = None  # --costs: the file whose forward times priced the report
    batch_sizes: tuple[int, ...] | None = None  # the serving batch sizes priced; None: one stream only
    engine: str | None = None  # --engine
    engine_k: int | None = None  # --k with --engine (None: each entry's best k)
    # --engine vllm on a sampled report: the draft_sample_method predicted. Its document is the estimates
    # with vLLM's expected counters only (no plans, policies or batch sizes).
    draft_sampling: str | None = None
    # --per-request: each draft × domain's spread over requests, and acceptance by context and position
    per_request: tuple[perrequest.PerRequest, ...] | None = None
    context: tuple[contexts.Buckets, ...] | None = None

    @property
    def estimates(self) -> list[Estimate]:
        return [e.estimate for e in self.entries]

    @property
    def policies(self) -> list[policy_estimate.PolicyEstimate]:
        return [e.policy for e in self.entries if e.policy is not None]

    @property
    def batch_plans(self) -> list[batchcost.BatchPlan]:
        return [e.batch for e in self.entries if e.batch is not None]

    def to_json(self) -> dict[str, Any]:
        """The `recommend --json` document."""
        if self.draft_sampling is not None:
            return {"report": str(self.report), "min_speedup": self.min_speedup, "exact": self.exact,
                    "draft_sampling": self.draft_sampling, "recommendations": [e.to_json() for e in self.entries]}
        return {
            "report": str(self.report),
            "min_speedup": self.min_speedup,
            "exact": self.exact,
            "recommendations": [e.to_json() for e in self.entries],
            "drafts": [decide.plan_json(p) for p in self.plans],
            "threshold_policy": self.threshold_policy,
            **({"costs": str(self.costs)} if self.costs is not None else {}),
            **({"batch_sizes": list(self.batch_sizes), "batch_cost_model": batchcost.IGNORES}
               if self.batch_sizes is not None else {}),
            **({"per_request": perrequest.per_request_json(self.per_request),
                "per_request_note": perrequest.per_request_note()} if self.per_request is not None else {}),
            **({"context": contexts.buckets_json(self.context)} if self.context is not None else {}),
        }


def recommend(
    report: str | Path | Report,
    *,
    cost_ratio: float | None = None,
    min_speedup: float = stats.MIN_SPEEDUP,
    draft: str | Sequence[str] = (),
    domain: str | Sequence[str] = (),
    k_max: int | None = None,
    concurrency: Sequence[int | str] = (),
    costs: str | Path | None = None,
    engine: str | None = None,
    k: int | None = None,
    draft_sampling: str | None = None,
    per_request: bool = False,
) -> Recommendation:
    """`specprof recommend REPORT` with the same flags (`draft`/`domain`: one name or several; `per_request`:
    the request-by-request figures, which the text output always ends with).

    `draft_sampling` (GREEDY, PROBABILISTIC; default GREEDY): with `engine="vllm"` on a sampled report, the
    vLLM draft_sample_method whose expected counters each entry gets (`Entry.sampled`)."""
    drafts, domains = _names(draft), _names(domain)
    check_range("--min-speedup", min_speedup, 0, lo_open=True)
    _check_engine(engine)
    engine = engine_named(engine) if engine is not None else None  # hf is transformers
    if k is not None and engine is None:
        raise SpecprofError("--k goes with --engine or --emit (recommend picks each domain's best k)")
    requested = _batch_sizes(cost_ratio, concurrency, costs)
    costs_path = Path(costs) if costs is not None else None
    analysis = with_costs(load_analysis(report, drafts, domains, k_max, policies=True), costs_path)
    if engine == VLLM and not analysis.exact:
        return _sampled(analysis, cost_ratio, domains, min_speedup, k, draft_sampling or GREEDY, per_request)
    if draft_sampling is not None:
        raise SpecprofError(SAMPLING_ONLY)
    by_batch = cost_ratio is None and (bool(requested) or bool(analysis.timings and analysis.timings.by_batch_size))
    sizes = batchcost.choose_batch_sizes(analysis.timings, requested) if by_batch else ()
    estimates = decide.estimates(analysis, cost_ratio, domains, min_speedup)
    batch_plans = batchcost.batch_plans(estimates, analysis.timings, sizes) if by_batch else [None] * len(estimates)
    cache = engineplan.CounterCache(analysis, engine) if engine is not None else None
    counters = engineplan.engine_entries(analysis, estimates, engine, k, cache) if engine is not None else None
    # the figures that do not need the threshold policies first: their walk runs meanwhile (`load_analysis`)
    per_requests = tuple(perrequest.by_request(analysis, estimates, k, cache)) if per_request else None
    context = tuple(contexts.context_buckets(analysis, estimates, k)) if per_request else None
    policies = {(p.draft, p.domain): p for p in decide.policy_estimates(analysis, estimates, cost_ratio)}
    entries = tuple(
        Entry(e, policies.get((e.draft, e.domain)), bp,
              EngineFigures(engine, counters[i][0], counters[i][1]) if engine is not None and counters else None)
        for i, (e, bp) in enumerate(zip(estimates, batch_plans))
    )
    return Recommendation(
        report=analysis.path, min_speedup=min_speedup, exact=analysis.exact, entries=entries,
        plans=tuple(decide.plans(estimates)), threshold_policy=decide.policy_grid_json(analysis),
        no_policy=analysis.no_policy, costs=costs_path, batch_sizes=tuple(sizes) if by_batch else None,
        engine=engine, engine_k=k,
        per_request=per_requests, context=context,
    )


def _sampled(analysis: Analysis, cost_ratio: float | None, domains: Sequence[str], min_speedup: float,
             k: int | None, mode: str, per_request: bool) -> Recommendation:
    """`--engine vllm` on a sampled report: each estimate with vLLM's expected counters for `mode` (the
    per-request spreads along the target's own samples, without engine counters)."""
    estimates = decide.estimates(analysis, cost_ratio, domains, min_speedup)
    sampled = sampled_plan.sampled_entries(analysis, estimates, mode, k)
    return Recommendation(
        report=analysis.path, min_speedup=min_speedup, exact=analysis.exact,
        entries=tuple(Entry(e, sampled=SampledEngineFigures(VLLM, ek, c)) for e, (ek, c) in zip(estimates, sampled)),
        plans=tuple(decide.plans(estimates)), threshold_policy=decide.policy_grid_json(analysis),
        no_policy=analysis.no_policy, engine=VLLM, engine_k=k, draft_sampling=mode,
        per_request=tuple(perrequest.by_request(analysis, estimates, k)) if per_request else None,
        context=tuple(contexts.context_buckets(analysis, estimates, k)) if per_request else None,
    )


@dataclass(frozen=True)
class Emission:
    """`recommend --emit`'s answer: the engine's configuration for the chosen draft and k, or why none."""

    engine: str  # the engine the configuration is for (vllm, sglang, or a synthetic-acceptance target)
    choice: engineplan.Choice  # what to turn on (`choice.none` says why nothing, when `config` is None)
    config: str | None  # vLLM's --speculative-config JSON, SGLang's flags, or the synthetic acceptance setting
    notes: tuple[str, ...]  # what to know beside it (the UI prints them on stderr)
    draft_sample_method: str | None = None  # vLLM at T > 0, a model draft: the mode written into `config`

    @property
    def text(self) -> str:
        """What `--emit` prints on stdout: the configuration, or why no domain should enable speculation."""
        return self.config if self.config is not None else self.choice.none


def emit(
    report: str | Path | Report,
    engine: str,
    *,
    cost_ratio: float | None = None,
    min_speedup: float = stats.MIN_SPEEDUP,
    draft: str | Sequence[str] = (),
    domain: str | Sequence[str] = (),
    k_max: int | None = None,
    k: int | None = None,
    concurrency: Sequence[int | str] = (),
    costs: str | Path | None = None,
    draft_sampling: str | None = None,
) -> Emission:
    """`specprof recommend REPORT --emit ENGINE`: with one `draft` and `k` the config is given even if not GO.

    On a sampled report `--emit vllm` writes `draft_sample_method` for a model draft: `draft_sampling`, else
    the mode with the longer expected mean acceptance length (a note compares both). `vllm-synthetic`,
    `sglang-synthetic`, `trtllm-synthetic`: the engine's synthetic acceptance set to the report's acceptance at
    that draft and k (`synthetic`), over the --domain mix (default the whole corpus)."""
    drafts, domains = _names(draft), _names(domain)
    check_range("--min-speedup", min_speedup, 0, lo_open=True)
    if engine not in EMIT_TARGETS + SYNTHETIC_TARGETS:
        *names, last = EMIT_TARGETS + SYNTHETIC_TARGETS
        raise SpecprofError(f"--emit {engine}: unknown engine (use {', '.join(names)} or {last})")
    batch_sizes = _batch_sizes(cost_ratio, concurrency, costs)
    analysis = with_costs(load_analysis(report, drafts, domains, k_max), Path(costs) if costs is not None else None)
    if draft_sampling is not None and (engine != VLLM or analysis.exact):
        raise SpecprofError(SAMPLING_ONLY)
    estimates = decide.estimates(analysis, cost_ratio, domains, min_speedup)
    choice = engineplan.choose(analysis, estimates, decide.plans(estimates), domains, k, forced=len(drafts) == 1)
    if choice.draft is None:
        return Emission(engine, choice, None, ())
    target = str((analysis.run.get("target") or {}).get("name", "TARGET"))
    if engine in SYNTHETIC_TARGETS:
        if batch_sizes:
            raise SpecprofError("--concurrency with a synthetic --emit: the acceptance does not depend on the batch")
        text, notes = synthetic.emission(engine, analysis, choice, domains, target)
        return Emission(engine, choice, text, tuple(notes))
    assert engine in EMIT_TARGETS  # checked above (narrows the type)
    notes = tuple(engineplan.notes(choice, target, engine))
    schedule = None
    if batch_sizes:
        if engine != VLLM:
            raise SpecprofError("--concurrency with --emit: only vLLM takes a batch-size schedule (--emit vllm)")
        # The schedule of the chosen draft on the chosen domain, or on the corpus mix (ALL).
        where = domains[0] if len(domains) == 1 else ALL
        estimate = next(e for e in estimates if e.draft == choice.draft and e.domain == where)
        sizes = batchcost.choose_batch_sizes(analysis.timings, batch_sizes)
        schedule = batchcost.vllm_schedule(batchcost.batch_plans([estimate], analysis.timings, sizes)[0].points)
    config = engineplan.emit_config(choice, target, engine, schedule)
    if engine == VLLM and not analysis.exact:  # sampled: the draft_sample_method that accepts more
        config, note, method = sampled_plan.with_draft_sampling(config, analysis, choice, domains, draft_sampling)
        return Emission(engine, choice, config, notes + ((note,) if note else ()), method)
    return Emission(engine, choice, config, notes)


def with_costs(analysis: Analysis, costs_path: Path | None) -> Analysis:
    """The analysis priced with a costs file's forward times instead of the report's own (--costs)."""
    if costs_path is None:
        return analysis
    return dataclasses.replace(analysis, timings=batchcost.load_costs(
        costs_path, analysis.run, [t.draft for t in analysis.traces], max(t.blocks.k_max for t in analysis.traces)))


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """One name or several (a notebook passes `draft="ngram"`; the CLI a list)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _check_engine(engine: str | None) -> None:
    if engine is not None and engine_named(engine) is None:
        raise SpecprofError(f"--engine {engine}: unknown engine (use vllm, or transformers for specprof's own)")


def _batch_sizes(cost_ratio: float | None, concurrency: Sequence[int | str], costs: str | Path | None
                 ) -> tuple[int, ...]:
    """The requested serving batch sizes, refused beside --cost-ratio (one stream, flat verification)."""
    if cost_ratio is not None:
        check_range("--cost-ratio", cost_ratio, 0)
    requested = batchcost.parse_batch_sizes(concurrency)
    if cost_ratio is not None and (requested or costs is not None):
        raise SpecprofError(f"--cost-ratio plans one stream with a flat verification cost; "
                            f"{'--concurrency' if requested else '--costs'} prices measured times: choose one")
    return requested
