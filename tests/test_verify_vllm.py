"""`verify --engine vllm` against a fake vLLM HTTP server (tests/fake_vllm.py): fast, no vLLM needed.

The prediction is a hand-built counters object per prompt (core.conventions is tested on its own);
these tests check the plumbing: counters read as differences of /metrics, compared per counter and
per prompt, continuations checked, and every failure one line with exit 2 and nothing measured lost.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_vllm import FakeVllm, counters_for

from specprof.commands import verify_vllm
from specprof.core.records import reportfiles, tokentext
from specprof.engines.vllm import client as vclient
from specprof.engines.vllm import launcher
from specprof.errors import SpecprofError

K = 3


def prompt_counters(i: int, k: int = K) -> tuple[int, int, int, tuple[int, ...]]:
    """What prompt number i adds to vLLM's counters: i+4 drafts of k tokens, i+1 accepted at position 0."""
    return counters_for(i, k)


@pytest.fixture()
def predict_by_index(small_report, monkeypatch):
    """specprof's prediction stand-in: prompt number i predicts `prompt_counters(i, k)`."""
    prompts = reportfiles.load_report(small_report).frame("prompts")
    index = {pid: i for i, pid in enumerate(prompts["prompt_id"])}
    calls = []

    def predict(report, draft, k, *, prompt_ids=None, engine="vllm"):
        calls.append((draft, k, tuple(prompt_ids), engine))
        rows = [prompt_counters(index[p], k) for p in prompt_ids]
        return SimpleNamespace(num_drafts=sum(r[0] for r in rows), num_draft_tokens=sum(r[1] for r in rows),
                               num_accepted_tokens=sum(r[2] for r in rows),
                               num_accepted_tokens_per_pos=tuple(sum(r[3][i] for r in rows) for i in range(k)))

    monkeypatch.setattr(verify_vllm, "default_predict", lambda: predict)
    return calls


@pytest.fixture()
def served(small_report, predict_by_index):
    """A fake server that serves small_report's target exactly as the report says, and a matching prediction."""
    report = reportfiles.load_report(small_report)
    prompts = report.frame("prompts")
    draft = report.run["drafts"][0]["name"]
    continuations = verify_vllm.report_continuations(report.frame("tokens").query("draft == @draft"))
    ids = {pid: tuple(int(t) for t in toks) for pid, toks in zip(prompts["prompt_id"], prompts["prompt_tokens"])}
    index = {pid: i for i, pid in enumerate(prompts["prompt_id"])}
    detok = tokentext.load(report.run)
    fake = FakeVllm(detok.decode, {ids[p]: continuations[p] for p in ids},
                    {ids[p]: prompt_counters(index[p]) for p in ids}, k=K)
    url = fake.start()
    yield SimpleNamespace(fake=fake, url=url, report=small_report, draft=draft, ids=ids, index=index,
                          continuations=continuations, calls=predict_by_index)
    fake.stop()


@pytest.fixture()
def no_conventions_needed(monkeypatch):
    """These fail before anything is predicted."""
    monkeypatch.setattr(verify_vllm, "default_predict", lambda: None)


def verify(cli, served, *extra):
    return cli("verify", served.report, "--engine", "vllm", "--url", served.url, "--json", *extra)


def test_parse_metrics_sums_engines_and_reads_positions():
    text = "\n".join([
        "# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.",
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 12.0',
        'vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 3.0',  # a second engine: summed
        'vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.79e9',  # not a counter we read
        'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 45.0',
        'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 20.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 11.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 4.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 5.0',
    ])
    c = vclient.parse_metrics(text)
    assert c == vclient.SpecCounters(15, 45, 20, (11, 5, 4))  # positions in order, whatever the line order
    assert c.k == 3
    assert c.minus(vclient.SpecCounters(5, 15, 10, (6, 3, 1))) == vclient.SpecCounters(10, 30, 10, (5, 2, 3))
    assert vclient.parse_metrics('vllm:num_requests_running{engine="0"} 0.0\n') is None  # no speculation
    with pytest.raises(SpecprofError, match="vllm:spec_decode_num_drafts_total.*0.32.0"):
        vclient.parse_metrics('vllm:spec_decode_num_accepted_tokens_total{engine="0"} 3.0\n')


def test_speculative_config_per_draft_kind():
    assert launcher.speculative_config("vllm-ngram", 3) == {
        "method": "ngram", "prompt_lookup_min": 5, "prompt_lookup_max": 5, "num_speculative_tokens": 3}  # vLLM's
    assert launcher.speculative_config("vllm-ngram:1:3", 2) == {
        "method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 3, "num_speculative_tokens": 2}
    assert launcher.speculative_config("early-exit:26", 4, "/d/ee26") == {
        "method": "draft_model", "model": "/d/ee26", "num_speculative_tokens": 4}
    assert launcher.speculative_config("/models/small", 1) == {
        "method": "draft_model", "model": "/models/small", "num_speculative_tokens": 1}
    with pytest.raises(SpecprofError, match="--draft-model-dir"):
        launcher.speculative_config("early-exit:26", 4)
    assert launcher.speculative_config("vllm-ngram:2", 1)["prompt_lookup_min"] == 2  # MIN = MAX = 2
    with pytest.raises(SpecprofError, match="vllm-ngram"):
        launcher.speculative_config("ngram:3", 4)
    with pytest.raises(SpecprofError, match="not vLLM's n-gram proposer"):
        launcher.speculative_config("prompt-lookup:2", 4)


def test_every_counter_equal(cli, served):
    r = verify(cli, served)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    n = len(served.ids)
    drafts = sum(prompt_counters(i)[0] for i in range(n))  # 4+5+…+11 = 60 for 8 prompts
    assert drafts == 60
    rows = {c["counter"]: (c["predicted"], c["engine"]) for c in out["counters"]}
    assert rows == {"num_drafts": (60, 60), "num_draft_tokens": (180, 180), "num_accepted_tokens": (36, 36),
                    "num_accepted_tokens_per_pos[0]": (36, 36), "num_accepted_tokens_per_pos[1]": (0, 0),
                    "num_accepted_tokens_per_pos[2]": (0, 0)}
    assert out["prompts_done"] == {"3": n} and out["mismatch"] is False and out["error"] is None
    assert out["continuations"] == [] and out["configs"] == {"3": None}
    # the prompts went as token ids, greedy, the report's max_new_tokens, every sampling knob pinned
    body = served.fake.requests[-1]
    assert body["prompt"] == list(served.ids[list(served.ids)[-1]]) and body["max_tokens"] == 24
    assert (body["temperature"], body["top_k"], body["repetition_penalty"], body["return_token_ids"]) == (0.0, 0, 1.0,
                                                                                                           True)
    assert served.calls[0] == (served.draft, 3, tuple(served.ids), "vllm")


def test_table_output_shows_both_sides(cli, served):
    r = cli("verify", served.report, "--engine", "vllm", "--url", served.url)
    assert r.exit_code == 0, r.output
    assert "num_accepted_tokens_per_pos[0]" in r.stdout and "equal" in r.stdout
    assert "every counter and continuation equal" in r.stdout


def test_counter_mismatch_names_the_prompt(cli, served):
    """One prompt's requests add one draft more on the server: the totals differ by 1, and the per-prompt
    reads say which prompt (its continuation is the report's, so the draft proposed something else)."""
    pid = list(served.ids)[2]
    d, t, a, pos = prompt_counters(2)
    served.fake.counters[served.ids[pid]] = (d + 1, t + 3, a, pos)
    r = verify(cli, served)
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    rows = {c["counter"]: c for c in out["counters"]}
    assert (rows["num_drafts"]["predicted"], rows["num_drafts"]["engine"]) == (60, 61)
    assert rows["num_draft_tokens"]["equal"] is False and rows["num_accepted_tokens"]["equal"] is True
    [m] = out["prompt_mismatches"]
    assert m["prompt_id"] == pid and m["predicted"]["num_drafts"] == 6 and m["engine"]["num_drafts"] == 7
    assert m["verdict"] in ("near-tie", "unexplained")  # the tiny draft's own margins decide


def test_diverged_continuation_with_the_targets_margin(cli, served):
    pid = max(served.ids, key=lambda p: len(served.continuations[p]))  # a continuation longer than 6 tokens
    prompt = served.ids[pid]
    y = list(served.continuations[pid])
    other = (y[5] + 1) % 50
    served.fake.continuations[prompt] = y[:5] + [other] + y[6:]
    served.fake.logprobs[prompt + tuple(y[:5])] = {other: -0.6931, y[5]: -0.6935, 7: -4.0}
    r = verify(cli, served)
    assert r.exit_code == 1, r.output
    [d] = json.loads(r.stdout)["continuations"]
    assert (d["prompt_id"], d["position"], d["report_token"], d["engine_token"]) == (pid, 5, y[5], other)
    assert d["margin"] == pytest.approx(0.0004) and d["gap"] == pytest.approx(0.0004)
    assert d["verdict"] == "near-tie"  # 0.0004 ≤ 1e-3 at float32
    served.fake.logprobs[prompt + tuple(y[:5])] = {other: -0.1, y[5]: -2.5}
    r = cli("verify", served.report, "--engine", "vllm", "--url", served.url)
    assert r.exit_code == 1
    assert f"prompt {pid}: continuation differs at position 5" in r.stdout and "the target diverged" in r.stdout


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specprof: error: "), r.stderr
    return lines[0]


def test_unreachable_url(cli, small_report, no_conventions_needed):
    line = one_line_error(cli("verify", small_report, "--engine", "vllm", "--url", "http://127.0.0.1:9"))
    assert "--url http://127.0.0.1:9: unreachable" in line


def test_server_of_another_model(cli, served):
    report = reportfiles.load_report(served.report)
    detok = tokentext.load(report.run)
    first = served.ids[list(served.ids)[0]]
    bad = sorted(set(first))[1]
    served.fake.decode = lambda ids: "".join("Ω" if i == bad else detok.decode([i]) for i in ids)
    line = one_line_error(verify(cli, served))
    assert f"serves another model than the report's target (/models/target: token id {bad} is 'Ω' there" in line


def test_server_without_speculation(cli, served):
    served.fake.spec = False
    line = one_line_error(verify(cli, served))
    assert "runs without speculative decoding" in line


def test_server_at_another_k(cli, served):
    served.fake.k = 2
    line = one_line_error(verify(cli, served, "--k", "3"))
    assert "the server runs speculative decoding at k = 2 (num_speculative_tokens), not --k 3" in line


def test_vllm_too_old(cli, served):
    served.fake.old = True
    line = one_line_error(verify(cli, served))
    assert "not vllm:spec_decode_num_drafts_total" in line and "vLLM 0.32.0" in line


@pytest.mark.parametrize("how", ["die_after", "hang_after"])
def test_server_lost_mid_run_keeps_what_was_compared(cli, served, monkeypatch, how):
    monkeypatch.setattr(verify_vllm, "REQUEST_TIMEOUT_S", 0.5)
    setattr(served.fake, how, 3)
    r = verify(cli, served)
    line = one_line_error(r)
    if how == "die_after":
        assert "the server stopped answering (Remote end closed connection without response) at /v1/completions" in line
    else:
        assert "no answer to /v1/completions within 0.5 s" in line
    assert "after 3 of 8 prompts" in line
    out = json.loads(r.stdout)  # printed before the error: the three prompts done were compared
    assert out["prompts_done"] == {"3": 3}
    rows = {c["counter"]: (c["predicted"], c["engine"]) for c in out["counters"]}
    assert rows["num_drafts"] == (4 + 5 + 6, 4 + 5 + 6)


def test_launch_with_a_python_without_vllm(cli, small_report, no_conventions_needed):
    line = one_line_error(cli("verify", small_report, "--engine", "vllm", "--launch", "--vllm-python", sys.executable,
                              "--k", "2"))
    assert f"--vllm-python {sys.executable}: no vLLM there" in line


def test_flags_that_go_together(cli, small_report):
    line = one_line_error(cli("verify", small_report, "--engine", "vllm"))
    assert "pass either --url URL (a running server) or --launch --vllm-python PY" in line
    assert "go with --engine vllm" in one_line_error(cli("verify", small_report, "--url", "http://x"))


FAKE_API_SERVER = """
import argparse, json, os, subprocess, sys
from fake_vllm import serve_report

parser = argparse.ArgumentParser()
parser.add_argument("--speculative-config")
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # as vLLM's engine-core process
with open(os.environ["FAKE_VLLM_LOG"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "child": child.pid, "pid": os.getpid()}) + "\\n")
serve_report(os.environ["FAKE_VLLM_REPORT"], json.loads(args.speculative_config)["num_speculative_tokens"], args.port)
"""


def fake_vllm_package(tmp_path: Path, api_server: str, monkeypatch) -> None:
    """A `vllm` package on PYTHONPATH whose vllm.entrypoints.openai.api_server runs `api_server`."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for d in (package, package.parent, package.parent.parent):
        (d / "__init__.py").write_text("")
    (package / "api_server.py").write_text(api_server)
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fake"), here, os.environ.get("PYTHONPATH", "")]))


def test_launch_of_a_server_that_exits_at_start(cli, small_report, predict_by_index, tmp_path, monkeypatch):
    fake_vllm_package(tmp_path, "import sys\nprint('ValueError: num_speculative_tokens must be > 0')\nsys.exit(1)\n",
                      monkeypatch)
    r = cli("verify", small_report, "--engine", "vllm", "--launch", "--vllm-python", sys.executable, "--k", "2")
    line = one_line_error(r)
    assert "vLLM server exited with code 1 (ValueError: num_speculative_tokens must be > 0); full log: " in line
    log = Path(line.rsplit("full log: ", 1)[1])
    assert "num_speculative_tokens must be > 0" in log.read_text()  # kept for the user to read
    log.unlink()


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (it runs no more)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


def test_launch_starts_one_server_per_k_and_stops_its_process_group(cli, small_report, predict_by_index, tmp_path,
                                                                    monkeypatch):
    """A stand-in `vllm` package whose api_server serves the report: verify launches it per k with the draft's
    config, compares, and leaves no process behind (the server and the child it started)."""
    fake_vllm_package(tmp_path, FAKE_API_SERVER, monkeypatch)
    log = tmp_path / "servers.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.setenv("FAKE_VLLM_REPORT", str(small_report))
    report = reportfiles.load_report(small_report)
    draft = report.run["drafts"][0]["name"]
    r = cli("verify", small_report, "--engine", "vllm", "--launch", "--vllm-python", sys.executable, "--k", "1",
            "--k", "2", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["configs"] == {str(k): {"method": "draft_model", "model": draft, "num_speculative_tokens": k}
                              for k in (1, 2)}
    assert all(c["equal"] for c in out["counters"]) and out["prompts_done"] == {"1": 8, "2": 8}
    servers = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(servers) == 2
    argv = servers[0]["argv"]
    assert argv[argv.index("--model") + 1] == report.run["target"]["source"]
    assert {"--enforce-eager", "--dtype", "float32"} <= set(argv)
    assert all(gone(s["pid"]) and gone(s["child"]) for s in servers)


@pytest.fixture(scope="module")
def sampled_report(tiny, corpus, tmp_path_factory):
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("sampled") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--k-max", 3,
            "--max-new-tokens", 12, "--temperature", 0.7, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_sampled_report_shows_the_engine_beside_the_alpha_interval(cli, sampled_report, monkeypatch):
    """T > 0: no counters to predict (conventions are exact at T = 0 only) and no token comparison; an engine that
    accepted nothing is "far outside" the report's α range, a warning (exit 0)."""
    report = reportfiles.load_report(sampled_report)
    prompts = report.frame("prompts")
    ids = [tuple(int(t) for t in toks) for toks in prompts["prompt_tokens"]]
    fake = FakeVllm(tokentext.load(report.run).decode, {p: [5, 6, 7] for p in ids},
                    {p: (10, 30, 0, (0, 0, 0)) for p in ids}, k=3)
    monkeypatch.setattr(verify_vllm, "default_predict", lambda: lambda *a, **kw: pytest.fail("predicted at T > 0"))
    url = fake.start()
    try:
        r = cli("verify", sampled_report, "--engine", "vllm", "--url", url, "--json")
    finally:
        fake.stop()
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    [row] = out["sampled"]
    summary = report.frame("summary").query("domain == 'ALL' and k == 3")
    assert row["alpha"] == pytest.approx(float(summary["alpha"].iloc[0]))
    assert (row["engine_first_position_rate"], row["engine_draft_acceptance_rate"]) == (0.0, 0.0)
    assert row["engine_mean_acceptance_length"] == 1.0
    assert row["flag"].startswith("far outside the report's α range")
    assert out["counters"] == [] and out["continuations"] == [] and out["mismatch"] is False
    assert fake.requests[-1]["temperature"] == 0.7 and fake.requests[-1]["seed"] == 0


def test_limit_sends_the_first_prompts_of_each_domain(cli, served):
    r = verify(cli, served, "--limit", "1")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    domains = reportfiles.load_report(served.report).frame("prompts").set_index("prompt_id")["domain"]
    first = [next(p for p in served.ids if domains[p] == d) for d in ("alpha", "beta")]  # in the report's order
    first.sort(key=list(served.ids).index)
    assert out["prompts_done"] == {"3": 2}
    assert [b["prompt"] for b in served.fake.requests if "max_tokens" in b] == [list(served.ids[p]) for p in first]
    drafts = {c["counter"]: c["engine"] for c in out["counters"]}["num_drafts"]
    assert drafts == sum(prompt_counters(served.index[p])[0] for p in first)


# --- request by request (issue 24): per-step drafted / accepted arrays ------------------------------------------


def simulated_steps(served, k: int = K) -> dict[str, list[tuple[int, int, int]]]:
    from specprof.core.simulation import conventions

    rec = conventions.load_records(served.report, served.draft)
    return {pid: conventions.prompt_steps(rec, k, pid) for pid in served.ids}


def test_per_request_steps_equal_the_simulated_steps(cli, served):
    steps = simulated_steps(served)
    assert any(len(s) > 1 for s in steps.values())
    served.fake.steps = {served.ids[p]: ([d for _, d, _ in s], [a for _, _, a in s]) for p, s in steps.items()}
    r = verify(cli, served)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["per_request_steps"] == {"compared": {"3": len(served.ids)}, "first_differences": []}
    assert out["notes"] == []


def test_first_differing_step_is_named_with_the_targets_margin(cli, served):
    steps = simulated_steps(served)
    pid = max(steps, key=lambda p: len(steps[p]))
    served.fake.steps = {served.ids[p]: ([d for _, d, _ in s], [a for _, _, a in s]) for p, s in steps.items()}
    start, drafted, accepted = steps[pid][1]
    changed = accepted - 1 if accepted else 1  # vLLM accepted one token fewer (or one more) at step 1
    served.fake.steps[served.ids[pid]][1][1] = changed
    y = served.continuations[pid]
    disputed = start + min(accepted, changed)
    served.fake.logprobs[served.ids[pid] + tuple(y[:disputed])] = {y[disputed]: -0.1, 7: -2.6}
    r = verify(cli, served)
    assert r.exit_code == 1, r.output
    [d] = json.loads(r.stdout)["per_request_steps"]["first_differences"]
    assert (d["prompt_id"], d["step"], d["start"]) == (pid, 1, start)
    assert d["predicted"] == [drafted, accepted] and d["engine"] == [drafted, changed]
    assert d["target_margin"] == pytest.approx(2.5)
    text = cli("verify", served.report, "--engine", "vllm", "--url", served.url)
    assert f"prompt {pid}: per-request steps differ first at step 1" in text.stdout


def test_server_without_per_request_metrics_falls_back_to_totals(cli, served):
    r = verify(cli, served)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["notes"] == [verify_vllm.verify_steps.NO_STEPS]
    assert out["per_request_steps"]["compared"] == {}
