"""The `jewelmatch` command (also `python -m worker`): production commands, tools for trying
the system, and `jewelmatch bench`. The tools' and benchmarks' code is imported only when
one of their commands runs, so `jewelmatch worker` loads none of it."""

from __future__ import annotations

import typer

from worker.cli import service, tools
from worker.cli.bench import bench

app = typer.Typer(
    help="jewelmatch: identify unlabelled jewels from a photo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(service.commands)
app.add_typer(tools.commands)
app.add_typer(bench, name="bench")

__all__ = ["app"]
