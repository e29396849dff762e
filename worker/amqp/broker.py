"""The AMQP side: the topology the worker declares, and publishing confirmed by the broker."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from amqp.exceptions import AMQPError, MessageNacked
from kombu import Connection, Exchange, Producer, Queue, binding
from kombu.exceptions import OperationalError

from shared import topology
from worker.settings import AmqpSettings, OpsSettings

EVENTS = Exchange(topology.EVENTS_EXCHANGE, "topic", durable=True)
RESULTS = Exchange(topology.RESULTS_EXCHANGE, "topic", durable=True)
DEAD_LETTER = Exchange(topology.DEAD_LETTER_EXCHANGE, "topic", durable=True)
DEFAULT = Exchange("", "direct")

# what a lost or refused broker connection raises, from kombu, py-amqp or the socket
BROKER_ERRORS = (OperationalError, AMQPError, ConnectionError, OSError)


class Unroutable(ConnectionError):
    """The broker could not route a mandatory message to any queue (it was returned)."""


class PublishRejected(ConnectionError):
    """The broker nacked a message (a queue not yet available after a restart, or full)."""


def _quorum(**extra) -> dict:
    # at-least-once dead-lettering needs reject-publish overflow; both are quorum features.
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        **extra,
    }


@dataclass(frozen=True)
class Topology:
    scans: Queue
    catalog: Queue
    results: Queue
    catalog_outcomes: Queue
    dead_letters: Queue
    retry_queues: dict[str, dict[int, Queue]]

    @classmethod
    def build(cls, amqp: AmqpSettings, ops: OpsSettings) -> Topology:
        def work_queue(name: str, keys: tuple[str, ...]) -> Queue:
            return Queue(
                name,
                exchange=EVENTS,
                bindings=[binding(EVENTS, routing_key=key) for key in keys],
                durable=True,
                queue_arguments=_quorum(
                    **{
                        "x-delivery-limit": amqp.delivery_limit,
                        "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
                    }
                ),
            )

        def retry_queues(origin: str) -> dict[int, Queue]:
            return {
                delay: Queue(
                    topology.retry_queue_name(origin, delay),
                    exchange=DEFAULT,
                    routing_key=topology.retry_queue_name(origin, delay),
                    durable=True,
                    queue_arguments=_quorum(
                        **{
                            "x-message-ttl": delay * 1000,
                            "x-dead-letter-exchange": "",
                            "x-dead-letter-routing-key": origin,
                        }
                    ),
                )
                for delay in sorted(set(ops.retry_delays_seconds))
            }

        catalog_queue = topology.catalog_queue_name(amqp.replica_id)
        return cls(
            scans=work_queue(topology.SCANS_QUEUE, topology.SCAN_ROUTING_KEYS),
            catalog=work_queue(catalog_queue, topology.CATALOG_ROUTING_KEYS),
            results=Queue(
                topology.RESULTS_QUEUE,
                exchange=RESULTS,
                routing_key=topology.MATCH_RESULT,
                durable=True,
                # full: the broker refuses further answers (nacks), so scans wait unacked
                # instead of answers being lost
                queue_arguments=_quorum(**{"x-max-length": amqp.results_max_length}),
            ),
            catalog_outcomes=Queue(
                topology.CATALOG_OUTCOMES_QUEUE,
                exchange=RESULTS,
                routing_key=topology.CATALOG_OUTCOME,
                durable=True,
                queue_arguments={
                    "x-queue-type": "quorum",
                    "x-max-length": amqp.outcomes_max_length,
                    "x-overflow": "drop-head",
                },
            ),
            dead_letters=Queue(
                topology.DEAD_LETTER_QUEUE,
                exchange=DEAD_LETTER,
                routing_key="#",
                durable=True,
                # bounded: a flood of bad messages drops the oldest evidence rather than
                # filling the broker until its alarms block every publisher (alerted on).
                # Classic, not quorum: ops list dead letters by taking them without an ack,
                # and a quorum queue counts each such look as a delivery (RabbitMQ 4 drops a
                # message after 20 by default); a classic queue counts none, on any version,
                # and puts each back where it was
                queue_arguments={
                    "x-queue-type": "classic",
                    "x-max-length": amqp.dead_letters_max_length,
                    "x-overflow": "drop-head",
                },
            ),
            retry_queues={
                origin: retry_queues(origin) for origin in (topology.SCANS_QUEUE, catalog_queue)
            },
        )

    def all_queues(self) -> list[Queue]:
        return [
            self.scans,
            self.catalog,
            self.results,
            self.catalog_outcomes,
            self.dead_letters,
            *(q for by_delay in self.retry_queues.values() for q in by_delay.values()),
        ]

    def declare(self, channel) -> None:
        """Declare exchanges, queues and bindings (idempotent)."""
        for exchange in (EVENTS, RESULTS, DEAD_LETTER):
            exchange(channel).declare()
        for queue in self.all_queues():
            queue(channel).declare()

    def retry_queue(self, origin: str, attempt: int) -> Queue:
        """The delay queue for the retry after failed attempt number `attempt` (from 1)."""
        delays = sorted(self.retry_queues[origin])
        return self.retry_queues[origin][delays[min(attempt, len(delays)) - 1]]


def review_queues(max_length: int) -> list[Queue]:
    """The review desk's own queues of results and outcomes: a copy of each answer, so the
    desk never takes one from the inventory system or the PIM. Bounded, oldest dropped: a
    desk that was down long misses old scans, never blocks the worker."""
    return [
        Queue(
            name,
            exchange=RESULTS,
            routing_key=routing_key,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-max-length": max_length,
                "x-overflow": "drop-head",
            },
        )
        for name, routing_key in (
            (topology.REVIEW_RESULTS_QUEUE, topology.MATCH_RESULT),
            (topology.REVIEW_OUTCOMES_QUEUE, topology.CATALOG_OUTCOME),
        )
    ]


@contextlib.contextmanager
def open_channel(connection: Connection) -> Iterator:
    """A channel of `connection` for one piece of work, closed after it (quietly: a channel
    the broker closed on an error, or a lost connection, has nothing left to close)."""
    channel = connection.channel()
    try:
        yield channel
    finally:
        with contextlib.suppress(*BROKER_ERRORS):
            channel.close()


def tls_options(settings: AmqpSettings) -> dict | None:
    """py-amqp TLS options that verify the broker's certificate chain and host name.

    `server_hostname: None` makes kombu fill in the URL's host, which turns on py-amqp's
    host-name check (without it, any certificate of a trusted CA would be accepted).
    """
    url = settings.url.get_secret_value()
    if not (settings.ssl or url.startswith("amqps://")):
        return None
    options: dict = {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": settings.ssl_server_hostname,
    }
    if settings.ssl_ca_file:
        options["ca_certs"] = str(settings.ssl_ca_file)
    if settings.ssl_cert_file:
        options["certfile"] = str(settings.ssl_cert_file)
        options["keyfile"] = str(settings.ssl_key_file) if settings.ssl_key_file else None
    return options


def broker_address(settings: AmqpSettings) -> str:
    """`HOST:PORT (vhost V)` of the configured broker, for messages a person reads (never the
    password)."""
    url = settings.url.get_secret_value()
    if "://" not in url or url.startswith("memory://"):
        return url.split("://", 1)[0] + "://"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (5671 if parts.scheme == "amqps" else 5672)
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    return f"{parts.hostname or 'localhost'}:{port} (vhost {path or '/'})"


def broker_user(settings: AmqpSettings) -> str | None:
    """The login in the broker URL (None for the in-memory transport); the URL's default,
    as kombu's, is guest."""
    url = settings.url.get_secret_value()
    if "://" not in url or url.startswith("memory://"):
        return None
    return unquote(urlsplit(url).username or "guest")


def connect(settings: AmqpSettings) -> Connection:
    """A kombu connection with publisher confirms and heartbeats (not yet connected)."""
    return Connection(
        settings.url.get_secret_value(),
        heartbeat=settings.heartbeat_seconds,
        ssl=tls_options(settings) or False,
        transport_options={"confirm_publish": True},
        connect_timeout=10,
    )


class ConfirmedPublisher:
    """Publishes persistent JSON messages and returns only once the broker has taken them.

    With publisher confirms on, py-amqp waits for the broker's ack of each message; with
    `mandatory`, a message no queue would receive is returned, and we raise `Unroutable`
    instead of believing it delivered.
    """

    def __init__(self, channel) -> None:
        self._returned: list[str] = []
        self._producer = Producer(channel, on_return=self._on_return)

    def _on_return(self, exception, exchange, routing_key, message) -> None:
        self._returned.append(f"{exchange or '<default>'}/{routing_key}: {exception}")

    def publish(
        self,
        body: str | bytes,
        exchange: Exchange | str,
        routing_key: str,
        headers: dict | None = None,
        content_type: str = "application/json",
        content_encoding: str = "utf-8",
        user_id: str | None = None,
    ) -> None:
        """`user_id` states the publishing user; RabbitMQ refuses any other than the
        connection's own, so a consumer can trust it."""
        self._returned.clear()
        properties = {"user_id": user_id} if user_id else {}
        try:
            self._producer.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                headers=headers or {},
                content_type=content_type,
                content_encoding=content_encoding,
                delivery_mode=2,
                mandatory=True,
                retry=False,
                **properties,
            )
        except MessageNacked:
            raise PublishRejected(f"the broker nacked a message to {routing_key}") from None
        if self._returned:
            raise Unroutable("; ".join(self._returned))
