"""CUDA out-of-memory halves the batch and carries on; prompts are data, never templates."""

from __future__ import annotations

import json

import pandas as pd
import torch

from specprof.core.records.corpus import Prompt, load_corpus
from specprof.core.records.store import RunStore
from specprof.engines.hf import drafts, models, profiler


def profile(tiny, corpus, out, batch_size, notices):
    target = models.load_model(str(tiny["target"]), torch.device("cpu"), torch.float32)
    loaded = [drafts.load_draft("ngram", target, torch.device("cpu"), torch.float32)]
    settings = profiler.Settings(k_max=3, max_new_tokens=12, batch_size=batch_size)
    store = RunStore.create(out, {"test": True})
    try:
        return profiler.run_profile(load_corpus(corpus), target, loaded, settings, store, notice=notices.append)
    finally:
        store.close()


def test_oom_halves_the_batch_once_said_and_recorded(tiny, corpus, tmp_path, monkeypatch):
    real = profiler.profile_batch
    sizes = []

    def small_gpu(batch, *args):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch, *args)

    monkeypatch.setattr(profiler, "profile_batch", small_gpu)
    notices = []
    result = profile(tiny, corpus, tmp_path / "oom", 8, notices)
    assert sizes[:3] == [8, 4, 2]  # 8 fails, 4 fails, 2 fits; later sub-batches start at 2
    assert set(sizes[3:]) == {2}
    assert notices == ["CUDA out of memory: halving the batch size until it fits (run.json records the final size)"]
    assert result.run["final_batch_size"] == 2
    monkeypatch.setattr(profiler, "profile_batch", real)
    reference = profile(tiny, corpus, tmp_path / "ref", 8, [])
    key = ["draft", "prompt_id", "position"]
    a = pd.read_parquet(tmp_path / "oom" / "tokens.parquet").sort_values(key).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "ref" / "tokens.parquet").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert reference.run["final_batch_size"] == 8


def test_prompts_are_data_not_templates(tiny):
    loaded = models.load_model(str(tiny["target"]), torch.device("cpu"), torch.float32)
    text = "{{ 7 * 7 }} {% for x in [1, 2] %}{{ x }}{% endfor %} {0} %s"
    ids = models.encode_prompt(loaded.tokenizer, Prompt("p", "d", text, None, "here"), chat_template=True)
    decoded = loaded.tokenizer.decode(ids)
    assert text in decoded and "49" not in decoded
    plain = models.encode_prompt(loaded.tokenizer, Prompt("p", "d", text, None, "here"), chat_template=False)
    assert loaded.tokenizer.decode(plain, skip_special_tokens=True) == text


def test_run_json_records_the_corpus_fingerprint(cli, tiny, corpus, tmp_path):
    out = tmp_path / "r"
    assert cli("profile", corpus, "--target", tiny["target"], "--max-new-tokens", 4, "--out", out).exit_code == 0
    run = json.loads((out / "run.json").read_text())
    # the default drafts: vllm-ngram, then an early exit
    assert len(run["corpus_fingerprint"]) == 16 and run["drafts"][0]["name"] == "vllm-ngram"
    assert run["final_batch_size"] == 32 and run["skipped_prompts"] == []
