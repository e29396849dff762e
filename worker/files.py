"""Files that appear whole or not at all."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A path to write `path`'s new content to, renamed onto `path` when the block ends
    without an error and removed when it raises. A reader (a worker starting, a restore)
    sees the old file or the new one, never half of one; two writers each write a name of
    their own beside it (the same folder, so the rename is atomic)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
