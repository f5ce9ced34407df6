"""`verify --engine vllm --concurrency` against two fake vLLM servers (tests/fake_vllm.py): the bookkeeping, not
the timing. One fake runs speculation (its /metrics has the spec-decode counters), the other does not; both answer
every prompt with the report's continuation after a short delay, so B concurrent streams overlap there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_vllm import FakeVllm, counters_for
from test_verify_vllm import fake_vllm_package, gone

from specprof.commands import verify_concurrency as vc
from specprof.commands import verify_vllm
from specprof.core.pricing import costmodel
from specprof.core.records import reportfiles, tokentext

K = 3
ROW_KEYS = {"batch_size", "k", "predicted_speedup", "predicted_speedup_lo", "predicted_speedup_hi", "best_k",
            "best_k_speedup", "decision", "baseline_tokens_per_s", "speculative_tokens_per_s", "measured_speedup",
            "requests", "baseline_output_tokens", "speculative_output_tokens", "baseline_wall_s", "speculative_wall_s",
            "baseline_max_in_flight", "speculative_max_in_flight", "outputs_differ", "engine_mean_acceptance_length",
            "engine_counters"}


@pytest.fixture(scope="module")
def batch_report(tiny, corpus, tmp_path_factory) -> Path:
    """A greedy profile of `corpus` (8 prompts) with the close model draft, k = 1..3, timed at batch sizes 1, 2."""
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("concurrency-report") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--k-max", K,
            "--max-new-tokens", 12, "--concurrency", "1,2", "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture()
def servers(batch_report):
    """A speculative fake (k = 3, prompt number i adds counters_for(i, 3)) and a baseline fake without speculation."""
    report = reportfiles.load_report(batch_report)
    prompts = report.frame("prompts")
    draft = report.run["drafts"][0]["name"]
    continuations = verify_vllm.report_continuations(report.frame("tokens").query("draft == @draft"))
    ids = [tuple(int(t) for t in toks) for toks in prompts["prompt_tokens"]]
    pids = [str(p) for p in prompts["prompt_id"]]
    decode = tokentext.load(report.run).decode
    made = []
    for spec in (True, False):
        fake = FakeVllm(decode, {p: continuations[pid] for p, pid in zip(ids, pids)},
                        {p: counters_for(i, K) for i, p in enumerate(ids)}, k=K, spec=spec, delay_s=0.05)
        made.append((fake, fake.start()))
    yield SimpleNamespace(spec=made[0][0], spec_url=made[0][1], base=made[1][0], base_url=made[1][1],
                          report=batch_report, continuations=[continuations[pid] for pid in pids], draft=draft)
    for fake, _ in made:
        fake.stop()


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specprof: error: "), r.stderr
    return lines[0]


def test_stream_prompts_repeat_the_prompts_and_start_each_stream_elsewhere():
    # Request j of stream s is prompt (j·B + s) mod n; j = 0 is the warm-up.
    assert vc.stream_prompts(3, 2, 2) == [[0, 2, 1],  # stream 0: 0, then 2, then 4 mod 3 = 1
                                          [1, 0, 2]]  # stream 1: 1, then 3 mod 3 = 0, then 5 mod 3 = 2
    assert vc.stream_prompts(8, 1, 2) == [[0, 1, 2]]
    assert vc.stream_prompts(2, 4, 1) == [[0, 0], [1, 1], [0, 0], [1, 1]]  # fewer prompts than streams: repeated


def test_concurrency_measures_both_servers_at_each_batch_size(cli, servers):
    r = cli("verify", servers.report, "--engine", "vllm", "--url", servers.spec_url, "--baseline-url",
            servers.base_url, "--concurrency", "2,1", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["error"] is None and out["k"] == K and out["batch_sizes"] == [1, 2] and out["costs"] == "the report"
    assert out["not_modelled"] == list(vc.NOT_MODELLED) and out["config"] is None
    one, two = out["rows"]
    assert set(one) == set(two) == ROW_KEYS
    # B streams × 2 timed rounds, after a warm-up round: 1·3 + 2·3 = 9 completions on each server
    assert (one["requests"], two["requests"]) == (2, 4)
    assert servers.spec.completions == servers.base.completions == 9
    assert servers.spec.max_in_flight == servers.base.max_in_flight == 2  # the two streams overlapped, never more
    assert (two["baseline_max_in_flight"], two["speculative_max_in_flight"]) == (2, 2)
    assert (one["baseline_max_in_flight"], one["speculative_max_in_flight"]) == (1, 1)
    # timed requests at B = 2: stream 0 sends prompts 2, 4; stream 1 sends 3, 5 (prompt 0 and 1 were the warm-up)
    y = servers.continuations
    assert two["baseline_output_tokens"] == two["speculative_output_tokens"] == sum(len(y[i]) for i in (2, 3, 4, 5))
    assert one["speculative_output_tokens"] == len(y[1]) + len(y[2])  # B = 1: prompt 0 warms up, then 1 and 2
    assert one["outputs_differ"] == two["outputs_differ"] == 0
    # vLLM's counters over the timed requests only: prompt i adds i + 4 drafts and i + 1 accepted tokens
    assert two["engine_counters"]["num_drafts"] == 6 + 7 + 8 + 9
    assert two["engine_mean_acceptance_length"] == pytest.approx(1 + (3 + 4 + 5 + 6) / 30)  # 1.6
    assert one["engine_mean_acceptance_length"] == pytest.approx(1 + (2 + 3) / (5 + 6))
    for row in (one, two):
        assert row["measured_speedup"] == pytest.approx(row["speculative_tokens_per_s"] / row["baseline_tokens_per_s"])
        assert row["baseline_tokens_per_s"] == pytest.approx(row["baseline_output_tokens"] / row["baseline_wall_s"])
        assert row["predicted_speedup_lo"] <= row["predicted_speedup"] <= row["predicted_speedup_hi"]


def test_prediction_is_the_reports_speedup_at_the_servers_k_priced_per_batch_size(cli, servers):
    r = cli("verify", servers.report, "--engine", "vllm", "--url", servers.spec_url, "--baseline-url",
            servers.base_url, "--concurrency", "1,2", "--json")
    one, two = json.loads(r.stdout)["rows"]
    report = reportfiles.load_report(servers.report)
    summary = report.frame("summary").query("domain == 'ALL' and k == @K").iloc[0]
    assert one["predicted_speedup"] == pytest.approx(float(summary["speedup"]))  # batch 1: the report's own figure
    # batch 2 by hand: S = E(3)·t_T(1; 2) / (3·t_D(2) + t_T(4; 2) + f_3·t_C(2)), f_3 = blocks that accepted all 3
    t2 = report.run["timings"]["by_batch_size"][1]
    assert t2["batch_size"] == 2
    blocks = report.frame("blocks").query("domain == 'ALL' and k == @K")
    f3 = float(blocks.query("accepted == 3")["iterations"].sum() / blocks["iterations"].sum())
    by_hand = costmodel.speedup_at_batch(float(summary["tokens_per_iter"]), K, t2["draft_step_s"][servers.draft],
                                         t2["target_forward_s"], f3, t2["draft_catchup_s"][servers.draft])
    assert two["predicted_speedup"] == pytest.approx(by_hand)
    # the best k at each batch size is recommend --concurrency's
    rec = json.loads(cli("recommend", servers.report, "--concurrency", "1,2", "--domain", "ALL", "--json").stdout)
    by_b = rec["recommendations"][0]["by_batch_size"]
    assert [(x["best_k"], x["decision"]) for x in by_b] == [(one["best_k"], one["decision"]),
                                                            (two["best_k"], two["decision"])]
    assert [x["speedup"] for x in by_b] == pytest.approx([one["best_k_speedup"], two["best_k_speedup"]])


def test_table_prints_predicted_against_measured_and_what_is_not_modelled(cli, servers):
    r = cli("verify", servers.report, "--engine", "vllm", "--url", servers.spec_url, "--baseline-url",
            servers.base_url, "--concurrency", "1")
    assert r.exit_code == 0, r.output
    assert "predicted [95%]" in r.stdout and "measured" in r.stdout and "tokens/s no spec" in r.stdout
    assert "note: the prediction does not model: prefill" in r.stdout


def test_transformers_engine_refuses_concurrency(cli, batch_report):
    line = one_line_error(cli("verify", batch_report, "--concurrency", "1,4"))
    assert line == f"specprof: error: {vc.NO_BATCHED_LOOP}"
    assert "no batched speculative loop" in line


def test_url_needs_a_baseline(cli, servers):
    line = one_line_error(cli("verify", servers.report, "--engine", "vllm", "--url", servers.spec_url,
                              "--concurrency", "1"))
    assert "a measured speedup needs a baseline; pass --baseline-url URL of the same target served without " \
           "--speculative-config" in line
    assert servers.spec.completions == 0


def test_baseline_that_speculates_is_refused(cli, servers):
    line = one_line_error(cli("verify", servers.report, "--engine", "vllm", "--url", servers.spec_url,
                              "--baseline-url", servers.spec_url, "--concurrency", "1"))
    assert f"--baseline-url {servers.spec_url}: the server runs speculative decoding" in line


def test_unmeasured_batch_size_is_refused_before_any_request(cli, servers):
    line = one_line_error(cli("verify", servers.report, "--engine", "vllm", "--url", servers.spec_url,
                              "--baseline-url", servers.base_url, "--concurrency", "1,4"))
    assert "--concurrency 4: the costs were measured at batch size 1, 2 only" in line
    assert servers.spec.completions == servers.base.completions == 0


def test_server_lost_keeps_the_batch_sizes_measured(cli, servers, monkeypatch):
    monkeypatch.setattr(verify_vllm, "REQUEST_TIMEOUT_S", 0.5)
    servers.spec.die_after = 3  # B = 1 takes 3 completions (warm-up + 2), B = 2 fails
    r = cli("verify", servers.report, "--engine", "vllm", "--url", servers.spec_url, "--baseline-url",
            servers.base_url, "--concurrency", "1,2", "--json")
    line = one_line_error(r)
    assert "(speculative server, batch size 2)" in line
    out = json.loads(r.stdout)
    assert [row["batch_size"] for row in out["rows"]] == [1] and out["error"] == line.split("error: ", 1)[1]


FAKE_API_SERVER = """
import argparse, json, os, sys
from fake_vllm import serve_report

parser = argparse.ArgumentParser()
parser.add_argument("--speculative-config")
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
with open(os.environ["FAKE_VLLM_LOG"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid()}) + "\\n")
config = json.loads(args.speculative_config) if args.speculative_config else None
serve_report(os.environ["FAKE_VLLM_REPORT"], config["num_speculative_tokens"] if config else 3, args.port,
             spec=config is not None)
"""


def test_launch_starts_the_baseline_then_the_speculative_server(cli, batch_report, tmp_path, monkeypatch):
    fake_vllm_package(tmp_path, FAKE_API_SERVER, monkeypatch)
    log = tmp_path / "servers.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.setenv("FAKE_VLLM_REPORT", str(batch_report))
    r = cli("verify", batch_report, "--engine", "vllm", "--launch", "--vllm-python", sys.executable, "--k", "2",
            "--concurrency", "1,2", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    draft = reportfiles.load_report(batch_report).run["drafts"][0]["name"]
    assert out["config"] == {"method": "draft_model", "model": draft, "num_speculative_tokens": 2} and out["k"] == 2
    assert [row["batch_size"] for row in out["rows"]] == [1, 2]
    base, spec = [json.loads(line) for line in log.read_text().splitlines()]
    assert "--speculative-config" not in base["argv"]  # the baseline runs the target alone
    assert json.loads(spec["argv"][spec["argv"].index("--speculative-config") + 1])["num_speculative_tokens"] == 2
    assert gone(base["pid"]) and gone(spec["pid"])
