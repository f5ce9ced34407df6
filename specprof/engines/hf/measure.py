"""Measure the forward times the empirical cost model needs, on the hardware the profile runs on.

t_T(n): the target verifying n tokens with a KV cache at a typical context length, n = 1..k_max+1.
t_D: a draft's time per proposed token (one cached forward step; a lookup for n-gram drafts).
Catch-up: after a block whose k proposals were all accepted, the draft has not yet seen its own
last proposal, so its next step feeds 2 tokens; the extra t_D(2) − t_D(1) is measured too
(the loop's catch-up step keeps the last position's logits only: for SmolLM2 on a CPU it costs
about 1.4 single steps; on a GPU about one).
Each figure is the mean of several repeats after warm-up, the fastest and the slowest dropped,
with CUDA synchronised before the clock is read. The mean, not the median: a generation pays
every step, and on a CPU a pass's time is skewed (SmolLM2, 5 tokens in the live loop: median
73 ms, mean 78 ms). Batch size 1 by default: speculative decoding pays off at low batch, and that
is what `verify` measures too. `measure` also times each pass for b sequences at once (the same
context in every row, a KV cache of b × context tokens), the costs at a serving batch of b
(`core/pricing/batchcost.py`); every n of one batch size is measured round-robin under the same load,
and the target and the drafts in turn, ROUNDS times: a profile timed the 26-layer early exit after
the target and priced its step at 0.96 of the target's where in turn it measures 0.83–0.88, which
made `verify`'s speculative iteration 7% cheaper than predicted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from specprof.core.pricing.timings import Timings
from specprof.core.simulation import ngram
from specprof.engines.hf import eagle3
from specprof.engines.hf.drafts import BlockDraft, Draft, HeadDraft, ModelDraft
from specprof.engines.hf.models import clock
from specprof.errors import SpecprofError

WARMUP = 2
REPEATS = 12
ROUNDS = 3  # the target and the drafts are timed in turn, REPEATS / ROUNDS repeats each time

# Batch sizes timed when none are given (`specprof costs`): a CPU's pass grows with the batch at
# once (SmolLM2 verifying 9 tokens for each of 8 sequences: about half a second on a shared core),
# while a GPU's flat region reaches far beyond one stream.
DEFAULT_BATCH_SIZES = {"cpu": (1, 2, 4), "cuda": (1, 4, 16, 64)}


def default_batch_sizes(device: torch.device) -> tuple[int, ...]:
    return DEFAULT_BATCH_SIZES.get(device.type, DEFAULT_BATCH_SIZES["cpu"])


def _typical(seconds: list[float]) -> float:
    """The mean without the fastest and the slowest repeat (a timer hiccup or a stray job)."""
    kept = sorted(seconds)[1:-1] if len(seconds) > 2 else seconds
    return statistics.fmean(kept)


@torch.inference_mode()
def forward_seconds(
    model: torch.nn.Module, context: list[int], ns: list[int], all_logits: bool = True, batch_size: int = 1,
    repeats: int = REPEATS, warmup: int = WARMUP,
) -> dict[int, float]:
    """Seconds for a forward of n new tokens after a cached prefix, for each n in `ns` (`_typical` of the repeats).

    `all_logits`: the pass computes logits at all n positions, as the target's verification does;
    False computes the last position's only, as a draft's catch-up step does (on a CPU the extra
    rows of the output projection are a fifth of a step each for a small model).

    The ns are measured round-robin (n = 1, 2, …, then again), not one n after another: on a
    shared or throttling machine the load drifts, and measuring every n under the same drift keeps
    the ratios t_T(k+1)/t_T(1), which the speedup depends on, honest.

    `batch_size` b: every pass runs b rows of the same context at once (n new tokens each).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    n_max = max(ns)
    ids = torch.tensor([context] * batch_size, dtype=torch.long, device=device)
    prefix, new = ids[:, : ids.shape[1] - n_max], ids[:, ids.shape[1] - n_max :]
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
    times: dict[int, list[float]] = {n: [] for n in ns}
    for i in range(warmup + repeats):
        for n in ns:
            start = clock(device)
            model(input_ids=new[:, :n], cache=cache, use_cache=True, logits_to_keep=n if all_logits else 1)
            if i >= warmup:
                times[n].append(clock(device) - start)
            cache.crop(-n)
    return {n: _typical(t) for n, t in times.items()}


def draft_seconds(draft: Draft, context: list[int], batch_size: int = 1, repeats: int = REPEATS,
                  warmup: int = WARMUP) -> tuple[float, float]:
    """(seconds per proposed token, extra seconds of a 2-token catch-up step); n-gram drafts catch up for free.

    With `batch_size` b: the seconds of one step that proposes a token for each of b sequences."""
    if isinstance(draft, ModelDraft):
        times = forward_seconds(draft.model, context, [1, 2], all_logits=False, batch_size=batch_size,
                                repeats=repeats, warmup=warmup)
        return times[1], max(times[2] - times[1], 0.0)
    return draft_step_seconds(draft, context, batch_size, repeats, warmup), 0.0


def draft_step_seconds(draft: Draft, context: list[int], batch_size: int = 1, repeats: int = REPEATS,
                       warmup: int = WARMUP) -> float:
    """Seconds per proposed token: one cached forward step, or one prompt lookup (b lookups, one per
    sequence, for a batch of b: a lookup runs on the CPU, sequence by sequence)."""
    if isinstance(draft, ModelDraft):
        return forward_seconds(draft.model, context, [1], batch_size=batch_size, repeats=repeats, warmup=warmup)[1]
    if isinstance(draft, HeadDraft):  # an EAGLE-3 head's step: one decoder layer and the draft-vocabulary LM head
        return _typical(eagle3.step_seconds(draft, len(context), batch_size, repeats, warmup))
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        for _ in range(batch_size):
            if isinstance(draft, BlockDraft):
                draft.proposer.propose(context, 1)  # one lookup serves the whole block: priced per token as one
                continue
            ngram.propose_next(context, draft.max_ngram)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return _typical(times)


def measure_at(target: torch.nn.Module, drafts: Sequence[Draft], context: list[int], k_max: int,
               batch_size: int) -> Timings:
    """Every time the cost model needs at one batch size: t_T(n; b) for n = 1..k_max + 1, each draft's
    t_D(b) and catch-up."""
    ns = list(range(1, k_max + 2))
    rounds = []
    try:
        for r in range(ROUNDS):  # the target and the drafts in turn: drift on a shared machine hits both alike
            kw = {"repeats": REPEATS // ROUNDS, "warmup": WARMUP if r == 0 else 1}
            rounds.append((forward_seconds(target, context, ns, batch_size=batch_size, **kw),
                           {d.name: draft_seconds(d, context, batch_size, **kw) for d in drafts}))
    except torch.OutOfMemoryError:
        raise SpecprofError(
            f"--concurrency {batch_size}: out of GPU memory timing {batch_size} sequences of {len(context)} tokens; "
            "choose smaller batch sizes (a profile's records are saved: --resume with other --concurrency finishes it)"
        ) from None
    forward = {n: statistics.fmean(f[n] for f, _ in rounds) for n in ns}
    draft_times = {d.name: (statistics.fmean(t[d.name][0] for _, t in rounds),
                            statistics.fmean(t[d.name][1] for _, t in rounds)) for d in drafts}
    return Timings(
        target_forward_s=tuple(forward[n] for n in ns),
        draft_step_s={name: step for name, (step, _) in draft_times.items()},
        context_tokens=len(context),
        draft_catchup_s={name: catchup for name, (_, catchup) in draft_times.items()},
        batch_size=batch_size,
    )


def with_batch_sizes(one: Timings, target: torch.nn.Module, drafts: Sequence[Draft], context: list[int], k_max: int,
                     batch_sizes: Sequence[int]) -> Timings:
    """`one` (the batch-1 times) with the times at every other batch size in `by_batch_size` (batch 1
    included, as `one`); `one` itself when no other size is asked for."""
    others = sorted(set(batch_sizes) - {1})
    if not others:
        return one
    return replace(one, by_batch_size=(one, *(measure_at(target, drafts, context, k_max, b) for b in others)))


def measure(
    target: torch.nn.Module, drafts: Sequence[Draft], context: list[int], k_max: int,
    batch_sizes: Sequence[int] = (1,),
) -> Timings:
    """The times at batch 1 and, in `by_batch_size`, at every batch size asked for (batch 1 included)."""
    return with_batch_sizes(measure_at(target, drafts, context, k_max, 1), target, drafts, context, k_max, batch_sizes)
