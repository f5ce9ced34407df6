"""One `profile` covering k = 1..8 against a sweep that runs speculative decoding once per k
(transformers' assisted generation, the way an engine user would find the best k), on the same
prompts and models in the same run. The profile also yields every k's exact figures; the sweep
only its own.

    python benchmarks/profile_vs_sweep.py [--per-domain 1] [--max-new-tokens 64] [--draft early-exit:26]
"""

from __future__ import annotations

import argparse

import torch
from common import emit, environment, load_target, prompts, run_profile, timed

from specprof.engines.hf import models
from specprof.engines.hf.drafts import early_exit_view
from specprof.engines.hf.profiler import Settings

K_MAX = 8


def sweep(target, assistant, corpus, max_new_tokens: int) -> int:
    eos = models.eos_token_ids(target)
    config = assistant.generation_config
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0
    n = 0
    for k in range(1, K_MAX + 1):
        config.num_assistant_tokens = k
        for p in corpus:
            ids = torch.tensor([models.encode_prompt(target.tokenizer, p, True)], device=target.model.device)
            out = target.model.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=assistant,
                                        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                        pad_token_id=eos[0])
            n += out.shape[1] - ids.shape[1]
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-domain", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--draft", default="early-exit:26", help="an early-exit:L draft (needs no second model)")
    args = ap.parse_args()

    target = load_target()
    layers = int(args.draft.split(":")[1])
    assistant = early_exit_view(target.model, layers)
    corpus = prompts(args.per_domain)
    batch = 64 if target.model.device.type == "cuda" else 32
    settings = Settings(k_max=K_MAX, max_new_tokens=args.max_new_tokens, batch_size=batch)
    sweep(target, assistant, corpus[:1], 4)  # warm-up outside the timing
    sweep_s, _ = timed(lambda: sweep(target, assistant, corpus, args.max_new_tokens))
    prof_s, _ = timed(lambda: run_profile(target, [args.draft], corpus, settings))
    emit(
        [
            ("prompts", str(len(corpus))),
            ("draft", args.draft),
            ("sweep: assisted generation for k = 1..8", f"{sweep_s:.1f} s"),
            ("profile: one run, every k", f"{prof_s:.1f} s"),
            ("ratio (sweep / profile)", f"{sweep_s / prof_s:.1f}x"),
        ],
        {
            "benchmark": "profile_vs_sweep",
            **environment(target),
            "prompts": len(corpus),
            "draft": args.draft,
            "k_max": K_MAX,
            "max_new_tokens": args.max_new_tokens,
            "sweep_s": sweep_s,
            "profile_s": prof_s,
            "ratio": sweep_s / prof_s,
        },
    )


if __name__ == "__main__":
    main()
