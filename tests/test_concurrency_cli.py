"""Costs at serving batch sizes end to end: `profile --concurrency`, `specprof costs`, `recommend --concurrency
/ --costs`, and the HTML plot. Timings of tiny models are noise; the tests check structure and that the
figures at batch 1 are the report's own, never a timing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0"
BATCH_KEYS = {"batch_size", "best_k", "speedup", "speedup_lo", "speedup_hi", "decision"}


@pytest.fixture(scope="module")
def batch_report(tiny, corpus, tmp_path_factory) -> Path:
    """A greedy profile of `corpus` with drafts close and ngram, k = 1..3, timed at batch sizes 1 and 2."""
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("batch-report") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", "ngram",
            "--k-max", 3, "--max-new-tokens", 16, "--concurrency", "2,1", "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def costs_file(tiny, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("costs") / "machine.json"
    args = ["costs", "--target", tiny["target"], "--draft", "ngram", "--draft", tiny["close"], "--k-max", 4,
            "--concurrency", "1,3", "--context-tokens", 40, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "n=5" in r.stdout and "t_T(n; b) / t_T(1; b)" in r.stdout and "costs written to" in r.stdout
    return out


def test_profile_stores_timings_per_batch_size(batch_report):
    t = json.loads((batch_report / "run.json").read_text())["timings"]
    by = t["by_batch_size"]
    assert [b["batch_size"] for b in by] == [1, 2]
    assert by[0]["target_forward_s"] == t["target_forward_s"]  # batch 1 is the report's own figures
    assert by[0]["draft_step_s"] == t["draft_step_s"]
    for b in by:
        assert len(b["target_forward_s"]) == 4  # n = 1..k_max + 1
        assert set(b["draft_step_s"]) == set(b["draft_catchup_s"]) == set(t["draft_step_s"])


def test_recommend_decides_at_each_measured_batch_size(batch_report, cli):
    r = cli("recommend", batch_report, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["batch_sizes"] == [1, 2]
    assert len(out["recommendations"]) == 6  # 2 drafts × (alpha, beta, ALL)
    for entry in out["recommendations"]:
        rows = entry["by_batch_size"]
        assert [x["batch_size"] for x in rows] == [1, 2]
        assert all(set(x) == BATCH_KEYS for x in rows)
        one = rows[0]
        assert (one["best_k"], one["speedup"], one["speedup_lo"], one["speedup_hi"], one["decision"]) == (
            entry["best_k"], entry["speedup"], entry["speedup_lo"], entry["speedup_hi"], entry["decision"])
        assert {"crossover_batch_size", "crossover_batch_size_lo", "crossover_batch_size_hi"} <= set(entry)
    text = cli("recommend", batch_report, "--concurrency", "2")
    assert text.exit_code == 0, text.output
    assert "serving batch size" in text.stdout and "batch 2" in text.stdout and "batch 1 " not in text.stdout
    assert "ignores steps that mix prefill and decoding" in text.stdout


def test_old_report_is_batch_one_only(cli, tmp_path):
    report = tmp_path / "report-a"
    shutil.copytree(FIXTURE / "report-a", report)
    plain = json.loads(cli("recommend", report, "--json").stdout)
    assert all("by_batch_size" not in e for e in plain["recommendations"]) and "batch_sizes" not in plain
    r = cli("recommend", report, "--concurrency", "1", "--json")
    assert r.exit_code == 0, r.output
    for old, new in zip(plain["recommendations"], json.loads(r.stdout)["recommendations"]):
        assert new["by_batch_size"] == [{"batch_size": 1, "best_k": old["best_k"], "speedup": old["speedup"],
                                         "speedup_lo": old["speedup_lo"], "speedup_hi": old["speedup_hi"],
                                         "decision": old["decision"]}]
        assert new["crossover_batch_size"] is None
    r = cli("recommend", report, "--concurrency", "1,4")
    assert r.exit_code == 2
    assert "--concurrency 4: the costs were measured at batch size 1 only" in r.stderr
    r = cli("recommend", report, "--concurrency", "1", "--cost-ratio", "0.1")
    assert r.exit_code == 2 and "choose one" in r.stderr


def test_costs_file_prices_a_report(costs_file, small_report, cli):
    record = json.loads(costs_file.read_text())
    assert record["kind"] == "costs" and record["settings"]["concurrency"] == [1, 3]
    assert [b["batch_size"] for b in record["timings"]["by_batch_size"]] == [1, 3]
    r = cli("recommend", small_report, "--costs", costs_file, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["costs"] == str(costs_file) and out["batch_sizes"] == [1, 3]
    # Priced with the file's batch-1 times: the cost ratio is the file's t_D / t_T(1), not the report's.
    t = record["timings"]
    by = {(e["draft"], e["domain"]): e for e in out["recommendations"]}
    for draft in t["draft_step_s"]:
        assert by[(draft, "ALL")]["cost_ratio"] == pytest.approx(t["draft_step_s"][draft] / t["target_forward_s"][0])
        assert [x["batch_size"] for x in by[(draft, "ALL")]["by_batch_size"]] == [1, 3]


def test_costs_file_must_match_the_report(tiny, costs_file, small_report, cli, tmp_path):
    only_ngram = tmp_path / "ngram.json"
    r = cli("costs", "--target", tiny["target"], "--draft", "ngram", "--k-max", 4, "--concurrency", "1",
            "--context-tokens", 20, "--out", only_ngram)
    assert r.exit_code == 0, r.output
    r = cli("recommend", small_report, "--costs", only_ngram)
    assert r.exit_code == 2 and f"no costs for draft {str(tiny['close'])!r}" in r.stderr
    assert cli("recommend", small_report, "--costs", only_ngram, "--draft", "ngram").exit_code == 0
    other = tmp_path / "deep.json"
    r = cli("costs", "--target", tiny["deep"], "--draft", "ngram", "--k-max", 4, "--concurrency", "1",
            "--context-tokens", 20, "--out", other)
    assert r.exit_code == 0, r.output
    r = cli("recommend", small_report, "--costs", other)
    assert r.exit_code == 2 and "measured for target" in r.stderr
    r = cli("costs", "--target", tiny["target"], "--draft", "ngram", "--out", other)
    assert r.exit_code == 2 and "exists (pass --overwrite" in r.stderr
    r = cli("recommend", small_report, "--costs", costs_file, "--k-max", 6)
    assert r.exit_code == 2 and "timed draft lengths k ≤ 4, the report is priced at k = 1..6" in r.stderr


def test_html_report_plots_speedup_against_batch_size(batch_report, small_report, cli, tmp_path):
    page = tmp_path / "page.html"
    r = cli("report", batch_report, "--html", page)
    assert r.exit_code == 0, r.output
    html = page.read_text()
    assert 'data-plot="batch-ngram"' in html and "serving batch size b" in html
    r = cli("report", small_report, "--html", page)
    assert r.exit_code == 0, r.output
    assert 'data-plot="batch-' not in page.read_text()  # batch 1 only: no such plot


def test_each_batch_size_times_passes_over_b_sequences(tiny):
    import torch

    from specprof.engines.hf import drafts, measure, models

    cpu, f32 = torch.device("cpu"), torch.float32
    target = models.load_model(str(tiny["target"]), cpu, f32)
    draft = drafts.load_draft(str(tiny["close"]), target, cpu, f32)
    ngram = drafts.load_draft("ngram", target, cpu, f32)
    shapes: dict[str, set] = {"target": set(), "draft": set()}

    def spy(model, key):
        forward = model.forward

        def record(*args, **kwargs):
            cache = kwargs.get("cache") or kwargs.get("past_key_values")
            if cache is not None and cache.get_seq_length() > 0:
                shapes[key].add(tuple(kwargs["input_ids"].shape))
            return forward(*args, **kwargs)

        model.forward = record

    spy(target.model, "target")
    spy(draft.model, "draft")
    try:
        t = measure.measure(target.model, [draft, ngram], list(range(10, 40)), k_max=2, batch_sizes=[3])
    finally:
        del target.model.forward, draft.model.forward
    # Batch 1 and batch 3: the target verifies n = 1..3 tokens per sequence, the draft steps 1 and catches up 2.
    assert shapes["target"] == {(b, n) for b in (1, 3) for n in (1, 2, 3)}
    assert shapes["draft"] == {(b, n) for b in (1, 3) for n in (1, 2)}
    assert [x.batch_size for x in t.by_batch_size] == [1, 3]
    assert t.by_batch_size[0].target_forward_s == t.target_forward_s
    assert all(len(x.target_forward_s) == 3 and set(x.draft_step_s) == {draft.name, "ngram"} for x in t.by_batch_size)
