"""`recommend`, `gate` and `compare` through the real CLI, on reports of real (tiny-model) profile runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specprof.core.pricing import costmodel
from specprof.core.records import schema

# 2 domains × 6 prompts: enough prompts per domain (≥ stats.MIN_PROMPTS) for a decision.
PROMPTS = {
    "prose": ["hello world", "Once upon a time there was", "The quick brown fox", "It was a dark and stormy night",
              "Dear friend, I write to", "In the beginning"],
    "code": ["def f(x):\n    return x", "SELECT * FROM t WHERE id = 1;", "for i in range(10):", "{\"a\": [1, 2, 3]}",
             "int main() { return 0; }", "x = x + 1; y = y + 1; z = z + 1;"],
}


@pytest.fixture(scope="module")
def reports(tiny, tmp_path_factory):
    """Three profiles: `main` (drafts close, far, ngram), `old` (close only), `far` (far only)."""
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    root = tmp_path_factory.mktemp("decide")
    corpus = root / "prompts.jsonl"
    corpus.write_text("".join(
        json.dumps({"id": f"{d}-{i}", "domain": d, "prompt": p}) + "\n"
        for d, ps in PROMPTS.items() for i, p in enumerate(ps)
    ))
    out = {}
    for name, drafts in {"main": ["close", "far", "ngram"], "old": ["close"], "far": ["far"]}.items():
        args = ["profile", corpus, "--target", tiny["target"], "--k-max", 4, "--max-new-tokens", 24,
                "--out", root / name]
        for d in drafts:
            args += ["--draft", tiny.get(d, d)]
        r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        out[name] = root / name
    out["close"], out["far_name"] = str(tiny["close"]), str(tiny["far"])
    return out


def as_json(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_recommend_json_agrees_with_the_profile_summary(reports, cli):
    # recommend recomputes from tokens.parquet with the same seed: the same figures as summary.parquet.
    data = as_json(cli("recommend", reports["main"], "--json"))
    summary = pd.read_parquet(reports["main"] / "summary.parquet")
    recs = data["recommendations"]
    assert {(r["draft"], r["domain"]) for r in recs} == set(zip(summary["draft"], summary["domain"]))
    for rec in recs:
        rows = summary[(summary.draft == rec["draft"]) & (summary.domain == rec["domain"])].set_index("k")
        assert rec["best_k"] == costmodel.best_k(rows["speedup"].to_dict())
        row = rows.loc[rec["best_k"]]
        for key in ("alpha", "alpha_lo", "alpha_hi", "tokens_per_iter", "draft_acceptance_rate", "speedup",
                    "speedup_lo", "speedup_hi", "speedup_iid"):
            assert rec[key] == pytest.approx(row[key]), key
        assert rec["decision"] == row["decision"]
        assert rec["alpha_lo"] <= rec["alpha"] <= rec["alpha_hi"]
        assert rec["speedup_lo"] <= rec["speedup"] <= rec["speedup_hi"]
        r = rec["per_position_acceptance"]
        assert len(r) == rec["best_k"]
        # AL(k) = 1 + Σ r_i, exact away from the sequence end; the end cuts bonus tokens, so ≤.
        assert rec["tokens_per_iter"] <= 1 + sum(r) + 1e-9
        assert rec["draft_acceptance_rate"] == pytest.approx(sum(r) / rec["best_k"])
    assert [p["draft"] for p in data["drafts"]] == list(dict.fromkeys(summary["draft"]))


def test_recommend_with_cost_ratio_zero_prices_tokens_per_iter(reports, cli):
    # c = 0 and flat verification: S = tokens/iter / (k·0 + 1), so the best k is the longest useful one.
    data = as_json(cli("recommend", reports["main"], "--cost-ratio", 0, "--json", "--domain", "code"))
    for rec in data["recommendations"]:
        assert rec["domain"] == "code" and not rec["measured_costs"]
        assert rec["speedup"] == pytest.approx(rec["tokens_per_iter"])
        assert rec["speedup_iid"] == pytest.approx(costmodel.expected_tokens(rec["alpha"], rec["best_k"]))


def test_recommend_accepts_files_in_the_report_and_filters_drafts(reports, cli):
    a = as_json(cli("recommend", reports["main"] / "summary.parquet", "--draft", "ngram", "--json"))
    b = as_json(cli("recommend", reports["main"] / "tokens.parquet", "--draft", "ngram", "--json"))
    assert a["recommendations"] == b["recommendations"]
    assert {r["draft"] for r in a["recommendations"]} == {"ngram"}


def test_recommend_table_shows_decisions_and_the_plan(reports, cli):
    r = cli("recommend", reports["main"])
    assert r.exit_code == 0, r.output
    assert "best k" in r.stdout and "speedup [95% CI]" in r.stdout
    assert any(d in r.stdout for d in ("GO", "NO-GO", "INCONCLUSIVE"))
    assert "enable speculation" in r.stdout


def test_what_if_table_and_json(cli):
    # α = 0.75, c = 0.04 (the 100M-draft scenario of test_costmodel): best k 7, S = 3.5995 / 1.28.
    data = as_json(cli("recommend", "--alpha", 0.75, "--cost-ratio", 0.04, "--json"))
    assert data["best_k"] == 7 and data["speedup"] == pytest.approx(3.59954833984375 / 1.28)
    assert [row["k"] for row in data["rows"]] == list(range(1, 9))
    assert data["rows"][0] == {"k": 1, "tokens_per_iter": 1.75, "speedup": pytest.approx(1.75 / 1.04)}
    assert data["breakeven_alpha"] == pytest.approx(costmodel.breakeven_alpha(7, 0.04))
    r = cli("recommend", "--alpha", 0.75, "--cost-ratio", 0.04, "--k-max", 3)
    assert r.exit_code == 0 and "best k = 3" in r.stdout
    slow = as_json(cli("recommend", "--alpha", 0.5, "--cost-ratio", 1.5, "--json"))
    assert slow["breakeven_alpha"] is None  # a draft slower than the target never pays


@pytest.mark.parametrize(
    "args, line",
    [
        (["--alpha", 0.5], "specprof: error: give a REPORT, or --alpha and --cost-ratio for the what-if table"),
        (["--alpha", 1.5, "--cost-ratio", 0.1], "specprof: error: --alpha 1.5: must be between 0 and 1"),
        (["--alpha", 0.5, "--cost-ratio", -1], "specprof: error: --cost-ratio -1.0: must be ≥ 0"),
    ],
)
def test_what_if_bad_input(cli, args, line):
    r = cli("recommend", *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == line


# --- gate: every exit code on real reports ---------------------------------------------------------


def test_gate_passes_with_exit_0(reports, cli):
    data = json.loads(cli("gate", reports["main"], "--min-speedup", 0.01, "--min-alpha", 0.0, "--json").stdout)
    r = cli("gate", reports["main"], "--min-speedup", 0.01, "--min-alpha", 0.0)
    assert r.exit_code == 0, r.output
    assert data["passed"] and "gate: PASS" in r.stdout
    # 3 drafts × (2 domains + ALL) × 2 checks, each on the lower bound.
    assert len(data["checks"]) == 18
    assert {c["measured"] for c in data["checks"]} == {"lower bound"}


def test_gate_fails_with_exit_1(reports, cli):
    r = cli("gate", reports["main"], "--min-alpha", 0.99, "--domain", "code", "--draft", "ngram", "--json")
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert not data["passed"]
    [check] = data["checks"]
    assert (check["draft"], check["domain"], check["check"], check["passed"]) == ("ngram", "code", "alpha", False)
    table = cli("gate", reports["main"], "--min-alpha", 0.99, "--domain", "code", "--draft", "ngram")
    assert table.exit_code == 1 and "FAIL" in table.stdout and "gate: FAIL (1 of 1 checks failed)" in table.stdout


def test_gate_point_and_fixed_k(reports, cli):
    lower = as_json(cli("gate", reports["main"], "--min-alpha", 0, "--k", 2, "--json"))
    point = json.loads(cli("gate", reports["main"], "--min-alpha", 0, "--k", 2, "--point", "--json").stdout)
    assert {c["k"] for c in point["checks"]} == {2}
    assert all(p["value"] >= lo["value"] for p, lo in zip(point["checks"], lower["checks"]))
    assert {c["measured"] for c in point["checks"]} == {"point"}


def test_gate_baseline_alpha_drop(reports, cli):
    # Against itself: α did not drop. close (α ≈ 0.6) → far (α ≈ 0.2), one draft each so they pair: it did.
    same = cli("gate", reports["main"], "--baseline", reports["main"], "--max-alpha-drop", 0.0)
    assert same.exit_code == 0, same.output
    r = cli("gate", reports["far"], "--baseline", reports["old"], "--max-alpha-drop", 0.1, "--json")
    assert r.exit_code == 1, r.output
    checks = json.loads(r.stdout)["checks"]
    assert {c["check"] for c in checks} == {"alpha_drop"}
    assert all(c["value"] > 0.1 and not c["passed"] for c in checks)


def _copy(reports, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(reports["main"], dst)
    return dst


def _bad_reports(reports, tmp_path):
    """(name, report path, gate flags, expected stderr line or None when only its shape is checked)."""
    cases = []
    check = ["--min-speedup", 1.0]
    cases.append(("missing", tmp_path / "nope", check, f"{tmp_path / 'nope'}: no such report directory or file"))

    corrupt = _copy(reports, tmp_path / "c")
    (corrupt / "tokens.parquet").write_bytes(b"not parquet at all")
    cases.append(("corrupt", corrupt, check, None))

    foreign = _copy(reports, tmp_path / "f")
    pq.write_table(pa.table({"draft": ["x"], "value": [1]}), foreign / "tokens.parquet")  # no specprof metadata
    cases.append(("foreign", foreign, check,
                  f"{foreign / 'tokens.parquet'}: not a specprof report file (no schema version in its metadata)"))

    future = _copy(reports, tmp_path / "v")
    table = pq.read_table(future / "tokens.parquet")
    pq.write_table(table.replace_schema_metadata({b"specprof.schema_version": b"99"}), future / "tokens.parquet")
    cases.append(("future", future, check, f"{future / 'tokens.parquet'}: schema version 99 is newer than this "
                  f"specprof understands ({schema.SCHEMA_VERSION}); upgrade specprof"))

    half = _copy(reports, tmp_path / "h")
    run = json.loads((half / "run.json").read_text())
    del run["finished_at"]  # what an interrupted profile leaves
    (half / "run.json").write_text(json.dumps(run))
    cases.append(("half-written", half, check, f"{half}: the profile run did not finish (half-written report); "
                  "finish it with `specprof profile … --resume`"))

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not a report")
    cases.append(("not a report", stranger, check, None))

    cases.append(("domain", reports["main"], [*check, "--domain", "nope"],
                  f"--domain nope: not in {reports['main']} (domains: code, prose, ALL)"))
    cases.append(("draft", reports["main"], [*check, "--draft", "nope"], None))
    cases.append(("no checks", reports["main"], [],
                  "nothing to check: pass --min-speedup, --min-alpha or --baseline with --max-alpha-drop"))
    cases.append(("k", reports["main"], [*check, "--k", 9], "--k 9: the report covers k = 1..4"))
    cases.append(("baseline alone", reports["main"], [*check, "--baseline", reports["old"]],
                  "--baseline and --max-alpha-drop go together: pass both or neither"))
    return cases


def test_gate_bad_input_exits_2_with_one_line(reports, cli, tmp_path):
    for name, path, flags, line in _bad_reports(reports, tmp_path):
        r = cli("gate", path, *flags)
        assert r.exit_code == 2, (name, r.output)
        err = r.stderr.strip()
        assert err.count("\n") == 0 and err.startswith("specprof: error: "), (name, err)
        assert "Traceback" not in r.output
        if line is not None:
            assert err == f"specprof: error: {line}", name


def test_recommend_and_compare_refuse_bad_reports_with_one_line(reports, cli, tmp_path):
    for name, path, _, line in _bad_reports(reports, tmp_path):
        if name not in ("missing", "corrupt", "foreign", "future", "half-written", "not a report"):
            continue
        for args in (["recommend", path], ["compare", reports["main"], path]):
            r = cli(*args)
            assert r.exit_code == 2, (name, args[0], r.output)
            err = r.stderr.strip()
            assert err.count("\n") == 0 and err.startswith("specprof: error: "), (name, args[0], err)
            assert "Traceback" not in r.output
            if line is not None:
                assert err == f"specprof: error: {line}", (name, args[0])


def test_gate_refuses_a_baseline_of_another_target(reports, cli, tmp_path):
    other = _copy(reports, tmp_path)
    run = json.loads((other / "run.json").read_text())
    run["target"]["fingerprint"], run["target"]["name"] = "different", "other-model"
    (other / "run.json").write_text(json.dumps(run))
    r = cli("gate", reports["main"], "--baseline", other, "--max-alpha-drop", 0.1)
    assert r.exit_code == 2 and "profile different targets" in r.stderr and "--force" in r.stderr
    forced = cli("gate", reports["main"], "--baseline", other, "--max-alpha-drop", 0.1, "--force")
    assert forced.exit_code == 0, forced.output


# --- compare ---------------------------------------------------------------------------------------


def test_compare_a_report_with_itself_finds_nothing(reports, cli):
    data = as_json(cli("compare", reports["main"], reports["main"], "--json"))
    assert len(data["comparisons"]) == 9  # 3 drafts × (2 domains + ALL)
    for c in data["comparisons"]:
        assert c["paired"] and c["alpha"]["diff"] == 0 and c["speedup"]["diff"] == 0
        assert not c["alpha"]["significant"] and not c["speedup"]["significant"]


def test_compare_a_report_with_itself_prints_no_star_footer(reports, cli):
    r = cli("compare", reports["main"], reports["main"])
    assert r.exit_code == 0, r.output
    assert "*" not in r.stdout and "excludes 0" not in r.stdout


def test_compare_gives_no_star_where_a_side_has_too_few_prompts(cli, monkeypatch):
    # The 0.1.0 fixture holds 4 prompts per domain (8 in ALL). n-gram speedup B − A in alpha is
    # +0.0005 [+0.0005, +0.0005]: the interval excludes 0, but 4 prompts are too few for an interval to
    # mean anything (recommend's rule: 5+), so only ALL gets a star, and the table says why.
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parent / "fixtures" / "release-0.1.0")
    data = as_json(cli("compare", "report-a", "report-b", "--force", "--json"))
    by_domain = {c["domain"]: c for c in data["comparisons"]}
    alpha = by_domain["alpha"]
    assert alpha["speedup"]["diff_lo"] > 0 and not alpha["speedup"]["significant"]
    # Both reports hold the same tokens, only their timings differ, and the n-gram accepts nothing here: every
    # resample's tokens/iter is the point's, so resampled differences priced like the point (its proposal
    # counts: the n-gram mostly proposes nothing) all equal it. Priced as if it always proposed k, they did not.
    for c in data["comparisons"]:
        assert c["speedup"]["diff_lo"] == c["speedup"]["diff"] == c["speedup"]["diff_hi"], c
    assert (alpha["n_prompts_a"], alpha["n_prompts_b"]) == (4, 4)
    assert alpha["caveat"] == ("only 4 prompts in A and 4 in B; a difference needs 5+ prompts on each side to be "
                               "marked *")
    assert by_domain["ALL"]["speedup"]["significant"] and by_domain["ALL"]["caveat"] is None
    r = cli("compare", "report-a", "report-b", "--force")
    lines = r.stdout.splitlines()
    assert "* the 95% bootstrap interval of B − A excludes 0" in lines  # ALL has a star
    assert ("  ngram in alpha, beta: only 4 prompts in A and 4 in B; a difference needs 5+ prompts on each side "
            "to be marked *") in lines
    assert sum(line.rstrip(" │").endswith("*") for line in lines if line.startswith("│")) == 1


def test_compare_new_checkpoint_against_old(reports, cli):
    # old: close (α ≈ 0.6); new: far (α ≈ 0.2). Names differ, one draft each: paired by order, and the
    # prompts are the same, so the bootstrap is paired; α fell significantly everywhere.
    data = as_json(cli("compare", reports["old"], reports["far"], "--json"))
    assert {(c["draft_a"], c["draft_b"]) for c in data["comparisons"]} == {(reports["close"], reports["far_name"])}
    for c in data["comparisons"]:
        assert c["paired"]
        assert c["alpha"]["diff"] < 0 and c["alpha"]["significant"], c
        assert c["alpha"]["diff_lo"] <= c["alpha"]["diff"] <= c["alpha"]["diff_hi"]
    table = cli("compare", reports["old"], reports["far"])
    assert table.exit_code == 0 and "Δα" in table.stdout and "*" in table.stdout


def test_compare_refuses_other_sampling_settings(reports, cli, tmp_path):
    other = _copy(reports, tmp_path)
    run = json.loads((other / "run.json").read_text())
    run["settings"]["temperature"] = 0.7
    (other / "run.json").write_text(json.dumps(run))
    r = cli("compare", reports["main"], other)
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"specprof: error: {reports['main']} and {other} differ in temperature (0.0 vs 0.7); "
                                "pass --force to compare anyway")
    assert cli("compare", reports["main"], other, "--force").exit_code == 0


# --- no torch --------------------------------------------------------------------------------------


def test_decision_commands_never_import_torch_pandas_or_pydantic(reports):
    # pandas takes 0.3 s to import, a third of what reading a million-row report with it costs,
    # Typer's pydantic conversion 0.25 s (issue 14; ui/coercion.py) and pyarrow.compute 0.1 s
    code = f"""
import sys
from typer.testing import CliRunner
from specprof.ui.cli import app
runner = CliRunner()
for args in (["recommend", {str(reports['main'])!r}, "--json"],
             ["recommend", {str(reports['main'])!r}, "--json", "--per-request"],
             ["gate", {str(reports['main'])!r}, "--min-alpha", "0"],
             ["compare", {str(reports['main'])!r}, {str(reports['main'])!r}],
             ["recommend", "--alpha", "0.6", "--cost-ratio", "0.1"]):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
print(sorted(m for m in ("torch", "transformers", "pandas", "pydantic", "pyarrow.compute") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_recommend_k_max_beyond_the_measured_costs(reports, cli):
    # The trace is exact for any k, but the report timed verification only up to k_max + 1 tokens.
    r = cli("recommend", reports["main"], "--k-max", 6)
    assert r.exit_code == 2
    assert r.stderr.strip() == ("specprof: error: --k-max 6: the report's timings cover k ≤ 4; "
                                "pass --cost-ratio to plan for longer drafts")
    data = as_json(cli("recommend", reports["main"], "--k-max", 6, "--cost-ratio", 0.0, "--json"))
    assert all(1 <= rec["best_k"] <= 6 for rec in data["recommendations"])


def test_help_defines_the_names_users_know(cli):
    r = cli("recommend", "--help")
    assert r.exit_code == 0
    for phrase in ("mean acceptance length", "draft acceptance rate", "r_i = P(accepted ≥ i)", "i.i.d. speedup",
                   "lower 95% bound", "what-if"):
        assert phrase in " ".join(r.stdout.split()), phrase
    gate_help = " ".join(cli("gate", "--help").stdout.split())
    assert "exit 0 when every check passes, 1 when any fails, 2 for bad input" in gate_help
