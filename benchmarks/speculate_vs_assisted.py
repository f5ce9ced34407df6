"""Our speculative loop (`specprof.speculate`) against transformers' assisted generation, same
target, same early-exit draft, same k, same prompts, greedy, batch size 1, in the same run.

Both must produce the same tokens (checked); the ratio is transformers' walltime over ours, so
above 1 means our loop is faster. Runs alternate which of the two goes first on each prompt, after
a warm-up of both, with CUDA synchronised around every timed call. Prefill is reported apart.

    python benchmarks/speculate_vs_assisted.py [--per-domain 1] [--max-new-tokens 128] [--k 1 --k 4]
                                               [--draft early-exit:26] [--domain code]...
"""

from __future__ import annotations

import argparse

import torch
from common import emit, environment, load_target, prompts, timed

from specprof.engines.hf import models, speculate
from specprof.engines.hf.drafts import early_exit_view


def ours(target, assistant, ids: list[int], k: int, max_new_tokens: int, eos: list[int]):
    out = speculate.speculative_generate(target.model, speculate.ModelProposer(assistant), ids, k=k,
                                         max_new_tokens=max_new_tokens, eos_ids=eos)
    return out.tokens, out.n_iterations


def assisted(target, assistant, ids: list[int], k: int, max_new_tokens: int, eos: list[int]):
    config = assistant.generation_config
    config.num_assistant_tokens = k
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0
    prompt = torch.tensor([ids], device=target.model.device)
    out = target.model.generate(prompt, attention_mask=torch.ones_like(prompt), assistant_model=assistant,
                                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                pad_token_id=eos[0])
    return out[0, len(ids):].tolist(), None


@torch.inference_mode()
def prefill_seconds(target, ids: list[int]) -> float:
    from transformers import DynamicCache

    seconds, _ = timed(lambda: target.model(input_ids=torch.tensor([ids], device=target.model.device),
                                            cache=DynamicCache(config=target.model.config), logits_to_keep=1))
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-domain", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, action="append", help="draft lengths (repeatable; default 1 2 3 4)")
    ap.add_argument("--draft", default="early-exit:26", help="an early-exit:L draft (needs no second model)")
    ap.add_argument("--domain", action="append", help="only these domains of sample_prompts/ (repeatable)")
    args = ap.parse_args()
    ks = args.k or [1, 2, 3, 4]

    target = load_target()
    assistant = early_exit_view(target.model, int(args.draft.split(":")[1]))
    eos = models.eos_token_ids(target)
    chosen = [p for p in prompts(args.per_domain) if not args.domain or p.domain in args.domain]
    encoded = [models.encode_prompt(target.tokenizer, p, True) for p in chosen]
    for k in ks:  # warm-up outside the timing, every shape
        ours(target, assistant, encoded[0], k, 16, eos)
        assisted(target, assistant, encoded[0], k, 16, eos)

    table, per_k = [], {}
    prefill = sum(prefill_seconds(target, ids) for ids in encoded)
    for k in ks:
        ours_s = assisted_s = 0.0
        n_tokens = iterations = 0
        for i, ids in enumerate(encoded):
            runs = [("ours", ours), ("assisted", assisted)]
            results = {}
            for name, fn in runs if i % 2 == 0 else runs[::-1]:
                call = (target, assistant, ids, k, args.max_new_tokens, eos)
                results[name] = timed(lambda fn=fn, call=call: fn(*call))
            (s_ours, (tok_ours, its)), (s_hf, (tok_hf, _)) = results["ours"], results["assisted"]
            if tok_ours != tok_hf:
                raise SystemExit(f"k={k}, prompt {i}: outputs differ; the comparison would be meaningless")
            ours_s, assisted_s = ours_s + s_ours, assisted_s + s_hf
            n_tokens, iterations = n_tokens + len(tok_ours), iterations + its
        per_k[k] = {"ours_s": ours_s, "assisted_s": assisted_s, "ratio": assisted_s / ours_s,
                    "tokens": n_tokens, "tokens_per_iter": n_tokens / iterations}
        table.append((f"k={k}: ours / assisted (s)", f"{ours_s:.2f} / {assisted_s:.2f}"))
        table.append((f"k={k}: ratio assisted/ours", f"{assisted_s / ours_s:.2f}x  ({n_tokens} tokens, "
                                                    f"{n_tokens / iterations:.2f} tokens/iter)"))
    emit(
        [("prompts", str(len(encoded))), ("draft", args.draft), ("max new tokens", str(args.max_new_tokens)),
         ("target prefill, all prompts (s)", f"{prefill:.2f}"), *table],
        {"benchmark": "speculate_vs_assisted", **environment(target), "prompts": len(encoded), "draft": args.draft,
         "max_new_tokens": args.max_new_tokens, "prefill_s": prefill, "per_k": per_k,
         "min_ratio": min(v["ratio"] for v in per_k.values())},
    )


if __name__ == "__main__":
    main()
