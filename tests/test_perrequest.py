"""Request by request (issue 24): per-request spreads, acceptance by context, and the synthetic-acceptance configs.

Every figure is held against a straightforward computation written here from tokens.parquet (blocks
walked one by one with `trace.simulate_blocks`, vLLM's loop re-implemented), on a hand-worked
3-prompt report and on a profile of tiny random-init models.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specprof.core.answers import context, decide, perrequest
from specprof.core.answers.analysis import load_analysis
from specprof.core.records import reportfiles, schema
from specprof.core.simulation.trace import simulate_blocks

ROOT = Path(__file__).resolve().parents[1]


def write_report(directory: Path, prompts: dict[str, tuple[str, int, list[int]]], k_max: int = 2) -> Path:
    """A greedy report of one model draft "d": prompt id → (domain, prompt tokens, match vector)."""
    directory.mkdir(parents=True)
    rows = []
    for pid, (domain, _, match) in prompts.items():
        for t, m in enumerate(match):
            rows.append({"draft": "d", "prompt_id": pid, "domain": domain, "position": t, "target_token": 7,
                         "draft_token": 7 if m else 8, "match": bool(m), "accept_prob": float(m), "target_p": 1.0,
                         "draft_q": 1.0, "target_entropy": 0.0, "draft_top1_p": 0.9})
    reportfiles.write_table(directory / "tokens.parquet", pd.DataFrame(rows), "tokens")
    reportfiles.write_table(directory / "prompts.parquet", pd.DataFrame([
        {"prompt_id": pid, "domain": domain, "prompt": "x", "messages": None, "prompt_tokens": [1] * n,
         "n_generated": len(match), "finish_reason": "length", "min_margin": 1.0}
        for pid, (domain, n, match) in prompts.items()]), "prompts")
    reportfiles.write_json(directory / "run.json", {
        "schema_version": schema.SCHEMA_VERSION, "target": {"name": "t", "fingerprint": "t"},
        "drafts": [{"name": "d", "kind": "model"}],
        "settings": {"k_max": k_max, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8},
        "timings": None, "finished_at": "2025-01-01T00:00:00+00:00",
    })
    return directory


# Three prompts, k = 2, cost ratio c = 0.5 with flat verification: one iteration costs 2·0.5 + 1 = 2 steps.
#   p0 (domain a, 3 prompt tokens)   match 1 1 0 1   blocks: @0 accepts 2 emits 3; @3 accepts 1 emits 1 (end)
#                                                    → 2 iterations, 4 tokens: tokens/iter 2.0, speedup 1.0
#   p1 (domain a, 600 prompt tokens) match 0 0 0     blocks: @0, @1, @2 accept 0 emit 1 → 1.0, speedup 0.5 (loses)
#   p2 (domain b, 10 prompt tokens)  match 1 1 1 1 1 blocks: @0 accepts 2 emits 3; @3 accepts 2 emits 2 (end)
#                                                    → 2.5, speedup 1.25
# ALL: tokens/iter per request 1.0, 2.0, 2.5 → median 2.0, p10 1.0 + 0.2·1.0 = 1.2, p90 2.0 + 0.8·0.5 = 2.4;
# 1 request of 3 loses.
# Context (prompt + position): p0 at 3..6 and p2 at 10..14 fall in "< 512", p1 at 600..602 in "512–2k":
#   α  < 512: (3 + 5) / (4 + 5) = 8/9; 512–2k: 0/3.  tokens/iter (blocks by where they start):
#   < 512: (4 + 5) / (2 + 2) = 2.25; 512–2k: 3 / 3 = 1.0.  Position: every token in "0–15": α 8/12, 12/7.
HAND = {"p0": ("a", 3, [1, 1, 0, 1]), "p1": ("a", 600, [0, 0, 0]), "p2": ("b", 10, [1, 1, 1, 1, 1])}


def test_hand_worked_three_prompts(tmp_path):
    a = load_analysis(write_report(tmp_path / "r", HAND))
    estimates = decide.estimates(a, cost_ratio=0.5)
    rows = {r.domain: r for r in perrequest.per_request(a, estimates, k=2)}
    every = rows["ALL"]
    assert every.prompt_ids.tolist() == ["p0", "p1", "p2"]
    assert every.tokens_per_iter.tolist() == [2.0, 1.0, 2.5]
    assert np.allclose(every.speedup, [1.0, 0.5, 1.25])
    s = perrequest.spread(every.tokens_per_iter)
    assert (s.median, round(s.p10, 12), round(s.p90, 12)) == (2.0, 1.2, 2.4)
    assert every.losing.tolist() == [False, True, False] and every.losing_share == pytest.approx(1 / 3)
    assert rows["a"].tokens_per_iter.tolist() == [2.0, 1.0] and rows["b"].tokens_per_iter.tolist() == [2.5]
    buckets = {(b.domain, b.axis): b for b in context.context_buckets(a, estimates, k=2)}
    c = buckets[("ALL", "context")]
    assert c.n_tokens.tolist() == [9, 3, 0, 0] and c.n_prompts.tolist() == [2, 1, 0, 0]
    assert c.alpha[:2].tolist() == [8 / 9, 0.0] and c.tokens_per_iter[:2].tolist() == [2.25, 1.0]
    assert np.isnan(c.alpha[2:]).all()
    p = buckets[("ALL", "position")]
    assert p.alpha[0] == pytest.approx(8 / 12) and p.tokens_per_iter[0] == pytest.approx(12 / 7)
    assert c.fall is None  # 2 and 1 prompts: too few to say anything falls


def test_a_fall_with_context_is_named_and_a_flat_one_is_not(tmp_path):
    """Twelve prompts: six short ones that match everywhere, six past 2k tokens that never match."""
    prompts = {f"s{i}": ("a", 20, [1] * 6 + [0]) for i in range(6)}
    prompts |= {f"l{i}": ("a", 3000 + i, [0, 1, 0, 0, 1, 0, 0]) for i in range(6)}
    a = load_analysis(write_report(tmp_path / "r", prompts))
    estimates = decide.estimates(a, cost_ratio=0.1)
    buckets = context.context_buckets(a, estimates, k=2)
    lines = context.summary_lines(buckets)
    assert any(line.startswith("d  ALL: tokens/iter at k=2 falls with context from ") and "at < 512 tokens to" in line
               and "at 2k–8k tokens" in line for line in lines), lines
    flat = {f"s{i}": ("a", 20 + 3000 * (i % 2), [1, 1, 0] * 2) for i in range(12)}
    b = load_analysis(write_report(tmp_path / "flat", flat))
    lines = context.summary_lines(context.context_buckets(b, decide.estimates(b, cost_ratio=0.1), k=2))
    assert lines[0].startswith("acceptance does not fall with context length or position")


def straightforward(report: Path, draft: str, k: int) -> tuple[dict[str, float], dict[str, tuple]]:
    """Per prompt tokens/iter at k, and per context bucket (Σ match, tokens, Σ emitted, blocks), from
    tokens.parquet and prompts.parquet with `simulate_blocks` (a draft whose proposal depends on the prefix)."""
    tokens = pd.read_parquet(report / "tokens.parquet")
    tokens = tokens[tokens["draft"] == draft]
    lengths = {r.prompt_id: len(r.prompt_tokens) for r in pd.read_parquet(report / "prompts.parquet").itertuples()}
    per_prompt, buckets = {}, {}

    def bucket(context_length: int) -> int:
        return sum(context_length >= edge for edge in context.CONTEXT_EDGES) - 1

    for pid, rows in tokens.groupby("prompt_id", sort=False):
        match = rows.sort_values("position")["match"].tolist()
        blocks = simulate_blocks(match, k)
        per_prompt[pid] = sum(b.emitted for b in blocks) / len(blocks)
        for t, m in enumerate(match):
            cell = buckets.setdefault(bucket(lengths[pid] + t), [0, 0, 0, 0])
            cell[0] += m
            cell[1] += 1
        for b in blocks:
            cell = buckets.setdefault(bucket(lengths[pid] + b.start), [0, 0, 0, 0])
            cell[2] += b.emitted
            cell[3] += 1
    return per_prompt, buckets


@pytest.mark.parametrize("draft_name", ["close", "ngram"])
def test_tiny_model_figures_equal_a_straightforward_walk(small_report, tiny, draft_name):
    a = load_analysis(small_report)
    draft = next(t.draft for t in a.traces if (draft_name == "ngram") == (t.draft == "ngram"))
    estimates = [e for e in decide.estimates(a) if e.draft == draft and e.domain == "ALL"]
    k = 3
    expected, cells = straightforward(small_report, draft, k)
    (row,) = perrequest.per_request(a, estimates, k)
    assert dict(zip(row.prompt_ids.tolist(), row.tokens_per_iter.tolist())) == pytest.approx(expected)
    (c,) = [b for b in context.context_buckets(a, estimates, k) if b.axis == "context"]
    for i in range(len(context.CONTEXT_EDGES)):
        m, n, emitted, blocks = cells.get(i, (0, 0, 0, 0))
        assert c.n_tokens[i] == n
        if n:
            assert c.alpha[i] == pytest.approx(m / n) and c.tokens_per_iter[i] == pytest.approx(emitted / blocks)


def vllm_rates(report: Path, draft: str, k: int) -> list[float]:
    """vLLM's per-position acceptance written out: blocks from position 1 (the first token comes from prefill),
    accepted = consecutive matches counted on into the target's tokens past the end (a model draft)."""
    cols = ["prompt_id", "position", "match", "draft"]
    inside = pd.read_parquet(report / "tokens.parquet", columns=cols)
    inside = inside[inside["draft"] == draft]
    lengths = inside.groupby("prompt_id").size().to_dict()
    tokens = pd.concat([inside, pd.read_parquet(report / "past_end.parquet", columns=cols)])
    tokens = tokens[tokens["draft"] == draft]
    drafts, per_pos = 0, [0] * k
    for pid, rows in tokens.groupby("prompt_id"):
        match = rows.sort_values("position")["match"].tolist()
        length = lengths[pid]
        start = 1
        while start < length:
            n = 0
            while n < k and start + n < len(match) and match[start + n]:
                n += 1
            drafts += 1
            for i in range(n):
                per_pos[i] += 1
            start += n + 1
    return [p / drafts for p in per_pos]


def test_synthetic_rates_are_vllms_per_position_acceptance(small_report, cli):
    draft = next(d for d in pd.read_parquet(small_report / "tokens.parquet")["draft"].unique() if d != "ngram")
    r = cli("recommend", small_report, "--emit", "vllm-synthetic", "--draft", draft, "--k", 3)
    assert r.exit_code == 0, r.output
    config = json.loads(r.stdout)
    assert config["rejection_sample_method"] == "synthetic" and config["num_speculative_tokens"] == 3
    rates = config["synthetic_acceptance_rates"]
    assert rates == pytest.approx(vllm_rates(small_report, draft, 3))
    assert all(x >= y for x, y in zip(rates, rates[1:]))
    j = json.loads(cli("recommend", small_report, "--engine", "vllm", "--draft", draft, "--k", 3, "--json").stdout)
    (every,) = [e for e in j["recommendations"] if e["domain"] == "ALL"]
    assert rates == every["per_position_acceptance_rate"]
    mal = every["mean_acceptance_length"]
    assert mal == pytest.approx(1 + sum(rates))
    sg = cli("recommend", small_report, "--emit", "sglang-synthetic", "--draft", draft, "--k", 3).stdout
    assert sg.startswith(f"SGLANG_SIMULATE_ACC_LEN={mal:.4g} ") and "--speculative-num-draft-tokens 4" in sg
    trt = cli("recommend", small_report, "--emit", "trtllm-synthetic", "--draft", draft, "--k", 3).stdout
    assert trt.startswith(f"TLLM_SPEC_DECODE_FORCE_NUM_ACCEPTED_TOKENS={mal - 1:.4g}")


def test_recommend_prints_and_emits_the_request_figures(small_report, cli):
    r = cli("recommend", small_report)
    assert r.exit_code == 0, r.output
    assert "Request by request" in r.stdout and "Acceptance against context:" in r.stdout
    plain = json.loads(cli("recommend", small_report, "--json").stdout)
    assert "per_request" not in plain  # the JSON contract of older versions is unchanged without the flag
    j = json.loads(cli("recommend", small_report, "--json", "--per-request").stdout)
    assert len(j["per_request"]) == len(j["recommendations"])
    assert {c["axis"] for c in j["context"]} == {"context", "position"}
    with_engine = json.loads(cli("recommend", small_report, "--engine", "vllm", "--json", "--per-request").stdout)
    assert all("vllm_mean_acceptance_length" in e for e in with_engine["per_request"])


def test_the_python_api_gives_the_request_figures_the_cli_prints(cli):
    """recommend(per_request=True) and emit(report, "*-synthetic") equal `--json --per-request` and `--emit`, without
    torch (test_public_api's harness), on the bundled sample report; without per_request the keys are absent."""
    from test_public_api import REPORT, api, cli_json

    report = str(REPORT)
    plain, full, engine, emitted = api(
        ("recommend", [report], {}),
        ("recommend", [report], {"per_request": True}),
        ("recommend", [report], {"engine": "vllm", "draft": ["vllm-ngram"], "k": 3, "per_request": True}),
        ("emit", [report, "vllm-synthetic"], {"draft": ["vllm-ngram"], "k": 3}),
    )
    assert not {"per_request", "per_request_note", "context"} & set(plain)
    assert full == cli_json(cli, "recommend", report, "--per-request")
    assert len(full["per_request"]) == len(full["recommendations"]) and full["context"]
    assert engine == cli_json(cli, "recommend", report, "--engine", "vllm", "--draft", "vllm-ngram", "--k", "3",
                              "--per-request")
    assert all("vllm_mean_acceptance_length" in e for e in engine["per_request"])
    r = cli("recommend", report, "--emit", "vllm-synthetic", "--draft", "vllm-ngram", "--k", "3")
    assert r.exit_code == 0, r.output
    assert emitted["text"] + "\n" == r.stdout and json.loads(r.stdout)["rejection_sample_method"] == "synthetic"
    assert [f"note: {n}" for n in emitted["notes"]] == r.stderr.splitlines()


@pytest.mark.vllm
def test_vllm_accepts_the_emitted_synthetic_config(vllm_python):
    """vLLM 0.32.0's own SpeculativeConfig validates the emitted JSON (and refuses increasing rates)."""
    python = vllm_python
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    fixture = ROOT / "tests" / "fixtures" / "sample-report" / "report"
    r = CliRunner().invoke(app, ["recommend", str(fixture), "--emit", "vllm-synthetic", "--draft", "vllm-ngram",
                                 "--k", "3"], catch_exceptions=False)
    config = json.loads(r.stdout)
    check = (
        "import json, sys\n"
        "from vllm.config import SpeculativeConfig\n"
        "cfg = json.loads(sys.argv[1])\n"
        "s = SpeculativeConfig(**cfg)\n"
        "print(json.dumps({'rates': s.synthetic_acceptance_rates, 'method': s.rejection_sample_method,"
        " 'k': s.num_speculative_tokens}))\n"
        "try:\n"
        "    SpeculativeConfig(**{**cfg, 'synthetic_acceptance_rates': cfg['synthetic_acceptance_rates'][::-1]})\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    out = subprocess.run([python, "-c", check, json.dumps(config)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    validated = json.loads(lines[-2])
    assert validated == {"rates": config["synthetic_acceptance_rates"], "method": "synthetic", "k": 3}
    assert lines[-1].startswith("refused")
