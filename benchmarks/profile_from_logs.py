"""Profiling logged traffic against generating: the same prompts and models, in one run.

First the generating profile (batched greedy generation, then the drafts' teacher-forced passes);
its continuations are decoded to text, as a server's log holds them, and written as an OpenAI-style
chat-completion log; then the profile from that log (one teacher-forced target pass, the same draft
passes). The corpus pass (target + draft passes) is compared; model loading and cost timing, the
same fixed cost in both, are shown apart, and so is the whole run end to end. Also measured: how
often re-tokenising the logged text gives back the ids the target produced (the round trip).
Each phase is timed twice: wall seconds (run.json's phases_s) and CPU seconds of this process
(steadier than wall time on a shared machine, where other jobs take the cores in turns).

The ceiling: the multiply-adds the target pass cannot skip (every prompt and response token through
the layers' weights, the vocabulary head where a token is predicted; attention's own products left
out, so a lower bound), at the machine's measured matmul rate for a prefill's shapes. Generation
does the same multiply-adds one step at a time; the ratio of its CPU seconds to that floor is the
most any teacher-forced pass could gain here.

    OMP_NUM_THREADS=1 python benchmarks/profile_from_logs.py [--per-domain 2] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import emit, environment, load_target, prompts

from specprof.core.records.corpus import load_corpus
from specprof.core.records.store import RunStore
from specprof.engines.hf import drafts, profiler, teacher
from specprof.engines.hf.profiler import Settings
from specprof.engines.hf.prompts import encode_all

CPU_S: collections.Counter = collections.Counter()  # CPU seconds per phase


def cpu_timed(module, name: str, phase: str) -> None:
    """Count the CPU seconds of `module.name` into CPU_S[phase] (the profiler looks it up at call time)."""
    fn = getattr(module, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            CPU_S[phase] += time.process_time() - start

    setattr(module, name, wrapper)


for _module, _name, _phase in [(profiler, "generate", "generation"), (teacher, "target_pass", "target_pass"),
                               (profiler, "score_model_draft", "draft_passes"),
                               (profiler, "score_ngram_draft", "draft_passes"),
                               (profiler, "measure_timings", "cost_timing")]:
    cpu_timed(_module, _name, _phase)


def run_profile(target, draft_specs, corpus, settings) -> tuple[profiler.ProfileResult, pd.DataFrame]:
    """One full `profile` into a temp dir; its result and its tokens table."""
    device, dtype = next(target.model.parameters()).device, next(target.model.parameters()).dtype
    loaded = [drafts.load_draft(s, target, device, dtype) for s in draft_specs]
    with tempfile.TemporaryDirectory() as out:
        store = RunStore.create(Path(out) / "r", {"benchmark": True})
        result = profiler.run_profile(corpus, target, loaded, settings, store)
        return result, pd.read_parquet(Path(out) / "r" / "tokens.parquet")


def write_log(path: Path, corpus, tokens: pd.DataFrame, tokenizer) -> tuple[int, int, int, int]:
    """The continuations as logged text; returns (prompts, prompts that round-trip, tokens, tokens that do)."""
    first = tokens[tokens["draft"] == tokens["draft"].iloc[0]].sort_values(["prompt_id", "position"])
    ids = {pid: rows["target_token"].astype(int).tolist() for pid, rows in first.groupby("prompt_id")}
    eos = set(tokenizer.all_special_ids)
    same_prompts = same_tokens = total_tokens = 0
    lines = []
    for p in corpus:
        body = ids[p.id][:-1] if ids[p.id] and ids[p.id][-1] in eos else ids[p.id]
        text = tokenizer.decode(body, skip_special_tokens=True)
        again = tokenizer(text, add_special_tokens=False)["input_ids"]
        same_prompts += again == body
        total_tokens += len(body)
        same_tokens += next((i for i, (a, b) in enumerate(zip(again, body)) if a != b), min(len(again), len(body)))
        lines.append(json.dumps({"id": p.id, "domain": p.domain, "messages": [{"role": "user", "content": p.prompt}],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}))
    path.write_text("\n".join(lines) + "\n")
    return len(corpus), same_prompts, total_tokens, same_tokens


def matmul_rate(hidden: int, inner: int, dtype: torch.dtype, device: torch.device) -> float:
    """FLOP/s of [2048, hidden] @ [hidden, inner] (an MLP projection of a 2048-token prefill), best of 5."""
    a = torch.randn(2048, hidden, dtype=dtype, device=device)
    b = torch.randn(hidden, inner, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2 * 2048 * hidden * inner / best


def pass_flops(model: torch.nn.Module, n_tokens: int, n_predicted: int) -> float:
    """2 × the multiply-adds of a forward over n_tokens with the vocabulary head at n_predicted of them."""
    embed = model.get_input_embeddings().weight
    layers = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name)
    return 2.0 * layers * n_tokens + 2.0 * embed.numel() * n_predicted


def ceiling(target, corpus, tokens: pd.DataFrame) -> tuple[float, float]:
    """(the target pass's FLOPs, the machine's matmul FLOP/s) for these prompts and their continuations."""
    model = target.model
    first = tokens[tokens["draft"] == tokens["draft"].iloc[0]]
    continuation = int(len(first))
    prompt = sum(len(e.ids) for e in encode_all(corpus, target, True))
    config = model.config
    p = next(model.parameters())
    rate = matmul_rate(config.hidden_size, config.intermediate_size, p.dtype, p.device)
    return pass_flops(model, prompt + continuation, continuation + len(corpus)), rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--drafts", nargs="+", default=["ngram", "early-exit:26"])
    args = ap.parse_args()

    start = time.perf_counter()
    target = load_target()
    loading_s = time.perf_counter() - start
    corpus = prompts(args.per_domain)
    batch = args.batch_size or (64 if target.model.device.type == "cuda" else 32)
    settings = Settings(k_max=8, max_new_tokens=args.max_new_tokens, batch_size=batch)
    run_profile(target, args.drafts, corpus[:2], Settings(k_max=2, max_new_tokens=4, batch_size=2))  # warm-up

    CPU_S.clear()
    start = time.perf_counter()
    generated, tokens = run_profile(target, args.drafts, corpus, settings)
    gen_wall = time.perf_counter() - start
    gen_cpu = dict(CPU_S)
    CPU_S.clear()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        n, n_same, n_tokens, n_tokens_same = write_log(log, corpus, tokens, target.tokenizer)
        logged_corpus = load_corpus(log)
    start = time.perf_counter()
    logged, _ = run_profile(target, args.drafts, logged_corpus, dataclasses.replace(settings, responses="logged"))
    log_wall = time.perf_counter() - start
    log_cpu = dict(CPU_S)
    gen_pass_cpu = gen_cpu["generation"] + gen_cpu["draft_passes"]
    log_pass_cpu = log_cpu["target_pass"] + log_cpu["draft_passes"]
    flops, rate = ceiling(target, corpus, tokens)
    floor_s = flops / rate
    best_ratio = gen_pass_cpu / (floor_s + log_cpu["draft_passes"])

    g, lg = generated.run["phases_s"], logged.run["phases_s"]
    gen_pass = g["generation"] + g["draft_passes"]
    log_pass = lg["target_pass"] + lg["draft_passes"]
    agreement = logged.run["logged_responses"]["all"]
    gen_total, log_total = loading_s + gen_wall, loading_s + log_wall
    emit(
        [
            ("prompts", f"{len(corpus)} ({args.per_domain} per domain), up to {args.max_new_tokens} new tokens"),
            ("drafts", " ".join(args.drafts)),
            ("model loading (both)", f"{loading_s:.1f} s"),
            ("cost timing", f"generating {g['cost_timing']:.1f} s, from logs {lg['cost_timing']:.1f} s"),
            ("generating: corpus pass", f"{gen_pass:.1f} s (generation {g['generation']:.1f} s, "
                                        f"draft passes {g['draft_passes']:.1f} s)"),
            ("from logs: corpus pass", f"{log_pass:.1f} s (target pass {lg['target_pass']:.1f} s, "
                                       f"draft passes {lg['draft_passes']:.1f} s)"),
            ("corpus pass ratio", f"{gen_pass / log_pass:.1f}x wall"),
            ("corpus pass, CPU s", f"generating {gen_pass_cpu:.1f} s (generation {gen_cpu['generation']:.1f}), "
                                   f"from logs {log_pass_cpu:.1f} s (target pass {log_cpu['target_pass']:.1f}): "
                                   f"{gen_pass_cpu / log_pass_cpu:.1f}x"),
            ("ceiling", f"target pass {flops / 1e9:.0f} GFLOP at the measured matmul rate {rate / 1e9:.0f} GFLOP/s: "
                        f"{floor_s:.1f} CPU s (it took {log_cpu['target_pass']:.1f}: "
                        f"{floor_s / log_cpu['target_pass']:.0%} of the rate; generation "
                        f"{flops / rate / gen_cpu['generation']:.0%}); best possible corpus-pass ratio here "
                        f"{best_ratio:.1f}x"),
            ("end to end", f"generating {gen_total:.1f} s, from logs {log_total:.1f} s: "
                           f"{gen_total / log_total:.1f}x"),
            ("round trip (text → ids)", f"{n_same} of {n} prompts; {n_tokens_same} of {n_tokens} tokens "
                                        "before the first difference"),
            ("logged = greedy", f"{agreement['fraction']:.1%} of {agreement['logged_tokens']} positions; "
                                f"{agreement['used']} used, {agreement['cut']} prompts cut"),
        ],
        {
            "benchmark": "profile_from_logs",
            **environment(target),
            "prompts": len(corpus),
            "drafts": args.drafts,
            "batch_size": batch,
            "max_new_tokens": args.max_new_tokens,
            "loading_s": loading_s,
            "generating_phases_s": g,
            "logged_phases_s": lg,
            "generating_cpu_s": gen_cpu,
            "logged_cpu_s": log_cpu,
            "corpus_pass_ratio": gen_pass / log_pass,
            "corpus_pass_cpu_ratio": gen_pass_cpu / log_pass_cpu,
            "end_to_end_ratio": gen_total / log_total,
            "target_pass_gflop": flops / 1e9,
            "matmul_gflops": rate / 1e9,
            "best_possible_cpu_ratio": best_ratio,
            "round_trip_prompts": [n_same, n],
            "round_trip_tokens": [n_tokens_same, n_tokens],
            "agreement": agreement,
        },
    )


if __name__ == "__main__":
    main()
