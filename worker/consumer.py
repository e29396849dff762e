"""The consumer loop: RabbitMQ in, handlers, confirmed results out, then the ack.

All AMQP work happens on this loop's thread (kombu connections are not thread-safe).
Handlers run in a background thread while the loop keeps the connection alive: it sends
heartbeats and receives further deliveries (bounded by the prefetch) into local buffers.
Scans are always handled before catalog work, whatever arrived first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from amqp.exceptions import AMQPError
from kombu import Connection, Consumer
from kombu.exceptions import OperationalError
from kombu.message import Message

from shared import topology
from worker.broker import DEAD_LETTER, RESULTS, ConfirmedPublisher, Topology, connect
from worker.handlers import Action, Delivery, Handlers, Outcome
from worker.logs import get_logger
from worker.metrics import (
    BATCH_SIZE,
    DEAD_LETTERS,
    MESSAGES,
    RETRIES,
    SCAN_RESULTS,
    STAGE_SECONDS,
    observe_stages,
)
from worker.ops import Health
from worker.settings import Settings

log = get_logger(__name__)

HOUSEKEEPING_SECONDS = 3600.0
HANDLER_POLL_SECONDS = 0.002
"""How often the loop looks whether the handler thread is done (adds at most this latency)."""

BROKER_ERRORS = (OperationalError, AMQPError, ConnectionError, OSError)


class _Background:
    """Runs one call in a daemon thread (a stuck call cannot block the process's exit)."""

    def __init__(self, function: Callable, *args) -> None:
        self._result = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(function, *args), name="handler", daemon=True
        )
        self._thread.start()

    def _run(self, function: Callable, *args) -> None:
        try:
            self._result = function(*args)
        except BaseException as error:
            self._error = error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _routing_key(message: Message) -> str:
    headers = message.headers or {}
    return str(
        headers.get(topology.HEADER_ORIGINAL_ROUTING_KEY)
        or message.delivery_info.get("routing_key", "")
    )


def raw_body(message) -> bytes:
    """The body as sent (py-amqp decodes bodies that declare a content encoding)."""
    body = message.body
    if isinstance(body, str):
        return body.encode(message.content_encoding or "utf-8")
    return bytes(body)


def _attempt(message: Message) -> int:
    try:
        return max(1, int((message.headers or {}).get(topology.HEADER_ATTEMPT, 1)))
    except (TypeError, ValueError):
        return 1


class DrainTimeout(Exception):
    """The batch in hand outlived the grace period after a stop."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        handlers: Handlers,
        health: Health | None = None,
        connection_factory: Callable[[], Connection] | None = None,
    ) -> None:
        self.settings = settings
        self.handlers = handlers
        self.health = health or Health()
        self.topology = Topology.build(settings.amqp, settings.ops)
        self._connect = connection_factory or (lambda: connect(settings.amqp))
        self._stopping = False
        self._stop_logged = False
        self._scans: deque[Message] = deque()
        self._catalog: deque[Message] = deque()
        self._last_housekeeping = 0.0
        self._stop_requested_at = 0.0
        self._consumers: list[Consumer] = []

    # lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return (safe from a signal handler).

        A batch that is not done `drain_seconds` after this is abandoned: its messages are
        not acked, so the broker gives them to another worker."""
        # Only plain assignments: this runs inside a signal handler, where taking a lock that
        # the interrupted code may hold (a logger's, an Event's) would deadlock.
        if not self._stopping:
            self._stop_requested_at = time.monotonic()
        self.health.stopping = True
        self._stopping = True

    def run(self, idle_exit_seconds: float | None = None) -> None:
        """Consume until `stop()`; with `idle_exit_seconds`, also return once the queues have
        been empty that long. Reconnects with backoff when the broker goes away."""
        backoff = 1.0
        while not self._stopping:
            try:
                with self._connect() as connection:
                    connection.ensure_connection(max_retries=1)
                    backoff = 1.0
                    if self._serve(connection, idle_exit_seconds):
                        return
            except DrainTimeout as error:
                log.warning("worker.drain_timeout", error=str(error))
                break
            except BROKER_ERRORS as error:
                self.health.broker_connected = False
                self._forget_buffers()
                log.warning(
                    "broker.disconnected",
                    error=str(error) or type(error).__name__,
                    retry_in_s=backoff,
                )
                self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        self.health.broker_connected = False

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.1)

    def _note_stop(self) -> None:
        if not self._stop_logged:
            self._stop_logged = True
            log.info("worker.stopping", grace_s=self.settings.ops.drain_seconds)

    def _forget_buffers(self) -> None:
        # Unacked deliveries of a dead connection are redelivered by the broker.
        self._scans.clear()
        self._catalog.clear()

    # serving --------------------------------------------------------------------------

    def _serve(self, connection: Connection, idle_exit_seconds: float | None) -> bool:
        """Serve one connection. Returns True when done (stopped or idle), False to reconnect."""
        amqp = self.settings.amqp
        publish_channel = connection.channel()
        self.topology.declare(publish_channel)
        self._publisher = ConfirmedPublisher(publish_channel)
        scan_channel, catalog_channel = connection.channel(), connection.channel()
        scan_channel.basic_qos(0, amqp.scan_prefetch, False)
        catalog_channel.basic_qos(0, amqp.catalog_prefetch, False)
        consumers = [
            Consumer(
                scan_channel, [self.topology.scans], on_message=self._scans.append, no_ack=False
            ),
            Consumer(
                catalog_channel,
                [self.topology.catalog],
                on_message=self._catalog.append,
                no_ack=False,
            ),
        ]
        self._consumers = consumers
        for consumer in consumers:
            consumer.consume()
        self.health.broker_connected = True
        log.info("worker.consuming", queues=[self.topology.scans.name, self.topology.catalog.name])
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                self.health.beat()
                self._drain(connection, timeout=0.05 if self._pending() else 1.0)
                if self._pending():
                    self._handle_next_batch(connection)
                    idle_since = time.monotonic()
                else:
                    self._housekeeping()
                    if (
                        idle_exit_seconds is not None
                        and time.monotonic() - idle_since >= idle_exit_seconds
                    ):
                        return True
            return True
        finally:
            if self._stopping:
                self._note_stop()
            try:
                self._cancel_consumers()

                self._requeue_buffered()
            except BROKER_ERRORS:
                pass  # the connection is gone: the broker requeues what was unacked

    def _cancel_consumers(self) -> None:
        for consumer in self._consumers:
            consumer.cancel()
        self._consumers = []

    def _pending(self) -> bool:
        return bool(self._scans or self._catalog)

    def _drain(self, connection: Connection, timeout: float) -> None:
        """Receive whatever the broker has for us, waiting at most `timeout` for the first."""
        try:
            connection.drain_events(timeout=timeout)
            while True:
                connection.drain_events(timeout=0)
        except TimeoutError:
            pass
        connection.heartbeat_check()

    def _requeue_buffered(self) -> None:
        """On the way out, give back what was received but not handled."""
        for buffer in (self._scans, self._catalog):
            while buffer:
                message = buffer.popleft()
                if not message.acknowledged:
                    message.reject(requeue=True)

    def _handle_next_batch(self, connection: Connection) -> None:
        if self._scans:
            queue, buffer = topology.SCANS_QUEUE, self._scans
            limit, handler = self.settings.model.batch_size, self.handlers.handle_scans
        else:
            queue, buffer = self.topology.catalog.name, self._catalog

            limit, handler = self.settings.amqp.catalog_prefetch, self.handlers.handle_catalog
        messages = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
        deliveries = [Delivery(_routing_key(m), raw_body(m), _attempt(m)) for m in messages]
        BATCH_SIZE.labels(queue).observe(len(messages))
        call = _Background(handler, deliveries)
        while not call.done():  # keep heartbeats flowing and the buffers filling
            self._drain(connection, timeout=HANDLER_POLL_SECONDS)
            self.health.beat()
            if self._stopping:
                self._note_stop()
                self._cancel_consumers()  # take nothing new while draining
                waited = time.monotonic() - self._stop_requested_at
                if waited > self.settings.ops.drain_seconds:
                    raise DrainTimeout(
                        f"batch of {len(messages)} not done {waited:.0f} s "
                        "after the stop; left unacked for redelivery"
                    )
        outcomes: Sequence[Outcome] = call.result()
        if len(outcomes) != len(messages):
            raise RuntimeError(
                f"handler returned {len(outcomes)} outcomes for {len(messages)} messages"
            )
        for message, delivery, outcome in zip(messages, deliveries, outcomes, strict=True):
            self._settle(queue, message, delivery, outcome)

    def _settle(self, queue: str, message: Message, delivery: Delivery, outcome: Outcome) -> None:
        """Publish the outcome's results (confirmed), then ack, retry or dead-letter."""
        started = time.perf_counter()
        for routing_key, result in outcome.results:
            self._publisher.publish(result.model_dump_json(), RESULTS, routing_key)
            if routing_key == topology.MATCH_RESULT:
                SCAN_RESULTS.labels(getattr(result, "status", "unknown")).inc()
        if outcome.action is Action.retry:
            retry_queue = self.topology.retry_queue(queue, delivery.attempt)
            self._republish(
                message,
                delivery,
                outcome,
                queue,
                "",
                retry_queue.name,
                attempt=delivery.attempt + 1,
            )
            RETRIES.labels(queue).inc()
        elif outcome.action is Action.dead_letter:
            self._republish(
                message,
                delivery,
                outcome,
                queue,
                DEAD_LETTER,
                delivery.routing_key,
                attempt=delivery.attempt,
            )
            DEAD_LETTERS.labels(queue, outcome.log.get("reason") or "unknown").inc()
        message.ack()
        publish_ms = round((time.perf_counter() - started) * 1000, 2)
        STAGE_SECONDS.labels("publish").observe(publish_ms / 1000)
        observe_stages(outcome.log.get("timings_ms") or {})
        MESSAGES.labels(queue, outcome.action.value).inc()
        log.info(
            "message.handled",
            queue=queue,
            routing_key=delivery.routing_key,
            attempt=delivery.attempt,
            outcome=outcome.action.value,
            publish_ms=publish_ms,
            error=outcome.error,
            **outcome.log,
        )

    def _republish(
        self,
        message: Message,
        delivery: Delivery,
        outcome: Outcome,
        queue: str,
        exchange,
        routing_key: str,
        attempt: int,
    ) -> None:
        """Send the message on (to a delay queue or the dead letters) with the error attached,
        keeping the body and content properties it came with."""
        headers = {
            **(message.headers or {}),
            topology.HEADER_ORIGINAL_ROUTING_KEY: delivery.routing_key,
            topology.HEADER_ORIGINAL_QUEUE: queue,
            topology.HEADER_ATTEMPT: attempt,
            topology.HEADER_ERROR: outcome.error or "",
            topology.HEADER_EXCEPTION: outcome.exception or "",
        }
        self._publisher.publish(
            delivery.body,
            exchange,
            routing_key,
            headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
        )

    def _housekeeping(self) -> None:
        """Idle-time work: refit the learned metric when due (in the background), and purge
        expired scan records hourly."""
        self.handlers.matcher.refit_in_background_if_due()
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_SECONDS:
            return

        self._last_housekeeping = now
        try:
            self.handlers.forget_old_scans()
        except Exception as error:  # housekeeping must never stop the worker
            log.warning("housekeeping.failed", error=str(error))
