"""Settling a delivery, on kombu's in-memory transport: what the broker's word (`user_id`) lets
the worker believe of a message's headers, and what a retry, a park and a dead letter carry
on. (The broker's own part, that no other user can claim the worker's `user_id`, needs a real
RabbitMQ: test_trust.py.)"""

from __future__ import annotations

import pytest
from kombu import Connection, Producer
from kombu.message import Message

from shared import topology
from worker.amqp.broker import EVENTS, ConfirmedPublisher, Topology
from worker.amqp.settlement import HEADER_SENDER, Settlement, trusted_delivery
from worker.pipeline.outcome import Action, Delivery, Outcome
from worker.settings import Settings

WORKER = "jewelmatch-worker"
BODY = '{"scan_id": "s1", "image": "s3://scans/s1.jpg"}'


def message(user_id: str | None, **headers) -> Message:
    return Message(
        body=BODY.encode(),
        delivery_info={"routing_key": topology.BAG_PHOTOGRAPHED},
        properties={"user_id": user_id} if user_id else {},
        headers=headers,
        content_type="application/json",
        content_encoding="utf-8",
    )


FORGED = {
    topology.HEADER_ORIGINAL_ROUTING_KEY: topology.PRODUCT_DELETED,
    topology.HEADER_ATTEMPT: 7,
    HEADER_SENDER: "pim",
}


@pytest.mark.parametrize("sender, worker", [(None, None), ("scanner", WORKER), (None, WORKER)])
def test_headers_nobody_vouches_for_steer_nothing(sender, worker):
    # a worker with no broker user of its own (guest, in-memory) believes no header either
    delivery = trusted_delivery(message(sender, **FORGED), worker)
    assert delivery == Delivery(topology.BAG_PHOTOGRAPHED, BODY.encode(), 1, sender)


def test_a_message_the_worker_parked_carries_its_original_key_sender_and_attempt():
    delivery = trusted_delivery(message(WORKER, **FORGED), WORKER)
    assert delivery == Delivery(topology.PRODUCT_DELETED, BODY.encode(), 7, "pim")
    # parked from a sender that stated no user: nobody, never the worker itself
    anonymous = {**FORGED, HEADER_SENDER: ""}
    assert trusted_delivery(message(WORKER, **anonymous), WORKER).user_id is None
    del anonymous[HEADER_SENDER]
    assert trusted_delivery(message(WORKER, **anonymous), WORKER).user_id is None


@pytest.mark.parametrize("attempt", [0, -3, "three", None, 2.5])
def test_an_odd_attempt_header_counts_as_a_first_attempt_or_its_whole_number(attempt):
    headers = {**FORGED, topology.HEADER_ATTEMPT: attempt}
    assert trusted_delivery(message(WORKER, **headers), WORKER).attempt == (
        2 if attempt == 2.5 else 1
    )


@pytest.fixture
def broker():
    settings = Settings(_env_file=None, amqp={"url": "memory://"})
    queues = Topology.build(settings.amqp, settings.ops)
    with Connection("memory://") as connection:
        channel = connection.channel()
        queues.declare(channel)
        for queue in queues.all_queues():
            queue(channel).purge()
        yield channel, queues, Settlement(ConfirmedPublisher(channel), queues, WORKER)


def received(channel, queues: Topology, **headers) -> Message:
    """A scan as the worker receives it from its queue."""
    Producer(channel).publish(
        BODY.encode(),
        exchange=EVENTS,
        routing_key=topology.BAG_PHOTOGRAPHED,
        headers={"x-station-trace": "t-9", **headers},
        content_type="application/json",
        content_encoding="utf-8",
    )
    got = queues.scans(channel).get(no_ack=False)
    assert got is not None
    return got


def taken(channel, queue) -> Message:
    got = queue(channel).get(no_ack=True)
    assert got is not None, f"nothing in {queue.name}"
    return got


def test_a_dead_letter_keeps_the_body_its_properties_and_headers_and_a_bounded_error(broker):
    channel, queues, settlement = broker
    scan = received(channel, queues)
    delivery = Delivery(topology.BAG_PHOTOGRAPHED, BODY.encode(), 2, "scanner")
    failed = Outcome(Action.dead_letter, error="x" * 5000, exception="ValueError")
    settlement.settle(topology.SCANS_QUEUE, scan, delivery, failed)
    letter = taken(channel, queues.dead_letters)
    assert letter.body == BODY.encode()
    assert (letter.content_type, letter.content_encoding) == ("application/json", "utf-8")
    assert letter.delivery_info["routing_key"] == topology.BAG_PHOTOGRAPHED
    headers = letter.headers
    assert headers["x-station-trace"] == "t-9"  # the sender's own headers stay
    assert headers[topology.HEADER_ERROR] == "x" * 2000
    assert headers[topology.HEADER_ATTEMPT] == 2
    assert headers[HEADER_SENDER] == "scanner"
    assert letter.properties["user_id"] == WORKER


def test_a_retry_counts_the_attempt_and_a_park_does_not(broker):
    channel, queues, settlement = broker
    delivery = Delivery(topology.BAG_PHOTOGRAPHED, BODY.encode(), 1, "scanner")
    settlement.settle(
        topology.SCANS_QUEUE,
        received(channel, queues),
        delivery,
        Outcome(Action.retry, error="S3 down"),
    )
    retried = taken(channel, queues.retry_queue(topology.SCANS_QUEUE, 1))
    assert retried.headers[topology.HEADER_ATTEMPT] == 2
    assert trusted_delivery(retried, WORKER) == Delivery(
        topology.BAG_PHOTOGRAPHED, BODY.encode(), 2, "scanner"
    )
    settlement.park(topology.SCANS_QUEUE, received(channel, queues), delivery, "model switch")
    parked = taken(channel, queues.retry_queue(topology.SCANS_QUEUE, 1))
    assert parked.headers[topology.HEADER_ATTEMPT] == 1
    assert trusted_delivery(parked, WORKER).user_id == "scanner"


def test_a_text_body_is_sent_on_in_the_encoding_it_came_in():
    from worker.amqp.settlement import raw_body

    latin = Message(body="café", content_type="text/plain", content_encoding="latin-1")
    assert raw_body(latin) == "café".encode("latin-1")
    assert raw_body(Message(body=b"\xff\x00")) == b"\xff\x00"
