"""Train an EAGLE-3 head on the target's own continuations (`specprof distill --arch eagle3`).

Data: each sequence's captured target states (vLLM's default layers, `eagle3_load.default_aux_layers`;
(0, L // 2, L) for a target too shallow for them), computed once. The head starts as the crude head
that already accepts: `fc` passes the deepest captured layer through, the decoder layer is a copy
of the target's last one (reading the hidden half of its 2·hidden input), the final norm and the LM
head are the target's (the LM head restricted to the draft vocabulary and frozen). Training-time
test: depth 1 is the causal pass over the target's features; depth d ≥ 2 feeds each row the true
token (what an accepted draft would be) and its own depth d − 1 state, attending to the depth-1
rows up to itself and its own earlier depth rows, as drafting does. Loss: cross-entropy against the
target's distribution (its SOFT_TOP likeliest next tokens, from the same pass that captures the
states, renormalised inside the draft vocabulary: soft labels teach the ranking behind the argmax a
greedy verifier checks), weighted 0.8^(d−1). Against overfitting the short data (EAGLE's own
remedy): each step adds Gaussian noise to the captured states, NOISE of each layer's RMS; the
learning rate decays on a cosine over the time left to a tenth. The draft vocabulary is the tokens of the training
continuations, most frequent first (with EOS), written with `d2t`/`t2d`. Time-bounded: stops at
the deadline, keeps the best held-out state.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from specprof.engines.hf.distill_data import TokenSequence
from specprof.engines.hf.eagle3 import Eagle3Head
from specprof.engines.hf.eagle3_load import HeadConfig, default_aux_layers
from specprof.engines.hf.eagle3_profile import capture_aux_and_logits
from specprof.engines.hf.models import LoadedModel, eos_token_ids

UNROLL = 3  # training-time test depths
NOISE = 0.05  # training-time noise on the captured states, relative to each captured layer's RMS
MAX_DRAFT_VOCAB = 16384
SOFT_TOP = 32  # the target's likeliest next tokens kept per position: the soft labels


@dataclass
class Item:
    tokens: torch.Tensor  # [N]
    aux: torch.Tensor  # [N, n·H]
    prompt_len: int
    domain: str
    # the target's next-token distribution after each position, its SOFT_TOP likeliest tokens: ids [N, K], p [N, K]
    soft_ids: torch.Tensor | None = None
    soft_p: torch.Tensor | None = None


def aux_layers(num_layers: int) -> tuple[int, ...]:
    ids = default_aux_layers(num_layers)
    if min(ids) < 0 or len(set(ids)) < len(ids):
        ids = (0, num_layers // 2, num_layers)
    return tuple(sorted(ids))


def items_of(target: LoadedModel, sequences: Sequence[TokenSequence], ids: Sequence[int]) -> list[Item]:
    device = next(target.model.parameters()).device
    out = []
    for s in sequences:
        tokens = torch.tensor(s.tokens, device=device)
        aux, logits = capture_aux_and_logits(target.model, tokens[None], torch.ones_like(tokens)[None], ids)
        scores = logits[0].float()
        top = scores.topk(SOFT_TOP, dim=-1)  # the likeliest tokens, their probabilities over the whole vocabulary
        p = (top.values - scores.logsumexp(dim=-1, keepdim=True)).exp()
        out.append(Item(tokens, aux[0].float().clone(), s.prompt_len, s.domain, top.indices, p))
    return out


def draft_vocabulary(target: LoadedModel, items: Sequence[Item], vocab: int) -> torch.Tensor:
    """Target ids of the draft vocabulary, ascending: the continuations' tokens by frequency, EOS included."""
    counts = Counter(t for it in items for t in it.tokens[it.prompt_len:].tolist())
    keep = [t for t, _ in counts.most_common(MAX_DRAFT_VOCAB)] + list(eos_token_ids(target))
    return torch.tensor(sorted(set(keep))[:vocab], dtype=torch.long)


def initial_head(target: LoadedModel, ids: Sequence[int], keep: torch.Tensor) -> Eagle3Head:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model = target.model
    text = model.config.get_text_config()
    h = int(text.hidden_size)
    llama = {k: v for k, v in text.to_dict().items() if k not in ("architectures", "torch_dtype", "dtype")}
    llama["num_hidden_layers"] = 1
    heads = int(text.num_attention_heads)
    config = HeadConfig(
        layout="eagle", hidden_size=h, num_heads=heads, num_kv_heads=int(text.num_key_value_heads or heads),
        head_dim=int(getattr(text, "head_dim", None) or h // heads), intermediate_size=int(text.intermediate_size),
        num_layers=1, rms_norm_eps=float(text.rms_norm_eps), vocab_size=int(text.vocab_size),
        draft_vocab_size=len(keep), target_hidden_size=h, norm_before_residual=False, norm_before_fc=False,
        fc_norm=False, norm_output=False, aux_layer_ids=tuple(ids), llama=llama)
    head = Eagle3Head(config, model.model.embed_tokens, None)
    last = model.model.layers[-1]
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, (len(ids) - 1) * h:] = torch.eye(h)  # the deepest captured layer passes through
        layer = head.layers[0]
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(layer, name).weight.zero_()
            getattr(layer, name).weight[:, h:] = getattr(last.self_attn, name).weight.float()
        layer.o_proj.weight.copy_(last.self_attn.o_proj.weight.float())
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer, name).weight.copy_(getattr(last.mlp, name).weight.float())
        layer.hidden_norm.copy_(last.input_layernorm.weight.float())
        layer.post_attention_layernorm.copy_(last.post_attention_layernorm.weight.float())
        head.norm.copy_(model.model.norm.weight.float())
        head.lm_head = torch.nn.Linear(h, len(keep), bias=False)
        head.lm_head.weight.copy_(model.lm_head.weight[keep].float())
        head.d2t = keep - torch.arange(len(keep))
    head.lm_head.weight.requires_grad_(False)
    device = next(model.parameters()).device
    head = head.to(device)
    head.rotary = LlamaRotaryEmbedding(LlamaConfig(**{**llama, "head_dim": config.head_dim})).to(device)
    return head


def noisy(aux: torch.Tensor, n_layers: int, generator: torch.Generator) -> torch.Tensor:
    """aux [N, n·H] plus Gaussian noise of NOISE × each captured layer's RMS over the sequence."""
    layers = aux.unflatten(-1, (n_layers, -1))
    scale = NOISE * layers.pow(2).mean(dim=(0, 2), keepdim=True).sqrt()
    noise = torch.randn(layers.shape, generator=generator).to(aux.device, aux.dtype)
    return (layers + scale * noise).flatten(-2)


def sequence_loss(head: Eagle3Head, item: Item, to_draft: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time test over one sequence: Σ_d 0.8^(d−1) · CE of depth d on continuation positions
    (with `generator`: on noisy captured states, `noisy`)."""
    tokens, n = item.tokens, len(item.tokens) - 1
    device = tokens.device
    aux = item.aux[:-1] if generator is None else noisy(item.aux[:-1], len(head.aux_layers), generator)
    out, state, kv = head.rows(tokens[1:], head.combine(aux), torch.arange(n, device=device))
    own = [(k.new_zeros((n, 0, *k.shape[1:])), v.new_zeros((n, 0, *v.shape[1:]))) for k, v in kv]
    total = out.new_zeros(())
    for depth in range(1, UNROLL + 1):
        rows = n - depth  # rows j predict z_{j + depth + 1}, which exists for j < N − 1 − depth
        if rows <= 0:
            break
        if depth > 1:
            visible = torch.arange(n, device=device)[None, :] <= torch.arange(rows, device=device)[:, None]
            own = [(o[0][:rows], o[1][:rows]) for o in own]
            out, state, new = head.rows(tokens[depth: depth + rows], state[:rows],
                                        torch.arange(rows, device=device) + depth - 1, cache=kv,
                                        own=own, visible=visible)
            own = [(torch.cat([o[0], k[:, None]], dim=1), torch.cat([o[1], v[:, None]], dim=1))
                   for o, (k, v) in zip(own, new, strict=True)]
        skip = max(item.prompt_len - depth - 1, 0)  # prompt positions: not what the head drafts
        logp = F.log_softmax(head.draft_logits(out[skip:rows]).float(), dim=-1)
        total = total + 0.8 ** (depth - 1) * target_loss(logp, item, to_draft, depth + skip, depth + rows)
    return total


def target_loss(logp: torch.Tensor, item: Item, to_draft: torch.Tensor, begin: int, end: int) -> torch.Tensor:
    """Mean cross-entropy of the head's draft log-probabilities `logp` [rows, V_draft] against the target's
    distribution after positions begin..end − 1 (its top SOFT_TOP inside the draft vocabulary, renormalised):
    the loss against the target's distribution, not only its argmax. Without soft labels: its greedy tokens."""
    if item.soft_ids is None or item.soft_p is None:
        return F.nll_loss(logp, to_draft[item.tokens[begin + 1: end + 1]], ignore_index=-100)
    ids = to_draft[item.soft_ids[begin:end]]  # [rows, K] draft ids, -100 outside the draft vocabulary
    p = torch.where(ids >= 0, item.soft_p[begin:end], 0.0)
    mass = p.sum(-1, keepdim=True)
    kept = mass[:, 0] > 0
    if not kept.any():
        return logp.new_zeros(())
    picked = logp.gather(-1, ids.clamp(min=0))
    return -((p / mass.clamp(min=1e-12)) * picked).sum(-1)[kept].mean()


@torch.no_grad()
def depth1_matches(head: Eagle3Head, item: Item) -> tuple[int, int]:
    """(continuation tokens, depth-1 proposals equal to the target's): the α `profile` reports."""
    tokens, n = item.tokens, len(item.tokens) - 1
    out, _, _ = head.rows(tokens[1:], head.combine(item.aux[:-1]), torch.arange(n, device=tokens.device))
    first = max(item.prompt_len - 2, 0)
    guess = head.greedy(out[first:])
    truth = tokens[first + 2:]
    return len(tokens) - item.prompt_len, int((guess[: len(truth)] == truth).sum())


def train(head: Eagle3Head, train_items: Sequence[Item], heldout: Sequence[Item], deadline: float,
          progress: Callable[[SimpleNamespace], None], lr: float = 1e-3, seed: int = 0) -> dict:
    """Time-bounded AdamW over the training sequences (one per step); after each pass the held-out α picks the
    state kept. `progress` gets what the distill bar shows (step out of 1000: the share of the time spent)."""
    to_draft = torch.full((head.config.vocab_size,), -100, dtype=torch.long, device=head.norm.device)
    keep = head.to_target(torch.arange(head.config.draft_vocab_size, device=head.norm.device))
    to_draft[keep] = torch.arange(len(keep), device=head.norm.device)
    params = [p for n, p in head.named_parameters() if p.requires_grad and not n.startswith("embed")]
    for p in head.embed.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in head.state_dict().items() if not k.startswith("embed.")}

    steps, tokens, evaluated = 0, 0, []
    best = (alpha([depth1_matches(head, it) for it in heldout]), snapshot())  # the untrained head competes too
    started = time.perf_counter()
    span = max(deadline - started, 1e-9)

    def share() -> float:  # of the training time spent: the learning-rate schedule and the bar both follow it
        return min(1.0, (time.perf_counter() - started) / span)

    while time.perf_counter() < deadline and train_items:
        for i in torch.randperm(len(train_items), generator=generator).tolist():
            if time.perf_counter() >= deadline:
                break
            for group in optimizer.param_groups:  # cosine decay over the time left, to a tenth
                group["lr"] = lr * (0.1 + 0.45 * (1 + math.cos(math.pi * share())))
            loss = sequence_loss(head, train_items[i], to_draft, generator)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            steps += 1
            tokens += len(train_items[i].tokens)
            elapsed = time.perf_counter() - started
            last = evaluated[-1] if evaluated else float("nan")
            progress(SimpleNamespace(total_steps=1000, step=int(1000 * share()), loss=float(loss.detach()),
                                     heldout_alpha=last,
                                     tokens_per_s=tokens / max(elapsed, 1e-9)))
        score = alpha([depth1_matches(head, it) for it in heldout])
        evaluated.append(score)
        if score > best[0]:
            best = (score, snapshot())
    head.load_state_dict(best[1], strict=False)
    return {"steps": steps, "heldout_alpha_per_epoch": evaluated}


def alpha(counts: Sequence[tuple[int, int]]) -> float:
    tokens = sum(c[0] for c in counts)
    return sum(c[1] for c in counts) / tokens if tokens else float("nan")


def save_head(head: Eagle3Head, directory: Path) -> None:
    """The EAGLE/SpecForge layout vLLM serves as {"method": "eagle3"} (no embed_tokens: the target's are shared)."""
    from safetensors.torch import save_file

    c = head.config
    layer = head.layers[0]
    weights = {"fc.weight": head.fc.weight, "norm.weight": head.norm, "lm_head.weight": head.lm_head.weight,
               "d2t": head.d2t, "midlayer.input_layernorm.weight": layer.input_layernorm,
               "midlayer.hidden_norm.weight": layer.hidden_norm,
               "midlayer.post_attention_layernorm.weight": layer.post_attention_layernorm}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        weights[f"midlayer.self_attn.{name}.weight"] = getattr(layer, name).weight
    for name in ("gate_proj", "up_proj", "down_proj"):
        weights[f"midlayer.mlp.{name}.weight"] = getattr(layer, name).weight
    t2d = torch.zeros(c.vocab_size, dtype=torch.bool)
    t2d[head.to_target(torch.arange(c.draft_vocab_size, device=head.d2t.device)).cpu()] = True
    weights["t2d"] = t2d
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"))
    config = {**c.llama, "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "num_hidden_layers": 1,
              "draft_vocab_size": c.draft_vocab_size, "target_hidden_size": c.target_hidden_size,
              "tie_word_embeddings": False, "torch_dtype": "float32",
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(c.aux_layer_ids)}}
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
