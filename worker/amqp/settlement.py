"""Settling deliveries: what the broker vouches for in, outcomes carried out.

Trust at the broker edge: the event type is the routing key the broker routed, and the
sender is the `user_id` the broker validated. The headers that steer the worker (original
routing key, attempt count, original sender) are honoured only on messages the worker parked
itself in its delay queues: those carry the worker's own `user_id`, which RabbitMQ lets no
other user set. Anyone else's copy of those headers is ignored.

Settling one delivery: publish its results (confirmed by the broker), then ack it, park it in
a delay queue for a retry, or dead-letter it with the error attached.
"""

from __future__ import annotations

import time

from kombu.message import Message

from shared import topology
from worker.amqp.broker import DEAD_LETTER, RESULTS, ConfirmedPublisher, Topology
from worker.observability.logs import get_logger
from worker.observability.prometheus import (
    DEAD_LETTERS,
    MESSAGES,
    RETRIES,
    SCAN_RESULTS,
    SCAN_SECONDS,
    STAGE_SECONDS,
    observe_stages,
)
from worker.pipeline.outcome import Action, Delivery, Outcome

log = get_logger(__name__)

HEADER_SENDER = "x-jewelmatch-sender"
"""The original sender's user_id, kept on messages the worker parks for a retry."""


def raw_body(message) -> bytes:
    """The body as sent (py-amqp decodes bodies that declare a content encoding)."""
    body = message.body
    if isinstance(body, str):
        return body.encode(message.content_encoding or "utf-8")
    return bytes(body)


def parked_by(message: Message, worker_user: str | None) -> bool:
    """Whether this message is one the worker itself parked in a delay queue."""
    sender = (message.properties or {}).get("user_id")
    return worker_user is not None and sender == worker_user


def trusted_delivery(message: Message, worker_user: str | None) -> Delivery:
    """The delivery as the broker vouches for it (see the module docstring)."""
    headers = message.headers or {}
    routing_key = str(message.delivery_info.get("routing_key", ""))
    sender = (message.properties or {}).get("user_id")
    attempt = 1
    if parked_by(message, worker_user) and topology.HEADER_ORIGINAL_ROUTING_KEY in headers:
        routing_key = str(headers[topology.HEADER_ORIGINAL_ROUTING_KEY])
        sender = headers.get(HEADER_SENDER) or None
        try:
            attempt = max(1, int(headers.get(topology.HEADER_ATTEMPT, 1)))
        except (TypeError, ValueError):
            attempt = 1
    return Delivery(routing_key, raw_body(message), attempt, sender)


class Settlement:
    def __init__(
        self, publisher: ConfirmedPublisher, topology_: Topology, worker_user: str | None
    ) -> None:
        self.publisher = publisher
        self.topology = topology_
        self.worker_user = worker_user

    def settle(self, queue: str, message: Message, delivery: Delivery, outcome: Outcome) -> None:
        """Publish the outcome's results (confirmed), then ack, retry or dead-letter."""
        started = time.perf_counter()
        for routing_key, result in outcome.results:
            self.publisher.publish(result.model_dump_json(), RESULTS, routing_key)
            if routing_key == topology.MATCH_RESULT:
                reason = getattr(result, "reason", None)
                SCAN_RESULTS.labels(result.status, reason.value if reason else "").inc()
        if outcome.action is Action.retry:
            retry_queue = self.topology.retry_queue(queue, delivery.attempt)
            self._republish(
                message, delivery, outcome, queue, "", retry_queue.name, delivery.attempt + 1
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
                delivery.attempt,
            )
            DEAD_LETTERS.labels(queue, outcome.log.get("reason") or "unknown").inc()
        message.ack()
        publish_ms = round((time.perf_counter() - started) * 1000, 2)
        STAGE_SECONDS.labels("publish").observe(publish_ms / 1000)
        timings = outcome.log.get("timings_ms") or {}
        observe_stages(timings)
        if queue == topology.SCANS_QUEUE and "embed" in timings:
            SCAN_SECONDS.observe((sum(timings.values()) + publish_ms) / 1000)
        MESSAGES.labels(queue, outcome.action.value).inc()
        log.info(
            "message.handled",
            queue=queue,
            routing_key=delivery.routing_key,
            attempt=delivery.attempt,
            sender=delivery.user_id,
            outcome=outcome.action.value,
            publish_ms=publish_ms,
            error=outcome.error,
            **outcome.log,
        )

    def park(self, queue: str, message: Message, delivery: Delivery, reason: str) -> None:
        """Send a delivery this worker may not handle now to the shortest delay queue, its
        attempt not counted, and ack it: it comes back to its queue in a few seconds for a
        worker that may. Requeued instead, it would spend one of the broker's deliveries each
        time a worker gave it back, and the delivery limit would dead-letter it."""
        parked = Outcome(Action.retry, error=f"not handled now: {reason}")
        delay_queue = self.topology.retry_queue(queue, 1)
        self._republish(message, delivery, parked, queue, "", delay_queue.name, delivery.attempt)
        message.ack()
        log.info("message.parked", queue=queue, routing_key=delivery.routing_key, reason=reason)

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
        keeping the body and content properties it came with, under the worker's own user."""
        headers = {
            **(message.headers or {}),
            topology.HEADER_ORIGINAL_ROUTING_KEY: delivery.routing_key,
            topology.HEADER_ORIGINAL_QUEUE: queue,
            topology.HEADER_ATTEMPT: attempt,
            topology.HEADER_ERROR: (outcome.error or "")[:2000],
            topology.HEADER_EXCEPTION: outcome.exception or "",
            topology.HEADER_FAILED_AT: int(time.time()),
            HEADER_SENDER: delivery.user_id or "",
        }
        self.publisher.publish(
            delivery.body,
            exchange,
            routing_key,
            headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            user_id=self.worker_user,
        )
