"""What the vLLM commands share: a server's spec-decode counters and k, the tokenizer check, and the
report lookups (which draft, which prompts, which k, the model directories to serve), and the draft's near-ties that
explain a prompt whose counters differ.

`verify_vllm` (counters against the prediction) and `verify_concurrency` (throughput at batch sizes)
both use them. No torch here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from specprof.core.pricing import costmodel
from specprof.core.records import tokentext
from specprof.core.records.reportfiles import Report
from specprof.core.records.sequences import report_continuations
from specprof.core.simulation import kinds
from specprof.core.vocabulary import ALL
from specprof.engines.vllm.client import SpecCounters, VllmClient
from specprof.errors import SpecprofError

# Draft positions whose top-2 margin is below this are listed as candidate near-ties when a prompt's
# counters differ with an identical continuation (they are where another kernel could propose otherwise).
DRAFT_NEAR_TIE_LISTED = 0.05


def settled_metrics(client: VllmClient, wait_s: float = 2.0) -> SpecCounters:
    """/metrics once two reads agree: vLLM records a step's stats just after it hands the output on."""
    last = spec_metrics(client)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = spec_metrics(client)
        if now == last:
            return now
        last = now
    return last


def spec_metrics(client: VllmClient) -> SpecCounters:
    counters = client.metrics()
    if counters is None:
        raise SpecprofError(f"{client.url}: the server runs without speculative decoding (no vllm:spec_decode_* "
                            "counters in /metrics); start it with --speculative-config for the report's draft")
    return counters


def server_k(client: VllmClient) -> int:
    counters = spec_metrics(client)
    if counters.k == 0:
        raise SpecprofError(f"{client.url}: /metrics has no per-position spec-decode counters")
    return counters.k


def check_tokenizer(client: VllmClient, detok: tokentext.Detokenizer, id_lists: Sequence[Sequence[int]],
                    target: str = "the report's target", whose: str = "the report's") -> None:
    """The served tokenizer must decode every id this run sends or expects as `whose` tokenizer (the report's, or
    the --target's for a profile) does; the error names the model it expected as `target`."""
    ids = sorted({int(t) for ids in id_lists for t in ids})
    ours = detok.decode(ids)
    if client.detokenize(ids) == ours:
        return
    for i in ids:  # find the first id that differs, for the message
        theirs, mine = client.detokenize([i]), detok.decode([i])
        if theirs != mine:
            raise SpecprofError(
                f"{client.url}: serves another model than {target} ({client.model()}: token id {i} is "
                f"{theirs!r} there, {mine!r} in {whose} tokenizer)")
    raise SpecprofError(f"{client.url}: serves another model than {target} ({client.model()}: its "
                        f"tokenizer decodes {whose} ids to other text)")


def choose_draft(report: Report, draft: str | None) -> str:
    names = [d["name"] for d in report.run.get("drafts", [])]
    if draft is not None:
        if draft not in names:
            raise SpecprofError(f"--draft {draft}: not in the report (drafts: {', '.join(names)})")
        return draft
    named = {d["name"]: kinds.kind(d.get("kind")) for d in report.run.get("drafts", [])}
    usable = [n for n in names if named[n].vllm_proposer]
    if len(usable) != 1:
        raise SpecprofError(f"--engine vllm: pass --draft, the report has {len(names)} drafts ({', '.join(names)})")
    return usable[0]


def select_prompts(prompts: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    if limit is not None and limit < 1:
        raise SpecprofError(f"--limit {limit}: must be ≥ 1")
    if limit is None:
        return prompts.reset_index(drop=True)
    return prompts.groupby("domain", sort=False).head(limit).reset_index(drop=True)


def check_ks(ks: Sequence[int], settings: dict) -> None:
    k_max = int(settings["k_max"])
    for k in ks:
        if not 1 <= k <= k_max:
            raise SpecprofError(f"--k {k}: the report covers k = 1..{k_max}")


def best_k(report: Report, draft: str) -> int:
    summary = report.frame("summary")
    by_k = summary[(summary["draft"] == draft) & (summary["domain"] == ALL)].set_index("k")["speedup"].dropna()
    if by_k.empty:
        raise SpecprofError(f"report: no predicted speedup for draft {draft!r}; pass --k")
    return costmodel.best_k(by_k.to_dict())


def target_dir(run: dict) -> str:
    info = run.get("target") or {}
    source = str(info.get("source") or "")
    if source and Path(source).exists():
        return source
    raise SpecprofError(f"--launch: the report's target directory {source or '?'} is not on this machine (vLLM needs "
                        "a model directory; run `specprof profile` here once, or start vLLM yourself and pass --url)")


def draft_source(run: dict, draft: str) -> str | None:
    for d in run.get("drafts", []):
        if d.get("name") == draft:
            source = d.get("source")
            if source and Path(str(source)).exists():
                return str(source)
    return None


def draft_near_ties(report: Report, draft: str, pid: str, draft_model_dir: str | None,
                    top2_margins: Callable[[str, list[int], list[int]], list[float]] | None,
                    ) -> list[tuple[int, float]]:
    """Positions where the draft's top-2 logits are within DRAFT_NEAR_TIE_LISTED (float32), smallest first.

    Model drafts only (an n-gram rule has no ties): the draft is re-run in float32 with transformers
    (imported here, only when a prompt needs explaining).
    """
    source = draft_model_dir or draft_source(report.run, draft)
    kind = kinds.parse(draft).kind  # a head has no transformers model to re-run
    if kind.model_free or kind.proposal is kinds.Proposal.HEAD or not source or top2_margins is None:
        return []

    prompts = report.frame("prompts").set_index("prompt_id")
    continuation = report_continuations(report.frame("tokens").query("draft == @draft")).get(pid, [])
    prompt = [int(t) for t in prompts.loc[pid, "prompt_tokens"]]
    found = top2_margins(source, prompt, continuation)
    return sorted(((i, m) for i, m in enumerate(found) if m < DRAFT_NEAR_TIE_LISTED), key=lambda x: x[1])
