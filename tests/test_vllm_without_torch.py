"""The vLLM path stands on its own: `profile --engine vllm` and `verify --engine vllm` run where torch
cannot be imported (DESIGN: the vLLM engine and its commands import no `engines.hf`).

The CLI runs in a subprocess whose `sys.modules["torch"]` is None: `import torch` raises ImportError
and transformers sees no torch (it then offers tokenizers and configs only, as in an environment
without torch). The fake servers (tests/fake_vllm.py) run here, in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_vllm import FakeVllm, model_logprobs

from specprof.core.records import reportfiles, tokentext
from specprof.core.simulation import conventions

K = 2
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # import torch raises ImportError; transformers finds no torch
from specprof.ui.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
loaded = sorted(m for m, v in sys.modules.items() if (m == "torch" or m.startswith("torch.")) and v is not None)
print("TORCH-LOADED:", ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def run_without_torch(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *[str(a) for a in args]], capture_output=True,
                          text=True, env=env, timeout=600)


def torch_loaded(done: subprocess.CompletedProcess) -> str:
    return done.stderr.rpartition("TORCH-LOADED:")[2].strip()


@pytest.fixture(scope="module")
def vllm_report(tiny, corpus, tmp_path_factory):
    decode = tokentext.load({"target": {"source": str(tiny["target"])}}).decode
    fake = FakeVllm(decode, {}, {}, model=model_logprobs(tiny["target"]))
    url = fake.start()
    out = tmp_path_factory.mktemp("no-torch") / "report"
    try:
        done = run_without_torch("profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--draft",
                                 "vllm-ngram:1:2", "--url", url, "--k-max", 4, "--max-new-tokens", 16, "--out", out)
    finally:
        fake.stop()
    return out, done


def test_profile_engine_vllm_runs_without_torch(vllm_report):
    out, done = vllm_report
    assert done.returncode == 0, done.stderr
    assert "TORCH-LOADED:" in done.stderr and torch_loaded(done) == ""
    report = reportfiles.load_report(out)
    assert report.run["engine"]["name"] == "vllm"
    assert len(report.frame("tokens")) > 0


def test_verify_engine_vllm_runs_without_torch(vllm_report):
    out, _ = vllm_report
    report = reportfiles.load_report(out)
    prompts = report.frame("prompts")
    draft = report.run["drafts"][0]["name"]
    tokens = report.frame("tokens")
    ids = {str(p): tuple(int(t) for t in toks) for p, toks in zip(prompts["prompt_id"], prompts["prompt_tokens"])}
    mine = tokens[tokens["draft"] == draft].sort_values(["prompt_id", "position"])
    continuations = {ids[str(p)]: [int(t) for t in g["target_token"]] for p, g in mine.groupby("prompt_id")}
    counters = {}
    for pid, prompt in ids.items():  # the server counts what the conventions predict: verify must agree
        c = conventions.engine_counters(out, draft, K, prompt_ids=[pid])
        counters[prompt] = (c.num_drafts, c.num_draft_tokens, c.num_accepted_tokens, c.num_accepted_tokens_per_pos)
    fake = FakeVllm(tokentext.load(report.run).decode, continuations, counters, k=K)
    url = fake.start()
    try:
        done = run_without_torch("verify", out, "--engine", "vllm", "--url", url, "--k", K, "--json")
    finally:
        fake.stop()
    assert done.returncode == 0, done.stderr
    assert torch_loaded(done) == ""
    result = json.loads(done.stdout)
    assert result["counters"] and all(row["equal"] for row in result["counters"])
