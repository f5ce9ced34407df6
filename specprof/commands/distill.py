"""`specprof distill`, the whole run: SOURCE → sequences → cached frozen states → training → DRAFT_DIR.

SOURCE is a profile report (its prompts and greedy continuations are reused) or a prompt corpus
(continuations are generated first, exactly as `profile` does). The draft is built and trained by
`engines.hf.distill`; this module reads the source, splits held-out prompts (`core.distill_eval`),
times each phase, writes `distill.json` and publishes DRAFT_DIR atomically (a staging directory
beside it, renamed into place), so an interrupted run leaves no half-written model.

Nothing here prints: progress goes through `events(phase, **fields)`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from specprof import __version__
from specprof.core.answers import distill_eval
from specprof.core.flags import check_range
from specprof.core.records.corpus import load_corpus
from specprof.core.records.reportfiles import RUN_JSON, write_json
from specprof.core.records.store import now
from specprof.engines.hf.distill import (
    DraftHead,
    TrainResult,
    assemble_draft,
    check_architecture,
    count_matches,
    save_draft,
    train,
)
from specprof.engines.hf.distill_data import (
    Cached,
    DistillSettings,
    Objective,
    TokenSequence,
    cache_frozen,
    sequences_from_corpus,
    sequences_from_report,
)
from specprof.engines.hf.models import LoadedModel, context_limit
from specprof.engines.hf.prompts import encode_all
from specprof.engines.text import drop_too_long
from specprof.errors import SpecprofError

Events = Callable[..., None]  # events(phase, **fields): "generate", "cache", "train", "save", "notice"

SAVE_RESERVE_S = 20.0  # of --max-minutes, kept for the final evaluation and saving


def is_report(path: Path) -> bool:
    """A profile report directory (or one of its files) rather than a prompt corpus."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    return (directory / RUN_JSON).exists() and (path.is_dir() or path.name in (RUN_JSON, "tokens.parquet",
                                                                                 "prompts.parquet"))


@dataclass(frozen=True)
class Source:
    """What SOURCE holds: a report's sequences (and its target) or a corpus to generate from."""

    path: Path
    kind: Literal["report", "corpus"]
    target_spec: str | None  # the report's target, when SOURCE is a report
    target_fingerprint: str | None
    sequences: list[TokenSequence] | None = None  # report: prompts and greedy continuations
    prompts: list | None = None  # corpus: `corpus.Prompt` records


def read_source(path: Path) -> Source:
    path = Path(path)
    if is_report(path):
        sequences, run = sequences_from_report(path if path.is_dir() else path.parent)
        target = run.get("target") or {}
        return Source(path, "report", target.get("name"), target.get("fingerprint"), sequences=sequences)
    return Source(path, "corpus", None, None, prompts=load_corpus(path))


def check_target(target: LoadedModel, source: Source, layers: int) -> None:
    check_architecture(target.model)
    n = target.num_layers
    if not 1 <= layers < n:
        raise SpecprofError(f"--layers {layers}: must be between 1 and {n - 1} (the target has {n} layers)")
    if source.kind == "report" and source.target_fingerprint and source.target_fingerprint != target.fingerprint:
        raise SpecprofError(
            f"{source.path}: profiled with target {source.target_spec} (fingerprint {source.target_fingerprint}), "
            f"not {target.name} ({target.fingerprint}); pass the report's --target or a prompt corpus"
        )


@dataclass(frozen=True)
class GenerationSettings:
    """How continuations are generated when SOURCE is a corpus (as `profile` does)."""

    batch_size: int  # prompts per batch (`models.default_batch_size` when the user gives none)
    max_new_tokens: int = 128
    chat_template: bool = True


@dataclass(frozen=True)
class DistillResult:
    out_dir: Path
    table: object  # pandas DataFrame from distill_eval.alpha_table: held-out α per domain, before and after
    record: dict  # what distill.json holds


@dataclass(frozen=True)
class DistillRequest:
    """`specprof distill`'s flags (the UI checks ranges and --objective before torch is imported)."""

    source: Path  # a report directory (or a file in it) or a prompt corpus
    out: Path  # DRAFT_DIR
    layers: int
    target: str | None = None  # None: the report's target, or the embedded default for a corpus
    epochs: int = 16
    lr: float | None = None  # None: DEFAULT_LR of the objective
    objective: Objective = "kl"
    max_minutes: float = 12.0
    holdout: float = 0.1
    seed: int = 0
    max_new_tokens: int | None = None  # corpus only
    batch_size: int | None = None  # corpus only
    no_chat_template: bool = False  # corpus only
    device: str = "auto"
    dtype: str = "auto"
    overwrite: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False


def distill(request: DistillRequest, *, started: float | None = None,
            status: Callable[[str], AbstractContextManager[Any]] = lambda message: nullcontext(),
            events: Events | None = None) -> DistillResult:
    """The whole command: check the source, load the target (under `status`), train and publish DRAFT_DIR."""
    from specprof.engines.hf.distill_data import DEFAULT_LR

    lr = DEFAULT_LR[request.objective] if request.lr is None else request.lr
    settings = DistillSettings(layers=request.layers, epochs=request.epochs, objective=request.objective,
                               holdout=request.holdout, seed=request.seed, max_minutes=request.max_minutes, lr=lr)
    source, target, generation = load_inputs(request, status)
    check_target(target, source, request.layers)
    return run_distill(source, target, settings, request.out, generation, started=started,
                       overwrite=request.overwrite, events=events)


def load_inputs(request: DistillRequest, status: Callable[[str], AbstractContextManager[Any]],
                ) -> tuple[Source, LoadedModel, GenerationSettings]:
    """The checked source, the loaded target (under `status`) and the generation settings (both --arch)."""
    from specprof.engines.hf import models

    if is_report(request.source):
        given = [f for f, v in [("--max-new-tokens", request.max_new_tokens), ("--batch-size", request.batch_size),
                                ("--no-chat-template", request.no_chat_template or None)] if v is not None]
        if given:
            raise SpecprofError(f"{given[0]}: only for a prompt corpus; a report's continuations are reused")
    source = read_source(request.source)
    if request.max_new_tokens is not None:
        check_range("--max-new-tokens", request.max_new_tokens, 1)
    if request.batch_size is not None:
        check_range("--batch-size", request.batch_size, 1)
    distill_eval.check_holdout(request.holdout)
    device = models.resolve_device(request.device)
    dtype = models.resolve_dtype(request.dtype, device)
    with status("loading the target…"):
        target = models.load_model(request.target or source.target_spec, device, dtype,
                                   trust_remote_code=request.trust_remote_code, allow_pickle=request.allow_pickle)
    generation = GenerationSettings(batch_size=request.batch_size or models.default_batch_size(device),
                                    max_new_tokens=request.max_new_tokens or 128,
                                    chat_template=not request.no_chat_template)
    return source, target, generation


def run_distill(
    source: Source, target: LoadedModel, settings: DistillSettings, out_dir: Path,
    generation: GenerationSettings, *, started: float | None = None,
    overwrite: bool = False, events: Events | None = None,
) -> DistillResult:
    """Sequences → cached frozen states → training → per-domain held-out α → DRAFT_DIR (see module docstring)."""
    started = time.perf_counter() if started is None else started
    deadline = started + 60 * settings.max_minutes - SAVE_RESERVE_S
    emit = events or (lambda phase, **fields: None)
    staging = _prepare_out(out_dir, overwrite)
    try:
        record, table = _distill(source, target, settings, generation, staging, started, deadline, emit)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    emit("save", done=1)
    return DistillResult(out_dir, table, record)


def _distill(source: Source, target: LoadedModel, settings: DistillSettings, generation: GenerationSettings,
             staging: Path, started: float, deadline: float, emit: Events) -> tuple[dict, object]:
    torch.manual_seed(settings.seed)
    times: dict[str, float] = {}
    clock = time.perf_counter()
    sequences, skipped = _sequences(source, target, generation, emit)
    times["generation_s"] = time.perf_counter() - clock
    # One order whatever the source (a report lists prompts in batch order): the split, the batches
    # and so the trained weights are the same from a report as from its corpus.
    sequences = sorted(sequences, key=lambda s: (s.domain, s.prompt_id))
    held = distill_eval.split_holdout([s.domain for s in sequences], settings.holdout, settings.seed)

    clock = time.perf_counter()
    cached = _cache(target, sequences, settings, emit)
    times["cache_s"] = time.perf_counter() - clock
    train_items = [c for c, h in zip(cached, held) if not h]
    heldout = [c for c, h in zip(cached, held) if h]

    clock = time.perf_counter()
    head = DraftHead(target.model, settings.layers)
    before = count_matches(None, target, heldout)
    result = train(head, target, train_items, heldout, settings, deadline, progress=lambda p: emit("train", progress=p))
    if result.steps == 0:
        emit("notice", message=f"--max-minutes {settings.max_minutes:g}: no training step fit after generation "
             "and caching; the saved draft is the untrained copy (raise --max-minutes)")
    after = count_matches(head, target, heldout)
    times["training_s"] = time.perf_counter() - clock

    emit("save")
    table = distill_eval.alpha_table(before, after)
    draft = assemble_draft(target.model, head, settings.layers)
    save_draft(draft, target.tokenizer, staging)
    times["total_s"] = time.perf_counter() - started
    record = distill_record(source, target, settings, generation, head, draft, result, table, times)
    record["data"] = data_record(sequences, train_items, heldout, skipped)
    write_json(staging / "distill.json", record)
    return record, table


def _sequences(source: Source, target: LoadedModel, generation: GenerationSettings,
               emit: Events) -> tuple[list[TokenSequence], list[str]]:
    """The report's sequences, or the corpus's prompts with the target's continuations generated now."""
    if source.sequences is not None:
        return source.sequences, []
    assert source.prompts is not None  # a corpus source: no sequences, its prompts
    encoded = encode_all(source.prompts, target, generation.chat_template)
    # as `profile` does by default: prompts that do not fit the context with the continuation are skipped
    encoded, skipped = drop_too_long(encoded, [context_limit(target)], generation.max_new_tokens, "skip")
    if skipped:
        emit("notice", message=f"skipped {len(skipped)} prompt(s) longer than the model context: "
             + ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""))
    emit("generate", done=0, total=len(encoded), tokens=0)
    sequences = sequences_from_corpus(
        encoded, target, generation.max_new_tokens, generation.batch_size,
        progress=lambda done, tokens: emit("generate", done=done, total=len(encoded), tokens=tokens),
    )
    return sequences, skipped


def _cache(target: LoadedModel, sequences: Sequence[TokenSequence], settings: DistillSettings,
           emit: Events) -> list[Cached]:
    """Run the frozen layers once over every sequence, reporting progress in prompts."""
    done = 0
    emit("cache", done=0, total=len(sequences))

    def cached_some(n: int) -> None:
        nonlocal done
        done += n
        emit("cache", done=done, total=len(sequences))

    return cache_frozen(target, sequences, settings, progress=cached_some)


def distill_record(source: Source, target: LoadedModel, settings: DistillSettings, generation: GenerationSettings,
                   head: DraftHead, draft: torch.nn.Module, result: TrainResult, table: Any,
                   times: dict[str, float]) -> dict:
    """What distill.json holds besides the data sizes: versions, models, settings, training, α, times."""
    return {
        "specprof_version": __version__,
        "created_at": now(),
        "source": {"path": str(source.path), "kind": source.kind},
        "target": target.describe(),
        "draft": {
            "layers": settings.layers + 1,
            "frozen_layers": settings.layers,
            "trainable_parameters": sum(p.numel() for p in head.trainable()),
            "parameters": sum(p.numel() for p in draft.parameters()),
        },
        "device": str(next(target.model.parameters()).device),
        "dtype": str(next(target.model.parameters()).dtype).removeprefix("torch."),
        "settings": {**settings.__dict__, **({} if source.kind == "report" else {"generation": generation.__dict__})},
        "data": {},
        "training": {
            "steps": result.steps,
            "epochs": round(result.epochs_run, 3),
            "stopped_by": result.stopped,
            "best_step": result.best_step,
            "tokens_per_s": result.train_tokens_per_s,
            "history": result.history,
        },
        "heldout_alpha": table.to_dict(orient="records"),
        "time_s": times,
    }


def data_record(sequences: Sequence[TokenSequence], train_items: Sequence[Cached], heldout: Sequence[Cached],
                skipped: Sequence[str]) -> dict:
    """How much data the draft saw and which prompts were held out."""
    return {
        "prompts": len(sequences),
        "train_prompts": len(train_items),
        "heldout_prompts": len(heldout),
        "heldout_prompt_ids": [c.prompt_id for c in heldout],
        "skipped_prompts": list(skipped),
        "train_positions": sum(len(c.positions) for c in train_items),
        "train_continuation_tokens": sum(int(c.scored.sum()) for c in train_items),
        "heldout_tokens": sum(int(c.scored.sum()) for c in heldout),
    }


def _prepare_out(out_dir: Path, overwrite: bool) -> Path:
    """Refuse a non-empty DRAFT_DIR unless `overwrite`; return a staging directory beside it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecprofError(f"--out {out_dir}: exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise SpecprofError(f"--out {out_dir}: directory is not empty; pass --overwrite to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a model directory is read by servers
        return staging
    except OSError as e:
        raise SpecprofError(f"--out {out_dir}: cannot create the directory ({e.strerror or e})") from None


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished draft into place: DRAFT_DIR appears whole or not at all."""
    if out_dir.exists():
        old = staging.with_name(staging.name + ".old")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
