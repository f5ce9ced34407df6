"""Batched target generation with a KV cache: the one target run that every draft and every k share.

Prompts are left-padded to a common length, so position t of every continuation sits in the
same column. A row that emits EOS is dropped from the batch (its KV cache rows too), so the rest
of the batch stops paying for it; generation ends when every row is done or `max_new_tokens` is
reached, like `generate`. EOS is part of the continuation (the draft must propose it too). At each
step the target's statistics for its own token are recorded in float32.

`capture_layers` also keeps the hidden state after chosen decoder layers at every position that
predicts a continuation token: an early-exit draft at layer L then needs only the final norm and
LM head on them, instead of a second pass through L layers.

`aux_layers` keeps the hidden state after chosen decoder layers at *every* position, the prompt's
included (the prefill's output at each prompt position, then each step's): an EAGLE-3 head reads
them as vLLM captures them, from this one pass (`eagle3_profile`), with no second target pass.

`past_end` keeps each row going for that many tokens after its end (EOS or `max_new_tokens`): the
target's own tokens past the stop point, which an engine verifies when a block runs past the end
(`core.conventions`). They sit after the continuation in `sequences` (mask 1) but not in `lengths`.

What this module does not do: run drafts (`profiler`) or speculative decoding (`speculate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specprof.engines.hf import sampling


@dataclass
class Generation:
    sequences: torch.Tensor  # [B, P + T] left-padded prompt, then the continuation, pad after each row's end
    attention_mask: torch.Tensor  # [B, P + T] 1 on real tokens
    prompt_width: int  # P: the padded prompt length, so continuation position t is column P + t
    lengths: list[int]  # [B] continuation lengths (EOS included)
    finished_by_eos: list[bool]  # [B] ended on an EOS token rather than the length limit
    target_p: torch.Tensor  # [B, T] float32 target probability of its own token
    target_entropy: torch.Tensor  # [B, T] float32 entropy of the target distribution (nats)
    margin: torch.Tensor  # [B, T] float32 top-1 minus top-2 raw logit (how near a tie the choice was)
    logits: torch.Tensor | None  # [B, T, V] raw target logits in the model's dtype; kept only when sampling
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # layer L → [B, T, H] state predicting y[t]
    # layer L → [B, P + T, H] the state after L layers at every column of `sequences` (zeros where no forward
    # ran: padding, and each row's last token); only for the `aux_layers` asked for
    aux: dict[int, torch.Tensor] = field(default_factory=dict)
    past_end: int = 0  # tokens generated after each row's end (columns lengths[b] .. lengths[b] + past_end - 1)

    @property
    def continuation(self) -> torch.Tensor:
        """[B, T] the continuation tokens (pad after each row's end)."""
        return self.sequences[:, self.prompt_width :]

    @property
    def valid(self) -> torch.Tensor:
        """[B, T] True at real continuation positions."""
        width = self.continuation.shape[1]
        return torch.arange(width)[None, :] < torch.tensor(self.lengths)[:, None]

    @property
    def scored(self) -> torch.Tensor:
        """[B, T] True at continuation positions and at the positions past the end."""
        width = self.continuation.shape[1]
        return torch.arange(width)[None, :] < torch.tensor(self.lengths)[:, None] + self.past_end


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as transformers' generate computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


class LayerCapture:
    """Forward hooks keeping the output of chosen decoder layers: the last position's (generation
    steps) or every position's (`last_only=False`: a teacher-forced pass)."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[int], last_only: bool = True):
        self.states: dict[int, torch.Tensor] = {}
        self.last_only = last_only
        # layer n: the output of decoder layer n − 1 (n = 0: the embeddings), vLLM's numbering of captured states
        modules = [model.model.embed_tokens if n == 0 else model.model.layers[n - 1] for n in layers]
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in zip(layers, modules, strict=True)]

    def _hook(self, n: int):
        def keep(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.states[n] = hidden[:, -1, :] if self.last_only else hidden

        return keep

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generators: list[torch.Generator] | None = None,
    capture_layers: Sequence[int] = (),
    aux_layers: Sequence[int] = (),
    past_end: int = 0,
) -> Generation:
    """Generate continuations for a batch of tokenized prompts (greedy at temperature 0), each followed
    by `past_end` more tokens that are not part of it."""
    # Long on purpose: the generation loop in one piece (prefill, steps, dropping finished rows), as gpt-fast's.
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, prompt_mask = left_pad(prompts, pad_id, device)
    batch, width = ids.shape
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    max_steps = max_new_tokens + past_end
    tokens = torch.full((batch, max_steps), pad_id, dtype=torch.long, device=device)
    stats = torch.zeros((3, batch, max_steps), dtype=torch.float32, device=device)  # p, entropy, margin
    lengths = torch.zeros(batch, dtype=torch.long, device=device)  # continuation lengths, fixed at each row's end
    produced = torch.zeros(batch, dtype=torch.long, device=device)  # tokens generated, past the end included
    ended_at = torch.zeros(batch, dtype=torch.bool, device=device)  # the row's continuation has ended
    eos_hit = torch.zeros(batch, dtype=torch.bool, device=device)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, logits) per step, when sampling
    hidden: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in capture_layers}
    prefix: dict[int, torch.Tensor] = {}  # aux layer → [B, width, H] the prefill's states
    stepped: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in aux_layers}  # steps ≥ 1

    capture = LayerCapture(model, capture_layers)
    every = LayerCapture(model, aux_layers, last_only=False)
    try:
        cache = DynamicCache(config=model.config)
        rows = torch.arange(batch, device=device)  # original row of each live batch entry
        mask = prompt_mask
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), cache=cache,
                    use_cache=True, logits_to_keep=1)
        prefix = {n: every.states[n] for n in aux_layers}
        for step in range(max_steps):
            logits = out.logits[:, -1, :]
            for n in capture_layers:
                hidden[n].append((rows, capture.states[n]))
            if step > 0:  # the forward of y[step − 1], at column width + step − 1
                for n in aux_layers:
                    stepped[n].append((rows, every.states[n][:, -1]))
            probs = sampling.probabilities(logits, temperature, top_p)
            token = sampling.choose(logits, probs, temperature, [generators[r] for r in rows] if generators else None)
            top2 = logits.float().topk(2, dim=-1).values
            tokens[rows, step] = token
            stats[0, rows, step] = probs.gather(-1, token[:, None]).squeeze(-1)
            stats[1, rows, step] = sampling.entropy(probs)
            stats[2, rows, step] = top2[:, 0] - top2[:, 1]
            if temperature > 0:
                kept.append((rows, logits))
            produced[rows] += 1
            ending = ~ended_at[rows] & (torch.isin(token, eos) | (produced[rows] == max_new_tokens))
            eos_hit[rows[ending & torch.isin(token, eos)]] = True
            lengths[rows[ending]] = produced[rows[ending]]
            ended_at[rows[ending]] = True
            ended = ended_at[rows] & (produced[rows] >= lengths[rows] + past_end)  # nothing more to generate
            if step == max_steps - 1 or bool(ended.all()):
                break
            live = (~ended).nonzero().squeeze(-1)
            if len(live) < len(rows):  # drop finished rows: the rest of the batch stops paying for them
                cache.batch_select_indices(live)
                rows, mask, token = rows[live], mask[live], token[live]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position_ids(mask)[:, -1:],
                        cache=cache, use_cache=True)
    finally:
        capture.remove()
        every.remove()

    lengths = torch.where(ended_at, lengths, produced)
    steps = int(produced.max())
    continuation = tokens[:, :steps]
    valid = torch.arange(steps, device=device)[None, :] < produced[:, None]
    return Generation(
        sequences=torch.cat([ids, torch.where(valid, continuation, pad_id)], dim=1),
        attention_mask=torch.cat([prompt_mask, valid.long()], dim=1),
        prompt_width=width,
        lengths=lengths.tolist(),
        finished_by_eos=eos_hit.tolist(),
        target_p=stats[0, :, :steps].cpu(),
        target_entropy=stats[1, :, :steps].cpu(),
        margin=stats[2, :, :steps].cpu(),
        logits=_assemble(kept, batch, steps) if kept else None,
        hidden={n: _assemble(v, batch, steps) for n, v in hidden.items()},
        aux={n: torch.cat([prefix[n], _assemble(stepped[n], batch, steps, prefix[n])], dim=1) for n in aux_layers},
        past_end=past_end,
    )


def _assemble(per_step: list[tuple[torch.Tensor, torch.Tensor]], batch: int, steps: int,
              like: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, D] from (live rows, [live, D] values) per step; zeros where a row had already ended (and
    everywhere when no step ran: dtype and width from `like`)."""
    first = per_step[0][1] if per_step else like
    assert first is not None
    out = torch.zeros((batch, steps, first.shape[-1]), dtype=first.dtype, device=first.device)
    for step, (rows, values) in enumerate(per_step):
        out[rows, step] = values
    return out
