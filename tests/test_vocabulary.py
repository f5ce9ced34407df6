"""One vocabulary: engine and draft-kind names are spelled in `core/vocabulary.py` and the registry
(`core/simulation/kinds.py`) only, and the count names the glossary defines are the ones the code and
its JSON use.

The literal check walks the AST of every module under specprof/ and flags a string constant that
equals an engine or kind name exactly, except in docstrings, f-strings (messages), the CLI option
declarations (`typer.Option(...)` arguments and a command's parameter defaults in ui/), attribute names
(`getattr(x, "model")`), and a few
places where the same word means something else (listed in OTHER_MEANINGS, with why).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from specprof.core import glossary, vocabulary
from specprof.core.simulation import kinds

PACKAGE = Path(__file__).resolve().parents[1] / "specprof"
HOMES = {"core/vocabulary.py", "core/simulation/kinds.py"}  # where the names are spelled
NAMES = {*vocabulary.ENGINES, *vocabulary.ENGINE_ALIASES, *kinds.KINDS}
OTHER_MEANINGS = {
    ("engines/vllm/client.py", "model"),  # the OpenAI API's request field
    ("core/records/logs.py", "model"),  # a chat role in logged conversations
}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _exempt(tree: ast.AST, cli_module: bool) -> set[int]:
    """Constants in f-strings, in typer.Option/Argument calls and (ui/) in parameter defaults."""
    out = _docstrings(tree)
    for node in ast.walk(tree):
        parts: list[ast.AST] = []
        if isinstance(node, ast.JoinedStr):
            parts = [node]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "Option", "Argument"):
            parts = [node]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            parts = node.args[1:2]  # an attribute's name (`model.model`)
        elif cli_module and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            parts = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
        for part in parts:
            out |= {id(n) for n in ast.walk(part) if isinstance(n, ast.Constant)}
    return out


def literal_uses() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in HOMES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        exempt = _exempt(tree, rel.startswith("ui/"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES
                    and id(node) not in exempt and (rel, node.value) not in OTHER_MEANINGS):
                found.append(f"specprof/{rel}:{node.lineno}: {node.value!r}")
    return found


def test_engine_and_kind_names_are_spelled_in_the_vocabulary_only():
    assert literal_uses() == []


def test_the_check_sees_a_literal(tmp_path, monkeypatch):
    """The walk flags a comparison with a kind name (so the test above can fail)."""
    tree = ast.parse('if kind == "early-exit":\n    pass\nx = f"{kind}: early-exit"\n')
    flagged = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in NAMES
               and id(n) not in _exempt(tree, False)]
    assert flagged == ["early-exit"]


EXAMPLES = {"model": "some/model", "early-exit": "early-exit:3", "ngram": "ngram", "vllm-ngram": "vllm-ngram:2",
            "prompt-lookup": "prompt-lookup", "eagle3": "eagle3:some/head"}


def test_every_kind_parses_and_declares_its_proposal_class_and_cost():
    assert set(EXAMPLES) == set(kinds.KINDS)
    for name, spec in EXAMPLES.items():
        kind = kinds.parse(spec).kind
        assert kind is kinds.KINDS[name] and isinstance(kind.proposal, kinds.Proposal)
    assert kinds.parse("early-exit:3").args == (3,)
    assert kinds.parse("ngram").args == (kinds.DEFAULT_NGRAM,)
    assert kinds.parse("vllm-ngram:2").args == (2, 2)
    assert kinds.parse("prompt-lookup").args == (kinds.TRANSFORMERS_DEFAULT_NGRAM,)
    assert {k.name for k in kinds.KINDS.values() if k.model_free} == {"ngram", "vllm-ngram", "prompt-lookup"}
    assert kinds.of_class(kinds.Proposal.BLOCK) == ("vllm-ngram", "prompt-lookup")
    assert kinds.of_class(kinds.Proposal.HEAD) == ("eagle3",)  # the EAGLE-3 head


@pytest.mark.parametrize("spec", ["ngram:0", "ngram:x", "early-exit", "early-exit:x", "vllm-ngram:3:2",
                                  "prompt-lookup:1:2", "mystery:3", "eagle3:"])
def test_bad_specs_are_one_clear_error(spec):
    from specprof.errors import SpecprofError

    with pytest.raises(SpecprofError, match=f"^--draft {re.escape(spec)}: "):
        kinds.parse(spec)


def test_hf_is_an_alias_of_transformers():
    assert vocabulary.engine_named("hf") == vocabulary.engine_named("transformers") == vocabulary.TRANSFORMERS
    assert vocabulary.engine_named("vllm") == vocabulary.VLLM
    assert vocabulary.engine_named("sglang") is None


# --- counts ---------------------------------------------------------------------------------------------------


def _count_keys(value) -> set[str]:
    """Keys holding a number or a list of numbers, anywhere in a JSON document (compare's _a/_b sides as one)."""
    out = set()
    if isinstance(value, dict):
        for key, v in value.items():
            numbers = v if isinstance(v, list) else [v]
            if numbers and all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers):
                out.add(re.sub(r"_[ab]$", "", key))
            out |= _count_keys(v)
    elif isinstance(value, list):
        for v in value:
            out |= _count_keys(v)
    return out


COUNT_KEY = re.compile(r"^(num_|n_)|(^|_)(iterations|emitted|judged|accepted|rejected)(_|$)")


SAMPLE = Path(__file__).parent / "fixtures" / "sample-report"


def test_every_count_key_in_the_json_is_a_glossary_count():
    """The --json documents of recommend (--engine vllm included), gate, compare and inspect on the bundled sample
    report (their golden outputs, which tests/test_sample_report.py holds the commands to): every key that names
    a count is one glossary.COUNTS defines, and every COUNTS name is used by the code or those documents."""
    seen: set[str] = set()
    lines = (SAMPLE / "commands.txt").read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if "--json" in line.split():
            seen |= _count_keys(json.loads((SAMPLE / "golden" / f"{n:02d}.out").read_text()))
    counts = {k for k in seen if COUNT_KEY.search(k)}
    assert counts and counts <= set(glossary.COUNTS), sorted(counts - set(glossary.COUNTS))
    code = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py") if p.name != "glossary.py")
    assert [name for name in glossary.COUNTS if name not in seen and not re.search(rf"\b{name}\b", code)] == []


def test_recommend_takes_hf_for_transformers(cli, monkeypatch):
    monkeypatch.chdir(SAMPLE)
    hf, transformers = (cli("recommend", "report", "--engine", name, "--json") for name in ("hf", "transformers"))
    assert hf.exit_code == transformers.exit_code == 0, hf.output
    assert hf.stdout == transformers.stdout and '"engine": "transformers"' in hf.stdout
