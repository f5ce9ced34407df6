"""`specprof verify` through the real entry point on tiny models: exact agreement at T = 0, the
divergence diagnosis (a planted near-tie and a planted real difference), flags at T > 0, bad input."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from specprof.core.records import reportfiles
from specprof.ui import render

K_MAX = 4
MAX_NEW = 24
ROW_FIELDS = {"draft", "domain", "k", "predicted_tokens_per_iter", "measured_tokens_per_iter", "predicted_speedup",
              "measured_speedup", "relative_error"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention
    yield
    torch.set_num_threads(before)


def profile(cli, corpus, target, out, *extra):
    r = cli("profile", corpus, "--target", target, "--k-max", K_MAX, "--max-new-tokens", MAX_NEW, "--out", out,
            *extra)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def greedy_report(tiny, corpus, tmp_path_factory):
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("verify") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", "ngram:2",
            "--k-max", K_MAX, "--max-new-tokens", MAX_NEW, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_profile_records_the_draft_catch_up_time(greedy_report, tiny):
    timings = json.loads((greedy_report / "run.json").read_text())["timings"]
    assert set(timings["draft_catchup_s"]) == {str(tiny["close"]), "ngram:2"}
    assert timings["draft_catchup_s"]["ngram:2"] == 0.0 and timings["draft_catchup_s"][str(tiny["close"])] >= 0.0


def test_verify_greedy_reproduces_the_report_exactly(greedy_report, cli, tiny):
    r = cli("verify", greedy_report, "--limit", 2, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["identical_outputs"] is True and result["divergences"] == []
    summary = pd.read_parquet(greedy_report / "summary.parquet")
    best = render.best_rows(summary).set_index(["draft", "domain"])["k"]
    rows = result["rows"]
    assert {(row["draft"], row["domain"]) for row in rows} == {
        (d, dom) for d in (str(tiny["close"]), "ngram:2") for dom in ("alpha", "beta", "ALL")
    }
    for row in rows:
        assert ROW_FIELDS <= set(row)
        assert row["k"] == best[(row["draft"], row["domain"])]  # default: the domain's best k
        assert row["measured_tokens_per_iter"] == row["predicted_tokens_per_iter"]  # exact at T = 0
        assert row["n_prompts"] == (4 if row["domain"] == "ALL" else 2)
        assert row["measured_speedup"] > 0 and row["predicted_speedup"] > 0
        rel = (row["measured_speedup"] - row["predicted_speedup"]) / row["predicted_speedup"]
        assert row["relative_error"] == pytest.approx(rel)


def test_verify_every_k_and_one_draft(greedy_report, cli, tiny):
    r = cli("verify", greedy_report, "--limit", 1, "--draft", "ngram:2", "--k", 1, "--k", 4, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert {row["draft"] for row in rows} == {"ngram:2"}
    assert sorted({row["k"] for row in rows}) == [1, 4]
    # the prediction is the report's own figure for these prompts: with one prompt per domain, the per-prompt trace
    tokens = pd.read_parquet(greedy_report / "tokens.parquet")
    assert all(row["measured_tokens_per_iter"] == row["predicted_tokens_per_iter"] for row in rows)
    assert len(tokens)  # (the report was read, not regenerated)


def test_verify_prints_a_table(greedy_report, cli):
    r = cli("verify", greedy_report, "--limit", 1, "--draft", "ngram:2", "--k", 2)
    assert r.exit_code == 0, r.output
    assert "tok/iter pred" in r.stdout and "identical outputs" in r.stdout and "ALL" in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--k", 9], "specprof: error: --k 9: the report covers k = 1..4"),
        (["--k", 0], "specprof: error: --k 0: must be ≥ 1"),
        (["--draft", "nope"], "specprof: error: --draft nope: not in the report (drafts: "),
        (["--limit", 0], "specprof: error: --limit 0: must be ≥ 1"),
    ],
)
def test_verify_bad_input_is_one_line_and_exit_2(greedy_report, cli, args, message):
    r = cli("verify", greedy_report, *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1


def test_verify_refuses_other_weights(greedy_report, cli, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(greedy_report, copy)
    run = json.loads((copy / "run.json").read_text())
    run["target"]["fingerprint"] = "0123456789abcdef"
    (copy / "run.json").write_text(json.dumps(run))
    r = cli("verify", copy)
    assert r.exit_code == 2, r.output
    assert "the report was made with 0123456789abcdef; verify needs the same weights" in r.stderr


def test_verify_diagnoses_a_near_tie_and_a_real_difference(tiny, corpus, cli, tmp_path):
    """Plant both kinds of divergence. The target's LM-head row for token b is made a copy of row a,
    so a and b always tie exactly (argmax keeps the lower id, a): a report that says b where the
    target says a is a near-tie. A report token with a large float32 gap is a real difference."""
    from transformers import AutoModelForCausalLM

    plain = tmp_path / "plain"
    profile(cli, corpus, tiny["target"], plain, "--draft", "ngram", "--limit", 1)
    first = pd.read_parquet(plain / "tokens.parquet").sort_values(["prompt_id", "position"])
    a_prompt = "a-1"
    a = int(first[(first.prompt_id == a_prompt) & (first.position == 0)].target_token.iloc[0])
    b = a + 1 if a + 1 < 102 else a - 1
    lo, hi = min(a, b), max(a, b)

    tied = tmp_path / "tied"
    shutil.copytree(tiny["target"], tied)
    model = AutoModelForCausalLM.from_pretrained(tied, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[hi] = model.lm_head.weight[lo]
    model.save_pretrained(tied)
    out = profile(cli, corpus, tied, tmp_path / "report", "--draft", "ngram", "--limit", 1)
    tokens = pd.read_parquet(out / "tokens.parquet")
    at = (tokens.prompt_id == a_prompt) & (tokens.position == 0)
    emitted = int(tokens[at].target_token.iloc[0])
    assert emitted == lo  # the tie goes to the lower id
    tokens.loc[at, "target_token"] = hi  # the report now says the other half of the tie
    b_prompt = "b-1"
    at_b = (tokens.prompt_id == b_prompt) & (tokens.position == 3)
    real = int(tokens[at_b].target_token.iloc[0])
    tokens.loc[at_b, "target_token"] = (real + 50) % 102  # a token the target does not nearly prefer
    reportfiles.write_table(out / "tokens.parquet", tokens, "tokens")

    r = cli("verify", out, "--k", 2, "--json")
    assert r.exit_code == 1, r.output
    result = json.loads(r.stdout)
    assert result["identical_outputs"] is False
    found = {(d["prompt_id"], d["kind"]): d for d in result["divergences"]}
    tie = found[(a_prompt, "target")]
    assert (tie["position"], tie["expected_token"], tie["got_token"]) == (0, hi, lo)
    assert tie["verdict"] == "near-tie" and tie["float32_gap"] == 0.0
    bug = found[(b_prompt, "target")]
    assert (bug["position"], bug["got_token"], bug["verdict"]) == (3, real, "bug")
    assert bug["float32_gap"] < -1e-3  # float32 clearly prefers the target's own token

    r = cli("verify", out, "--k", 2)
    assert r.exit_code == 1
    assert f"prompt {a_prompt}" in r.stdout and "near-tie" in r.stdout and "a real difference" in r.stdout


def test_verify_sampling_checks_alpha_not_outputs(tiny, corpus, cli, tmp_path):
    out = profile(cli, corpus, tiny["target"], tmp_path / "r", "--draft", tiny["close"], "--temperature", 0.8,
                  "--top-p", 0.95)
    r = cli("verify", out, "--k", 3, "--json")
    assert r.exit_code == 0, r.output  # flags at T > 0 are statistical: they warn, they do not fail
    result = json.loads(r.stdout)
    assert result["identical_outputs"] is None and result["divergences"] == []
    tokens = pd.read_parquet(out / "tokens.parquet")
    for row in result["rows"]:
        assert 0 <= row["measured_alpha"] <= 1
        if row["n_prompts"] < 5:  # issue 23: no degenerate interval for so few prompts
            assert row["check"] == f"too few prompts ({row['n_prompts']} < 5) for an interval: not checked"
        else:
            assert row["check"] == "" or row["check"].startswith("measured α")
        domain = tokens if row["domain"] == "ALL" else tokens[tokens.domain == row["domain"]]
        assert row["alpha"] == pytest.approx(float(domain.accept_prob.astype(float).mean()), rel=1e-6)


def test_verify_predicts_what_the_report_says(greedy_report, cli):
    """On all the report's prompts, the predicted figures are the summary's own (catch-up included)."""
    r = cli("verify", greedy_report, "--draft", "ngram:2", "--k", 1, "--k", 3, "--json")
    assert r.exit_code == 0, r.output
    summary = pd.read_parquet(greedy_report / "summary.parquet").set_index(["draft", "domain", "k"])
    for row in json.loads(r.stdout)["rows"]:
        expected = summary.loc[(row["draft"], row["domain"], row["k"])]
        assert row["predicted_tokens_per_iter"] == pytest.approx(expected["tokens_per_iter"], rel=1e-12)
        assert row["predicted_speedup"] == pytest.approx(expected["speedup"], rel=1e-12)
