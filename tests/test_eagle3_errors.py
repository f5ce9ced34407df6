"""EAGLE-3 heads: bad input is one line on stderr and exit 2 (a head for another target, neither layout,
another verifier, a head with `profile --engine vllm`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eagle3_heads import make_head
from tiny import make_model

from specprof.engines.hf.eagle3_load import default_aux_layers, head_directory, layout_of


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eagle3-bad")
    wide = make_model(root / "wide", seed=5, layers=4, hidden=64)
    return {"wide_head": make_head(root / "wide-head", wide, layer_ids=(0, 1, 2)),
            "head": make_head(root / "head", tiny["deep"], layer_ids=(0, 2, 4))}


def edit(src: Path, dst: Path, change) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    config = json.loads((dst / "config.json").read_text())
    change(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def one_line_exit_2(cli, *args) -> str:
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_layouts_and_defaults(models):
    assert layout_of({"architectures": ["LlamaForCausalLMEagle3"]}) == "eagle"
    assert layout_of({"speculators_model_type": "eagle3"}) == "speculators"
    assert layout_of({"architectures": ["LlamaForCausalLM"]}) is None
    assert default_aux_layers(30) == (2, 15, 27)  # SmolLM2's 30 layers: vLLM's default captures 2, 15, 27
    assert head_directory(str(models["head"])) == models["head"]  # a bare directory recognised by its config
    assert head_directory("ngram:3") is None


def test_bad_heads(cli, tiny, corpus, models, tmp_path):
    base = ["profile", corpus, "--target", tiny["deep"], "--limit", 1, "--max-new-tokens", 4, "--out", tmp_path / "r"]
    err = one_line_exit_2(cli, *base, "--draft", f"eagle3:{models['wide_head']}")
    assert "hidden states of size 64" in err and "32" in err
    vocab = edit(models["head"], tmp_path / "vocab", lambda c: c.update(vocab_size=500))
    assert "vocabulary has 500 tokens" in one_line_exit_2(cli, *base, "--draft", f"eagle3:{vocab}")
    plain = edit(models["head"], tmp_path / "plain", lambda c: c.update(architectures=["LlamaForCausalLM"]))
    assert "neither EAGLE-3 layout" in one_line_exit_2(cli, *base, "--draft", f"eagle3:{plain}")
    assert "not a directory with a config.json" in one_line_exit_2(cli, *base, "--draft", f"eagle3:{tmp_path}/none")
    spec = make_head(tmp_path / "spec", tiny["deep"], layout="speculators", layer_ids=(0, 2, 4),
                     verifier="meta-llama/Llama-3.1-8B-Instruct")
    err = one_line_exit_2(cli, *base, "--draft", str(spec))
    assert "trained for meta-llama/Llama-3.1-8B-Instruct" in err
    layers = edit(models["head"], tmp_path / "layers", lambda c: c["eagle_config"].update(
        eagle_aux_hidden_state_layer_ids=[0, 2, 9]))
    assert "outside the target's 0..4" in one_line_exit_2(cli, *base, "--draft", f"eagle3:{layers}")


def test_vllm_engine_refuses_heads(cli, tiny, corpus, models, tmp_path):
    err = one_line_exit_2(cli, "profile", corpus, "--engine", "vllm", "--url", "http://127.0.0.1:9",
                          "--target", tiny["deep"], "--draft", f"eagle3:{models['head']}", "--out", tmp_path / "r")
    assert "profile EAGLE-3 heads with the transformers engine" in err


def test_vllm_refusal_imports_no_transformers_engine(tiny, corpus, models, tmp_path):
    """`profile --engine vllm` refuses a head kind from the registry, never importing engines.hf."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.startswith('specprof.engines.hf'): raise ImportError('engines.hf imported: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from specprof.ui.cli import main\n"
        "sys.argv = ['specprof'] + sys.argv[1:]\n"
        "main()\n"
    )
    args = ["profile", str(corpus), "--engine", "vllm", "--url", "http://127.0.0.1:9", "--target", str(tiny["deep"]),
            "--draft", f"eagle3:{models['head']}", "--out", str(tmp_path / "r")]
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "profile EAGLE-3 heads with the transformers engine" in r.stderr


def test_the_registry_spells_a_head_without_its_files():
    """A report read elsewhere: the kind spells the head by run.json's `source`, else by the spec's DIR."""
    from specprof.core.simulation import kinds
    from specprof.core.vocabulary import EAGLE3, SGLANG, VLLM

    head = kinds.KINDS[EAGLE3]
    assert kinds.parse("eagle3:/nowhere/head").kind is head and head.proposal is kinds.Proposal.HEAD
    assert head.vllm_config("eagle3:/nowhere/head", {}, 2) == {"method": "eagle3", "model": "/nowhere/head",
                                                               "num_speculative_tokens": 2}
    assert head.sglang_flags("eagle3:x", {"source": "/h"}, 1)[:4] == ["--speculative-algorithm", "EAGLE3",
                                                                      "--speculative-draft-model-path", "/h"]
    assert len(head.notes("eagle3:x", {}, "t", SGLANG)) == len(head.notes("eagle3:x", {}, "t", VLLM)) + 1
