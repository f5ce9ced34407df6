"""Profile throughput: generated target tokens per second of a whole `profile` run (draft passes,
timings and report included) against transformers' `generate`, one prompt at a time, on the same
prompts in the same run.

    python benchmarks/profile_throughput.py [--per-domain 3] [--max-new-tokens 128] [--batch-size N]
"""

from __future__ import annotations

import argparse

import torch
from common import emit, environment, load_target, prompts, run_profile, timed

from specprof.engines.hf import models
from specprof.engines.hf.profiler import Settings


def generate_one_at_a_time(target, corpus, max_new_tokens: int) -> int:
    eos = models.eos_token_ids(target)
    n = 0
    for p in corpus:
        ids = torch.tensor([models.encode_prompt(target.tokenizer, p, True)], device=target.model.device)
        out = target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
        n += out.shape[1] - ids.shape[1]
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-domain", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--drafts", nargs="+", default=["ngram", "early-exit:26"])
    args = ap.parse_args()

    target = load_target()
    corpus = prompts(args.per_domain)
    batch = args.batch_size or (64 if target.model.device.type == "cuda" else 32)
    settings = Settings(k_max=8, max_new_tokens=args.max_new_tokens, batch_size=batch)
    generate_one_at_a_time(target, corpus[:1], 8)  # warm-up outside the timing
    base_s, base_tokens = timed(lambda: generate_one_at_a_time(target, corpus, args.max_new_tokens))
    prof_s, result = timed(lambda: run_profile(target, args.drafts, corpus, settings))
    prof_tokens = int(result.summary.query("domain == 'ALL' and k == 1")["n_tokens"].iloc[0])
    base_rate, prof_rate = base_tokens / base_s, prof_tokens / prof_s
    emit(
        [
            ("prompts", str(len(corpus))),
            ("drafts", " ".join(args.drafts)),
            ("batch size", str(batch)),
            ("generate, one prompt at a time", f"{base_tokens} tokens in {base_s:.1f} s = {base_rate:.1f} tokens/s"),
            ("profile (k = 1..8, all drafts)", f"{prof_tokens} tokens in {prof_s:.1f} s = {prof_rate:.1f} tokens/s"),
            ("ratio", f"{prof_rate / base_rate:.2f}x"),
        ],
        {
            "benchmark": "profile_throughput",
            **environment(target),
            "prompts": len(corpus),
            "drafts": args.drafts,
            "batch_size": batch,
            "max_new_tokens": args.max_new_tokens,
            "baseline_tokens_per_s": base_rate,
            "profile_tokens_per_s": prof_rate,
            "ratio": prof_rate / base_rate,
        },
    )


if __name__ == "__main__":
    main()
