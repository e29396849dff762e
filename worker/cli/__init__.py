"""The `jewelmatch` command (also `python -m worker`): production commands, tools for trying
the system, and `jewelmatch bench`. The tools' and benchmarks' code is imported only when
one of their commands runs, so `jewelmatch worker` loads none of it.

Every command fails the same way on what a person must fix (a setting, a taken port, a
missing model, an unreachable broker): one line on standard error, exit status 2, no
traceback (`main`)."""

from __future__ import annotations

import os
import sys

import typer
from pydantic import ValidationError

from worker.cli import backup, service, tools
from worker.cli.bench import bench
from worker.cli.help import OneLineSummaries
from worker.errors import StartupError
from worker.training import CUBLAS_DETERMINISTIC

app = typer.Typer(
    cls=OneLineSummaries,
    help="jewelmatch: identify unlabelled jewels from a photo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(service.commands)
app.add_typer(backup.commands)
app.add_typer(tools.commands)
app.add_typer(bench, name="bench")

EXIT_STARTUP = 2


def settings_problems(error: ValidationError) -> str:
    """A settings error as the environment variables a person would set, on one line."""
    problems = []
    for item in error.errors():
        variable = "JEWELMATCH_" + "__".join(str(part) for part in item["loc"]).upper()
        problems.append(f"{variable}: {item['msg']}")
    return "; ".join(problems)


def main(args: list[str] | None = None) -> None:
    """The `jewelmatch` entry point: the Typer app, with startup errors as one line."""
    for name, value in CUBLAS_DETERMINISTIC.items():  # before any GPU work: `train` needs it
        os.environ.setdefault(name, value)
    try:
        app(args=args, prog_name="jewelmatch")
    except StartupError as error:
        print(f"jewelmatch: {error}", file=sys.stderr)
        sys.exit(EXIT_STARTUP)
    except ValidationError as error:
        if error.title != "Settings":
            raise
        print(f"jewelmatch: invalid settings: {settings_problems(error)}", file=sys.stderr)
        sys.exit(EXIT_STARTUP)


__all__ = ["app", "main"]
