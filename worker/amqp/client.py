"""The worker's peer, for integrators and tests: what a scan station, a PIM or the inventory
system does with jewelmatch over AMQP.

It publishes any contract event with publisher confirms, stating its own broker user (which
RabbitMQ checks), and takes answers off a queue: match results, catalog outcomes, dead
letters. When the broker goes away it reconnects and carries on, within `retry_seconds`.

Receiving is exact: a message is acknowledged only when it is taken, one at a time
(prefetch 1), and the last one only once the consumer is cancelled, so that no message is
delivered past what was asked for and `depth()` at once counts what nobody has taken. (One
delivered and given back is counted again only a moment later.)
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kombu import Connection, Consumer, Queue
from pydantic import BaseModel, SecretStr

from shared import topology
from shared.contract import CatalogOutcome, MatchResult
from worker.amqp.broker import (
    BROKER_ERRORS,
    EVENTS,
    ConfirmedPublisher,
    Topology,
    connect,
    open_channel,
)
from worker.amqp.settlement import raw_body
from worker.settings import AmqpSettings

Model = TypeVar("Model", bound=BaseModel)
Result = TypeVar("Result")


@dataclass(frozen=True)
class Received:
    """One message taken off a queue."""

    body: bytes
    headers: dict = field(default_factory=dict)
    routing_key: str = ""
    arrived: float = 0.0  # time.perf_counter() when it was taken

    def parse(self, model: type[Model]) -> Model:
        return model.model_validate_json(self.body)


class JewelmatchClient:
    def __init__(self, amqp: AmqpSettings | str, retry_seconds: float = 60.0) -> None:
        if isinstance(amqp, str):
            amqp = AmqpSettings(url=SecretStr(amqp))
        self.amqp = amqp
        self.retry_seconds = retry_seconds
        self._connection: Connection | None = None
        self._publisher: ConfirmedPublisher | None = None

    # connection ----------------------------------------------------------------------

    def _connected(self) -> Connection:
        if self._connection is None:
            connection = connect(self.amqp)
            connection.ensure_connection(max_retries=1)
            self._connection = connection
            self._publisher = ConfirmedPublisher(connection.channel())
        return self._connection

    def _reset(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                self._connection.release()
        self._connection = None
        self._publisher = None

    def _retrying(self, action: Callable[[], object], deadline: float | None = None):
        deadline = deadline or time.monotonic() + self.retry_seconds
        while True:
            try:
                return action()
            except BROKER_ERRORS:
                self._reset()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def run(self, action: Callable[[Connection], Result], within: float | None = None) -> Result:
        """Run `action` with the live connection; on a broker error reconnect and run it
        again, for up to `within` seconds (default `retry_seconds`)."""
        deadline = time.monotonic() + within if within is not None else None
        return self._retrying(lambda: action(self._connected()), deadline)

    def declare(self, topo: Topology) -> None:
        """Declare the worker's exchanges and queues (as the worker would on start), so that
        events published before it runs wait for it."""

        def declare() -> None:
            with open_channel(self._connected()) as channel:
                topo.declare(channel)

        self._retrying(declare)

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> JewelmatchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # publishing ----------------------------------------------------------------------

    def publish(
        self, routing_key: str, body: BaseModel | dict | bytes | str, headers: dict | None = None
    ) -> None:
        """Publish one event to the events exchange; returns once the broker has it. A
        message retried after a lost connection may arrive twice: the worker de-duplicates."""
        if isinstance(body, BaseModel):
            body = body.model_dump_json()
        elif isinstance(body, dict):
            body = json.dumps(body)

        def send() -> None:
            connection = self._connected()
            self._publisher.publish(body, EVENTS, routing_key, headers, user_id=connection.userid)

        self._retrying(send)

    # receiving -----------------------------------------------------------------------

    def receive(
        self,
        queue: str,
        count: int | None = None,
        *,
        until: Callable[[list[Received]], bool] | None = None,
        timeout: float = 60.0,
        on_each: Callable[[Received], None] | None = None,
    ) -> list[Received]:
        """Take messages off `queue` until `count` came or `until(taken)` holds (checked
        several times a second, so it may also raise to give up early)."""
        if count is None and until is None:
            raise ValueError("receive needs a count or an until condition")
        taken: list[Received] = []
        deadline = time.monotonic() + timeout

        def done() -> bool:
            return (count is not None and len(taken) >= count) or bool(until and until(taken))

        if not done():
            self._retrying(lambda: self._take(queue, taken, done, deadline, on_each), deadline)
        return taken

    def _take(self, queue, taken, done, deadline, on_each) -> None:
        connection = self._connected()

        def on_message(message) -> None:
            if done():
                return  # not taken: back to the queue when the channel closes
            received = Received(
                raw_body(message),
                dict(message.headers or {}),
                message.delivery_info.get("routing_key", ""),
                time.perf_counter(),
            )
            taken.append(received)
            last = True  # also when `until` raises
            try:
                last = done()
            finally:
                if last:
                    # Before the ack, which would let the broker deliver one more (prefetch
                    # 1): a message delivered and then given back is counted again only a
                    # moment after the channel closes, and depth() would miss it.
                    consumer.cancel()
                message.ack()
            if on_each:
                on_each(received)

        with open_channel(connection) as channel:
            channel.basic_qos(0, 1, False)  # prefetch 1
            consumer = Consumer(
                channel, [Queue(queue, no_declare=True)], on_message=on_message, auto_declare=False
            )
            consumer.consume()
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(taken)} messages on {queue} before the timeout")
                with contextlib.suppress(socket.timeout, TimeoutError):
                    connection.drain_events(timeout=min(0.2, remaining))
                with contextlib.suppress(*BROKER_ERRORS):
                    connection.heartbeat_check()

    def results(self, count: int = 1, timeout: float = 60.0) -> list[MatchResult]:
        return [
            m.parse(MatchResult)
            for m in self.receive(topology.RESULTS_QUEUE, count, timeout=timeout)
        ]

    def outcomes(self, count: int = 1, timeout: float = 60.0) -> list[CatalogOutcome]:
        return [
            m.parse(CatalogOutcome)
            for m in self.receive(topology.CATALOG_OUTCOMES_QUEUE, count, timeout=timeout)
        ]

    def dead_letters(self, count: int = 1, timeout: float = 60.0) -> list[Received]:
        """Dead letters as the worker parked them: the original body, and headers that say
        why (`x-jewelmatch-reason`...) and where it came from."""
        return self.receive(topology.DEAD_LETTER_QUEUE, count, timeout=timeout)

    def depth(self, queue: str) -> int:
        """Messages waiting on `queue` that nobody has taken."""

        def count() -> int:
            with open_channel(self._connected()) as channel:
                return channel.queue_declare(queue, passive=True).message_count

        return self._retrying(count)
