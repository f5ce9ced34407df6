"""Shared fixtures: tiny models built once per session, a small corpus, and a CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: CI machines are slow and shared, and a first pyarrow import takes a while.
settings.register_profile("specprof", deadline=None)
settings.load_profile("specprof")

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("COLUMNS", "200")  # pin the terminal width for Rich output
# The vLLM servers the tests start hold a few short requests: 2 GiB of KV cache instead of vLLM's default
# (most of the machine's memory), which also takes seconds off every server start.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n 2`: one thread per worker, so two workers share two cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from tiny import make_model  # noqa: E402

PROMPTS = [
    ("a-1", "alpha", "hello world"),
    ("a-2", "alpha", "The quick brown fox jumps over the lazy dog and then some more text follows here"),
    ("a-3", "alpha", "x"),
    ("a-4", "alpha", "abcabcabcabcabc"),
    ("b-1", "beta", "SELECT * FROM table WHERE id = 1;"),
    ("b-2", "beta", "{\"name\": \"value\", \"list\": [1, 2, 3]}"),
    ("b-3", "beta", "Once upon a time"),
    ("b-4", "beta", "0123456789 0123456789 0123456789 0123456789 0123456789 0123456789"),
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny random Llama models sharing one character tokenizer.

    target: 2 layers. close / far: the target with small / larger weight noise, so the draft agrees
    often (α ≈ 0.6) or seldom (α ≈ 0.2), with runs of every length. deep: a 4-layer target.
    """
    root = tmp_path_factory.mktemp("tiny")
    target = make_model(root / "target", seed=0)
    return {
        "target": target,
        "close": make_model(root / "close", seed=1, noise_from=target, noise=0.03),
        "far": make_model(root / "far", seed=2, noise_from=target, noise=0.15),
        "deep": make_model(root / "deep", seed=3, layers=4),
    }


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "domain": d, "prompt": p}) + "\n" for i, d, p in PROMPTS))
    return path


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The Python of a vLLM environment (SPECPROF_VLLM_PYTHON, else .venv-vllm): the `vllm`-marked tests skip
    without one, and fail instead under SPECPROF_REQUIRE_VLLM=1, which .ci/run sets."""
    from specprof.engines.vllm import launcher
    from specprof.errors import SpecprofError

    root = Path(__file__).resolve().parents[1]
    python = os.environ.get("SPECPROF_VLLM_PYTHON") or str(root / ".venv-vllm" / "bin" / "python")
    try:
        launcher.check_python(python)
    except SpecprofError as e:
        if os.environ.get("SPECPROF_REQUIRE_VLLM") == "1":
            pytest.fail(f"SPECPROF_REQUIRE_VLLM=1 but no usable vLLM: {e}")
        pytest.skip(f"no vLLM environment ({e}); set SPECPROF_VLLM_PYTHON")
    return python


@pytest.fixture(scope="session")
def draft_dir(tmp_path_factory) -> Path:
    """SmolLM2's first 26 layers with its norm and head, saved as an ordinary model directory (vLLM's draft)."""
    import torch

    from specprof.engines.hf import models
    from specprof.engines.hf.drafts import early_exit_view

    out = tmp_path_factory.mktemp("early-exit-26")
    target = models.load_model(None, torch.device("cpu"), torch.float32)
    early_exit_view(target.model, 26).save_pretrained(out)
    target.tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def cli():
    """Run the real `specprof` Typer app; returns the click Result (stdout and stderr apart)."""
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture(scope="session")
def small_report(tiny, corpus, tmp_path_factory) -> Path:
    """A finished greedy profile of `corpus` (2 domains × 4 prompts): drafts close and ngram, k = 1..4."""
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("small-report") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", "ngram",
            "--k-max", 4, "--max-new-tokens", 24, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def greedy_profile(tiny, corpus, tmp_path_factory) -> Path:
    """A finished greedy profile of `corpus` with drafts close, far, early-exit:1 and ngram:2, k = 1..8,
    32 new tokens: the report the speculative loops (plain and with a confidence threshold) are checked on."""
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("greedy-profile") / "report"
    args = ["profile", corpus, "--target", tiny["target"], "--draft", tiny["close"], "--draft", tiny["far"],
            "--draft", "early-exit:1", "--draft", "ngram:2", "--k-max", 8, "--max-new-tokens", 32,
            "--batch-size", 3, "--out", out]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


# --- the real embedded target (tests marked realmodel) ----------------------------------------------


@pytest.fixture(scope="session")
def real_model_threads():
    """One OpenMP thread for the SmolLM2 tests: on a shared 2-core machine two threads stall each other (a
    fresh clone's assisted-generation test took 20 minutes at load 3–4); at batch 1 the second thread buys
    little on an idle one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2(real_model_threads):
    """The embedded SmolLM2-135M-Instruct target (converted once per machine), loaded once per session,
    float32 on the CPU. Tests must not change its weights or its generation config."""
    import torch

    from specprof.engines.hf import models

    return models.load_model(None, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def smollm2_report(real_model_threads, tmp_path_factory):
    """One profile of the real target with its own early exit at layer 26, shared by the real-model exactness
    checks: one prompt each of code and math, k = 1..8, 32 new tokens. Forward times are measured with fewer
    repeats than a user's run (nothing here asserts a time)."""
    from typer.testing import CliRunner

    from specprof.engines.hf import measure
    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("smollm2") / "report"
    args = ["profile", "sample_prompts", "--draft", "early-exit:26", "--domain", "code", "--domain", "math",
            "--limit", 1, "--k-max", 8, "--max-new-tokens", 32, "--out", out]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(measure, "WARMUP", 1)
        patch.setattr(measure, "REPEATS", 3)
        r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def pytest_collection_modifyitems(config, items):
    """Under `-n 2 --dist loadgroup` (the README's test command) every real-vLLM test runs on one worker, one
    server at a time (vLLM binds its server to one core); the other worker runs the rest meanwhile."""
    for item in items:
        if item.get_closest_marker("vllm"):
            item.add_marker(pytest.mark.xdist_group("vllm"))
