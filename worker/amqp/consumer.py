"""The consumer loop: the connection's life cycle, handlers in the background, settlement.

All AMQP work happens on this loop's thread (kombu connections are not thread-safe), the way
kombu's `ConsumerMixin` and dramatiq's consumer thread divide the work: the loop connects,
consumes into the `Inbox`, keeps heartbeats flowing while a batch is handled in a background
thread, and settles each delivery (`Settlement`). When the queues are idle it calls the
service's idle hook (refits, index maintenance, housekeeping: `worker.service.maintenance`).
Broker failures reconnect with backoff; nothing a message does can stop the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from amqp.exceptions import PreconditionFailed
from kombu import Connection, Consumer
from kombu.message import Message

from shared import topology
from worker.amqp.broker import (
    BROKER_ERRORS,
    ConfirmedPublisher,
    Topology,
    broker_address,
    connect,
)
from worker.amqp.catalog_gate import CatalogGate
from worker.amqp.inbox import Inbox
from worker.amqp.settlement import Settlement, raw_body, trusted_delivery
from worker.errors import StartupError
from worker.observability.logs import get_logger
from worker.observability.probes import Health
from worker.observability.prometheus import BATCH_SIZE, CATALOG_PAUSED
from worker.pipeline.handlers import Handlers
from worker.pipeline.outcome import Action, Outcome
from worker.settings import Settings

__all__ = ["DrainTimeout", "Worker", "raw_body"]

log = get_logger(__name__)

HANDLER_POLL_SECONDS = 0.002
"""How often the loop looks whether the handler thread is done (adds at most this latency)."""


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


def worker_user(connection: Connection) -> str | None:
    """The AMQP user this worker logs in as (None on the in-memory transport, where nobody
    validates a user_id)."""
    if connection.transport.driver_type != "amqp":
        return None
    return connection.userid


class BrokerUnreachable(StartupError):
    """The broker could not be reached within `amqp.connect_timeout_seconds`."""


class TopologyMismatch(StartupError):
    """A queue or exchange exists with other arguments than the worker declares (a queue
    type changed by an upgrade): retrying would never help."""


class DrainTimeout(Exception):
    """The batch in hand outlived the grace period after a stop."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        handlers: Handlers,
        health: Health | None = None,
        connection_factory: Callable[[], Connection] | None = None,
        on_idle: Callable[[], None] = lambda: None,
        catalog_gate: CatalogGate | None = None,
    ) -> None:
        self.settings = settings
        self.handlers = handlers
        self.health = health or Health()
        self.topology = Topology.build(settings.amqp, settings.ops)
        self._connect = connection_factory or (lambda: connect(settings.amqp))
        self._stopping = False
        self._stop_logged = False
        self.inbox = Inbox(settings.model.batch_size, settings.amqp.catalog_prefetch)
        self._on_idle = on_idle
        self._stop_requested_at = 0.0
        self._consumers: list[Consumer] = []
        self.catalog_gate = catalog_gate or CatalogGate(lambda: None)
        self._catalog_consumer: Consumer | None = None
        CATALOG_PAUSED.set(0)

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
        been empty that long. Reconnects with backoff when the broker goes away; raises
        `BrokerUnreachable` once it has been out of reach for `amqp.connect_timeout_seconds`
        (when set)."""
        try:
            self._run(idle_exit_seconds)
        finally:
            self.health.broker_connected = False

    def _run(self, idle_exit_seconds: float | None) -> None:
        backoff = 1.0
        unreachable_since = time.monotonic()
        while not self._stopping:
            reached = False
            try:
                with self._connect() as connection:
                    connection.ensure_connection(max_retries=1)
                    reached, backoff = True, 1.0
                    if self._serve(connection, idle_exit_seconds):
                        return
            except DrainTimeout as error:
                log.warning("worker.drain_timeout", error=str(error))
                return
            except BROKER_ERRORS as error:
                self.health.broker_connected = False
                self.inbox.forget()
                if reached:
                    unreachable_since = time.monotonic()
                self._log_broker_error(error, reached, backoff)
                self._give_up_if_unreachable(unreachable_since)
                self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _log_broker_error(self, error: BaseException, reached: bool, backoff: float) -> None:
        """A connection that dropped, or one that was never made: told apart, with the
        broker's address (never its password)."""
        reason = str(error) or type(error).__name__
        address = broker_address(self.settings.amqp)
        if reached:
            log.warning("broker.connection_lost", broker=address, error=reason, retry_in_s=backoff)
        else:
            log.warning(
                "broker.unreachable",
                message=f"cannot connect to {address}: {reason}",
                retry_in_s=backoff,
            )

    def _give_up_if_unreachable(self, unreachable_since: float) -> None:
        limit = self.settings.amqp.connect_timeout_seconds
        if limit is not None and time.monotonic() - unreachable_since >= limit:
            raise BrokerUnreachable(
                f"cannot connect to {broker_address(self.settings.amqp)} for {limit:g} s "
                "(JEWELMATCH_AMQP__CONNECT_TIMEOUT_SECONDS)"
            )

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.1)

    def _note_stop(self) -> None:
        if not self._stop_logged:
            self._stop_logged = True
            log.info("worker.stopping", grace_s=self.settings.ops.drain_seconds)

    # serving --------------------------------------------------------------------------

    def _serve(self, connection: Connection, idle_exit_seconds: float | None) -> bool:
        """Serve one connection. Returns True when done (stopped or idle), False to reconnect."""
        amqp = self.settings.amqp
        publish_channel = connection.channel()
        try:
            self.topology.declare(publish_channel)
        except PreconditionFailed as error:
            raise TopologyMismatch(
                f"the broker holds a queue or exchange of ours with other arguments: {error} "
                "(after an upgrade, see docs/operations.md, 'Upgrading')"
            ) from None
        self.settlement = Settlement(
            ConfirmedPublisher(publish_channel), self.topology, worker_user(connection)
        )
        scan_channel, catalog_channel = connection.channel(), connection.channel()
        scan_channel.basic_qos(0, amqp.scan_prefetch, False)
        catalog_channel.basic_qos(0, amqp.catalog_prefetch, False)
        self._catalog_consumer = Consumer(
            catalog_channel, [self.topology.catalog], on_message=self.inbox.catalog.append
        )
        self._consumers = [
            Consumer(scan_channel, [self.topology.scans], on_message=self.inbox.scans.append),
            self._catalog_consumer,
        ]
        self._consumers[0].consume()
        if self.catalog_gate.paused_because is None:
            self._catalog_consumer.consume()
        self.health.broker_connected = True
        log.info("worker.consuming", queues=[self.topology.scans.name, self.topology.catalog.name])
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                self.health.beat()
                if self.catalog_gate.recheck_due():
                    self._resume_catalog_work_if_allowed()
                self._drain(connection, timeout=0.05 if self.inbox.pending() else 1.0)
                if self.inbox.pending():
                    self._handle_next_batch(connection)
                    idle_since = time.monotonic()
                else:
                    self._when_idle()
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
                self.inbox.give_back()
            except BROKER_ERRORS:
                pass  # the connection is gone: the broker requeues what was unacked

    def _cancel_consumers(self) -> None:
        for consumer in self._consumers:
            consumer.cancel()
        self._consumers = []

    def _drain(self, connection: Connection, timeout: float) -> None:
        """Receive whatever the broker has for us, waiting at most `timeout` for the first."""
        try:
            connection.drain_events(timeout=timeout)
            while True:
                connection.drain_events(timeout=0)
        except TimeoutError:
            pass
        connection.heartbeat_check()

    def _handle_next_batch(self, connection: Connection) -> None:
        batch = self.inbox.next_batch()
        if batch.kind == "scans":
            queue, handler = topology.SCANS_QUEUE, self.handlers.handle_scans
        else:
            queue, handler = self.topology.catalog.name, self.handlers.handle_catalog
            if self._pause_catalog_work_if_blocked(batch.messages):
                return
        user = self.settlement.worker_user
        deliveries = [trusted_delivery(m, user) for m in batch.messages]
        BATCH_SIZE.labels(queue).observe(len(batch.messages))
        call = _Background(handler, deliveries)
        while not call.done():  # keep heartbeats flowing and the inbox filling
            self._drain(connection, timeout=HANDLER_POLL_SECONDS)
            self.health.beat()
            if self._stopping:
                self._note_stop()
                self._cancel_consumers()  # take nothing new while draining
                waited = time.monotonic() - self._stop_requested_at
                if waited > self.settings.ops.drain_seconds:
                    raise DrainTimeout(
                        f"batch of {len(batch.messages)} not done {waited:.0f} s "
                        "after the stop; left unacked for redelivery"
                    )
        outcomes = self._outcomes(call, len(deliveries))
        if batch.kind == "catalog" and self._pause_catalog_work_if_blocked(batch.messages):
            return  # handled while a switch held writes or replaced the model: done again
        for message, delivery, outcome in zip(batch.messages, deliveries, outcomes, strict=True):
            self.settlement.settle(queue, message, delivery, outcome)

    def _pause_catalog_work_if_blocked(self, batch: Sequence[Message]) -> bool:
        """Give the batch and the catalog work waiting back to the broker (parked for a few
        seconds) and stop taking more, when this worker may not write the catalog now
        (`catalog_gate`)."""
        reason = self.catalog_gate.check()
        if reason is None:
            return False
        queue, user = self.topology.catalog.name, self.settlement.worker_user
        given_back = [m for m in [*batch, *self.inbox.take_catalog()] if not m.acknowledged]
        for message in given_back:
            self.settlement.park(queue, message, trusted_delivery(message, user), reason)
        if self.catalog_gate.paused_because is None:
            log.warning("worker.catalog_work_paused", reason=reason, given_back=len(given_back))
            if self._catalog_consumer is not None:
                self._catalog_consumer.cancel()
        self.catalog_gate.paused_because = reason
        CATALOG_PAUSED.set(1)
        return True

    def _resume_catalog_work_if_allowed(self) -> None:
        if self.catalog_gate.check() is not None:
            return
        log.info("worker.catalog_work_resumed", was=self.catalog_gate.paused_because)
        self.catalog_gate.paused_because = None
        CATALOG_PAUSED.set(0)
        if self._catalog_consumer is not None:
            self._catalog_consumer.consume()

    @staticmethod
    def _outcomes(call: _Background, count: int) -> Sequence[Outcome]:
        """The handlers isolate every message; should they still fail as a whole, every
        message of the batch is dead-lettered rather than the loop stopping."""
        try:
            outcomes = call.result()
            if len(outcomes) == count:
                return outcomes
            error = f"handler returned {len(outcomes)} outcomes for {count} messages"
        except Exception as raised:
            error = str(raised) or type(raised).__name__
        log.error("batch.failed", error=error, size=count)
        return [
            Outcome(Action.dead_letter, error=error, exception="BatchFailed") for _ in range(count)
        ]

    def _when_idle(self) -> None:
        """The service's idle work (`on_idle`: refits, index maintenance, housekeeping); it
        must not block, and nothing it raises stops the loop."""
        try:
            self._on_idle()
        except Exception as error:
            log.warning("worker.idle_work_failed", error=str(error))
