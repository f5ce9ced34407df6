"""The `specprof` command line: the Typer app with every command registered, and the console entry point.

Commands live by kind: `run_commands` (profile, costs, merge, export-draft, distill: they run models
or write reports), `read_commands` (recommend, gate, compare, inspect, report: they read a report
and never import torch) and `verify_command`. The error boundary, consoles and shared helpers are in
`app`, the shared flags in `options`. Each command parses, calls one function, renders.
"""

from __future__ import annotations

import sys

import typer

from specprof.ui import render
from specprof.ui.app import STATE, app, stderr

# isort: off
# Imported in the order their commands are listed: measuring first, then checking, then reading a report.
from specprof.ui import run_commands, verify_command, read_commands  # noqa: F401, E402  (they register commands)
# isort: on

try:
    from typer._click import exceptions as click_errors  # recent typer carries its own copy of click
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: usage errors become one line and exit code 2, like our own errors."""
    STATE["argv"] = sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except click_errors.UsageError as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # help was printed; nothing to add
            message = e.format_message()
            if e.ctx is not None and e.ctx.command_path:
                message = f"{message} (see: {e.ctx.command_path} --help)"
            render.print_error(stderr, message)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        stderr.print("aborted")
        sys.exit(130)
    sys.exit(code or 0)
