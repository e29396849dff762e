"""Where the commands print. Their lines carry paths, S3 URIs, product ids and error texts,
printed as they are: never broken at the terminal's width (a script reads a path per line,
and a pipe is 80 columns wide to Rich) and never read as Rich markup (a `[` in an S3 key is
a character, and `[/b]` would be an error). A line that is styled on purpose is rich `Text`
(`styled`), which is never read as markup either."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def plain_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, soft_wrap=True, markup=False)


def styled(console: Console, style: str, text: str, rest: str = "") -> None:
    """Print `text` in `style`, then `rest` unstyled; both as they are."""
    console.print(Text.assemble((text, style), rest))
