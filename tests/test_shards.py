"""`profile --shard i/n` and `specprof merge`: the merged shards are the unsharded report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from specprof.core.pricing.timings import Timings
from specprof.core.records import logs
from specprof.core.records.corpus import Prompt
from specprof.core.records.shards import shard_of, take_shard
from specprof.engines.hf import profiler

WORDS = ["alpha beta", "SELECT 1;", "x", "the quick brown fox", "{\"a\": 1}", "abcabcabc", "Once upon",
         "0123 0123 0123", "hello world", "def f(x):", "print('hi')", "a b c d e f"]
MATCH_COLUMNS = ["draft", "prompt_id", "domain", "position", "target_token", "draft_token", "match", "accept_prob"]


@pytest.fixture()
def fixed_timings(monkeypatch):
    """The same measured costs in every run (shards measure their own), so summaries compare exactly."""
    def measure(target, drafts, context, k_max, batch_sizes=(1,)):
        return Timings(tuple(0.01 * (1 + 0.1 * n) for n in range(k_max + 1)),
                       {d.name: 0.002 for d in drafts}, 40, {d.name: 0.0005 for d in drafts})

    monkeypatch.setattr(profiler, "measure_timings", measure)


@pytest.fixture()
def twelve(tmp_path):
    path = tmp_path / "twelve.jsonl"
    path.write_text("".join(json.dumps({"id": f"p-{i}", "domain": "ab"[i % 2], "prompt": w}) + "\n"
                            for i, w in enumerate(WORDS)))
    return path


def test_shards_split_by_id_and_ignore_order():
    prompts = [Prompt(f"p-{i}", "d", "x", None, "here") for i in range(12)]
    shards = [take_shard(prompts, i, 3)[0] for i in (1, 2, 3)]
    assert [[p.id for p in s] for s in shards] == [
        ["p-5", "p-11"], ["p-0", "p-3", "p-7", "p-8", "p-9", "p-10"], ["p-1", "p-2", "p-4", "p-6"]]
    assert [p.id for p in take_shard(prompts[::-1], 2, 3)[0]] == ["p-10", "p-9", "p-8", "p-7", "p-3", "p-0"]
    assert all(shard_of(p.id, 1) == 1 for p in prompts)


def test_merge_of_three_shards_is_the_unsharded_report(tiny, twelve, tmp_path, cli, fixed_timings):
    common = ["--target", tiny["target"], "--draft", tiny["close"], "--draft", "ngram", "--k-max", 4,
              "--max-new-tokens", 16, "--batch-size", 4]
    r = cli("profile", twelve, *common, "--out", tmp_path / "whole")
    assert r.exit_code == 0, r.output
    for i in (1, 2, 3):
        r = cli("profile", twelve, *common, "--shard", f"{i}/3", "--out", tmp_path / f"shard{i}")
        assert r.exit_code == 0, r.output
    # given in any order
    r = cli("merge", tmp_path / "shard3", tmp_path / "shard1", tmp_path / "shard2", "--out", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    assert "merged 3 shards (12 prompts)" in r.stdout

    whole, merged = tmp_path / "whole", tmp_path / "merged"
    a, b = (pd.read_parquet(d / "tokens.parquet") for d in (whole, merged))
    pd.testing.assert_frame_equal(a[MATCH_COLUMNS], b[MATCH_COLUMNS])  # same rows in the same order
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-4)  # other batch mates: float noise only
    for name in ("summary", "blocks"):
        pd.testing.assert_frame_equal(pd.read_parquet(whole / f"{name}.parquet"),
                                      pd.read_parquet(merged / f"{name}.parquet"))
    pa_, pb = (pd.read_parquet(d / "prompts.parquet") for d in (whole, merged))
    pd.testing.assert_frame_equal(pa_.drop(columns="min_margin"), pb.drop(columns="min_margin"))
    run_a, run_b = (json.loads((d / "run.json").read_text()) for d in (whole, merged))
    for key in ("target", "drafts", "settings", "corpus_fingerprint", "completed_prompts"):
        assert run_a[key] == run_b[key], key
    assert run_b["corpus"]["n_prompts"] == 12 and "shard" not in run_b
    assert [m["shard"] for m in run_b["merged_from"]] == ["1/3", "2/3", "3/3"]
    # the merged report reads like any other
    r = cli("recommend", merged, "--json")
    assert r.exit_code == 0, r.output


def test_merge_refuses_shards_of_different_runs(tiny, twelve, tmp_path, cli, fixed_timings):
    common = ["--target", tiny["target"], "--draft", "ngram", "--max-new-tokens", 8]
    for i, k in ((1, 4), (2, 4), (3, 3)):
        r = cli("profile", twelve, *common, "--k-max", k, "--shard", f"{i}/3", "--out", tmp_path / f"s{i}")
        assert r.exit_code == 0, r.output
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "s3", "--out", tmp_path / "m")
    assert r.exit_code == 2, r.output
    assert f"{tmp_path / 's3'}: not a shard of the same run as {tmp_path / 's1'}: the settings differ " \
           "(k_max: 4 before, 3 now)" in r.stderr
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "m")
    assert r.exit_code == 2, r.output
    assert "shard 3/3 is missing (2 of 3 given)" in r.stderr
    r = cli("merge", tmp_path / "s1", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "m")
    assert r.exit_code == 2 and "shard 1/3 again" in r.stderr
    r = cli("profile", twelve, *common, "--k-max", 4, "--out", tmp_path / "plain")
    r = cli("merge", tmp_path / "plain", tmp_path / "s1", "--out", tmp_path / "m")
    assert r.exit_code == 2 and "not a shard (profile it with --shard i/n)" in r.stderr
    r = cli("profile", twelve, *common, "--shard", "4/3", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--shard 4/3: need 1 ≤ i ≤ n" in r.stderr


def test_an_empty_shard_writes_an_empty_report_that_merges(tiny, corpus, tmp_path, cli, fixed_timings):
    """The 8 fixture prompts fall in shards 2 and 3 of 3 only: shard 1 is empty and merges all the same."""
    common = ["--target", tiny["target"], "--draft", "ngram", "--k-max", 3, "--max-new-tokens", 8]
    r = cli("profile", corpus, *common, "--shard", "1/3", "--out", tmp_path / "s1")
    assert r.exit_code == 0, r.output
    assert "shard 1/3: no prompt of the corpus falls in it" in r.stdout
    for i in (2, 3):
        assert cli("profile", corpus, *common, "--shard", f"{i}/3", "--out", tmp_path / f"s{i}").exit_code == 0
    assert cli("profile", corpus, *common, "--out", tmp_path / "whole").exit_code == 0
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "s3", "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    for name in ("summary", "blocks"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "whole" / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "m" / f"{name}.parquet"))


def test_shards_of_a_logged_profile_merge_with_their_agreement(tiny, corpus, tmp_path, cli, fixed_timings,
                                                               monkeypatch):
    """Profiles from logs shard and merge too; run.json's agreement figures are the unsharded run's."""
    monkeypatch.setattr(logs, "MIN_USED_FRACTION", 0.0)  # these logs are not the target's output: keep them anyway
    lines = [json.loads(line) for line in corpus.read_text().splitlines()]
    log = tmp_path / "log.jsonl"  # every response is cut at its first disagreement
    log.write_text("".join(json.dumps({"id": r["id"], "domain": r["domain"], "prompt": r["prompt"],
                                       "response": r["prompt"][::-1]}) + "\n" for r in lines))
    common = ["--target", tiny["target"], "--draft", "ngram", "--k-max", 3, "--max-new-tokens", 8]
    whole = cli("profile", log, *common, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    for i in (1, 2, 3):
        assert cli("profile", log, *common, "--shard", f"{i}/3", "--out", tmp_path / f"s{i}").exit_code == 0
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "s3", "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    a, b = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("whole", "m"))
    assert a["logged_responses"] == b["logged_responses"]
    assert a["logged_responses"]["all"]["cut"] == 8
    assert a["settings"]["responses"] == b["settings"]["responses"] == "logged"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "whole" / "summary.parquet"),
                                  pd.read_parquet(tmp_path / "m" / "summary.parquet"))
