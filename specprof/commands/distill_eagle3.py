"""`specprof distill --arch eagle3`: SOURCE → the target's continuations and captured states → a trained
EAGLE-3 head in a directory vLLM serves ({"method": "eagle3"}) and `profile --draft eagle3:DIR` reads.

The same source handling, held-out split, atomic publishing and before/after table as `distill`
(`commands.distill`); the head and its training are `engines.hf.distill_eagle3`. "Before" is the
untrained head (the target's last layer reading its deepest captured layer), "after" the trained one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from specprof import __version__
from specprof.commands.distill import (
    SAVE_RESERVE_S,
    DistillRequest,
    DistillResult,
    Events,
    GenerationSettings,
    Source,
    _prepare_out,
    _publish,
    _sequences,
    load_inputs,
)
from specprof.core.answers import distill_eval
from specprof.core.records.reportfiles import write_json
from specprof.core.vocabulary import EAGLE3
from specprof.engines.hf import distill_eagle3 as de
from specprof.engines.hf.models import LoadedModel


def distill_eagle3(request: DistillRequest, *, started: float | None = None,
                   status: Callable[[str], AbstractContextManager[Any]] = lambda message: nullcontext(),
                   events: Events | None = None) -> DistillResult:
    """The whole `distill --arch eagle3` run (`request.layers` unused): load as `distill` does, train, publish."""
    source, target, generation = load_inputs(request, status)
    return run_distill_eagle3(source, target, request.out, generation, max_minutes=request.max_minutes,
                              holdout=request.holdout, seed=request.seed, started=started,
                              overwrite=request.overwrite, events=events)


def run_distill_eagle3(source: Source, target: LoadedModel, out_dir: Path, generation: GenerationSettings, *,
                       max_minutes: float, holdout: float, seed: int, started: float | None = None,
                       overwrite: bool = False, events: Events | None = None) -> DistillResult:
    started = time.perf_counter() if started is None else started
    deadline = started + 60 * max_minutes - SAVE_RESERVE_S
    emit = events or (lambda phase, **fields: None)
    staging = _prepare_out(out_dir, overwrite)
    try:
        torch.manual_seed(seed)
        sequences, skipped = _sequences(source, target, generation, emit)
        sequences = sorted(sequences, key=lambda s: (s.domain, s.prompt_id))
        held = distill_eval.split_holdout([s.domain for s in sequences], holdout, seed)
        emit("cache", done=0, total=len(sequences))
        ids = de.aux_layers(target.num_layers)
        items = de.items_of(target, sequences, ids)
        emit("cache", done=len(sequences), total=len(sequences))
        train_items = [it for it, h in zip(items, held, strict=True) if not h]
        heldout = [it for it, h in zip(items, held, strict=True) if h]
        config: Any = target.model.config
        head = de.initial_head(target, ids, de.draft_vocabulary(target, train_items, int(config.vocab_size)))
        before = [distill_eval.DomainCounts(it.domain, *de.depth1_matches(head, it)) for it in heldout]
        result = de.train(head, train_items, heldout, deadline, lambda p: emit("train", progress=p), seed=seed)
        if result["steps"] == 0:
            emit("notice", message=f"--max-minutes {max_minutes:g}: no training step fit after generation and "
                 "caching; the saved head is the untrained one (raise --max-minutes)")
        after = [distill_eval.DomainCounts(it.domain, *de.depth1_matches(head, it)) for it in heldout]
        emit("save")
        de.save_head(head, staging)
        table = distill_eval.alpha_table(before, after)
        record = {"specprof_version": __version__, "arch": EAGLE3, "target": target.describe(),
                  "aux_layers": list(ids), "draft_vocab_size": head.config.draft_vocab_size,
                  "training": {**result, "unroll": de.UNROLL},
                  "data": {"prompts": len(sequences), "heldout_prompts": len(heldout), "skipped": skipped},
                  "heldout_alpha": {"before": de.alpha([(c.tokens, c.matches) for c in before]),
                                    "after": de.alpha([(c.tokens, c.matches) for c in after])},
                  "time_s": {"total_s": time.perf_counter() - started}}
        write_json(staging / "distill.json", record)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    emit("save", done=1)
    return DistillResult(out_dir, table, record)
