"""The two kinds of failure the worker knows, and how each is answered.

A PermanentError will fail the same way however often it is retried (a corrupt image, a
schema error): a scan gets a `failed` result, an event is dead-lettered, never retried.
A TransientError may pass (S3 or Qdrant unreachable, a timeout): the message is retried
with backoff, then answered as `dependency_unavailable` once the attempts are spent.
"""

from __future__ import annotations

from shared.contract import FailureReason


class JewelmatchError(Exception):
    reason: FailureReason = FailureReason.internal_error


class PermanentError(JewelmatchError):
    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TransientError(JewelmatchError):
    reason = FailureReason.dependency_unavailable

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class StartupError(Exception):
    """Something a person must fix before a command can run (a setting, a taken port, a
    missing model, an unreachable broker): the command prints its one-line message and exits
    non-zero, never a traceback."""
