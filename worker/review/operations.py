"""What the desk does on the broker: publish confirmations, read queue depths, and list,
replay or discard dead letters.

Listing takes up to N dead letters without acknowledging them and closes the channel, which
returns them to the queue untouched, each in its place: the dead-letter queue is a classic
queue, which counts no deliveries, so looking never wears a letter out (a quorum queue would
count each look, and drop a letter at its delivery limit). Replay
publishes the original body to the events exchange under its original routing key, as the
desk's own broker user, and only then acknowledges the dead letter; discard acknowledges it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from amqp.exceptions import NotFound

from shared import topology
from shared.messages import EVENT_MODELS
from worker.amqp.broker import BROKER_ERRORS, EVENTS, ConfirmedPublisher, open_channel
from worker.amqp.client import JewelmatchClient
from worker.amqp.settlement import HEADER_SENDER, raw_body
from worker.observability.logs import get_logger
from worker.settings import AmqpSettings

log = get_logger(__name__)

WATCHED_QUEUES = (
    topology.SCANS_QUEUE,
    topology.CATALOG_QUEUE,
    topology.RESULTS_QUEUE,
    topology.CATALOG_OUTCOMES_QUEUE,
    topology.DEAD_LETTER_QUEUE,
    topology.REVIEW_RESULTS_QUEUE,
    topology.REVIEW_OUTCOMES_QUEUE,
)
"""Queues whose depth the ops page shows."""

HEADER_REPLAYED_BY = "x-jewelmatch-replayed-by"
PREVIEW_CHARS = 600
READ_SECONDS = 3.0
"""How long a page waits for an unreachable broker before it says so."""
PUBLISH_SECONDS = 10.0
"""How long a confirmation or a replay tries to reach the broker before the page says so."""


class DeadLetterGone(LookupError):
    """The dead letter is no longer in the queue (replayed or discarded meanwhile)."""


@dataclass(frozen=True)
class DeadLetter:
    fingerprint: str
    routing_key: str
    error: str
    exception: str
    original_queue: str
    sender: str
    attempt: str
    preview: str
    size: int
    headers: dict[str, str]
    failed_at: float | None = None  # epoch seconds, when known

    @property
    def replayable(self) -> bool:
        return self.routing_key in EVENT_MODELS


HEADER_CHARS = 300
"""A header value is shown up to this long (a publisher may set any size)."""


def _text(value) -> str:
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, list | dict):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= HEADER_CHARS else text[:HEADER_CHARS] + "…"


def failed_at(headers: dict) -> float | None:
    """When the message was dead-lettered: the worker's own header, or the broker's x-death
    record (a delivery limit reached)."""
    try:
        if topology.HEADER_FAILED_AT in headers:
            return float(headers[topology.HEADER_FAILED_AT])
        deaths = headers.get("x-death") or []
        moment = deaths[0].get("time") if deaths and isinstance(deaths[0], dict) else None
        return moment.timestamp() if isinstance(moment, datetime) else None
    except (TypeError, ValueError):
        return None


def dead_letter_of(message) -> DeadLetter:
    body = raw_body(message)
    headers = {str(k): _text(v) for k, v in (message.headers or {}).items()}
    routing_key = str(message.delivery_info.get("routing_key", ""))
    # the broker adds x-delivery-count each time a quorum queue delivers it again
    stable = {k: v for k, v in headers.items() if k != "x-delivery-count"}
    digest = hashlib.sha256()
    for part in (routing_key, json.dumps(stable, sort_keys=True)):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    return DeadLetter(
        fingerprint=digest.hexdigest()[:24],
        routing_key=routing_key,
        error=headers.get(topology.HEADER_ERROR)
        or headers.get("x-first-death-reason", "dead-lettered by the broker"),
        exception=headers.get(topology.HEADER_EXCEPTION, ""),
        original_queue=headers.get(topology.HEADER_ORIGINAL_QUEUE)
        or headers.get("x-first-death-queue", ""),
        sender=headers.get(HEADER_SENDER) or str((message.properties or {}).get("user_id", "")),
        attempt=headers.get(topology.HEADER_ATTEMPT, ""),
        preview=body[:PREVIEW_CHARS].decode("utf-8", "replace"),
        size=len(body),
        headers=headers,
        failed_at=failed_at(message.headers or {}),
    )


class DeskBroker:
    """One connection for the desk's requests (one request at a time on it).

    A replay or discard looks for its letter among the first `shown` only: those are the
    ones the ops page lists (oldest first, and a classic queue keeps that order), so one
    click never reads thousands of bodies while holding the connection."""

    def __init__(self, amqp: AmqpSettings, shown: int = 50) -> None:
        self.client = JewelmatchClient(amqp, retry_seconds=PUBLISH_SECONDS)
        self.shown = shown
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.client.close()

    def publish(self, routing_key: str, body) -> None:
        with self._lock:
            self.client.publish(routing_key, body)

    def depths(self) -> dict[str, int | None]:
        """Messages waiting per watched queue (None: no such queue, or no broker)."""

        def count(connection) -> dict[str, int | None]:
            found: dict[str, int | None] = {}
            for queue in WATCHED_QUEUES:
                with open_channel(connection) as channel:
                    try:
                        found[queue] = channel.queue_declare(queue, passive=True).message_count
                    except NotFound:  # e.g. replicas consume jewelmatch.catalog.<id> instead
                        found[queue] = None
            return found

        with self._lock:
            try:
                return self.client.run(count, within=READ_SECONDS)
            except BROKER_ERRORS:
                return dict.fromkeys(WATCHED_QUEUES)

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        with self._lock:
            return self.client.run(
                lambda connection: self._browse(connection, limit), within=READ_SECONDS
            )

    def replay(self, fingerprint: str, person: str) -> DeadLetter:
        """Publish the dead letter again as the original event; then remove it."""

        def replay(connection, message, letter: DeadLetter) -> None:
            self._replay(connection, message, letter, person)

        with self._lock:
            return self.client.run(
                lambda connection: self._take(connection, fingerprint, replay, self.shown)
            )

    def discard(self, fingerprint: str, person: str) -> DeadLetter:
        """Remove the dead letter; its body preview stays in the desk's log."""

        def discard(connection, message, letter: DeadLetter) -> None:
            log.info(
                "review.dead_letter.discarded",
                person=person,
                routing_key=letter.routing_key,
                error=letter.error,
                body=letter.preview,
            )

        with self._lock:
            return self.client.run(
                lambda connection: self._take(connection, fingerprint, discard, self.shown)
            )

    @staticmethod
    def _taken(channel, limit: int) -> Iterator[tuple[object, DeadLetter]]:
        """Up to `limit` dead letters, oldest first, taken without acknowledging them: each
        goes back to the queue when the channel closes, unless it was acknowledged."""
        for _ in range(limit):
            message = channel.basic_get(topology.DEAD_LETTER_QUEUE, no_ack=False)
            if message is None:
                return
            yield message, dead_letter_of(message)

    @classmethod
    def _browse(cls, connection, limit: int) -> list[DeadLetter]:
        """The first `limit` dead letters; they go back when the channel closes."""
        with open_channel(connection) as channel:
            return [letter for _, letter in cls._taken(channel, limit)]

    @classmethod
    def _take(
        cls,
        connection,
        fingerprint: str,
        act: Callable[[object, object, DeadLetter], None],
        search_limit: int,
    ) -> DeadLetter:
        """Find the dead letter with `fingerprint` among the first `search_limit`, `act` on
        it and acknowledge it; the others go back when the channel closes."""
        with open_channel(connection) as channel:
            for message, letter in cls._taken(channel, search_limit):
                if letter.fingerprint == fingerprint:
                    act(connection, message, letter)
                    channel.basic_ack(message.delivery_info["delivery_tag"])
                    return letter
        raise DeadLetterGone(fingerprint)

    @staticmethod
    def _replay(connection, message, letter: DeadLetter, person: str) -> None:
        if not letter.replayable:
            raise ValueError(f"{letter.routing_key!r} is not an event the worker consumes")
        headers = {
            key: value
            for key, value in (message.headers or {}).items()
            if not key.startswith(("x-jewelmatch-", "x-death", "x-first-death", "x-last-death"))
        }
        headers[HEADER_REPLAYED_BY] = person
        with open_channel(connection) as publish_channel:
            ConfirmedPublisher(publish_channel).publish(
                raw_body(message),
                EVENTS,
                letter.routing_key,
                headers,
                content_type=message.content_type or "application/json",
                content_encoding=message.content_encoding or "utf-8",
                user_id=connection.userid,
            )
        log.info(
            "review.dead_letter.replayed",
            person=person,
            routing_key=letter.routing_key,
            error=letter.error,
        )
