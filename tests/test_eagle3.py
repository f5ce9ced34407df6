"""EAGLE-3 heads: the profile's figures for every k equal a plain EAGLE-3 speculative loop, both layouts.

The loop here is written from vLLM 0.32.0's `llm_base_proposer.propose` and `llama_eagle3.py`: the
target runs with a KV cache and records its captured states (the input of decoder layer i with the
residual: a hook on layer i − 1's output, the embeddings for i = 0); after every verification the
head's own KV cache gets one row per newly verified position j (token z_{j+1}, fc of the target's
states at j, position j); depth 1 is the last row's output, depth i ≥ 2 a row of the previous
draft token and the previous depth's pre-norm state, whose KV is dropped after the block.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from eagle3_heads import make_echo_target, make_head

from specprof.core.simulation import conventions
from specprof.engines.hf import models
from specprof.engines.hf.drafts import load_draft

K_MAX = 8
MAX_NEW = 32


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eagle3")
    target = make_echo_target(root / "target")
    return {
        "target": target,
        "eagle": make_head(root / "head-eagle", target, layout="eagle", layer_ids=(0, 2, 4)),
        # speculators: captured layers listed out of order, a reduced draft vocabulary with d2t/t2d
        "speculators": make_head(root / "head-spec", target, layout="speculators", layer_ids=(4, 0, 1),
                                 draft_vocab=70, seed=1, norm_before_residual=False),
        "speculators-nbr": make_head(root / "head-nbr", target, layout="speculators", layer_ids=(0, 2, 3), seed=2),
    }


@pytest.fixture(scope="module")
def report(heads, corpus, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("eagle3-report") / "report"
    args = ["profile", corpus, "--target", heads["target"], "--draft", f"eagle3:{heads['eagle']}",
            "--draft", heads["speculators"], "--draft", f"eagle3:{heads['speculators-nbr']}",
            "--k-max", K_MAX, "--max-new-tokens", MAX_NEW, "--batch-size", 3, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def captured(model, layer_ids):
    """Hooks keeping vLLM's aux states of every position of the next forward; returns (states, remove)."""
    states = {}
    handles = []
    for i in sorted(layer_ids):
        module = model.model.embed_tokens if i == 0 else model.model.layers[i - 1]
        handles.append(module.register_forward_hook(
            lambda m, a, out, i=i: states.__setitem__(i, out[0] if isinstance(out, tuple) else out)))
    return states, lambda: [h.remove() for h in handles]


@torch.inference_mode()
def eagle_loop(target, head, prompt: list[int], k: int, max_new: int, eos: set[int], vllm: bool):
    """Greedy EAGLE-3 speculative decoding. Returns (output, iterations, tokens emitted per block, vLLM counters).

    vllm=True: prefill over the prompt samples the first token without a draft (vLLM). vllm=False: the
    target has seen the prompt but its last token, and the first block drafts the first token."""
    from transformers import DynamicCache

    ids = sorted(head.aux_layers)
    states, remove = captured(target, ids)
    cache = DynamicCache(config=target.config)
    head_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    seq = list(prompt)
    prefill = vllm or len(prompt) < 2  # a one-token prompt leaves the head no row to draft the first token from
    fed = prompt if prefill else prompt[:-1]
    out = target(input_ids=torch.tensor([fed]), cache=cache, use_cache=True)
    pending = torch.cat([states[i][0] for i in ids], dim=-1)  # target states of positions not yet head rows
    output, emitted = [], []
    if prefill:
        first = int(out.logits[0, -1].argmax())
        output.append(first)
        seq.append(first)
        if not vllm:
            emitted.append(1)  # a block without proposals
    drafts = drafted = accepted = 0
    per_pos = [0] * k
    rows_done = 0
    while not (output and (output[-1] in eos or len(output) >= max_new)):
        # the head's rows for the newly verified positions j: token z_{j+1}, fc(aux_j), position j
        n_new = pending.shape[0]
        positions = torch.arange(rows_done, rows_done + n_new)
        tokens = torch.tensor(seq[rows_done + 1: rows_done + 1 + n_new], dtype=torch.long)
        hout, state, new = head.rows(tokens, head.combine(pending), positions, cache=head_cache)
        head_cache = [(torch.cat([c[0], kv[0]]), torch.cat([c[1], kv[1]])) for c, kv in
                      zip(head_cache, new, strict=True)] if head_cache else new
        rows_done += n_new
        proposal = [int(head.greedy(hout[-1:])[0])]
        hidden, block_cache = state[-1:], head_cache
        for depth in range(1, k):
            hout, hidden, new = head.rows(torch.tensor(proposal[-1:]), hidden,
                                          torch.tensor([rows_done - 1 + depth]), cache=block_cache)
            block_cache = [(torch.cat([c[0], kv[0]]), torch.cat([c[1], kv[1]])) for c, kv in
                           zip(block_cache, new, strict=True)]
            proposal.append(int(head.greedy(hout)[0]))
        # the target verifies [last token, proposals]
        verify = target(input_ids=torch.tensor([[seq[-1], *proposal]]), cache=cache, use_cache=True)
        choice = verify.logits[0].argmax(-1).tolist()
        n = 0
        while n < k and proposal[n] == choice[n]:
            n += 1
        drafts, drafted, accepted = drafts + 1, drafted + k, accepted + n
        for i in range(n):
            per_pos[i] += 1
        block = [*proposal[:n], choice[n]]
        kept = 0
        for tok in block:
            output.append(tok)
            seq.append(tok)
            kept += 1
            if tok in eos or len(output) >= max_new:
                break
        emitted.append(kept)
        cache.crop(-(k - n))  # keep the positions up to the last accepted token
        pending = torch.cat([states[i][0, : n + 1] for i in ids], dim=-1)
    remove()
    return output, len(emitted), sum(emitted), [drafts, drafted, accepted, *per_pos]


def load(path):
    return models.load_model(str(path), torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("which", ["eagle", "speculators", "speculators-nbr"])
def test_every_k_equals_an_eagle3_loop(report, heads, which):
    target = load(heads["target"])
    name = f"eagle3:{heads[which]}" if which != "speculators" else str(heads[which])
    head = load_draft(name, target, torch.device("cpu"), torch.float32).head
    eos = set(models.eos_token_ids(target))
    tokens = pd.read_parquet(report / "tokens.parquet")
    summary = pd.read_parquet(report / "summary.parquet")
    prompts = pd.read_parquet(report / "prompts.parquet").set_index("prompt_id")
    accepted_any, long_blocks = 0, 0
    for k in range(1, K_MAX + 1) if which != "speculators-nbr" else (1, 3, K_MAX):  # (a third layout variant)
        iterations = emitted = 0
        total = np.zeros(3 + k, dtype=np.int64)
        for prompt_id in prompts.index:
            prompt = list(prompts.loc[prompt_id, "prompt_tokens"])
            rows = tokens[(tokens.draft == name) & (tokens.prompt_id == prompt_id)].sort_values("position")
            out, its, emits, _ = eagle_loop(target.model, head, prompt, k, MAX_NEW, eos, vllm=False)
            assert out == rows.target_token.tolist(), (which, prompt_id, k)
            iterations, emitted = iterations + its, emitted + emits
            out, _, _, counts = eagle_loop(target.model, head, prompt, k, MAX_NEW, eos, vllm=True)
            assert out == rows.target_token.tolist(), (which, prompt_id, k)
            one = conventions.engine_counters(report, name, k, prompt_ids=[prompt_id])
            assert [one.num_drafts, one.num_draft_tokens, one.num_accepted_tokens,
                    *one.num_accepted_tokens_per_pos] == counts, (which, prompt_id, k)
            total += np.array(counts)
        row = summary[(summary.draft == name) & (summary.domain == "ALL") & (summary.k == k)].iloc[0]
        assert row.tokens_per_iter == pytest.approx(emitted / iterations), (which, k)
        got = conventions.engine_counters(report, name, k)
        assert got.exact, got.note
        assert [got.num_drafts, got.num_draft_tokens, got.num_accepted_tokens,
                *got.num_accepted_tokens_per_pos] == total.tolist()
        accepted_any += int(total[2])
        long_blocks += int(total[3 + k - 1]) if k >= 3 else 0
    assert accepted_any > 0 and long_blocks > 0  # the comparison saw accepted blocks, some of full length


def test_report_records_the_heads(report, heads):
    run = json.loads((report / "run.json").read_text())
    kinds = {d["name"]: d for d in run["drafts"]}
    spec = kinds[str(heads["speculators"])]
    assert spec["kind"] == "eagle3" and spec["layout"] == "speculators" and spec["aux_layers"] == [0, 1, 4]
    assert spec["draft_vocab_size"] < 102
    eagle = kinds[f"eagle3:{heads['eagle']}"]
    assert eagle["layout"] == "eagle" and eagle["aux_layers"] == [0, 2, 4]
    assert all(run["timings"]["draft_step_s"][name] > 0 for name in kinds)
    proposals = pd.read_parquet(report / "proposals.parquet")
    assert set(proposals.draft) == set(kinds)
    assert proposals.proposal.map(len).max() == K_MAX


def test_emit_configs(report, cli, heads):
    name = f"eagle3:{heads['eagle']}"
    args = ["recommend", report, "--cost-ratio", 0, "--domain", "ALL", "--draft", name]
    r = cli(*args, "--emit", "vllm", "--k", 3)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"method": "eagle3", "model": str(heads["eagle"]), "num_speculative_tokens": 3}
    r = cli(*args, "--emit", "sglang", "--k", 2)
    assert r.stdout.strip() == (f"--speculative-algorithm EAGLE3 --speculative-draft-model-path {heads['eagle']} "
                                "--speculative-num-steps 2 --speculative-eagle-topk 1 --speculative-num-draft-tokens 3")
    r = cli("recommend", report, "--cost-ratio", 0, "--draft", str(heads["speculators"]), "--emit", "vllm", "--k", 4)
    assert json.loads(r.stdout)["model"] == str(heads["speculators"])


def test_vllm_launch_config(heads):
    from specprof.engines.vllm.launcher import speculative_config

    assert speculative_config(f"eagle3:{heads['eagle']}", 2) == {"method": "eagle3", "model": str(heads["eagle"]),
                                                                 "num_speculative_tokens": 2}
    assert speculative_config(str(heads["speculators"]), 1)["method"] == "eagle3"


def test_speculate_runs_a_real_eagle3_loop(report, heads):
    """`speculate` (what `verify` runs) with a head: the report's continuation and blocks, iteration by iteration."""
    from specprof.core.records import reportfiles
    from specprof.core.simulation import blockdraft
    from specprof.engines.hf import speculate

    target = load(heads["target"])
    eos = models.eos_token_ids(target)
    tokens = pd.read_parquet(report / "tokens.parquet")
    prompts = pd.read_parquet(report / "prompts.parquet").set_index("prompt_id")
    for which in ("eagle", "speculators"):
        name = f"eagle3:{heads[which]}" if which == "eagle" else str(heads[which])
        draft = load_draft(name, target, torch.device("cpu"), torch.float32)
        runs = blockdraft.load_runs(reportfiles.load_report(report), [name], K_MAX)[name]
        for k in (1, 3, K_MAX):
            for prompt_id in prompts.index:
                prompt = list(prompts.loc[prompt_id, "prompt_tokens"])
                out = speculate.speculative_generate(target.model, speculate.proposer_for(draft), prompt, k=k,
                                                     max_new_tokens=MAX_NEW, eos_ids=eos)
                rows = tokens[(tokens.draft == name) & (tokens.prompt_id == prompt_id)].sort_values("position")
                assert out.tokens == rows.target_token.tolist(), (which, prompt_id, k)
                blocks = blockdraft.simulate_blocks(runs, prompt_id, k)
                assert [it.start for it in out.iterations] == [b.start for b in blocks], (which, prompt_id, k)
