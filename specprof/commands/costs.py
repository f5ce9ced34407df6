"""`specprof costs`: measure the cost model's forward times on this machine, without a corpus run.

Acceptance is a property of the target, the draft and the traffic; costs are a property of the
hardware. This command times a target and its drafts (t_T(n; b) for n = 1..k_max + 1, t_D(b) and
the catch-up, at each serving batch size b) and writes them as a small run.json-like file
(`costs.json`: the models, device, dtype and the same "timings" object a report holds), so
`recommend REPORT --costs FILE` can price a report profiled elsewhere with this machine's costs.

The KV cache holds a typical context: `--context-tokens`, or the median prompt of `--prompts`
(with the chat template) plus half of `max_new_tokens`, as `profile` takes it from its own run.
What this module does not do: generate, read a report, or decide anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specprof import __version__
from specprof.core.pricing import batchcost
from specprof.core.pricing.timings import Timings
from specprof.core.records import reportfiles, schema
from specprof.engines.hf import measure
from specprof.engines.hf.drafts import Draft
from specprof.engines.hf.models import LoadedModel
from specprof.engines.text import encode_prompt
from specprof.errors import SpecprofError

DEFAULT_CONTEXT = 256  # tokens in the KV cache when no corpus is given: a short chat turn and its answer
HALF_ANSWER = 64  # profile's default 128 new tokens, half generated at a typical verification step


@dataclass(frozen=True)
class CostsRequest:
    """`specprof costs`' flags, checked by the UI (ranges, batch sizes) before torch is imported."""

    target: str | None  # None: the embedded default
    drafts: tuple[str, ...]
    k_max: int
    batch_sizes: tuple[int, ...]  # () : `measure.default_batch_sizes` of the device
    context_tokens: int | None  # None: from `prompts`, else DEFAULT_CONTEXT
    prompts: tuple[Any, ...]  # `corpus.Prompt` records to take the context from (may be empty)
    chat_template: bool
    device: str
    dtype: str
    out: Path  # a .json file or a directory
    overwrite: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False


@dataclass(frozen=True)
class CostsResult:
    path: Path  # the costs file written
    record: dict[str, Any]  # what it holds (`costs --json` prints it)
    timings: Timings  # the measured times, per batch size


Status = Callable[[str], AbstractContextManager[Any]]  # status("loading models…"): a spinner while it runs


def run(request: CostsRequest, status: Status = lambda message: nullcontext()) -> CostsResult:
    """Load the target and drafts, time them at each batch size, and write the costs file."""
    from specprof.engines.hf import drafts, models

    path = out_path(request.out)
    if path.exists() and not request.overwrite:
        raise SpecprofError(f"--out {path}: exists (pass --overwrite to replace it)")
    drafts.check_specs(request.drafts, request.target, request.trust_remote_code)
    device = models.resolve_device(request.device)
    dtype = models.resolve_dtype(request.dtype, device)
    with status("loading models…"):
        target, loaded = drafts.load_target_and_drafts(request.target, request.drafts, device, dtype,
                                                       request.trust_remote_code, request.allow_pickle)
    context = timing_context(target, request.context_tokens, request.prompts, request.chat_template, request.k_max)
    sizes = request.batch_sizes or measure.default_batch_sizes(device)
    with status(f"timing batch sizes {', '.join(map(str, sizes))}…"):
        record, measured = measure_costs(target, loaded, context, request.k_max, sizes, device, dtype)
    write_costs(path, record)
    return CostsResult(path, record, measured)


def out_path(out: str | Path) -> Path:
    """`--out FILE.json`, or a directory (made if needed) to hold costs.json."""
    out = Path(out)
    if out.suffix.lower() == ".json" and not out.is_dir():
        if not out.parent.is_dir():
            raise SpecprofError(f"--out {out}: directory {out.parent} does not exist")
        return out
    if out.exists() and not out.is_dir():
        raise SpecprofError(f"--out {out}: exists and is not a directory (give a .json file or a directory)")
    out.mkdir(parents=True, exist_ok=True)
    return out / batchcost.COSTS_JSON


def timing_context(target: LoadedModel, context_tokens: int | None, prompts: Sequence[Any], chat_template: bool,
                   k_max: int) -> list[int]:
    """Token ids for the KV cache: real prompt tokens (repeated to length) or a spread of the vocabulary."""
    encoded = [encode_prompt(target.tokenizer, p, chat_template) for p in prompts]
    if context_tokens is None:
        context_tokens = int(np.median([len(e) for e in encoded])) + HALF_ANSWER if encoded else DEFAULT_CONTEXT
    want = max(context_tokens, k_max + 2)
    if encoded:
        sequence = [t for e in sorted(encoded, key=len, reverse=True) for t in e]
    else:
        # nn.Module's __getattr__ is typed Tensor | Module; `config` is the transformers model's attribute
        vocab = int(target.model.config.get_text_config().vocab_size)  # pyright: ignore[reportCallIssue, reportAttributeAccessIssue]
        sequence = [(1000 + 7919 * i) % vocab for i in range(want)]  # distinct-looking ids, no repeats to look up
    while len(sequence) < want:
        sequence = sequence + sequence
    return sequence[:want]


def measure_costs(
    target: LoadedModel, drafts: Sequence[Draft], context: list[int], k_max: int, batch_sizes: Sequence[int],
    device: torch.device, dtype: torch.dtype,
) -> tuple[dict[str, Any], Timings]:
    """The costs record (what costs.json holds) and its timings."""
    started = _now()
    measured = measure.measure(target.model, drafts, context, k_max, batch_sizes)
    if not measured.by_batch_size:  # one size asked: still say which, so the file is self-describing
        measured = Timings(measured.target_forward_s, measured.draft_step_s, measured.context_tokens,
                           measured.draft_catchup_s, by_batch_size=(measured,))
    record = {
        "specprof_version": __version__,
        "schema_version": schema.SCHEMA_VERSION,
        "kind": batchcost.COSTS_KIND,
        "target": target.describe(),
        "drafts": [d.info for d in drafts],
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
        "settings": {"k_max": k_max, "concurrency": sorted({1, *batch_sizes}), "context_tokens": len(context)},
        "started_at": started,
        "finished_at": _now(),
        "timings": measured.as_dict(),
    }
    return record, measured


def write_costs(path: Path, record: dict[str, Any]) -> None:
    reportfiles.write_json(path, record)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
