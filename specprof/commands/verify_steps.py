"""`verify --engine vllm`, request by request: each response's per-step drafted / accepted arrays against the
steps specprof simulates for that prompt.

vLLM ≥ 0.32 started with `--per-request-spec-decode-metrics detailed` (`--launch` passes it) puts in each
completion's `metrics.speculative_decoding` the ordered `per_step_drafted` and `per_step_accepted`
arrays, one entry per verify step that had draft tokens (vllm/v1/metrics/stats.py,
RequestSpecDecodeMetrics; filled by the scheduler after each step). specprof predicts the same steps
under vLLM's conventions (`conventions.prompt_steps`: blocks from the second token, steps whose proposer
returned nothing left out). At T = 0 they are equal step by step; where they are not, the first
differing step is named: the request, the step's index, where its block starts in the continuation,
both sides' (drafted, accepted), and the target's own top-2 margin at the first token the two sides
disagree about (vLLM's logprobs there; a small margin makes it a near-tie of the target).
A server that returns no per-step arrays (an older vLLM, or started without the option) is compared
on its totals alone, with one note.

What this module does not do: send the requests (`verify_vllm`), print (`ui.render_vllm`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from specprof.core.jsonvalues import json_clean

PER_REQUEST_FLAG = ("--per-request-spec-decode-metrics", "detailed")
FIRST_VERSION = (0, 32)  # the first vLLM with per-request spec-decode metrics
NO_STEPS = ("the server returns no per-request spec-decode metrics (vLLM ≥ 0.32 started with "
            "--per-request-spec-decode-metrics detailed): compared on the totals only")

StepPredict = Callable[[str, int], list[tuple[int, int, int]]]  # (prompt id, k) → [(start, drafted, accepted)]


@dataclass(frozen=True)
class StepDiff:
    k: int
    prompt_id: str
    step: int  # index of the first differing verify step (0-based)
    start: int  # where its block starts in the continuation (-1: specprof has no such step)
    predicted: tuple[int, int] | None  # specprof's (drafted, accepted) at that step, None: no such step
    engine: tuple[int, int] | None  # vLLM's
    margin: float  # the target's top-1 minus top-2 log-probability at the first disputed token (vLLM's)

    def as_dict(self) -> dict:
        return json_clean({"k": self.k, "prompt_id": self.prompt_id, "step": self.step, "start": self.start,
                           "predicted": list(self.predicted) if self.predicted else None,
                           "engine": list(self.engine) if self.engine else None, "target_margin": self.margin})


@dataclass
class Steps:
    """A verify run's request-by-request comparison: requests compared per k, their first differing steps."""

    compared: dict[int, int] = field(default_factory=dict)
    diffs: list[StepDiff] = field(default_factory=list)
    predict: StepPredict | None = field(default=None, repr=False)  # made on the first request that has steps

    def as_dict(self) -> dict:
        return {"compared": {str(k): v for k, v in self.compared.items()},
                "first_differences": [d.as_dict() for d in self.diffs]}


def engine_steps(spec_decode: dict | None) -> list[tuple[int, int]] | None:
    """vLLM's (drafted, accepted) per verify step from a response's metrics.speculative_decoding, or None."""
    if not spec_decode or spec_decode.get("per_step_drafted") is None:
        return None
    return [(int(d), int(a)) for d, a in zip(spec_decode["per_step_drafted"], spec_decode["per_step_accepted"])]


def first_difference(k: int, prompt_id: str, predicted: Sequence[tuple[int, int, int]],
                     engine: Sequence[tuple[int, int]], margin_at: Callable[[int], float]) -> StepDiff | None:
    """The first step where the two sides differ (None: equal), with the target's margin at the first
    disputed token, `margin_at(position in the continuation)`."""
    for i in range(max(len(predicted), len(engine))):
        p = (predicted[i][1], predicted[i][2]) if i < len(predicted) else None
        e = (engine[i][0], engine[i][1]) if i < len(engine) else None
        if p == e:
            continue
        start = predicted[i][0] if i < len(predicted) else -1
        disputed = start + min(p[1], e[1]) if p is not None and e is not None else -1
        margin = margin_at(disputed) if disputed >= 0 else float("nan")
        return StepDiff(k, prompt_id, i, start, p, e, margin)
    return None


def compare_request(client, k: int, pid: str, prompt: list[int], out, report, result, diverged: bool = False) -> None:
    """Request by request (T = 0, identical continuation): the response's per-step arrays against the simulated
    steps (`verify_steps`); a server without them is noted once and compared on its totals."""
    if diverged:  # the continuation differs: its steps are not comparable after it (named as a continuation diff)
        return
    engine = engine_steps(out.spec_decode)
    if engine is None:
        if NO_STEPS not in result.notes:
            result.notes.append(NO_STEPS)
        return
    steps = result.steps
    if steps.predict is None:
        steps.predict = default_step_predict(report, result.draft)
    steps.compared[k] = steps.compared.get(k, 0) + 1

    def margin_at(position: int) -> float:
        _, tops = client.complete(prompt + out.token_ids[:position], 1, logprobs=5)
        return tops[0].margin() if tops else float("nan")

    diff = first_difference(k, pid, steps.predict(pid, k), engine, margin_at)
    if diff is not None:
        steps.diffs.append(diff)


def launch_flags(version: str | None) -> tuple[str, ...]:
    """What `--launch` adds to vLLM's command line for the per-step arrays (nothing for a vLLM without them)."""
    return PER_REQUEST_FLAG if supports_per_request(version) else ()


def supports_per_request(version: str | None) -> bool:
    """Whether a vLLM of this version takes --per-request-spec-decode-metrics."""
    try:
        parts = tuple(int(x) for x in str(version).split("+")[0].split(".")[:2])
    except ValueError:
        return False
    return parts >= FIRST_VERSION


def default_step_predict(report, draft: str) -> StepPredict:
    from specprof.core.simulation import conventions

    rec = conventions.load_records(report, draft)
    return lambda prompt_id, k: conventions.prompt_steps(rec, k, prompt_id)
