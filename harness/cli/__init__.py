"""``pfmbench``: a thin Typer front end, one module per noun. Each command parses, calls one library function, prints.

Errors the library raises on purpose (:class:`~harness.errors.PfmbenchError`) become
one line on stderr, ``error: <what> (fix: <how>)``, and exit code 1;
``PFMBENCH_DEBUG=1`` shows the traceback instead. Everything a command does is
callable from Python: :func:`harness.run.lifecycle.execute` runs a row.
"""

from __future__ import annotations

import logging
import signal
import sys

import typer
from rich.console import Console
from rich.markup import escape

# typer vendors click (typer._click, pinned in requirements.lock): its usage errors are these classes, not click's.
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from harness import constants
from harness.cli import bench, cache, data, distill, images, models, perf, report, results, serve, slides, sweep  # noqa: F401  (each registers its commands)
from harness.cli._app import app
from harness.errors import PfmbenchError


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, SIGTERM handled like Ctrl-C (so runtimes stop)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(args=argv, prog_name="pfmbench", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # a bare group: its help, as click does
        exc.show()
        sys.exit(0)
    except UsageError as exc:  # a bad option value: one line too, naming the command's help
        command = exc.ctx.command_path if exc.ctx else "pfmbench"
        message = exc.format_message().replace("Value error, ", "")  # pydantic's prefix on a bad choice
        Console(stderr=True).print(f"[red]error:[/red] {escape(message)} (fix: see '{command} --help')", soft_wrap=True, highlight=False)
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-C or SIGTERM outside a command's own handling
        Console(stderr=True).print("[red]interrupted[/red]", highlight=False)
        sys.exit(130)
    except PfmbenchError as exc:
        if constants.DEBUG:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(exc.one_line())}", soft_wrap=True, highlight=False, markup=True)
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code:
        sys.exit(code)


__all__ = ["app", "main"]
