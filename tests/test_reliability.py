"""Fault injection against real servers: each test injects one fault, then checks that every
message got exactly the outcome it should and that none was lost."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import threading
import time
from collections import Counter

import pytest
from kombu import Connection, Consumer
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from shared import topology
from shared.contract import (
    BagPhotographed,
    CatalogOutcome,
    CatalogOutcomeStatus,
    FailureReason,
    MatchResult,
    MatchStatus,
    ProductUpserted,
)
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes, make_settings
from tests.support.harness import WorkerHarness
from tests.support.polling import wait_until
from tests.support.processes import WorkerProcess, worker_environment
from worker.amqp.broker import Topology
from worker.amqp.client import JewelmatchClient
from worker.settings import AmqpSettings, OpsSettings
from worker.tools.bench.servers import start_moto_server
from worker.tools.synthetic import catalog_designs, render

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(6, seed=21)


def upload_catalog(s3) -> None:
    for design in DESIGNS:
        data = jpeg_bytes(render(design, 192))
        s3.put_object(Bucket=CATALOG_BUCKET, Key=f"{design.product_id}/front.jpg", Body=data)
        s3.put_object(Bucket=SCANS_BUCKET, Key=f"bag-{design.product_id}.jpg", Body=data)


def product_event(design) -> ProductUpserted:
    return ProductUpserted(
        product_id=design.product_id,
        sku=design.sku,
        images=[
            {"image_id": "front", "bucket": CATALOG_BUCKET, "key": f"{design.product_id}/front.jpg"}
        ],
    )


def scan(scan_id: str, design) -> BagPhotographed:
    return BagPhotographed(
        scan_id=scan_id, image={"bucket": SCANS_BUCKET, "key": f"bag-{design.product_id}.jpg"}
    )


def results_of(messages) -> dict[str, list[MatchResult]]:
    answers: dict[str, list[MatchResult]] = {}
    for message in messages:
        result = MatchResult.model_validate_json(message.body)
        answers.setdefault(result.scan_id, []).append(result)
    return answers


def assert_one_answer_each(answers: dict[str, list[MatchResult]], scan_ids) -> None:
    """Every scan answered; a redelivered scan may be answered twice, but identically."""
    assert set(answers) == set(scan_ids)
    for scan_id, results in answers.items():
        assert all(r == results[0] for r in results), f"conflicting answers for {scan_id}"


def test_broker_restart_mid_stream_loses_nothing(
    tmp_path, tiny_model_dir, rabbit, s3_endpoint, s3, tiny_embedder
):
    upload_catalog(s3)
    # A vhost of its own: queues deleted and declared again moments before a crash can lose
    # their Raft data in RabbitMQ 3.10 (a test artefact, not a production pattern).
    if rabbit.process is None:
        rabbit.start()
    amqp_url = rabbit.add_vhost(f"restart-{time.monotonic_ns()}")

    settings = make_settings(
        tmp_path, tiny_model_dir, amqp={"url": amqp_url}, s3={"endpoint_url": s3_endpoint}
    )
    peer = JewelmatchClient(amqp_url)
    with WorkerHarness(settings, tiny_embedder) as worker:
        for design in DESIGNS:
            peer.publish(topology.PRODUCT_CREATED, product_event(design))
        peer.receive(topology.CATALOG_OUTCOMES_QUEUE, len(DESIGNS))
        scan_ids = [f"scan-{n:03d}" for n in range(60)]
        for n, scan_id in enumerate(scan_ids[:30]):
            peer.publish(topology.BAG_PHOTOGRAPHED, scan(scan_id, DESIGNS[n % len(DESIGNS)]))
        early = peer.receive(topology.RESULTS_QUEUE, 5)
        rabbit.restart()  # kill -9 and start again, mid-stream
        for n, scan_id in enumerate(scan_ids[30:], start=30):
            peer.publish(topology.BAG_PHOTOGRAPHED, scan(scan_id, DESIGNS[n % len(DESIGNS)]))
        answers = results_of(
            early
            + peer.receive(
                topology.RESULTS_QUEUE,
                10**6,
                timeout=90,
                until=lambda got: len(set(results_of(early + got))) == len(scan_ids),
            )
        )
        assert worker.worker.health.broker_connected
        assert peer.depth(topology.DEAD_LETTER_QUEUE) == 0
    peer.close()
    assert_one_answer_each(answers, scan_ids)
    # each ranked, its own design first (whether `matched` or not depends on whether the
    # background refit has centred the scans yet: a timing, not what this test is about)
    for n, scan_id in enumerate(scan_ids):
        [first, *_] = answers[scan_id][0].matches
        assert first.product_id == DESIGNS[n % len(DESIGNS)].product_id, scan_id


def test_s3_outage_is_retried_until_it_comes_back(
    tmp_path, tiny_model_dir, amqp_url, tiny_embedder
):
    server, endpoint = start_moto_server()
    port = int(endpoint.rsplit(":", 1)[1])
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for bucket in (CATALOG_BUCKET, SCANS_BUCKET):
        s3.create_bucket(Bucket=bucket)
    upload_catalog(s3)
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        amqp={"url": amqp_url},
        s3={"endpoint_url": endpoint, "max_attempts": 1, "connect_timeout_seconds": 0.5},
        ops={"max_attempts": 8},
    )
    with WorkerHarness(settings, tiny_embedder) as worker:
        for design in DESIGNS:
            worker.publish(topology.PRODUCT_CREATED, product_event(design))
        worker.outcomes(len(DESIGNS))
        server.stop()  # S3 goes away
        scan_ids = [f"outage-{n}" for n in range(8)]
        for n, scan_id in enumerate(scan_ids):
            worker.publish(topology.BAG_PHOTOGRAPHED, scan(scan_id, DESIGNS[n % len(DESIGNS)]))
        time.sleep(3)  # attempts fail and wait in the delay queues
        assert worker.depth(topology.RESULTS_QUEUE) == 0
        from moto.server import ThreadedMotoServer

        restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        restarted.start()  # S3 is back, with its objects
        try:
            answers = results_of(worker.receive(topology.RESULTS_QUEUE, len(scan_ids), timeout=60))
        finally:
            restarted.stop()
        assert worker.depth(topology.DEAD_LETTER_QUEUE) == 0
    assert_one_answer_each(answers, scan_ids)
    assert {r[0].status for r in answers.values()} == {MatchStatus.matched}


def test_hostile_images_and_poison_messages_among_good_ones(
    tmp_path, tiny_model_dir, amqp_url, s3_endpoint, s3, tiny_embedder
):
    upload_catalog(s3)
    huge = io.BytesIO()
    Image.new("RGB", (8660, 5780), "gray").save(huge, "JPEG", quality=10)  # 50 megapixels
    s3.put_object(Bucket=SCANS_BUCKET, Key="huge.jpg", Body=huge.getvalue())
    s3.put_object(
        Bucket=SCANS_BUCKET, Key="truncated.jpg", Body=jpeg_bytes(render(DESIGNS[0], 192))[:700]
    )
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        amqp={"url": amqp_url},
        s3={"endpoint_url": s3_endpoint},
        images={"max_pixels": 40_000_000},
    )
    with WorkerHarness(settings, tiny_embedder) as worker:
        for design in DESIGNS:
            worker.publish(topology.PRODUCT_CREATED, product_event(design))
        worker.outcomes(len(DESIGNS))
        good = [f"good-{n}" for n in range(12)]
        for n, scan_id in enumerate(good):
            worker.publish(topology.BAG_PHOTOGRAPHED, scan(scan_id, DESIGNS[n % len(DESIGNS)]))
            if n == 3:
                worker.publish(topology.BAG_PHOTOGRAPHED, b"{{{ poison")
            if n == 5:
                worker.publish(
                    topology.BAG_PHOTOGRAPHED,
                    BagPhotographed(
                        scan_id="huge", image={"bucket": SCANS_BUCKET, "key": "huge.jpg"}
                    ),
                )
            if n == 7:
                worker.publish(
                    topology.BAG_PHOTOGRAPHED,
                    BagPhotographed(
                        scan_id="truncated", image={"bucket": SCANS_BUCKET, "key": "truncated.jpg"}
                    ),
                )
            if n == 9:
                worker.publish(topology.PRODUCT_CREATED, {"product_id": "p-x", "images": "no"})
        answers = results_of(worker.receive(topology.RESULTS_QUEUE, len(good) + 2, timeout=60))
        letters = worker.dead_letters(2)
        assert worker.depth(topology.SCANS_QUEUE) == 0
    assert {s for s in answers if answers[s][0].status is MatchStatus.matched} == set(good)
    assert answers["huge"][0].reason is FailureReason.image_too_large
    assert answers["truncated"][0].reason is FailureReason.image_unreadable
    assert sorted(letter.routing_key for letter in letters) == [
        topology.BAG_PHOTOGRAPHED,
        topology.PRODUCT_CREATED,
    ]


def test_a_message_that_kills_its_consumer_is_dead_lettered_by_the_broker(amqp_url):
    """A crash loop (the worker dies on a message before settling it) ends at the quorum
    queue's delivery limit: the broker dead-letters the message instead of looping forever."""
    amqp = AmqpSettings(delivery_limit=3)
    topo = Topology.build(amqp, OpsSettings())
    peer = JewelmatchClient(amqp_url)
    with Connection(amqp_url) as connection:
        topo.declare(connection.channel())
    peer.publish(topology.BAG_PHOTOGRAPHED, scan("deadly", DESIGNS[0]))
    for _ in range(amqp.delivery_limit + 1):  # each delivery "crashes" before the ack
        with Connection(amqp_url) as connection:
            channel = connection.channel()
            got = threading.Event()
            consumer = Consumer(channel, [topo.scans], on_message=lambda m, got=got: got.set())

            consumer.consume()
            deadline = time.monotonic() + 10
            while not got.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
            assert got.is_set()
        # leaving the `with` closes the connection unacked: a crash, as the broker sees it
    [letter] = peer.receive(topology.DEAD_LETTER_QUEUE, 1, timeout=20)
    peer.close()
    assert json.loads(letter.body)["scan_id"] == "deadly"
    assert letter.headers["x-first-death-reason"] == "delivery_limit"


@pytest.fixture
def process_env(tmp_path, tiny_model_dir, amqp_url, s3_endpoint, s3):
    upload_catalog(s3)
    return lambda index="index", **extra: worker_environment(
        amqp_url=amqp_url,
        s3_endpoint=s3_endpoint,
        buckets=[CATALOG_BUCKET, SCANS_BUCKET],
        index_path=tmp_path / index,
        model_dir=tiny_model_dir,
        **extra,
    )


def test_probes_and_metrics_of_a_worker_process(tmp_path, process_env, amqp_url):
    unreachable = WorkerProcess(
        process_env("index-a", JEWELMATCH_AMQP__URL="amqp://guest:guest@127.0.0.1:9//"),
        tmp_path / "a.log",
    )
    worker = WorkerProcess(process_env("index-b"), tmp_path / "b.log")
    try:
        deadline = time.monotonic() + 60
        while unreachable.probe("/livez") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        assert unreachable.probe("/livez") == 200  # alive: it keeps trying the broker
        assert unreachable.probe("/readyz") == 503  # not ready: no broker
        worker.wait_ready()
        peer = JewelmatchClient(amqp_url)
        peer.publish(topology.PRODUCT_CREATED, product_event(DESIGNS[0]))
        peer.receive(topology.CATALOG_OUTCOMES_QUEUE, 1)
        peer.close()
        counted = 'jewelmatch_messages_total{outcome="ack",queue="jewelmatch.catalog"} 1.0'
        deadline = time.monotonic() + 10  # counted just after the outcome is published
        while counted not in (metrics := worker.metrics()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counted in metrics

        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
        }
        assert samples["jewelmatch_model_load_seconds"] > 0  # measured, not the gauge's 0
        assert samples["jewelmatch_index_reference_images"] > 0  # the product just ingested
        assert 'jewelmatch_stage_seconds_count{stage="embed"}' in metrics
        assert "guest:guest" not in unreachable.log_path.read_text()  # no credentials in logs
    finally:
        unreachable.stop()
        worker.stop()


def test_sigterm_finishes_the_batch_and_exits_zero(tmp_path, process_env, amqp_url):
    peer = JewelmatchClient(amqp_url)
    worker = WorkerProcess(process_env(), tmp_path / "worker.log")
    try:
        worker.wait_ready()
        for design in DESIGNS:
            peer.publish(topology.PRODUCT_CREATED, product_event(design))
        peer.receive(topology.CATALOG_OUTCOMES_QUEUE, len(DESIGNS))
        scan_ids = [f"term-{n}" for n in range(40)]
        for n, scan_id in enumerate(scan_ids):
            peer.publish(topology.BAG_PHOTOGRAPHED, scan(scan_id, DESIGNS[n % len(DESIGNS)]))
        peer.receive(topology.RESULTS_QUEUE, 1, timeout=30)  # it is busy now
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        assert "worker.stopped" in worker.log_path.read_text()
        answered = 1 + peer.depth(topology.RESULTS_QUEUE)
        waiting = peer.depth(topology.SCANS_QUEUE)
        assert answered + waiting >= len(scan_ids)  # nothing lost: answered or back in queue
        successor = WorkerProcess(process_env(), tmp_path / "successor.log")
        successor.wait_ready()
        rest = peer.receive(topology.RESULTS_QUEUE, len(scan_ids) - 1, timeout=60)
        assert (
            len({MatchResult.model_validate_json(m.body).scan_id for m in rest})
            >= len(scan_ids) - 1
        )
        successor.terminate()
        assert successor.wait(timeout=30) == 0
    finally:
        worker.stop()
        peer.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_while_the_model_loads_exits_zero_and_never_consumes(tmp_path, process_env, stop):
    worker = WorkerProcess(process_env(), tmp_path / "worker.log")
    try:
        wait_until(lambda: worker.probe("/livez") == 200, timeout=60, every=0.01)
        worker.process.send_signal(stop)  # the probes answer before the model has loaded
        assert worker.wait(timeout=60) == 0
        log = worker.log_path.read_text()
        assert "worker.stopped" in log
        assert "worker.consuming" not in log
    finally:
        worker.stop()


def test_a_worker_without_probes_stops_on_sigterm_as_one_with_them(tmp_path, process_env):
    worker = WorkerProcess(process_env(), tmp_path / "worker.log", probes=False)
    try:
        wait_until(lambda: "worker.consuming" in worker.log_path.read_text(), timeout=90)
        worker.terminate()
        assert worker.wait(timeout=30) == 0, worker.log_tail()
        assert "worker.stopped" in worker.log_path.read_text()
        assert "ops.listening" not in worker.log_path.read_text()
    finally:
        worker.stop()


def test_worker_killed_mid_batch_another_finishes_the_work(tmp_path, process_env, amqp_url):
    peer = JewelmatchClient(amqp_url)
    first = WorkerProcess(process_env(), tmp_path / "first.log")
    try:
        first.wait_ready()
        for design in DESIGNS:
            peer.publish(topology.PRODUCT_CREATED, product_event(design))
        scan_ids = [f"kill-{n}" for n in range(400)]

        for n, scan_id in enumerate(scan_ids):
            peer.publish(topology.BAG_PHOTOGRAPHED, scan(scan_id, DESIGNS[n % len(DESIGNS)]))
        early = peer.receive(topology.RESULTS_QUEUE, 10, timeout=60)
        first.kill()  # SIGKILL in the middle of a batch: nothing is settled for it
        assert peer.depth(topology.SCANS_QUEUE) > 0
        second = WorkerProcess(process_env(), tmp_path / "second.log")  # same index, freed
        second.wait_ready()
        answers = results_of(
            early
            + peer.receive(
                topology.RESULTS_QUEUE,
                10**6,
                timeout=120,
                until=lambda got: len(set(results_of(early + got))) == len(scan_ids),
            )
        )
        outcomes = [
            CatalogOutcome.model_validate_json(m.body)
            for m in peer.receive(topology.CATALOG_OUTCOMES_QUEUE, len(DESIGNS))
        ]
        second.terminate()
        assert second.wait(timeout=30) == 0
    finally:
        first.stop()
        peer.close()
    assert_one_answer_each(answers, scan_ids)
    assert {o.product_id for o in outcomes} == {d.product_id for d in DESIGNS}


def test_a_thousand_mixed_messages_through_two_worker_processes(tmp_path, process_env, amqp_url):
    """Two replicas, each with its own embedded index and catalog queue, share the scans."""
    peer = JewelmatchClient(amqp_url)
    workers = [
        WorkerProcess(
            process_env(f"index-{r}", JEWELMATCH_AMQP__REPLICA_ID=r), tmp_path / f"{r}.log"
        )
        for r in ("replica-a", "replica-b")
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        for design in DESIGNS:
            peer.publish(topology.PRODUCT_CREATED, product_event(design))
        peer.receive(topology.CATALOG_OUTCOMES_QUEUE, 2 * len(DESIGNS))
        scans, malformed, missing, updates = [], 0, [], 0
        started = time.monotonic()
        for n in range(1000):
            kind = n % 20
            if kind == 0:
                peer.publish(topology.BAG_PHOTOGRAPHED, b'{"scan_id": 1, "image": []}')
                malformed += 1
            elif kind == 1:
                missing.append(f"mix-{n}")
                peer.publish(
                    topology.BAG_PHOTOGRAPHED,
                    BagPhotographed(
                        scan_id=f"mix-{n}", image={"bucket": SCANS_BUCKET, "key": "nothing.jpg"}
                    ),
                )
            elif kind == 2:
                peer.publish(topology.PRODUCT_UPDATED, product_event(DESIGNS[n % len(DESIGNS)]))
                updates += 1
            else:
                scans.append(f"mix-{n}")
                peer.publish(topology.BAG_PHOTOGRAPHED, scan(f"mix-{n}", DESIGNS[n % len(DESIGNS)]))
        expected = set(scans) | set(missing)
        answers = results_of(
            peer.receive(
                topology.RESULTS_QUEUE,
                10**6,
                timeout=240,
                until=lambda got: len(results_of(got)) >= len(expected),
            )
        )
        seconds = time.monotonic() - started
        letters = peer.receive(topology.DEAD_LETTER_QUEUE, malformed, timeout=30)
        outcomes = [
            CatalogOutcome.model_validate_json(m.body)
            for m in peer.receive(topology.CATALOG_OUTCOMES_QUEUE, 2 * updates, timeout=60)
        ]
        for worker in workers:
            worker.terminate()
        assert [worker.wait(timeout=30) for worker in workers] == [0, 0]
        served = [
            w.log_path.read_text().count('"routing_key": "bag.photographed"') for w in workers
        ]
    finally:
        for worker in workers:
            worker.stop()
        peer.close()
    assert_one_answer_each(answers, expected)
    assert all(len(results) == 1 for results in answers.values())  # no fault: exactly once
    assert {answers[s][0].status for s in scans} == {MatchStatus.matched}
    assert {answers[s][0].reason for s in missing} == {FailureReason.image_not_found}
    assert len(letters) == malformed
    assert Counter(o.replica for o in outcomes) == {"replica-a": updates, "replica-b": updates}
    assert {o.status for o in outcomes} == {CatalogOutcomeStatus.applied}
    assert all(count > 0 for count in served), served  # both replicas took scans
    print(
        f"1000 mixed messages through two worker processes in {seconds:.1f} s; "
        f"scans per replica: {served}"
    )


def test_a_message_the_broker_refuses_is_never_believed_delivered(amqp_url):
    """Publisher confirms: a nacked publish (here a full queue that rejects publishes) raises,
    so the worker does not ack the scan whose result was refused."""
    from kombu import Exchange, Queue

    from worker.amqp.broker import ConfirmedPublisher, PublishRejected, Unroutable

    exchange = Exchange("jewelmatch.test-confirms", "direct", durable=False, auto_delete=True)
    queue = Queue(
        "jewelmatch.test-full",
        exchange,
        routing_key="full",
        durable=False,
        queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )

    with Connection(amqp_url, transport_options={"confirm_publish": True}) as connection:
        channel = connection.channel()
        queue(channel).declare()
        publisher = ConfirmedPublisher(connection.channel())
        publisher.publish(b"{}", exchange, "full")
        with pytest.raises(PublishRejected):
            publisher.publish(b"{}", exchange, "full")
        with pytest.raises(Unroutable):
            publisher.publish(b"{}", exchange, "nowhere")
        channel.queue_delete(queue.name)
