"""`specprof verify REPORT --engine vllm`: hold the report's prediction against a real vLLM server's counters.

For one draft of the report and each k:
  1. a server: `--url` (one already running with a speculative config; its k is read from its
     per-position counters) or `--launch` (started from `--vllm-python` with the config
     `launcher.speculative_config` derives from the draft name, stopped at the end or on error);
  2. checks that it serves the report's target: its `/detokenize` must give the same text as the
     report's tokenizer for every id the run will send or expect (a tokenizer, not a name);
  3. the report's prompts as token ids, one request at a time (greedy at T = 0, the report's
     max_new_tokens, every sampling knob set), reading `/metrics` before and after each request,
     so each prompt's counters are known;
  4. compares the differences with `specprof.core.simulation.conventions.engine_counters` (vLLM's conventions),
     counter by counter, and every continuation with the report's. Where they differ it says where
     and why: a continuation that diverged (position, tokens, the target's own top-2 margin there,
     from vLLM's logprobs), or a prompt whose counters differ while its continuation is identical
     (the draft proposed something else: its near-ties, top-2 margin per position, float32);
  5. at T > 0 (outputs not comparable token by token): per position against vLLM's expected rates (`verify_sampled`).
A failure (server gone, timeout, wrong model, no speculation) stops the run with one line and keeps
everything already compared in the result (`VllmVerifyResult.error`).
What this module does not do: print (`ui.render_vllm`), parse flags (`ui.cli`), the conventions
themselves (`core.conventions`), HTTP (`engines.vllm.client`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from specprof.commands import verify_sampled, verify_steps
from specprof.commands.vllm_common import (
    best_k,
    check_ks,
    check_tokenizer,
    choose_draft,
    draft_near_ties,
    draft_source,
    select_prompts,
    server_k,
    settled_metrics,
    target_dir,
)
from specprof.core.jsonvalues import json_clean
from specprof.core.records import tokentext
from specprof.core.records.reportfiles import Report, load_report
from specprof.core.records.sequences import first_difference, report_continuations
from specprof.core.vocabulary import VLLM
from specprof.engines.text import auto_detokenizer
from specprof.engines.vllm import launcher
from specprof.engines.vllm.client import SpecCounters, TopLogprobs, VllmClient
from specprof.errors import SpecprofError

COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")
# Two tokens whose float32 log-probabilities differ by less than this are a near-tie: vLLM's CPU kernels
# and PyTorch's may order them either way (the same bound `verify`'s transformers engine uses at float32).
NEAR_TIE = {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.5}
REQUEST_TIMEOUT_S = 300.0  # one completion of max_new_tokens on a slow CPU server

Predict = Callable[..., Any]  # engine_counters(report, draft, k, *, prompt_ids, engine) → EngineCounters


@dataclass(frozen=True)
class CounterRow:
    k: int
    counter: str  # num_drafts, num_draft_tokens, num_accepted_tokens or num_accepted_tokens_per_pos[i]
    predicted: int  # specprof's prediction under vLLM's conventions
    engine: int  # the difference of the server's /metrics over the run

    @property
    def equal(self) -> bool:
        return self.predicted == self.engine

    def as_dict(self) -> dict:
        return {"k": self.k, "counter": self.counter, "predicted": self.predicted, "engine": self.engine,
                "equal": self.equal}


@dataclass(frozen=True)
class ContinuationDiff:
    k: int
    prompt_id: str
    position: int  # first differing position in the continuation
    report_token: int  # -1: the report's continuation ended there
    engine_token: int  # -1: vLLM's output ended there
    margin: float  # vLLM's top-1 minus top-2 log-probability there (the target's own margin)
    gap: float  # vLLM's log-probability of its token minus the report's token (NaN: not in its top few)
    verdict: Literal["near-tie", "diverged"]

    def as_dict(self) -> dict:
        return json_clean(dict(self.__dict__))


@dataclass(frozen=True)
class PromptMismatch:
    """A prompt whose counters differ from the prediction although its continuation is the report's."""

    k: int
    prompt_id: str
    predicted: dict
    engine: dict
    near_ties: list[tuple[int, float]]  # (position, draft top-2 margin) below DRAFT_NEAR_TIE_LISTED, smallest first
    verdict: Literal["near-tie", "unexplained"]

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["near_ties"] = [{"position": p, "margin": m} for p, m in self.near_ties]
        return d


@dataclass
class VllmVerifyResult:
    draft: str
    temperature: float
    vllm_version: str | None = None
    configs: dict[int, dict | None] = field(default_factory=dict)  # k → the server's --speculative-config (None: --url)
    prompts_done: dict[int, int] = field(default_factory=dict)  # k → prompts compared
    counters: list[CounterRow] = field(default_factory=list)
    continuations: list[ContinuationDiff] = field(default_factory=list)
    prompt_mismatches: list[PromptMismatch] = field(default_factory=list)
    sampled: list[verify_sampled.SampledRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # where the prediction is a bound, not exact (an old report)
    positions: list = field(default_factory=list)  # T > 0: verify_sampled.PositionRow per k and position
    error: str | None = None  # what stopped the run (exit 2); everything above was compared before it
    steps: verify_steps.Steps = field(default_factory=verify_steps.Steps)  # request by request (verify_steps)

    @property
    def mismatch(self) -> bool:
        """At T = 0 a counter or a continuation differs (exit 1)."""
        differs = any(not r.equal for r in self.counters) or bool(self.continuations) or bool(self.steps.diffs)
        return self.temperature == 0 and differs

    def as_dict(self) -> dict:
        return json_clean({
            "engine": VLLM, "draft": self.draft, "temperature": self.temperature,
            "vllm_version": self.vllm_version, "configs": {str(k): v for k, v in self.configs.items()},
            "prompts_done": {str(k): v for k, v in self.prompts_done.items()},
            "counters": [r.as_dict() for r in self.counters],
            "continuations": [d.as_dict() for d in self.continuations],
            "prompt_mismatches": [m.as_dict() for m in self.prompt_mismatches],
            "sampled": [s.as_dict() for s in self.sampled], "notes": list(self.notes),
            "positions": [p.as_dict() for p in self.positions],
            "mismatch": self.mismatch, "error": self.error, "per_request_steps": self.steps.as_dict(),
        })


def as_counters(predicted: Any) -> SpecCounters:
    """Any object with vLLM's four counter fields (core.conventions.EngineCounters) as SpecCounters."""
    return SpecCounters(int(predicted.num_drafts), int(predicted.num_draft_tokens),
                        int(predicted.num_accepted_tokens),
                        tuple(int(v) for v in predicted.num_accepted_tokens_per_pos))


def counter_rows(k: int, predicted: SpecCounters, engine: SpecCounters) -> list[CounterRow]:
    rows = [CounterRow(k, name, getattr(predicted, name), getattr(engine, name)) for name in COUNTERS]
    n = max(predicted.k, engine.k)
    for i in range(n):
        p = predicted.num_accepted_tokens_per_pos[i] if i < predicted.k else 0
        e = engine.num_accepted_tokens_per_pos[i] if i < engine.k else 0
        rows.append(CounterRow(k, f"num_accepted_tokens_per_pos[{i}]", p, e))
    return rows


def default_predict() -> Predict:
    try:
        from specprof.core.simulation.conventions import engine_counters
    except ImportError:
        raise SpecprofError("this specprof has no engine conventions (specprof.core.simulation.conventions); "
                            "verify --engine vllm needs them") from None
    return engine_counters


@dataclass(frozen=True)
class Options:
    draft: str | None = None
    ks: tuple[int, ...] = ()
    limit: int | None = None
    url: str | None = None
    vllm_python: str | None = None  # --launch from this interpreter
    draft_model_dir: str | None = None
    timeout_s: float | None = None  # per request (default REQUEST_TIMEOUT_S)
    start_timeout_s: float = launcher.START_TIMEOUT_S
    # (model source, prompt ids, continuation) → the draft's top-1 minus top-2 logit at each continuation
    # position; explains a differing prompt. The caller passes a transformers one (engines/hf/margins: torch),
    # so this command runs without torch. None: differing prompts stay unexplained.
    top2_margins: Callable[[str, list[int], list[int]], list[float]] | None = None


def run(report_path: str | Path, options: Options, predict: Predict | None = None,
        progress: Callable[[str], None] | None = None) -> VllmVerifyResult:
    """Verify against vLLM; raises SpecprofError for bad input found before anything ran."""
    if (options.url is None) == (options.vllm_python is None):
        raise SpecprofError("--engine vllm: pass either --url URL (a running server) or --launch --vllm-python PY")
    report = load_report(report_path)
    settings = report.run["settings"]
    temperature = float(settings["temperature"])
    draft = choose_draft(report, options.draft)
    prompts = select_prompts(report.frame("prompts"), options.limit)
    tokens = report.frame("tokens")
    tokens = tokens[tokens["draft"] == draft]
    continuations = report_continuations(tokens)
    detok = tokentext.load(report.run, fallback=auto_detokenizer)
    predict, result = predict or default_predict(), VllmVerifyResult(draft, temperature)
    say = progress or (lambda _m: None)

    if options.url is not None:
        client = VllmClient(options.url, options.timeout_s or REQUEST_TIMEOUT_S)
        served_k = server_k(client)
        ks = sorted(set(options.ks)) or [served_k]
        if ks != [served_k]:
            raise SpecprofError(f"--url {options.url}: the server runs speculative decoding at k = {served_k} "
                                f"(num_speculative_tokens), not --k {', '.join(map(str, ks))}; pass --k {served_k} "
                                "or restart it")
        check_ks(ks, settings)
        plan: list[tuple[int, dict | None]] = [(served_k, None)]
    else:
        assert options.vllm_python is not None  # checked above: --url or --vllm-python
        result.vllm_version = launcher.check_python(options.vllm_python)
        verify_sampled.check_build(result, options.vllm_python, temperature)
        ks = sorted(set(options.ks)) or [best_k(report, draft)]
        check_ks(ks, settings)
        model = target_dir(report.run)
        dtype = str(report.run.get("dtype", "float32"))
        draft_dir = options.draft_model_dir or draft_source(report.run, draft)
        plan = [(k, launcher.speculative_config(draft, k, draft_dir, sampled=temperature > 0)) for k in ks]

    try:
        for k, config in plan:
            result.configs[k] = config
            if config is None:
                say(f"k={k}: checking the server…")
                _verify_k(client, k, report, draft, prompts, continuations, detok, predict, options, result, say)
                continue
            say(f"k={k}: starting vLLM…")
            assert options.vllm_python is not None  # a config is launched: --vllm-python was given
            with launcher.launch(options.vllm_python, model, config, dtype=dtype,
                                 start_timeout_s=options.start_timeout_s,
                                 extra=verify_steps.launch_flags(result.vllm_version)) as server:
                server.client.timeout_s = options.timeout_s or REQUEST_TIMEOUT_S
                _verify_k(server.client, k, report, draft, prompts, continuations, detok, predict, options, result,
                          say)
    except SpecprofError as e:
        result.error = str(e)
    return result


def _verify_k(client: VllmClient, k: int, report: Report, draft: str, prompts: pd.DataFrame,
              continuations: dict[str, list[int]], detok: tokentext.Detokenizer, predict: Predict,
              options: Options, result: VllmVerifyResult, say: Callable[[str], None]) -> None:
    if result.vllm_version is None:
        result.vllm_version = client.version()
    served_k = server_k(client)
    if served_k != k:
        raise SpecprofError(f"{client.url}: the server runs k = {served_k}, not {k}")
    ids = [str(pid) for pid in prompts["prompt_id"]]
    check_tokenizer(client, detok, list(prompts["prompt_tokens"]) + [continuations.get(pid, []) for pid in ids])
    temperature = float(report.run["settings"]["temperature"])
    per_prompt: dict[str, SpecCounters] = {}
    done: list[str] = []
    engine_total = SpecCounters(0, 0, 0, (0,) * k)
    try:
        try:
            _send(client, k, ids, prompts, report, continuations, result, per_prompt, done, say)
        except SpecprofError as e:
            raise SpecprofError(f"{e} (k={k}, after {len(done)} of {len(ids)} prompts)") from None
    finally:  # what was measured before a failure is still compared
        result.prompts_done[k] = len(done)
        for pid in done:
            engine_total = _add(engine_total, per_prompt[pid])
        if done:
            _compare(k, report, draft, done, per_prompt, engine_total, predict, options, result, temperature)
    if temperature == 0 and engine_total.num_drafts == 0 and any(r.predicted for r in result.counters if r.k == k):
        raise SpecprofError(f"{client.url}: the spec-decode counters did not move over {len(done)} requests; the "
                            "server is not speculating on them (check its --speculative-config)")


def _send(client: VllmClient, k: int, ids: list[str], prompts: pd.DataFrame, report: Report,
          continuations: dict[str, list[int]], result: VllmVerifyResult, per_prompt: dict[str, SpecCounters],
          done: list[str], say: Callable[[str], None]) -> None:
    """One request per prompt, /metrics read after each, so each prompt's counters are known."""
    settings = report.run["settings"]
    temperature, max_new = float(settings["temperature"]), int(settings["max_new_tokens"])
    tokens_of = {str(pid): [int(t) for t in toks] for pid, toks in zip(prompts["prompt_id"], prompts["prompt_tokens"])}
    before = settled_metrics(client)
    for n, pid in enumerate(ids, 1):
        prompt = tokens_of[pid]
        out, _ = client.complete(prompt, max_new, temperature, float(settings["top_p"]),
                                 seed=int(settings["seed"]) if temperature > 0 else None)
        after = settled_metrics(client)
        per_prompt[pid] = after.minus(before)
        before = after
        done.append(pid)
        say(f"k={k}: {n}/{len(ids)} prompts")
        if temperature == 0:
            diff = _compare_continuation(client, k, pid, prompt, continuations.get(pid, []), out.token_ids,
                                         str(report.run.get("dtype", "float32")))
            if diff:
                result.continuations.append(diff)
            verify_steps.compare_request(client, k, pid, prompt, out, report, result, diverged=bool(diff))


def _compare(k: int, report: Report, draft: str, done: list[str], per_prompt: dict[str, SpecCounters],
             engine_total: SpecCounters, predict: Predict, options: Options, result: VllmVerifyResult,
             temperature: float) -> None:
    if temperature > 0:  # expected counters per position (verify_sampled), and acceptance beside α's interval
        result.sampled.append(verify_sampled.sampled_row(k, report, draft, engine_total))
        return verify_sampled.compare(k, report, draft, done, per_prompt, result)
    prediction = predict(report, draft, k, prompt_ids=done, engine=VLLM)
    if not getattr(prediction, "exact", True):
        result.notes.append(f"k={k}: {prediction.note}")
    predicted = as_counters(prediction)
    result.counters += counter_rows(k, predicted, engine_total)
    if predicted == engine_total:
        return
    diverged = {d.prompt_id for d in result.continuations if d.k == k}
    for pid in done:
        if pid in diverged:
            continue
        mine = as_counters(predict(report, draft, k, prompt_ids=[pid], engine=VLLM))
        if mine != per_prompt[pid]:
            ties = draft_near_ties(report, draft, pid, options.draft_model_dir, options.top2_margins)
            result.prompt_mismatches.append(PromptMismatch(k, pid, mine.as_dict(), per_prompt[pid].as_dict(), ties,
                                                           "near-tie" if ties else "unexplained"))


def _add(a: SpecCounters, b: SpecCounters) -> SpecCounters:
    return SpecCounters(a.num_drafts + b.num_drafts, a.num_draft_tokens + b.num_draft_tokens,
                        a.num_accepted_tokens + b.num_accepted_tokens,
                        tuple(x + y for x, y in zip(a.num_accepted_tokens_per_pos, b.num_accepted_tokens_per_pos)))


def _compare_continuation(client: VllmClient, k: int, pid: str, prompt: list[int], report_y: list[int],
                          engine_y: list[int], dtype: str) -> ContinuationDiff | None:
    j = first_difference(report_y, engine_y)
    if j is None:
        return None
    a = report_y[j] if j < len(report_y) else -1
    b = engine_y[j] if j < len(engine_y) else -1
    margin, gap = float("nan"), float("nan")
    if a >= 0 and b >= 0:  # the target's own view at j: one more token with the top-5 log-probabilities
        _, tops = client.complete(prompt + engine_y[:j], 1, logprobs=5)
        if tops:
            top: TopLogprobs = tops[0]
            margin = top.margin()
            if a in top.candidates and b in top.candidates:
                gap = top.candidates[b] - top.candidates[a]
    near = gap == gap and gap <= NEAR_TIE.get(dtype, 1e-3)
    return ContinuationDiff(k, pid, j, a, b, margin, gap, "near-tie" if near else "diverged")
