"""Flag values converted without pydantic (ui/coercion.py) equal Typer's own conversion, errors included."""

from __future__ import annotations

import typer.main
from typer._coercion import build_runtime_param  # Typer ≥ 0.29, as pyproject.toml asks

from specprof.ui import coercion
from specprof.ui.cli import app

SAMPLES = {
    int: ["3", "-2", "0", "007", "+4", "x", "3.0", " 3", "1e3", "", "٣", 5],
    float: ["0.5", "1", "-1.5", "1e-3", "2.", ".5", "+1.5", "1E+2", "inf", "nan", "x", "1,5", "", " 1", 2, 0.25],
    str: ["abc", "", "ALL", "vllm-ngram:5:5"],
    bool: [True, False],
}


def parameters():
    group = typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        ctx = cmd.make_context(name, [], resilient_parsing=True)
        for p in cmd.get_params(ctx):  # the re-classed parameters, as a real run gets them
            yield name, cmd, ctx, p


def outcome(runtime, value, param, ctx):
    try:
        return "ok", runtime.coerce(value, param=param, ctx=ctx)
    except typer.BadParameter as e:
        return "error", e.format_message()


def test_every_plain_parameter_converts_as_typer_does(tmp_path):
    existing = tmp_path / "report"
    existing.mkdir()
    paths = [str(existing), str(tmp_path / "missing" / "x.json"), "relative/dir", existing]
    checked = 0
    for name, _, ctx, p in parameters():
        direct = coercion.runtime_param(p.type_descriptor)
        if direct is None:
            continue
        leaf = coercion.plain_type(p.type_descriptor)
        values = paths if leaf.__name__ == "Path" else SAMPLES[leaf]
        if p.multiple or p.nargs == -1:
            values = [(v,) for v in values] + [tuple(values[:2]), ()]
        typers = build_runtime_param(p.type_descriptor)
        for v in values:
            ours, theirs = outcome(direct, v, p, ctx), outcome(typers, v, p, ctx)
            assert repr(ours) == repr(theirs), f"{name} {p.name} {v!r}"  # repr: nan equals nan
            assert type(ours[1]) is type(theirs[1]), f"{name} {p.name} {v!r}"
            checked += 1
    assert checked > 200


def test_the_decision_commands_convert_every_flag_directly():
    for name, _, _, p in parameters():
        if name in ("recommend", "gate", "compare", "inspect", "report"):
            assert coercion.runtime_param(p.type_descriptor) is not None, f"{name} {p.name}"


def test_the_installed_typer_is_the_minor_release_pyproject_pins():
    # ui/coercion and ui/helpstyle use Typer internals (typer._coercion, typer._param_types, typer._click), so
    # pyproject.toml pins one minor release and this file and tests/test_help.py test the shims against it.
    import re
    from importlib.metadata import version
    from pathlib import Path

    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    low, high = re.search(r'"typer>=(\d+\.\d+),<(\d+\.\d+)"', pyproject).groups()
    installed = tuple(int(x) for x in version("typer").split(".")[:2])
    assert tuple(map(int, low.split("."))) <= installed < tuple(map(int, high.split("."))), version("typer")
    from typer._click import exceptions  # ui/cli.main's usage errors
    from typer._coercion import RuntimeParam  # noqa: F401  (ui/coercion)
    from typer._param_types import coerce_cli_path  # noqa: F401  (ui/coercion)

    assert issubclass(exceptions.NoSuchOption, exceptions.UsageError)
