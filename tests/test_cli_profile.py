"""`specprof profile` through the real entry point: report files, columns and types, terminal output."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq

from specprof.core.records import schema

TYPES = {
    "tokens": {"draft": "string", "prompt_id": "string", "domain": "string", "position": "int32",
               "target_token": "int32", "draft_token": "int32", "match": "bool", "accept_prob": "float",
               "target_p": "float", "draft_q": "float", "target_entropy": "float", "draft_top1_p": "float",
               # schema 3 (sampled traffic as vLLM samples it)
               "proposal_target_p": "float", "draft_q_untruncated": "float", "accept_prob_untruncated": "float"},
    "summary": {"draft": "string", "domain": "string", "k": "int32", "n_prompts": "int32", "n_tokens": "int64",
                "alpha": "double", "alpha_lo": "double", "alpha_hi": "double", "tokens_per_iter": "double",
                "draft_acceptance_rate": "double", "speedup_iid": "double", "speedup": "double",
                "speedup_lo": "double", "speedup_hi": "double", "cost_ratio": "double", "decision": "string"},
    "blocks": {"draft": "string", "domain": "string", "k": "int32", "accepted": "int32", "iterations": "double"},
}


def test_profile_writes_the_report_contract(tiny, corpus, tmp_path, cli):
    out = tmp_path / "report"
    r = cli("profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", "ngram",
            "--k-max", 4, "--max-new-tokens", 16, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"draft {tiny['close']}" in r.stdout and "ALL" in r.stdout
    for name, types in TYPES.items():
        table = pq.read_table(out / f"{name}.parquet")  # plain pyarrow
        assert {f.name: str(f.type) for f in table.schema} == types
        assert table.schema.metadata[schema.VERSION_KEY] == str(schema.SCHEMA_VERSION).encode()
        assert list(pd.read_parquet(out / f"{name}.parquet").columns) == list(types)  # plain pandas
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary["domain"]) == {"alpha", "beta", "ALL"}
    # intervals (bootstrap over prompts) hold their point; every row carries the decision at its k
    assert (summary.alpha_lo <= summary.alpha).all() and (summary.alpha <= summary.alpha_hi).all()
    assert (summary.speedup_lo <= summary.speedup).all() and (summary.speedup <= summary.speedup_hi).all()
    assert set(summary["decision"]) <= {"GO", "NO-GO", "INCONCLUSIVE"}
    # 4 prompts per domain are too few to decide: the terminal says so
    assert "INCONCLUSIVE" in r.stdout and "only 4 prompts" in r.stdout
    assert sorted(summary["k"].unique()) == [1, 2, 3, 4]
    blocks = pd.read_parquet(out / "blocks.parquet")
    # the histogram holds every iteration: Σ over accepted = tokens / tokens_per_iter
    for row in summary.itertuples():
        h = blocks[(blocks.draft == row.draft) & (blocks.domain == row.domain) & (blocks.k == row.k)]
        assert len(h) == row.k + 1
        assert abs(h.iterations.sum() * row.tokens_per_iter - row.n_tokens) < 1e-6
    run = json.loads((out / "run.json").read_text())
    assert run["finished_at"] and run["settings"]["k_max"] == 4
    assert len(run["timings"]["target_forward_s"]) == 5  # n = 1..k_max+1
    assert set(run["timings"]["draft_step_s"]) == {str(tiny["close"]), "ngram"}
    assert not (out / "parts").exists()


def test_python_m_specprof_help():
    r = subprocess.run([sys.executable, "-m", "specprof", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "profile" in r.stdout and "mean acceptance length" in r.stdout


def test_profile_help_teaches_the_defaults(cli):
    r = cli("profile", "--help")
    assert r.exit_code == 0
    assert "--k-max" in r.stdout and "early-exit:L" in r.stdout and "under 10" in r.stdout


def test_profile_warns_when_its_own_timings_look_disturbed(tiny, corpus, tmp_path, cli, monkeypatch):
    # Injected verification times: busy (t_T(2) = 3.6 × t_T(1), more than 2 one-token steps) → the warning
    # recommend prints, with the fix; idle (a rise of 10% per extra token) → none.
    from specprof.engines.hf import measure

    def run(curve):
        monkeypatch.setattr(measure, "forward_seconds", lambda model, context, ns, **kw: {n: curve(n) for n in ns})
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        r = cli("profile", corpus, "--target", tiny["target"], "--draft", "ngram", "--k-max", 2,
                "--max-new-tokens", 4, "--out", out)
        assert r.exit_code == 0, r.output
        return r.stdout.splitlines()

    busy = run(lambda n: 0.010 if n == 1 else 0.036)
    assert ("warning: the measured verification times look disturbed (t_T(2) = 3.6× t_T(1)): the machine was "
            "probably busy while profiling; re-run profile on an idle machine (on a shared one, with "
            "OMP_NUM_THREADS=1) or plan with --cost-ratio") in busy
    idle = run(lambda n: 0.010 * (1 + 0.1 * (n - 1)))
    assert not any(line.startswith("warning:") for line in idle)
    assert any(line.startswith("report written to") for line in idle)
