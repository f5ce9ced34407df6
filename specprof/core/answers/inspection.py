"""`inspect`: which prompts a draft is bad at, and where in the text it fails.

Per prompt: α (mean accept_prob over its continuation) and tokens per iteration at draft length k
(the same block counts `recommend` pools). The N prompts with the lowest α (ties: the longer
continuation first), or one prompt by id, come with their continuation split into tokens: each token's text,
the target's token and the draft's proposal, `match`, `accept_prob`, and where a speculative block
starts at k. At T = 0 the blocks are exact (`trace.simulate_blocks` on `match`); at T > 0 a
sampled run's blocks are random, so none are marked and tokens are shaded by accept_prob instead.

The selected prompts can be written back as a PROMPTS-format `.jsonl` corpus (their original text
or chat messages from prompts.parquet), to profile again or to train a draft on.

What this module does not do: load model weights (only the tokenizer, `tokentext`), print, or pick
colours (`render` for the terminal, `htmlreport` for the page).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specprof.core.answers import decide
from specprof.core.answers.analysis import load_analysis
from specprof.core.jsonvalues import json_number
from specprof.core.records import reportfiles
from specprof.core.records.tokentext import Detokenizer, Fallback
from specprof.core.simulation import blockdraft, trace
from specprof.core.simulation.traces import DraftTrace
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError

DEFAULT_WORST = 5


@dataclass(frozen=True)
class PromptFigures:
    """One prompt's acceptance under one draft."""

    prompt_id: str
    domain: str
    n_tokens: int  # continuation length
    alpha: float  # mean accept_prob over the continuation (the match rate at T = 0)
    tokens_per_iter: float  # at the inspected k, bonus token included (expected at T > 0)
    iterations: float  # target forward passes at k (expected at T > 0)


@dataclass(frozen=True)
class TokenView:
    position: int
    text: str  # what this token adds to the decoded continuation
    target_token: int
    draft_token: int  # the draft's proposal at this position; -1: none (an n-gram draft found no match)
    draft_text: str  # the proposal's text ("" when none)
    match: bool
    accept_prob: float  # β: 1.0/0.0 at T = 0
    block_start: bool  # a speculative block at k starts here (T = 0 only)


@dataclass(frozen=True)
class PromptView:
    figures: PromptFigures
    record: dict[str, Any]  # the PROMPTS-format record: id, domain, prompt or messages
    finish_reason: str | None  # "eos" or "length"
    tokens: tuple[TokenView, ...]
    blocks: tuple[trace.Block, ...]  # at k; empty at T > 0

    @property
    def rejected(self) -> int:
        return sum(not t.match for t in self.tokens)

    @property
    def prompt_text(self) -> str:
        r = self.record
        if "messages" in r:
            return "\n".join(f"{m['role']}: {m['content']}" for m in r["messages"])
        return str(r["prompt"])


@dataclass(frozen=True)
class Inspection:
    path: Path
    draft: str
    drafts: tuple[str, ...]  # every draft in the report
    k: int
    k_is_best: bool  # k was chosen as the best k of `scope` (not given with --k)
    scope: str  # the domain the prompts were ranked in, or ALL
    exact: bool  # T = 0
    temperature: float
    prompts: tuple[PromptFigures, ...]  # every prompt in scope, lowest α first
    shown: tuple[PromptView, ...]  # the worst N, or the one asked for
    one_prompt: bool  # --prompt: one prompt shown in full
    exported: Path | None = None  # --export: the corpus file the shown prompts were written to

    def to_json(self) -> dict[str, Any]:
        """The `inspect --json` document."""
        return inspection_json(self)


def prompt_figures(t: DraftTrace, k: int) -> list[PromptFigures]:
    """Per prompt of `t`, lowest α first (ties: longer continuation first, then the report's order)."""
    b = t.blocks
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = t.accept_sum / t.n_tokens  # [n_prompts]
        tokens_per_iter = b.emitted[:, k - 1] / b.iterations[:, k - 1]  # [n_prompts]
    # Lowest α first; among equal α the longer continuation first (more evidence of the same
    # failure), then report order. lexsort sorts by its last key first and is stable.
    order = np.lexsort((-t.n_tokens, np.nan_to_num(alpha, nan=np.inf)))
    return [
        PromptFigures(str(t.prompt_ids[i]), str(t.domains[i]), int(t.n_tokens[i]), float(alpha[i]),
                      float(tokens_per_iter[i]), float(b.iterations[i, k - 1]))
        for i in order
    ]


def inspect(
    report: str | Path | reportfiles.Report,
    *,
    draft: str | None = None,
    domain: str | None = None,
    worst: int = DEFAULT_WORST,
    prompt: str | None = None,
    k: int | None = None,
    tokenizer: str | None = None,
    export: str | Path | None = None,
    fallback: Fallback | None = None,
) -> Inspection:
    """`specprof inspect REPORT` with the same flags; with `export`, the shown prompts are written there."""
    result = inspect_report(report, None, draft, domain, worst, prompt, k, tokenizer, fallback)
    if export is None:
        return result
    return dataclasses.replace(result, exported=write_corpus(export, result.shown))


def inspect_report(
    path: str | Path | reportfiles.Report,
    detokenizer: Detokenizer | None = None,
    draft: str | None = None,
    domain: str | None = None,
    worst: int = DEFAULT_WORST,
    prompt_id: str | None = None,
    k: int | None = None,
    tokenizer: str | None = None,
    fallback: Fallback | None = None,
) -> Inspection:
    """Load a report and inspect one draft; the tokenizer comes from run.json unless given (`fallback`:
    `tokentext.load`'s, for a tokenizer without tokenizer.json)."""
    if worst < 1:
        raise SpecprofError(f"--worst {worst}: must be ≥ 1")
    if domain == ALL:
        domain = None
    analysis = load_analysis(path, [draft] if draft else (), [domain] if domain else ())
    if detokenizer is None:
        from specprof.core.records import tokentext

        detokenizer = tokentext.load(analysis.run, tokenizer, fallback)
    return inspect_analysis(analysis, detokenizer, draft, domain, worst, prompt_id, k)


def inspect_analysis(
    a: decide.Analysis,
    detokenizer: Detokenizer,
    draft: str | None = None,
    domain: str | None = None,
    worst: int = DEFAULT_WORST,
    prompt_id: str | None = None,
    k: int | None = None,
) -> Inspection:
    """Rank the prompts of one draft (default: the report's first) and build the views to show."""
    names = tuple(t.draft for t in a.traces)
    draft = draft or names[0]
    t = a.trace(draft)
    if domain is not None:
        t = t.select(t.domains == domain)
    scope = domain or ALL
    k_max = t.blocks.k_max
    if k is not None and not 1 <= k <= k_max:
        raise SpecprofError(f"--k {k}: the report covers k = 1..{k_max}")
    k_is_best = k is None
    if k is None:
        if a.timings is None:
            raise SpecprofError("the report has no timings to choose the best k from; pass --k")
        k = next(e.best_k for e in decide.estimates(a, domains=[scope]) if e.draft == draft and e.domain == scope)
    figures = prompt_figures(t, k)
    if prompt_id is not None:
        chosen = [f for f in figures if f.prompt_id == prompt_id]
        if not chosen:
            where = f"domain {domain} of {a.path}" if domain else str(a.path)
            sample = ", ".join(f.prompt_id for f in figures[:3])
            raise SpecprofError(f"--prompt {prompt_id}: not in {where} (e.g. {sample}; list them with --json)")
    else:
        chosen = figures[:worst]
    views = prompt_views(a.path, draft, chosen, k, a.exact, detokenizer)
    settings = a.run.get("settings") or {}
    return Inspection(a.path, draft, names, k, k_is_best, scope, a.exact, float(settings.get("temperature", 0.0)),
                      tuple(figures), tuple(views), prompt_id is not None)


def prompt_views(
    path: Path, draft: str, chosen: Sequence[PromptFigures], k: int, exact: bool, detokenizer: Detokenizer
) -> list[PromptView]:
    """Token views of the chosen prompts, read from tokens.parquet and prompts.parquet."""
    if not chosen:
        return []
    rep = reportfiles.load_report(path)
    ids = pa.array([f.prompt_id for f in chosen])
    columns = ["draft", "prompt_id", "position", "target_token", "draft_token", "match", "accept_prob"]
    tokens = rep.table("tokens", columns)
    tokens = tokens.filter(pc.and_(pc.equal(tokens["draft"], draft), pc.is_in(tokens["prompt_id"], ids)))
    frame = tokens.to_pandas().sort_values(["prompt_id", "position"], kind="stable")
    prompts = rep.table("prompts", ["prompt_id", "domain", "prompt", "messages", "finish_reason"])
    prompts = prompts.filter(pc.is_in(prompts["prompt_id"], ids)).to_pandas().set_index("prompt_id")
    k_max = int((rep.run.get("settings") or {}).get("k_max", 8))
    runs = blockdraft.load_runs(rep, [draft], k_max) if exact else {}
    views = []
    for f in chosen:
        if f.prompt_id not in prompts.index:
            raise SpecprofError(f"{rep.path('prompts')}: no row for prompt {f.prompt_id!r}; the report is incomplete")
        rows = frame[frame["prompt_id"] == f.prompt_id]
        target = rows["target_token"].to_numpy(np.int64)
        proposals = rows["draft_token"].to_numpy(np.int64)
        match = rows["match"].to_numpy(bool)
        pieces = detokenizer.pieces(target.tolist())
        proposed = detokenizer.decode_many([[int(p)] if p >= 0 else [] for p in proposals.tolist()])
        if exact and draft in runs:  # vllm-ngram, prompt-lookup: blocks from the simulation per block start
            blocks = tuple(blockdraft.simulate_blocks(runs[draft], f.prompt_id, k))
        else:
            blocks = tuple(trace.simulate_blocks(match.tolist(), k)) if exact else ()
        starts = {b.start for b in blocks}
        token_views = tuple(
            TokenView(int(pos), piece, int(tt), int(dt), text if dt >= 0 else "", bool(m), float(ap),
                      int(pos) in starts)
            for pos, piece, tt, dt, text, m, ap in zip(
                rows["position"], pieces, target, proposals, proposed, match, rows["accept_prob"]
            )
        )
        row = prompts.loc[f.prompt_id]
        views.append(PromptView(f, prompt_record(f.prompt_id, row), _str_or_none(row["finish_reason"]),
                                token_views, blocks))
    return views


def prompt_record(prompt_id: str, row: Any) -> dict[str, Any]:
    """The PROMPTS-format record of a prompts.parquet row: its original text or chat messages."""
    record: dict[str, Any] = {"id": prompt_id, "domain": str(row["domain"])}
    messages = _str_or_none(row["messages"])
    if messages is not None:
        record["messages"] = json.loads(messages)
    else:
        record["prompt"] = str(row["prompt"])
    return record


def _str_or_none(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def write_corpus(path: str | Path, views: Sequence[PromptView]) -> Path:
    """Write the prompts as a `.jsonl` corpus (PROMPTS format), atomically; refuse other suffixes."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise SpecprofError(f"--export {path}: must end in .jsonl (the PROMPTS format)")
    if not path.parent.is_dir():
        raise SpecprofError(f"--export {path}: directory {path.parent} does not exist")
    data = "".join(json.dumps(v.record, ensure_ascii=False) + "\n" for v in views).encode()
    reportfiles.write_file(path, data)
    return path


def inspection_json(i: Inspection, exported: Path | None = None) -> dict[str, Any]:
    exported = exported if exported is not None else i.exported
    return {
        "report": str(i.path),
        "draft": i.draft,
        "drafts": list(i.drafts),
        "k": i.k,
        "k_is_best": i.k_is_best,
        "domain": i.scope,
        "exact": i.exact,
        "temperature": i.temperature,
        "prompts": [figures_json(f) for f in i.prompts],
        "shown": [view_json(v) for v in i.shown],
        "exported": str(exported) if exported else None,
    }


def figures_json(f: PromptFigures) -> dict[str, Any]:
    return {"prompt_id": f.prompt_id, "domain": f.domain, "n_tokens": f.n_tokens, "alpha": json_number(f.alpha),
            "tokens_per_iter": json_number(f.tokens_per_iter), "iterations": json_number(f.iterations)}


def view_json(v: PromptView) -> dict[str, Any]:
    return {
        **figures_json(v.figures),
        "record": v.record,
        "finish_reason": v.finish_reason,
        "rejected": v.rejected,
        "continuation": "".join(t.text for t in v.tokens),
        "blocks": [{"start": b.start, "accepted": b.accepted, "emitted": b.emitted} for b in v.blocks],
        "tokens": [
            {"position": t.position, "text": t.text, "target_token": t.target_token, "draft_token": t.draft_token,
             "draft_text": t.draft_text, "match": t.match, "accept_prob": t.accept_prob, "block_start": t.block_start}
            for t in v.tokens
        ],
    }
