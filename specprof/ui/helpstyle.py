"""`--help` pages that read like ordinary Click help: flags without a metavar, one spelling for arguments.

Typer 0.29 prints every parameter's Python type (`--json <bool>`, even `--help <bool>`), writes an
argument under its Python name (`{prompts}`, `{report}`) unless it has a metavar, and wraps required
arguments in braces and optional ones in brackets on the usage line (`[[REPORT]]` for a metavar
that already had them). Here, as in Click:

  Usage: specprof recommend [OPTIONS] [REPORT]        arguments in capitals, brackets when optional
  --cost-ratio FLOAT, --draft TEXT, --out PATH         an option's value named by its type
  --json                                               a flag takes no value, so shows none

`App` gives every command registered on it (`@app.command`) these classes, so a command added
later gets them too; tests/test_help.py checks every command's page. The same classes convert
plain flag values without pydantic (`coercion`: the same values, 0.25 s sooner).

What this module does not do: parse or run anything (Typer does), or change what a flag accepts.
"""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from specprof.ui import coercion

CLICK_TYPES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "file": "FILE",
               "directory": "DIRECTORY"}


def click_type(param: Any, ctx: Any) -> str:
    """The value's type as Click names it: <float> → FLOAT, <list[str]> → TEXT (repeatable), <path> → PATH."""
    label = param.display_type(ctx).strip("<>")
    inner = re.fullmatch(r"list\[(.+)\]", label)
    label = inner.group(1) if inner else label
    return CLICK_TYPES.get(label, label.upper())


class PlainOption(TyperOption):
    def get_runtime_param(self) -> Any:
        return coercion.get_runtime_param(self, super().get_runtime_param)

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag:
            return None  # a flag takes no value
        if self.metavar is not None:
            return self.metavar
        return click_type(self, ctx)


class PlainArgument(TyperArgument):
    def get_runtime_param(self) -> Any:
        return coercion.get_runtime_param(self, super().get_runtime_param)

    @property
    def display_name_raw(self) -> str:
        return (self.metavar or self.name or "").upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        return click_type(self, ctx)

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")


def _plain(params: list[Any]) -> list[Any]:
    """Give Typer's parameters the plain display (same state, subclasses that only change how they print)."""
    for p in params:
        if type(p) is TyperOption:
            p.__class__ = PlainOption
        elif type(p) is TyperArgument:
            p.__class__ = PlainArgument
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx))


class App(typer.Typer):
    """A Typer app whose group and commands print plain help (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or Command, **kwargs)
