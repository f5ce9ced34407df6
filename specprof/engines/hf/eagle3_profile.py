"""Profile an EAGLE-3 head: its proposals from every block start, from one target pass.

The target's captured states come from the generation itself (`generation.generate(aux_layers=…)`:
the prefill's states at every prompt position, then each step's), so no second target pass runs;
logged responses get them from one teacher-forced pass over
the prompt, its continuation and the tokens past its end (`capture_aux`). Then per prompt:
  1. one causal pass of the head over rows j = 0..N − 2 (token z_{j+1}, fc of the target's states
     at j, position j) gives the head's KV cache over the whole sequence as vLLM builds it after each
     verification, and depth 1 from every start at once: the output of row m − 1 for a block whose
     last known token is z_m;
  2. depths 2..k_max for every start inside the continuation at once: each start's new row attends
     to the prefix rows 0..m − 1 (a mask over the shared cache) and to its own earlier depth rows.
The k_max-token proposals go to proposals.parquet like any block-dependent draft's, and the
existing block simulation, engine conventions, intervals and decisions follow (`core.blockdraft`).
tokens.parquet holds, at each position, the depth-1 proposal of a block starting there, its
probabilities over the draft vocabulary mapped to target ids (a target token outside the draft
vocabulary has probability 0).

A block at continuation position s has last known token z_{P+s−1}: its first row is P + s − 2. For
s = 0 (a loop that drafts the first token, as transformers' convention counts) that row is the
prompt's second-to-last; vLLM samples the first token in prefill and drafts from s = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specprof.engines.hf.eagle3 import Eagle3Head, HeadDraft
from specprof.engines.hf.generation import Generation, LayerCapture, position_ids
from specprof.errors import SpecprofError


@torch.inference_mode()
def capture_aux(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                layer_ids: Sequence[int]) -> torch.Tensor:
    """[B, W, n·H] the target's captured states at every position (vLLM's aux layer i: the input of decoder
    layer i with its residual = the output of transformers' layer i − 1; id 0: the embeddings)."""
    return _captured(model, input_ids, attention_mask, layer_ids, all_logits=False)[0]


@torch.inference_mode()
def capture_aux_and_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           layer_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`capture_aux` and, from the same pass, the logits at every position [B, W, V]."""
    return _captured(model, input_ids, attention_mask, layer_ids, all_logits=True)


def _captured(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              layer_ids: Sequence[int], all_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    capture = LayerCapture(model, sorted(layer_ids), last_only=False)
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    use_cache=False, logits_to_keep=0 if all_logits else 1)
    finally:
        capture.remove()
    return torch.cat([capture.states[i] for i in sorted(layer_ids)], dim=-1), out.logits


@torch.inference_mode()
def head_from_every_start(head: Eagle3Head, tokens: torch.Tensor, aux: torch.Tensor, prompt_len: int,
                          n_starts: int, n_deep: int, k_max: int):
    """One sequence z (tokens [N], the target's captured states aux [N, n·H]) with its prompt of P tokens.

    Returns (depth-1 draft logits [n_starts, V_draft] of blocks at continuation positions 0..n_starts − 1,
    and [n_deep, k_max] target ids proposed from starts 0..n_deep − 1; a start with no head row before it
    (P + s < 2) has logits of zeros and proposals of -1).
    """
    n = tokens.shape[0]
    g = head.combine(aux[: n - 1])
    positions = torch.arange(n - 1, device=tokens.device)
    out, state, prefix = head.rows(tokens[1:], g, positions)
    rows = torch.arange(n_starts, device=tokens.device) + prompt_len - 2  # row m − 1 of each start
    has = rows >= 0
    logits = torch.zeros((n_starts, head.config.draft_vocab_size), dtype=out.dtype, device=out.device)
    logits[has] = head.draft_logits(out[rows[has]])
    proposals = torch.full((n_deep, k_max), -1, dtype=torch.long, device=tokens.device)
    deep = torch.arange(n_deep, device=tokens.device)[has[:n_deep]]
    if not len(deep):
        return logits, proposals
    last = rows[deep]
    token = head.to_target(logits[deep].float().argmax(dim=-1))
    proposals[deep, 0] = token
    hidden = state[last]
    visible = torch.arange(n - 1, device=tokens.device)[None, :] <= last[:, None]
    kv = head.config.num_kv_heads, head.config.head_dim
    own = [(prefix[0][0].new_zeros((len(deep), 0, *kv)), prefix[0][1].new_zeros((len(deep), 0, *kv)))
           for _ in head.layers]
    for depth in range(1, k_max):
        out, hidden, new = head.rows(token, hidden, last + depth, cache=prefix, own=own, visible=visible)
        own = [(torch.cat([o[0], k[:, None]], dim=1), torch.cat([o[1], v[:, None]], dim=1))
               for o, (k, v) in zip(own, new, strict=True)]
        token = head.greedy(out)
        proposals[deep, depth] = token
    return logits, proposals


@torch.inference_mode()
def score_head(draft: HeadDraft, gen: Generation, prompt_ids: Sequence[list[int]], temperature: float,
               k_max: int) -> tuple[dict[str, torch.Tensor], list[list[list[int]]]]:
    """The head's records: per position its depth-1 proposal and probabilities ([B, T] tensors), and per row
    its k_max-token proposals from every start inside the continuation (proposals.parquet)."""
    if temperature > 0:
        raise SpecprofError(f"--draft {draft.name}: EAGLE-3 heads are profiled at --temperature 0 only")
    head = draft.head
    batch, width = gen.continuation.shape
    if set(head.aux_layers) <= set(gen.aux):
        aux = torch.cat([gen.aux[n] for n in sorted(head.aux_layers)], dim=-1)
    else:
        aux = capture_aux(draft.target, gen.sequences, gen.attention_mask, head.aux_layers)
    inverse = torch.full((head.config.vocab_size,), -1, dtype=torch.long, device=aux.device)
    inverse[head.to_target(torch.arange(head.config.draft_vocab_size, device=aux.device))] = \
        torch.arange(head.config.draft_vocab_size, device=aux.device)
    stats = {name: torch.zeros((batch, width)) for name in ("draft_q", "draft_top1_p", "accept_prob")}
    stats["draft_token"] = torch.full((batch, width), -1, dtype=torch.long)
    proposals = []
    for i in range(batch):
        real = gen.attention_mask[i].bool()
        tokens = gen.sequences[i, real]
        length, scored = gen.lengths[i], gen.lengths[i] + gen.past_end
        scored = min(scored, int(real.sum()) - len(prompt_ids[i]))
        logits, deep = head_from_every_start(head, tokens, aux[i, real], len(prompt_ids[i]), scored, length, k_max)
        q = logits.float().softmax(dim=-1)
        y = gen.continuation[i, :scored]
        first = head.to_target(q.argmax(dim=-1))
        known = inverse[y] >= 0
        has_row = logits.abs().sum(dim=-1) > 0
        first = torch.where(has_row, first, -1)
        stats["draft_token"][i, :scored] = first.cpu()
        stats["draft_q"][i, :scored] = torch.where(known, q.gather(-1, inverse[y].clamp(min=0)[:, None])[:, 0],
                                                   0.0).cpu()
        stats["draft_top1_p"][i, :scored] = torch.where(has_row, q.max(dim=-1).values, 0.0).cpu()
        stats["accept_prob"][i, :scored] = (first == y).float().cpu()
        proposals.append([[t for t in row if t >= 0] for row in deep.tolist()])
    return stats, proposals
