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
73 ms, mean 78 ms). Batch size 1: speculative decoding pays off at low batch, and that is what
`verify` measures too.
"""

from __future__ import annotations

import statistics
import time

import torch

from specprof.core import ngram
from specprof.engines.hf.drafts import BlockDraft, Draft, ModelDraft

WARMUP = 2
REPEATS = 12


def _typical(seconds: list[float]) -> float:
    """The mean without the fastest and the slowest repeat (a timer hiccup or a stray job)."""
    kept = sorted(seconds)[1:-1] if len(seconds) > 2 else seconds
    return statistics.fmean(kept)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def forward_seconds(
    model: torch.nn.Module, context: list[int], ns: list[int], all_logits: bool = True
) -> dict[int, float]:
    """Seconds for a forward of n new tokens after a cached prefix, for each n in `ns` (`_typical` of the repeats).

    `all_logits`: the pass computes logits at all n positions, as the target's verification does;
    False computes the last position's only, as a draft's catch-up step does (on a CPU the extra
    rows of the output projection are a fifth of a step each for a small model).

    The ns are measured round-robin (n = 1, 2, …, then again), not one n after another: on a
    shared or throttling machine the load drifts, and measuring every n under the same drift keeps
    the ratios t_T(k+1)/t_T(1), which the speedup depends on, honest.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    n_max = max(ns)
    ids = torch.tensor([context], dtype=torch.long, device=device)
    prefix, new = ids[:, : ids.shape[1] - n_max], ids[:, ids.shape[1] - n_max :]
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
    times: dict[int, list[float]] = {n: [] for n in ns}
    for i in range(WARMUP + REPEATS):
        for n in ns:
            _sync(device)
            start = time.perf_counter()
            model(input_ids=new[:, :n], cache=cache, use_cache=True, logits_to_keep=n if all_logits else 1)
            _sync(device)
            if i >= WARMUP:
                times[n].append(time.perf_counter() - start)
            cache.crop(-n)
    return {n: _typical(t) for n, t in times.items()}


def draft_seconds(draft: Draft, context: list[int]) -> tuple[float, float]:
    """(seconds per proposed token, extra seconds of a 2-token catch-up step); n-gram drafts catch up for free."""
    if isinstance(draft, ModelDraft):
        times = forward_seconds(draft.model, context, [1, 2], all_logits=False)
        return times[1], max(times[2] - times[1], 0.0)
    return draft_step_seconds(draft, context), 0.0


def draft_step_seconds(draft: Draft, context: list[int]) -> float:
    """Seconds per proposed token: one cached forward step, or one prompt lookup."""
    if isinstance(draft, ModelDraft):
        return forward_seconds(draft.model, context, [1])[1]
    times = []
    for i in range(WARMUP + REPEATS):
        start = time.perf_counter()
        if isinstance(draft, BlockDraft):
            draft.proposer.propose(context, 1)  # one lookup serves the whole block: priced per token as one
        else:
            ngram.propose_next(context, draft.max_ngram)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return _typical(times)
