"""Each figure is defined once (`specprof.core.glossary`), and `recommend --help`, the HTML page and the
README all print that one text."""

from __future__ import annotations

import re
from pathlib import Path

from specprof.core import glossary

README = Path(__file__).parent.parent / "README.md"


def flat(text: str) -> str:
    """Whitespace collapsed (Rich wraps help text; the README wraps nothing inside a table cell)."""
    return " ".join(text.split())


def test_readme_holds_every_definition():
    text = flat(re.sub(r"\*\*|`", "", README.read_text(encoding="utf-8")))  # Markdown emphasis aside
    for name, _, definition in glossary.TERMS:
        assert flat(definition) in text, name


def test_recommend_help_holds_every_definition(cli):
    r = cli("recommend", "--help")
    assert r.exit_code == 0, r.output
    text = flat(r.stdout)
    for name, _, definition in glossary.TERMS:
        assert flat(f"{name}: {definition}") in text, name


def test_one_indexing_of_r_i_and_the_catch_up_term_everywhere():
    # r_1..r_k as recommend prints them: r_i = P(accepted ≥ i), i from 1, and AL(k) = 1 + Σ_{i=1..k} r_i.
    assert "r_i = P(accepted ≥ i) for i = 1..k" in glossary.PER_POSITION
    assert "AL(k) = 1 + Σ_{i=1..k} r_i" in glossary.PER_POSITION
    assert "(k·t_D + t_T(k+1) + f_k·t_C)" in glossary.SPEEDUP
    readme = README.read_text(encoding="utf-8")
    assert "i+1" not in readme.replace("t_T(k+1)", "").replace("t_T(n+1)", "").replace("α^(k+1)", "")
