"""Orchestrate a profile: one batched target generation, one teacher-forced pass per draft, records.

For each batch of prompts (sorted by length so padding stays small):
  1. the target generates its continuations once (`generation`), greedy or sampled;
  2. each draft scores every continuation position in one teacher-forced pass: its proposal for
     y[t] given the prompt and y[:t], the probability it gives y[t], its top-1 probability and,
     when sampling, β = Σ min(p, q) against the target's distribution at that position;
  3. the batch's rows are appended to the run's part files.
Scoring a draft is `scoring`'s job. Then forward times are measured, and `tables` turns the
records into blocks for every k.

The target also generates k_max tokens past each continuation's end, and every draft is scored
there too: those rows go to past_end.parquet, apart from tokens.parquet, so they never enter α,
the blocks or the continuation (engines count acceptances there: `core.conventions`). A
block-dependent draft (`BlockDraft`, an engine's prompt lookup; an EAGLE-3 head) runs from every start;
its k_max-token proposals go to proposals.parquet, and tokens.parquet holds the first of each.

Progress is reported through a callback; nothing here prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from specprof.core.pricing.tables import summarize
from specprof.core.pricing.timings import Timings
from specprof.core.records.corpus import Prompt
from specprof.core.records.store import RunStore
from specprof.core.simulation.blockdraft import start_runs
from specprof.core.simulation.traces import trace_drafts
from specprof.engines.hf import measure, sampling
from specprof.engines.hf.drafts import BlockDraft, Draft, HeadDraft, ModelDraft
from specprof.engines.hf.generation import Generation, generate
from specprof.engines.hf.models import LoadedModel, clock, context_limit, eos_token_ids
from specprof.engines.hf.prompts import context_limit_of, encode_all
from specprof.engines.hf.scoring import (
    check_finite,
    proposal_rows,
    score_block_draft,
    score_model_draft,
    score_ngram_draft,
    token_rows,
)
from specprof.engines.text import Encoded, drop_too_long, make_batches
from specprof.errors import SpecprofError


@dataclass(frozen=True)
class Settings:
    batch_size: int  # prompts per batch (`models.default_batch_size` when the user gives none)
    k_max: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    chat_template: bool = True
    responses: str = "generate"  # "logged": teacher-force the target over the corpus's logged responses (`teacher`)


@dataclass(frozen=True)
class ProfileProgress:
    prompts_done: int
    prompts_total: int
    tokens_done: int  # target tokens generated so far


@dataclass
class BatchResult:
    tokens: pd.DataFrame  # rows of tokens.parquet
    prompts: pd.DataFrame  # rows of prompts.parquet
    past_end: pd.DataFrame  # rows of past_end.parquet
    proposals: pd.DataFrame  # rows of proposals.parquet
    phase_s: dict[str, float] = field(default_factory=dict)  # seconds of the target's pass and of the drafts'
    logged: dict[str, dict] | None = None  # logged responses: per-prompt agreement rows (`teacher.agreement_rows`)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"tokens": self.tokens, "prompts": self.prompts, "past_end": self.past_end,
                "proposals": self.proposals}


def profile_batch(
    batch: Sequence[Encoded], target: LoadedModel, drafts: Sequence[Draft], settings: Settings
) -> BatchResult:
    ids = [e.prompt.id for e in batch]
    capture = sorted({d.layers for d in drafts if isinstance(d, ModelDraft) and d.layers})
    aux = sorted({n for d in drafts if isinstance(d, HeadDraft) for n in d.head.aux_layers})  # at every position
    started = time.perf_counter()
    gen = target_continuations(batch, target, settings, capture, aux)
    phase_s = {"target_pass" if settings.responses == "logged" else "generation": _elapsed(started, gen)}
    started = time.perf_counter()
    valid = gen.valid  # [B, T] the continuations
    past = gen.scored & ~valid  # [B, T] the positions past their ends
    check_finite(gen.target_p, gen.scored, ids, "target")

    frames, past_frames, proposal_frames = [], [], []
    for draft in drafts:
        if isinstance(draft, ModelDraft):
            stats = score_model_draft(draft, gen, settings)
        elif isinstance(draft, BlockDraft | HeadDraft):  # simulated from every block start
            stats, proposals = score_block_draft(draft, gen, [e.ids for e in batch], settings)
            proposal_frames.append(proposal_rows(draft.name, batch, gen, proposals))
        else:
            stats = score_ngram_draft(draft, gen, [e.ids for e in batch], settings)
        check_finite(stats["draft_top1_p"], gen.scored, ids, draft.name)
        frames.append(token_rows(draft.name, batch, gen, stats, valid))
        past_frames.append(token_rows(draft.name, batch, gen, stats, past))
    phase_s["draft_passes"] = _elapsed(started, gen)

    prompts = pd.DataFrame(
        {
            "prompt_id": ids,
            "domain": [e.prompt.domain for e in batch],
            "prompt": [e.prompt.prompt for e in batch],
            "messages": [
                json.dumps(e.prompt.as_record()["messages"]) if e.prompt.messages is not None else None
                for e in batch
            ],
            "prompt_tokens": [e.ids for e in batch],
            "n_generated": gen.lengths,
            "finish_reason": getattr(gen, "finish_reasons", None)  # logged responses may end at a disagreement
            or ["eos" if f else "length" for f in gen.finished_by_eos],
            "min_margin": [
                float(gen.margin[i, : gen.lengths[i]].min()) if gen.lengths[i] else float("nan")
                for i in range(len(batch))
            ],
        }
    )
    logged = None
    if settings.responses == "logged":
        from specprof.engines.hf import teacher

        logged = teacher.agreement_rows([e.prompt for e in batch], gen)
    return BatchResult(pd.concat(frames, ignore_index=True), prompts, pd.concat(past_frames, ignore_index=True),
                       pd.concat(proposal_frames, ignore_index=True) if proposal_frames else _no_proposals(),
                       phase_s, logged)


def target_continuations(batch: Sequence[Encoded], target: LoadedModel, settings: Settings,
                          capture: Sequence[int], aux: Sequence[int] = ()) -> Generation:
    """The target's continuations of a batch: generated (with k_max tokens past each end), or read off
    the logged responses by one teacher-forced pass (`teacher`)."""
    eos = eos_token_ids(target)
    if settings.responses == "logged":
        from specprof.engines.hf import teacher

        # A logged response has no tokens past its end: engine counters then count what the log holds.
        return teacher.target_pass(
            target.model, [e.ids for e in batch], [e.response_ids for e in batch],
            max_new_tokens=settings.max_new_tokens, eos_ids=eos, pad_id=eos[0] if eos else 0,
            temperature=settings.temperature, top_p=settings.top_p, capture_layers=capture,
        )
    generators = sampling.make_generators(settings.seed, [e.prompt.id for e in batch]) if settings.temperature > 0 \
        else None
    return generate(
        target.model, [e.ids for e in batch], max_new_tokens=settings.max_new_tokens, eos_ids=eos,
        pad_id=eos[0] if eos else 0, temperature=settings.temperature, top_p=settings.top_p, generators=generators,
        capture_layers=capture, aux_layers=aux, past_end=past_end_room(batch, target, settings),
    )


def _elapsed(started: float, gen: Generation) -> float:
    """Seconds since `started`, once the device has finished the work queued so far."""
    return clock(gen.sequences.device) - started


def _no_proposals() -> pd.DataFrame:
    return pd.DataFrame({"draft": pd.Series([], dtype=str), "prompt_id": pd.Series([], dtype=str),
                         "position": pd.Series([], dtype=np.int32), "proposal": pd.Series([], dtype=object)})


def past_end_room(batch: Sequence[Encoded], target: LoadedModel, settings: Settings) -> int:
    """Tokens to generate past the end: k_max, fewer where the longest prompt would outrun the context."""
    limit = context_limit(target)
    if limit is None:
        return settings.k_max
    longest = max(len(e.ids) for e in batch)
    return max(0, min(settings.k_max, limit - longest - settings.max_new_tokens))


def typical_context(encoded: Sequence[Encoded], generated: Sequence[int]) -> int:
    """Median prompt length plus half the median continuation: where a verification step usually sits."""
    return int(np.median([len(e.ids) for e in encoded]) + np.median(generated) / 2) if encoded else 0


def measure_timings(
    target: LoadedModel, drafts: Sequence[Draft], context: list[int], k_max: int, batch_sizes: Sequence[int] = (1,)
) -> Timings:
    """The forward times at batch 1 and, with `batch_sizes`, at each serving batch size too."""
    return measure.measure(target.model, drafts, context, k_max, batch_sizes)


def timing_context(encoded: Sequence[Encoded], tokens: pd.DataFrame, k_max: int) -> list[int]:
    """A real prompt + continuation cut to the typical context length (at least k_max + 2 tokens)."""
    first_draft = tokens["draft"].iloc[0]
    rows = tokens[tokens["draft"] == first_draft]
    generated = rows.groupby("prompt_id", sort=False)["position"].max() + 1
    want = max(typical_context(encoded, generated.tolist()), k_max + 2)
    by_id = {e.prompt.id: e.ids for e in encoded}
    longest = max(encoded, key=lambda e: len(e.ids) + int(generated.get(e.prompt.id, 0)))
    continuation = rows[rows["prompt_id"] == longest.prompt.id].sort_values("position")["target_token"]
    sequence = by_id[longest.prompt.id] + continuation.astype(int).tolist()
    while len(sequence) < want:
        sequence = sequence + sequence  # a short corpus: repeat real tokens to reach the length
    return sequence[:want]


ProgressCallback = Callable[[ProfileProgress], None]


@dataclass(frozen=True)
class ProfileResult:
    out_dir: str
    summary: pd.DataFrame
    run: dict


NoticeCallback = Callable[[str], None]


def profile_batch_adaptive(
    batch: Sequence[Encoded],
    target: LoadedModel,
    drafts: Sequence[Draft],
    settings: Settings,
    size: int,
    notice: NoticeCallback,
) -> tuple[BatchResult, int]:
    """`profile_batch` in sub-batches of `size`, halving `size` on CUDA out-of-memory down to 1.

    Returns the result and the size that worked, which the following batches start from.
    """
    while True:
        try:
            parts = [profile_batch(batch[i : i + size], target, drafts, settings) for i in range(0, len(batch), size)]
        except torch.OutOfMemoryError:
            if size == 1:
                raise SpecprofError(
                    f"out of GPU memory at batch size 1 (prompt {batch[0].prompt.id}); "
                    "lower --max-new-tokens or use --dtype bfloat16"
                ) from None
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            notice("CUDA out of memory: halving the batch size until it fits (run.json records the final size)")
            continue
        return BatchResult(
            *(pd.concat([getattr(p, name) for p in parts], ignore_index=True)
              for name in ("tokens", "prompts", "past_end", "proposals")),
            {k: sum(p.phase_s.get(k, 0.0) for p in parts) for k in parts[0].phase_s},
            {k: v for p in parts for k, v in (p.logged or {}).items()} if parts[0].logged is not None else None,
        ), size


def run_profile(
    prompts: Sequence[Prompt],
    target: LoadedModel,
    drafts: Sequence[Draft],
    settings: Settings,
    store: RunStore,
    progress: ProgressCallback | None = None,
    notice: NoticeCallback | None = None,
    too_long: str = "skip",
    prepared: tuple[list[Encoded], list[str]] | None = None,
    batch_sizes: Sequence[int] = (1,),
) -> ProfileResult:
    """Profile every prompt with every draft, measure timings and write the finished report.

    Batches already recorded in `store` (a resumed run) are skipped; each new batch is recorded as
    soon as it is done, so an interruption loses at most the batch in flight. `batch_sizes`: the
    serving batch sizes to time the cost model at (`profile --concurrency`; batch 1 always).
    """
    # Long on purpose: the batch loop with resume, OOM halving and progress, then the closing steps, in order.
    said: set[str] = set()

    def say(message: str) -> None:
        if notice and message not in said:
            said.add(message)
            notice(message)

    encoded, skipped = prepared or prepare(prompts, target, drafts, settings, too_long)
    if skipped:
        say(f"skipped {len(skipped)} prompt(s) longer than the model context: {', '.join(skipped[:5])}"
            + (" …" if len(skipped) > 5 else ""))
    store.update(skipped_prompts=skipped)
    batches = make_batches(encoded, settings.batch_size)
    done = store.completed_batches
    done_prompts = sum(len(b) for i, b in enumerate(batches) if i in done)
    done_tokens = 0
    size = int(store.run.get("final_batch_size") or settings.batch_size)
    if progress:
        progress(ProfileProgress(done_prompts, len(encoded), 0))
    for index, batch in enumerate(batches):
        if index in done:
            continue
        result, new_size = profile_batch_adaptive(batch, target, drafts, settings, size, say)
        if new_size != size:
            size = new_size
            store.update(final_batch_size=size)
        store.append_batch(index, result.tables())
        add_phases(store, result.phase_s)
        if result.logged is not None:
            record_agreement(store, result.logged, settings.temperature == 0)
        done_prompts += len(batch)
        done_tokens += int(result.prompts["n_generated"].sum())
        if progress:
            progress(ProfileProgress(done_prompts, len(encoded), done_tokens))
    store.update(final_batch_size=size)
    tokens = store.tokens()
    started = time.perf_counter()
    measured = measure_timings(target, drafts, timing_context(encoded, tokens, settings.k_max), settings.k_max,
                               batch_sizes)
    add_phases(store, {"cost_timing": time.perf_counter() - started})
    runs = {}
    if settings.temperature == 0 and any(isinstance(d, BlockDraft | HeadDraft) for d in drafts):
        runs = start_runs(store.table("proposals"), tokens[tokens["draft"] == tokens["draft"].iloc[0]],
                          store.table("past_end"), settings.k_max)
    traces = trace_drafts(tokens, settings.k_max, exact=settings.temperature == 0, runs=runs)
    summary_frame, blocks_frame = summarize(traces, measured)
    run = store.finish(summary_frame, blocks_frame, measured)
    return ProfileResult(str(store.directory), summary_frame, run)


def add_phases(store: RunStore, seconds: dict[str, float]) -> None:
    """Add to run.json's `phases_s`: seconds spent loading, timing costs, in the target's and the drafts' passes."""
    phases = dict(store.run.get("phases_s") or {})
    for name, s in seconds.items():
        phases[name] = phases.get(name, 0.0) + s
    store.update(phases_s=phases)


def record_agreement(store: RunStore, rows: dict[str, dict], greedy: bool) -> None:
    """Keep a batch's logged-response agreement in run.json; refuse logs that are not the target's greedy trace."""
    from specprof.core.records import logs

    per_prompt = {**(store.run.get("logged_responses") or {}).get("prompts", {}), **rows}
    store.update(logged_responses={**logs.agreement_summary(per_prompt), "prompts": per_prompt})
    logs.check_agreement(logs.pool_agreement(per_prompt), greedy)


def prepare(
    prompts: Sequence[Prompt], target: LoadedModel, drafts: Sequence[Draft], settings: Settings, too_long: str
) -> tuple[list[Encoded], list[str]]:
    """Tokenize the prompts and set aside (or refuse) those that do not fit every model's context."""
    if settings.responses == "logged":
        from specprof.engines.hf import teacher

        return teacher.prepare_logged(prompts, target, drafts, settings, too_long)
    encoded = encode_all(prompts, target, settings.chat_template)
    limits = [context_limit(target)] + [context_limit_of(d) for d in drafts]
    return drop_too_long(encoded, limits, settings.max_new_tokens, too_long)


# The settings run.json records, in this order (resume and compare read them).
SETTINGS_RECORDED = ("k_max", "max_new_tokens", "temperature", "top_p", "seed", "batch_size", "chat_template")


def describe_run(
    target: LoadedModel,
    drafts: Sequence[Draft],
    settings: Settings,
    prompts: Sequence[Prompt],
    corpus_path: str,
    domains: Sequence[str],
    limit: int | None,
    device: torch.device,
    dtype: torch.dtype,
) -> dict:
    """What run.json records about a run; `store.IDENTITY` names the entries a resume must match."""
    from specprof.core.records.corpus import fingerprint

    return {
        "target": target.describe(),
        "drafts": [d.info for d in drafts],
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
        "settings": {
            **{name: getattr(settings, name) for name in SETTINGS_RECORDED},
            # only when logged: a generating run's settings stay those of earlier releases (resume, compare)
            **({"responses": settings.responses} if settings.responses != "generate" else {}),
        },
        "corpus": {"path": corpus_path, "domains": list(domains), "limit": limit, "n_prompts": len(prompts)},
        "corpus_fingerprint": fingerprint(prompts),
    }
