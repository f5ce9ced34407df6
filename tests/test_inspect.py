"""`specprof inspect` on tiny-model reports: ranking, token colouring, block marks, export, errors, no weights."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from specprof.core.answers import inspection
from specprof.core.records import corpus as corpus_loader
from specprof.core.records import tokentext
from specprof.core.simulation import trace
from specprof.core.vocabulary import ALL
from specprof.engines.text import auto_detokenizer
from specprof.ui import htmlreport, inspectview


def as_json(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def tokens_of(report, draft):
    t = pd.read_parquet(report / "tokens.parquet")
    return t[t["draft"] == draft].sort_values(["prompt_id", "position"])


def test_json_ranks_every_prompt_by_alpha_with_tokens_per_iter_at_k(small_report, tiny, cli):
    close = str(tiny["close"])
    data = as_json(cli("inspect", small_report, "--draft", close, "--json"))
    best = as_json(cli("recommend", small_report, "--draft", close, "--json"))["recommendations"]
    assert data["k"] == next(r["best_k"] for r in best if r["domain"] == ALL) and data["k_is_best"]
    tokens = tokens_of(small_report, close)
    by_prompt = {pid: rows["match"].to_numpy() for pid, rows in tokens.groupby("prompt_id")}
    assert [p["prompt_id"] for p in data["prompts"]] != [] and len(data["prompts"]) == 8
    ranked = [(p["alpha"], -p["n_tokens"]) for p in data["prompts"]]
    assert ranked == sorted(ranked)  # lowest α first; equal α: the longer continuation first
    for p in data["prompts"]:
        match = by_prompt[p["prompt_id"]]
        assert p["alpha"] == pytest.approx(match.mean())  # T = 0: α is the match rate
        blocks = trace.simulate_blocks(match.tolist(), data["k"])
        assert p["iterations"] == len(blocks)
        assert p["tokens_per_iter"] == pytest.approx(len(match) / len(blocks))
    assert [s["prompt_id"] for s in data["shown"]] == [p["prompt_id"] for p in data["prompts"][:5]]


def test_legend_says_an_ngram_draft_proposed_nothing(small_report, tiny, cli):
    # The n-gram lookup finds no match at many positions (draft_token −1): "another token" would be wrong.
    assert (tokens_of(small_report, "ngram")["draft_token"] < 0).any()
    r = cli("inspect", small_report, "--draft", "ngram", "--k", 2)
    assert r.exit_code == 0, r.output
    assert ("green: accepted · white on red: rejected (the target's token; the draft proposed another token or, "
            "where its lookup found no match, nothing) · ┊: a block at k=2 starts") in r.stdout.splitlines()
    r = cli("inspect", small_report, "--draft", str(tiny["close"]), "--k", 2)
    assert ("green: accepted · white on red: rejected (the target's token; the draft proposed another) · "
            "┊: a block at k=2 starts") in r.stdout.splitlines()


def test_export_holds_exactly_the_prompts_with_the_lowest_alpha(small_report, tiny, corpus, cli, tmp_path):
    close = str(tiny["close"])
    out = tmp_path / "worst.jsonl"
    data = as_json(cli("inspect", small_report, "--draft", close, "--worst", 3, "--export", out, "--json"))
    exported = corpus_loader.load_corpus(out)  # the PROMPTS format, read back by the corpus loader
    assert len(exported) == 3 and data["exported"] == str(out)
    alpha = tokens_of(small_report, close).groupby("prompt_id")["match"].mean()
    inside = alpha[[p.id for p in exported]]
    outside = alpha.drop(index=[p.id for p in exported])
    assert inside.max() <= outside.min()  # no prompt left out has a lower α than one exported
    original = {p.id: p for p in corpus_loader.load_corpus(corpus)}
    for p in exported:  # the original text and domain, not the chat-templated tokens
        assert (p.domain, p.prompt, p.messages) == (original[p.id].domain, original[p.id].prompt, None)
    # --domain ranks within the domain; --prompt exports that one prompt
    beta = as_json(cli("inspect", small_report, "--draft", close, "--domain", "beta", "--worst", 2, "--json"))
    assert {p["domain"] for p in beta["prompts"]} == {"beta"} and len(beta["shown"]) == 2
    one = tmp_path / "one.jsonl"
    assert cli("inspect", small_report, "--prompt", "b-3", "--export", one).exit_code == 0
    assert [p.as_record() for p in corpus_loader.load_corpus(one)] == [original["b-3"].as_record()]


def test_export_keeps_chat_messages(tiny, tmp_path, cli):
    chat = tmp_path / "chat.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    chat.write_text(json.dumps({"id": "c-1", "domain": "chat", "messages": messages}) + "\n")
    out = tmp_path / "r"
    assert cli("profile", chat, "--target", tiny["target"], "--draft", "ngram", "--k-max", 2, "--max-new-tokens", 8,
               "--out", out).exit_code == 0
    assert cli("inspect", out, "--export", tmp_path / "x.jsonl").exit_code == 0
    [p] = corpus_loader.load_corpus(tmp_path / "x.jsonl")
    assert p.as_record() == {"id": "c-1", "domain": "chat", "messages": messages}


def test_colouring_marks_exactly_the_tokens_whose_match_is_false(small_report, tiny):
    close = str(tiny["close"])
    result = inspection.inspect_report(small_report, draft=close, worst=8)
    tokens = tokens_of(small_report, close)
    detok = tokentext.load(json.loads((small_report / "run.json").read_text()))
    assert len(result.shown) == 8
    for view in result.shown:
        rows = tokens[tokens["prompt_id"] == view.figures.prompt_id]
        rejected = set(rows.loc[~rows["match"], "position"])
        assert 0 < len(rejected) < len(rows) or view.figures.alpha in (0.0, 1.0)
        # terminal: each token's style carries its position
        text = inspectview.token_text(view, exact=True)
        styled = {s.style.meta["position"]: s.style for s in text.spans
                  if not isinstance(s.style, str) and s.style.meta}
        accepted = set(rows["position"]) - rejected
        assert set(styled) == set(rows["position"])
        assert {p for p, s in styled.items() if s == _style(inspectview.REJECTED, p, False)} == rejected
        assert {p for p, s in styled.items() if s == _style(inspectview.ACCEPTED, p, True)} == accepted
        # the page: one span per token, class rej exactly where match is false
        page = htmlreport.token_spans(view, exact=True)
        spans = re.findall(r'<span class="([^"]+)" data-pos="(\d+)"', page)
        assert {int(p) for c, p in spans if "rej" in c.split()} == rejected
        assert {int(p) for c, p in spans if "acc" in c.split()} == accepted
        # the text is the decoded continuation
        assert "".join(t.text for t in view.tokens) == detok.decode(rows["target_token"].tolist())


def _style(name, position, match):
    from rich.style import Style

    return Style.parse(name) + Style(meta={"position": position, "match": match})


def _view(match, k, texts="abcdefg"):
    """A hand-made PromptView: one character per token."""
    blocks = tuple(trace.simulate_blocks(match, k))
    starts = {b.start for b in blocks}
    tokens = tuple(inspection.TokenView(i, texts[i], i, i if m else 99, texts[i] if m else "?", m, float(m),
                                        i in starts) for i, m in enumerate(match))
    figures = inspection.PromptFigures("p", "d", len(match), sum(match) / len(match), len(match) / len(blocks),
                                       len(blocks))
    return inspection.PromptView(figures, {"id": "p", "domain": "d", "prompt": "x"}, "length", tokens, blocks)


def test_block_marks_at_k_worked_by_hand():
    match = [True, True, False, True, True, True, False]  # 1101110
    # k = 2: blocks (0: accept 2, emit 3) (3: 2, 3) (6: 0, 1) -> marks before positions 3 and 6
    assert inspectview.token_text(_view(match, 2), exact=True).plain == "abc┊def┊g"
    # k = 1: (0: 1, 2) (2: 0, 1) (3: 1, 2) (5: 1, 2) -> marks before 2, 3, 5
    assert inspectview.token_text(_view(match, 1), exact=True).plain == "ab┊c┊de┊fg"
    # k = 4: (0: 2, 3) (3: 3, 4) -> one mark before 3
    page = htmlreport.token_spans(_view(match, 4), exact=True)
    assert [int(p) for p in re.findall(r'class="tok \w+ bs" data-pos="(\d+)"', page)] == [3]


def test_prompt_shows_one_prompt_in_full(small_report, corpus, cli):
    r = cli("inspect", small_report, "--prompt", "a-2")
    assert r.exit_code == 0, r.output
    text = corpus_loader.load_corpus(corpus)[1].prompt
    assert text in r.stdout  # the whole prompt, not cut to one line
    assert "prompt a-2" in r.stdout and "rejected tokens" in r.stdout
    data = as_json(cli("inspect", small_report, "--prompt", "a-2", "--json"))
    [shown] = data["shown"]
    assert shown["record"]["prompt"] == text
    assert shown["rejected"] == sum(not t["match"] for t in shown["tokens"])
    assert [b["start"] for b in shown["blocks"]] == [t["position"] for t in shown["tokens"] if t["block_start"]]


def test_sampled_run_shades_tokens_by_accept_prob(tiny, corpus, tmp_path, cli):
    out = tmp_path / "sampled"
    assert cli("profile", corpus, "--target", tiny["target"], "--draft", tiny["far"], "--k-max", 3,
               "--max-new-tokens", 16, "--temperature", 0.8, "--out", out).exit_code == 0
    result = inspection.inspect_report(out, worst=2)
    assert not result.exact and result.temperature == 0.8
    for view in result.shown:
        assert view.blocks == () and not any(t.block_start for t in view.tokens)  # blocks are random at T > 0
        text = inspectview.token_text(view, exact=False)
        colours = {s.style.meta["position"]: s.style.bgcolor.get_truecolor() for s in text.spans
                   if not isinstance(s.style, str) and s.style.meta}
        for t in view.tokens:
            assert tuple(colours[t.position]) == inspectview.shade(t.accept_prob)
        assert "┊" not in text.plain
        page = htmlreport.token_spans(view, exact=False)
        shaded = re.findall(r'data-pos="(\d+)"[^>]*style="background: rgb\((\d+), (\d+), (\d+)\)"', page)
        assert {int(p): tuple(map(int, rgb)) for p, *rgb in shaded} == {
            t.position: inspectview.shade(t.accept_prob) for t in view.tokens}
        assert " rej" not in page and " bs" not in page
    assert inspectview.shade(0.0) == (205, 49, 49) and inspectview.shade(1.0) == (40, 160, 70)
    assert inspectview.shade(0.5) == (230, 180, 40)


def test_inspect_and_report_never_load_weights(small_report, tiny, tmp_path):
    # The report's target without its weights: inspect and report must still work, and never import
    # torch, transformers or safetensors (nothing that could read a checkpoint).
    report = tmp_path / "report"
    shutil.copytree(small_report, report)
    no_weights = tmp_path / "target-tokenizer-only"
    shutil.copytree(tiny["target"], no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    run = json.loads((report / "run.json").read_text())
    run["target"]["source"] = str(no_weights)
    (report / "run.json").write_text(json.dumps(run))
    code = f"""
import sys
from typer.testing import CliRunner
from specprof.ui.cli import app
runner = CliRunner()
for args in (["inspect", {str(report)!r}, "--json"], ["inspect", {str(report)!r}, "--prompt", "a-1"],
             ["report", {str(report)!r}, "--html", {str(tmp_path / 'page.html')!r}]):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
print(sorted(m for m in ("torch", "transformers", "safetensors") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert not list(no_weights.glob("*.safetensors"))


def test_missing_tokenizer_says_how_to_get_it(small_report, tiny, tmp_path, cli):
    report = tmp_path / "report"
    shutil.copytree(small_report, report)
    run = json.loads((report / "run.json").read_text())
    run["target"]["source"] = str(tmp_path / "gone")
    (report / "run.json").write_text(json.dumps(run))
    r = cli("inspect", report)
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"specprof: error: the tokenizer of the report's target {run['target']['name']} is not on this machine "
        f"(looked in {tmp_path / 'gone'}); download it (`hf download {run['target']['name']} tokenizer.json "
        "tokenizer_config.json`), or pass --tokenizer DIR"
    )
    assert cli("inspect", report, "--tokenizer", tiny["target"]).exit_code == 0
    # a converted .gguf (the embedded default): name the command that converts it
    run["target"].update(name="SmolLM2-135M-Instruct", source="/elsewhere/.cache/specprof/gguf/SmolLM2-x-0123")
    (report / "run.json").write_text(json.dumps(run))
    r = cli("report", report, "--html", tmp_path / "p.html")
    assert r.exit_code == 2 and "`specprof profile` with --target SmolLM2-135M-Instruct converts it" in r.stderr
    assert not (tmp_path / "p.html").exists()


@pytest.mark.parametrize(
    "args, line",
    [
        (["--worst", 0], "--worst 0: must be ≥ 1"),
        (["--k", 9], "--k 9: the report covers k = 1..4"),
        (["--draft", "nope"], None),
        (["--domain", "nope"], None),
        (["--prompt", "nope"], None),
        (["--export", "worst.txt"], "--export worst.txt: must end in .jsonl (the PROMPTS format)"),
    ],
)
def test_bad_input_exits_2_with_one_line(small_report, cli, args, line):
    r = cli("inspect", small_report, *args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("specprof: error: ") and "Traceback" not in r.output
    if line is not None:
        assert err == f"specprof: error: {line}"


def test_pieces_keep_multibyte_characters_whole():
    # A byte-level BPE that knows no emoji: "😀" is 4 byte tokens; the first three add no whole character.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    detok = tokentext.Detokenizer("test", lambda batch: tok.decode_batch(batch, skip_special_tokens=False))
    ids = tok.encode("hi😀!").ids
    pieces = detok.pieces(ids)
    assert "".join(pieces) == "hi😀!" == detok.decode(ids)
    assert pieces[-5:] == ["", "", "", "😀", "!"]


def test_auto_tokenizer_fallback_gives_the_same_pieces(tiny, small_report):
    # A tokenizer without tokenizer.json goes through transformers' AutoTokenizer: same text per token.
    ids = tokens_of(small_report, "ngram")["target_token"].tolist()[:40]
    fast = tokentext.load({}, tiny["target"])
    auto = auto_detokenizer(str(tiny["target"]))
    assert auto is not None and auto.pieces(ids) == fast.pieces(ids)
