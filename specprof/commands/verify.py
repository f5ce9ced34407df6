"""`specprof verify`: run real speculative decoding on a report's prompts and check its predictions.

For each draft and domain, on up to `limit` of the report's prompts (the exact token ids the
target saw), at the chosen k (default: the domain's best k by predicted speedup):
  1. the target alone (`speculate.autoregressive_generate`) and speculative decoding
     (`speculate.speculative_generate`) run prompt by prompt, after a warm-up, with CUDA
     synchronised before each clock read. Each run times its prefill and decode phases; the
     measured speedup is the ratio of decode seconds per token, the quantity the empirical cost
     model prices (E_emp·t_T(1) / (k·t_D + t_T(k+1)) is a per-iteration, steady-state figure).
     The end-to-end ratio of whole generations, prefill included, is reported beside it: a
     separate draft model also has to prefill the prompt, which costs most on short outputs;
  2. predicted tokens/iter comes from the report's own token records for those same prompts
     (`summary.trace_drafts`), the predicted speedup from the run's measured costs;
  3. at T = 0 every output must equal the target alone token for token and the report's
     continuation, and the measured tokens/iter must equal the prediction exactly. Each
     difference becomes a `Divergence`: where, which tokens, the logit margin there, and a
     float32 re-check that tells a near-tie flipped by low-precision kernels from a real bug;
  4. at T > 0 the measured acceptance rate (accepted / judged draft tokens) is compared with the
     report's interval for α, and flagged when outside.

The same models, device, dtype and sampling settings as the profile run (read from run.json).
What this module does not do: print (`render`), parse flags (`cli`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch

from specprof.commands.diagnose import Divergence, diagnose
from specprof.core.jsonvalues import json_clean
from specprof.core.pricing import costmodel
from specprof.core.pricing.estimate import pool, priced
from specprof.core.pricing.stats import MIN_PROMPTS
from specprof.core.pricing.timings import Timings, costs_for
from specprof.core.records.reportfiles import load_report
from specprof.core.records.sequences import report_continuations
from specprof.core.simulation import blockdraft
from specprof.core.simulation.traces import DraftTrace, domain_groups, trace_drafts
from specprof.core.vocabulary import ALL
from specprof.engines.hf import drafts, models, sampling, speculate
from specprof.errors import SpecprofError

WARMUP_TOKENS = 32  # a short generation of each kind before any clock is read
@dataclass(frozen=True)
class VerifyRow:
    draft: str
    domain: str
    k: int
    n_prompts: int
    n_tokens: int  # speculative output tokens
    predicted_tokens_per_iter: float
    measured_tokens_per_iter: float
    predicted_speedup: float
    measured_speedup: float  # decode phase: target-alone s/token ÷ speculative s/token (what the cost model prices)
    relative_error: float  # (measured − predicted) / predicted speedup
    measured_speedup_end_to_end: float  # whole generations, prefill included
    target_decode_s: float  # summed over the prompts: decode phase of the target alone
    speculative_decode_s: float  # … of speculative decoding
    target_wall_s: float  # whole generations of the target alone, prefill included
    speculative_wall_s: float  # … of speculative decoding
    alpha: float  # the report's α for these prompts, and its interval for the whole domain
    alpha_lo: float
    alpha_hi: float
    measured_alpha: float  # Σ accepted / Σ judged draft tokens in the live run
    check: str  # "" when the row checks out, else what is wrong

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class VerifyResult:
    temperature: float
    device: str
    dtype: str
    rows: list[VerifyRow] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    identical_outputs: bool | None = None  # T = 0: every output equals the target alone and the report

    @property
    def failed(self) -> bool:
        """A mismatch at T = 0 (exit code 1). T > 0 flags are statistical and only warn."""
        return self.temperature == 0 and (bool(self.divergences) or any(r.check for r in self.rows))

    def as_dict(self) -> dict:
        """JSON-ready: NaN (no figure) becomes None."""
        return json_clean({
            "rows": [r.as_dict() for r in self.rows],
            "identical_outputs": self.identical_outputs,
            "divergences": [d.as_dict() for d in self.divergences],
            "temperature": self.temperature,
            "device": self.device,
            "dtype": self.dtype,
            "failed": self.failed,
        })


@dataclass(frozen=True)
class VerifyProgress:
    done: int  # generations finished (target alone and speculative each count)
    total: int


def select_prompts(prompts: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """The first `limit` prompts of each domain, in the report's order."""
    if limit is None:
        return prompts.reset_index(drop=True)
    return prompts.groupby("domain", sort=False).head(limit).reset_index(drop=True)


def choose_ks(summary: pd.DataFrame, draft: str, domains: Sequence[str], ks: Sequence[int], k_max: int) -> dict:
    """{domain: [k, …]}: the given ks, or the domain's best k by predicted speedup (ties to the smaller k)."""
    for k in ks:
        if not 1 <= k <= k_max:
            raise SpecprofError(f"--k {k}: the report covers k = 1..{k_max}")
    if ks:
        return {d: sorted(set(ks)) for d in domains}
    rows = summary[summary["draft"] == draft]
    out = {}
    for d in domains:
        by_k = rows[rows["domain"] == d].set_index("k")["speedup"]
        if by_k.isna().all():
            raise SpecprofError(f"report: no predicted speedup for draft {draft!r}, domain {d!r}; pass --k")
        out[d] = [costmodel.best_k(by_k.dropna().to_dict())]
    return out


def load_models(run: dict, names: Sequence[str]) -> tuple[models.LoadedModel, list[drafts.Draft]]:
    """The run's target (checked by fingerprint) and drafts, on the run's device and dtype."""
    device_name = str(run.get("device", "cpu"))
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecprofError(f"report: the profile ran on {device_name}; verify needs the same device, and CUDA "
                            "is not available here")
    device = torch.device(device_name)
    dtype = models.DTYPES.get(str(run.get("dtype", "float32")), torch.float32)
    info = run["target"]
    source = info.get("source")
    spec = source if source and Path(source).exists() else info.get("name")
    if spec == models.DEFAULT_TARGET:
        spec = None
    target = models.load_model(spec, device, dtype)
    if info.get("fingerprint") and target.fingerprint != info["fingerprint"]:
        raise SpecprofError(
            f"report: target {info.get('name')} now has fingerprint {target.fingerprint}, the report was "
            f"made with {info['fingerprint']}; verify needs the same weights"
        )
    return target, [drafts.load_draft(n, target, device, dtype) for n in names]


def predicted(trace: DraftTrace, mask: np.ndarray, k: int, draft: str, timings: Timings | None) -> tuple[float, float]:
    """(tokens/iter, speedup) the report predicts for the prompts in `mask` at k."""
    p = pool(trace.select(mask))
    if timings is None:
        return float(p.tokens_per_iter[k - 1]), float("nan")
    costs = priced(costs_for(draft, timings, None, trace.blocks.k_max), p)
    return float(p.tokens_per_iter[k - 1]), float(costs.speedup(p.tokens_per_iter)[k - 1])


Result = TypeVar("Result")


def _timed(device: torch.device, fn: Callable[[], Result]) -> tuple[float, Result]:
    start = models.clock(device)
    result = fn()
    return models.clock(device) - start, result


@dataclass
class Plan:
    """Everything `verify` needs before the first generation: checked flags, report figures, models."""

    temperature: float
    top_p: float
    seed: int
    max_new_tokens: int
    tokens: pd.DataFrame  # the report's token rows for the selected prompts and drafts
    traces: dict[str, DraftTrace]  # per draft, recomputed on the selected prompts only
    summary: pd.DataFrame
    timings: Timings | None
    target: models.LoadedModel
    drafts: list[drafts.Draft]
    prompt_tokens: dict[str, list[int]]  # prompt id → the exact ids the target saw
    domain_of: dict[str, str]
    ks: dict[str, dict[str, list[int]]]  # draft → domain (ALL included) → ks to verify

    def ks_for(self, draft: str, prompt_id: str) -> list[int]:
        """A prompt runs at the ks of its own domain and of ALL."""
        by_domain = self.ks[draft]
        return sorted(set(by_domain.get(self.domain_of[prompt_id], [])) | set(by_domain.get(ALL, [])))

    @property
    def total_generations(self) -> int:
        return sum(1 + sum(len(self.ks_for(d.name, pid)) for d in self.drafts) for pid in self.prompt_tokens)


def prepare(report_path: str, ks: Sequence[int] = (), limit: int | None = None,
            draft_names: Sequence[str] = ()) -> Plan:
    """Check the flags against the report, recompute its figures on the selected prompts, load the models."""
    report = load_report(report_path)
    run = report.run
    settings = run["settings"]
    if settings.get("responses") == "logged":  # its continuations end where the logs did, not where generation would
        raise SpecprofError(f"{report.directory}: profiled from logged responses; verify replays generation, so "
                            "verify a profile of the same prompts made with --responses generate")
    temperature = float(settings["temperature"])
    k_max = int(settings["k_max"])
    names = [d["name"] for d in run["drafts"]]
    for n in draft_names:
        if n not in names:
            raise SpecprofError(f"--draft {n}: not in the report (drafts: {', '.join(names)})")
    names = [n for n in names if not draft_names or n in draft_names]
    if limit is not None and limit < 1:
        raise SpecprofError(f"--limit {limit}: must be ≥ 1")

    selected = select_prompts(report.frame("prompts"), limit)
    tokens = report.frame("tokens")
    tokens = tokens[tokens["prompt_id"].isin(set(selected["prompt_id"])) & tokens["draft"].isin(set(names))]
    runs = blockdraft.load_runs(report, names, k_max) if temperature == 0 else {}  # vllm-ngram, prompt-lookup
    traces = {t.draft: t for t in trace_drafts(tokens, k_max, exact=temperature == 0, runs=runs)}
    summary = report.frame("summary")
    plan_ks = {n: choose_ks(summary, n, [d for d, _ in domain_groups(traces[n])], ks, k_max) for n in names}
    target, loaded = load_models(run, names)
    return Plan(
        temperature=temperature,
        top_p=float(settings["top_p"]),
        seed=int(settings["seed"]),
        max_new_tokens=int(settings["max_new_tokens"]),
        tokens=tokens,
        traces=traces,
        summary=summary,
        timings=Timings.from_dict(run["timings"]) if run.get("timings") else None,
        target=target,
        drafts=loaded,
        prompt_tokens={r.prompt_id: [int(t) for t in r.prompt_tokens] for r in selected.itertuples()},
        domain_of=dict(zip(selected["prompt_id"], selected["domain"])),
        ks=plan_ks,
    )


def execute(plan: Plan, progress: Callable[[VerifyProgress], None] | None = None) -> VerifyResult:
    """Run and time every generation, then compare with the report row by row."""
    live = _run_live(plan, progress)
    param = next(plan.target.model.parameters())
    result = VerifyResult(plan.temperature, str(param.device), str(param.dtype).removeprefix("torch."))
    continuations = report_continuations(plan.tokens) if plan.temperature == 0 else {}
    for draft in plan.drafts:
        t = plan.traces[draft.name]
        for domain, mask in domain_groups(t):
            ids = t.prompt_ids[mask].tolist()
            for k in plan.ks[draft.name][domain]:
                result.rows.append(_row(draft.name, domain, k, t, mask, ids, live, plan))
        if plan.temperature == 0:
            ks = sorted({k for v in plan.ks[draft.name].values() for k in v})
            result.divergences += diagnose(plan.target, draft, t, live, plan.prompt_tokens, continuations,
                                            plan.tokens, ks)
    if plan.temperature == 0:
        seen, unique = set(), []
        for d in result.divergences:  # a target-vs-report divergence is the same for every draft and k
            key = (d.kind, d.prompt_id, d.position) if d.kind == "target" else id(d)
            if key not in seen:
                seen.add(key)
                unique.append(d)
        result.divergences = unique
        result.identical_outputs = not any(d.kind in ("speculative", "target") for d in result.divergences)
    return result


@dataclass
class _Live:
    """One prompt's live runs: the target alone, and per (draft, k) the speculative output."""

    target_wall_s: float
    target: speculate.SpecOutput
    spec: dict[tuple[str, int], tuple[float, speculate.SpecOutput]] = field(default_factory=dict)  # (wall s, out)


def _run_live(plan: Plan, progress: Callable[[VerifyProgress], None] | None) -> dict[str, _Live]:
    target, eos = plan.target.model, models.eos_token_ids(plan.target)
    device = next(target.parameters()).device
    sampled = dict(temperature=plan.temperature, top_p=plan.top_p)

    def gen(pid: str) -> torch.Generator | None:
        return torch.Generator().manual_seed(sampling.prompt_seed(plan.seed, pid)) if plan.temperature > 0 else None

    def alone(pid: str, n: int) -> speculate.SpecOutput:
        return speculate.autoregressive_generate(target, plan.prompt_tokens[pid], max_new_tokens=n, eos_ids=eos,
                                                 generator=gen(pid), **sampled)

    def spec(draft: drafts.Draft, k: int, pid: str, n: int) -> speculate.SpecOutput:
        return speculate.speculative_generate(target, speculate.proposer_for(draft), plan.prompt_tokens[pid], k=k,
                                              max_new_tokens=n, eos_ids=eos, generator=gen(pid), **sampled)

    first = next(iter(plan.prompt_tokens))
    alone(first, WARMUP_TOKENS)  # warm-up: allocator, kernels for every shape the timed runs use
    for d in plan.drafts:
        for k in sorted({k for v in plan.ks[d.name].values() for k in v}):
            spec(d, k, first, WARMUP_TOKENS)

    done, total = 0, plan.total_generations
    live = {}
    for pid in plan.prompt_tokens:
        seconds, out = _timed(device, lambda pid=pid: alone(pid, plan.max_new_tokens))
        live[pid] = _Live(seconds, out)
        done += 1
        for d in plan.drafts:
            for k in plan.ks_for(d.name, pid):
                run = _timed(device, lambda d=d, k=k, pid=pid: spec(d, k, pid, plan.max_new_tokens))
                live[pid].spec[(d.name, k)] = run
                done += 1
                if progress:
                    progress(VerifyProgress(done, total))
    return live


def _row(draft: str, domain: str, k: int, t: DraftTrace, mask: np.ndarray, ids: list[str], live: dict,
         plan: Plan) -> VerifyRow:
    summary, timings, temperature = plan.summary, plan.timings, plan.temperature
    predicted_tpi, predicted_speedup = predicted(t, mask, k, draft, timings)
    runs = [live[pid].spec[(draft, k)] for pid in ids]
    alone = [live[pid].target for pid in ids]
    spec_tokens = sum(len(o.tokens) for _, o in runs)
    target_tokens = sum(len(o.tokens) for o in alone)
    iterations = sum(o.n_iterations for _, o in runs)
    measured_tpi = spec_tokens / iterations if iterations else float("nan")
    spec_decode_s, target_decode_s = sum(o.decode_s for _, o in runs), sum(o.decode_s for o in alone)
    spec_wall_s, target_wall_s = sum(s for s, _ in runs), sum(live[pid].target_wall_s for pid in ids)

    def per_token_ratio(target_s: float, spec_s: float) -> float:
        return (target_s / max(target_tokens, 1)) / (spec_s / max(spec_tokens, 1)) if spec_s else float("nan")

    measured_speedup = per_token_ratio(target_decode_s, spec_decode_s)
    tested = sum(o.num_judged_tokens for _, o in runs)
    measured_alpha = sum(o.accepted for _, o in runs) / tested if tested else float("nan")
    p = pool(t.select(mask))
    row = summary[(summary["draft"] == draft) & (summary["domain"] == domain) & (summary["k"] == k)]
    alpha_lo = float(row["alpha_lo"].iloc[0]) if len(row) else float("nan")
    alpha_hi = float(row["alpha_hi"].iloc[0]) if len(row) else float("nan")
    check = ""
    if temperature == 0:
        if measured_tpi != predicted_tpi:
            check = f"tokens/iter {measured_tpi:.6g} ≠ report {predicted_tpi:.6g}"
    else:
        lo, hi = alpha_lo, alpha_hi
        if len(ids) < MIN_PROMPTS:  # a bootstrap of so few prompts is degenerate: say so, flag nothing
            check = f"too few prompts ({len(ids)} < {MIN_PROMPTS}) for an interval: not checked"
        elif not lo < hi:  # the report holds a point estimate: allow the live estimate's own noise (2 s.e.)
            se = float(np.sqrt(max(measured_alpha * (1 - measured_alpha), 1e-12) / max(tested, 1)))
            lo, hi = max(p.alpha - 2 * se, 0.0), min(p.alpha + 2 * se, 1.0)  # a rate: inside [0, 1]
        if not check and not lo <= measured_alpha <= hi:
            check = f"measured α {measured_alpha:.3f} outside [{lo:.3f}, {hi:.3f}]"
    relative_error = (measured_speedup - predicted_speedup) / predicted_speedup if predicted_speedup else float("nan")
    return VerifyRow(
        draft=draft, domain=domain, k=k, n_prompts=len(ids), n_tokens=spec_tokens,
        predicted_tokens_per_iter=predicted_tpi, measured_tokens_per_iter=measured_tpi,
        predicted_speedup=predicted_speedup, measured_speedup=measured_speedup, relative_error=relative_error,
        measured_speedup_end_to_end=per_token_ratio(target_wall_s, spec_wall_s),
        target_decode_s=target_decode_s, speculative_decode_s=spec_decode_s,
        target_wall_s=target_wall_s, speculative_wall_s=spec_wall_s,
        alpha=p.alpha, alpha_lo=alpha_lo, alpha_hi=alpha_hi, measured_alpha=measured_alpha, check=check,
    )
