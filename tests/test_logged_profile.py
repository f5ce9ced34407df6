"""Profiles from logged responses (`--responses logged`) against the generating profile, on tiny models.

The log holds the target's own continuations, decoded to text as a server would return them, in
the OpenAI chat-completion shape. For every prompt whose text round-trips to the same token ids,
the teacher-forced target pass must give the generating profile's tokens and summary exactly.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from specprof.core.pricing.timings import Timings
from specprof.engines.hf import profiler

MAX_NEW = 24
MATCH_COLUMNS = ["draft", "prompt_id", "domain", "position", "target_token", "draft_token", "match", "accept_prob"]
FLOAT_COLUMNS = ["target_p", "draft_q", "target_entropy", "draft_top1_p"]


@pytest.fixture()
def fixed_timings(monkeypatch):
    """The same measured costs in every run, so two summaries can be compared number for number."""
    def measure(target, drafts, context, k_max, batch_sizes=(1,)):
        return Timings(tuple(0.01 * (1 + 0.1 * n) for n in range(k_max + 1)),
                       {d.name: 0.002 for d in drafts}, len(context), {d.name: 0.0005 for d in drafts})

    monkeypatch.setattr(profiler, "measure_timings", measure)


def profile(cli, source, out, tiny, *extra):
    r = cli("profile", source, "--target", tiny["target"], "--draft", tiny["close"], "--draft", "ngram",
            "--draft", "early-exit:1", "--k-max", 4, "--max-new-tokens", MAX_NEW, "--out", out, *extra)
    return r


def continuations(report) -> dict[str, list[int]]:
    tokens = pd.read_parquet(report / "tokens.parquet")
    first = tokens[tokens["draft"] == tokens["draft"].iloc[0]].sort_values(["prompt_id", "position"])
    return {pid: rows["target_token"].tolist() for pid, rows in first.groupby("prompt_id", sort=False)}


def write_log(path, prompts: dict[str, tuple[str, str]], responses: dict[str, str]) -> None:
    """An OpenAI-style chat-completion log: the request's messages and the API's answer."""
    lines = [json.dumps({"id": pid, "domain": prompts[pid][0],
                         "messages": [{"role": "user", "content": prompts[pid][1]}],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]})
             for pid, text in responses.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def logged_setup(tiny, corpus, tmp_path, cli, fixed_timings):
    """The generating profile of the round-tripping prompts and the log of their greedy continuations."""
    tok = AutoTokenizer.from_pretrained(tiny["target"])
    prompts = {r["id"]: (r["domain"], r["prompt"]) for r in map(json.loads, corpus.read_text().splitlines())}
    r = profile(cli, corpus, tmp_path / "all", tiny)
    assert r.exit_code == 0, r.output
    texts, round_trip = {}, []
    for pid, ids in continuations(tmp_path / "all").items():
        body = ids[:-1] if ids[-1] == tok.eos_token_id else ids  # a server's text never holds the EOS token
        texts[pid] = tok.decode(body, skip_special_tokens=True)
        if tok(texts[pid], add_special_tokens=False)["input_ids"] == body:
            round_trip.append(pid)
    assert len(round_trip) >= 4, round_trip  # most of the tiny target's continuations are plain characters
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps({"id": p, "domain": prompts[p][0], "prompt": prompts[p][1]}) + "\n"
                              for p in round_trip))
    r = profile(cli, subset, tmp_path / "gen", tiny)
    assert r.exit_code == 0, r.output
    log = tmp_path / "log.jsonl"
    write_log(log, prompts, {p: texts[p] for p in round_trip})
    return {"gen": tmp_path / "gen", "log": log, "prompts": prompts, "texts": texts, "round_trip": round_trip}


def test_logged_greedy_equals_generating(logged_setup, tiny, tmp_path, cli):
    out = tmp_path / "logged"
    r = profile(cli, logged_setup["log"], out, tiny)  # --responses logged is the default for a log
    assert r.exit_code == 0, r.output
    n = len(logged_setup["round_trip"])
    assert "100.0% of" in r.stdout and f"(0 of {n} prompts cut)" in r.stdout

    def frame(report, name, keys):
        return pd.read_parquet(report / name).sort_values(keys).reset_index(drop=True)

    keys = ["draft", "prompt_id", "position"]
    gen, logged = frame(logged_setup["gen"], "tokens.parquet", keys), frame(out, "tokens.parquet", keys)
    pd.testing.assert_frame_equal(gen[MATCH_COLUMNS], logged[MATCH_COLUMNS])
    pd.testing.assert_frame_equal(gen[FLOAT_COLUMNS], logged[FLOAT_COLUMNS], atol=1e-5, rtol=1e-4)
    # same rows in the same order, so the same bootstrap draws: the summary and blocks are identical
    pd.testing.assert_frame_equal(pd.read_parquet(logged_setup["gen"] / "summary.parquet"),
                                  pd.read_parquet(out / "summary.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(logged_setup["gen"] / "blocks.parquet"),
                                  pd.read_parquet(out / "blocks.parquet"))
    p_gen, p_log = (frame(d, "prompts.parquet", ["prompt_id"]) for d in (logged_setup["gen"], out))
    assert p_gen["n_generated"].tolist() == p_log["n_generated"].tolist()
    assert p_gen["finish_reason"].tolist() == p_log["finish_reason"].tolist()  # EOS restored where the target ends

    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["responses"] == "logged"
    assert run["logged_responses"]["all"]["fraction"] == 1.0
    assert run["logged_responses"]["all"]["cut"] == 0
    assert set(run["phases_s"]) == {"loading", "target_pass", "draft_passes", "cost_timing"}
    gen_run = json.loads((logged_setup["gen"] / "run.json").read_text())
    assert set(gen_run["phases_s"]) == {"loading", "generation", "draft_passes", "cost_timing"}
    r = cli("verify", out)  # verify replays generation, which a log's continuations need not match in length
    assert r.exit_code == 2 and "profiled from logged responses" in r.stderr


def test_a_disagreement_cuts_the_response_there(logged_setup, tiny, tmp_path, cli):
    """Change the logged token at position 5 of one prompt: the prefix of 5 is used, then the target's own token."""
    texts = dict(logged_setup["texts"])
    pid = max(logged_setup["round_trip"], key=lambda p: len(texts[p]))
    original = texts[pid]
    assert len(original) > 8
    texts[pid] = original[:5] + ("#" if original[5] != "#" else "$") + original[6:]
    log = tmp_path / "log.jsonl"
    write_log(log, logged_setup["prompts"], {p: texts[p] for p in logged_setup["round_trip"]})
    out = tmp_path / "cut"
    r = profile(cli, log, out, tiny)
    assert r.exit_code == 0, r.output
    n = len(logged_setup["round_trip"])
    assert f"(1 of {n} prompts cut)" in r.stdout
    domain = logged_setup["prompts"][pid][0]
    in_domain = sum(logged_setup["prompts"][p][0] == domain for p in logged_setup["round_trip"])
    per_domain = next(line for line in r.stdout.splitlines() if "per domain:" in line)
    assert f"{domain} " in per_domain and f"(1 of {in_domain} cut)" in per_domain
    run = json.loads((out / "run.json").read_text())
    row = run["logged_responses"]["prompts"][pid]
    assert row["used"] == 5  # logged tokens before the first disagreement (one character = one token)
    assert row["logged"] == len(original)
    gen = continuations(logged_setup["gen"])[pid]
    assert continuations(out)[pid] == gen[:6]  # the 5 logged tokens, then the target's own greedy token
    prompts = pd.read_parquet(out / "prompts.parquet").set_index("prompt_id")
    assert prompts.loc[pid, "n_generated"] == 6
    assert prompts.loc[pid, "finish_reason"] == "disagree"


def test_sampled_logs_give_the_generating_acceptance(tiny, corpus, tmp_path, cli, fixed_timings):
    """At T > 0, β = Σ min(p, q) along the logged tokens equals the sampled profile's at the same positions."""
    tok = AutoTokenizer.from_pretrained(tiny["target"])
    sampled = ["--temperature", 0.8, "--top-p", 0.9]
    r = profile(cli, corpus, tmp_path / "gen", tiny, *sampled)
    assert r.exit_code == 0, r.output
    prompts = {r["id"]: (r["domain"], r["prompt"]) for r in map(json.loads, corpus.read_text().splitlines())}
    texts = {}
    for pid, ids in continuations(tmp_path / "gen").items():
        body = ids[:-1] if ids[-1] == tok.eos_token_id else ids
        text = tok.decode(body, skip_special_tokens=True)
        if tok(text, add_special_tokens=False)["input_ids"] == body and body:
            texts[pid] = text
    assert len(texts) >= 3  # sampled text holds more special tokens and newlines that do not round-trip
    write_log(tmp_path / "log.jsonl", prompts, texts)
    r = profile(cli, tmp_path / "log.jsonl", tmp_path / "logged", tiny, *sampled)
    assert r.exit_code == 0, r.output
    assert "taken as samples of the served target" in r.stdout
    keys = ["draft", "prompt_id", "position"]
    gen = pd.read_parquet(tmp_path / "gen" / "tokens.parquet").set_index(keys)
    logged = pd.read_parquet(tmp_path / "logged" / "tokens.parquet").set_index(keys)
    both = gen.loc[logged.index]  # the logged text lacks a final EOS; every logged position is in the generation
    assert len(logged) > 50
    assert (both["target_token"] == logged["target_token"]).all()
    pd.testing.assert_series_equal(both["accept_prob"], logged["accept_prob"], atol=1e-5, rtol=1e-4)


def test_logs_that_are_not_the_targets_greedy_output_are_refused(tiny, corpus, tmp_path, cli):
    prompts = {r["id"]: (r["domain"], r["prompt"]) for r in map(json.loads, corpus.read_text().splitlines())}
    write_log(tmp_path / "log.jsonl", prompts, {pid: "~~~~ not this model ~~~~" for pid in prompts})
    r = profile(cli, tmp_path / "log.jsonl", tmp_path / "out", tiny)
    assert r.exit_code == 2, r.output
    assert "logged responses: only" in r.stderr and "come before the first disagreement" in r.stderr
    assert "--temperature" in r.stderr  # the way out for sampled traffic


def test_generate_ignores_the_logged_responses(tiny, corpus, tmp_path, cli, fixed_timings):
    prompts = {r["id"]: (r["domain"], r["prompt"]) for r in map(json.loads, corpus.read_text().splitlines())}
    write_log(tmp_path / "log.jsonl", prompts, {pid: "anything" for pid in prompts})
    r = profile(cli, tmp_path / "log.jsonl", tmp_path / "out", tiny, "--responses", "generate")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "responses" not in run["settings"] and "logged_responses" not in run  # as generating runs always were
