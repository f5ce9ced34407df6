"""Measure the forward times the empirical cost model needs, on the hardware the profile runs on.

t_T(n): the target verifying n tokens with a KV cache at a typical context length, n = 1..k_max+1.
t_D: a draft's time per proposed token (one cached forward step; a lookup for n-gram drafts).
Each figure is the median of several repeats after warm-up, with CUDA synchronised before the
clock is read. Batch size 1: speculative decoding pays off at low batch, and that is what
`verify` measures too.
"""

from __future__ import annotations

import statistics
import time

import torch

from specprof import ngram
from specprof.drafts import Draft, ModelDraft

WARMUP = 2
REPEATS = 7


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def forward_seconds(model: torch.nn.Module, context: list[int], ns: list[int]) -> dict[int, float]:
    """Median seconds for a forward of n new tokens after a cached prefix, for each n in `ns`."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    n_max = max(ns)
    ids = torch.tensor([context], dtype=torch.long, device=device)
    prefix, new = ids[:, : ids.shape[1] - n_max], ids[:, ids.shape[1] - n_max :]
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
    result = {}
    for n in ns:
        times = []
        for i in range(WARMUP + REPEATS):
            _sync(device)
            start = time.perf_counter()
            model(input_ids=new[:, :n], cache=cache, use_cache=True, logits_to_keep=n)
            _sync(device)
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
            cache.crop(-n)
        result[n] = statistics.median(times)
    return result


def draft_step_seconds(draft: Draft, context: list[int]) -> float:
    """Seconds per proposed token: one cached forward step, or one prompt lookup."""
    if isinstance(draft, ModelDraft):
        return forward_seconds(draft.model, context, [1])[1]
    times = []
    for i in range(WARMUP + REPEATS):
        start = time.perf_counter()
        ngram.propose_next(context, draft.max_ngram)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
