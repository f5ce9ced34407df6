"""Flag values of plain types converted directly, where Typer's own conversion gives the same value.

Typer 0.29 converts every parameter's value through a pydantic `TypeAdapter`: importing pydantic
and building the adapters took 0.25–0.3 s of every command (measured by `benchmarks/decide_speed.py`
on a 2-core machine), a quarter of what reading a million-row report takes. Here a value of a plain
type (str, int, float, bool, Path, or a list of them; no bounds, parser or path checks) written the
ordinary way ("3", "0.25", "1e-3", any path, any text) is converted as Typer would; anything else,
every invalid value included, goes to Typer's own conversion, built when first needed, so an error
reads exactly as Typer writes it. tests/test_coercion.py checks both give the same value for every
parameter of every command.

With a Typer that converts without pydantic (before 0.29) this changes nothing: there is no
`typer._coercion` and every parameter keeps Typer's conversion.

What this module does not do: define flags (`options`), print help (`helpstyle`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

try:
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_path
except ImportError:  # a Typer that converts through Click's types
    RuntimeParam = None

INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: int() also takes other scripts' digits, pydantic not
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
LEAVES = (str, int, float, bool, Path)
NOT_PLAIN = object()  # a value the direct conversion leaves to Typer's


def plain_type(descriptor: Any) -> type | None:
    """The leaf type when the parameter is plain (a leaf or a list of one, default checks); else None."""
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or info.parser is not None or info.min is not None \
            or info.max is not None or info.clamp:
        return None
    annotation = descriptor.annotation
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (None,)
    if annotation not in LEAVES:
        return None
    if annotation is Path and (info.exists or info.resolve_path or info.path_type is not None or info.allow_dash
                               or not (info.file_okay and info.dir_okay and info.readable)):
        return None
    return annotation


def convert(leaf: type, value: Any) -> Any:
    """`value` as `leaf`, or NOT_PLAIN when it is not written in the ordinary way."""
    if leaf is str:
        return value if isinstance(value, str) else NOT_PLAIN
    if leaf is bool:  # a flag's value is already a bool; a string (an environment variable) goes to Typer
        return value if type(value) is bool else NOT_PLAIN
    if leaf is int:
        if type(value) is int:
            return value
        return int(value) if isinstance(value, str) and INTEGER.fullmatch(value) else NOT_PLAIN
    if leaf is float:
        if type(value) in (int, float):
            return float(value)
        return float(value) if isinstance(value, str) and DECIMAL.fullmatch(value) else NOT_PLAIN
    if isinstance(value, (str, Path)):  # Path: Typer stats it for the readable check, as here
        return Path(value)
    return NOT_PLAIN


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class DirectParam(RuntimeParam):
        """Converts plain values directly; hands the rest to Typer's own conversion (`fallback`)."""

        leaf: type = str
        descriptor: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            items = value if isinstance(value, (list, tuple)) else None
            if (items is None) != (get_origin(self.annotation) is not list):
                return self.fallback(value, param, ctx)
            out = [convert(self.leaf, v) for v in (items if items is not None else [value])]
            if any(v is NOT_PLAIN for v in out):
                return self.fallback(value, param, ctx)
            if self.leaf is Path:  # Typer's own check: an existing path must be readable
                out = [coerce_cli_path(p, self.parameter_info, path_type=Path, param=param, ctx=ctx) for p in out]
            return out if items is not None else out[0]

        def fallback(self, value: Any, param: Any, ctx: Any) -> Any:
            return build_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)


def runtime_param(descriptor: Any) -> Any | None:
    """A `DirectParam` for a plain parameter, or None (Typer converts it)."""
    if RuntimeParam is None:
        return None
    leaf = plain_type(descriptor)
    if leaf is None:
        return None
    return DirectParam(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, leaf=leaf,
                       descriptor=descriptor)


def get_runtime_param(param: Any, typers: Callable[[], Any]) -> Any:
    """For a Typer parameter class's `get_runtime_param`: a `DirectParam` when the parameter is plain,
    set once on the parameter; otherwise `typers()`, Typer's own."""
    if getattr(param, "_runtime_param", None) is None:
        direct = runtime_param(param.type_descriptor)
        if direct is not None:
            param._runtime_param = direct
            return direct
    return typers()
