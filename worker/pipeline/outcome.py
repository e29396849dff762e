"""What a handler gets and gives back: a `Delivery` in, an `Outcome` out, and the one failure
policy that turns an error into an outcome.

Nothing here knows RabbitMQ: the consumer builds deliveries from what the broker vouches for
and carries the outcomes out (publish the results, confirmed, then ack, retry or dead-letter).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel

from shared.contract import FailureReason
from worker.errors import PermanentError, TransientError


class Action(StrEnum):
    ack = "ack"
    retry = "retry"
    dead_letter = "dead_letter"


@dataclass(frozen=True)
class Delivery:
    """One message as the handlers see it.

    `routing_key` is the event type the broker routed (never a header a publisher set),
    `attempt` counts only the worker's own retries, and `user_id` is the sender's AMQP user
    as validated by the broker (None when the publisher did not state it).
    """

    routing_key: str
    body: bytes
    attempt: int = 1
    user_id: str | None = None


@dataclass
class Outcome:
    """How one delivery ends. `results` are published, confirmed, before it is settled."""

    action: Action
    results: list[tuple[str, BaseModel]] = field(default_factory=list)
    error: str | None = None
    exception: str | None = None
    log: dict = field(default_factory=dict)


class Timer:
    """Accumulates stage durations in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.ms[stage] = round(self.ms.get(stage, 0.0) + seconds * 1000, 2)


def timed(timer: Timer, stage: str, function: Callable, *args):
    started = time.perf_counter()
    try:
        return function(*args)
    finally:
        timer.add(stage, time.perf_counter() - started)


PUBLIC_DETAILS = {
    FailureReason.dependency_unavailable: "the image store or the index could not be reached; "
    "the message was retried and then given up",
    FailureReason.internal_error: "the worker failed on this message; operators have the "
    "error in the logs and in the dead letter",
}
"""What consumers are told of failures that are not theirs: our own words, never the raw
error (which can name internal hosts); the raw error goes to logs and dead-letter headers."""


@dataclass(frozen=True)
class Failure:
    """What the failure policy decided about one error."""

    action: Action
    reason: FailureReason
    detail: str
    final: bool
    """True when this is the message's last word (published to consumers); False while a
    retry is still coming."""


class FailurePolicy:
    """Permanent errors are final at once; transient ones are retried until the attempts are
    spent; anything unexpected is the message's own `internal_error`, never retried."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def decide(self, delivery: Delivery, error: BaseException) -> Failure:
        if isinstance(error, PermanentError):
            return Failure(Action.dead_letter, error.reason, error.detail, final=True)
        if isinstance(error, TransientError):
            reason = FailureReason.dependency_unavailable
            if delivery.attempt < self.max_attempts:
                return Failure(Action.retry, reason, PUBLIC_DETAILS[reason], final=False)
            return Failure(Action.dead_letter, reason, PUBLIC_DETAILS[reason], final=True)
        reason = FailureReason.internal_error
        return Failure(Action.dead_letter, reason, PUBLIC_DETAILS[reason], final=True)


def identifier_in(body: bytes, field: str) -> str | None:
    """The identifier `field` of a body that failed validation, if one can be read (to
    answer the sender even so)."""
    try:
        value = json.loads(body).get(field)
    except (ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(value, str) or not 0 < len(value.strip()) <= 200:
        return None
    return value.strip()


def describe(error: BaseException) -> str:
    """The raw error for logs and dead-letter headers (bounded)."""
    return (str(error) or type(error).__name__)[:2000]
