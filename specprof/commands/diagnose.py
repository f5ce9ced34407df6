"""Why a live speculative run differs from the report, at temperature 0 (`verify`'s diagnosis).

Every difference becomes a `Divergence`: which outputs differ (speculative vs the target alone, the
target alone vs the report, a draft proposal vs the report, iterations vs the report), where, which
tokens, the logit margin of the model that chose there, and a float32 re-check that tells a near-tie
flipped by low-precision kernels from a real bug.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch

from specprof.core.records.sequences import first_difference
from specprof.core.simulation.traces import DraftTrace
from specprof.engines.hf import drafts

# Two tokens whose float32 logits differ by less than this (per run dtype) are a near-tie: low-precision
# or differently batched kernels may order them either way (bf16 keeps ~3 significant digits).
NEAR_TIE_LOGITS = {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.5}

DivergenceKind = Literal["speculative", "target", "draft", "iterations"]
Cause = Literal["near-tie", "bug"]  # why a live run diverged from the report


@dataclass(frozen=True)
class Divergence:
    kind: DivergenceKind  # speculative ≠ target alone, target alone ≠ report, draft ≠ report, iterations ≠ report
    draft: str
    k: int
    prompt_id: str
    position: int  # in the continuation
    expected_token: int  # target alone (kind speculative) or the report (target, draft)
    got_token: int
    margin: float  # top-1 minus top-2 logit of the model that chose, at that position, in the run dtype
    float32_gap: float  # float32 logit of expected_token minus got_token (negative: float32 agrees with got)
    verdict: Cause

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def diagnose(target, draft, t: DraftTrace, live: dict, prompt_tokens: dict, continuations: dict,
              tokens: pd.DataFrame, ks: list[int]) -> list[Divergence]:
    """Every T = 0 difference between live runs and the report, with its margin and float32 re-check."""
    out = []
    rows = tokens[tokens["draft"] == draft.name]
    proposals_of = {pid: g.sort_values("position")["draft_token"].astype(int).tolist()
                    for pid, g in rows.groupby("prompt_id", sort=False)}
    for row, pid in enumerate(t.prompt_ids.tolist()):
        prompt, report_y, alone = prompt_tokens[pid], continuations[pid], live[pid].target.tokens
        j = first_difference(alone, report_y)
        if j is not None:
            out.append(_token_divergence("target", target.model, draft.name, 0, pid, prompt, report_y, alone, j))
        for k in ks:
            if (draft.name, k) not in live[pid].spec:
                continue
            spec_out = live[pid].spec[(draft.name, k)][1]
            j = first_difference(spec_out.tokens, alone)
            if j is not None:
                out.append(_token_divergence("speculative", target.model, draft.name, k, pid, prompt, alone,
                                             spec_out.tokens, j))
            found = _draft_divergence(draft, k, pid, prompt, report_y, spec_out, proposals_of[pid])
            if found:
                out.append(found)
            elif j is None and first_difference(alone, report_y) is None and \
                    spec_out.n_iterations != t.blocks.iterations[row, k - 1]:
                out.append(Divergence("iterations", draft.name, k, pid, 0, int(t.blocks.iterations[row, k - 1]),
                                      spec_out.n_iterations, float("nan"), float("nan"), "bug"))
    return out


def _draft_divergence(draft, k, pid, prompt, report_y, spec_out, report_proposals) -> Divergence | None:
    """The first judged draft position whose live proposal differs from the report's (same prefix)."""
    same_until = first_difference(spec_out.tokens, report_y)
    for it in spec_out.iterations:
        # later proposals saw a rejected token; a head's depth ≥ 2 depends on the block (proposals.parquet)
        for i, token in enumerate(it.proposals[: 1 if isinstance(draft, drafts.HeadDraft) else it.accepted + 1]):
            position = it.start + i
            if same_until is not None and position >= same_until:
                return None
            if position < len(report_proposals) and token != report_proposals[position]:
                if isinstance(draft, drafts.ModelDraft):
                    return _token_divergence("draft", draft.model, draft.name, k, pid, prompt,
                                             report_y[:position] + [report_proposals[position]],
                                             report_y[:position] + [token], position)
                return Divergence("draft", draft.name, k, pid, position, report_proposals[position], token,
                                  float("nan"), float("nan"), "bug")
    return None


@torch.inference_mode()
def _token_divergence(kind: DivergenceKind, model: torch.nn.Module, draft: str, k: int, pid: str,
                      prompt: list[int], expected: list[int], got: list[int], j: int) -> Divergence:
    """Margin at position j (prefix = prompt + the common tokens) in the run dtype, and a float32 re-check."""
    ids = torch.tensor([prompt + list(expected[:j])], device=next(model.parameters()).device)
    a = expected[j] if j < len(expected) else -1
    b = got[j] if j < len(got) else -1
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    top2 = logits.topk(2).values
    margin = float(top2[0] - top2[1])
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    reference = model if dtype == "float32" else copy.deepcopy(model).float()
    logits32 = reference(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    if a < 0 or b < 0:  # one output is a strict prefix of the other: a length bug, not a token flip
        gap, verdict = float("nan"), "bug"
    else:
        gap = float(logits32[a] - logits32[b])
        near = abs(gap) <= NEAR_TIE_LOGITS.get(dtype, 1e-3) and {a, b} <= set(logits32.topk(2).indices.tolist())
        verdict = "near-tie" if near else "bug"
    return Divergence(kind, draft, k, pid, j, a, b, margin, gap, verdict)
