"""`recommend --engine vllm` / `--emit vllm` on a sampled report, and the one-line broken-build note."""

from __future__ import annotations

import json

import pytest

from specprof.core.simulation import sampled_conventions as sc


@pytest.fixture(scope="module")
def sampled_report(tiny, corpus, tmp_path_factory):
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("sampled") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", "vllm-ngram:1:2",
            "--k-max", 3, "--max-new-tokens", 16, "--temperature", 0.7, "--top-p", 0.9, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("mode", ["greedy", "probabilistic"])
def test_recommend_engine_vllm_gives_the_expected_counters(cli, tiny, sampled_report, mode):
    r = cli("recommend", sampled_report, "--engine", "vllm", "--k", 2, "--draft-sampling", mode, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    entry = next(e for e in out["recommendations"] if e["draft"] == str(tiny["close"]) and e["domain"] == "ALL")
    table, _ = sc.prompt_expected(sc.load_sampled(sampled_report, str(tiny["close"]), mode), 2)
    total = table.sum(0)
    assert entry["draft_sample_method"] == mode
    assert entry["expected_engine_counters"]["num_drafts"] == pytest.approx(total[0])
    assert entry["expected_engine_counters"]["num_accepted_tokens_per_pos"] == pytest.approx(list(total[3:]))
    for (point, lo, hi), n in zip(entry["per_position_acceptance_rate"], total[3:]):
        assert point == pytest.approx(n / total[0]) and lo <= point <= hi
    mal = entry["mean_acceptance_length"]
    assert mal[0] == pytest.approx(1 + total[2] / total[0]) and mal[1] <= mal[0] <= mal[2]


def test_modes_differ_and_emit_names_the_better_one(cli, tiny, sampled_report):
    greedy, prob = (json.loads(cli("recommend", sampled_report, "--engine", "vllm", "--k", 2, "--draft-sampling", m,
                                   "--json").stdout) for m in ("greedy", "probabilistic"))
    pick = [next(e["mean_acceptance_length"][0] for e in out["recommendations"]
                 if e["draft"] == str(tiny["close"]) and e["domain"] == "ALL") for out in (greedy, prob)]
    assert pick[0] != pick[1]
    r = cli("recommend", sampled_report, "--emit", "vllm", "--draft", tiny["close"], "--k", 2)
    assert r.exit_code == 0, r.output
    config = json.loads(r.stdout.strip().splitlines()[-1])
    assert config["draft_sample_method"] == ("greedy" if pick[0] > pick[1] else "probabilistic")
    assert "pays more on this traffic" in r.stderr


def test_model_free_draft_ignores_the_mode(cli, sampled_report):
    outs = [json.loads(cli("recommend", sampled_report, "--engine", "vllm", "--k", 2, "--draft", "vllm-ngram:1:2",
                           "--draft-sampling", m, "--json").stdout)["recommendations"] for m in sc.DRAFT_SAMPLING]
    assert [e["expected_engine_counters"] for e in outs[0]] == [e["expected_engine_counters"] for e in outs[1]]
    assert all(e["draft_sample_method"] == "greedy" for e in outs[1])


def test_draft_sampling_on_a_greedy_report_is_refused(cli, small_report):
    r = cli("recommend", small_report, "--engine", "vllm", "--draft-sampling", "greedy")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().endswith("--draft-sampling goes with --engine vllm or --emit vllm on a sampled report "
                                     "(T > 0)")
    r = cli("recommend", small_report, "--emit", "vllm", "--draft-sampling", "probabilistic")
    assert r.exit_code == 2 and "--draft-sampling goes with" in r.stderr, r.output


def test_broken_cpu_build_is_one_line_naming_the_function():
    from specprof.commands.verify_sampled import check_build
    from specprof.engines.vllm import cpu_probe

    class Result:
        vllm_version = "0.32.0"
        notes: list = []

    check_build(Result, None, 0.7)
    check_build(Result, None, 0.7)
    assert len(Result.notes) == 1
    assert "cpu_triton_utils.py::_expand_kernel_impl" in Result.notes[0] and "not specprof's error" in Result.notes[0]
    assert cpu_probe.broken_note("0.33.0", None) is None and cpu_probe.broken_note("0.33.0", False) is None


def test_python_api_gives_what_the_cli_prints(cli, tiny, sampled_report):
    from specprof import emit, load_report, recommend
    from specprof.core.vocabulary import PROBABILISTIC, VLLM

    result = recommend(load_report(sampled_report), engine=VLLM, k=2, draft_sampling=PROBABILISTIC)
    assert result.draft_sampling == PROBABILISTIC and all(e.sampled is not None for e in result.entries)
    printed = json.loads(cli("recommend", sampled_report, "--engine", "vllm", "--k", 2, "--draft-sampling",
                             "probabilistic", "--json").stdout)
    assert json.loads(json.dumps(result.to_json())) == printed
    e = emit(load_report(sampled_report), VLLM, draft=str(tiny["close"]), k=2, draft_sampling=PROBABILISTIC)
    assert e.draft_sample_method == PROBABILISTIC and json.loads(e.text)["draft_sample_method"] == PROBABILISTIC
    r = cli("recommend", sampled_report, "--emit", "vllm", "--draft", tiny["close"], "--k", 2, "--draft-sampling",
            "probabilistic")
    assert r.stdout.strip().splitlines()[-1] == e.text and any("pays more on this traffic" in n for n in e.notes)
