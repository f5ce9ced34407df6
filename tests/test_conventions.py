"""Engine counting conventions: the counters vLLM would report equal a vLLM-style loop run here.

The loop below is written from vLLM 0.32.0's scheduler and metrics (first token from prefill,
no draft where the proposer returned nothing, acceptances counted before the output is cut at
EOS / max_tokens), on a tiny target made repetitive so n-gram drafts match, with EOS endings and
length endings both present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from reference import model_proposer
from tiny import make_model

from specprof.core.answers.analysis import load_analysis
from specprof.core.simulation import conventions
from specprof.core.simulation.ngram import PromptLookup, VllmNgram
from specprof.engines.hf import models
from specprof.engines.hf.drafts import early_exit_view
from specprof.errors import SpecprofError

K_MAX = 8
MAX_NEW = 40
OLD = Path(__file__).parent / "fixtures" / "release-0.1.0" / "report-a"


@pytest.fixture(scope="module")
def repetitive(tmp_path_factory) -> dict[str, Path]:
    """A tiny target whose attention is damped (o_proj × 0.3): its greedy text repeats itself, as
    real models' often does, so n-gram drafts get matches; and a close noisy copy as a model draft."""
    root = tmp_path_factory.mktemp("repetitive")
    base = make_model(root / "base", seed=0)
    model = models.load_model(str(base), torch.device("cpu"), torch.float32).model
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.3)
    model.save_pretrained(root / "target")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).exists():
            (root / "target" / name).write_bytes((base / name).read_bytes())
    close = make_model(root / "close", seed=1, noise_from=root / "target", noise=0.03)
    return {"target": root / "target", "close": close}


@pytest.fixture(scope="module")
def report(repetitive, corpus, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("conv") / "report"
    args = ["profile", corpus, "--target", repetitive["target"], "--draft", repetitive["close"],
            "--draft", "early-exit:1", "--draft", "vllm-ngram:1:2", "--draft", "prompt-lookup", "--draft", "ngram:2",
            "--k-max", K_MAX, "--max-new-tokens", MAX_NEW, "--batch-size", 3, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def load(path):
    return models.load_model(str(path), torch.device("cpu"), torch.float32)


@torch.inference_mode()
def vllm_loop(target, propose_block, prompt: list[int], k: int, max_new: int, eos: set[int]):
    """Greedy speculative decoding counted as vLLM counts it. Returns (output, counters [4 + k])."""
    seq = list(prompt)
    first = int(target(torch.tensor([seq])).logits[0, -1].argmax())  # prefill samples the first token, no draft
    out, seq = [first], seq + [first]
    drafts = drafted = accepted = 0
    per_pos = [0] * k
    while not (out[-1] in eos or len(out) >= max_new):
        proposals = propose_block(seq, k)
        choice = target(torch.tensor([seq + proposals])).logits[0, len(seq) - 1:].argmax(-1).tolist()
        n = 0
        while n < len(proposals) and proposals[n] == choice[n]:
            n += 1
        if proposals:  # an empty proposal is no draft
            drafts, drafted, accepted = drafts + 1, drafted + len(proposals), accepted + n
            for i in range(n):
                per_pos[i] += 1
        for tok in proposals[:n] + [choice[n]]:  # n counted above, before the cut at the stop below
            out.append(tok)
            seq.append(tok)
            if tok in eos or len(out) >= max_new:
                break
    return out, [drafts, drafted, accepted, *per_pos]


def greedy_block(draft_model):
    step = model_proposer(draft_model)

    def propose(seq, k):
        proposals = []
        for _ in range(k):
            proposals.append(step(seq + proposals))
        return proposals

    return propose


def test_profile_records_past_the_end_apart(report):
    tokens = pd.read_parquet(report / "tokens.parquet")
    past = pd.read_parquet(report / "past_end.parquet")
    prompts = pd.read_parquet(report / "prompts.parquet").set_index("prompt_id")
    assert set(prompts.finish_reason) == {"eos", "length"}  # both kinds of end are exercised
    for draft in tokens.draft.unique():
        rows = tokens[tokens.draft == draft].groupby("prompt_id").position.agg(["count", "max"])
        # tokens.parquet holds exactly the continuation: n_generated rows, positions 0..n-1
        assert (rows["count"] == prompts.loc[rows.index, "n_generated"]).all()
        assert (rows["max"] + 1 == rows["count"]).all()
        after = past[past.draft == draft].groupby("prompt_id").position.agg(["count", "min"])
        assert (after["count"] == K_MAX).all()  # k_max positions past each end
        assert (after["min"] == prompts.loc[after.index, "n_generated"]).all()
    summary = pd.read_parquet(report / "summary.parquet")
    n_tokens = summary[(summary.domain == "ALL") & (summary.k == 1)].set_index("draft").n_tokens
    assert (n_tokens == prompts.n_generated.sum()).all()  # α counts the continuation only


def test_past_end_tokens_are_the_targets_greedy_continuation(report, repetitive):
    target = load(repetitive["target"]).model
    tokens = pd.read_parquet(report / "tokens.parquet")
    past = pd.read_parquet(report / "past_end.parquet")
    prompts = pd.read_parquet(report / "prompts.parquet").set_index("prompt_id")
    eos_prompt = prompts[prompts.finish_reason == "eos"].index[0]
    seq = list(prompts.loc[eos_prompt, "prompt_tokens"])
    rows = tokens[(tokens.draft == "early-exit:1") & (tokens.prompt_id == eos_prompt)].sort_values("position")
    seq += rows.target_token.tolist()
    expected = []
    with torch.inference_mode():
        for _ in range(K_MAX):  # the target simply goes on after its EOS
            expected.append(int(target(torch.tensor([seq])).logits[0, -1].argmax()))
            seq.append(expected[-1])
    got = past[(past.draft == "early-exit:1") & (past.prompt_id == eos_prompt)].sort_values("position")
    assert got.target_token.tolist() == expected


@pytest.mark.parametrize("which", ["close", "early-exit:1", "vllm-ngram:1:2"])
def test_vllm_counters_equal_a_vllm_loop(report, repetitive, which):
    target = load(repetitive["target"])
    eos = set(models.eos_token_ids(target))
    if which == "close":
        name, propose = str(repetitive["close"]), greedy_block(load(repetitive["close"]).model)
    elif which == "early-exit:1":
        name, propose = which, greedy_block(early_exit_view(target.model, 1))
    else:
        name, propose = which, VllmNgram(1, 2).propose
    tokens = pd.read_parquet(report / "tokens.parquet")
    prompts = pd.read_parquet(report / "prompts.parquet").set_index("prompt_id")
    seen_past_end = 0
    for k in range(1, K_MAX + 1):
        total = np.zeros(3 + k, dtype=np.int64)
        for prompt_id in prompts.index:
            prompt = list(prompts.loc[prompt_id, "prompt_tokens"])
            output, counts = vllm_loop(target.model, propose, prompt, k, MAX_NEW, eos)
            rows = tokens[(tokens.draft == name) & (tokens.prompt_id == prompt_id)].sort_values("position")
            assert output == rows.target_token.tolist(), (prompt_id, k)
            total += np.array(counts)
            one = conventions.engine_counters(report, name, k, prompt_ids=[prompt_id])
            assert [one.num_drafts, one.num_draft_tokens, one.num_accepted_tokens,
                    *one.num_accepted_tokens_per_pos] == counts, (which, prompt_id, k)
        got = conventions.engine_counters(report, name, k)
        assert got.exact and got.note == ""
        assert got.as_dict() == {"num_drafts": total[0], "num_draft_tokens": total[1],
                                 "num_accepted_tokens": total[2], "num_accepted_tokens_per_pos": total[3:].tolist()}
        assert got.mean_acceptance_length == pytest.approx(1 + total[2] / total[0])
        transformers = conventions.engine_counters(report, name, k, engine="transformers")
        seen_past_end += got.num_accepted_tokens != transformers.num_accepted_tokens
    assert seen_past_end  # the conventions differ on this corpus: the check above is not vacuous


def test_transformers_convention_is_todays_trace(report):
    blocks = pd.read_parquet(report / "blocks.parquet")
    for draft in blocks.draft.unique():
        for k in range(1, K_MAX + 1):
            rows = blocks[(blocks.draft == draft) & (blocks.domain == "ALL") & (blocks.k == k)]
            c = conventions.engine_counters(report, draft, k, engine="transformers")
            assert c.num_drafts == rows.iterations.sum()
            assert c.num_draft_tokens == k * rows.iterations.sum()
            assert c.num_accepted_tokens == (rows.accepted * rows.iterations).sum()
            assert list(c.num_accepted_tokens_per_pos) == [rows[rows.accepted > i].iterations.sum() for i in range(k)]


def test_prompt_lookup_iterations_equal_transformers_generate(report, repetitive):
    target = load(repetitive["target"])
    eos = models.eos_token_ids(target)
    analysis = load_analysis(report, ["prompt-lookup"])
    t = analysis.trace("prompt-lookup")
    tokens = pd.read_parquet(report / "tokens.parquet")
    prompts = pd.read_parquet(report / "prompts.parquet").set_index("prompt_id")
    calls = []
    hook = target.model.register_forward_hook(lambda *a: calls.append(1))
    accepted_somewhere = 0
    try:
        for row, prompt_id in enumerate(t.prompt_ids):
            prompt = torch.tensor([list(prompts.loc[prompt_id, "prompt_tokens"])])
            rows = tokens[(tokens.draft == "prompt-lookup") & (tokens.prompt_id == prompt_id)].sort_values("position")
            for k in range(1, K_MAX + 1):
                calls.clear()
                out = target.model.generate(
                    prompt, attention_mask=torch.ones_like(prompt), prompt_lookup_num_tokens=k,
                    max_matching_ngram_size=2, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos,
                    pad_token_id=eos[0],
                )
                assert out[0, prompt.shape[1]:].tolist() == rows.target_token.tolist()
                assert t.blocks.iterations[row, k - 1] == len(calls), (prompt_id, k)
                accepted_somewhere += t.blocks.accepted[row, k - 1] > 0
    finally:
        hook.remove()
    assert accepted_somewhere  # proposals were accepted: the iterations are not just one per token
    assert t.blocks.proposed.sum() > 0


def test_prompt_lookup_draft_is_built_with_the_targets_eos(report):
    run = json.loads((report / "run.json").read_text())
    info = next(d for d in run["drafts"] if d["name"] == "prompt-lookup")
    assert info == {"name": "prompt-lookup", "kind": "prompt-lookup", "max_matching_ngram_size": 2, "eos_ids": [2]}
    assert PromptLookup(2, (2,)).propose([5, 6, 2, 5, 6], 3) == []


def records(match: str, past: str, kind: str = "model", no_proposal: str = "") -> conventions.DraftRecords:
    """DraftRecords of one prompt from a match string (the continuation) and `past` (past its end)."""
    n = len(match)
    draft_token = [-1 if i < len(no_proposal) and no_proposal[i] == "1" else 0 for i in range(n + len(past))]
    rows = pd.DataFrame({"prompt_id": "p", "domain": "d", "position": range(n), "target_token": 0,
                         "draft_token": draft_token[:n], "match": [c == "1" for c in match]})
    after = pd.DataFrame({"prompt_id": "p", "domain": "d", "position": range(n, n + len(past)), "target_token": 0,
                          "draft_token": draft_token[n:], "match": [c == "1" for c in past]})
    return conventions.records_from_frames("x", kind, rows, after, None, K_MAX)


def totals(rec, k, engine="vllm"):
    c = conventions.counters_of(rec, k, engine)
    return c.num_drafts, c.num_draft_tokens, c.num_accepted_tokens, c.num_accepted_tokens_per_pos


def test_worked_example_of_the_docstring():
    rec = records("11101", "10")
    # vLLM, k = 2: position 0 comes from prefill. Block at 1: 1, 2 match → accept 2; next at 4: 4 matches,
    # 5 (past the end) matches → accept 2 (counted before the cut). 2 drafts, 4 tokens, 4 accepted.
    assert totals(rec, 2) == (2, 4, 4, (2, 2))
    # transformers: blocks at 0 (2), 3 (0), 4 (1: nothing past the end is accepted).
    assert totals(rec, 2, "transformers") == (3, 6, 3, (2, 1))
    # k = 1, vLLM: blocks at 1 (1), 3 (0), 4 (1, the bonus token past the end cut) → 3 drafts, 2 accepted.
    assert totals(rec, 1) == (3, 3, 2, (2,))


def test_old_ngram_steps_without_a_proposal_are_no_drafts():
    # specprof's ngram draft: positions 2 and 3 had no proposal (-1). vLLM, k = 2: block at 1 rejects at 1
    # (a proposal that was wrong) → draft of 2 tokens; at 2 nothing is proposed → no draft, one token; same
    # at 3; block at 4 accepts 4 and then runs out at 5 (no proposal past the end) → 1 proposed.
    rec = records("00001", "0", kind="ngram", no_proposal="001101")
    c = conventions.counters_of(rec, 2)
    assert (c.num_drafts, c.num_draft_tokens, c.num_accepted_tokens) == (2, 3, 1)
    assert not c.exact and "no engine's proposer" in c.note


def test_schema_1_report_says_what_it_cannot_count():
    for draft in ("/tmp/fx/models/close", "ngram"):
        c = conventions.engine_counters(OLD, draft, 3)
        assert c.num_drafts > 0
        rec = conventions.load_records(OLD, draft)
        assert not rec.has_past_end
        _, short = conventions.prompt_counters(rec, 3)
        # flagged exactly when some block's acceptances reach the end of a continuation
        assert c.exact == (not short.any() and draft != "ngram")
        if short.any():
            assert "schema 1" in c.note and "lower bound" in c.note


def test_engine_counters_refuses_bad_input(report):
    with pytest.raises(SpecprofError, match="--draft nope: not in"):
        conventions.engine_counters(report, "nope", 2)
    with pytest.raises(SpecprofError, match="--k 9: the report covers k = 1..8"):
        conventions.engine_counters(report, "early-exit:1", 9)
    with pytest.raises(SpecprofError, match="prompt 'zz': not in the report"):
        conventions.engine_counters(report, "early-exit:1", 2, prompt_ids=["zz"])
    with pytest.raises(SpecprofError, match="--engine sglang: unknown engine"):
        conventions.engine_counters(report, "early-exit:1", 2, engine="sglang")


def test_recommend_engine_vllm_json(report, cli):
    r = cli("recommend", report, "--engine", "vllm", "--k", 3, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    prompts = pd.read_parquet(report / "prompts.parquet")
    entries = out["recommendations"]
    assert {e["domain"] for e in entries} == {"alpha", "beta", "ALL"}
    assert len(entries) == 5 * 3
    for e in entries:
        counters = e["engine_counters"]
        assert set(counters) == {"num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_accepted_tokens_per_pos"}
        assert e["engine"] == "vllm" and e["engine_k"] == 3 and len(counters["num_accepted_tokens_per_pos"]) == 3
        ids = prompts.prompt_id if e["domain"] == "ALL" else prompts[prompts.domain == e["domain"]].prompt_id
        expected = conventions.engine_counters(report, e["draft"], 3, prompt_ids=list(ids))
        assert counters == expected.as_dict()
        drafts = counters["num_drafts"]
        assert e["mean_acceptance_length"] == pytest.approx(1 + counters["num_accepted_tokens"] / drafts)
        assert e["per_position_acceptance_rate"] == pytest.approx(
            [a / counters["num_drafts"] for a in counters["num_accepted_tokens_per_pos"]])
        assert e["engine_draft_acceptance_rate"] == pytest.approx(
            counters["num_accepted_tokens"] / counters["num_draft_tokens"])
    # without --k: each entry at its own best k
    r = cli("recommend", report, "--engine", "vllm", "--json")
    for e in json.loads(r.stdout)["recommendations"]:
        assert e["engine_k"] == e["best_k"] == len(e["engine_counters"]["num_accepted_tokens_per_pos"])
    # the table speaks vLLM's language
    r = cli("recommend", report, "--engine", "vllm", "--k", 3)
    assert r.exit_code == 0, r.output
    assert "mean acceptance length" in r.stdout and "per-position acceptance rate" in r.stdout


def test_recommend_json_without_engine_is_unchanged(report, cli):
    plain = json.loads(cli("recommend", report, "--json").stdout)
    assert all("engine_counters" not in e for e in plain["recommendations"])
    r = cli("recommend", report, "--k", 3)
    assert r.exit_code == 2 and r.stderr.strip() == (
        "specprof: error: --k goes with --engine or --emit (recommend picks each domain's best k)")


def test_emit_configs(report, cli, repetitive):
    # With free drafting (--cost-ratio 0) the corpus as a whole is GO for the close model draft.
    args = ["recommend", report, "--cost-ratio", 0, "--domain", "ALL", "--min-speedup", 1.05]
    best = json.loads(cli(*args, "--draft", str(repetitive["close"]), "--json").stdout)["recommendations"][0]
    assert best["decision"] == "GO"
    r = cli(*args, "--draft", str(repetitive["close"]), "--emit", "vllm")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"method": "draft_model", "model": str(repetitive["close"]),
                                    "num_speculative_tokens": best["best_k"]}
    r = cli(*args, "--draft", str(repetitive["close"]), "--emit", "sglang", "--k", 3)
    assert r.stdout.strip() == (f"--speculative-algorithm STANDALONE --speculative-draft-model-path "
                                f"{repetitive['close']} --speculative-num-steps 3 --speculative-eagle-topk 1 "
                                "--speculative-num-draft-tokens 4")
    ngram = json.loads(cli(*args, "--draft", "vllm-ngram:1:2", "--json").stdout)["recommendations"][0]
    r = cli(*args, "--draft", "vllm-ngram:1:2", "--emit", "vllm", "--k", 4)
    # One --draft and --k: the config is printed either way; when not GO, stderr says it is not recommended.
    assert json.loads(r.stdout) == {"method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 2,
                                    "num_speculative_tokens": 4}
    assert ("note: not recommended: domain ALL should enable speculation: no draft is GO there" in r.stderr) == (
        ngram["decision"] != "GO")
    r = cli(*args, "--draft", "early-exit:1", "--emit", "vllm", "--k", 2, "--min-speedup", 1.0)
    early = json.loads(cli(*args, "--draft", "early-exit:1", "--min-speedup", 1.0, "--json").stdout)
    assert json.loads(r.stdout)["model"] == "specprof-draft-L1"
    assert "specprof export-draft early-exit:1" in r.stderr
    assert ("not recommended" in r.stderr) == (early["recommendations"][0]["decision"] != "GO")
    # Nothing pays at 100×: a plain statement, alone on stdout.
    r = cli("recommend", report, "--emit", "vllm", "--min-speedup", 100)
    assert r.exit_code == 0 and r.stdout.startswith("no domain should enable speculation: no draft is GO there (")
    assert len(r.stdout.strip().splitlines()) == 1


def test_export_draft_proposes_what_early_exit_proposes(repetitive, cli, tmp_path):
    out = tmp_path / "ee1"
    r = cli("export-draft", "early-exit:1", "--target", repetitive["target"], "--out", out)
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["LlamaForCausalLM"]
    target = load(repetitive["target"]).model
    exported = load(out)
    assert exported.num_layers == 1
    ids = torch.tensor([[5, 9, 17, 30, 5, 9, 44, 2, 61]])
    with torch.inference_mode():
        torch.testing.assert_close(exported.model(ids).logits, early_exit_view(target, 1)(ids).logits)
    r = cli("export-draft", "early-exit:1", "--target", repetitive["target"], "--out", out)
    assert r.exit_code == 2 and "directory is not empty; pass --overwrite" in r.stderr
    r = cli("export-draft", "early-exit:2", "--target", repetitive["target"], "--out", tmp_path / "x")
    assert r.exit_code == 2 and "L must be between 1 and 1 (the target has 2 layers)" in r.stderr


def test_inspect_marks_the_simulated_blocks_of_a_block_dependent_draft(report, cli):
    analysis = load_analysis(report, ["vllm-ngram:1:2"])
    t = analysis.trace("vllm-ngram:1:2")
    row = int(np.argmax(t.blocks.accepted[:, 7]))  # the prompt with the most acceptances at k = 8
    prompt_id = str(t.prompt_ids[row])
    r = cli("inspect", report, "--draft", "vllm-ngram:1:2", "--k", 8, "--prompt", prompt_id, "--json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)["shown"][0]
    starts = [tok["position"] for tok in shown["tokens"] if tok["block_start"]]
    assert len(starts) == t.blocks.iterations[row, 7]  # the blocks the figures count, not the match vector's
    assert len(starts) < shown["n_tokens"]  # some block accepted a copied run


def test_recommend_engine_on_a_schema_1_report(cli, monkeypatch):
    monkeypatch.chdir(OLD.parent)
    r = cli("recommend", "report-a", "--engine", "vllm", "--json")
    assert r.exit_code == 0, r.output
    for e in json.loads(r.stdout)["recommendations"]:
        rec = conventions.load_records("report-a", e["draft"])
        ids = None if e["domain"] == "ALL" else list(rec.prompt_ids[rec.domains == e["domain"]])
        c = conventions.engine_counters("report-a", e["draft"], e["engine_k"], prompt_ids=ids)
        assert e["engine_counters"] == c.as_dict()
        assert e["engine_counters_exact"] == c.exact and (e["engine_counters_note"] or "") == c.note
    assert any(not e["engine_counters_exact"] for e in json.loads(r.stdout)["recommendations"])  # ngram is flagged


def test_recommend_engine_and_emit_refuse_bad_input(report, cli):
    for args, line in [
        (["--engine", "sglang"], "--engine sglang: unknown engine (use vllm, or transformers for specprof's own)"),
        (["--emit", "tgi"], "--emit tgi: unknown engine (use vllm, sglang, vllm-synthetic, sglang-synthetic or "
                            "trtllm-synthetic)"),
        (["--engine", "vllm", "--k", 9], "--k 9: the report covers k = 1..8"),
    ]:
        r = cli("recommend", report, *args)
        assert r.exit_code == 2 and r.stderr.strip() == f"specprof: error: {line}", r.output


def test_verify_runs_block_dependent_drafts_as_simulated(report, cli):
    # verify's live loop proposes with the engine's rule per block; the report's simulation predicted it
    r = cli("verify", report, "--draft", "vllm-ngram:1:2", "--draft", "prompt-lookup", "--k", 4, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["identical_outputs"] and len(out["rows"]) == 2 * 3
    for row in out["rows"]:
        assert row["measured_tokens_per_iter"] == pytest.approx(row["predicted_tokens_per_iter"], abs=1e-12)


def test_counters_flag_only_blocks_that_ran_out_of_records():
    rows = pd.DataFrame({"prompt_id": "p", "domain": "d", "position": range(4), "target_token": 0,
                         "draft_token": 0, "match": [False, True, True, True]})
    v1 = conventions.records_from_frames("x", "model", rows, None, None, K_MAX)  # schema 1: nothing past the end
    # k = 3: the block at 1 accepts 1, 2, 3 = k, complete: nothing unseen, exact.
    assert conventions.counters_of(v1, 3).exact
    # k = 4: it accepted up to the end with one more to check, which vLLM does past the end: a lower bound.
    c = conventions.counters_of(v1, 4)
    assert (c.num_drafts, c.num_accepted_tokens, c.exact) == (1, 3, False) and "schema 1" in c.note
    # a schema-2 report whose context left no room past the end says that instead
    empty = rows.iloc[:0]
    short = conventions.records_from_frames("x", "model", rows, empty, None, K_MAX)
    assert "context ran out" in conventions.counters_of(short, 4).note
    # the transformers convention never looks past the end: always exact
    assert conventions.counters_of(v1, 4, "transformers").exact
