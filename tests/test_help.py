"""Every `--help` page reads like ordinary Click help: no `<bool>` (or any `<type>`) after an option,
flags without a value, and each argument spelled one way (capitals, as the usage line and the
Arguments panel both show it). Iterates the commands registered on the app, so new ones are covered."""

from __future__ import annotations

import re

import pytest
import typer

from specprof.ui.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)


def test_every_command_is_checked():
    assert {"profile", "recommend", "gate", "compare", "inspect", "report", "verify", "distill"} <= set(COMMANDS)


@pytest.mark.parametrize("args", [[], *[[c] for c in COMMANDS]], ids=["specprof", *COMMANDS])
def test_help_page_is_plain(args, cli):
    r = cli(*args, "--help")
    assert r.exit_code == 0, r.output
    page = r.stdout
    assert "<bool>" not in page
    assert re.search(r"<\w[\w\[\]]*>", page) is None, page  # no <float>, <path>, <list[str]> either
    usage = next(line for line in page.splitlines() if "Usage:" in line)
    if not args:
        assert usage.split()[-3:] == ["[OPTIONS]", "COMMAND", "[ARGS]..."]
    else:
        words = usage.split("[OPTIONS]", 1)[1].split()
        command = typer.main.get_command(app).commands[args[0]]
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        assert len(words) == len(arguments), usage
        for word, p in zip(words, arguments):
            name = word.strip("[]").removesuffix("...")  # a repeatable argument: REPORT...
            assert re.fullmatch(r"[A-Z][A-Z_]*", name), usage  # one spelling: capitals
            spelled = name + ("..." if p.nargs == -1 else "")
            assert word == (spelled if p.required else f"[{spelled}]"), usage  # brackets only when optional
            assert re.search(rf"│\s+(\*\s+)?{name}\s+(PATH|TEXT)\s", page), (name, page)  # same name in the panel
    # a flag shows no value: "--json" is followed by its help text, never by a type or metavar
    for line in page.splitlines():
        m = re.match(r"│\s+(\*\s+)?(--[\w-]+)\s+(\S+)", line)
        if m and m.group(2) in ("--json", "--help", "--overwrite", "--force", "--debug", "--version"):
            assert not re.fullmatch(r"[A-Z_]+|<\w+>", m.group(3)), line
