"""`profile --engine vllm`: the records of a profile, from OpenAI-compatible vLLM servers over HTTP.

The same tokens / prompts / past_end / proposals rows the transformers engine writes
(`engines/hf/profiler.py`), from two kinds of request (docs/design.md §1, §6):
  1. the target's greedy continuation of each prompt: `/v1/completions` with the prompt as token
     ids, temperature 0, `max_tokens` = max_new_tokens + the past-end room, `ignore_eos` (so the
     tokens past EOS come in the same request), `logprobs` 2 (the chosen token's log-probability and
     the top-1 − top-2 margin), `return_token_ids`. The continuation is cut at the first EOS id or
     at max_new_tokens; the up to k_max tokens after it are the past-end tokens;
  2. per model draft, on the draft's own server: one teacher-forced request over prompt +
     continuation + past-end tokens with `"prompt_logprobs": 1`: at every position the draft's
     rank-1 token (its argmax: the proposal) and the log-probabilities of it and of the target's
     token. Model-free drafts (ngram, vllm-ngram, prompt-lookup) need no server: their proposals
     are computed from the tokens by the core's pure functions, as the transformers engine does.
Requests are spread over every target server (prompt i goes to server i mod n), several in flight
per server; each batch of prompts is written to the store as soon as it is done.

Exact at temperature 0: the continuation (greedy is a function of the prefix), every draft's
proposal and match, hence the k-trace for every k, draft_q, draft_top1_p (from raw log-probabilities),
target_p and the margin. Not available: target_entropy (a server returns the top few log-probabilities,
not the distribution: recorded NaN) and forward times (a remote server cannot be timed like a local
pass: no timings; price with `recommend --cost-ratio` or `--costs FILE`). T > 0 is refused: β = Σ min(p, q)
needs both full distributions.

No torch: this module imports only the core and the HTTP client.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from specprof.core.pricing.tables import summarize
from specprof.core.records.store import RunStore
from specprof.core.simulation import blockdraft, ngram
from specprof.core.simulation.traces import trace_drafts
from specprof.engines.vllm.client import VllmClient
from specprof.errors import SpecprofError

IN_FLIGHT_PER_SERVER = 4  # requests in flight on each server at once (vLLM batches them itself)
NOT_RECORDED = ("target_entropy", "timings")
EXACT = ("continuation", "match", "draft_token", "k-trace", "draft_q", "draft_top1_p", "target_p", "margin")


DEFAULT_BATCH_SIZE = 32  # prompts per recorded batch when --batch-size is not given: a server has no device to fill


@dataclass(frozen=True)
class Settings:
    k_max: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 32  # prompts per recorded batch (the run's resume unit; requests go out 4 per server)
    chat_template: bool = True


@dataclass(frozen=True)
class RemoteDraft:
    """A model draft served by its own vLLM server (`--draft-url NAME=URL`)."""

    name: str
    client: VllmClient
    info: dict


@dataclass(frozen=True)
class LocalDraft:
    """A model-free draft: specprof's n-gram lookup (`max_ngram`) or an engine's lookup (`proposer`)."""

    name: str
    info: dict
    max_ngram: int | None = None
    proposer: blockdraft.BlockProposer | None = None


Draft = RemoteDraft | LocalDraft


@dataclass
class Served:
    """The target's answer for one prompt."""

    tokens: list[int]  # the continuation, then the tokens past its end
    length: int  # continuation length (EOS included)
    finished_by_eos: bool
    target_logp: list[float] = field(repr=False)  # [len(tokens)] log-probability of each token (NaN: not returned)
    margin: list[float] = field(repr=False)  # [len(tokens)] top-1 − top-2 log-probability


@dataclass(frozen=True)
class Progress:
    prompts_done: int
    prompts_total: int
    tokens_done: int


def check_settings(settings: Settings) -> None:
    if settings.temperature > 0:
        raise SpecprofError(
            f"--temperature {settings.temperature:g} with --engine vllm: acceptance at T > 0 is Σ min(p, q) over both "
            "full distributions, which a server does not return (only the top few log-probabilities); profile at "
            "--temperature 0 (exact), or with --engine hf"
        )


class Spread:
    """Calls spread over servers: item i goes to clients[i mod n], IN_FLIGHT_PER_SERVER in flight on each."""

    def __init__(self, clients: Sequence[VllmClient]):
        if not clients:
            raise SpecprofError("--engine vllm: give the target's server with --url URL")
        self.clients = list(clients)

    def map(self, fn: Callable, items: Sequence, clients: Sequence[VllmClient] | None = None) -> list:
        clients = list(clients or self.clients)
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(len(items), IN_FLIGHT_PER_SERVER * len(clients))) as pool:
            futures = [pool.submit(fn, clients[i % len(clients)], item) for i, item in enumerate(items)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def past_end_room(prompt_len: int, settings: Settings, limit: int | None) -> int:
    """Tokens requested past the continuation: k_max, fewer where the context would overflow (one more
    position is kept free: the draft pass makes its server generate one token)."""
    if limit is None:
        return settings.k_max
    return max(0, min(settings.k_max, limit - prompt_len - settings.max_new_tokens - 1))


def generate(client: VllmClient, ids: list[int], settings: Settings, eos_ids: Sequence[int], room: int) -> Served:
    """The target's greedy continuation of `ids` and up to `room` tokens past its end, in one request."""
    completion, tops = client.complete(ids, settings.max_new_tokens + room, temperature=0.0, logprobs=2,
                                       ignore_eos=True)
    tokens = completion.token_ids
    eos = set(int(e) for e in eos_ids)
    head = tokens[: settings.max_new_tokens]
    ends = [i for i, t in enumerate(head) if t in eos]
    length = ends[0] + 1 if ends else len(head)
    tokens = tokens[: length + room]
    logp, margin = [], []
    for i in range(len(tokens)):
        top = tops[i] if i < len(tops) else None
        logp.append(top.candidates.get(tokens[i], math.nan) if top else math.nan)
        margin.append(top.margin() if top and len(top.candidates) > 1 else math.nan)
    return Served(tokens, length, bool(ends), logp, margin)


def score_remote(client: VllmClient, ids: list[int], served: Served) -> dict[str, np.ndarray]:
    """A served model draft, teacher-forced over prompt + continuation + past-end tokens."""
    entries = client.prompt_logprobs(ids + served.tokens)[len(ids):]
    proposal = np.array([e.top1 for e in entries], dtype=np.int64)
    target = np.array(served.tokens, dtype=np.int64)
    match = (proposal == target)
    return {"draft_token": proposal, "accept_prob": match.astype(np.float32),
            "draft_q": np.exp([e.given_logprob for e in entries]).astype(np.float32),
            "draft_top1_p": np.exp([e.top1_logprob for e in entries]).astype(np.float32)}


def score_local(draft: LocalDraft, ids: list[int], served: Served, k_max: int) -> tuple[dict[str, np.ndarray],
                                                                                        list[list[int]] | None]:
    """A model-free draft's proposals (the transformers engine's `score_ngram_draft` / `score_block_draft`):
    the records and, for a block-dependent draft, its k_max-token proposals from each block start."""
    sequence = ids + served.tokens
    proposals = None
    if draft.proposer is not None:
        every = draft.proposer.propose_every_start(sequence, len(ids), k_max)
        first = np.array([p[0] if p else -1 for p in every], dtype=np.int64)
        proposals = [list(p) for p in every[: served.length]]
    else:
        first = np.asarray(ngram.propose_all(sequence, len(ids), draft.max_ngram), dtype=np.int64)
    target = np.array(served.tokens, dtype=np.int64)
    match = (first == target).astype(np.float32)
    return {"draft_token": first, "accept_prob": match, "draft_q": match,
            "draft_top1_p": (first >= 0).astype(np.float32)}, proposals


def _rows(draft: str, item, served: Served, stats: dict[str, np.ndarray], past: bool) -> pd.DataFrame:
    """tokens.parquet rows (or past_end.parquet rows with `past`) of one draft on one prompt."""
    lo, hi = (served.length, len(served.tokens)) if past else (0, served.length)
    target = np.array(served.tokens[lo:hi], dtype=np.int32)
    proposal = stats["draft_token"][lo:hi].astype(np.int32)
    return pd.DataFrame({
        "draft": draft,
        "prompt_id": item.prompt.id,
        "domain": item.prompt.domain,
        "position": np.arange(lo, hi, dtype=np.int32),
        "target_token": target,
        "draft_token": proposal,
        "match": proposal == target,
        "accept_prob": stats["accept_prob"][lo:hi].astype(np.float32),
        "target_p": np.exp(np.array(served.target_logp[lo:hi], dtype=np.float64)).astype(np.float32),
        "draft_q": stats["draft_q"][lo:hi].astype(np.float32),
        "target_entropy": np.full(hi - lo, np.nan, dtype=np.float32),  # not returned by a server
        "draft_top1_p": stats["draft_top1_p"][lo:hi].astype(np.float32),
    })


def _empty_proposals() -> pd.DataFrame:
    return pd.DataFrame({"draft": pd.Series([], dtype=str), "prompt_id": pd.Series([], dtype=str),
                         "position": pd.Series([], dtype=np.int32), "proposal": pd.Series([], dtype=object)})


def profile_batch(batch: Sequence, spread: Spread, drafts: Sequence[Draft], settings: Settings,
                  eos_ids: Sequence[int], limit: int | None) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """One batch of prompts (items with `.prompt` and `.ids`): the rows of each report table, and the
    seconds spent waiting for the target's continuations and the drafts' passes."""
    started = time.perf_counter()
    served = spread.map(lambda c, item: generate(c, item.ids, settings, eos_ids, past_end_room(len(item.ids),
                                                                                                settings, limit)),
                        batch)
    phase_s = {"generation": time.perf_counter() - started}
    started = time.perf_counter()
    tokens, past, proposals = [], [], []
    for draft in drafts:
        if isinstance(draft, RemoteDraft):
            stats = spread.map(lambda c, pair: score_remote(c, pair[0].ids, pair[1]), list(zip(batch, served)),
                               clients=[draft.client])
            blocks = [None] * len(batch)
        else:
            both = [score_local(draft, item.ids, s, settings.k_max) for item, s in zip(batch, served)]
            stats, blocks = [b[0] for b in both], [b[1] for b in both]
        for item, s, st, every in zip(batch, served, stats, blocks):
            tokens.append(_rows(draft.name, item, s, st, past=False))
            past.append(_rows(draft.name, item, s, st, past=True))
            if every is not None:
                proposals.append(pd.DataFrame({"draft": draft.name, "prompt_id": item.prompt.id,
                                               "position": np.arange(len(every), dtype=np.int32),
                                               "proposal": every}))
    phase_s["draft_passes"] = time.perf_counter() - started
    prompts = pd.DataFrame({
        "prompt_id": [item.prompt.id for item in batch],
        "domain": [item.prompt.domain for item in batch],
        "prompt": [item.prompt.prompt for item in batch],
        "messages": [json.dumps(item.prompt.as_record()["messages"]) if item.prompt.messages is not None else None
                     for item in batch],
        "prompt_tokens": [list(item.ids) for item in batch],
        "n_generated": [s.length for s in served],
        "finish_reason": ["eos" if s.finished_by_eos else "length" for s in served],
        "min_margin": [float(np.nanmin(s.margin[: s.length])) if s.length and not np.all(np.isnan(s.margin[: s.length]))
                       else float("nan") for s in served],
    })
    tables = {"tokens": pd.concat(tokens, ignore_index=True), "prompts": prompts,
              "past_end": pd.concat(past, ignore_index=True),
              "proposals": pd.concat(proposals, ignore_index=True) if proposals else _empty_proposals()}
    return tables, phase_s


def run_profile(batches: Sequence[Sequence], spread: Spread, drafts: Sequence[Draft], settings: Settings,
                eos_ids: Sequence[int], limit: int | None, store: RunStore,
                progress: Callable[[Progress], None] | None = None) -> dict:
    """Profile every batch not yet in `store` (each recorded when done), then write the summary.

    No forward times: run.json's timings are null, and summary.parquet is priced at cost ratio 0
    (a free draft, verification as one target step: an upper bound on the speedup); `recommend`
    prices the report with --cost-ratio or --costs FILE.
    """
    check_settings(settings)
    total = sum(len(b) for b in batches)
    done = store.completed_batches
    done_prompts = sum(len(b) for i, b in enumerate(batches) if i in done)
    done_tokens = 0
    if progress:
        progress(Progress(done_prompts, total, 0))
    for index, batch in enumerate(batches):
        if index in done:
            continue
        tables, phase_s = profile_batch(batch, spread, drafts, settings, eos_ids, limit)
        store.append_batch(index, tables)
        phases = dict(store.run.get("phases_s") or {})
        store.update(phases_s={k: phases.get(k, 0.0) + phase_s.get(k, 0.0) for k in {*phases, *phase_s}})
        done_prompts += len(batch)
        done_tokens += int(tables["prompts"]["n_generated"].sum())
        if progress:
            progress(Progress(done_prompts, total, done_tokens))
    tokens = store.tokens()
    runs = {}
    if any(isinstance(d, LocalDraft) and d.proposer is not None for d in drafts):
        runs = blockdraft.start_runs(store.table("proposals"), tokens[tokens["draft"] == tokens["draft"].iloc[0]],
                                     store.table("past_end"), settings.k_max)
    traces = trace_drafts(tokens, settings.k_max, exact=True, runs=runs)
    summary, blocks = summarize(traces, None, cost_ratio=0.0)
    return store.finish(summary, blocks, None)
