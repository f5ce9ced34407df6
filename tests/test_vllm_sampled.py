"""Against a real vLLM at T = 0.7, with its CPU wheel's broken kernel corrected (tests/vllm_patch):
vLLM's per-position acceptance rates in both draft-sampling modes against specprof's expected ones.

SmolLM2-135M-Instruct (fp32, chat template) on 16 sample prompts × 48 new tokens, T = 0.7, top-p 1,
k = 3, one request per prompt with its own seed, sent together (per-prompt counters from each response):
  - the model draft (its first 26 layers as a model directory), `draft_sample_method` greedy (vLLM's
    default) and probabilistic: one server each;
  - vllm-ngram:1:3 (vLLM's n-gram proposer: the greedy rule): one server.
Each per-position rate is compared with specprof's prediction over the same prompts by a paired
bootstrap of the difference (`verify_sampled.position_rows` at 99.9%: a correct prediction fails one
of the 9 comparisons with probability under 1%); the table, with specprof's 95% interval and whether
the engine falls inside it, is printed (-s) for docs/sampling.md.
Also: the probe sees the broken kernel without the patch and a working one with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.realmodel]

ROOT = Path(__file__).resolve().parents[1]
PATCH = str(ROOT / "tests" / "vllm_patch")
N_PROMPTS, MAX_NEW, K, TEMPERATURE = 16, 48, 3, 0.7


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    root = tmp_path_factory.mktemp("vllm-sampled")
    rows = [json.loads(line) for f in sorted((ROOT / "sample_prompts").glob("*.jsonl")) for line in f.open()]
    rows = [r for i, r in enumerate(rows) if i % (len(rows) // N_PROMPTS) == 0][:N_PROMPTS]  # spread over domains
    corpus = root / "prompts.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "report"
    args = ["profile", corpus, "--draft", "early-exit:26", "--draft", "vllm-ngram:1:3", "--k-max", K,
            "--max-new-tokens", MAX_NEW, "--temperature", TEMPERATURE, "--seed", 0, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def serve_and_count(python: str, report: Path, config: dict) -> tuple[list[str], dict]:
    """One server (patched), one seeded request per prompt, all at once; each prompt's counters from its own
    response (`--per-request-spec-decode-metrics detailed`: the per-step drafted / accepted arrays), checked
    to add up to the server's /metrics totals."""
    from concurrent.futures import ThreadPoolExecutor

    from specprof.commands.verify_steps import PER_REQUEST_FLAG, engine_steps
    from specprof.commands.vllm_common import settled_metrics
    from specprof.core.records import reportfiles
    from specprof.engines.vllm import cpu_probe, launcher
    from specprof.engines.vllm.client import SpecCounters

    rep = reportfiles.load_report(report)
    prompts = rep.frame("prompts")
    pids = [str(p) for p in prompts["prompt_id"]]
    os.environ[cpu_probe.EXTRA_PATH_ENV] = PATCH
    try:
        with launcher.launch(python, rep.run["target"]["source"], config, extra=PER_REQUEST_FLAG) as server:
            before = settled_metrics(server.client)

            def one(i: int) -> SpecCounters:
                ids = [int(t) for t in prompts["prompt_tokens"].iloc[i]]
                out, _ = server.client.complete(ids, MAX_NEW, TEMPERATURE, 1.0, seed=1000 + i)
                steps = engine_steps(out.spec_decode)
                assert steps is not None, out.spec_decode
                return SpecCounters(sum(d > 0 for d, _ in steps), sum(d for d, _ in steps), sum(a for _, a in steps),
                                    tuple(sum(a > j for _, a in steps) for j in range(K)))

            with ThreadPoolExecutor(len(pids)) as pool:  # vLLM batches them; each request keeps its own seed
                counts = list(pool.map(one, range(len(pids))))
            total = settled_metrics(server.client).minus(before)
    finally:
        del os.environ[cpu_probe.EXTRA_PATH_ENV]
    summed = SpecCounters(*(sum(getattr(c, f) for c in counts) for f in ("num_drafts", "num_draft_tokens",
                                                                         "num_accepted_tokens")),
                          tuple(sum(c.num_accepted_tokens_per_pos[j] for c in counts) for j in range(K)))
    assert summed == total  # the responses' own counters are the server's
    return pids, dict(zip(pids, counts))


def check(report: Path, draft: str, mode: str, done: list[str], per_prompt: dict) -> list[str]:
    from specprof.commands.verify_sampled import position_rows
    from specprof.core.records import reportfiles

    rows = position_rows(K, reportfiles.load_report(report), draft, done, per_prompt, mode, False, confidence=0.999)
    drafts = sum(c.num_drafts for c in per_prompt.values())
    print(f"{draft} {mode}: vLLM {', '.join(f'{r.engine_rate:.3f}' for r in rows)} ({drafts} drafts) | specprof "
          + ", ".join(_predicted(r) for r in rows))
    assert drafts > 0
    return [f"{draft} {mode} position {r.position}: {r.engine_rate - r.predicted:+.3f} "
            f"(99.9% [{r.diff_lo:+.3f}, {r.diff_hi:+.3f}])" for r in rows if r.verdict == "outside"]


def _predicted(r) -> str:
    inside = r.predicted_lo <= r.engine_rate <= r.predicted_hi
    miss = "" if inside else f" (vLLM outside by {r.engine_rate - r.predicted:+.3f})"
    return f"{r.predicted:.3f} [{r.predicted_lo:.3f}, {r.predicted_hi:.3f}]{miss}"


def test_probe_sees_the_broken_kernel_and_the_patch_fixes_it(vllm_python):
    from specprof.engines.vllm import cpu_probe

    assert cpu_probe.expand_kernel_broken(vllm_python) is True
    os.environ[cpu_probe.EXTRA_PATH_ENV] = PATCH
    try:
        assert cpu_probe.expand_kernel_broken(vllm_python) is False
    finally:
        del os.environ[cpu_probe.EXTRA_PATH_ENV]


def test_sampled_rates_inside_specprofs_prediction(vllm_python, report, draft_dir):
    misses = []
    for mode in ("greedy", "probabilistic"):
        config = {"method": "draft_model", "model": str(draft_dir), "num_speculative_tokens": K,
                  "draft_sample_method": mode}
        misses += check(report, "early-exit:26", mode, *serve_and_count(vllm_python, report, config))
    config = {"method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 3, "num_speculative_tokens": K}
    misses += check(report, "vllm-ngram:1:3", "greedy", *serve_and_count(vllm_python, report, config))
    assert not misses, misses
