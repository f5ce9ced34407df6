"""Tiny random EAGLE-3 heads written in the two layouts vLLM loads, built in the tests (never downloaded).

A head with random weights accepts almost nothing; these lean on the captured layer 0 (the
embedding of the token at the row's position) through `fc`, so the head tends to propose the
token before the last one, and the attention and MLP add random structure on top: blocks of every
length occur on the tiny targets' repetitive continuations.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_head(directory: Path, target_dir: Path, *, layout: str = "eagle", layer_ids=(0, 2, 4), seed: int = 0,
              draft_vocab: int | None = None, norm_before_residual: bool | None = None,
              verifier: str | None = None, noise: float = 1.0, copy_gain: float = 4.0) -> Path:
    """Write a one-layer head for the target in `target_dir` (its config.json read for sizes); `noise` scales
    the random weights, `copy_gain` the copy of the captured embeddings through fc."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = json.loads((Path(target_dir) / "config.json").read_text())
    target_weights = _target_weights(Path(target_dir))
    h, heads, kv = target["hidden_size"], target["num_attention_heads"], target["num_key_value_heads"]
    vocab, inter = target["vocab_size"], target["intermediate_size"]
    d = h // heads
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g) * scale * noise).float()

    n_aux = len(layer_ids)
    fc = rand(h, n_aux * h, scale=0.05)
    where = sorted(layer_ids).index(0) if 0 in layer_ids else 0
    fc[:, where * h:(where + 1) * h] += copy_gain * torch.eye(h)  # copy the embedding of the row's own token
    weights = {
        "fc.weight": fc,
        "norm.weight": torch.ones(h),
        "midlayer.input_layernorm.weight": torch.ones(h),
        "midlayer.hidden_norm.weight": torch.ones(h),
        "midlayer.post_attention_layernorm.weight": torch.ones(h),
        "midlayer.self_attn.q_proj.weight": rand(heads * d, 2 * h),
        "midlayer.self_attn.k_proj.weight": rand(kv * d, 2 * h),
        "midlayer.self_attn.v_proj.weight": rand(kv * d, 2 * h, scale=0.1),
        "midlayer.self_attn.o_proj.weight": rand(h, heads * d, scale=0.1),
        "midlayer.mlp.gate_proj.weight": rand(inter, h, scale=0.1),
        "midlayer.mlp.up_proj.weight": rand(inter, h, scale=0.1),
        "midlayer.mlp.down_proj.weight": rand(h, inter, scale=0.1),
    }
    embed = target_weights["model.embed_tokens.weight"].float()
    if draft_vocab is None:
        weights["lm_head.weight"] = embed.clone()
    else:
        keep = torch.sort(torch.randperm(vocab, generator=g)[:draft_vocab]).values
        keep[: min(len(keep), 3)] = torch.arange(min(len(keep), 3))  # the specials, EOS among them
        keep = torch.sort(torch.unique(keep)).values
        weights["lm_head.weight"] = embed[keep].clone()
        weights["d2t"] = (keep - torch.arange(len(keep))).long()
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[keep] = True
        weights["t2d"] = t2d
        draft_vocab = len(keep)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"))
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
             "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": inter,
             "num_hidden_layers": 1, "rms_norm_eps": target.get("rms_norm_eps", 1e-6), "vocab_size": vocab,
             "max_position_embeddings": target.get("max_position_embeddings", 512),
             "rope_theta": target.get("rope_theta", (target.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
             "tie_word_embeddings": False, "torch_dtype": "float32"}
    if layout == "eagle":
        config = {**llama, "architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": draft_vocab or vocab,
                  "target_hidden_size": h, "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(layer_ids)}}
        if norm_before_residual is not None:
            config["norm_before_residual"] = norm_before_residual
    else:
        config = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
                  "transformer_layer_config": llama, "draft_vocab_size": draft_vocab or vocab,
                  "target_hidden_size": h, "eagle_aux_hidden_state_layer_ids": list(layer_ids),
                  "norm_before_residual": True if norm_before_residual is None else norm_before_residual,
                  "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                         "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                                         "verifier": {"name_or_path": verifier or str(target_dir),
                                                      "architectures": ["LlamaForCausalLM"]}}}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def _target_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(directory.glob("*.safetensors"))))


def make_echo_target(directory: Path, seed: int = 3, layers: int = 4, damp: float = 0.1) -> Path:
    """A tiny target whose layers are damped and whose LM head is its embedding: it often repeats the
    current token, in runs of every length, so a head that proposes the token it last saw gets blocks
    of every length accepted."""
    from tiny import make_model
    from transformers import AutoModelForCausalLM

    base = make_model(Path(directory).with_name(Path(directory).name + "-base"), seed=seed, layers=layers)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(damp)
            layer.mlp.down_proj.weight.mul_(damp)
    model.save_pretrained(directory)
    for path in base.iterdir():  # the tokenizer and its chat template
        if path.is_file() and not path.name.endswith(".safetensors") and path.name not in ("config.json",
                                                                                            "generation_config.json"):
            (Path(directory) / path.name).write_bytes(path.read_bytes())
    return Path(directory)
