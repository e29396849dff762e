"""How command lists read in `--help`."""

from __future__ import annotations

import click
from typer.core import TyperGroup


class OneLineSummaries(TyperGroup):
    """A group whose command list shows each command's first paragraph as flowing text:
    Typer's rich help keeps the docstring's line breaks there, which left ragged lines."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None and command.help and not command.short_help:
            command.short_help = " ".join(command.help.split("\n\n")[0].split())
        return command
