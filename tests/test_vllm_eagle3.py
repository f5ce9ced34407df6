"""Against a real vLLM: an EAGLE-3 head's counters and continuations equal vLLM's, k = 1..4.

The embedded SmolLM2-135M-Instruct target with a one-layer head written in the EAGLE layout (random
weights plus a copy of the captured embeddings through fc, so it proposes the token before the last
one and sometimes is right), served by vLLM with {"method": "eagle3", "model": DIR}. `profile
--draft eagle3:DIR` on 4 sample prompts × 32 tokens, then `verify --engine vllm --launch` at
k = 1..4 (one server each, about 40–60 s on 2 cores). Skipped without a vLLM environment, as
tests/test_vllm.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eagle3_heads import make_head
from test_vllm import KS, MAX_NEW, PROMPTS, ROOT, side_by_side

pytestmark = [pytest.mark.vllm, pytest.mark.realmodel]


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Path:
    import torch

    from specprof.engines.hf import models

    target = models.load_model(None, torch.device("cpu"), torch.float32)
    rms = float(target.model.model.embed_tokens.weight.detach().float().pow(2).mean().sqrt())
    return make_head(tmp_path_factory.mktemp("smollm2-head"), Path(target.source), layer_ids=(0, 15, 27),
                     noise=0.02, copy_gain=1 / rms)


@pytest.fixture(scope="module")
def report(head, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    root = tmp_path_factory.mktemp("vllm-eagle3")
    corpus = root / "prompts.jsonl"
    rows = [json.loads(line) for f in sorted((ROOT / "sample_prompts").glob("*.jsonl")) for line in f.open()]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] in PROMPTS))
    out = root / "report"
    args = ["profile", corpus, "--draft", f"eagle3:{head}", "--k-max", 4, "--max-new-tokens", MAX_NEW, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_head_counters_equal_vllm_metrics(cli, report, head, vllm_python):
    args = ["verify", report, "--engine", "vllm", "--launch", "--vllm-python", vllm_python, "--draft",
            f"eagle3:{head}", "--json"]
    for k in KS:
        args += ["--k", k]
    r = cli(*args)
    assert r.exit_code in (0, 1), r.output
    out = json.loads(r.stdout)
    print(side_by_side(out))
    assert out["error"] is None and out["notes"] == []
    assert out["prompts_done"] == {k: len(PROMPTS) for k in KS}
    assert [d for d in out["continuations"] if d["verdict"] != "near-tie"] == []
    assert r.exit_code == 0 and all(c["equal"] for c in out["counters"]), side_by_side(out)
