"""The target's teacher-forced pass over logged responses: a profile of served traffic without generating.

One forward pass over prompt + logged response gives, at every response position, the target's
logits given the logged prefix. It returns the same `Generation` record that `generation.generate`
does, so the drafts' passes and the token records are the profiler's usual ones.

Greedy (T = 0): the logged response is the target's greedy trace only as long as each logged token
is the target's argmax. The continuation is the response up to the first disagreement, then the
target's own token there (it is the greedy continuation's next token, and the drafts are scored on
it like any other); a response that agrees to its end gets the EOS token the target then chooses, if
it chooses one. So a log of the target's own greedy outputs gives exactly the generated continuation
(up to the round trip of text to token ids: `prompts.parquet`'s finish_reason is "eos", "length"
(the cap or the end of the log) or "disagree"). The agreement counts go to run.json per prompt.

Sampling (T > 0): the logged tokens are taken as samples from the served target at the same
temperature and top-p, as `--temperature`/`--top-p` say; the whole response (up to the cap) is the
continuation, nothing is appended (whether the served sample ended on EOS is not in the text), and
β = Σ min(p, q) is computed against the target's processed distribution at each logged position.

What this module does not do: generate, or score drafts (`profiler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specprof.core.records.corpus import Prompt
from specprof.engines.hf import sampling
from specprof.engines.hf.generation import Generation, LayerCapture, left_pad, position_ids
from specprof.engines.hf.models import context_limit
from specprof.engines.hf.prompts import context_limit_of, encode_all
from specprof.errors import SpecprofError


@dataclass
class TargetPass(Generation):
    """A `Generation` read off logged responses, with how far each response was the target's greedy trace."""

    logged_tokens: list[int] = field(default_factory=list)  # [B] response tokens considered (capped)
    agree: list[int] = field(default_factory=list)  # [B] positions where the logged token is the target's argmax
    used: list[int] = field(default_factory=list)  # [B] logged tokens kept as the continuation
    finish_reasons: list[str] = field(default_factory=list)  # [B] "eos", "length" or "disagree"


@torch.inference_mode()
def target_pass(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    capture_layers: Sequence[int] = (),
) -> TargetPass:
    """Teacher-force the target over each prompt + logged response (capped at `max_new_tokens`).

    Example (T = 0): response [5, 7, 9] where the target's argmax is [5, 8, …]: agree 1 of 3, the
    continuation is [5, 8] (the logged 5, then the target's own 8), finish "disagree".
    """
    # Long on purpose: the teacher-forced pass in one piece, mirroring generate's records field by field.
    device = next(model.parameters()).device
    logged = [list(r[:max_new_tokens]) for r in responses]
    row_logits, row_hidden = _forward_rows(model, prompts, logged, pad_id, capture_layers)
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    batch, width = prompt_ids.shape

    eos = set(int(e) for e in eos_ids)
    continuations, finish, agree, used = [], [], [], []
    for i, r in enumerate(logged):
        greedy = row_logits[i].float().argmax(dim=-1).cpu()  # [R + 1] the target's choice at each position
        same = greedy[: len(r)] == torch.tensor(r, dtype=torch.long)
        agree.append(int(same.sum()))
        if temperature > 0:  # samples of the served target: all of them are the trace
            continuations.append(r)
            finish.append("length")
            used.append(len(r))
            continue
        first_miss = int((~same).nonzero()[0]) if not bool(same.all()) else len(r)
        used.append(first_miss)
        choice = int(greedy[first_miss])
        if first_miss < len(r) or not r:  # the greedy trace leaves the log here: its own token ends our knowledge
            continuations.append(r[:first_miss] + [choice])
            finish.append("eos" if choice in eos else "disagree")
        elif len(r) < max_new_tokens and choice in eos:
            continuations.append(r + [choice])
            finish.append("eos")
        else:
            continuations.append(r)
            finish.append("length")

    steps = max(len(c) for c in continuations)
    lengths = [len(c) for c in continuations]
    continuation = torch.full((batch, steps), pad_id, dtype=torch.long)
    for i, c in enumerate(continuations):
        continuation[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    continuation = continuation.to(device)
    valid = torch.arange(steps, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    stats = torch.zeros((3, batch, steps), dtype=torch.float32)  # p, entropy, margin; one row at a time bounds memory
    for i, (x, c) in enumerate(zip(row_logits, continuations)):
        if not c:  # an empty sampled response: nothing to score
            continue
        x = x[: len(c)]  # [n, V] predicting positions 0 .. n-1
        probs = sampling.probabilities(x, temperature, top_p)
        top2 = x.float().topk(min(2, x.shape[-1]), dim=-1).values
        stats[0, i, : len(c)] = probs.gather(-1, torch.tensor(c, device=device)[:, None]).squeeze(-1).cpu()
        stats[1, i, : len(c)] = sampling.entropy(probs).cpu()
        stats[2, i, : len(c)] = (top2[:, 0] - top2[:, -1]).cpu()
    return TargetPass(
        sequences=torch.cat([prompt_ids, continuation], dim=1),
        attention_mask=torch.cat([prompt_mask, valid.long()], dim=1),
        prompt_width=width,
        lengths=lengths,
        finished_by_eos=[f == "eos" for f in finish],
        target_p=stats[0],
        target_entropy=stats[1],
        margin=stats[2],
        # [B, T, V] predicting positions 0 .. T-1; kept only when sampling, as generation does
        logits=_stack([x[:n] for x, n in zip(row_logits, lengths)], steps) if temperature > 0 else None,
        hidden={n: _stack([x[:k] for x, k in zip(states, lengths)], steps) for n, states in row_hidden.items()},
        logged_tokens=[len(r) for r in logged],
        agree=agree,
        used=used,
        finish_reasons=finish,
    )


PAD_SLACK = 0.1  # a chunk of rows may spend this share of its slots on padding


def _forward_rows(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], logged: Sequence[list[int]], pad_id: int,
    capture_layers: Sequence[int],
) -> tuple[list[torch.Tensor], dict[int, list[torch.Tensor]]]:
    """Per row, the logits [R + 1, V] at the positions predicting each response token and the one after,
    and the captured layers' states [R + 1, H] there.

    Rows run in chunks of similar length, each sequence left-padded whole, so a row's response
    positions are the last R + 1 columns and little compute goes to padding: the pass is compute
    bound (one prefill over every prompt + response), unlike generation, which pays a step per token.
    """
    device = next(model.parameters()).device
    sequences = [list(p) + r for p, r in zip(prompts, logged)]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    chunks: list[list[int]] = []
    for i in order:  # ascending length: the newest row sets the chunk's padded width
        chunk = chunks[-1] if chunks else None
        if chunk and (len(chunk) + 1) * len(sequences[i]) <= (1 + PAD_SLACK) * sum(
            len(sequences[j]) for j in [*chunk, i]
        ):
            chunk.append(i)
        else:
            chunks.append([i])
    row_logits: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    row_hidden: dict[int, list[torch.Tensor]] = {n: [torch.empty(0)] * len(sequences) for n in capture_layers}
    for chunk in chunks:
        ids, mask = left_pad([sequences[i] for i in chunk], pad_id, device)
        keep = max(len(logged[i]) for i in chunk) + 1
        capture = LayerCapture(model, capture_layers, last_only=False)
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
                           logits_to_keep=keep).logits  # [b, keep, V]
        finally:
            capture.remove()
        for j, i in enumerate(chunk):
            n = len(logged[i]) + 1
            row_logits[i] = logits[j, keep - n :]
            for layer, states in capture.states.items():  # the state after layer L at column c predicts column c+1
                row_hidden[layer][i] = states[j, states.shape[1] - n :]
    return row_logits, row_hidden


def _stack(rows: Sequence[torch.Tensor], steps: int) -> torch.Tensor:
    """[B, steps, D] from rows of [n_i ≤ steps, D], zeros after each row's end."""
    out = rows[0].new_zeros((len(rows), steps, rows[0].shape[-1]))
    for i, x in enumerate(rows):
        out[i, : x.shape[0]] = x
    return out


def agreement_rows(prompts: Sequence[Prompt], result: TargetPass) -> dict[str, dict]:
    """run.json's per-prompt agreement rows for one batch."""
    return {
        p.id: {"domain": p.domain, "logged": n, "agree": a, "used": u}
        for p, n, a, u in zip(prompts, result.logged_tokens, result.agree, result.used)
    }


def encode_responses(encoded: Sequence, tokenizer: object) -> None:
    """Tokenise each prompt's logged response as the engine's continuation of the prompt (no special tokens)."""
    for e in encoded:
        e.response_ids = list(tokenizer(e.prompt.response, add_special_tokens=False)["input_ids"])


def prepare_logged(
    prompts: Sequence[Prompt], target, drafts: Sequence, settings, too_long: str
) -> tuple[list, list[str]]:
    """`profiler.prepare` for logged responses: prompt + response (+ the one token after) must fit the context."""
    encoded = encode_all(prompts, target, settings.chat_template)
    encode_responses(encoded, target.tokenizer)
    limits = [n for n in [context_limit(target)] + [context_limit_of(d) for d in drafts] if n]
    if not limits:
        return encoded, []
    context = min(limits)
    kept, skipped = [], []
    for e in encoded:
        length = len(e.ids) + min(len(e.response_ids), settings.max_new_tokens) + 1
        if length <= context:
            kept.append(e)
        elif too_long == "error":
            raise SpecprofError(f"{e.prompt.source}: prompt {e.prompt.id!r} and its logged response have {length - 1} "
                                f"tokens, over the model context of {context} (--too-long skip to skip it)")
        else:
            skipped.append(e.prompt.id)
    if not kept:
        raise SpecprofError(f"every prompt with its logged response is longer than the model context of {context} "
                            "tokens")
    return kept, skipped
