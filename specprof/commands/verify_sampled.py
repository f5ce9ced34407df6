"""`verify --engine vllm` at T > 0: the engine's counters per position against vLLM's expected ones.

The report predicts, per prompt, the counters vLLM's rule gives in expectation
(`core/simulation/sampled_conventions`, the draft-sampling mode the server runs). The engine
serves the same prompts once each, with its own samples: per prompt both figures are random, the
pairs independent across prompts. So the test is a paired bootstrap over the prompts compared:
for each position i, the difference (engine − predicted) of the rates accepted_i / drafts, and its
99% percentile interval; the engine is "outside" when that interval excludes 0. A correct
prediction is flagged at one position with probability about 1% (bootstrap, many prompts), at some
position of k with at most k%. Fewer than `stats.MIN_PROMPTS` prompts: "too few prompts", no test.

On vLLM's broken CPU build (`engines/vllm/cpu_probe`) the engine's T > 0 counters are not meaningful:
one line says so and nothing is flagged.
Beside it, `sampled_row`: the engine's first-position acceptance against the report's α interval.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from specprof.core.jsonvalues import json_clean
from specprof.core.pricing import stats
from specprof.core.records.reportfiles import Report
from specprof.core.simulation import sampled_conventions as sc
from specprof.core.vocabulary import ALL, GREEDY
from specprof.engines.vllm import cpu_probe
from specprof.engines.vllm.client import SpecCounters

FAR_FACTOR = 2.0  # at T > 0, an engine acceptance off by this factor from the report's interval is "far outside"
CONFIDENCE = 0.99  # per position: a correct prediction is flagged with probability about 1 − CONFIDENCE


@dataclass(frozen=True)
class PositionRow:
    k: int
    position: int  # 1-based, as vLLM's per-position rates are read
    mode: str  # draft_sample_method the prediction follows
    engine_rate: float
    predicted: float  # expected rate over the same prompts, and its 95% interval over prompts
    predicted_lo: float
    predicted_hi: float
    diff_lo: float  # 99% paired-bootstrap interval of engine − predicted
    diff_hi: float
    verdict: str  # "inside", "outside", "too few prompts", "not meaningful (broken build)"

    def as_dict(self) -> dict:
        return json_clean(dict(self.__dict__))


@dataclass(frozen=True)
class SampledRow:
    """T > 0: the engine's acceptance beside the report's estimate (not compared token by token)."""

    k: int
    engine_first_position_rate: float  # num_accepted_tokens_per_pos[0] / num_drafts
    engine_draft_acceptance_rate: float  # num_accepted_tokens / num_draft_tokens
    engine_mean_acceptance_length: float  # 1 + num_accepted_tokens / num_drafts
    report_draft_acceptance_rate: float  # the report's chain estimate (transformers' counting: k per iteration)
    alpha: float  # the report's α for draft × ALL, and its 95% interval (or α ± 2 s.e. of the engine's count)
    alpha_lo: float
    alpha_hi: float
    flag: str  # "" inside the interval, else how far outside

    def as_dict(self) -> dict:
        return json_clean(dict(self.__dict__))


def sampled_row(k: int, report: Report, draft: str, engine: SpecCounters) -> SampledRow:
    """T > 0: the engine's first-position acceptance beside the report's α interval, flagged when outside."""
    summary = report.frame("summary")
    row = summary[(summary["draft"] == draft) & (summary["domain"] == ALL) & (summary["k"] == k)]
    alpha, lo, hi, rate_report = (float(row[c].iloc[0]) if len(row) else float("nan")
                                  for c in ("alpha", "alpha_lo", "alpha_hi", "draft_acceptance_rate"))
    nan = float("nan")
    first = engine.num_accepted_tokens_per_pos[0] / engine.num_drafts if engine.num_drafts and engine.k else nan
    rate = engine.num_accepted_tokens / engine.num_draft_tokens if engine.num_draft_tokens else nan
    mal = 1 + engine.num_accepted_tokens / engine.num_drafts if engine.num_drafts else nan
    if not lo < hi and alpha == alpha and engine.num_drafts:  # a point estimate (too few prompts for an interval):
        se = (alpha * (1 - alpha) / engine.num_drafts) ** 0.5  # allow the engine's own sampling noise, 2 s.e.
        lo, hi = max(alpha - 2 * se, 0.0), min(alpha + 2 * se, 1.0)  # a rate: inside [0, 1]
    flag = ""
    if first == first and lo == lo and not lo <= first <= hi:
        far = first < lo / FAR_FACTOR or first > hi * FAR_FACTOR
        flag = (f"{'far ' if far else ''}outside the report's α range [{lo:.3f}, {hi:.3f}]: the engine accepted "
                f"{first:.3f} at the first draft position")
    return SampledRow(k, first, rate, mal, rate_report, alpha, lo, hi, flag)  # lo, hi: the range compared with


def mode_of(config: dict | None, report: Report) -> str:
    """The draft-sampling mode the server runs: its config's, else vLLM's default (greedy)."""
    return str((config or {}).get("draft_sample_method", GREEDY))


def position_rows(k: int, report: Report, draft: str, done: list[str], per_prompt: dict, mode: str,
                  broken: bool, confidence: float = CONFIDENCE) -> list[PositionRow]:
    """Per position: the engine's rate over `done` (its per-prompt counters `per_prompt`) against the expected."""
    rec = sc.load_sampled(report, draft, mode)
    table, _ = sc.prompt_expected(rec, k)
    index = {p: i for i, p in enumerate(rec.prompt_ids.tolist())}
    rows = [index[p] for p in done if p in index]
    predicted = table[rows]
    engine = np.array([[per_prompt[p].num_drafts, *per_prompt[p].num_accepted_tokens_per_pos[:k]]
                       for p in done if p in index], dtype=np.float64).reshape(len(rows), 1 + k)
    with np.errstate(invalid="ignore", divide="ignore"):
        engine_rate = engine[:, 1:].sum(0) / engine[:, 0].sum()
        point = predicted[:, 3:].sum(0) / predicted[:, 0].sum()
    weights = stats.draw_weights(stats.SEED, f"verify-sampled:{draft}:{k}", len(rows))
    pred_samples = stats.ratio_of_sums(weights, predicted[:, 3:], np.repeat(predicted[:, :1], k, axis=1))
    eng_samples = stats.ratio_of_sums(weights, engine[:, 1:], np.repeat(engine[:, :1], k, axis=1))
    lo, hi = stats.percentile_interval(pred_samples, point)
    dlo, dhi = stats.percentile_interval(eng_samples - pred_samples, engine_rate - point, confidence)
    out = []
    for i in range(k):
        if broken:
            verdict = "not meaningful (broken build)"
        elif len(rows) < stats.MIN_PROMPTS:
            verdict = "too few prompts"
        else:
            verdict = "inside" if dlo[i] <= 0 <= dhi[i] else "outside"
        out.append(PositionRow(k, i + 1, mode, float(engine_rate[i]), float(point[i]), float(lo[i]), float(hi[i]),
                               float(dlo[i]), float(dhi[i]), verdict))
    return out


def compare(k: int, report: Report, draft: str, done: list[str], per_prompt: dict, result) -> None:
    """Add the per-position rows (and, on a broken build, its one line) to a `VllmVerifyResult`."""
    if result.configs.get(k) is None:  # a --url server: judged by its version (a launched one was probed)
        check_build(result, None, 1.0)
    broken = any(n.startswith(cpu_probe.BROKEN_LINE[:20]) for n in result.notes)
    if broken and result.sampled:  # the α-range flag would blame a difference that is the build's
        result.sampled[-1] = dataclasses.replace(result.sampled[-1], flag="")
    rows = position_rows(k, report, draft, done, per_prompt, mode_of(result.configs.get(k), report), broken)
    result.positions.extend(rows)
    for r in rows:
        if r.verdict == "outside":
            result.notes.append(f"k={k}: position {r.position}: the engine accepted {r.engine_rate:.3f}, outside "
                                f"the expected {r.predicted:.3f} [{r.predicted_lo:.3f}, {r.predicted_hi:.3f}] "
                                f"(difference {r.engine_rate - r.predicted:+.3f}, 99% [{r.diff_lo:+.3f}, "
                                f"{r.diff_hi:+.3f}])")


def check_build(result, python: str | None, temperature: float) -> None:
    """At T > 0: probe the server's interpreter (or judge by version for --url) and note a broken build once."""
    if temperature == 0:
        return
    broken = cpu_probe.expand_kernel_broken(python) if python else None
    note = cpu_probe.broken_note(result.vllm_version, broken)
    if note and note not in result.notes:
        result.notes.append(note)
