"""An EAGLE-3 head in torch, computed as vLLM 0.32.0 computes it (`llama_eagle3.py`, `llm_base_proposer.py`).

What the head reads. The target's "auxiliary hidden states": vLLM's Llama forward appends, for a
captured layer id i, `hidden_states + residual` at the INPUT of decoder layer i (id 0: the
embeddings), i.e. the output of transformers' decoder layer i − 1 — one off from a forward hook on
`layers[i]`. `capture_aux` hooks `layers[i - 1]` (and the embeddings for id 0). The states are
concatenated in ascending layer order (the order the forward meets them) and go through `fc`
(`combine`: with `norm_before_fc` one RMSNorm over the concatenation first, with `fc_norm` one per
chunk).

One head row at position p takes a token t, a hidden state g (H) and p:
  e = input_layernorm(embed(t)); norm_before_residual: r = ĝ = hidden_norm(g), else r = g, ĝ = hidden_norm(g)
  a = o_proj(attention(q, k, v of [e, ĝ] at p, RoPE)); r = a + r; m = mlp(post_attention_layernorm(r))
  r = m + r; out = norm(r): logits = lm_head(out) over the draft vocabulary (target id = d + d2t[d]);
  the state handed to the next depth is r (pre-norm; `norm_output`: out).
Further decoder layers (num_hidden_layers > 1) are plain Llama layers on (h, r) with fused residual norms.

How vLLM drafts (`propose`). After the target has verified tokens z_0..z_m (z_m its own last token),
the head's KV cache holds one row j for every j < m, built from the target's features: token
z_{j+1}, g = fc(aux_j) of the target at position j, position j — rebuilt after every verification
from the verified tokens, so a row never depends on the block history. Depth 1 is the output of
row m − 1 (proposing z_{m+1}). Depth i ≥ 2 adds a row with the depth-(i − 1) draft token, the
previous depth's state r, at position m − 2 + i, attending to rows 0..m − 1 and the block's own
earlier depth rows. Hence a head's proposal depends on the block start m alone, and has the prefix
property: `eagle3_profile` simulates it from every start at once.

The seam for MTP layers shipped inside a checkpoint (vLLM `mtp`): the same block-start simulation
applies; an MTP module differs in what a row reads (the target's last hidden state instead of fc of
three captured layers, and its own norms): give it `combine`, `rows` and `depth_rows` with this
signature and `eagle3_profile` and `speculate` run it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from specprof.core.vocabulary import EAGLE3
from specprof.engines.hf import eagle3_load
from specprof.errors import SpecprofError


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """vLLM's RMSNorm: in float32, then back to the input's dtype, times the weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


class HeadLayer(torch.nn.Module):
    def __init__(self, config: eagle3_load.HeadConfig, first: bool):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        width = 2 * h if first else h
        bias = bool(config.llama.get("attention_bias", False))
        self.first = first
        self.q_proj = torch.nn.Linear(width, config.num_heads * d, bias=bias)
        self.k_proj = torch.nn.Linear(width, config.num_kv_heads * d, bias=bias)
        self.v_proj = torch.nn.Linear(width, config.num_kv_heads * d, bias=bias)
        self.o_proj = torch.nn.Linear(config.num_heads * d, h, bias=bias)
        mlp_bias = bool(config.llama.get("mlp_bias", False))
        self.gate_proj = torch.nn.Linear(h, config.intermediate_size, bias=mlp_bias)
        self.up_proj = torch.nn.Linear(h, config.intermediate_size, bias=mlp_bias)
        self.down_proj = torch.nn.Linear(config.intermediate_size, h, bias=mlp_bias)
        self.input_layernorm = torch.nn.Parameter(torch.ones(h))
        self.post_attention_layernorm = torch.nn.Parameter(torch.ones(h))
        if first:
            self.hidden_norm = torch.nn.Parameter(torch.ones(h))


class Eagle3Head(torch.nn.Module):
    """The head's weights and its forward pieces; nothing here keeps state between calls."""

    def __init__(self, config: eagle3_load.HeadConfig, target_embed: torch.nn.Module,
                 target_lm_head: torch.nn.Module | None):
        super().__init__()
        self.config = config
        h = config.hidden_size
        n_aux = len(config.aux_layer_ids or (0, 0, 0))
        self.fc = torch.nn.Linear(n_aux * config.target_hidden_size, h, bias=False)
        self.input_norm = torch.nn.Parameter(torch.ones(n_aux * config.target_hidden_size)) \
            if config.norm_before_fc else None
        self.fc_norm = torch.nn.ParameterList([torch.ones(config.target_hidden_size) for _ in range(n_aux)]) \
            if config.fc_norm else None
        self.layers = torch.nn.ModuleList([HeadLayer(config, i == 0) for i in range(config.num_layers)])
        self.norm = torch.nn.Parameter(torch.ones(h))
        self.embed = target_embed
        self.lm_head = target_lm_head  # replaced by the head's own when its checkpoint has one
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.aux_layers: tuple[int, ...] = config.aux_layer_ids or ()
        self.rotary = None

    # --- pieces ---------------------------------------------------------------------------------

    def combine(self, aux: torch.Tensor) -> torch.Tensor:
        """fc over the captured states concatenated in ascending layer order ([..., n·H_t] → [..., H])."""
        eps = self.config.rms_norm_eps
        if self.input_norm is not None:
            aux = rms_norm(aux, self.input_norm, eps)
        if self.fc_norm is not None:
            chunks = aux.chunk(len(self.fc_norm), dim=-1)
            aux = torch.cat([rms_norm(c, w, eps) for c, w in zip(chunks, self.fc_norm, strict=True)], dim=-1)
        return self.fc(aux)

    def rope(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, head_dim] at `positions` [n] (transformers' Llama rotary: same rope settings as vLLM)."""
        return tuple(t[0] for t in self.rotary(like, positions[None, :]))

    def qkv(self, layer: HeadLayer, x: torch.Tensor, positions: torch.Tensor):
        """q [n, heads, d], k and v [n, kv_heads, d] with RoPE applied."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        c = self.config
        n = x.shape[0]
        q = layer.q_proj(x).view(n, c.num_heads, c.head_dim)
        k = layer.k_proj(x).view(n, c.num_kv_heads, c.head_dim)
        v = layer.v_proj(x).view(n, c.num_kv_heads, c.head_dim)
        cos, sin = self.rope(positions, x)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)  # cos [n, d] → [n, 1, d] against [n, heads, d]
        return q, k, v

    def layer_input(self, layer: HeadLayer, tokens: torch.Tensor, hidden: torch.Tensor,
                    residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the layer's attention reads, and the residual stream."""
        eps = self.config.rms_norm_eps
        if layer.first:
            e = rms_norm(self.embed(tokens), layer.input_layernorm, eps)
            normed = rms_norm(hidden, layer.hidden_norm, eps)
            residual = normed if self.config.norm_before_residual else hidden
            return torch.cat([e, normed], dim=-1), residual
        residual = hidden + residual
        return rms_norm(residual, layer.input_layernorm, eps), residual

    def layer_output(self, layer: HeadLayer, attended: torch.Tensor, residual: torch.Tensor):
        """o_proj, residual, MLP: (mlp output, residual stream) as vLLM's layer returns them."""
        residual = layer.o_proj(attended) + residual
        x = rms_norm(residual, layer.post_attention_layernorm, self.config.rms_norm_eps)
        return layer.down_proj(F.silu(layer.gate_proj(x)) * layer.up_proj(x)), residual

    def finish(self, hidden: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed output for the LM head, the state the next depth reads)."""
        residual = hidden + residual
        out = rms_norm(residual, self.norm, self.config.rms_norm_eps)
        return out, (out if self.config.norm_output else residual)

    def draft_logits(self, out: torch.Tensor) -> torch.Tensor:
        return self.lm_head(out)

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def greedy(self, out: torch.Tensor) -> torch.Tensor:
        """The target token ids vLLM's greedy draft picks (argmax over the draft vocabulary, mapped by d2t)."""
        return self.to_target(self.draft_logits(out).float().argmax(dim=-1))

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
               own_keys: torch.Tensor | None = None, own_values: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of q [n, heads, d] over shared keys/values [m, kv, d] where mask [n, m] allows, and
        over each query's own keys/values [n, e, kv, d] (all allowed) → [n, heads·d], softmax in float32."""
        c = self.config
        group = c.num_heads // c.num_kv_heads
        scale = c.head_dim ** -0.5
        qf = q.float()
        scores = torch.einsum("nhd,mhd->nhm", qf, keys.repeat_interleave(group, dim=1).float()) * scale
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        if own_keys is not None and own_keys.shape[1]:
            own = torch.einsum("nhd,nehd->nhe", qf, own_keys.repeat_interleave(group, dim=2).float()) * scale
            weights = torch.cat([scores, own], dim=-1).softmax(dim=-1)
            shared, mine = weights[..., : keys.shape[0]], weights[..., keys.shape[0]:]
            out = torch.einsum("nhm,mhd->nhd", shared, values.repeat_interleave(group, dim=1).float())
            out = out + torch.einsum("nhe,nehd->nhd", mine, own_values.repeat_interleave(group, dim=2).float())
        else:
            weights = scores.softmax(dim=-1)
            out = torch.einsum("nhm,mhd->nhd", weights, values.repeat_interleave(group, dim=1).float())
        return out.to(q.dtype).reshape(q.shape[0], -1)

    def rows(self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
             cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
             own: list[tuple[torch.Tensor, torch.Tensor]] | None = None, visible: torch.Tensor | None = None):
        """Run head rows (token [n], hidden [n, H], position [n]) that attend causally to each other, after
        `cache` (per layer (K, V) [m, kv, d] of earlier rows, all visible) and, per row, its `own` earlier
        rows (per layer (K, V) [n, e, kv, d]: a block's depth rows, when rows are independent blocks).

        With `own` the rows do not see each other (one row per block start) and `visible` [n, m] says which
        cached rows each sees (default all). Returns (normed output
        [n, H], the next depth's state [n, H], per layer the new rows' (K, V) [n, kv, d]).
        """
        n = tokens.shape[0]
        h, residual, new = hidden, None, []
        for i, layer in enumerate(self.layers):
            x, residual = self.layer_input(layer, tokens, h, residual)
            q, k, v = self.qkv(layer, x, positions)
            new.append((k, v))
            if own is not None:
                before_k, before_v = cache[i] if cache else (k[:0], v[:0])
                mask = visible if visible is not None else \
                    torch.ones((n, before_k.shape[0]), dtype=torch.bool, device=q.device)
                own_k = torch.cat([own[i][0], k[:, None]], dim=1)
                own_v = torch.cat([own[i][1], v[:, None]], dim=1)
                attended = self.attend(q, before_k, before_v, mask, own_k, own_v)
            else:
                keys = torch.cat([cache[i][0], k]) if cache else k
                values = torch.cat([cache[i][1], v]) if cache else v
                m = keys.shape[0]
                mask = torch.arange(m, device=q.device)[None, :] <= (m - n + torch.arange(n, device=q.device))[:, None]
                attended = self.attend(q, keys, values, mask)
            h, residual = self.layer_output(layer, attended, residual)
        out, state = self.finish(h, residual)
        return out, state, new


@dataclass
class HeadDraft:
    """An EAGLE-3 head as a draft: proposals depend on the block start (`eagle3_profile`)."""

    name: str
    head: Eagle3Head
    directory: Path
    target: torch.nn.Module  # the target whose states it reads
    kind: str = EAGLE3

    @property
    def info(self) -> dict:
        c = self.head.config
        return {"name": self.name, "kind": EAGLE3, "source": str(self.directory), "layout": c.layout,
                "aux_layers": list(self.head.aux_layers), "draft_vocab_size": c.draft_vocab_size,
                "num_layers": c.num_layers}


def load_head(directory: Path, target, spec: str) -> HeadDraft:
    """The head in `directory` for the loaded target (`models.LoadedModel`), or one line saying why not."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = eagle3_load.read_config(directory)
    weights = eagle3_load.read_weights(directory)
    model = target.model
    fc = weights.get("fc.weight", weights.get("model.fc.weight"))
    if fc is None:
        raise SpecprofError(f"--draft {spec}: the checkpoint has no fc.weight (not an EAGLE-3 head)")
    ids = eagle3_load.check_against_target(directory, config, model.config, target.name, int(fc.shape[1]))
    config = eagle3_load.HeadConfig(**{**config.__dict__, "aux_layer_ids": ids})
    inner = model.model
    head = Eagle3Head(config, inner.embed_tokens, model.lm_head)
    own = {n.removeprefix("model."): t for n, t in weights.items()}
    if "embed_tokens.weight" in own:
        head.embed = torch.nn.Embedding.from_pretrained(own["embed_tokens.weight"], freeze=True)
    if "lm_head.weight" in own:
        head.lm_head = torch.nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        head.lm_head.weight.data = own["lm_head.weight"]
    elif config.draft_vocab_size != config.vocab_size:
        raise SpecprofError(f"--draft {spec}: a reduced draft vocabulary needs the head's own lm_head")
    if config.hidden_size != head.embed.weight.shape[1]:
        raise SpecprofError(f"--draft {spec}: hidden size {config.hidden_size} does not match the embeddings' "
                            f"{head.embed.weight.shape[1]} (the head has no embed_tokens of its own)")
    if config.draft_vocab_size != config.vocab_size:
        if "d2t" not in own:
            raise SpecprofError(f"--draft {spec}: a reduced draft vocabulary without its d2t map")
        head.d2t = own["d2t"].long()
        if int((torch.arange(len(head.d2t)) + head.d2t).max()) >= config.vocab_size:
            raise SpecprofError(f"--draft {spec}: d2t maps outside the target's vocabulary")
    state = {"fc.weight": own["fc.weight"], "norm": own.get("norm.weight")}
    if state["norm"] is None:
        raise SpecprofError(f"--draft {spec}: the checkpoint has no norm.weight")
    with torch.no_grad():
        head.fc.weight.copy_(state["fc.weight"])
        head.norm.copy_(state["norm"])
        if head.input_norm is not None:
            head.input_norm.copy_(_need(own, "input_norm.weight", spec))
        if head.fc_norm is not None:
            for i, w in enumerate(head.fc_norm):
                w.copy_(_need(own, f"fc_norm.{i}.weight", spec))
        for layer, tensors in zip(head.layers, eagle3_load.layer_weights(weights, config.num_layers), strict=True):
            _load_layer(layer, tensors, spec)
    head.rotary = LlamaRotaryEmbedding(LlamaConfig(**{**config.llama, "head_dim": config.head_dim}))
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    head = head.to(device=device, dtype=dtype).eval()
    head.rotary = head.rotary.to(device)
    return HeadDraft(spec, head, directory, model)


def _need(tensors: dict[str, torch.Tensor], name: str, spec: str) -> torch.Tensor:
    if name not in tensors:
        raise SpecprofError(f"--draft {spec}: the checkpoint has no {name}")
    return tensors[name]


def _load_layer(layer: HeadLayer, tensors: dict[str, torch.Tensor], spec: str) -> None:
    for name, module in layer.named_children():
        prefix = "self_attn." if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp."
        weight = _need(tensors, f"{prefix}{name}.weight", spec)
        if weight.shape != module.weight.shape:
            raise SpecprofError(f"--draft {spec}: {prefix}{name}.weight has shape {tuple(weight.shape)}, "
                                f"the config says {tuple(module.weight.shape)}")
        module.weight.copy_(weight)
        if module.bias is not None:
            module.bias.copy_(_need(tensors, f"{prefix}{name}.bias", spec))
    for name in ("input_layernorm", "post_attention_layernorm", "hidden_norm"):
        if hasattr(layer, name):
            getattr(layer, name).copy_(_need(tensors, f"{name}.weight", spec))


@torch.inference_mode()
def step_seconds(draft: HeadDraft, context_tokens: int, batch_size: int, repeats: int, warmup: int) -> list[float]:
    """Seconds of one head step as the engine runs it at depth ≥ 2 (`measure`): one row per sequence (b rows
    at once) through the decoder layer(s) attending to a KV cache of `context_tokens` rows, fc excluded
    (it runs once per verified token), the LM head over the draft vocabulary and its argmax. The
    target does no extra work for the head: the captured states come out of its own pass."""
    from specprof.engines.hf.models import clock

    head = draft.head
    device = head.norm.device
    dtype = head.norm.dtype
    n = max(context_tokens, 2)
    tokens = torch.randint(0, head.config.vocab_size, (n,), device=device)
    hidden = torch.randn(n, head.config.hidden_size, device=device, dtype=dtype)
    _, state, cache = head.rows(tokens, hidden, torch.arange(n, device=device))
    one = torch.full((batch_size,), int(tokens[-1]), device=device)
    state = state[-1:].expand(batch_size, -1)
    position = torch.full((batch_size,), n, device=device)
    empty = [(k.new_zeros((batch_size, 0, *k.shape[1:])), v.new_zeros((batch_size, 0, *v.shape[1:])))
             for k, v in cache]
    times = []
    for i in range(warmup + repeats):
        start = clock(device)
        out, _, _ = head.rows(one, state, position, cache=cache, own=empty)
        head.greedy(out)
        if i >= warmup:
            times.append(clock(device) - start)
    return times
