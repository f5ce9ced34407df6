"""Train a small draft on the target's own continuations (`specprof distill`).

The draft: the target's embeddings and first L decoder layers (frozen), one new decoder layer
initialised as a copy of the target's layer L (trainable), the final norm (trainable) and the
target's LM head (frozen). It is saved as an ordinary transformers model directory of the target's
own class with L + 1 layers, so `AutoModelForCausalLM.from_pretrained`, assisted generation and
serving engines load it as any draft model; it proposes from the token prefix alone, so `profile`
stays exact for it.

Steps:
  1. sequences: each prompt's tokens plus the target's greedy continuation, read from a profile
     report (no generation) or generated here exactly as `profile` does (`generation.generate`);
  2. one teacher-forced pass of the target caches, per sequence, the hidden state after layer L
     (the frozen layers' output, which is the new layer's input) and the target's top-K
     log-probabilities at every trained position: training never runs the frozen layers again;
  3. the new layer and norm learn from the cache: KL(target ‖ draft) on the target's top-K tokens
     plus the remaining mass (default), or cross-entropy on the target's own tokens, with prompts
     held out per domain for early stopping (`distill_eval`);
  4. held-out α per domain of the untrained `early-exit:L` and of the trained draft, then save.

Nothing here prints: progress goes through a callback. α on a separate corpus is `profile`'s job.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specprof.core.answers import distill_eval
from specprof.engines.hf.distill_data import Cached, DistillSettings, Objective
from specprof.engines.hf.drafts import decoder_parts, decoder_shell
from specprof.engines.hf.models import LoadedModel
from specprof.errors import SpecprofError

MIN_STEPS_PER_EPOCH = 8
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # Llama-style decoders whose layers take embeddings as is


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total_steps: int  # expected: the epochs' steps, or fewer when the deadline comes first
    epoch: float
    loss: float  # mean training loss since the last report
    heldout_alpha: float  # latest held-out α (nan before the first evaluation)
    tokens_per_s: float  # trained positions per second
    elapsed_s: float



def check_architecture(model: torch.nn.Module, where: str = "--target") -> None:
    """Refuse models whose decoder is not Llama-style: the draft is built from their own layers."""
    config = model.config.get_text_config()
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_TYPES or model.config.get_text_config() is not model.config:
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        raise SpecprofError(
            f"{where}: distill supports Llama-style decoders ({', '.join(SUPPORTED_TYPES)}); "
            f"{arch} (model_type {kind!r}) is not one"
        )
    decoder_parts(model)


# ---------------------------------------------------------------- 3. the trainable part


class DraftHead(torch.nn.Module):
    """The new layer and norm on top of cached layer-L states, with the target's frozen LM head.

    Built as a one-layer model of the target's own class fed `inputs_embeds` = the cached states,
    so masks, rotary positions and sliding windows are the target's own code.
    """

    def __init__(self, target: torch.nn.Module, layers: int):
        super().__init__()
        inner = decoder_parts(target)
        shell = decoder_shell(
            target, [layers], [copy.deepcopy(inner.layers[layers]).float()], copy.deepcopy(inner.norm).float(),
            copy.deepcopy(inner.rotary_emb).float() if hasattr(inner, "rotary_emb") else None, what="draft head",
        )
        self.decoder = shell.model
        self.lm_head = target.lm_head
        for p in self.decoder.embed_tokens.parameters():
            p.requires_grad_(False)
        for p in self.lm_head.parameters():
            p.requires_grad_(False)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [*self.decoder.layers.parameters(), *self.decoder.norm.parameters()]

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.decoder.state_dict().items() if not k.startswith("embed")}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.decoder.load_state_dict(state, strict=False)

    def hidden(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, S, H] normed output of the new layer for right-padded cached states [B, S, H]."""
        positions = torch.arange(states.shape[1], device=states.device)[None, :].expand(states.shape[0], -1)
        return self.decoder(inputs_embeds=states, attention_mask=mask, position_ids=positions,
                            use_cache=False).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()


def _pad_batch(items: Sequence[Cached], device: torch.device, dtype: torch.dtype):
    """Right-padded states [B, S, H], mask [B, S], and flat (row, position) indices of trained positions."""
    width = max(c.length for c in items)
    hidden_size = items[0].hidden.shape[1]
    states = torch.zeros((len(items), width, hidden_size), dtype=dtype, device=device)
    mask = torch.zeros((len(items), width), dtype=torch.long, device=device)
    rows, cols = [], []
    for b, c in enumerate(items):
        states[b, : c.length] = c.hidden.to(device=device, dtype=dtype)
        mask[b, : c.length] = 1
        rows.append(torch.full_like(c.positions, b))
        cols.append(c.positions)
    return states, mask, torch.cat(rows).to(device), torch.cat(cols).to(device)


def loss_fn(logits: torch.Tensor, items: Sequence[Cached], objective: Objective, device: torch.device) -> torch.Tensor:
    """Mean over positions of KL(target ‖ draft) on the target's top-K + rest, or cross-entropy."""
    draft_logprobs = torch.log_softmax(logits, dim=-1)  # [N, V]
    if objective == "ce":
        labels = torch.cat([c.labels for c in items]).to(device)
        return -draft_logprobs.gather(-1, labels[:, None]).mean()
    ids = torch.cat([c.target_ids for c in items]).to(device)  # [N, K]
    target_logprobs = torch.cat([c.target_logprobs for c in items]).to(device)  # [N, K]
    target_probs = target_logprobs.exp()
    draft_top = draft_logprobs.gather(-1, ids)  # [N, K]
    target_rest = (1 - target_probs.sum(-1)).clamp(min=1e-8)
    draft_rest = (1 - draft_top.exp().sum(-1)).clamp(min=1e-8)
    kl = (target_probs * (target_logprobs - draft_top)).sum(-1) + target_rest * (target_rest.log() - draft_rest.log())
    return kl.mean()


def make_steps(items: Sequence[Cached], step_tokens: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled groups of sequences of similar length holding about `step_tokens` trained positions each."""
    order = sorted(range(len(items)), key=lambda i: (items[i].length, torch.rand((), generator=generator).item()))
    groups, current, count = [], [], 0
    for i in order:
        current.append(i)
        count += len(items[i].positions)
        if count >= step_tokens:
            groups.append(current)
            current, count = [], 0
    if current:
        groups.append(current)
    perm = torch.randperm(len(groups), generator=generator).tolist()
    return [groups[i] for i in perm]


@torch.no_grad()
def count_matches(head: DraftHead | None, target: LoadedModel, items: Sequence[Cached], batch: int = 8
                  ) -> list[distill_eval.DomainCounts]:
    """Greedy α counts on continuation positions: the trained head, or the untrained early exit (None)."""
    device = next(target.model.parameters()).device
    out = []
    for lo in range(0, len(items), batch):
        chunk = items[lo : lo + batch]
        if head is None:
            for c in chunk:
                h = c.hidden[c.positions[c.scored]].to(device)
                logits = target.model.lm_head(target.model.model.norm(h))
                matches = int((logits.argmax(-1).cpu() == c.labels[c.scored]).sum())
                out.append(distill_eval.DomainCounts(c.domain, int(c.scored.sum()), matches))
            continue
        states, mask, rows, cols = _pad_batch(chunk, device, torch.float32)
        hidden = head.hidden(states, mask)
        for b, c in enumerate(chunk):
            logits = head.logits(hidden[b, c.positions[c.scored].to(device)])
            matches = int((logits.argmax(-1).cpu() == c.labels[c.scored]).sum())
            out.append(distill_eval.DomainCounts(c.domain, int(c.scored.sum()), matches))
    return out


def alpha(counts: Sequence[distill_eval.DomainCounts]) -> float:
    tokens = sum(c.tokens for c in counts)
    return sum(c.matches for c in counts) / tokens if tokens else float("nan")


@dataclass(frozen=True)
class TrainResult:
    steps: int
    epochs_run: float
    stopped: str  # "epochs", "early stopping" or "time limit"
    best_step: int
    history: list[dict] = field(default_factory=list)  # evaluations: step, loss, held-out α
    train_tokens_per_s: float = 0.0


@dataclass
class _Horizon:
    """Where the learning rate's cosine decay ends: the last step of the last epoch, or earlier, the
    step the deadline allows at the measured pace, so a time-bound run still ends on a small rate."""

    steps: int
    warmup_steps: int

    def factor(self, step: int) -> float:
        return distill_eval.lr_factor(step, self.warmup_steps, self.steps)

    def fit(self, step: int, elapsed_s: float, left_s: float) -> None:
        pace = elapsed_s / step  # seconds per step, evaluations included
        if left_s < pace * (self.steps - step):
            self.steps = step + max(0, int(left_s / pace))


def train(
    head: DraftHead, target: LoadedModel, train_items: Sequence[Cached], heldout: Sequence[Cached],
    settings: DistillSettings, deadline: float, progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train the head on cached states; keep the weights with the best held-out α.

    The learning rate warms up, then decays (cosine) towards the end of training (`_Horizon`).
    """
    params = head.trainable()
    # fused: one kernel for all tensors; the default per-tensor loop costs ~0.5 s a step on a 2-core CPU
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    # Small corpora still get several steps per epoch (and several evaluations).
    step_tokens = min(settings.step_tokens, -(-sum(len(c.positions) for c in train_items) // MIN_STEPS_PER_EPOCH))
    steps_per_epoch = len(make_steps(train_items, step_tokens, torch.Generator().manual_seed(0)))
    horizon = _Horizon(steps_per_epoch * settings.epochs, settings.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, horizon.factor)
    eval_every = max(1, steps_per_epoch // settings.evals_per_epoch)
    stopper = distill_eval.EarlyStopping(settings.patience)
    stopper.update(0, alpha(count_matches(head, target, heldout)))
    best = head.state()
    history = [{"step": 0, "loss": None, "heldout_alpha": stopper.best}]
    step, losses, trained_tokens, start = 0, [], 0, time.perf_counter()
    stopped, epochs_run = "epochs", 0.0
    for epoch_done, group in _batches(train_items, step_tokens, settings):
        if time.perf_counter() > deadline:
            stopped = "time limit"
            break
        loss, tokens = _train_step(head, target, [train_items[i] for i in group], settings, optimizer, params)
        schedule.step()
        step, trained_tokens = step + 1, trained_tokens + tokens
        losses.append(loss)
        if step % eval_every == 0 or epoch_done == settings.epochs:
            score = alpha(count_matches(head, target, heldout))
            if stopper.update(step, score):
                best = head.state()
            recent = losses[-eval_every:]
            history.append({"step": step, "loss": sum(recent) / len(recent), "heldout_alpha": score})
            horizon.fit(step, time.perf_counter() - start, deadline - time.perf_counter())
        if progress:
            elapsed = time.perf_counter() - start
            # epochs group sequences afresh, so the expected count can be off by a few steps
            progress(TrainProgress(step, max(step, horizon.steps), epoch_done, losses[-1],
                                   history[-1]["heldout_alpha"], trained_tokens / max(elapsed, 1e-9), elapsed))
        epochs_run = epoch_done
        if stopper.should_stop:
            stopped = "early stopping"
            break
    head.load(best)
    elapsed = time.perf_counter() - start
    return TrainResult(step, epochs_run, stopped, stopper.best_step, history, trained_tokens / max(elapsed, 1e-9))


def _batches(items: Sequence[Cached], step_tokens: int, settings: DistillSettings):
    """(epochs done after this step, indices of the step's sequences), epoch by epoch, shuffled by the seed."""
    generator = torch.Generator().manual_seed(settings.seed)
    for epoch in range(settings.epochs):
        groups = make_steps(items, step_tokens, generator)
        for i, group in enumerate(groups):
            yield epoch + (i + 1) / len(groups), group


def _train_step(head: DraftHead, target: LoadedModel, items: Sequence[Cached], settings: DistillSettings,
                optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> tuple[float, int]:
    """One optimiser step on `items`; returns (loss, trained positions)."""
    device = next(target.model.parameters()).device
    autocast = device.type == "cuda" and target.model.dtype in (torch.bfloat16, torch.float16)
    states, mask, rows, cols = _pad_batch(items, device, torch.float32)
    with torch.autocast(device.type, dtype=target.model.dtype, enabled=autocast):
        logits = head.logits(head.hidden(states, mask)[rows, cols])
    loss = loss_fn(logits, items, settings.objective, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss.item(), len(rows)


# ---------------------------------------------------------------- 4. the draft directory


def assemble_draft(target: torch.nn.Module, head: DraftHead, layers: int) -> torch.nn.Module:
    """A causal LM of the target's class with L + 1 layers: the target's first L, then the trained one.

    The frozen parts are the target's own modules (nothing is copied until saving), so their saved
    tensors are the target's, bit for bit.
    """
    inner = decoder_parts(target)
    dtype = next(target.parameters()).dtype
    trained = copy.deepcopy(head.decoder.layers[0]).to(dtype)
    layer_list = [*list(inner.layers)[:layers], trained]
    norm = copy.deepcopy(head.decoder.norm).to(dtype)
    return decoder_shell(target, range(layers + 1), layer_list, norm, what="distilled draft").eval()


def save_draft(draft: torch.nn.Module, tokenizer: object, directory: Path) -> None:
    """save_pretrained (safetensors) and the tokenizer into `directory`."""
    for p in draft.parameters():
        p.requires_grad_(False)
    draft.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
