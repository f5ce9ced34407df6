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
from typing import Literal

import torch

from specprof.core import distill_eval
from specprof.engines.hf.drafts import decoder_parts, decoder_shell
from specprof.engines.hf.models import LoadedModel
from specprof.errors import SpecprofError

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # Llama-style decoders whose layers take embeddings as is
Objective = Literal["kl", "ce"]
MIN_STEPS_PER_EPOCH = 8
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


# ---------------------------------------------------------------- 1. sequences


def sequences_from_report(directory: Path) -> tuple[list[TokenSequence], dict]:
    """Prompt tokens and greedy continuations of a finished profile report (one draft's rows)."""
    from specprof.core.reportfiles import load_report

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
    from specprof.engines.hf.profiler import make_batches

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


def train(
    head: DraftHead, target: LoadedModel, train_items: Sequence[Cached], heldout: Sequence[Cached],
    settings: DistillSettings, deadline: float, progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train the head on cached states; keep the weights with the best held-out α.

    The learning rate warms up, then decays (cosine) towards the end of training: the last step of
    the last epoch, or the step the deadline allows at the measured pace, whichever comes first,
    so a time-bound run still ends on a small learning rate.
    """
    device = next(target.model.parameters()).device
    autocast = device.type == "cuda" and target.model.dtype in (torch.bfloat16, torch.float16)
    generator = torch.Generator().manual_seed(settings.seed)
    params = head.trainable()
    # fused: one kernel for all tensors; the default per-tensor loop costs ~0.5 s a step on a 2-core CPU
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    # Small corpora still get several steps per epoch (and several evaluations).
    step_tokens = min(settings.step_tokens, -(-sum(len(c.positions) for c in train_items) // MIN_STEPS_PER_EPOCH))
    steps_per_epoch = len(make_steps(train_items, step_tokens, torch.Generator().manual_seed(0)))
    total = steps_per_epoch * settings.epochs
    horizon = [total]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: distill_eval.lr_factor(s, settings.warmup_steps, horizon[0])
    )
    eval_every = max(1, steps_per_epoch // settings.evals_per_epoch)
    stopper = distill_eval.EarlyStopping(settings.patience)
    stopper.update(0, alpha(count_matches(head, target, heldout)))
    best = head.state()
    history = [{"step": 0, "loss": None, "heldout_alpha": stopper.best}]
    step, losses, trained_tokens, start = 0, [], 0, time.perf_counter()
    stopped, epochs_run = "epochs", 0.0

    def batches():
        for epoch in range(settings.epochs):
            groups = make_steps(train_items, step_tokens, generator)
            for i, group in enumerate(groups):
                yield epoch + (i + 1) / len(groups), group

    for epoch_done, group in batches():
        if time.perf_counter() > deadline:
            stopped = "time limit"
            break
        items = [train_items[i] for i in group]
        states, mask, rows, cols = _pad_batch(items, device, torch.float32)
        with torch.autocast(device.type, dtype=target.model.dtype, enabled=autocast):
            logits = head.logits(head.hidden(states, mask)[rows, cols])
        loss = loss_fn(logits, items, settings.objective, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(loss.item())
        trained_tokens += len(rows)
        if step % eval_every == 0 or epoch_done == settings.epochs:
            score = alpha(count_matches(head, target, heldout))
            if stopper.update(step, score):
                best = head.state()
            recent = losses[-eval_every:]
            history.append({"step": step, "loss": sum(recent) / len(recent), "heldout_alpha": score})
            pace = (time.perf_counter() - start) / step  # seconds per step, evaluations included
            left_s = deadline - time.perf_counter()
            if left_s < pace * (total - step):  # the deadline comes first: decay towards the step it allows
                horizon[0] = step + max(0, int(left_s / pace))
        if progress:
            elapsed = time.perf_counter() - start
            # epochs group sequences afresh, so the expected count can be off by a few steps
            progress(TrainProgress(step, max(step, horizon[0]), epoch_done, losses[-1],
                                   history[-1]["heldout_alpha"], trained_tokens / max(elapsed, 1e-9), elapsed))
        epochs_run = epoch_done
        if stopper.should_stop:
            stopped = "early stopping"
            break
    head.load(best)
    elapsed = time.perf_counter() - start
    return TrainResult(step, epochs_run, stopped, stopper.best_step, history, trained_tokens / max(elapsed, 1e-9))


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


# ---------------------------------------------------------------- the whole run


REPORT_MARKER = "run.json"


def is_report(path: Path) -> bool:
    """A profile report directory (or one of its files) rather than a prompt corpus."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    return (directory / REPORT_MARKER).exists() and (path.is_dir() or path.name in (REPORT_MARKER, "tokens.parquet",
                                                                                       "prompts.parquet"))


@dataclass(frozen=True)
class Source:
    """What SOURCE holds: a report's sequences (and its target) or a corpus to generate from."""

    path: Path
    kind: Literal["report", "corpus"]
    target_spec: str | None  # the report's target, when SOURCE is a report
    target_fingerprint: str | None
    sequences: list[TokenSequence] | None = None  # report: prompts and greedy continuations
    prompts: list | None = None  # corpus: `corpus.Prompt` records


def read_source(path: Path) -> Source:
    path = Path(path)
    if is_report(path):
        sequences, run = sequences_from_report(path if path.is_dir() else path.parent)
        target = run.get("target") or {}
        return Source(path, "report", target.get("name"), target.get("fingerprint"), sequences=sequences)
    from specprof.core.corpus import load_corpus

    return Source(path, "corpus", None, None, prompts=load_corpus(path))


def check_target(target: LoadedModel, source: Source, layers: int) -> None:
    check_architecture(target.model)
    n = target.num_layers
    if not 1 <= layers < n:
        raise SpecprofError(f"--layers {layers}: must be between 1 and {n - 1} (the target has {n} layers)")
    if source.kind == "report" and source.target_fingerprint and source.target_fingerprint != target.fingerprint:
        raise SpecprofError(
            f"{source.path}: profiled with target {source.target_spec} (fingerprint {source.target_fingerprint}), "
            f"not {target.name} ({target.fingerprint}); pass the report's --target or a prompt corpus"
        )


@dataclass(frozen=True)
class GenerationSettings:
    """How continuations are generated when SOURCE is a corpus (as `profile` does)."""

    max_new_tokens: int = 128
    batch_size: int = 32
    chat_template: bool = True


@dataclass(frozen=True)
class DistillResult:
    out_dir: Path
    table: object  # pandas DataFrame from distill_eval.alpha_table: held-out α per domain, before and after
    record: dict  # what distill.json holds


Events = Callable[..., None]  # events(phase, **fields): "generate", "cache", "train", "save", "notice"

SAVE_RESERVE_S = 20.0  # of --max-minutes, kept for the final evaluation and saving


def run_distill(
    source: Source, target: LoadedModel, settings: DistillSettings, out_dir: Path,
    generation: GenerationSettings = GenerationSettings(), *, started: float | None = None,
    overwrite: bool = False, events: Events | None = None,
) -> DistillResult:
    """Sequences → cached frozen states → training → per-domain held-out α → DRAFT_DIR (see module docstring)."""
    started = time.perf_counter() if started is None else started
    deadline = started + 60 * settings.max_minutes - SAVE_RESERVE_S
    emit = events or (lambda phase, **fields: None)
    staging = _prepare_out(out_dir, overwrite)
    try:
        record, table = _distill(source, target, settings, generation, staging, started, deadline, emit)
        _publish(staging, out_dir)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    emit("save", done=1)
    return DistillResult(out_dir, table, record)


def _distill(source: Source, target: LoadedModel, settings: DistillSettings, generation: GenerationSettings,
             staging: Path, started: float, deadline: float, emit: Events) -> tuple[dict, object]:
    from specprof import __version__
    from specprof.core.reportfiles import write_json
    from specprof.core.store import now

    torch.manual_seed(settings.seed)
    times: dict[str, float] = {}

    clock = time.perf_counter()
    skipped: list[str] = []
    if source.sequences is not None:
        sequences = source.sequences
    else:
        from specprof.engines.hf.models import context_limit
        from specprof.engines.hf.profiler import drop_too_long, encode_all

        encoded = encode_all(source.prompts, target, generation.chat_template)
        # as `profile` does by default: prompts that do not fit the context with the continuation are skipped
        encoded, skipped = drop_too_long(encoded, [context_limit(target)], generation.max_new_tokens, "skip")
        if skipped:
            emit("notice", message=f"skipped {len(skipped)} prompt(s) longer than the model context: "
                 + ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""))
        emit("generate", done=0, total=len(encoded), tokens=0)
        sequences = sequences_from_corpus(
            encoded, target, generation.max_new_tokens, generation.batch_size,
            progress=lambda done, tokens: emit("generate", done=done, total=len(encoded), tokens=tokens),
        )
    times["generation_s"] = time.perf_counter() - clock
    # One order whatever the source (a report lists prompts in batch order): the split, the batches
    # and so the trained weights are the same from a report as from its corpus.
    sequences = sorted(sequences, key=lambda s: (s.domain, s.prompt_id))
    held = distill_eval.split_holdout([s.domain for s in sequences], settings.holdout, settings.seed)

    clock = time.perf_counter()
    emit("cache", done=0, total=len(sequences))
    done = [0]

    def cached_some(n: int) -> None:
        done[0] += n
        emit("cache", done=done[0], total=len(sequences))

    cached = cache_frozen(target, sequences, settings, progress=cached_some)
    times["cache_s"] = time.perf_counter() - clock
    train_items = [c for c, h in zip(cached, held) if not h]
    heldout = [c for c, h in zip(cached, held) if h]

    clock = time.perf_counter()
    head = DraftHead(target.model, settings.layers)
    before = count_matches(None, target, heldout)
    result = train(head, target, train_items, heldout, settings, deadline,
                   progress=lambda p: emit("train", progress=p))
    if result.steps == 0:
        emit("notice", message=f"--max-minutes {settings.max_minutes:g}: no training step fit after generation "
             "and caching; the saved draft is the untrained copy (raise --max-minutes)")
    after = count_matches(head, target, heldout)
    times["training_s"] = time.perf_counter() - clock

    emit("save")
    table = distill_eval.alpha_table(before, after)
    draft = assemble_draft(target.model, head, settings.layers)
    save_draft(draft, target.tokenizer, staging)
    times["total_s"] = time.perf_counter() - started
    record = {
        "specprof_version": __version__,
        "created_at": now(),
        "source": {"path": str(source.path), "kind": source.kind},
        "target": target.describe(),
        "draft": {
            "layers": settings.layers + 1,
            "frozen_layers": settings.layers,
            "trainable_parameters": sum(p.numel() for p in head.trainable()),
            "parameters": sum(p.numel() for p in draft.parameters()),
        },
        "device": str(next(target.model.parameters()).device),
        "dtype": str(next(target.model.parameters()).dtype).removeprefix("torch."),
        "settings": {**settings.__dict__, **({} if source.kind == "report" else {"generation": generation.__dict__})},
        "data": {
            "prompts": len(sequences),
            "train_prompts": len(train_items),
            "heldout_prompts": len(heldout),
            "heldout_prompt_ids": [c.prompt_id for c in heldout],
            "skipped_prompts": skipped,
            "train_positions": sum(len(c.positions) for c in train_items),
            "train_continuation_tokens": sum(int(c.scored.sum()) for c in train_items),
            "heldout_tokens": sum(int(c.scored.sum()) for c in heldout),
        },
        "training": {
            "steps": result.steps,
            "epochs": round(result.epochs_run, 3),
            "stopped_by": result.stopped,
            "best_step": result.best_step,
            "tokens_per_s": result.train_tokens_per_s,
            "history": result.history,
        },
        "heldout_alpha": table.to_dict(orient="records"),
        "time_s": times,
    }
    write_json(staging / "distill.json", record)
    return record, table


def _prepare_out(out_dir: Path, overwrite: bool) -> Path:
    """Refuse a non-empty DRAFT_DIR unless `overwrite`; return a staging directory beside it."""
    import os
    import tempfile

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecprofError(f"--out {out_dir}: exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise SpecprofError(f"--out {out_dir}: directory is not empty; pass --overwrite to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a model directory is read by servers
        return staging
    except OSError as e:
        raise SpecprofError(f"--out {out_dir}: cannot create the directory ({e.strerror or e})") from None


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished draft into place: DRAFT_DIR appears whole or not at all."""
    import os
    import shutil

    if out_dir.exists():
        old = staging.with_name(staging.name + ".old")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
