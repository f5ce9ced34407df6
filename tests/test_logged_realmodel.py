"""Logged responses on the real embedded target: SmolLM2-135M's own greedy continuations, logged as text.

For every prompt whose text round-trips to the target's ids, the profile from the log has the
generating profile's match columns (the early exit at layer 26 and prompt lookup as drafts).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

pytestmark = pytest.mark.realmodel
MAX_NEW = 32
COLUMNS = ["draft", "prompt_id", "position", "target_token", "draft_token", "match"]


def test_smollm2_log_of_its_greedy_output_gives_the_same_matches(tmp_path, cli):
    common = ["--draft", "early-exit:26", "--draft", "ngram", "--domain", "code", "--domain", "chat",
              "--domain", "json", "--limit", 2, "--k-max", 4, "--max-new-tokens", MAX_NEW]
    r = cli("profile", "sample_prompts", *common, "--out", tmp_path / "gen")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "gen" / "run.json").read_text())
    tok = AutoTokenizer.from_pretrained(run["target"]["source"])
    tokens = pd.read_parquet(tmp_path / "gen" / "tokens.parquet")
    prompts = pd.read_parquet(tmp_path / "gen" / "prompts.parquet").set_index("prompt_id")
    first = tokens[tokens["draft"] == "ngram"].sort_values(["prompt_id", "position"])
    lines, round_trip = [], []
    for pid, rows in first.groupby("prompt_id"):
        ids = rows["target_token"].tolist()
        body = ids[:-1] if prompts.loc[pid, "finish_reason"] == "eos" else ids
        text = tok.decode(body, skip_special_tokens=True)
        if tok(text, add_special_tokens=False)["input_ids"] == body:
            round_trip.append(pid)
        lines.append(json.dumps({"id": pid, "domain": prompts.loc[pid, "domain"],
                                 "messages": [{"role": "user", "content": prompts.loc[pid, "prompt"]}],
                                 "choices": [{"message": {"role": "assistant", "content": text}}]}))
    assert len(round_trip) >= 4
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    r = cli("profile", tmp_path / "log.jsonl", *common, "--out", tmp_path / "logged")
    assert r.exit_code == 0, r.output
    logged = pd.read_parquet(tmp_path / "logged" / "tokens.parquet")
    a, b = (t[t["prompt_id"].isin(round_trip)].sort_values(["draft", "prompt_id", "position"])[COLUMNS]
            .reset_index(drop=True) for t in (tokens, logged))
    pd.testing.assert_frame_equal(a, b)
