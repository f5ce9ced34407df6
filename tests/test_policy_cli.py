"""`recommend` with confidence-threshold policies: figures checked against the simulation by hand and on
synthetic reports whose answer is known, through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from specprof.core.records import reportfiles, schema
from specprof.core.simulation.policy import TAUS, simulate_policy

POLICY_KEYS = {"k_max", "tau", "tokens_per_iter", "tokens_per_iter_lo", "tokens_per_iter_hi", "tokens_per_iter_exact",
               "draft_steps_per_iter_lo_bound", "draft_steps_per_iter_hi_bound", "speedup_lo_bound",
               "speedup_hi_bound", "speedup_lo", "speedup_hi", "fixed_k", "fixed_speedup", "gain_lo", "gain_hi",
               "beats_fixed_k", "verdict"}


def as_json(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def tiny_report(tiny, corpus, tmp_path_factory):
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("policy-cli") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", "early-exit:1",
            "--draft", "ngram", "--k-max", 4, "--max-new-tokens", 24, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def simulate_domain(tokens: pd.DataFrame, draft: str, domain: str, k_max: int, tau: float, cost_ratio: float):
    """Pooled (tokens/iter, mean steps lo, hi, speedup at the upper and lower step bounds), flat costs."""
    rows = tokens[(tokens.draft == draft) & ((tokens.domain == domain) | (domain == "ALL"))]
    n_tokens = iterations = steps_lo = steps_hi = 0
    for _, p in rows.sort_values("position").groupby("prompt_id"):
        blocks = simulate_policy(p.match.tolist(), p.draft_top1_p.astype(float).tolist(), k_max, tau)
        n_tokens += len(p)
        iterations += len(blocks)
        steps_lo += sum(b.steps_lo for b in blocks)
        steps_hi += sum(b.steps_hi for b in blocks)
    # flat costs: a block of n steps costs n·c + 1 (no catch-up term with --cost-ratio)
    return (n_tokens / iterations, steps_lo / iterations, steps_hi / iterations,
            n_tokens / (steps_hi * cost_ratio + iterations), n_tokens / (steps_lo * cost_ratio + iterations))


def test_recommend_json_policy_equals_the_simulation(tiny_report, cli):
    data = as_json(cli("recommend", tiny_report, "--cost-ratio", 0.1, "--json"))
    tokens = pd.read_parquet(tiny_report / "tokens.parquet")
    grid = data["threshold_policy"]
    assert grid["simulated"] and grid["taus"] == list(TAUS) and grid["k_max"] == [2, 3, 4]
    assert set(grid["not_simulated"]) == {"ngram"}  # an n-gram lookup has no confidence to threshold
    for rec in data["recommendations"]:
        pol = rec["threshold_policy"]
        if rec["draft"] == "ngram":
            assert pol is None
            continue
        assert set(pol) == POLICY_KEYS
        tpi, lo, hi, s_lo, s_hi = simulate_domain(tokens, rec["draft"], rec["domain"], pol["k_max"], pol["tau"], 0.1)
        assert pol["tokens_per_iter"] == pytest.approx(tpi)
        assert pol["draft_steps_per_iter_lo_bound"] == pytest.approx(lo)
        assert pol["draft_steps_per_iter_hi_bound"] == pytest.approx(hi)
        assert pol["speedup_lo_bound"] == pytest.approx(s_lo) and pol["speedup_hi_bound"] == pytest.approx(s_hi)
        assert pol["speedup_lo"] <= pol["speedup_lo_bound"] <= pol["speedup_hi_bound"] <= pol["speedup_hi"]
        assert pol["tokens_per_iter_lo"] <= pol["tokens_per_iter"] <= pol["tokens_per_iter_hi"]
        assert pol["gain_lo"] <= pol["speedup_lo_bound"] - pol["fixed_speedup"] + 1e-12
        assert pol["gain_hi"] >= pol["speedup_hi_bound"] - pol["fixed_speedup"] - 1e-12
        assert (pol["fixed_k"], pol["fixed_speedup"]) == (rec["best_k"], rec["speedup"])
        # the pick: no policy of the grid has a higher guaranteed (lower-bound) speedup
        best = max(simulate_domain(tokens, rec["draft"], rec["domain"], k, t, 0.1)[3] for k in (2, 3, 4) for t in TAUS)
        assert pol["speedup_lo_bound"] == pytest.approx(best)


def test_k_max_1_has_no_policy_to_search(tiny_report, cli):
    data = as_json(cli("recommend", tiny_report, "--cost-ratio", 0.1, "--k-max", 1, "--json"))
    assert data["threshold_policy"] == {"simulated": False, "note": "threshold policies need k_max ≥ 2"}
    assert all(r["threshold_policy"] is None for r in data["recommendations"])


def test_recommend_table_shows_the_policy_and_the_bound_note(tiny_report, cli):
    r = cli("recommend", tiny_report, "--cost-ratio", 0.1)
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "confidence-threshold drafting" in text and "gain vs fixed k" in text
    assert "its draft steps are bounded" in text and "its own wrong prefix" in text
    assert "ngram: an n-gram draft proposes with probability 1 or not at all" in text


# --- synthetic reports with a known answer ---------------------------------------------------------

LONG = [(True, 0.95)] * 7 + [(False, 0.05)]  # 7 confident matches, then a mismatch the draft doubts
SHORT = [(False, 0.05)]  # an immediate mismatch the draft doubts
N_PROMPTS = 12


def segments(i: int) -> tuple[int, int]:
    """Prompt i holds 1 + i % 3 LONG and 2 + i % 4 SHORT segments: 24 LONG and 42 SHORT over 12 prompts."""
    return 1 + i % 3, 2 + i % 4


def write_report(directory, temperature: float = 0.0, doubt_mismatches: bool = True):
    frames = []
    for i in range(N_PROMPTS):
        n_long, n_short = segments(i)
        rec = [r for j in range(max(n_long, n_short)) for r in (LONG * (j < n_long) + SHORT * (j < n_short))]
        match = np.array([m for m, _ in rec])
        top1 = np.array([p if doubt_mismatches else 0.95 for _, p in rec], dtype=np.float32)
        n = len(rec)
        frames.append(pd.DataFrame({
            "draft": "d", "prompt_id": f"p{i:02d}", "domain": "chat", "position": np.arange(n, dtype=np.int32),
            "target_token": np.zeros(n, np.int32), "draft_token": np.where(match, 0, 1).astype(np.int32),
            "match": match, "accept_prob": match.astype(np.float32), "target_p": np.ones(n, np.float32),
            "draft_q": match.astype(np.float32), "target_entropy": np.zeros(n, np.float32), "draft_top1_p": top1,
        }))
    directory.mkdir(parents=True)
    reportfiles.write_table(directory / "tokens.parquet", pd.concat(frames, ignore_index=True), "tokens")
    reportfiles.write_json(directory / "run.json", {
        "schema_version": schema.SCHEMA_VERSION,
        "target": {"name": "synthetic", "fingerprint": "synthetic"},
        "drafts": [{"name": "d", "kind": "model"}],
        "settings": {"k_max": 8, "temperature": temperature, "top_p": 1.0, "max_new_tokens": 512,
                     "chat_template": True},
        "finished_at": "2025-01-01T00:00:00+00:00",
    })
    return directory


def test_a_draft_that_doubts_its_mistakes_beats_fixed_k(tmp_path, cli):
    # 24 LONG, 42 SHORT segments: 24·8 + 42 = 234 tokens. c = 0.5, flat verification (one target step).
    # Policy k_max 7, any τ in the grid (0.05 < τ ≤ 0.95; ties go to the highest, 0.9): a LONG segment is one
    # block of 7 accepted proposals (the 7th is the last allowed) emitting 8 tokens at 7·0.5 + 1 = 4.5; a SHORT
    # one is one doubted proposal, rejected, at 1.5. Every stop is observed: the bounds agree.
    # S = 234 / (24·4.5 + 42·1.5) = 234 / 171. The best fixed k is 1: a LONG segment takes 4 iterations
    # (6 target steps), a SHORT one 1 (1.5): S = 234 / (24·6 + 42·1.5) = 234 / 207. Every prompt is cheaper
    # under the policy, so every resample is too: it beats fixed k beyond the bootstrap's doubt.
    data = as_json(cli("recommend", write_report(tmp_path / "r"), "--cost-ratio", 0.5, "--json"))
    [rec] = [r for r in data["recommendations"] if r["domain"] == "chat"]
    pol = rec["threshold_policy"]
    assert (rec["best_k"], rec["speedup"]) == (1, pytest.approx(234 / 207))
    assert (pol["k_max"], pol["tau"]) == (7, 0.9)
    assert pol["tokens_per_iter"] == pytest.approx(234 / 66)
    assert pol["draft_steps_per_iter_lo_bound"] == pol["draft_steps_per_iter_hi_bound"] == pytest.approx(
        (24 * 7 + 42) / 66)
    assert pol["speedup_lo_bound"] == pol["speedup_hi_bound"] == pytest.approx(234 / 171)
    assert pol["gain_lo"] > 0 and pol["beats_fixed_k"] and pol["verdict"] == "beats fixed k"
    table = cli("recommend", tmp_path / "r", "--cost-ratio", 0.5)
    assert "beats fixed k" in table.stdout


def test_unseen_draft_steps_keep_a_confident_draft_from_beating_fixed_k(tmp_path, cli):
    # The same matches, but the draft is confident (0.95) at its mistakes too. A SHORT segment's block
    # proposes a confident mismatch and may go on: 1..k_max steps, unseen. At its lower step bound the
    # policy is fixed k = k_max; the best of those is k_max 3 (LONG: 2 full blocks at 3·0.5 + 1 = 2.5 each,
    # SHORT: 2.5): 234 / (24·5 + 42·2.5) = 234 / 225, below fixed k = 1's 234 / 207. At the upper bound a
    # SHORT block costs 1.5: 234 / (24·5 + 42·1.5) = 234 / 183. So the gain's sign is unknown.
    data = as_json(cli("recommend", write_report(tmp_path / "r", doubt_mismatches=False), "--cost-ratio", 0.5,
                       "--json"))
    [rec] = [r for r in data["recommendations"] if r["domain"] == "chat"]
    pol = rec["threshold_policy"]
    assert (pol["k_max"], pol["tau"]) == (3, 0.9)
    assert pol["speedup_lo_bound"] == pytest.approx(234 / 225)
    assert pol["speedup_hi_bound"] == pytest.approx(234 / 183)
    assert pol["gain_lo"] < 0 < pol["gain_hi"]
    assert not pol["beats_fixed_k"] and pol["verdict"] == "within uncertainty"


def test_policy_bounds_are_ordered_when_measured_verification_time_does_not_rise(tmp_path, cli):
    # Measured costs where verifying 2 tokens is dear and more are cheap (t_T(n) = 1.0, 2.0, 1.1, 1.1, …):
    # a confident mismatch's unseen steps cost less running on to k_max than stopping at the rejection.
    # Every interval must still read lo ≤ point ≤ hi: the bounds, their 95% CIs and the gain.
    path = write_report(tmp_path / "r", doubt_mismatches=False)
    run = json.loads((path / "run.json").read_text())
    run["timings"] = {"target_forward_s": [1.0, 2.0] + [1.1] * 7, "draft_step_s": {"d": 0.05}, "context_tokens": 64,
                      "draft_catchup_s": {"d": 0.0}}
    reportfiles.write_json(path / "run.json", run)
    data = as_json(cli("recommend", path, "--json"))
    policies = [r["threshold_policy"] for r in data["recommendations"]]
    assert len(policies) == 2 and all(policies)  # chat and ALL
    for pol in policies:
        assert pol["speedup_lo"] <= pol["speedup_lo_bound"] <= pol["speedup_hi_bound"] <= pol["speedup_hi"], pol
        assert pol["draft_steps_per_iter_lo_bound"] <= pol["draft_steps_per_iter_hi_bound"]
        assert pol["tokens_per_iter_lo"] <= pol["tokens_per_iter"] <= pol["tokens_per_iter_hi"]
        gain_lo_point = pol["speedup_lo_bound"] - pol["fixed_speedup"]
        gain_hi_point = pol["speedup_hi_bound"] - pol["fixed_speedup"]
        assert pol["gain_lo"] <= gain_lo_point <= gain_hi_point <= pol["gain_hi"], pol
        assert pol["speedup_lo_bound"] < pol["speedup_hi_bound"]  # the unseen steps leave a real range


def test_sampled_reports_get_no_policy_and_say_why(tmp_path, cli):
    path = write_report(tmp_path / "r", temperature=0.7)
    data = as_json(cli("recommend", path, "--cost-ratio", 0.5, "--json"))
    assert all(r["threshold_policy"] is None for r in data["recommendations"])
    assert data["threshold_policy"]["simulated"] is False
    assert "only at T = 0" in data["threshold_policy"]["note"]
    r = cli("recommend", path, "--cost-ratio", 0.5)
    assert r.exit_code == 0 and "threshold policies are simulated only at T = 0" in " ".join(r.stdout.split())
