"""`recommend --engine` and `--emit`: a report's figures in an engine's language, and its config to paste.

`engine_json` adds to each recommendation (draft × domain, ALL included) the counters the engine
would report at that entry's best k (or at `--k`) under its conventions (`conventions`): vLLM's
num_drafts, num_draft_tokens, num_accepted_tokens and num_accepted_tokens_per_pos, and from
them the mean acceptance length, per-position acceptance rate and draft acceptance rate its log
line prints.

`choose` picks what to turn on (the draft, the domains and k): with --domain, that domain's
entry if its decision is GO; otherwise each draft's plan (the GO domains and the one k that
serves them best), the draft with the highest speedup winning. When nothing is GO but the user
named one draft and k (`--draft D --k K`), that choice is emitted anyway, marked not recommended
(`Choice.warning`, printed on stderr): the user chose, and may be testing the engine's config.
`vllm_config` / `sglang_flags` write it as vLLM's `--speculative-config` JSON (checked against vLLM 0.32.0's
config/speculative.py) and SGLang's flags, or `Choice.none` says why nothing should be enabled.

No torch here; nothing printed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specprof.core.answers.decide import Analysis, DraftPlan
from specprof.core.jsonvalues import json_number
from specprof.core.pricing.estimate import Estimate
from specprof.core.simulation import conventions, kinds
from specprof.core.vocabulary import ALL, MODEL, VLLM, EmitTarget, Engine
from specprof.errors import SpecprofError


class CounterCache:
    """Per draft, its records and per-prompt counters at each k (each computed once)."""

    def __init__(self, analysis: Analysis, engine: Engine):
        self.analysis = analysis
        self.engine: Engine = engine  # annotated: pyright widens an inferred Literal attribute to str
        self.records: dict[str, conventions.DraftRecords] = {}
        self.per_prompt: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def counters(self, draft: str, domain: str, k: int) -> conventions.EngineCounters:
        if draft not in self.records:
            self.records[draft] = conventions.load_records(self.analysis.path, draft)
        rec = self.records[draft]
        if (draft, k) not in self.per_prompt:
            self.per_prompt[(draft, k)] = conventions.prompt_counters(rec, k, self.engine)
        mask = None if domain == ALL else rec.domains == domain
        return conventions.counters_of(rec, k, self.engine, mask, self.per_prompt[(draft, k)])


def check_k(analysis: Analysis, k: int | None) -> None:
    if k is None:
        return
    k_max = min(t.blocks.k_max for t in analysis.traces)
    if not 1 <= k <= k_max:
        raise SpecprofError(f"--k {k}: the report covers k = 1..{k_max}")


def counters_json(c: conventions.EngineCounters) -> dict[str, Any]:
    return {
        "engine_counters": c.as_dict(),
        "mean_acceptance_length": json_number(c.mean_acceptance_length),
        "per_position_acceptance_rate": [json_number(r) for r in c.per_position_acceptance_rate],
        # vLLM's; draft_acceptance_rate stays ours
        "engine_draft_acceptance_rate": json_number(c.draft_acceptance_rate),
        "engine_counters_exact": c.exact,
        "engine_counters_note": c.note or None,
    }


def engine_entries(
    analysis: Analysis, estimates: Sequence[Estimate], engine: Engine, k: int | None = None
) -> list[tuple[int, conventions.EngineCounters]]:
    """(k, counters) for each estimate: at its best k, or at `k`."""
    if not analysis.exact:
        raise SpecprofError(
            f"--engine {engine}: engine counters are exact at temperature 0 only; this report was sampled "
            "(compare acceptance with `verify` instead)"
        )
    check_k(analysis, k)
    cache = CounterCache(analysis, engine)
    out = []
    for e in estimates:
        kk = e.best_k if k is None else k
        out.append((kk, cache.counters(e.draft, e.domain, kk)))
    return out


def engine_json(
    recommendations: list[dict[str, Any]], entries: Sequence[tuple[int, conventions.EngineCounters]], engine: Engine
) -> list[dict[str, Any]]:
    """`recommendations` (recommend --json entries, same order) with the engine's figures added."""
    return [{**r, "engine": engine, "engine_k": k, **counters_json(c)} for r, (k, c) in zip(recommendations, entries)]


# --- emit ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What to turn on: one draft at one k for some domains, or nothing (`none` says why)."""

    draft: str | None
    kind: str | None  # run.json's draft kind (`kinds.KINDS`)
    info: dict  # run.json's record of the draft
    k: int | None
    domains: tuple[str, ...]
    speedup: float | None
    none: str = ""  # why no domain should enable speculation ("" when something should)
    warning: str = ""  # emitted although not GO (the user named the draft and k): why it is not recommended


def choose(
    analysis: Analysis, estimates: Sequence[Estimate], plans: Sequence[DraftPlan], domains: Sequence[str] = (),
    k: int | None = None, forced: bool = False,
) -> Choice:
    """The draft, k and domains to enable (see the module docstring); `forced`: the user named one draft."""
    check_k(analysis, k)
    infos = {d.get("name"): d for d in analysis.run.get("drafts") or []}
    options: list[tuple[float, str, int, tuple[str, ...]]] = []
    if domains:
        for e in estimates:
            if e.domain in domains and e.verdict().decision == "GO":
                kk = e.best_k if k is None else k
                options.append((float(e.speedup[kk - 1]), e.draft, kk, (e.domain,)))
    else:
        for p in plans:
            if p.enable and p.shared_k is not None:
                kk = p.shared_k if k is None else k
                speedup = p.shared_speedup if k is None else _plan_speedup(estimates, p, kk)
                assert speedup is not None  # set with shared_k
                options.append((float(speedup), p.draft, kk, p.enable))
    if not options:
        where = f"domain {', '.join(domains)}" if domains else "no domain"
        decided = ", ".join(sorted({f"{e.draft}: {e.domain} {e.verdict().decision}" for e in estimates
                                    if e.domain != ALL or domains}))
        none = f"{where} should enable speculation: no draft is GO there ({decided})"
        named = _named_choice(estimates, infos, domains, k, none) if forced else None
        return named or Choice(None, None, {}, None, (), None, none)
    speedup, draft, kk, chosen = max(options, key=lambda o: o[0])
    info = infos.get(draft, {"name": draft, "kind": MODEL})
    return Choice(draft, info.get("kind", MODEL), info, kk, chosen, speedup)


def _named_choice(estimates: Sequence[Estimate], infos: dict, domains: Sequence[str], k: int | None,
                  none: str) -> Choice | None:
    """The one draft the user named at their --k, on their one domain (or ALL), though it is not GO."""
    drafts = {e.draft for e in estimates}
    where = domains[0] if len(domains) == 1 else ALL
    found = [e for e in estimates if e.domain == where]
    if k is None or len(drafts) != 1 or len(found) != 1:
        return None
    e = found[0]
    info = infos.get(e.draft, {"name": e.draft, "kind": MODEL})
    return Choice(e.draft, info.get("kind", MODEL), info, k, (where,), float(e.speedup[k - 1]),
                  warning=f"not recommended: {none}; emitted because --draft and --k chose it")


def _plan_speedup(estimates: Sequence[Estimate], plan: DraftPlan, k: int) -> float:
    rows = [e for e in estimates if e.draft == plan.draft and e.domain in plan.enable]
    weights = np.array([e.n_prompts for e in rows], dtype=np.float64)
    return float((weights * np.array([e.speedup[k - 1] for e in rows])).sum() / weights.sum())


def _kind(c: Choice) -> kinds.DraftKind:
    return kinds.kind(c.kind)


def notes(c: Choice, target: str, emit: EmitTarget) -> list[str]:
    """What the user should know beside the pasted config (for stderr)."""
    out = [c.warning] if c.warning else []
    out.append(f"{c.draft} at k = {c.k} for {', '.join(c.domains)} (expected speedup {c.speedup:.2f}×)")
    return out + _kind(c).notes(str(c.draft), c.info, target, emit)


def vllm_config(c: Choice, target: str, per_batch_size: list[list[int]] | None = None) -> str:
    """vLLM's --speculative-config JSON (the kind's: method ngram with prompt_lookup_min/max, or draft_model),
    with `per_batch_size` rows [[min_bs, max_bs, k], …] as its num_speculative_tokens_per_batch_size when given
    (vLLM clamps each row's k to num_speculative_tokens, so that is raised to the largest)."""
    assert c.k is not None
    config = _kind(c).vllm_config(str(c.draft), c.info, c.k)
    if per_batch_size is not None:
        config["num_speculative_tokens"] = max([c.k, *(row[2] for row in per_batch_size)])
        config["num_speculative_tokens_per_batch_size"] = per_batch_size
    return json.dumps(config)


def sglang_flags(c: Choice, target: str) -> str:
    """SGLang's server flags: a chain of k draft tokens (top-1), k + 1 tokens verified per step."""
    assert c.k is not None
    return shlex.join(_kind(c).sglang_flags(str(c.draft), c.info, c.k))


def emit_config(c: Choice, target: str, emit: EmitTarget, per_batch_size: list[list[int]] | None = None) -> str:
    """The config to paste into `emit`'s server."""
    return vllm_config(c, target, per_batch_size) if emit == VLLM else sglang_flags(c, target)
