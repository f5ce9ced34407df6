"""`specprof verify REPORT --engine vllm --concurrency B,…`: predicted against measured speedup at serving load.

For each batch size B the report's prompts (repeated when there are fewer than B · rounds) are sent
as B concurrent streams, a thread pool of B workers each sending one request after another, to a
vLLM server with speculation and to one serving the same target without it. After one warm-up
request per stream (not timed) every stream sends `rounds` requests; the output tokens of all of
them over the wall time from the first send to the last answer are the tokens/s at B. The measured
speedup is the speculative server's tokens/s over the baseline's. The prediction at B is the
report's speedup at the server's k priced with the costs at batch size B (`core/pricing/batchcost.py`:
the report's own timings, or `--costs FILE`), with its 95% interval, and the best k at B beside it.

Servers: `--url` (speculative) with `--baseline-url` (the same target without
`--speculative-config`), both already running; or `--launch`, which starts the baseline, measures
every B, stops it, then does the same with the speculative config (one server at a time, so they
never compete for the machine).

What the prediction does not model, and the measurement includes (`NOT_MODELLED`): prefill (each
request's prompt; the prediction prices decode steps only), steps that mix prefill and decoding,
requests of different lengths finishing at different times (the batch shrinks at the end of each
round), vLLM's scheduler and per-step overhead (Python, sampling, HTTP, detokenisation), and vLLM's
kernels (the report's costs are transformers forward passes timed in specprof's process). The
acceptance part of the prediction counts as transformers' loop does (the report's tokens/iter);
vLLM's own mean acceptance length over the timed requests is printed beside it.

What this module does not do: print (`ui.render_concurrency`), parse flags (`ui.cli`), the batch
cost model (`core.batchcost`), HTTP (`engines.vllm.client`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from specprof.commands import verify_vllm, vllm_common
from specprof.core.answers import decide
from specprof.core.answers.analysis import load_analysis
from specprof.core.jsonvalues import json_clean
from specprof.core.pricing import batchcost
from specprof.core.pricing.estimate import Estimate
from specprof.core.pricing.timings import costs_for
from specprof.core.records import tokentext
from specprof.core.records.reportfiles import load_report
from specprof.core.vocabulary import ALL, VLLM
from specprof.engines.text import auto_detokenizer
from specprof.engines.vllm import launcher
from specprof.engines.vllm.client import SpecCounters, VllmClient
from specprof.errors import SpecprofError

ROUNDS = 2  # timed requests per stream at each batch size (after one warm-up request per stream)
NOT_MODELLED = (
    "prefill (measured tokens/s include each request's prompt; the prediction prices decode steps only)",
    "steps that mix prefill and decoding, and requests finishing at different times (the batch shrinks at the "
    "end of each round)",
    "vLLM's scheduler and per-step overhead (Python, sampling, HTTP, detokenisation), which a small model on a CPU "
    "does not hide",
    "vLLM's kernels: the costs are transformers forward passes timed by specprof, not vLLM's",
    "the acceptance counted as transformers' loop does (vLLM's mean acceptance length is shown beside it)",
)
NO_BATCHED_LOOP = ("verify --concurrency: the transformers engine has no batched speculative loop (its verify runs "
                   "one stream at a time); measure at concurrency with --engine vllm (--url with --baseline-url, "
                   "or --launch --vllm-python PY)")


@dataclass(frozen=True)
class Options:
    batch_sizes: tuple[int, ...]
    draft: str | None = None
    k: int | None = None  # --launch: the speculative server's k (default: the best k at batch 1); --url: checked
    limit: int | None = None  # the first N prompts of each domain
    url: str | None = None  # the speculative server (with baseline_url)
    baseline_url: str | None = None  # the same target without speculation
    vllm_python: str | None = None  # --launch from this interpreter
    draft_model_dir: str | None = None
    costs: str | None = None  # --costs FILE: price with these timings instead of the report's
    rounds: int = ROUNDS
    min_speedup: float = 1.1
    timeout_s: float | None = None  # per request (default verify_vllm.REQUEST_TIMEOUT_S)
    start_timeout_s: float = launcher.START_TIMEOUT_S


@dataclass(frozen=True)
class Prediction:
    """The report's speedup at one batch size: at the server's k, and at the best k there."""

    batch_size: int
    k: int
    speedup: float
    speedup_lo: float
    speedup_hi: float
    best_k: int
    best_speedup: float
    decision: str  # at the best k, as recommend --concurrency decides


@dataclass(frozen=True)
class Load:
    """One server at one batch size: B streams × rounds requests, timed together."""

    batch_size: int
    requests: int
    output_tokens: int
    wall_s: float
    max_in_flight: int  # the most requests that were in flight at once (B when the streams overlapped)
    outputs: dict[int, list[int]]  # request number → generated ids (to compare the two servers at T = 0)
    counters: SpecCounters | None  # the spec-decode counters over the timed requests (None: no speculation)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass(frozen=True)
class Row:
    prediction: Prediction
    baseline: Load
    speculative: Load

    @property
    def measured_speedup(self) -> float:
        return self.speculative.tokens_per_s / self.baseline.tokens_per_s

    @property
    def outputs_differ(self) -> int:
        """Requests whose output differs between the two servers (T = 0: batched kernels can break near-ties)."""
        return sum(self.baseline.outputs.get(i) != out for i, out in self.speculative.outputs.items())

    @property
    def engine_mean_acceptance_length(self) -> float:
        c = self.speculative.counters
        return 1 + c.num_accepted_tokens / c.num_drafts if c is not None and c.num_drafts else float("nan")

    def as_dict(self) -> dict:
        p, b, s = self.prediction, self.baseline, self.speculative
        return json_clean({
            "batch_size": p.batch_size, "k": p.k, "predicted_speedup": p.speedup,
            "predicted_speedup_lo": p.speedup_lo, "predicted_speedup_hi": p.speedup_hi,
            "best_k": p.best_k, "best_k_speedup": p.best_speedup, "decision": p.decision,
            "baseline_tokens_per_s": b.tokens_per_s, "speculative_tokens_per_s": s.tokens_per_s,
            "measured_speedup": self.measured_speedup,
            "requests": s.requests, "baseline_output_tokens": b.output_tokens, "speculative_output_tokens":
                s.output_tokens, "baseline_wall_s": b.wall_s, "speculative_wall_s": s.wall_s,
            "baseline_max_in_flight": b.max_in_flight, "speculative_max_in_flight": s.max_in_flight,
            "outputs_differ": self.outputs_differ,
            "engine_mean_acceptance_length": self.engine_mean_acceptance_length,
            "engine_counters": s.counters.as_dict() if s.counters is not None else None,
        })


@dataclass
class ConcurrencyResult:
    draft: str
    k: int
    temperature: float
    max_new_tokens: int
    costs_source: str  # "the report" or the --costs path
    predictions: list[Prediction]
    vllm_version: str | None = None
    config: dict | None = None  # the speculative server's config (None: --url)
    baseline: dict[int, Load] = field(default_factory=dict)  # batch size → load on the baseline server
    speculative: dict[int, Load] = field(default_factory=dict)
    error: str | None = None  # what stopped the run; everything measured before it is kept

    @property
    def rows(self) -> list[Row]:
        return [Row(p, self.baseline[p.batch_size], self.speculative[p.batch_size]) for p in self.predictions
                if p.batch_size in self.baseline and p.batch_size in self.speculative]

    def as_dict(self) -> dict:
        return json_clean({
            "engine": VLLM, "draft": self.draft, "k": self.k, "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens, "costs": self.costs_source, "vllm_version": self.vllm_version,
            "config": self.config, "batch_sizes": [p.batch_size for p in self.predictions],
            "rows": [r.as_dict() for r in self.rows], "not_modelled": list(NOT_MODELLED),
            "batch_cost_model": batchcost.IGNORES, "error": self.error,
        })


def predict(report_path: str | Path, draft: str, k: int, batch_sizes: Sequence[int], costs: str | None,
            min_speedup: float) -> tuple[list[Prediction], str]:
    """The report's speedup for `draft` on the corpus (ALL) at k and at each batch size's best k."""
    analysis = load_analysis(report_path, [draft], (), None)
    source = "the report"
    if costs is not None:
        from dataclasses import replace

        timings = batchcost.load_costs(costs, analysis.run, [draft], max(t.blocks.k_max for t in analysis.traces))
        analysis, source = replace(analysis, timings=timings), f"--costs {costs}"
    if analysis.timings is None:
        raise SpecprofError("verify --concurrency: the report has no measured timings to predict with (profile "
                            "with --concurrency, or pass --costs FILE from specprof costs)")
    sizes = batchcost.choose_batch_sizes(analysis.timings, batch_sizes)
    estimate = next(e for e in decide.estimates(analysis, None, (), min_speedup)
                    if e.draft == draft and e.domain == ALL)
    if not 1 <= k <= estimate.k_max:
        raise SpecprofError(f"--k {k}: the report covers k = 1..{estimate.k_max}")
    plan = batchcost.batch_plan(estimate, analysis.timings, sizes)
    return [_prediction(estimate, analysis.timings, point, k) for point in plan.points], source


def _prediction(e: Estimate, timings, point: batchcost.BatchPoint, k: int) -> Prediction:
    b = point.batch_size
    eb = e if b == 1 else batchcost.at_batch(e, costs_for(e.draft, batchcost.timings_at(timings, b), None, e.k_max))
    i = eb.at(k)
    return Prediction(b, k, float(eb.speedup[i]), float(eb.speedup_lo[i]), float(eb.speedup_hi[i]), point.best_k,
                      point.speedup, point.decision)


def run(report_path: str | Path, options: Options, progress: Callable[[str], None] | None = None
        ) -> ConcurrencyResult:
    """Predict, then measure both servers at every batch size; raises SpecprofError for bad input found before
    any request, and keeps what was measured when a server fails later (`ConcurrencyResult.error`)."""
    # Long on purpose: each batch size measured on both servers in turn, with the launch and teardown around them.
    if not options.batch_sizes:
        raise SpecprofError("--concurrency: give batch sizes, e.g. 1,4")
    if options.rounds < 1:
        raise SpecprofError(f"rounds {options.rounds}: must be ≥ 1")
    if (options.vllm_python is None) == (options.url is None):
        raise SpecprofError("--engine vllm: pass either --url URL (a running server) or --launch --vllm-python PY")
    if options.url is not None and options.baseline_url is None:
        raise SpecprofError(f"verify --concurrency --url {options.url}: a measured speedup needs a baseline; pass "
                            "--baseline-url URL of the same target served without --speculative-config (or use "
                            "--launch --vllm-python PY to start both)")
    if options.baseline_url is not None and options.url is None:
        raise SpecprofError("--baseline-url goes with --url (the server with speculation)")
    say = progress or (lambda _m: None)
    report = load_report(report_path)
    settings = report.run["settings"]
    draft = vllm_common.choose_draft(report, options.draft)
    prompts = vllm_common.select_prompts(report.frame("prompts"), options.limit)
    prompt_ids = [[int(t) for t in toks] for toks in prompts["prompt_tokens"]]
    detok = tokentext.load(report.run, fallback=auto_detokenizer)
    timeout = options.timeout_s or verify_vllm.REQUEST_TIMEOUT_S

    if options.url is not None:
        spec_client = VllmClient(options.url, timeout)
        assert options.baseline_url is not None  # checked above: --url goes with --baseline-url
        base_client = VllmClient(options.baseline_url, timeout)
        k = vllm_common.server_k(spec_client)
        if options.k is not None and options.k != k:
            raise SpecprofError(f"--url {options.url}: the server runs speculative decoding at k = {k} "
                                f"(num_speculative_tokens), not --k {options.k}; pass --k {k} or restart it")
        if base_client.metrics() is not None:
            raise SpecprofError(f"--baseline-url {options.baseline_url}: the server runs speculative decoding "
                                "(its /metrics has vllm:spec_decode_* counters); start the baseline without "
                                "--speculative-config")
        config = None
    else:
        assert options.vllm_python is not None  # checked above: --url or --vllm-python
        version = launcher.check_python(options.vllm_python)
        k = options.k if options.k is not None else vllm_common.best_k(report, draft)
        temperature = float(settings["temperature"])
        config = launcher.speculative_config(draft, k, options.draft_model_dir or
                                             vllm_common.draft_source(report.run, draft), sampled=temperature > 0)
        model = vllm_common.target_dir(report.run)
    predictions, source = predict(report_path, draft, k, options.batch_sizes, options.costs, options.min_speedup)
    result = ConcurrencyResult(draft, k, float(settings["temperature"]), int(settings["max_new_tokens"]), source,
                               predictions, config=config)
    sizes = [p.batch_size for p in predictions]
    measure = lambda client, side, into: _measure_all(  # noqa: E731
        client, side, into, sizes, prompt_ids, settings, options.rounds, detok, say)
    try:
        if options.url is not None:
            result.vllm_version = spec_client.version()
            measure(base_client, "baseline", result.baseline)
            measure(spec_client, "speculative", result.speculative)
        else:
            result.vllm_version = version
            dtype = str(report.run.get("dtype", "float32"))
            for side, cfg, into in (("baseline", None, result.baseline),
                                    ("speculative", config, result.speculative)):
                say(f"{side}: starting vLLM…")
                assert options.vllm_python is not None  # checked above: --url or --vllm-python
                with launcher.launch(options.vllm_python, model, cfg, dtype=dtype,
                                     start_timeout_s=options.start_timeout_s) as server:
                    server.client.timeout_s = timeout
                    measure(server.client, side, into)
    except SpecprofError as e:
        result.error = str(e)
    return result


def _measure_all(client: VllmClient, side: str, into: dict[int, Load], sizes: Sequence[int],
                 prompt_ids: list[list[int]], settings: dict, rounds: int, detok: tokentext.Detokenizer,
                 say: Callable[[str], None]) -> None:
    vllm_common.check_tokenizer(client, detok, prompt_ids)
    speculative = client.metrics() is not None
    if side == "speculative" and not speculative:
        raise SpecprofError(f"{client.url}: the server runs without speculative decoding (no vllm:spec_decode_* "
                            "counters in /metrics); start it with the draft's --speculative-config")
    for b in sizes:
        say(f"{side}: {b} concurrent streams…")
        try:
            into[b] = measure_load(client, b, prompt_ids, settings, rounds, speculative)
        except SpecprofError as e:
            raise SpecprofError(f"{e} ({side} server, batch size {b})") from None


def stream_prompts(n_prompts: int, batch_size: int, rounds: int) -> list[list[int]]:
    """[batch_size][rounds + 1]: the prompt index each stream sends, warm-up first.

    Request j of stream s (j = 0 the warm-up) is prompt (j · B + s) mod n: every stream starts on another
    prompt, and the prompts are repeated when there are fewer than B · (rounds + 1).
    Example: n = 3, B = 2, rounds = 2: stream 0 sends 0, 2, 1; stream 1 sends 1, 0, 2.
    """
    return [[(j * batch_size + s) % n_prompts for j in range(rounds + 1)] for s in range(batch_size)]


def measure_load(client: VllmClient, batch_size: int, prompt_ids: list[list[int]], settings: dict, rounds: int,
                 speculative: bool) -> Load:
    """B streams at once: a warm-up request each (all B together, not timed), then `rounds` timed ones each."""
    temperature, max_new = float(settings["temperature"]), int(settings["max_new_tokens"])
    top_p, seed = float(settings.get("top_p", 1.0)), int(settings.get("seed", 0))
    plan = stream_prompts(len(prompt_ids), batch_size, rounds)
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    def send(s: int, j: int) -> list[int]:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            out, _ = client.complete(prompt_ids[plan[s][j]], max_new, temperature, top_p,
                                     seed=seed if temperature > 0 else None)
        finally:
            with lock:
                in_flight[0] -= 1
        return out.token_ids

    def stream(s: int, first: int, last: int, start: threading.Barrier) -> dict[int, list[int]]:
        start.wait()
        return {j * batch_size + s: send(s, j) for j in range(first, last)}

    def together(first: int, last: int) -> dict[int, list[int]]:
        start = threading.Barrier(batch_size)
        with ThreadPoolExecutor(batch_size) as pool:
            futures = [pool.submit(stream, s, first, last, start) for s in range(batch_size)]
            out: dict[int, list[int]] = {}
            for f in futures:
                out.update(f.result())
        return out

    together(0, 1)  # warm-up: every stream once, untimed
    in_flight[1] = 0
    before = vllm_common.settled_metrics(client) if speculative else None
    t0 = time.perf_counter()
    outputs = together(1, rounds + 1)
    wall = time.perf_counter() - t0
    counters = vllm_common.settled_metrics(client).minus(before) if before is not None else None
    return Load(batch_size, len(outputs), sum(len(v) for v in outputs.values()), wall, in_flight[1], outputs,
                counters)

