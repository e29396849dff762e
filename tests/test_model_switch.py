"""A switch of the index in service (`reindex`, `model promote`, `rollback`) loses no catalog
write: a worker whose model was replaced, or that finds a switch holding writes, gives its
catalog work back to the broker and takes it again when allowed; a batch it handled while
that happened is done again, not settled. A real RabbitMQ node, moto's S3 server, and the
Qdrant server code path (its local mode standing in for the server)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import REGISTRY

from shared import topology
from shared.contract import CatalogOutcomeStatus
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes, make_settings
from tests.support.harness import WorkerHarness
from tests.support.polling import wait_until
from tests.test_worker_integration import product_event, scan_event
from worker.index.server import WRITE_HOLD_SECONDS, QdrantServerIndex, writes_held_alias
from worker.tools.synthetic import catalog_designs, render

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(3, seed=23)


@pytest.fixture
def settings(tmp_path, tiny_model_dir, amqp_url, s3_endpoint, s3):
    for design in DESIGNS:
        data = jpeg_bytes(render(design, 256))
        s3.put_object(Bucket=CATALOG_BUCKET, Key=f"{design.product_id}/front.jpg", Body=data)
        s3.put_object(Bucket=SCANS_BUCKET, Key=f"bag-{design.product_id}.jpg", Body=data)
    return make_settings(
        tmp_path,
        tiny_model_dir,
        amqp={"url": amqp_url},
        s3={"endpoint_url": s3_endpoint},
        index={"backend": "qdrant", "url": ":memory:"},
    )


def other_model_index(worker: WorkerHarness) -> QdrantServerIndex:
    """Another model's index on the same server, as `reindex` or `promote` builds it."""
    index = worker.index
    return QdrantServerIndex(
        worker.settings.index, "another-model", index.dim, client=index._client
    )


def paused() -> float | None:
    return REGISTRY.get_sample_value("jewelmatch_catalog_work_paused")


def deleted(worker: WorkerHarness, product_id: str) -> bool:
    state = worker.index.product_state(product_id)
    return state is not None and state.deleted


@pytest.mark.parametrize("block", ["model replaced", "writes held"])
def test_catalog_work_waits_in_the_broker_while_blocked_and_is_done_once_allowed(
    settings, tiny_embedder, block
):
    with WorkerHarness(settings, tiny_embedder) as worker:
        worker.publish(topology.PRODUCT_CREATED, product_event(DESIGNS[0]))
        assert worker.outcomes(1)[0].status is CatalogOutcomeStatus.applied
        other = other_model_index(worker)
        if block == "model replaced":
            other.make_current()  # a promotion switched to another model
        else:
            hold = other.hold_writes()  # a switch is catching up

        gone = DESIGNS[0].product_id
        worker.publish(topology.PRODUCT_DELETED, {"product_id": gone})
        catalog_queue = worker.topology.catalog.name
        wait_until(lambda: paused() == 1)
        wait_until(lambda: worker.depth(catalog_queue) == 1)  # parked, back, waiting
        assert worker.depth(topology.CATALOG_OUTCOMES_QUEUE) == 0
        assert not deleted(worker, gone)
        worker.publish(topology.BAG_PHOTOGRAPHED, scan_event("scan-1", f"bag-{gone}.jpg", top_k=1))
        assert worker.results(1)[0].matches  # scans are still answered meanwhile

        if block == "model replaced":
            worker.index.make_current()  # rolled back
        else:
            other.release_writes(hold)
        [outcome] = worker.outcomes(1, timeout=30)
        assert outcome.status is CatalogOutcomeStatus.applied and outcome.product_id == gone
        assert deleted(worker, gone) and paused() == 0
        assert worker.depth(catalog_queue) == 0
        assert worker.depth(topology.DEAD_LETTER_QUEUE) == 0


def test_catalog_work_given_back_is_parked_not_requeued(settings, tiny_embedder):
    """A requeue would spend one of the quorum queue's deliveries each time a worker gave
    the event back (RabbitMQ before 4.3 counts every return), and the delivery limit would
    dead-letter it: it is parked in the delay queue instead, as the worker's own, its
    attempt not counted."""
    with WorkerHarness(settings, tiny_embedder) as worker:
        other_model_index(worker).hold_writes()
        worker.publish(topology.PRODUCT_DELETED, {"product_id": DESIGNS[0].product_id})
        catalog_queue = worker.topology.catalog.name
        wait_until(lambda: worker.depth(catalog_queue) == 1 and paused() == 1)
        [parked] = worker.receive(catalog_queue, 1)
    assert parked.headers[topology.HEADER_ORIGINAL_ROUTING_KEY] == topology.PRODUCT_DELETED
    assert parked.headers[topology.HEADER_ATTEMPT] == 1
    assert "writes held" in parked.headers[topology.HEADER_ERROR]
    assert not parked.headers.get("x-delivery-count")


def test_a_batch_handled_while_the_model_was_replaced_is_done_again_not_settled(
    settings, tiny_embedder
):
    """The switch lands while the worker embeds and writes a product: its outcome is not
    published, the event goes back to the broker, and is done once the worker may write."""
    with WorkerHarness(settings, tiny_embedder) as worker:
        other = other_model_index(worker)
        upsert, switched = worker.index.upsert, []

        def upsert_then_switch(images) -> None:  # the promotion's switch, mid-batch
            upsert(images)
            if not switched:
                switched.append(True)
                other.make_current()

        worker.index.upsert = upsert_then_switch
        worker.publish(topology.PRODUCT_CREATED, product_event(DESIGNS[1]))
        wait_until(lambda: switched and paused() == 1)
        wait_until(lambda: worker.depth(worker.topology.catalog.name) == 1)
        assert worker.depth(topology.CATALOG_OUTCOMES_QUEUE) == 0

        worker.index.make_current()
        [outcome] = worker.outcomes(1, timeout=30)
        assert outcome.status is CatalogOutcomeStatus.applied
        assert outcome.product_id == DESIGNS[1].product_id
        time.sleep(1.0)
        assert worker.depth(topology.CATALOG_OUTCOMES_QUEUE) == 0  # answered once


def test_a_hold_is_seen_by_every_index_of_the_server_and_a_stale_one_is_ignored():
    from qdrant_client import QdrantClient, models

    from worker.settings import IndexSettings

    settings = IndexSettings(backend="qdrant", url=":memory:")
    client = QdrantClient(location=":memory:")
    old = QdrantServerIndex(settings, "old-model", 4, client=client)
    new = QdrantServerIndex(settings, "new-model", 4, client=client)
    assert not old.writes_held()
    hold = new.hold_writes()
    assert old.writes_held() and new.writes_held()
    new.release_writes(hold)
    assert not old.writes_held()

    set_at = int(time.time()) - WRITE_HOLD_SECONDS
    stale = f"{writes_held_alias(settings.collection_prefix)}{set_at}"
    create = models.CreateAlias(collection_name=new.references_collection, alias_name=stale)
    client.update_collection_aliases(
        change_aliases_operations=[models.CreateAliasOperation(create_alias=create)]
    )
    assert not old.writes_held()  # left by a switch that died: ignored
    new.release_writes(new.hold_writes())  # and cleared by the next switch's release
    assert [a.alias_name for a in client.get_aliases().aliases] == ["jewelmatch-references"]


def test_a_switch_lifts_its_own_hold_and_not_another_switchs():
    """Two switches at once (say `promote` run twice by mistake), each in one second: the
    first to finish must not let workers write while the other still catches up."""
    from qdrant_client import QdrantClient

    from worker.settings import IndexSettings

    settings = IndexSettings(backend="qdrant", url=":memory:")
    client = QdrantClient(location=":memory:")
    old = QdrantServerIndex(settings, "old-model", 4, client=client)
    first = QdrantServerIndex(settings, "first-model", 4, client=client)
    second = QdrantServerIndex(settings, "second-model", 4, client=client)
    first_hold, second_hold = first.hold_writes(), second.hold_writes()
    assert first_hold != second_hold
    first.release_writes(first_hold)
    assert old.writes_held()  # the second switch still catches up
    second.release_writes(second_hold)
    assert not old.writes_held()


@pytest.mark.parametrize("ending", ["switched", "fails", "outlasts the hold"])
def test_a_switch_catches_up_while_writes_are_held_and_always_lifts_the_hold(
    settings, tiny_embedder, ending, monkeypatch
):
    """`reindex` and `model promote` end this way: the catch-up runs while every worker holds
    catalog work; then the switch; the hold is lifted whatever happened. A catch-up longer
    than workers hold their catalog work for is not switched: writes may have gone by it."""
    import typer
    from qdrant_client import QdrantClient

    from worker.cli.service import _catch_up_and_switch
    from worker.index import ReferenceImage

    client = QdrantClient(location=":memory:")
    source = QdrantServerIndex(settings.index, "old-model", 8, client=client)
    design = DESIGNS[2]
    source.upsert(
        [
            ReferenceImage(
                product_id=design.product_id,
                image_id="front",
                sku=design.sku,
                vector=np.ones(8, dtype=np.float32),
                uri=f"s3://{CATALOG_BUCKET}/{design.product_id}/front.jpg",
            )
        ]
    )
    model = tiny_embedder.model_id
    target = QdrantServerIndex(settings.index, model, tiny_embedder.dim, client=client)
    upsert, held_while_writing = target.upsert, []

    def upsert_noting_the_hold(images) -> None:
        held_while_writing.append(source.writes_held())
        if ending == "fails":
            raise RuntimeError("the index went away")
        if ending == "outlasts the hold":
            time.sleep(1.1)  # a hold's name rounds its start down: it may lapse a second early
        upsert(images)

    target.upsert = upsert_noting_the_hold
    set_at = time.time()  # the index's clock stands still: the hold never lapses by itself here
    monkeypatch.setattr("worker.index.server.time", SimpleNamespace(time=lambda: set_at))
    if ending == "outlasts the hold":
        monkeypatch.setattr("worker.index.server.WRITE_HOLD_SECONDS", 2)
    if ending == "switched":
        _catch_up_and_switch(settings, source, target, tiny_embedder)
    else:
        raised = RuntimeError if ending == "fails" else typer.BadParameter
        with pytest.raises(raised):
            _catch_up_and_switch(settings, source, target, tiny_embedder)
    assert held_while_writing == [True]
    assert not source.writes_held()
    assert source.current_model_id() == (model if ending == "switched" else "old-model")
    stored = [i.image_id for i in target.product_images(design.product_id)]
    assert stored == ([] if ending == "fails" else ["front"])
