"""The consumer loop on kombu's in-memory transport: fast, no servers. What needs a real
broker (trust, restarts, delivery limits) is in test_trust.py and test_reliability.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kombu import Connection, Producer
from prometheus_client import REGISTRY

from shared import topology
from shared.contract import BagPhotographed, MatchResult, MatchStatus, ProductUpserted
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, make_settings
from tests.support.pictures import design_folder
from tests.support.polling import wait_until
from worker.amqp.broker import EVENTS, Topology
from worker.amqp.catalog_gate import CatalogGate
from worker.amqp.consumer import BrokerUnreachable, Worker
from worker.pipeline.outcome import Action, Outcome
from worker.service.app import build_components, wire_worker
from worker.service.backup import BackupFile
from worker.settings import Settings
from worker.tools.synthetic import catalog_designs

DESIGNS = catalog_designs(8, seed=31)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = design_folder(tmp_path / "images", DESIGNS, 160)
    return root


def publish(routing_key: str, event) -> None:
    send(routing_key, event.model_dump_json())


def test_the_index_is_optimized_when_idle_past_the_threshold_and_scans_answered_throughout(
    tmp_path, tiny_model_dir, tiny_embedder, images
):
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        amqp={"url": "memory://"},
        s3={"backend": "local", "local_root": str(images)},
        index={"exact_search_max_points": 4, "backup_file": str(tmp_path / "index.jsonl.gz")},
    )
    components = build_components(settings, tiny_embedder)
    worker = wire_worker(settings, components)
    handlers = worker.handlers
    index = components.index
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        for design in DESIGNS:
            image = {
                "image_id": "front",
                "bucket": CATALOG_BUCKET,
                "key": f"{design.product_id}.jpg",
            }
            publish(
                topology.PRODUCT_CREATED,
                ProductUpserted(product_id=design.product_id, sku=design.sku, images=[image]),
            )
        deadline = time.monotonic() + 30
        while index.optimized_at_count == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert index.optimized_at_count == len(DESIGNS)  # built once, past the threshold
        assert not index.needs_optimizing()
        for design in DESIGNS:
            image = {"bucket": SCANS_BUCKET, "key": f"bag-{design.product_id}.jpg"}
            publish(
                topology.BAG_PHOTOGRAPHED,
                BagPhotographed(scan_id=f"s-{design.product_id}", image=image),
            )
        answers = []
        with Connection("memory://") as connection:
            queue = connection.SimpleQueue(topology.RESULTS_QUEUE)
            while len(answers) < len(DESIGNS):
                message = queue.get(timeout=30)
                answers.append(MatchResult.model_validate_json(message.body))
                message.ack()
    finally:
        worker.stop()
        thread.join(timeout=30)
        components.maintenance.wait(30)  # as the service does before the index closes
        handlers.close()
        components.close()
    # answered and ranked right (random tiny weights: whether `matched` is a coin's toss)
    assert MatchStatus.failed not in {answer.status for answer in answers}
    assert all(a.matches[0].product_id == a.scan_id.removeprefix("s-") for a in answers)
    # the worker's own backup (INDEX__BACKUP_FILE), written on its first idle round
    assert BackupFile(tmp_path / "index.jsonl.gz").summary.model == components.embedder.model_id


# The loop's own rules, with handlers that answer each delivery as its body says -------------

ANSWERED = MatchResult(scan_id="answered", status=MatchStatus.matched, model="m")


class ScriptedHandlers:
    """Stands in for the pipeline's handlers (the loop is under test, not them): a body of
    `ack`, `retry` or `dead` is answered so, `raise` fails the whole batch, `short` returns no
    outcome; each batch waits for `proceed`."""

    def __init__(self, on_catalog=lambda: None) -> None:
        self.batches: list[tuple[str, list[bytes]]] = []
        self.proceed = threading.Event()
        self.proceed.set()
        self._on_catalog = on_catalog

    def handle_scans(self, deliveries):
        return self._handle("scans", deliveries)

    def handle_catalog(self, deliveries):
        self._on_catalog()
        return self._handle("catalog", deliveries)

    def _handle(self, kind, deliveries):
        bodies = [delivery.body for delivery in deliveries]
        self.batches.append((kind, bodies))
        self.proceed.wait()
        if b"raise" in bodies:
            raise RuntimeError("handler bug")
        if b"short" in bodies:
            return []
        answers = {
            b"ack": Outcome(Action.ack, results=[(topology.MATCH_RESULT, ANSWERED)]),
            b"retry": Outcome(Action.retry, error="try later"),
            b"dead": Outcome(Action.dead_letter, error="bad input"),
        }
        return [answers[body] for body in bodies]


@pytest.fixture
def queues():
    """The topology on the in-memory broker, emptied before and after."""
    settings = Settings(_env_file=None, amqp={"url": "memory://"})
    declared = Topology.build(settings.amqp, settings.ops)

    def purge() -> None:
        with Connection("memory://") as connection:
            channel = connection.channel()
            declared.declare(channel)
            for queue in declared.all_queues():
                queue(channel).purge()

    purge()
    yield declared
    purge()


def loop(handlers, batch_size: int = 2, **options) -> Worker:
    settings = Settings(
        _env_file=None,
        amqp={"url": "memory://", "scan_prefetch": 8, "catalog_prefetch": 8},
        model={"batch_size": batch_size},
        ops={"drain_seconds": options.pop("drain_seconds", 25.0)},
    )
    return Worker(settings, handlers, connection_factory=lambda: Connection("memory://"), **options)


def send(routing_key: str, *bodies: str | bytes) -> None:
    with Connection("memory://") as connection:
        producer = Producer(connection.channel())
        for body in bodies:
            producer.publish(body, exchange=EVENTS, routing_key=routing_key)


def waiting(queue) -> list:
    """What a queue holds, taken out."""
    taken = []
    with Connection("memory://") as connection:
        while (message := queue(connection.channel()).get(no_ack=True)) is not None:
            taken.append(message)
    return taken


def running(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def eventually(condition) -> None:
    wait_until(condition, timeout=10.0, every=0.02)


def test_scans_go_before_catalog_work_in_batches_and_each_outcome_is_settled(queues):
    send(topology.PRODUCT_CREATED, b"ack")
    send(topology.BAG_PHOTOGRAPHED, b"ack", b"retry", b"dead")
    handlers = ScriptedHandlers()
    loop(handlers).run(idle_exit_seconds=0.3)
    assert handlers.batches == [
        ("scans", [b"ack", b"retry"]),
        ("scans", [b"dead"]),
        ("catalog", [b"ack"]),
    ]
    results = waiting(queues.results)
    assert [MatchResult.model_validate_json(m.body) for m in results] == [ANSWERED, ANSWERED]
    [retried] = waiting(queues.retry_queue(topology.SCANS_QUEUE, 1))
    assert (retried.body, retried.headers[topology.HEADER_ATTEMPT]) == (b"retry", 2)
    [letter] = waiting(queues.dead_letters)
    assert (letter.body, letter.headers[topology.HEADER_ERROR]) == (b"dead", "bad input")
    assert waiting(queues.scans) == waiting(queues.catalog) == []  # every delivery acked


@pytest.mark.parametrize(
    "body, error",
    [(b"raise", "handler bug"), (b"short", "handler returned 0 outcomes for 1 messages")],
)
def test_a_batch_failing_as_a_whole_is_dead_lettered_and_the_loop_goes_on(queues, body, error):
    send(topology.BAG_PHOTOGRAPHED, body, b"ack")
    handlers = ScriptedHandlers()
    loop(handlers, batch_size=1).run(idle_exit_seconds=0.3)
    assert handlers.batches == [("scans", [body]), ("scans", [b"ack"])]
    [letter] = waiting(queues.dead_letters)
    assert letter.body == body
    assert letter.headers[topology.HEADER_ERROR] == error
    assert letter.headers[topology.HEADER_EXCEPTION] == "BatchFailed"
    assert len(waiting(queues.results)) == 1


def test_the_idle_work_runs_only_with_nothing_waiting_and_its_failure_stops_nothing(queues):
    send(topology.BAG_PHOTOGRAPHED, b"ack", b"ack", b"ack")
    events = []

    class Recording(ScriptedHandlers):
        def handle_scans(self, deliveries):
            events.append("batch")
            return super().handle_scans(deliveries)

    def idle_work() -> None:
        events.append("idle")
        raise RuntimeError("the index is away")

    loop(Recording(), batch_size=1, on_idle=idle_work).run(idle_exit_seconds=0.3)
    # idle work only once the three were answered; its failure left the loop up until its exit
    assert events[:4] == ["batch", "batch", "batch", "idle"]
    assert set(events[4:]) <= {"idle"}
    assert len(waiting(queues.results)) == 3


def holding_its_first_batch(**options) -> tuple[ScriptedHandlers, Worker, threading.Thread]:
    """A running loop whose handler holds its first batch until `proceed` is set."""
    handlers = ScriptedHandlers()
    handlers.proceed.clear()
    worker = loop(handlers, **options)
    thread = running(worker)
    eventually(lambda: handlers.batches)
    return handlers, worker, thread


def test_a_stop_during_a_batch_finishes_it_and_gives_back_what_waits(queues):
    send(topology.BAG_PHOTOGRAPHED, b"ack", b"ack")
    handlers, worker, thread = holding_its_first_batch(batch_size=1)
    worker.stop()
    assert worker.health.stopping and not worker.health.ready
    handlers.proceed.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert handlers.batches == [("scans", [b"ack"])]
    assert len(waiting(queues.results)) == 1  # the batch in hand was settled
    assert [m.body for m in waiting(queues.scans)] == [b"ack"]  # the other one is back
    assert not worker.health.broker_connected


def test_a_batch_not_done_within_the_grace_is_left_unacked_for_another_worker(queues):
    send(topology.BAG_PHOTOGRAPHED, b"ack")
    handlers, worker, thread = holding_its_first_batch(drain_seconds=0.3)
    worker.stop()
    thread.join(timeout=5)
    try:
        assert not thread.is_alive()  # returned with the handler still stuck
        # neither answered nor sent on: unacked, RabbitMQ gives it to another worker (the
        # in-memory broker drops what a closed connection left unacked)
        assert waiting(queues.results) == []
        assert waiting(queues.dead_letters) == []
        assert waiting(queues.retry_queue(topology.SCANS_QUEUE, 1)) == []
        assert not worker.health.broker_connected
    finally:
        handlers.proceed.set()


def test_a_broker_out_of_reach_is_given_up_after_the_connect_timeout():
    settings = Settings(
        _env_file=None,
        amqp={"url": "amqp://jm:s3cret@127.0.0.1:9//", "connect_timeout_seconds": 0.5},
    )
    worker = Worker(settings, ScriptedHandlers())
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"127.0.0.1:9 \(vhost /\) for 0.5 s") as raised:
        worker.run()
    assert "s3cret" not in str(raised.value)
    assert 0.5 <= time.monotonic() - started < 10  # one backoff of 1 s, not forever
    assert not worker.health.broker_connected


def test_without_a_connect_timeout_a_broker_out_of_reach_is_tried_until_the_worker_stops():
    settings = Settings(_env_file=None, amqp={"url": "amqp://jm:s3cret@127.0.0.1:9//"})
    worker = Worker(settings, ScriptedHandlers())
    thread = running(worker)
    time.sleep(1.5)  # past the first backoff: tried again
    assert thread.is_alive() and not worker.health.broker_connected
    worker.stop()
    thread.join(timeout=1)  # not waiting out the backoff
    assert not thread.is_alive()


def test_catalog_work_is_given_back_while_blocked_and_taken_again_once_allowed(queues):
    blocked: dict[str, str | None] = {"reason": "writes held"}
    gate = CatalogGate(lambda: blocked["reason"], recheck_seconds=0.05)
    handlers = ScriptedHandlers()
    worker = loop(handlers, catalog_gate=gate)
    send(topology.PRODUCT_CREATED, b"ack")
    thread = running(worker)
    try:
        eventually(lambda: REGISTRY.get_sample_value("jewelmatch_catalog_work_paused") == 1)
        send(topology.BAG_PHOTOGRAPHED, b"ack")  # scans are answered meanwhile
        eventually(lambda: handlers.batches == [("scans", [b"ack"])])
        send(topology.PRODUCT_UPDATED, b"ack")
        time.sleep(1.5)  # past a recheck of the gate, which still blocks
        assert handlers.batches == [("scans", [b"ack"])]  # no catalog work taken
        assert REGISTRY.get_sample_value("jewelmatch_catalog_work_paused") == 1
        [parked] = waiting(queues.retry_queue(queues.catalog.name, 1))
        assert parked.headers[topology.HEADER_ATTEMPT] == 1  # not counted as an attempt
        blocked["reason"] = None
        eventually(lambda: ("catalog", [b"ack"]) in handlers.batches)
        assert REGISTRY.get_sample_value("jewelmatch_catalog_work_paused") == 0
    finally:
        worker.stop()
        thread.join(timeout=10)


def test_a_catalog_batch_handled_while_a_switch_began_is_given_back_not_settled(queues):
    blocked: dict[str, str | None] = {"reason": None}
    gate = CatalogGate(lambda: blocked["reason"], recheck_seconds=60)

    def switch_begins() -> None:
        blocked["reason"] = "writes held"

    handlers = ScriptedHandlers(on_catalog=switch_begins)
    send(topology.PRODUCT_CREATED, b"ack")
    loop(handlers, catalog_gate=gate).run(idle_exit_seconds=0.3)
    assert handlers.batches == [("catalog", [b"ack"])]
    assert waiting(queues.results) == []  # its answer is not published: it is done again
    [parked] = waiting(queues.retry_queue(queues.catalog.name, 1))
    assert parked.body == b"ack"
    assert waiting(queues.catalog) == []


def test_a_connection_lost_after_a_while_is_made_again_and_its_deliveries_handled_once(queues):
    drops = []

    class DropsOnce(Connection):
        """The broker goes away once, when the loop holds a delivery it has not handled."""

        def drain_events(self, **kwargs):
            if worker.inbox.pending() and not drops:
                drops.append(worker.health.broker_connected)
                raise ConnectionResetError("the broker went away")
            return super().drain_events(**kwargs)

    handlers = ScriptedHandlers()
    settings = Settings(
        _env_file=None, amqp={"url": "memory://", "connect_timeout_seconds": 0.5}
    )  # shorter than the connection lived: giving up counts from the loss, not the start
    worker = Worker(settings, handlers, connection_factory=lambda: DropsOnce("memory://"))
    thread = running(worker)
    try:
        time.sleep(0.8)
        send(topology.BAG_PHOTOGRAPHED, b"ack")
        eventually(lambda: drops and not worker.health.broker_connected)
        eventually(lambda: handlers.batches and worker.health.broker_connected)
        assert drops == [True] and thread.is_alive()
        assert handlers.batches == [("scans", [b"ack"])]
        eventually(lambda: len(waiting(queues.results)) == 1)
    finally:
        worker.stop()
        thread.join(timeout=10)


def test_a_gate_is_due_for_a_recheck_only_while_paused_and_once_the_period_is_over():
    gate = CatalogGate(lambda: None, recheck_seconds=0)
    gate.check()
    assert not gate.recheck_due()  # else the loop would resume a consumer already consuming
    gate.paused_because = "a switch holds writes"
    assert gate.recheck_due()
    patient = CatalogGate(lambda: "a switch holds writes", recheck_seconds=60)
    patient.paused_because = patient.check()
    assert not patient.recheck_due()  # not asked again at every turn of the loop


def test_an_index_that_cannot_be_asked_does_not_block_catalog_work():
    def away() -> str | None:
        raise ConnectionError("qdrant is away")

    assert CatalogGate(away).check() is None  # the handlers meet the outage and retry
