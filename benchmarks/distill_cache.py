"""Distill training throughput: trained positions per second with the frozen layers' output cached
(what `specprof distill` does) against re-running the frozen layers every step, and against
re-running the whole target every step (frozen layers plus the target's distribution for the KL
objective). Same batches, same trainable layer, same run.

    python benchmarks/distill_cache.py [--per-domain 2] [--max-new-tokens 64] [--layers 4] [--steps 6]
                                       [--step-tokens 128]
"""

from __future__ import annotations

import argparse

import torch
from common import emit, environment, load_target, prompts, timed

from specprof.engines.hf import distill, distill_data
from specprof.engines.hf.generation import left_pad, position_ids
from specprof.engines.hf.prompts import encode_all

CACHED, FROZEN, WHOLE = "cached", "frozen layers each step", "whole target each step"


def frozen_states(target, items, sequences, layers: int, full: bool) -> None:
    """What the cache saves: the first L layers over the batch (or the whole target, then its top-K)."""
    model = target.model
    device = next(model.parameters()).device
    ids, mask = left_pad([s.tokens for s in sequences], 0, device)
    with torch.no_grad():
        if full:
            final = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
            for j, c in enumerate(items):
                pad = ids.shape[1] - c.length
                torch.log_softmax(model.lm_head(final[j, pad + c.positions]).float(), -1).topk(64, dim=-1)
        else:
            hidden = model.model.embed_tokens(ids)
            embeddings = model.model.rotary_emb(hidden, position_ids(mask))
            from transformers.masking_utils import create_causal_mask

            causal = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                        position_ids=position_ids(mask))
            for layer in model.model.layers[:layers]:
                hidden = layer(hidden, attention_mask=causal, position_ids=position_ids(mask),
                               position_embeddings=embeddings)


def train_steps(target, head, groups, cached, sequences, layers: int, mode: str) -> int:
    """One optimiser step per group; returns trained positions."""
    optimizer = torch.optim.AdamW(head.trainable(), lr=1e-4)
    device = next(target.model.parameters()).device
    positions = 0
    for group in groups:
        items = [cached[i] for i in group]
        if mode != CACHED:
            frozen_states(target, items, [sequences[i] for i in group], layers, full=mode == WHOLE)
        states, mask, rows, cols = distill._pad_batch(items, device, torch.float32)
        logits = head.logits(head.hidden(states, mask)[rows, cols])
        loss = distill.loss_fn(logits, items, "kl", device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        positions += len(rows)
    return positions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--step-tokens", type=int, default=distill_data.DistillSettings(layers=1).step_tokens)
    args = ap.parse_args()

    target = load_target()
    settings = distill_data.DistillSettings(layers=args.layers, step_tokens=args.step_tokens)
    encoded = encode_all(prompts(args.per_domain), target, True)
    sequences = distill_data.sequences_from_corpus(encoded, target, args.max_new_tokens, 32)
    cache_s, cached = timed(lambda: distill_data.cache_frozen(target, sequences, settings))
    head = distill.DraftHead(target.model, args.layers)
    groups = distill.make_steps(cached, args.step_tokens, torch.Generator().manual_seed(0))[: args.steps]
    rates = {}
    for mode in (CACHED, FROZEN, WHOLE):
        train_steps(target, head, groups[:1], cached, sequences, args.layers, mode)  # warm-up outside the timing
        seconds, n = timed(lambda m=mode: train_steps(target, head, groups, cached, sequences, args.layers, m))
        rates[mode] = n / seconds
    base = rates[CACHED]
    emit(
        [
            ("prompts", str(len(sequences))),
            ("layers (frozen)", str(args.layers)),
            ("steps timed", f"{len(groups)} of about {args.step_tokens} trained positions"),
            ("building the cache (once)", f"{cache_s:.1f} s"),
            *[(f"training, {m}", f"{r:.0f} positions/s ({base / r:.2f}x slower than cached)" if m != CACHED
               else f"{r:.0f} positions/s") for m, r in rates.items()],
        ],
        {
            "benchmark": "distill_cache",
            **environment(target),
            "prompts": len(sequences),
            "layers": args.layers,
            "steps": len(groups),
            "cache_build_s": cache_s,
            "positions_per_s": rates,
            "ratio_cached_vs_frozen_layers": base / rates[FROZEN],
            "ratio_cached_vs_whole_target": base / rates[WHOLE],
        },
    )


if __name__ == "__main__":
    main()
