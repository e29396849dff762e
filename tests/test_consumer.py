"""The consumer loop on kombu's in-memory transport: fast, no servers. What needs a real
broker (trust, restarts, delivery limits) is in test_trust.py and test_reliability.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kombu import Connection, Producer

from shared import topology
from shared.contract import BagPhotographed, MatchResult, MatchStatus, ProductUpserted
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, make_settings
from tests.support.pictures import design_folder
from worker.amqp.broker import EVENTS
from worker.service.app import build_components, wire_worker
from worker.service.backup import BackupFile
from worker.tools.synthetic import catalog_designs

DESIGNS = catalog_designs(8, seed=31)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = design_folder(tmp_path / "images", DESIGNS, 160)
    return root


def publish(routing_key: str, event) -> None:
    with Connection("memory://") as connection:
        Producer(connection.channel()).publish(
            event.model_dump_json(), exchange=EVENTS, routing_key=routing_key
        )


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
