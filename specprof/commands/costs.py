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
from collections.abc import Sequence
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
from specprof.engines.hf.models import LoadedModel, encode_prompt
from specprof.errors import SpecprofError

DEFAULT_CONTEXT = 256  # tokens in the KV cache when no corpus is given: a short chat turn and its answer
HALF_ANSWER = 64  # profile's default 128 new tokens, half generated at a typical verification step


@dataclass(frozen=True)
class CostsResult:
    path: Path
    record: dict[str, Any]
    timings: Timings


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
