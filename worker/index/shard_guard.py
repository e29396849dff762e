"""Closing the embedded engine's shards safely while other threads may still use them.

The engine refuses to close a shard that another thread is in the middle of using (its
Python binding raises `RuntimeError: Already borrowed`), and a call on a closed shard fails
with an engine error that names nothing. A worker has such threads at shutdown: a refit in
the background, the review desk reading `/catalog`. So every call on a shard goes through a
`ShardGuard`: closing waits for the calls in progress to end, and a call after that raises
`IndexClosedError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class IndexClosedError(RuntimeError):
    """The index was closed (the worker is stopping)."""


class ShardGuard:
    """Counts the calls in progress on a set of shards."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._closed = False

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._changed:
            if self._closed:
                raise IndexClosedError("the index is closed")
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new calls and wait until none is in progress; False if some still were
        after `timeout` seconds."""
        with self._changed:
            self._closed = True
            return self._changed.wait_for(lambda: self._running == 0, timeout)


class GuardedShard:
    """A shard whose every method call is counted by `guard` (`shard` itself is what is
    closed, once the guard says no call is in progress)."""

    def __init__(self, shard: Any, guard: ShardGuard) -> None:
        self.shard = shard
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.shard, name)
        if not callable(attribute):
            return attribute
        return self._guarded(attribute)

    def _guarded(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._guard.call():
                return method(*args, **kwargs)

        return call
