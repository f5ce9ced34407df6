"""Every mistake a user can make gets one line on stderr, exit code 2 and no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from tiny import make_model, make_tokenizer

from specprof.core.records import reportfiles, schema
from specprof.errors import SpecprofError


def fails(r, *fragments: str) -> str:
    """Assert a clean usage failure and return the stderr line."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("specprof: error: ")]
    # one error line, last; a progress bar may stand above it when the error comes mid-run
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def profile(cli, tiny, tmp_path):
    def run(prompts, *extra):
        return cli("profile", prompts, "--target", tiny["target"], "--max-new-tokens", 4, "--k-max", 2,
                   "--out", tmp_path / "out", *extra)

    return run


def test_corpus_errors(profile, tmp_path):
    fails(profile(tmp_path / "nope.jsonl"), "nope.jsonl: no such file or directory")
    fails(profile(write(tmp_path / "a.jsonl", '{"prompt": "ok"}\n{"prompt": \n')), "a.jsonl:2: invalid JSON")
    fails(profile(write(tmp_path / "b.csv", "id,text\n1,x\n")), 'b.csv:1: no "prompt" or "messages" column')
    fails(profile(write(tmp_path / "c.jsonl", "\n")), "c.jsonl: the corpus holds no prompts")
    fails(profile(write(tmp_path / "d.jsonl", '{"prompt": ""}\n')), "d.jsonl:1: empty prompt")
    (tmp_path / "e.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    fails(profile(tmp_path / "e.txt"), "e.txt:2: not valid UTF-8")
    import pandas as pd

    pd.DataFrame({"id": ["1"], "text": ["x"]}).to_parquet(tmp_path / "f.parquet")
    fails(profile(tmp_path / "f.parquet"), 'f.parquet: no "prompt" or "messages" column')


def test_flag_errors(profile, corpus):
    fails(profile(corpus, "--k-max", 0), "--k-max 0: must be ≥ 1")
    fails(profile(corpus, "--temperature", -1), "--temperature -1.0: must be ≥ 0")
    fails(profile(corpus, "--top-p", 0), "--top-p 0.0: must be > 0")
    fails(profile(corpus, "--top-p", 1.5), "--top-p 1.5: must be ≤ 1")
    fails(profile(corpus, "--batch-size", 0), "--batch-size 0: must be ≥ 1")
    fails(profile(corpus, "--device", "tpu"), "--device tpu: unknown device")
    fails(profile(corpus, "--dtype", "int8"), "--dtype int8: unknown dtype")
    fails(profile(corpus, "--limit", 0), "--limit 0: must be ≥ 1")
    fails(profile(corpus, "--resume", "--overwrite"), "--resume and --overwrite: choose one")
    fails(profile(corpus, "--too-long", "truncate"), "--too-long truncate: use skip or error")
    if torch.cuda.is_available():
        fails(profile(corpus, "--device", "cuda:99"), "--device cuda:99: only")
    else:
        fails(profile(corpus, "--device", "cuda"), "--device cuda: CUDA is not available on this machine")


def test_usage_errors_through_the_console_script():
    r = subprocess.run([sys.executable, "-m", "specprof", "profile", "x.jsonl", "--k-max", "abc"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("specprof: error: Invalid value for '--k-max'")
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "specprof", "profile", "x.jsonl", "--kmax", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "No such option: --kmax" in r.stderr


def test_early_exit_past_the_target_depth_is_refused_before_any_weights_load(profile, corpus, monkeypatch):
    # The layer count comes from the target's config; loading weights here would be the bug.
    from specprof.engines.hf import models

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the --draft check")

    monkeypatch.setattr(models, "load_model", no_weights)
    line = fails(profile(corpus, "--draft", "ngram", "--draft", "early-exit:99"))
    assert line == "specprof: error: --draft early-exit:99: L must be between 1 and 1 (the target has 2 layers)"


def test_config_layer_count_without_weights(tiny, tmp_path):
    from specprof.engines.hf import models

    assert models.config_num_layers(str(tiny["target"])) == 2
    assert models.config_num_layers(str(tiny["deep"])) == 4
    assert models.config_num_layers(str(tmp_path / "missing")) is None  # the load reports it, with the fix


def test_draft_errors(profile, corpus):
    fails(profile(corpus, "--draft", "early-exit:2"), "--draft early-exit:2: L must be between 1 and 1",
          "the target has 2 layers")
    fails(profile(corpus, "--draft", "early-exit:0"), "L must be between 1 and 1")
    fails(profile(corpus, "--draft", "early-exit:x"), "--draft early-exit:x: expected early-exit:<integer>")
    fails(profile(corpus, "--draft", "medusa:3"), "--draft medusa:3: unknown draft kind 'medusa'")
    fails(profile(corpus, "--draft", "ngram:0"), "n-gram size must be between 1 and 16")
    fails(profile(corpus, "--draft", "ngram", "--draft", "ngram"), "--draft ngram: given twice")


def test_model_errors(profile, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails(profile(corpus, "--target", "no-such-org/no-such-model"),
          "--target no-such-org/no-such-model: cannot load", "must be a local directory",
          "Hugging Face cache")
    bad = write(tmp_path / "broken.gguf", "this is not a gguf file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fails(profile(corpus, "--target", bad), "broken.gguf: transformers cannot read this GGUF file")
    fails(profile(corpus, "--target", tmp_path / "missing.gguf"), "missing.gguf: no such GGUF file")


def test_tokenizer_mismatch_names_sizes_and_first_difference(profile, corpus, tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny["target"], other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    v = vocab["model"]["vocab"]
    v["a"], v["b"] = v["b"], v["a"]  # the same size, two ids swapped
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    line = fails(profile(corpus, "--draft", other), f"--draft {other}: tokenizer differs from the target's",
                 "target vocab 102, draft vocab 102", "target 'a', draft 'b'")
    assert f"first difference at id {v['b']}" in line


def test_too_long_prompts_skip_with_a_warning_or_error(profile, cli, tiny, tmp_path):
    corpus = write(tmp_path / "p.jsonl", json.dumps({"id": "short", "prompt": "hi"}) + "\n"
                   + json.dumps({"id": "huge", "prompt": "x" * 600}) + "\n")  # the tiny models hold 512
    r = profile(corpus)
    assert r.exit_code == 0, r.output
    assert "skipped 1 prompt(s) longer than the model context: huge" in r.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["skipped_prompts"] == ["huge"]
    fails(profile(corpus, "--too-long", "error", "--overwrite"), "p.jsonl:2: prompt 'huge' has",
          "exceeds the model context of 512")


def test_output_directory_that_cannot_be_written(cli, tiny, corpus, tmp_path):
    blocker = write(tmp_path / "file", "x")
    r = cli("profile", corpus, "--target", tiny["target"], "--out", blocker / "sub")
    fails(r, f"--out {blocker / 'sub'}: cannot create the directory")
    r = cli("profile", corpus, "--target", tiny["target"], "--out", blocker)
    fails(r, f"--out {blocker}: exists and is not a directory")


def test_pickle_checkpoints_are_refused_unless_allowed(profile, corpus, tiny, tmp_path):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny["close"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    fails(profile(corpus, "--draft", pickled), "only pickle checkpoints", "--allow-pickle")
    r = profile(corpus, "--draft", pickled, "--allow-pickle")
    assert r.exit_code == 0, r.output


def test_remote_code_is_refused_unless_trusted(profile, corpus, tmp_path):
    custom = tmp_path / "custom"
    custom.mkdir()
    make_tokenizer(custom)
    (custom / "config.json").write_text(json.dumps({
        "model_type": "specprof-custom", "auto_map": {"AutoConfig": "configuration_x.XConfig",
                                                      "AutoModelForCausalLM": "modeling_x.XModel"},
    }))
    (custom / "model.safetensors").write_bytes(b"")
    fails(profile(corpus, "--target", custom), f"--target {custom}:", "--trust-remote-code")


def test_nan_logits_are_reported_with_the_prompt_id(profile, corpus, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    broken = make_model(tmp_path / "nan", seed=0)
    model = AutoModelForCausalLM.from_pretrained(broken)
    with torch.no_grad():
        model.lm_head.weight[5] = float("nan")
    model.save_pretrained(broken)
    fails(profile(corpus, "--target", broken), "the target model produced NaN/inf logits at position 0",
          "try --dtype float32")


def test_debug_shows_the_traceback(cli, corpus, tiny, tmp_path):
    with pytest.raises(SpecprofError, match="--k-max 0"):
        cli("--debug", "profile", corpus, "--target", tiny["target"], "--k-max", 0, "--out", tmp_path / "o")


def test_report_directory_errors(tmp_path, tiny, corpus, cli):
    with pytest.raises(SpecprofError, match="no such report directory"):
        reportfiles.load_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecprofError, match="not a specprof report \\(no run.json\\)"):
        reportfiles.load_report(tmp_path / "empty")
    out = tmp_path / "r"
    assert cli("profile", corpus, "--target", tiny["target"], "--max-new-tokens", 4, "--out", out).exit_code == 0
    run = json.loads((out / "run.json").read_text())
    write(out / "run.json", json.dumps({**run, "finished_at": None}))
    with pytest.raises(SpecprofError, match="did not finish \\(half-written report\\).*--resume"):
        reportfiles.load_report(out)
    write(out / "run.json", json.dumps({**run, "schema_version": schema.SCHEMA_VERSION + 1}))
    with pytest.raises(SpecprofError, match=f"schema version {schema.SCHEMA_VERSION + 1} is newer than this specprof"):
        reportfiles.load_report(out)
    write(out / "run.json", json.dumps(run))
    import pandas as pd

    pd.DataFrame({"a": [1]}).to_parquet(out / "tokens.parquet")  # a foreign parquet file
    with pytest.raises(SpecprofError, match="not a specprof report file \\(no schema version"):
        reportfiles.load_report(out).table("tokens")
