"""Trust at the broker edge, against a real RabbitMQ node loaded with the generated
definitions: every system logs in as its own user, and a message can do only what its
sender's role may do."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import pytest
from kombu import Connection

from shared import topology
from shared.contract import (
    BagPhotographed,
    CatalogOutcome,
    CatalogOutcomeStatus,
    FailureReason,
    MatchConfirmed,
    MatchResult,
    MatchStatus,
    ProductUpserted,
    S3Object,
)
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes, make_settings
from tests.support.definitions_node import definitions_node, role_url
from tests.support.harness import WorkerHarness
from worker.amqp.broker import EVENTS, ConfirmedPublisher, Topology, review_queues
from worker.amqp.client import JewelmatchClient
from worker.pipeline.storage import Blob, S3ImageStore
from worker.settings import AmqpSettings, OpsSettings, ReviewSettings
from worker.tools.synthetic import catalog_designs, render

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(4, seed=23)
ROLES = ("jewelmatch-worker", "scan-station", "pim", "inventory", "admin")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    node = definitions_node(tmp_path_factory.mktemp("rabbit-definitions"))
    node.start()
    yield node
    node.cleanup()


@pytest.fixture
def peers(node):
    """One client per role, and the queues emptied (tests share the node)."""
    with Connection(role_url(node, "admin")) as connection:
        channel = connection.channel()
        Topology.build(AmqpSettings(), OpsSettings()).declare(channel)
        for queue in Topology.build(AmqpSettings(), OpsSettings()).all_queues():
            channel.queue_purge(queue.name)
    clients = {role: JewelmatchClient(role_url(node, role)) for role in ROLES}
    yield clients
    for client in clients.values():
        client.close()


class ExplodingStore(S3ImageStore):
    """The real S3 store, except that one key raises an error nobody planned for."""

    def fetch(self, ref: S3Object) -> Blob:
        if ref.key == "explodes.jpg":
            raise ZeroDivisionError("an error nobody planned for")
        return super().fetch(ref)


@pytest.fixture
def worker(tmp_path: Path, tiny_model_dir, tiny_embedder, node, peers, s3_endpoint, s3):
    for design in DESIGNS:
        data = jpeg_bytes(render(design, 192))
        s3.put_object(Bucket=CATALOG_BUCKET, Key=f"{design.product_id}.jpg", Body=data)
        s3.put_object(Bucket=SCANS_BUCKET, Key=f"bag-{design.product_id}.jpg", Body=data)
    s3.put_object(Bucket=SCANS_BUCKET, Key="explodes.jpg", Body=b"anything")
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        amqp={"url": role_url(node, "jewelmatch-worker"), "confirm_users": ["inventory"]},
        s3={"endpoint_url": s3_endpoint},
    )
    store = ExplodingStore(settings.s3, settings.images.max_bytes)
    with WorkerHarness(settings, tiny_embedder, store=store) as harness:
        for design in DESIGNS:
            peers["pim"].publish(topology.PRODUCT_CREATED, product(design))
        outcomes = read_outcomes(peers["pim"], len(DESIGNS))
        assert {o.status for o in outcomes} == {CatalogOutcomeStatus.applied}
        yield harness


def product(design, version: int | None = None) -> ProductUpserted:
    image = {"image_id": "front", "bucket": CATALOG_BUCKET, "key": f"{design.product_id}.jpg"}
    return ProductUpserted(
        product_id=design.product_id, sku=design.sku, images=[image], version=version
    )


def scan(scan_id: str, key: str, **extra) -> BagPhotographed:
    return BagPhotographed(scan_id=scan_id, image={"bucket": SCANS_BUCKET, "key": key}, **extra)


def read_results(peer: JewelmatchClient, count: int) -> list[MatchResult]:
    messages = peer.receive(topology.RESULTS_QUEUE, count, timeout=30)
    return [MatchResult.model_validate_json(m.body) for m in messages]


def read_outcomes(peer: JewelmatchClient, count: int) -> list[CatalogOutcome]:
    messages = peer.receive(topology.CATALOG_OUTCOMES_QUEUE, count, timeout=30)
    return [CatalogOutcome.model_validate_json(m.body) for m in messages]


def test_forged_steering_headers_change_nothing(worker, peers):
    victim = DESIGNS[0].product_id
    forged = {
        topology.HEADER_ORIGINAL_ROUTING_KEY: topology.PRODUCT_DELETED,
        topology.HEADER_ATTEMPT: 99,
    }
    peers["inventory"].publish(
        topology.MATCH_CONFIRMED, {"product_id": victim, "scan_id": "none"}, headers=forged
    )
    [outcome] = read_outcomes(peers["inventory"], 1)
    assert outcome.event == topology.MATCH_CONFIRMED  # the routed key, not the header
    assert outcome.status is CatalogOutcomeStatus.rejected
    assert outcome.problems[0].reason is FailureReason.unknown_scan
    assert len(worker.index.product_images(victim)) == 1  # the victim is untouched


@pytest.mark.parametrize(
    ("role", "routing_key"),
    [
        ("scan-station", topology.PRODUCT_DELETED),
        ("scan-station", topology.MATCH_CONFIRMED),
        ("pim", topology.MATCH_CONFIRMED),
        ("inventory", topology.PRODUCT_DELETED),
        ("inventory", topology.BAG_PHOTOGRAPHED),
        ("jewelmatch-worker", topology.PRODUCT_DELETED),
    ],
)
def test_each_role_publishes_only_its_own_events(node, peers, role, routing_key):
    with (
        Connection(role_url(node, role), transport_options={"confirm_publish": True}) as connection,
        pytest.raises(Exception, match="ACCESS_REFUSED"),
    ):
        ConfirmedPublisher(connection.channel()).publish(
            json.dumps({"product_id": DESIGNS[0].product_id}), EVENTS, routing_key
        )


def test_each_role_reads_what_it_needs(peers):
    assert peers["pim"].depth(topology.CATALOG_OUTCOMES_QUEUE) == 0
    assert peers["inventory"].depth(topology.RESULTS_QUEUE) == 0
    with pytest.raises(Exception, match="ACCESS_REFUSED"):
        peers["scan-station"].receive(topology.RESULTS_QUEUE, 1, timeout=1)


EVENT_KEYS = (
    topology.BAG_PHOTOGRAPHED,
    topology.PRODUCT_CREATED,
    topology.PRODUCT_UPDATED,
    topology.PRODUCT_DELETED,
    topology.MATCH_CONFIRMED,
)
REVIEW_QUEUES = (topology.REVIEW_RESULTS_QUEUE, topology.REVIEW_OUTCOMES_QUEUE)
QUEUES = [q.name for q in Topology.build(AmqpSettings(), OpsSettings()).all_queues()]
PROBES = [
    *[("publish", topology.EVENTS_EXCHANGE, key) for key in (*EVENT_KEYS, topology.MATCH_RESULT)],
    *[
        ("publish", topology.RESULTS_EXCHANGE, key)
        for key in (topology.MATCH_RESULT, topology.CATALOG_OUTCOME, topology.BAG_PHOTOGRAPHED)
    ],
    ("publish", topology.DEAD_LETTER_EXCHANGE, topology.BAG_PHOTOGRAPHED),
    ("publish", "", "jewelmatch.scans.retry.2s"),  # a retry parked through the default exchange
    ("publish", "amq.topic", topology.BAG_PHOTOGRAPHED),  # every vhost has one
    *[("read", queue) for queue in (*QUEUES, *REVIEW_QUEUES)],
    ("configure", "jewelmatch.probe"),
    ("configure", "probe"),
    ("bind", topology.REVIEW_RESULTS_QUEUE, topology.RESULTS_EXCHANGE, topology.MATCH_RESULT),
    ("bind", topology.SCANS_QUEUE, topology.EVENTS_EXCHANGE, topology.BAG_PHOTOGRAPHED),
]
"""What a peer might try: publish each key to each exchange, read each queue, declare a queue
of ours or of its own, bind a queue."""

ALLOWED = {
    "jewelmatch-worker": {
        ("publish", topology.RESULTS_EXCHANGE, topology.MATCH_RESULT),
        ("publish", topology.RESULTS_EXCHANGE, topology.CATALOG_OUTCOME),
        ("publish", topology.DEAD_LETTER_EXCHANGE, topology.BAG_PHOTOGRAPHED),
        ("publish", "", "jewelmatch.scans.retry.2s"),
        *[("read", queue) for queue in (*QUEUES, *REVIEW_QUEUES)],
        ("configure", "jewelmatch.probe"),
        ("bind", topology.REVIEW_RESULTS_QUEUE, topology.RESULTS_EXCHANGE, topology.MATCH_RESULT),
        ("bind", topology.SCANS_QUEUE, topology.EVENTS_EXCHANGE, topology.BAG_PHOTOGRAPHED),
    },
    "scan-station": {("publish", topology.EVENTS_EXCHANGE, topology.BAG_PHOTOGRAPHED)},
    "pim": {
        *[("publish", topology.EVENTS_EXCHANGE, key) for key in EVENT_KEYS[1:4]],
        ("read", topology.CATALOG_OUTCOMES_QUEUE),
    },
    "inventory": {
        ("publish", topology.EVENTS_EXCHANGE, topology.MATCH_CONFIRMED),
        ("read", topology.RESULTS_QUEUE),
        ("read", topology.CATALOG_OUTCOMES_QUEUE),
    },
    "review-desk": {
        *[("publish", topology.EVENTS_EXCHANGE, key) for key in EVENT_KEYS],  # replays
        ("read", topology.DEAD_LETTER_QUEUE),
        *[("read", queue) for queue in REVIEW_QUEUES],
        ("bind", topology.REVIEW_RESULTS_QUEUE, topology.RESULTS_EXCHANGE, topology.MATCH_RESULT),
    },
}
"""Each role's rights, written out here rather than read from `definitions.ROLES`: a right
widened there by mistake fails this table."""


def allowed_probes(url: str) -> set[tuple]:
    """The probes the broker lets this user do (each on a channel of its own: a refusal
    closes the channel)."""
    allowed = set()
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        for probe in PROBES:
            channel = connection.channel()
            try:
                if probe[0] == "publish":
                    message = channel.prepare_message(b"{}")
                    channel.basic_publish(message, exchange=probe[1], routing_key=probe[2])
                elif probe[0] == "read":
                    channel.basic_get(probe[1], no_ack=True)
                elif probe[0] == "configure":
                    channel.queue_declare(probe[1], exclusive=True)
                else:
                    channel.queue_bind(*probe[1:])
                allowed.add(probe)
            except Exception as refused:
                assert "ACCESS_REFUSED" in str(refused), (probe, refused)
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return allowed


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_may_do_exactly_what_it_needs_and_nothing_more(node, peers, role):
    with Connection(role_url(node, "admin")) as connection:
        for queue in review_queues(ReviewSettings().queue_max_length):
            queue(connection.channel()).declare()
    assert allowed_probes(role_url(node, role)) == ALLOWED[role]


def test_a_message_that_raises_mid_batch_leaves_its_batch_mates_answered(worker, peers):
    keys = [f"bag-{d.product_id}.jpg" for d in DESIGNS]
    keys.insert(2, "explodes.jpg")
    for n, key in enumerate(keys):
        peers["scan-station"].publish(topology.BAG_PHOTOGRAPHED, scan(f"m-{n}", key))
    answers = {r.scan_id: r for r in read_results(peers["inventory"], len(keys))}
    assert answers["m-2"].reason is FailureReason.internal_error
    assert "nobody planned" not in (answers["m-2"].detail or "")
    assert {answers[f"m-{n}"].status for n in (0, 1, 3, 4)} == {MatchStatus.matched}
    [letter] = worker.dead_letters(1)
    assert "nobody planned" in letter.headers[topology.HEADER_ERROR]
    assert worker._thread.is_alive() and threading.active_count() > 1
    # and it goes on answering
    peers["scan-station"].publish(topology.BAG_PHOTOGRAPHED, scan("after", keys[0]))
    [after] = read_results(peers["inventory"], 1)
    assert after.status is MatchStatus.matched


def test_a_reused_scan_id_with_another_photo_is_refused(worker, peers):
    station = peers["scan-station"]
    station.publish(topology.BAG_PHOTOGRAPHED, scan("r-1", f"bag-{DESIGNS[0].product_id}.jpg"))
    [first] = read_results(peers["inventory"], 1)
    station.publish(topology.BAG_PHOTOGRAPHED, scan("r-1", f"bag-{DESIGNS[1].product_id}.jpg"))
    [refusal] = read_results(peers["inventory"], 1)
    assert first.status is MatchStatus.matched
    assert refusal.reason is FailureReason.scan_id_reused
    assert refusal.image.key == f"bag-{DESIGNS[1].product_id}.jpg"


def test_a_confirmation_for_a_scan_never_answered_is_rejected(worker, peers):
    target = DESIGNS[1].product_id
    before = worker.index.count()
    confirmation = MatchConfirmed(
        scan_id="made-up",
        product_id=target,
        image=f"s3://{SCANS_BUCKET}/bag-{DESIGNS[0].product_id}.jpg",
    )
    peers["inventory"].publish(topology.MATCH_CONFIRMED, confirmation)
    [outcome] = read_outcomes(peers["inventory"], 1)
    assert outcome.status is CatalogOutcomeStatus.rejected
    assert outcome.problems[0].reason is FailureReason.unknown_scan
    assert worker.index.count() == before


def test_a_stale_update_changes_nothing(worker, peers):
    design, other = DESIGNS[0], DESIGNS[1]
    peers["pim"].publish(topology.PRODUCT_UPDATED, product(design, version=5))
    stale = product(design, version=4).model_copy(update={"sku": "OLD-SKU"})
    peers["pim"].publish(topology.PRODUCT_UPDATED, stale)
    peers["pim"].publish(topology.PRODUCT_UPDATED, product(other, version=1))
    outcomes = read_outcomes(peers["pim"], 3)
    assert [o.status for o in outcomes] == [
        CatalogOutcomeStatus.applied,
        CatalogOutcomeStatus.stale,
        CatalogOutcomeStatus.applied,
    ]
    assert {i.sku for i in worker.index.product_images(design.product_id)} == {design.sku}


def test_an_invalid_catalog_event_gets_its_outcome(worker, peers):
    peers["pim"].publish(topology.PRODUCT_CREATED, {"product_id": "p-bad", "images": "no"})
    [outcome] = read_outcomes(peers["pim"], 1)
    assert (outcome.product_id, outcome.status) == ("p-bad", CatalogOutcomeStatus.rejected)
    assert outcome.problems[0].reason is FailureReason.invalid_message
    [letter] = worker.dead_letters(1)
    assert letter.routing_key == topology.PRODUCT_CREATED


def test_the_demo_seeder_publishes_and_reads_each_as_its_own_role(
    worker, node, s3_endpoint, monkeypatch
):
    """What docker compose's `demo` service runs: `seed-demo` logs in as the PIM, a scan
    station and the inventory system (JEWELMATCH_SEED_*_URL), each allowed only its part;
    its default login here is one the broker does not know."""
    from typer.testing import CliRunner

    from worker.cli import app

    monkeypatch.setenv("JEWELMATCH_AMQP__URL", role_url(node, "nobody"))
    monkeypatch.setenv("JEWELMATCH_SEED_PIM_URL", role_url(node, "pim"))
    monkeypatch.setenv("JEWELMATCH_SEED_STATION_URL", role_url(node, "scan-station"))
    monkeypatch.setenv("JEWELMATCH_SEED_INVENTORY_URL", role_url(node, "inventory"))
    monkeypatch.setenv("JEWELMATCH_S3__ENDPOINT_URL", s3_endpoint)
    buckets = ["--catalog-bucket", CATALOG_BUCKET, "--scans-bucket", SCANS_BUCKET]
    result = CliRunner().invoke(app, ["seed-demo", "--products", "2", *buckets])
    assert result.exit_code == 0, result.output
    assert "published 2 product.created events" in result.output
    assert "catalog: 2 of 2 products answered, 2 indexed" in result.output  # read as the PIM
    assert result.output.count("photo of") == 2 and "no answer" not in result.output
