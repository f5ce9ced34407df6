"""`profile --engine vllm` against fake vLLM servers (tests/fake_vllm.py) backed by the tiny models: no vLLM needed.

The fakes generate greedily and answer prompt_logprobs from the tiny target and the tiny `close` draft,
in vLLM 0.32.0's response shapes, so the vLLM engine's report must hold the transformers engine's records
(small_report: the same corpus, models and settings) token for token. Then the requests' shapes, the
spreading over several --url servers, and each failure as one line with exit 2.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fake_vllm import FakeVllm, model_logprobs

from specprof.core.records import reportfiles, tokentext
from specprof.engines.vllm import client as vclient

KEYS = ["draft", "prompt_id", "position"]
EXACT = ["target_token", "draft_token", "match", "accept_prob"]


@pytest.fixture(scope="module")
def servers(tiny):
    """Two target servers and one draft server (the tiny `close` model)."""
    decode = tokentext.load({"target": {"source": str(tiny["target"])}}).decode
    target = model_logprobs(tiny["target"])
    fakes = [FakeVllm(decode, {}, {}, model=target), FakeVllm(decode, {}, {}, model=target),
             FakeVllm(decode, {}, {}, model=model_logprobs(tiny["close"]))]
    urls = [f.start() for f in fakes]
    yield SimpleNamespace(targets=fakes[:2], draft=fakes[2], urls=urls[:2], draft_url=urls[2], decode=decode)
    for f in fakes:
        f.stop()


def vllm_profile(cli, tiny, corpus, servers, out: Path, *extra, urls=None):
    args = ["profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--draft", tiny["close"],
            "--draft", "ngram", "--draft-url", f"{tiny['close']}={servers.draft_url}", "--k-max", 4,
            "--max-new-tokens", 24, "--out", out]
    for url in urls or servers.urls:
        args += ["--url", url]
    return cli(*args, *extra)


@pytest.fixture(scope="module")
def vllm_report(tiny, corpus, servers, tmp_path_factory):
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    for f in [*servers.targets, servers.draft]:
        f.requests.clear()
    out = tmp_path_factory.mktemp("vllm-engine") / "report"
    r = vllm_profile(lambda *a: CliRunner().invoke(app, [str(x) for x in a], catch_exceptions=False),
                     tiny, corpus, servers, out)
    assert r.exit_code == 0, r.output
    requests = SimpleNamespace(targets=[list(f.requests) for f in servers.targets], draft=list(servers.draft.requests))
    return SimpleNamespace(out=out, output=r.output, requests=requests)


def frame(report: Path, name: str) -> pd.DataFrame:
    return reportfiles.load_report(report).frame(name)


def test_same_records_as_the_transformers_engine(vllm_report, small_report):
    for name in ("tokens", "past_end"):
        ours, theirs = (frame(r, name).sort_values(KEYS).reset_index(drop=True)
                        for r in (vllm_report.out, small_report))
        assert len(ours) == len(theirs) > 0
        pd.testing.assert_frame_equal(ours[KEYS + EXACT + ["domain"]], theirs[KEYS + EXACT + ["domain"]])
        for column in ("target_p", "draft_q", "draft_top1_p"):  # from log-probabilities: equal to float error
            np.testing.assert_allclose(ours[column], theirs[column], atol=1e-5)
        assert ours["target_entropy"].isna().all()  # a server does not return the distribution
    ours, theirs = (frame(r, "prompts").sort_values("prompt_id").reset_index(drop=True)
                    for r in (vllm_report.out, small_report))
    for column in ("prompt_id", "domain", "n_generated", "finish_reason"):
        assert ours[column].tolist() == theirs[column].tolist()
    assert [list(t) for t in ours["prompt_tokens"]] == [list(t) for t in theirs["prompt_tokens"]]
    np.testing.assert_allclose(ours["min_margin"], theirs["min_margin"], atol=1e-4)
    key = ["draft", "domain", "k"]
    ours, theirs = (frame(r, "summary").sort_values(key).reset_index(drop=True)
                    for r in (vllm_report.out, small_report))
    pd.testing.assert_frame_equal(ours[key + ["n_tokens", "alpha", "tokens_per_iter", "draft_acceptance_rate"]],
                                  theirs[key + ["n_tokens", "alpha", "tokens_per_iter", "draft_acceptance_rate"]])
    assert (ours["cost_ratio"] == 0).all()  # no timings: priced as a free draft, said in the output


def test_run_json_says_what_is_not_recorded(vllm_report, servers):
    run = reportfiles.load_report(vllm_report.out).run
    assert run["timings"] is None
    assert run["engine"]["name"] == "vllm" and run["engine"]["urls"] == servers.urls
    assert run["engine"]["not_recorded"] == ["target_entropy", "timings"]
    assert set(run["phases_s"]) == {"loading", "generation", "draft_passes"}
    assert "no forward times were measured" in vllm_report.output and "--cost-ratio" in vllm_report.output


def test_requests_spread_over_every_url_with_the_documented_shapes(vllm_report, small_report):
    prompts = frame(small_report, "prompts")
    by_ids = {tuple(t): n for t, n in zip(prompts["prompt_tokens"], prompts["n_generated"])}
    generations = [r for reqs in vllm_report.requests.targets for r in reqs if r.get("max_tokens", 0) > 1]
    # 8 prompts in one batch, prompt i to server i mod 2: four each
    assert [sum(1 for r in reqs if r.get("max_tokens", 0) > 1) for reqs in vllm_report.requests.targets] == [4, 4]
    assert sorted(tuple(r["prompt"]) for r in generations) == sorted(by_ids)
    for r in generations:
        assert r["max_tokens"] == 24 + 4 and r["ignore_eos"] is True and r["temperature"] == 0.0
        assert r["return_token_ids"] is True and r["logprobs"] == 2 and "prompt_logprobs" not in r
    scored = [r for r in vllm_report.requests.draft if "prompt_logprobs" in r]
    assert len(scored) == 8
    tokens = frame(small_report, "tokens")
    past = frame(small_report, "past_end")
    for r in scored:
        assert r["prompt_logprobs"] == 1 and r["max_tokens"] == 1 and r["temperature"] == 0.0
        prompt = next(p for p in by_ids if tuple(r["prompt"][: len(p)]) == p)
        pid = prompts["prompt_id"][[tuple(t) == prompt for t in prompts["prompt_tokens"]]].iloc[0]
        rows = pd.concat([tokens, past])
        rows = rows[(rows["prompt_id"] == pid) & (rows["draft"] == "ngram")].sort_values("position")
        assert r["prompt"] == list(prompt) + rows["target_token"].tolist()  # prompt + continuation + past end


def test_client_reads_prompt_logprobs_of_vllm_0_32():
    """The shape checked on vLLM 0.32.0's CPU build: None first, then the given token and the rank-1 token."""
    given_not_top = {"504": {"logprob": -8.2, "rank": 191, "decoded_token": "The"},
                     "29": {"logprob": -0.98, "rank": 1, "decoded_token": "-"}}
    given_top = {"95": {"logprob": -0.5, "rank": 1, "decoded_token": "o"}}
    where = "test"
    assert vclient._prompt_position(None, 1, where) is None
    assert vclient._prompt_position(given_not_top, 504, where) == vclient.PromptLogprob(29, -0.98, -8.2)
    assert vclient._prompt_position(given_top, 95, where) == vclient.PromptLogprob(95, -0.5, -0.5)
    with pytest.raises(vclient.SpecprofError, match="lack the prompt's own token 7"):
        vclient._prompt_position(given_top, 7, where)


def one_line_error(r) -> str:
    """The error line (after the progress bar's line, when the run had started)."""
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("profiling ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url(cli, tiny, corpus, servers, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(vllm_profile(cli, tiny, corpus, servers, tmp_path / "r", urls=[servers.urls[0], url]))
    assert f"--url {url}: unreachable" in line


def test_server_of_another_model(cli, tiny, corpus, servers, tmp_path):
    other = FakeVllm(lambda ids: "".join("?" for _ in ids), {}, {}, model=model_logprobs(tiny["target"]))
    url = other.start()
    try:
        line = one_line_error(vllm_profile(cli, tiny, corpus, servers, tmp_path / "r", urls=[url]))
    finally:
        other.stop()
    assert f"{url}: serves another model than --target" in line and "token id" in line
    assert other.completions == 0  # refused before any generation


def test_server_dying_mid_run_keeps_completed_batches(cli, tiny, corpus, servers, vllm_report, tmp_path):
    """Batches of 2 prompts, the server dies at its 5th completion: two batches are kept, and --resume on a
    healthy server finishes the run with the records of an uninterrupted one."""
    dying = FakeVllm(servers.decode, {}, {}, model=model_logprobs(tiny["target"]), die_after=4)
    url = dying.start()
    out = tmp_path / "r"
    try:
        line = one_line_error(vllm_profile(cli, tiny, corpus, servers, out, "--batch-size", 2, urls=[url]))
    finally:
        dying.stop()
    assert f"--url {url}: the server stopped answering" in line
    run = json.loads((out / "run.json").read_text())
    assert len(run["completed_batches"]) == 2 and len(run["completed_prompts"]) == 4
    r = vllm_profile(cli, tiny, corpus, servers, out, "--batch-size", 2, "--resume")
    assert r.exit_code == 0, r.output
    ours, full = (frame(p, "tokens").sort_values(KEYS).reset_index(drop=True) for p in (out, vllm_report.out))
    pd.testing.assert_frame_equal(ours[KEYS + EXACT], full[KEYS + EXACT])


def test_refusals(cli, tiny, corpus, servers, tmp_path):
    line = one_line_error(vllm_profile(cli, tiny, corpus, servers, tmp_path / "a", "--temperature", "0.7"))
    assert "--temperature 0.7 with --engine vllm" in line and "Σ min(p, q)" in line
    r = cli("profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--url", servers.urls[0],
            "--draft", "early-exit:1", "--out", tmp_path / "b")
    assert "--draft early-exit:1: a model draft needs its own vLLM server" in one_line_error(r)
    assert "export-draft early-exit:1" in r.stderr
    r = cli("profile", corpus, "--target", tiny["target"], "--url", servers.urls[0], "--out", tmp_path / "c")
    assert "--url needs --engine vllm" in one_line_error(r)
    r = cli("profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--out", tmp_path / "d")
    assert "give the target's vLLM server with --url" in one_line_error(r)
    r = cli("profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--url", servers.urls[0],
            "--draft-url", "nourl", "--out", tmp_path / "e")
    assert "--draft-url nourl: expected NAME=URL" in one_line_error(r)
    r = cli("profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--url", servers.urls[0],
            "--draft-url", f"ngram={servers.draft_url}", "--out", tmp_path / "f")
    assert "--draft-url ngram: a model-free draft needs no server" in one_line_error(r)
    r = cli("profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--url", servers.urls[0],
            "--concurrency", "1,4", "--out", tmp_path / "g")
    assert "--engine vllm measures none" in one_line_error(r)
    for name in "abcdefg":
        assert not (tmp_path / name / "run.json").exists()  # refused before anything is written


def test_shards_of_a_vllm_profile_merge_into_the_unsharded_report(cli, tiny, corpus, servers, vllm_report, tmp_path):
    """No timings in any shard: the merged report has none either, and equals the unsharded one."""
    for i in (1, 2):
        r = vllm_profile(cli, tiny, corpus, servers, tmp_path / f"s{i}", "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    assert reportfiles.load_report(tmp_path / "merged").run["timings"] is None
    for name in ("tokens", "summary"):
        ours, full = (frame(p, name) for p in (tmp_path / "merged", vllm_report.out))
        pd.testing.assert_frame_equal(ours, full)
