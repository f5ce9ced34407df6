"""vLLM's sampled acceptance (`sampled_conventions`) against a simulation of vLLM's rule written here.

For each draft-sampling mode the test runs vLLM's loop on tiny random models over many seeds
(`simulate_vllm`: prefill samples the first token; each step the draft proposes k tokens, greedy
argmax or sampled from q_T at the temperature alone; the target accepts x when p_T'(x) / q(x) ≥ u,
q = 1 for the greedy draft; a rejection draws the recovered token from (p_T' − q)+; all accepted: the
bonus token; counted before the output is cut at EOS / max_tokens) and compares the average counters
per request with specprof's prediction from a profile of the same prompt under many seeds.

Both sides are sample means: the tolerance is Z = 4.5 standard errors of their difference (the
standard errors measured from the samples), so a correct prediction fails one comparison with
probability about 7e-6 and the whole test (≤ 56 comparisons) with under 4e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specprof.core.records.reportfiles import load_report
from specprof.core.simulation import sampled_conventions as sc
from specprof.errors import SpecprofError

TEMPERATURE = 0.7
N_PROMPTS = 300  # profiled copies of one prompt (each its own seed)
N_RUNS = 1500  # simulated vLLM requests per configuration
MAX_NEW = 8
Z = 4.5


def _profile(cli, tiny, tmp_path, top_p: float):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p-{i}", "domain": "d", "prompt": "hello world"}) + "\n"
                            for i in range(N_PROMPTS)))
    out = tmp_path / f"report-{top_p}"
    r = cli("profile", path, "--target", tiny["target"], "--draft", tiny["close"], "--k-max", 4, "--max-new-tokens",
            MAX_NEW, "--temperature", TEMPERATURE, "--top-p", top_p, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def _probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    from specprof.engines.hf import sampling

    return sampling.probabilities(logits, TEMPERATURE, top_p)


@torch.inference_mode()
def _logits(model, seqs: list[list[int]]) -> torch.Tensor:
    """[n, L, V] logits of right-padded sequences (causal: padding after a row changes nothing before it)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return model(input_ids=ids, attention_mask=mask).logits.float()


def simulate_vllm(target, draft, prompt: list[int], k: int, mode: str, top_p: float, eos: int,
                  seed: int) -> np.ndarray:
    """[N_RUNS, 1 + k] per request: num_drafts, then accepted per position, as vLLM counts them."""
    g = torch.Generator().manual_seed(seed)
    first = _probs(_logits(target, [prompt])[0, -1], top_p)
    seqs = [prompt + [int(t)] for t in torch.multinomial(first.expand(N_RUNS, -1), 1, generator=g)[:, 0]]
    out_len = np.ones(N_RUNS, dtype=int)
    active = [i for i in range(N_RUNS) if seqs[i][-1] != eos and MAX_NEW > 1]
    counts = np.zeros((N_RUNS, 1 + k))
    while active:
        ctx = [seqs[i] for i in active]
        proposals, draft_probs = [], []
        for _ in range(k):  # the draft proposes k tokens, each from its own previous proposals
            logits = _logits(draft, [c + list(p) for c, p in zip(ctx, zip(*proposals))] if proposals else ctx)
            last = logits[torch.arange(len(ctx)), torch.tensor([len(c) + len(proposals) - 1 for c in ctx])]
            if mode == "greedy":
                proposals.append(last.argmax(-1).tolist())
            else:
                q = _probs(last, 1.0)  # temperature only
                proposals.append(torch.multinomial(q, 1, generator=g)[:, 0].tolist())
                draft_probs.append(q)
        props = torch.tensor(proposals).T  # [m, k]
        logits = _logits(target, [c + row for c, row in zip(ctx, props.tolist())])
        cols = torch.tensor([len(c) - 1 for c in ctx])[:, None] + torch.arange(k + 1)
        p = _probs(logits[torch.arange(len(ctx))[:, None], cols], top_p)  # [m, k + 1, V]
        target_x = p[:, :k].gather(-1, props[..., None])[..., 0]
        if mode == "greedy":
            draft_x = torch.ones_like(target_x)
            residual = p[:, :k].scatter(-1, props[..., None], 0.0)
        else:
            q = torch.stack(draft_probs, 1)
            draft_x = q.gather(-1, props[..., None])[..., 0]
            residual = (p[:, :k] - q).clamp(min=0)
        u = torch.rand(target_x.shape, generator=g)
        accepted = (draft_x > 0) & (target_x / draft_x >= u)
        n_acc = accepted.long().cumprod(-1).sum(-1)  # accepted until the first rejection
        last_dist = torch.cat([residual, p[:, k:]], 1)[torch.arange(len(ctx)), n_acc]
        extra = torch.multinomial(last_dist / last_dist.sum(-1, keepdim=True), 1, generator=g)[:, 0]
        still = []
        for row, i in enumerate(active):
            n = int(n_acc[row])
            counts[i, 0] += 1
            counts[i, 1 : 1 + n] += 1  # counted before the output is cut at EOS / max_tokens
            emitted = props[row, :n].tolist() + [int(extra[row])]
            emitted = emitted[: MAX_NEW - out_len[i]]
            if eos in emitted:
                emitted = emitted[: emitted.index(eos) + 1]
            seqs[i] = seqs[i] + emitted
            out_len[i] += len(emitted)
            if out_len[i] < MAX_NEW and emitted[-1] != eos:
                still.append(i)
        active = still
    return counts


@pytest.mark.parametrize("top_p", [0.9, 1.0])
def test_expected_counters_match_a_simulation_of_vllms_rule(cli, tiny, tmp_path, top_p):
    from transformers import AutoModelForCausalLM

    report = _profile(cli, tiny, tmp_path, top_p)
    rep = load_report(report)
    prompt = [int(t) for t in rep.frame("prompts", ["prompt_tokens"])["prompt_tokens"].iloc[0]]
    target = AutoModelForCausalLM.from_pretrained(tiny["target"], dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(tiny["close"], dtype=torch.float32).eval()
    name = str(tiny["close"])
    misses = []
    for mode in sc.DRAFT_SAMPLING:
        rec = sc.load_sampled(report, name, mode)
        for k in range(1, 5):
            table, short = sc.prompt_expected(rec, k)
            assert not short.any()
            predicted = np.concatenate([table[:, :1], table[:, 3:]], axis=1)  # drafts, accepted per position
            simulated = simulate_vllm(target, draft, prompt, k, mode, top_p, 2, seed=k)
            se = np.sqrt(predicted.var(0, ddof=1) / len(predicted) + simulated.var(0, ddof=1) / len(simulated))
            diff = predicted.mean(0) - simulated.mean(0)
            for j, (d, s) in enumerate(zip(diff, se)):
                if abs(d) > Z * max(s, 1e-9):
                    misses.append(f"{mode} k={k} {'drafts' if j == 0 else f'pos {j}'}: {d:+.4f} (se {s:.4f})")
            # the draft is accepted often enough for the per-position comparisons to mean something
            assert simulated[:, 1].mean() > 0.05
    assert not misses, misses


def test_unknown_draft_sampling_is_refused(tmp_path):
    """A mode vLLM does not have is refused in one line, before the report is read."""
    with pytest.raises(SpecprofError, match="--draft-sampling"):
        sc.load_sampled(tmp_path / "missing", "d", "bogus")


def test_expected_counts_worked_example():
    """The docstring's example: k = 2, length 4, ρ = a = (·, 1, 0.5, ·): drafts 1.5, per position (1, 0.5)."""
    keep = np.array([[0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    table, short = sc.expected_counts(keep, keep, np.array([4]), np.array([7]), 2)
    # start 1 (sure): accepts pos 1, pos 2 w.p. 0.5; reject at 2 → start 3 (w.p. 0.5): ρ_3 = 0 → one draft
    assert table[0].tolist() == [1.5, 3.0, 1.5, 1.0, 0.5]
    assert not short.any()
