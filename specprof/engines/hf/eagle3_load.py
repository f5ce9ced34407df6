"""Read an EAGLE-3 head directory in the two layouts vLLM 0.32.0 loads, and check it against the target.

The specification is vLLM's own loader, read (not copied):
- EAGLE / SpecForge layout (`model_executor/models/llama_eagle3.py`): `config.json` with
  `"architectures": ["LlamaForCausalLMEagle3"]` (or vLLM's `Eagle3LlamaForCausalLM`), Llama fields
  (hidden_size, heads, rms_norm_eps, rope), `draft_vocab_size`, optionally `target_hidden_size`,
  `norm_before_residual` (default False here), `eagle_config` {`eagle_aux_hidden_state_layer_ids`,
  `use_aux_hidden_state`, `norm_before_fc`}, `fc_norm`, `norm_output`.
- speculators layout (`transformers_utils/configs/speculators/`): `speculators_model_type: "eagle3"`,
  the Llama fields under `transformer_layer_config`, and at the top `draft_vocab_size`,
  `target_hidden_size`, `norm_before_residual` (default **True** in this layout), `norm_before_fc`,
  `fc_norm`, `norm_output`, `eagle_aux_hidden_state_layer_ids`; `speculators_config.verifier.name_or_path`
  names the target it was trained for.
Weights (safetensors, sharded or not, or pytorch_model.bin): `midlayer.*` (vLLM maps it to `layers.0.`)
or `layers.N.*`: `self_attn.{q,k,v,o}_proj` (q/k/v of the first layer take 2·hidden inputs: the token's
embedding and the hidden state, concatenated), `mlp.{gate,up,down}_proj`, `input_layernorm`,
`hidden_norm`, `post_attention_layernorm`; `fc` (n_aux·target hidden → hidden), `norm`, `lm_head`
(draft vocabulary), optional `embed_tokens` (else the target's), `d2t` (draft id d → target id
d + d2t[d]; `t2d` is ignored, as vLLM does), optional `input_norm` (norm_before_fc) and `fc_norm.i`.

The captured layers: the config's `eagle_aux_hidden_state_layer_ids`, else vLLM's default
(2, L // 2, L − 3) for a target of L layers (`interfaces.get_eagle3_default_aux_hidden_state_layers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specprof.core.simulation.headspec import head_directory, layout_of
from specprof.errors import SpecprofError

__all__ = ["head_directory", "layout_of", "read_config", "read_weights", "check_against_target"]

@dataclass(frozen=True)
class HeadConfig:
    """What the head's forward needs, in vLLM's terms, whichever layout it came from."""

    layout: str
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int
    rms_norm_eps: float
    vocab_size: int
    draft_vocab_size: int
    target_hidden_size: int
    norm_before_residual: bool
    norm_before_fc: bool
    fc_norm: bool
    norm_output: bool
    aux_layer_ids: tuple[int, ...] | None  # None: vLLM's default for the target's depth
    llama: dict = field(default_factory=dict)  # the Llama fields (rope settings) for the rotary embedding
    verifier: str | None = None  # speculators: the target it was trained for


def read_config(directory: Path) -> HeadConfig:
    """The head's config in either layout, or one line saying why it is neither."""
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SpecprofError(f"--draft eagle3:{directory}: cannot read config.json ({exc})") from None
    layout = layout_of(raw)
    if layout is None:
        raise SpecprofError(
            f"--draft eagle3:{directory}: config.json is in neither EAGLE-3 layout vLLM loads "
            f"(architectures {raw.get('architectures')!r}, no speculators_model_type 'eagle3')"
        )
    if layout == "speculators":
        llama = dict(raw.get("transformer_layer_config") or {})
        if not llama:
            raise SpecprofError(f"--draft eagle3:{directory}: speculators config without transformer_layer_config")
        top = raw
        before_residual = bool(raw.get("norm_before_residual", True))
        verifier = ((raw.get("speculators_config") or {}).get("verifier") or {}).get("name_or_path")
        ids = raw.get("eagle_aux_hidden_state_layer_ids")
    else:
        llama = raw
        top = raw
        before_residual = bool(raw.get("norm_before_residual", False))
        verifier = None
        eagle = raw.get("eagle_config") or {}
        if eagle.get("use_aux_hidden_state") is False:
            raise SpecprofError(f"--draft eagle3:{directory}: use_aux_hidden_state is false (an EAGLE-1 head)")
        ids = raw.get("eagle_aux_hidden_state_layer_ids") or eagle.get("eagle_aux_hidden_state_layer_ids")
        top = {**raw, "norm_before_fc": eagle.get("norm_before_fc", raw.get("norm_before_fc", False))}
    try:
        hidden = int(llama["hidden_size"])
        heads = int(llama["num_attention_heads"])
        vocab = int(llama["vocab_size"])
        config = HeadConfig(
            layout=layout, hidden_size=hidden, num_heads=heads,
            num_kv_heads=int(llama.get("num_key_value_heads") or heads),
            head_dim=int(llama.get("head_dim") or hidden // heads),
            intermediate_size=int(llama["intermediate_size"]),
            num_layers=int(llama.get("num_hidden_layers", 1)),
            rms_norm_eps=float(llama.get("rms_norm_eps", 1e-6)),
            vocab_size=vocab,
            draft_vocab_size=int(top.get("draft_vocab_size") or llama.get("draft_vocab_size") or vocab),
            target_hidden_size=int(top.get("target_hidden_size") or llama.get("target_hidden_size") or hidden),
            norm_before_residual=before_residual,
            norm_before_fc=bool(top.get("norm_before_fc", False)),
            fc_norm=bool(top.get("fc_norm", False)),
            norm_output=bool(top.get("norm_output", False)),
            aux_layer_ids=tuple(int(i) for i in ids) if ids else None,
            llama=llama, verifier=verifier,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecprofError(f"--draft eagle3:{directory}: config.json lacks a usable {exc} field") from None
    return config


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the head's checkpoint, names as written (safetensors first, then .bin)."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        out = {}
        for f in bins:
            out.update(torch.load(f, map_location="cpu", weights_only=True))
        return out
    raise SpecprofError(f"--draft eagle3:{directory}: no *.safetensors or pytorch_model.bin weights")


def layer_weights(weights: dict[str, torch.Tensor], num_layers: int) -> list[dict[str, torch.Tensor]]:
    """Per decoder layer {'self_attn.q_proj.weight': tensor, ...}: `midlayer.` is layer 0, as vLLM maps it."""
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
    for name, tensor in weights.items():
        name = name.removeprefix("model.")
        if name.startswith("midlayer."):
            layers[0][name.removeprefix("midlayer.")] = tensor
        elif name.startswith("layers."):
            index, _, rest = name.removeprefix("layers.").partition(".")
            if index.isdigit() and int(index) < num_layers:
                layers[int(index)][rest] = tensor
    return layers


def default_aux_layers(target_layers: int) -> tuple[int, ...]:
    """vLLM's default captured layers for a target of L layers: (2, L // 2, L − 3)."""
    return (2, target_layers // 2, target_layers - 3)


def check_against_target(directory: Path, config: HeadConfig, target_config, target_name: str,
                         fc_in: int) -> tuple[int, ...]:
    """The sorted captured layer ids, after checking the head fits the target; one line if not."""
    text = target_config.get_text_config()
    hidden, layers = int(text.hidden_size), int(text.num_hidden_layers)
    vocab = int(text.vocab_size)
    where = f"--draft eagle3:{directory}"
    if config.target_hidden_size != hidden:
        raise SpecprofError(f"{where}: the head reads hidden states of size {config.target_hidden_size}; "
                            f"the target's hidden size is {hidden}")
    if config.vocab_size != vocab:
        raise SpecprofError(f"{where}: the head's vocabulary has {config.vocab_size} tokens; the target's {vocab}")
    ids = config.aux_layer_ids or default_aux_layers(layers)
    if fc_in != len(ids) * hidden:
        raise SpecprofError(f"{where}: fc takes {fc_in} inputs, not {len(ids)} captured layers × {hidden}")
    if not all(0 <= i <= layers for i in ids):
        raise SpecprofError(f"{where}: captured layers {list(ids)} outside the target's 0..{layers}")
    if config.verifier and not same_model(config.verifier, target_name, target_config):
        raise SpecprofError(f"{where}: the head was trained for {config.verifier}, not for the target {target_name}")
    # vLLM appends the captured states as its forward passes the layers: in ascending layer order
    return tuple(sorted(ids))


def same_model(verifier: str, target_name: str, target_config) -> bool:
    """Whether a speculators verifier name denotes the target: the last path component of the name, of the
    target's spec or of its config's `_name_or_path` agree (case aside)."""
    def last(name: str | None) -> str:
        return Path(str(name or "").rstrip("/")).name.lower()

    names = {last(target_name), last(getattr(target_config, "_name_or_path", None))}
    return last(verifier) in names
