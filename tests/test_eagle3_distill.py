"""`distill --arch eagle3`: trains a head on the target's continuations and writes a directory in the EAGLE
layout that `profile --draft eagle3:DIR` reads (and vLLM serves: tests/test_vllm_eagle3.py)."""

from __future__ import annotations

import json

from eagle3_heads import make_echo_target


def test_distill_eagle3_trains_a_head_profile_reads(cli, corpus, tmp_path):
    target = make_echo_target(tmp_path / "target")
    out = tmp_path / "head"
    r = cli("distill", corpus, "--arch", "eagle3", "--target", target, "--out", out, "--max-minutes", 1.0,
            "--max-new-tokens", 24, "--holdout", 0.25)
    assert r.exit_code == 0, r.output
    record = json.loads((out / "distill.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == record["aux_layers"] == [0, 2, 4]
    assert record["training"]["steps"] > 0
    assert record["heldout_alpha"]["after"] >= record["heldout_alpha"]["before"]  # the best held-out state is kept
    assert record["draft_vocab_size"] <= 102
    report = tmp_path / "report"
    r = cli("profile", corpus, "--target", target, "--draft", f"eagle3:{out}", "--k-max", 3, "--max-new-tokens", 24,
            "--out", report)
    assert r.exit_code == 0, r.output
    run = json.loads((report / "run.json").read_text())
    assert run["drafts"][0]["kind"] == "eagle3" and run["drafts"][0]["draft_vocab_size"] == record["draft_vocab_size"]


def test_distill_unknown_arch(cli, corpus, tmp_path):
    r = cli("distill", corpus, "--arch", "medusa", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--arch medusa: use early-exit or eagle3" in r.stderr
