"""Score each draft on the target's continuation: one teacher-forced pass per draft, and its token records.

For every continuation position (and every position past the end): the draft's proposal given the
prompt and the target's prefix, the probability it gives the target's token, its top-1 probability
and, when sampling, β = Σ min(p, q) against the target's distribution there (`sampling`, the same
processing for both). A model draft is run once over the whole sequence; an n-gram draft looks up
at every position; a block-dependent draft proposes from every block start (its k_max tokens go to
proposals.parquet). `_rows` turns the scores into tokens.parquet rows.

What this module does not do: generate (`generation`), batch or write files (`profiler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from specprof.engines.hf import sampled_records, sampling
from specprof.engines.hf.drafts import BlockDraft, HeadDraft, ModelDraft, NgramDraft
from specprof.engines.hf.generation import Generation
from specprof.errors import SpecprofError

if TYPE_CHECKING:  # the profile's settings; profiler imports this module
    from specprof.engines.hf.profiler import Settings
    from specprof.engines.text import Encoded

SAMPLED_COLUMNS = ("proposal_target_p", "draft_q_untruncated", "accept_prob_untruncated")  # schema 3
STAT_CHUNK_ROWS = 4  # rows per float32 [rows, T, V] probability block, to bound memory


@torch.inference_mode()
def score_model_draft(draft: ModelDraft, gen: Generation, settings: Settings) -> dict[str, torch.Tensor]:
    """Teacher-forced draft statistics at every continuation position: [B, T] tensors on the CPU."""
    width = gen.continuation.shape[1]
    if draft.layers in gen.hidden:  # early exit: the target already ran these layers while generating
        logits = draft.logits_from_hidden(gen.hidden[draft.layers])
    else:
        # Logits at columns P-1 .. P+T-2 predict continuation positions 0 .. T-1; the last token predicts nothing.
        inputs = gen.sequences[:, : gen.prompt_width + width - 1]
        mask = gen.attention_mask[:, : gen.prompt_width + width - 1]
        logits = draft.logits(inputs, mask, keep=width)
    target_tokens = gen.continuation
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("draft_token", "draft_q", "draft_top1_p", "accept_prob",
                                                          *SAMPLED_COLUMNS)}
    for lo in range(0, logits.shape[0], STAT_CHUNK_ROWS):
        rows = slice(lo, lo + STAT_CHUNK_ROWS)
        q = sampling.probabilities(logits[rows], settings.temperature, settings.top_p)
        y = target_tokens[rows]
        p = None
        if settings.temperature == 0:
            proposal = logits[rows].float().argmax(dim=-1)
            accept = (proposal == y).float()
        else:
            proposal = q.argmax(dim=-1)
            p = sampling.probabilities(gen.logits[rows], settings.temperature, settings.top_p)
            accept = torch.minimum(p, q).sum(dim=-1).clamp(max=1.0)
        draft_q = q.gather(-1, y[..., None]).squeeze(-1)
        extra = sampled_records.model_draft_columns(logits[rows], p, proposal, y, (proposal == y).float(), draft_q,
                                                    settings.temperature)
        for name, values in extra.items():
            out[name].append(values)
        out["draft_token"].append(proposal)
        out["draft_q"].append(draft_q)
        out["draft_top1_p"].append(q.max(dim=-1).values)
        out["accept_prob"].append(accept)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def score_ngram_draft(
    draft: NgramDraft, gen: Generation, prompt_ids: Sequence[list[int]], settings: Settings
) -> dict[str, torch.Tensor]:
    """Prompt-lookup proposals; the proposal is a point mass, so β = p(proposal) when sampling."""
    batch, width = gen.continuation.shape
    proposal = torch.full((batch, width), -1, dtype=torch.long)
    continuation = gen.continuation.cpu()
    for i, prompt in enumerate(prompt_ids):
        n = gen.lengths[i] + gen.past_end
        proposal[i, :n] = torch.tensor(draft.proposals(prompt + continuation[i, :n].tolist(), len(prompt)))
    return _point_mass_stats(proposal, gen, settings)


def score_block_draft(
    draft: BlockDraft | HeadDraft, gen: Generation, prompt_ids: Sequence[list[int]], settings: Settings
) -> tuple[dict[str, torch.Tensor], list[list[list[int]]]]:
    """An engine's prompt lookup run from every block start: the first token it proposes at each
    position (the per-position records), and per row its k_max-token proposals from each start
    inside the continuation (proposals.parquet). An EAGLE-3 head: `eagle3_profile`."""
    if isinstance(draft, HeadDraft):
        from specprof.engines.hf.eagle3_profile import score_head

        return score_head(draft, gen, prompt_ids, settings.temperature, settings.k_max)
    batch, width = gen.continuation.shape
    first = torch.full((batch, width), -1, dtype=torch.long)
    continuation = gen.continuation.cpu()
    proposals = []
    for i, prompt in enumerate(prompt_ids):
        n = gen.lengths[i] + gen.past_end
        every = draft.proposals_every_start(prompt + continuation[i, :n].tolist(), len(prompt), settings.k_max)
        first[i, :n] = torch.tensor([p[0] if p else -1 for p in every], dtype=torch.long)
        proposals.append(every[: gen.lengths[i]])
    return _point_mass_stats(first, gen, settings), proposals


def _point_mass_stats(proposal: torch.Tensor, gen: Generation, settings: Settings) -> dict[str, torch.Tensor]:
    """Records of a draft proposing tokens without probabilities (-1: nothing proposed)."""
    batch, width = proposal.shape
    continuation = gen.continuation.cpu()
    match = (proposal == continuation).float()
    has = (proposal >= 0).float()
    if settings.temperature == 0:
        accept = match
    else:
        accept = torch.zeros(batch, width)
        for lo in range(0, batch, STAT_CHUNK_ROWS):
            rows = slice(lo, lo + STAT_CHUNK_ROWS)
            p = sampling.probabilities(gen.logits[rows], settings.temperature, settings.top_p).cpu()
            accept[rows] = p.gather(-1, proposal[rows].clamp(min=0)[..., None]).squeeze(-1) * has[rows]
    return {"draft_token": proposal, "draft_q": match, "draft_top1_p": has, "accept_prob": accept,
            **sampled_records.point_mass_columns(accept, match)}


def token_rows(
    draft: str, batch: Sequence[Encoded], gen: Generation, stats: dict[str, torch.Tensor], keep: torch.Tensor
) -> pd.DataFrame:
    """Records at the positions `keep` ([B, T], row-major order) marks."""
    rows, positions = (v.numpy() for v in keep.nonzero(as_tuple=True))
    flat = keep.reshape(-1)

    def take(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().reshape(-1)[flat].numpy()

    target_token = take(gen.continuation)
    draft_token = take(stats["draft_token"])
    return pd.DataFrame(
        {
            "draft": draft,
            "prompt_id": np.array([e.prompt.id for e in batch], dtype=object)[rows],
            "domain": np.array([e.prompt.domain for e in batch], dtype=object)[rows],
            "position": positions.astype(np.int32),
            "target_token": target_token.astype(np.int32),
            "draft_token": draft_token.astype(np.int32),
            "match": draft_token == target_token,
            "accept_prob": take(stats["accept_prob"]).astype(np.float32),
            "target_p": take(gen.target_p).astype(np.float32),
            "draft_q": take(stats["draft_q"]).astype(np.float32),
            "target_entropy": take(gen.target_entropy).astype(np.float32),
            "draft_top1_p": take(stats["draft_top1_p"]).astype(np.float32),
            **{name: take(stats[name]).astype(np.float32) for name in SAMPLED_COLUMNS if name in stats},
        }
    )


def proposal_rows(
    draft: str, batch: Sequence[Encoded], gen: Generation, proposals: list[list[list[int]]]
) -> pd.DataFrame:
    """proposals.parquet rows: one per prompt and block start inside its continuation."""
    return pd.DataFrame(
        {
            "draft": draft,
            "prompt_id": np.repeat([e.prompt.id for e in batch], gen.lengths),
            "position": np.concatenate([np.arange(n) for n in gen.lengths]).astype(np.int32),
            "proposal": [p for row in proposals for p in row],
        }
    )


def check_finite(values: torch.Tensor, valid: torch.Tensor, ids: Sequence[str], who: str) -> None:
    bad = (~torch.isfinite(values.cpu())) & valid
    if bad.any():
        row, position = (int(v) for v in bad.nonzero()[0])
        raise SpecprofError(
            f"prompt {ids[row]}: the {who} model produced NaN/inf logits at position {position} "
            "(broken weights, or overflow in float16/bfloat16: try --dtype float32)"
        )
