"""`specprof distill` on tiny random models: training learns, the draft directory is an ordinary
transformers model whose frozen weights are the target's, and the profile stays exact for it."""

from __future__ import annotations

import json
import os
import random

import pandas as pd
import pytest
import safetensors.torch
import torch
from reference import AssistedGeneration
from tiny import make_tokenizer, vocab_size

from specprof.core.simulation.traces import trace_drafts
from specprof.engines.hf import distill, distill_data, models

LAYERS = 2  # of the 4-layer `deep` target: the draft has 3
K_MAX = 8
MAX_NEW = 40
EPOCHS = 8


def load(path):
    return models.load_model(str(path), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 short prompts in two domains: enough for the tiny draft to improve on held-out prompts too."""
    rng = random.Random(0)  # seeded: the same corpus every run
    words = "the a cat dog runs sleeps over under big red SELECT FROM WHERE id name 1 2 3 { } : , hello world".split()
    path = tmp_path_factory.mktemp("distill-corpus") / "prompts.jsonl"
    rows = [{"id": f"p{i:02d}", "domain": ["alpha", "beta"][i % 2],
             "prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def distilled(tiny, corpus, tmp_path_factory):
    """A draft distilled from the corpus through the CLI (the target's continuations generated first)."""
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("distill") / "draft"
    args = ["distill", corpus, "--target", tiny["deep"], "--layers", LAYERS, "--out", out,
            "--max-new-tokens", MAX_NEW, "--holdout", 0.25, "--epochs", 4, "--lr", 3e-3]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, r


def test_cli_prints_the_before_after_table_and_writes_distill_json(distilled):
    out, r = distilled
    assert "α early-exit:2" in r.stdout and "α distilled" in r.stdout and "ALL" in r.stdout
    record = json.loads((out / "distill.json").read_text())
    assert record["source"]["kind"] == "corpus"
    assert record["draft"] == {**record["draft"], "layers": 3, "frozen_layers": 2}
    assert record["data"]["prompts"] == 40 and record["data"]["heldout_prompts"] == 10  # 5 of 20 per domain
    assert record["settings"]["layers"] == 2 and record["settings"]["generation"]["max_new_tokens"] == MAX_NEW
    domains = [row["domain"] for row in record["heldout_alpha"]]
    assert domains == ["alpha", "beta", "ALL"]
    assert set(record["time_s"]) == {"generation_s", "cache_s", "training_s", "total_s"}


def test_saved_directory_is_an_ordinary_model_with_the_targets_frozen_weights(distilled, tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out, _ = distilled
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not the private mode of a temporary directory
    draft = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, nothing of ours
    assert type(draft).__name__ == "LlamaForCausalLM" and draft.config.num_hidden_layers == LAYERS + 1
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny["deep"]).get_vocab()
    assert GenerationConfig.from_pretrained(out).eos_token_id == 2
    saved = safetensors.torch.load_file(out / "model.safetensors")
    original = safetensors.torch.load_file(tiny["deep"] / "model.safetensors")
    frozen = [k for k in saved if k.startswith(("model.embed_tokens", "lm_head", "model.layers.0.", "model.layers.1."))]
    assert len(frozen) == 2 + 2 * 9  # embeddings, LM head, and 9 tensors per Llama layer
    for key in frozen:
        assert torch.equal(saved[key], original[key]), key  # bit-identical
    trained = [k for k in saved if k.startswith(("model.layers.2.", "model.norm"))]
    assert any(not torch.equal(saved[k], original[k]) for k in trained)  # the copy of layer 2 was trained


def test_profile_is_exact_for_a_distilled_draft(distilled, tiny, corpus, tmp_path, cli):
    """Assisted generation with the draft loaded by plain from_pretrained: the target's greedy output,
    and per k the same number of target forward passes as the profile's blocks."""
    from transformers import AutoModelForCausalLM

    out, _ = distilled
    report = tmp_path / "r"
    r = cli("profile", corpus, "--target", tiny["deep"], "--draft", out, "--draft", "early-exit:2",
            "--k-max", K_MAX, "--max-new-tokens", MAX_NEW, "--out", report)
    assert r.exit_code == 0, r.output
    tokens = pd.read_parquet(report / "tokens.parquet")
    prompts = pd.read_parquet(report / "prompts.parquet").set_index("prompt_id")
    traces = {t.draft: t for t in trace_drafts(tokens, K_MAX, exact=True)}
    t = traces[str(out)]
    assert t.accept_sum.sum() != traces["early-exit:2"].accept_sum.sum()  # it is not the untrained early exit

    target = load(tiny["deep"])
    eos = models.eos_token_ids(target)
    assistant = AutoModelForCausalLM.from_pretrained(out)
    assisted = AssistedGeneration(target.model, assistant, eos)
    # prompts that end on EOS and prompts cut by the length limit: both ways a block can be cut short
    ended = list(prompts.index[prompts.finish_reason == "eos"][:5])
    cut = list(prompts.index[prompts.finish_reason == "length"][:5])
    assert ended and len(cut) == 5, prompts.finish_reason.value_counts()  # the tiny target ends 2 of 40 on EOS
    chosen = ended + cut
    try:
        for prompt_id in chosen:
            row = list(t.prompt_ids).index(prompt_id)
            prompt = torch.tensor([list(prompts.loc[prompt_id, "prompt_tokens"])])
            rows = tokens[(tokens.draft == str(out)) & (tokens.prompt_id == prompt_id)].sort_values("position")
            alone = target.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=MAX_NEW,
                                          do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
            greedy = alone[0, prompt.shape[1]:].tolist()
            assert greedy == rows.target_token.tolist(), prompt_id  # the report holds the target's greedy output
            for k in range(1, K_MAX + 1):
                output, passes = assisted.run(prompt[0].tolist(), k, MAX_NEW)
                assert output == greedy, (prompt_id, k)
                assert t.blocks.iterations[row, k - 1] == passes, (prompt_id, k)
    finally:
        assisted.close()


def test_a_report_source_reuses_its_continuations(distilled, tiny, corpus, tmp_path, cli):
    """Distilling from a profile report of the corpus gives the very same draft as distilling from the corpus."""
    report = tmp_path / "r"
    r = cli("profile", corpus, "--target", tiny["deep"], "--draft", "ngram", "--k-max", 2,
            "--max-new-tokens", MAX_NEW, "--out", report)
    assert r.exit_code == 0, r.output
    out = tmp_path / "draft"
    r = cli("distill", report, "--layers", LAYERS, "--out", out, "--holdout", 0.25, "--epochs", 4, "--lr", 3e-3)
    assert r.exit_code == 0, r.output  # the report's own target is used: no --target needed
    record = json.loads((out / "distill.json").read_text())
    assert record["source"]["kind"] == "report" and record["time_s"]["generation_s"] < 0.5
    assert "generation" not in record["settings"]
    ours = safetensors.torch.load_file(out / "model.safetensors")
    from_corpus = safetensors.torch.load_file(distilled[0] / "model.safetensors")
    assert ours.keys() == from_corpus.keys()
    for key in ours:
        assert torch.equal(ours[key], from_corpus[key]), key


def _cached(tiny, corpus, **overrides):
    from specprof.core.records.corpus import load_corpus
    from specprof.engines.hf.prompts import encode_all

    target = load(tiny["deep"])
    settings = distill_data.DistillSettings(layers=LAYERS, **overrides)
    encoded = encode_all(load_corpus(corpus), target, True)
    sequences = distill_data.sequences_from_corpus(encoded, target, MAX_NEW, 4)
    return target, settings, distill_data.cache_frozen(target, sequences, settings)


@torch.no_grad()
def _mean_loss(head, items, objective):
    """The objective over every trained position of `items` at once (not a running mean of steps)."""
    states, mask, rows, cols = distill._pad_batch(items, torch.device("cpu"), torch.float32)
    return distill.loss_fn(head.logits(head.hidden(states, mask)[rows, cols]), items, objective,
                           torch.device("cpu")).item()


@pytest.mark.parametrize("objective", ["kl", "ce"])
def test_loss_falls_and_alpha_on_the_training_prompts_rises(tiny, corpus, objective):
    target, settings, train_items = _cached(tiny, corpus, objective=objective, epochs=EPOCHS, lr=3e-3, patience=100)
    head = distill.DraftHead(target.model, LAYERS)
    early_exit = distill.alpha(distill.count_matches(None, target, train_items))
    initial = distill.alpha(distill.count_matches(head, target, train_items))
    loss_before = _mean_loss(head, train_items, objective)
    # selecting on the training prompts themselves keeps the best weights for them
    result = distill.train(head, target, train_items, train_items, settings, deadline=float("inf"))
    assert result.stopped == "epochs" and result.epochs_run == EPOCHS
    loss_after = _mean_loss(head, train_items, objective)
    trained = distill.alpha(distill.count_matches(head, target, train_items))
    # measured: KL 0.35 → 0.18, cross-entropy 2.38 → 1.55 (its floor is the tiny target's own uncertainty)
    assert loss_after < 0.8 * loss_before, (loss_before, loss_after)
    steps = [h["loss"] for h in result.history[1:]]
    assert steps[-1] < steps[0], steps  # the running training loss falls too
    # measured: early exit 0.24, the untrained copy of layer 2 0.41, trained 0.60 (KL) / 0.69 (CE)
    assert trained > max(early_exit, initial) + 0.1, (early_exit, initial, trained)


def test_kl_is_zero_for_the_targets_own_distribution_and_matches_a_hand_value():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    target_logprobs = torch.log_softmax(logits, -1)
    top = target_logprobs.topk(2, dim=-1)
    item = distill_data.Cached("p", "d", torch.zeros(2, 1), torch.tensor([0]), top.indices, top.values,
                          top.indices[:, 0], torch.tensor([True]))
    assert distill.loss_fn(logits, [item], "kl", torch.device("cpu")).item() == pytest.approx(0.0, abs=1e-6)
    # a uniform draft: KL = Σ_top2 p (log p − log ¼) + rest · (log rest − log ½)
    p = target_logprobs.exp()[0]
    rest = p[2] + p[3]
    expected = float(p[0] * (p[0].log() - torch.log(torch.tensor(0.25))) + p[1] * (p[1].log()
                     - torch.log(torch.tensor(0.25))) + rest * (rest.log() - torch.log(torch.tensor(0.5))))
    got = distill.loss_fn(torch.zeros(1, 4), [item], "kl", torch.device("cpu")).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert distill.loss_fn(torch.zeros(1, 4), [item], "ce", torch.device("cpu")).item() == pytest.approx(
        -torch.log(torch.tensor(0.25)).item(), rel=1e-6)


def _tiny_config(kind: str):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2,
                  pad_token_id=2, bos_token_id=1, tie_word_embeddings=False)
    if kind == "qwen2":  # sliding-window attention on the upper layers: the draft must keep each layer's type
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    if kind == "mistral":
        return MistralConfig(**common, sliding_window=4)
    if kind == "qwen3":
        return Qwen3Config(**common, head_dim=8)
    return LlamaConfig(**common)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "qwen3"])
def test_trained_head_on_cached_states_equals_the_saved_draft(kind, tmp_path):
    """Training sees cached states through a one-layer model; the saved L+1-layer draft computes the same logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)  # random weights: seeded so the check is the same every run
    model = AutoModelForCausalLM.from_config(_tiny_config(kind), dtype=torch.float32)
    model.save_pretrained(tmp_path / "target")
    make_tokenizer(tmp_path / "target")
    target = load(tmp_path / "target")
    distill.check_architecture(target.model)
    settings = distill_data.DistillSettings(layers=1, positions="all")
    sequences = [distill_data.TokenSequence("a", "x", list(range(5, 17)), 4),
                 distill_data.TokenSequence("b", "x", [5, 6, 40, 41, 42], 2)]
    cached = distill_data.cache_frozen(target, sequences, settings)
    head = distill.DraftHead(target.model, 1)
    with torch.no_grad():
        for p in head.trainable():
            p.add_(0.1 * torch.randn_like(p))  # as if trained
    distill.save_draft(distill.assemble_draft(target.model, head, 1), target.tokenizer, tmp_path / "draft")
    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "draft", dtype=torch.float32)
    assert draft.config.num_hidden_layers == 2
    if getattr(target.model.config, "layer_types", None):
        assert draft.config.layer_types == target.model.config.layer_types[:2]
    for s, c in zip(sequences, cached):
        with torch.no_grad():
            full = draft(torch.tensor([s.tokens])).logits[0, c.positions]
            states, mask, rows, cols = distill._pad_batch([c], torch.device("cpu"), torch.float32)
            ours = head.logits(head.hidden(states, mask)[rows, cols])
        torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)


def test_unsupported_architecture_is_refused_with_exit_2(corpus, tmp_path, cli):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)  # random weights: seeded for a reproducible model
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size(), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                               eos_token_id=2, bos_token_id=1)).save_pretrained(tmp_path / "gpt2")
    make_tokenizer(tmp_path / "gpt2")
    r = cli("distill", corpus, "--target", tmp_path / "gpt2", "--layers", 1, "--out", tmp_path / "draft")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [
        f"specprof: error: --target: distill supports Llama-style decoders ({', '.join(distill.SUPPORTED_TYPES)}); "
        "GPT2LMHeadModel (model_type 'gpt2') is not one"
    ]
    assert not (tmp_path / "draft").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", 4], "--layers 4: must be between 1 and 3 (the target has 4 layers)"),
        (["--layers", 2, "--holdout", 1.5], "--holdout 1.5: must be between 0 and 1 (exclusive)"),
        (["--layers", 2, "--objective", "mse"], "--objective mse: use kl or ce"),
        (["--layers", 2, "--max-minutes", 0], "--max-minutes 0.0: must be > 0"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tiny, corpus, tmp_path, cli, args, message):
    r = cli("distill", corpus, "--target", tiny["deep"], "--out", tmp_path / "draft", *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"specprof: error: {message}"


def test_refuses_a_non_empty_out_and_generation_flags_with_a_report(tiny, corpus, tmp_path, cli):
    (tmp_path / "draft").mkdir()
    (tmp_path / "draft" / "keep.txt").write_text("mine")
    r = cli("distill", corpus, "--target", tiny["deep"], "--layers", 1, "--out", tmp_path / "draft")
    assert r.exit_code == 2 and "directory is not empty; pass --overwrite" in r.stderr
    assert (tmp_path / "draft" / "keep.txt").read_text() == "mine"
    report = tmp_path / "r"
    assert cli("profile", corpus, "--target", tiny["deep"], "--draft", "ngram", "--k-max", 1, "--max-new-tokens", 4,
               "--temperature", 0.7, "--out", report).exit_code == 0
    r = cli("distill", report, "--layers", 1, "--out", tmp_path / "d2", "--max-new-tokens", 10)
    assert r.stderr.strip() == ("specprof: error: --max-new-tokens: only for a prompt corpus; "
                                "a report's continuations are reused")
    r = cli("distill", report, "--layers", 1, "--out", tmp_path / "d2")
    assert r.exit_code == 2 and "profiled at --temperature 0.7; distill trains on greedy continuations" in r.stderr


def test_distill_help_names_the_draft_layout(cli):
    r = cli("distill", "--help")
    assert r.exit_code == 0
    assert "--layers" in r.stdout and "--max-minutes" in r.stdout and "DRAFT_DIR" in r.stdout


def test_report_with_another_target_is_refused(tiny, corpus, tmp_path, cli):
    report = tmp_path / "r"
    assert cli("profile", corpus, "--target", tiny["target"], "--draft", "ngram", "--k-max", 1, "--max-new-tokens", 4,
               "--out", report).exit_code == 0
    r = cli("distill", report, "--target", tiny["deep"], "--layers", 1, "--out", tmp_path / "d")
    assert r.exit_code == 2 and f"profiled with target {tiny['target']}" in r.stderr
