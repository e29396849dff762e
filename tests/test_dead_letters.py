"""The desk's dead letters (`review/operations.py`): what a letter shows, and replay and
discard on a real RabbitMQ node: the event sent again as it came, the letter gone only then,
and nothing done to a letter the page does not list."""

from __future__ import annotations

import datetime as dt

import pytest
from kombu import Connection
from kombu.message import Message

from shared import topology
from worker.amqp.broker import DEAD_LETTER, ConfirmedPublisher, Topology
from worker.amqp.client import JewelmatchClient
from worker.amqp.settlement import HEADER_SENDER
from worker.review.operations import (
    HEADER_REPLAYED_BY,
    WATCHED_QUEUES,
    DeadLetterGone,
    DeskBroker,
    dead_letter_of,
)
from worker.settings import AmqpSettings, OpsSettings

WORKER_HEADERS = {
    topology.HEADER_ERROR: "image_not_found: s3://scans/gone.jpg",
    topology.HEADER_EXCEPTION: "PermanentError",
    topology.HEADER_ORIGINAL_QUEUE: topology.SCANS_QUEUE,
    topology.HEADER_ORIGINAL_ROUTING_KEY: topology.BAG_PHOTOGRAPHED,
    topology.HEADER_ATTEMPT: 3,
    topology.HEADER_FAILED_AT: 1_700_000_000,
    HEADER_SENDER: "scan-station",
}


def letter(body: bytes = b'{"scan_id": "s1"}', routing_key=topology.BAG_PHOTOGRAPHED, **headers):
    return dead_letter_of(
        Message(
            body=body,
            delivery_info={"routing_key": routing_key},
            properties={"user_id": "jewelmatch-worker"},
            headers=headers,
            content_type="application/json",
        )
    )


def test_a_letter_the_worker_sent_shows_its_error_queue_sender_attempt_and_time():
    shown = letter(**WORKER_HEADERS)
    assert shown.error == "image_not_found: s3://scans/gone.jpg"
    assert shown.exception == "PermanentError"
    assert shown.original_queue == topology.SCANS_QUEUE
    assert (shown.sender, shown.attempt) == ("scan-station", "3")
    assert shown.failed_at == 1_700_000_000.0
    assert shown.replayable and shown.preview == '{"scan_id": "s1"}' and shown.size == 17


def test_a_letter_the_broker_sent_shows_its_own_reason_queue_and_time():
    died = dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC)
    shown = letter(
        **{
            "x-first-death-reason": "delivery_limit",
            "x-first-death-queue": topology.CATALOG_QUEUE,
            "x-death": [{"time": died, "reason": "delivery_limit"}],
        }
    )
    assert (shown.error, shown.original_queue) == ("delivery_limit", topology.CATALOG_QUEUE)
    assert shown.sender == "jewelmatch-worker"  # no sender header: the publishing user
    assert shown.failed_at == died.timestamp()
    assert letter().error == "dead-lettered by the broker"
    assert letter().failed_at is None
    assert letter(**{topology.HEADER_FAILED_AT: "yesterday"}).failed_at is None


def test_a_letter_is_shown_within_bounds_whatever_its_sender_put_in_it():
    headers = {"x-big": "y" * 301, "x-300": "z" * 300, "x-list": [1, "a"], "x-raw": b"\xffz"}
    shown = letter(b"x" * 5000, **headers)
    assert shown.preview == "x" * 600 and shown.size == 5000
    assert shown.headers["x-big"] == "y" * 300 + "…"
    assert shown.headers["x-300"] == "z" * 300
    assert shown.headers["x-list"] == '[1, "a"]'
    assert shown.headers["x-raw"] == "\ufffdz"
    assert not letter(routing_key=topology.MATCH_RESULT).replayable  # no event the worker takes


def test_a_letter_keeps_its_fingerprint_as_the_broker_counts_its_deliveries():
    first = letter(**WORKER_HEADERS)
    assert letter(**dict(reversed(WORKER_HEADERS.items()))).fingerprint == first.fingerprint
    assert letter(**WORKER_HEADERS, **{"x-delivery-count": 4}).fingerprint == first.fingerprint
    assert letter(b"{}", **WORKER_HEADERS).fingerprint != first.fingerprint
    other_key = letter(routing_key=topology.PRODUCT_DELETED, **WORKER_HEADERS)
    assert other_key.fingerprint != first.fingerprint
    assert letter(**{**WORKER_HEADERS, topology.HEADER_ATTEMPT: 4}).fingerprint != (
        first.fingerprint
    )


# on a real broker ---------------------------------------------------------------------------


@pytest.fixture
def desk(amqp_url):
    with JewelmatchClient(amqp_url) as peer:
        peer.declare(Topology.build(AmqpSettings(), OpsSettings()))
    broker = DeskBroker(AmqpSettings(url=amqp_url), shown=2)
    yield broker
    broker.close()


def dead_letter(amqp_url: str, body: str, routing_key=topology.BAG_PHOTOGRAPHED) -> None:
    with Connection(amqp_url, transport_options={"confirm_publish": True}) as connection:
        ConfirmedPublisher(connection.channel()).publish(
            body.encode("latin-1"),
            DEAD_LETTER,
            routing_key,
            {**WORKER_HEADERS, "x-station-trace": "t-9"},
            content_type="text/plain",
            content_encoding="latin-1",
        )


def taken(amqp_url: str, queue: str) -> list[Message]:
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        found = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            found.append(message)
        return found


@pytest.mark.integration
def test_a_replayed_letter_is_its_event_again_and_is_gone_from_the_dead_letters(desk, amqp_url):
    dead_letter(amqp_url, '{"scan_id": "café"}')
    [shown] = desk.dead_letters(10)
    assert desk.replay(shown.fingerprint, "otto") == shown
    [event] = taken(amqp_url, topology.SCANS_QUEUE)  # routed as the original event
    assert event.body == '{"scan_id": "café"}'  # as sent, in its own content type and encoding
    properties = event.properties
    assert (properties["content_type"], properties["content_encoding"]) == (
        "text/plain",
        "latin-1",
    )
    assert event.delivery_info["routing_key"] == topology.BAG_PHOTOGRAPHED
    headers = dict(properties["application_headers"])
    headers.pop("x-delivery-count")  # the quorum queue's own count of this new delivery
    assert headers == {"x-station-trace": "t-9", HEADER_REPLAYED_BY: "otto"}
    assert properties["user_id"] == "guest"  # the desk's own user, which the broker checks
    assert desk.dead_letters(10) == []
    with pytest.raises(DeadLetterGone):
        desk.replay(shown.fingerprint, "otto")  # replayed once only


@pytest.mark.integration
def test_a_letter_no_worker_would_take_is_not_replayed_and_stays(desk, amqp_url):
    dead_letter(amqp_url, '{"scan_id": "s1"}', routing_key=topology.MATCH_RESULT)
    [shown] = desk.dead_letters(10)
    with pytest.raises(ValueError, match="not an event the worker consumes"):
        desk.replay(shown.fingerprint, "otto")
    assert desk.dead_letters(10) == [shown]


@pytest.mark.integration
def test_only_the_letters_the_page_lists_are_replayed_or_discarded(desk, amqp_url):
    for n in range(3):
        dead_letter(amqp_url, f'{{"n": {n}}}')
    first, second, third = desk.dead_letters(10)
    with pytest.raises(DeadLetterGone):
        desk.discard(third.fingerprint, "otto")  # beyond the two the page shows
    assert desk.discard(second.fingerprint, "otto") == second
    assert desk.dead_letters(10) == [first, third]  # the others in their places
    assert taken(amqp_url, topology.SCANS_QUEUE) == []  # a discard sends nothing on


@pytest.mark.integration
def test_queue_depths_count_what_waits_and_none_where_nothing_can_be_read(desk, amqp_url):
    dead_letter(amqp_url, "{}")
    depths = desk.depths()
    assert set(depths) == set(WATCHED_QUEUES)
    assert depths[topology.DEAD_LETTER_QUEUE] == 1 and depths[topology.SCANS_QUEUE] == 0
    assert depths[topology.REVIEW_RESULTS_QUEUE] is None  # no desk declared its copies here
    unreachable = DeskBroker(AmqpSettings(url="amqp://guest:guest@127.0.0.1:9//"))
    try:
        assert unreachable.depths() == dict.fromkeys(WATCHED_QUEUES)
    finally:
        unreachable.close()
