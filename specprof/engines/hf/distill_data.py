"""What `specprof distill` learns from: the target's sequences and its frozen layers' output, cached once.

1. sequences: each prompt's tokens plus the target's greedy continuation, read from a profile
   report (no generation) or generated exactly as `profile` does (`generation.generate`);
2. one teacher-forced pass of the target caches, per sequence, the hidden state after layer L (the
   frozen layers' output, which is the new layer's input) and the target's top-K log-probabilities
   at every trained position: training (`distill`) never runs the frozen layers again.

Also the run's settings, which both steps and training read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from specprof.engines.hf.models import LoadedModel
from specprof.errors import SpecprofError

Objective = Literal["kl", "ce"]
# Peak learning rates. Measured on SmolLM2 at L = 4 (README, "Choosing the defaults"): KL at 3e-3 reached
# a held-out α of 0.30 in 6 minutes, KL at 1e-3 0.23, cross-entropy at 3e-3 0.27 and at 1e-3 0.24.
DEFAULT_LR = {"kl": 3e-3, "ce": 3e-3}
Positions = Literal["continuation", "all"]


@dataclass(frozen=True)
class DistillSettings:
    layers: int  # L: frozen target layers; the draft has L + 1
    # at most; --max-minutes usually ends a CPU run first. On SmolLM2 (L = 4) held-out α was 0.31 after an 8-epoch
    # run and 0.32 after 13 epochs of a 14-epoch one, with no sign of overfitting under early stopping
    epochs: int = 16
    lr: float = DEFAULT_LR["kl"]
    objective: Objective = "kl"
    holdout: float = 0.1  # fraction of prompts per domain held out for early stopping
    seed: int = 0
    max_minutes: float = 12.0  # wall-clock bound on the whole run, generation included
    positions: Positions = "continuation"  # which next-token predictions are trained
    top_k: int = 64  # target log-probabilities kept per position for the KL objective
    # trained positions per optimiser step (about: whole sequences are grouped). Small steps learn more per
    # second on a CPU: 128 → α 0.30 in 6 minutes, 256 → 0.28, 1024 → 0.23 (SmolLM2, L = 4, KL at 3e-3)
    step_tokens: int = 128
    weight_decay: float = 0.0
    warmup_steps: int = 10
    evals_per_epoch: int = 2
    patience: int = 4  # evaluations without a held-out improvement before stopping


@dataclass(frozen=True)
class TokenSequence:
    """One prompt and the target's continuation, as token ids."""

    prompt_id: str
    domain: str
    tokens: list[int]  # prompt then continuation
    prompt_len: int  # P: position P - 1 predicts the first continuation token


@dataclass(frozen=True)
class Cached:
    """Everything training needs from one sequence, computed once by the frozen target."""

    prompt_id: str
    domain: str
    hidden: torch.Tensor  # [S, H] hidden state after layer L at every position
    positions: torch.Tensor  # [N] positions whose next-token prediction is trained (or evaluated)
    target_ids: torch.Tensor  # [N, K] the target's top-K tokens there
    target_logprobs: torch.Tensor  # [N, K] float32, their log-probabilities
    labels: torch.Tensor  # [N] the target's token: the continuation's next token, else the target's argmax
    scored: torch.Tensor  # [N] bool: a continuation position, where α is measured

    @property
    def length(self) -> int:
        return int(self.hidden.shape[0])


# ---------------------------------------------------------------- 1. sequences


def sequences_from_report(directory: Path) -> tuple[list[TokenSequence], dict]:
    """Prompt tokens and greedy continuations of a finished profile report (one draft's rows)."""
    from specprof.core.records.reportfiles import load_report

    report = load_report(directory)
    temperature = float(report.run.get("settings", {}).get("temperature", 0.0))
    if temperature > 0:
        raise SpecprofError(
            f"{directory}: profiled at --temperature {temperature}; distill trains on greedy continuations "
            "(profile again with --temperature 0, or pass the prompt corpus)"
        )
    prompts = report.frame("prompts", ["prompt_id", "domain", "prompt_tokens"])
    tokens = report.frame("tokens", ["draft", "prompt_id", "position", "target_token"])
    if tokens.empty:
        raise SpecprofError(f"{directory}: the report holds no tokens")
    first = tokens["draft"].iloc[0]
    tokens = tokens[tokens["draft"] == first].sort_values(["prompt_id", "position"])
    continuation = tokens.groupby("prompt_id", sort=False)["target_token"].agg(list).to_dict()
    out = []
    for row in prompts.itertuples():
        ids = [int(t) for t in row.prompt_tokens]
        out.append(TokenSequence(row.prompt_id, row.domain, ids + [int(t) for t in continuation.get(row.prompt_id, [])],
                             len(ids)))
    return out, report.run


def sequences_from_corpus(
    encoded: Sequence, target: LoadedModel, max_new_tokens: int, batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[TokenSequence]:
    """Greedy continuations generated exactly as `profile` does: same batches, same `generate`."""
    from specprof.engines.hf.generation import generate
    from specprof.engines.hf.models import eos_token_ids
    from specprof.engines.text import make_batches

    eos = eos_token_ids(target)
    out: list[TokenSequence] = []
    done = 0
    for batch in make_batches(encoded, batch_size):
        gen = generate(target.model, [e.ids for e in batch], max_new_tokens=max_new_tokens, eos_ids=eos,
                       pad_id=eos[0] if eos else 0)
        continuation = gen.continuation.cpu()
        for i, e in enumerate(batch):
            out.append(TokenSequence(e.prompt.id, e.prompt.domain, e.ids + continuation[i, : gen.lengths[i]].tolist(),
                                 len(e.ids)))
        done += len(batch)
        if progress:
            progress(done, sum(gen.lengths))
    order = {e.prompt.id: i for i, e in enumerate(encoded)}
    return sorted(out, key=lambda s: order[s.prompt_id])


# ---------------------------------------------------------------- 2. the frozen pass, once


def _common_prefix(sequences: Sequence[TokenSequence]) -> int:
    """Length of the prefix every prompt shares (a chat template's system prompt): trained once, not per prompt."""
    if len(sequences) < 2:
        return 0
    first = sequences[0].tokens
    n = min(s.prompt_len for s in sequences)
    for s in sequences[1:]:
        while n and s.tokens[:n] != first[:n]:
            n -= 1
    return n


@torch.no_grad()  # not inference_mode: the cached tensors take part in training's autograd graph
def cache_frozen(
    target: LoadedModel, sequences: Sequence[TokenSequence], settings: DistillSettings,
    batch_tokens: int = 8192, progress: Callable[[int], None] | None = None,
) -> list[Cached]:
    """Run the target teacher-forced over every sequence once; keep what training needs (see `Cached`)."""
    from specprof.engines.hf.generation import left_pad, position_ids

    model, layers = target.model, settings.layers
    device = next(model.parameters()).device
    skip = _common_prefix(sequences) if settings.positions == "all" else 0
    states: dict[str, torch.Tensor] = {}
    hook = model.model.layers[layers - 1].register_forward_hook(
        lambda module, args, output: states.__setitem__("h", output[0] if isinstance(output, tuple) else output)
    )
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].tokens))
    result: list[Cached | None] = [None] * len(sequences)
    try:
        start = 0
        while start < len(order):
            width = len(sequences[order[start]].tokens)
            rows = order[start : start + max(1, batch_tokens // max(width, 1))]
            start += len(rows)
            batch = [sequences[i] for i in rows]
            ids, mask = left_pad([s.tokens for s in batch], 0, device)
            final = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
            for j, (i, s) in enumerate(zip(rows, batch)):
                n = len(s.tokens)
                pad = ids.shape[1] - n
                first = max(s.prompt_len - 1, 0) if settings.positions == "continuation" else max(skip - 1, 0)
                if i == 0 and settings.positions == "all":
                    first = 0  # the shared prefix is trained once, on the first prompt
                pos = torch.arange(first, n - 1, device=device)  # position t predicts token t + 1
                logprobs = torch.log_softmax(model.lm_head(final[j, pad + pos]).float(), dim=-1)
                top = logprobs.topk(min(settings.top_k, logprobs.shape[-1]), dim=-1)
                nxt = torch.tensor(s.tokens[1:], device=device)[pos]
                scored = pos >= s.prompt_len - 1
                labels = torch.where(scored, nxt, top.indices[:, 0])
                result[i] = Cached(
                    s.prompt_id, s.domain, states["h"][j, pad:].clone(), pos.cpu(), top.indices.cpu(),
                    top.values.cpu(), labels.cpu(), scored.cpu(),
                )
            if progress:
                progress(len(rows))
    finally:
        hook.remove()
    return result  # type: ignore[return-value]
