"""The docs site's generated pages equal what scripts/cli_reference.py writes now: the CLI reference is
the real `--help` of every command, and the glossary page is core/glossary.py, so neither can drift."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from specprof.core import glossary

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "cli_reference.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cli_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_pages_equal_what_the_script_generates():
    script = load_script()
    for path, text in script.pages().items():
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        assert committed == text, (f"{path.relative_to(ROOT)} is out of date with the code; "
                                   f"regenerate it with: python scripts/cli_reference.py")


def test_reference_holds_every_command_and_its_options(cli):
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    for name in load_script().command_names():
        assert f"## specprof {name}\n" in page, name
        assert f"Usage: specprof {name} [OPTIONS]" in page, name
    assert "--max-alpha-drop" in page and "--cost-ratio" in page  # options of gate and recommend
    assert "\x1b[" not in page  # plain text, no colour codes


def test_glossary_page_holds_every_definition():
    page = " ".join((ROOT / "docs" / "reference" / "glossary.md").read_text(encoding="utf-8").split())
    for name, column, definition in glossary.TERMS:
        assert f"| {name} | `{column}` | {' '.join(definition.split())} |" in page, name
    for name in glossary.COUNTS:
        assert f"`{name}`" in page, name


def test_check_mode_names_the_command_that_regenerates(tmp_path, monkeypatch, capsys):
    script = load_script()
    stale = tmp_path / "cli.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(script, "pages", lambda: {stale: "new\n"})
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["cli_reference.py", "--check"])
    assert script.main() == 1
    assert capsys.readouterr().err == "out of date: cli.md; regenerate with: python scripts/cli_reference.py\n"
    assert stale.read_text(encoding="utf-8") == "old\n"  # --check never writes


def test_figures_page_holds_every_definition():
    # docs/figures.md keeps the README's table of definitions with its notes: the same text as the glossary.
    text = " ".join(re.sub(r"\*\*|`", "", (ROOT / "docs" / "figures.md").read_text(encoding="utf-8")).split())
    for name, _, definition in glossary.TERMS:
        assert " ".join(definition.split()) in text, name


def test_readme_is_a_short_front_door_whose_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300  # the manual lives in docs/
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert "docs/reference/cli.md" in local and "docs/design.md" in local
    for link in local:
        assert (ROOT / link).exists(), link
