"""Shared set-up for the benchmark scripts: load the embedded target once, pick prompts, time a call."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def quiet() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_target(device: str = "auto", dtype: str = "auto"):
    from specprof.engines.hf import models

    quiet()
    dev = models.resolve_device(device)
    return models.load_model(None, dev, models.resolve_dtype(dtype, dev))


def prompts(limit: int):
    from specprof.core.records.corpus import load_corpus

    return load_corpus(Path(__file__).resolve().parent.parent / "sample_prompts", limit=limit)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def run_profile(target, draft_specs, corpus, settings):
    """One full `profile` (generation, draft passes, timings, summary, report files) into a temp dir."""
    from specprof.core.records.store import RunStore
    from specprof.engines.hf import drafts, profiler

    device = next(target.model.parameters()).device
    dtype = next(target.model.parameters()).dtype
    loaded = [drafts.load_draft(s, target, device, dtype) for s in draft_specs]
    with tempfile.TemporaryDirectory() as out:
        store = RunStore.create(Path(out) / "r", {"benchmark": True})
        return profiler.run_profile(corpus, target, loaded, settings, store)


def environment(target) -> dict:
    p = next(target.model.parameters())
    return {
        "device": str(p.device),
        "dtype": str(p.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "target": target.name,
        "target_parameters": sum(x.numel() for x in target.model.parameters()),
    }


def emit(table: list[tuple[str, str]], record: dict) -> None:
    """A table for people, then one JSON line last for scripts."""
    width = max(len(k) for k, _ in table)
    for key, value in table:
        print(f"{key:<{width}}  {value}")
    print(json.dumps(record))
