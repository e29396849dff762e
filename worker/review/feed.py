"""Takes the worker's answers off the desk's own queues into the history, in a thread.

A message is acknowledged only once it is in SQLite; kombu's ConsumerMixin reconnects when
the broker goes away."""

from __future__ import annotations

import contextlib
import threading

from kombu import Connection
from kombu.mixins import ConsumerMixin
from pydantic import ValidationError

from shared import topology
from shared.contract import CatalogOutcome, MatchResult
from worker.amqp.broker import connect, review_queues
from worker.amqp.settlement import raw_body
from worker.observability.logs import get_logger
from worker.review.history import History
from worker.settings import AmqpSettings

log = get_logger(__name__)

RETRY_SECONDS = 5.0
STOP_SECONDS = 2.0


class FeedStopped(Exception):
    """Raised out of a wait for the broker once the feed is stopped."""


class ResultFeed(ConsumerMixin):
    def __init__(self, amqp: AmqpSettings, history: History, max_length: int) -> None:
        self.connection: Connection = connect(amqp)
        self.history = history
        self.queues = review_queues(max_length)
        self.ready = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def get_consumers(self, Consumer, channel):
        for queue in self.queues:  # the worker declares the exchange: the desk may not
            bound = queue(channel)
            bound.queue_declare()
            bound.queue_bind()
        return [
            Consumer(
                queues=self.queues,
                on_message=self.on_message,
                prefetch_count=32,
                auto_declare=False,
            )
        ]

    def on_consume_ready(self, connection, channel, consumers, **kwargs) -> None:
        self.ready.set()
        log.info("review.feed.consuming", queues=[q.name for q in self.queues])

    def on_connection_error(self, exc, interval) -> None:
        log.warning("review.feed.broker_unavailable", error=str(exc), retry_in=interval)

    @contextlib.contextmanager
    def establish_connection(self):
        """ConsumerMixin's, but kombu calls `_unless_stopped` each second it waits for the
        broker (its own loop would retry until the process ends)."""
        with self.create_connection() as connection:
            connection.ensure_connection(
                self.on_connection_error, self.connect_max_retries, callback=self._unless_stopped
            )
            yield connection

    def _unless_stopped(self) -> None:
        if self.should_stop:
            raise FeedStopped

    def on_message(self, message) -> None:
        routing_key = message.delivery_info.get("routing_key")
        try:
            if routing_key == topology.MATCH_RESULT:
                self.history.record_result(MatchResult.model_validate_json(raw_body(message)))
            elif routing_key == topology.CATALOG_OUTCOME:
                outcome = CatalogOutcome.model_validate_json(raw_body(message))
                if outcome.event == topology.MATCH_CONFIRMED:
                    self.history.record_outcome(outcome)
        except ValidationError as error:
            # not the worker's answer (or a newer contract): dropped, with a trace for ops
            log.warning("review.feed.unreadable", routing_key=routing_key, error=str(error))
        message.ack()

    def run_until_stopped(self) -> None:
        """ConsumerMixin reconnects after connection errors; a channel error (the results
        exchange not declared yet: no worker has started) is waited out here."""
        while not self.should_stop:
            try:
                self.run()
            except FeedStopped:
                return
            except self.connection.channel_errors as error:
                log.warning("review.feed.waiting", error=str(error), retry_in=RETRY_SECONDS)
                self.connection.release()
                self.connection = self.connection.clone()  # a fresh connection, no dead channel
                self._stopped.wait(RETRY_SECONDS)

    def start(self) -> ResultFeed:
        self._thread = threading.Thread(
            target=self.run_until_stopped, name="review-feed", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Within about a second: the consuming loop and a wait for the broker look at
        `should_stop` at least once a second, and a wait for the results exchange ends at
        once. (A message being written to SQLite then is acked, or redelivered to the next
        start: nothing is lost either way.)"""
        self.should_stop = True
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_SECONDS)
        with contextlib.suppress(Exception):
            self.connection.release()
