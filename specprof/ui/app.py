"""The Typer application, its consoles, and the one boundary where errors become exit codes.

Every command is registered with `@command(...)`: its body raises `SpecprofError` for bad input
(printed as one line on stderr, exit code 2; `--debug` shows the traceback instead) and may return
an exit code (1: a failed gate or a verify that found a mismatch). Anything else is a bug and keeps
its traceback. Commands import heavy modules (torch, transformers) inside their bodies, so the
decision commands start fast.
"""

from __future__ import annotations

import os
import sys

# Before numpy loads, and only for the decision commands (torch may use OpenBLAS in `profile`):
# OpenBLAS's thread pool costs more than it saves on the bootstrap's small products (1000
# resamples × a few hundred prompts) and oversubscribes shared CI runners; one thread made the
# bootstrap of a million-row report 2.5× faster on 2 busy cores. An explicit setting wins.
if {"recommend", "gate", "compare", "inspect", "report"} & set(sys.argv[1:3]):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from specprof import __version__
from specprof.core.flags import check_once, check_range  # noqa: F401  (for the commands)
from specprof.errors import SpecprofError
from specprof.ui import render
from specprof.ui.helpstyle import App

HELP = (
    "Profile speculative-decoding acceptance per domain and draft length before turning speculation on.\n\n"
    "Names as in vLLM (tokens/iter is the mean acceptance length, bonus token included); every figure is "
    "defined in specprof recommend --help."
)

app = App(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _console(**kwargs: Any) -> Console:
    """A Rich console. Piped or redirected output has no terminal width, and Rich would cut tables
    to 80 columns; give it 160 there (COLUMNS still wins)."""
    console = Console(soft_wrap=True, emoji=False, **kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160
    return console


stdout = _console()
stderr = _console(stderr=True)
STATE: dict[str, Any] = {"debug": bool(os.environ.get("SPECPROF_DEBUG"))}


def command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., int | None]], Callable[..., None]]:
    """Register a command on `app` behind the error boundary; a returned int is the exit code."""

    def register(fn: Callable[..., int | None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(*args: Any, **options: Any) -> None:
            try:
                code = fn(*args, **options)
            except SpecprofError as e:
                if STATE["debug"]:
                    raise
                render.print_error(stderr, str(e))
                raise typer.Exit(code=2) from None
            if code:
                raise typer.Exit(code=code)

        return app.command(name, **kwargs)(run)

    return register


def _version(value: bool) -> None:
    if value:
        stdout.print(f"specprof {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["debug"] = debug


def print_json(obj: Any) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False))


def notice(message: str) -> None:
    stderr.print(f"specprof: {message}", markup=False, highlight=False)


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
