"""The peer integrators are shown (`worker.amqp.client`, docs/contract.md), on a real RabbitMQ
node: it takes exactly what it is asked for and leaves the rest waiting, publishes any form
of an event as the same JSON, and gives up on a broker that stays away."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from shared import topology
from shared.contract import BagPhotographed
from worker.amqp.broker import BROKER_ERRORS, Topology
from worker.amqp.client import JewelmatchClient
from worker.settings import AmqpSettings, OpsSettings
from worker.tools.bench.servers import free_port


def scan(scan_id: str) -> BagPhotographed:
    return BagPhotographed(scan_id=scan_id, image={"bucket": "scans", "key": f"{scan_id}.jpg"})


@pytest.fixture
def peer(amqp_url: str):
    with JewelmatchClient(amqp_url) as client:
        client.declare(Topology.build(AmqpSettings(), OpsSettings()))
        yield client


def scan_ids(taken) -> list[str]:
    return [message.parse(BagPhotographed).scan_id for message in taken]


def test_it_takes_exactly_what_it_is_asked_for_and_the_rest_waits(peer):
    for n in range(6):
        peer.publish(topology.BAG_PHOTOGRAPHED, scan(f"s-{n}"))
    assert scan_ids(peer.receive(topology.SCANS_QUEUE, 2)) == ["s-0", "s-1"]
    assert peer.depth(topology.SCANS_QUEUE) == 4

    seen = []
    taken = peer.receive(
        topology.SCANS_QUEUE,
        until=lambda got: "s-3" in scan_ids(got),
        on_each=lambda message: seen.append(message.routing_key),
    )
    assert scan_ids(taken) == ["s-2", "s-3"]
    assert seen == [topology.BAG_PHOTOGRAPHED] * 2
    assert peer.depth(topology.SCANS_QUEUE) == 2

    with pytest.raises(TimeoutError, match=f"2 messages on {topology.SCANS_QUEUE}"):
        peer.receive(topology.SCANS_QUEUE, 3, timeout=1.5)
    assert peer.depth(topology.SCANS_QUEUE) == 0  # the two it took before giving up are gone


def test_right_after_each_receive_the_depth_counts_exactly_what_waits(peer):
    # A message delivered past the count and given back is counted again only a moment
    # later: a client that let one through was one short here about every other time.
    for n in range(26):
        peer.publish(topology.BAG_PHOTOGRAPHED, scan(f"s-{n}"))
    depths = []
    for _ in range(25):
        peer.receive(topology.SCANS_QUEUE, 1)
        depths.append(peer.depth(topology.SCANS_QUEUE))
    assert depths == list(range(25, 0, -1))


def test_a_condition_that_raises_gives_up_early_and_takes_no_more(peer):
    for n in range(3):
        peer.publish(topology.BAG_PHOTOGRAPHED, scan(f"s-{n}"))

    def enough(got) -> bool:
        if got:
            raise LookupError("seen what I wanted")
        return False

    with pytest.raises(LookupError):
        peer.receive(topology.SCANS_QUEUE, until=enough, timeout=30)
    assert peer.depth(topology.SCANS_QUEUE) == 2


def test_an_event_in_any_form_arrives_as_the_same_json_with_its_headers(peer):
    event = scan("any-form")
    forms = [
        event,
        event.model_dump(mode="json"),
        event.model_dump_json(),
        event.model_dump_json().encode(),
    ]
    for form in forms:
        peer.publish(topology.BAG_PHOTOGRAPHED, form, headers={"x-station": "dock-2"})
    taken = peer.receive(topology.SCANS_QUEUE, len(forms))
    assert [json.loads(message.body) for message in taken] == [
        json.loads(event.model_dump_json())
    ] * len(forms)
    assert all(message.headers.get("x-station") == "dock-2" for message in taken)
    assert all(message.arrived > 0 for message in taken)


def test_receive_needs_a_count_or_a_condition(peer):
    with pytest.raises(ValueError, match="count or an until"):
        peer.receive(topology.SCANS_QUEUE)


def test_a_broker_that_stays_away_is_given_up_on_after_the_retry_period():
    client = JewelmatchClient(f"amqp://guest:guest@127.0.0.1:{free_port()}//", retry_seconds=1)
    started = time.monotonic()
    with pytest.raises(BROKER_ERRORS):
        client.publish(topology.BAG_PHOTOGRAPHED, scan("nobody-listens"))
    assert 1 <= time.monotonic() - started < 30


def test_importing_the_client_loads_neither_torch_nor_open_clip():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, worker.amqp.client; "
            "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
