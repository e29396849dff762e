"""The worker end to end: a real RabbitMQ node, moto's S3 server over HTTP, the embedded Qdrant
engine, and a tiny open_clip model. Messages go in and out exactly as in production."""

from __future__ import annotations

import json
import math
import re

import pytest

from shared import topology
from shared.contract import (
    BagPhotographed,
    CatalogOutcomeStatus,
    FailureReason,
    MatchStatus,
    ProductUpserted,
)
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes, make_settings
from tests.support.harness import WorkerHarness
from worker.matching.stages.detail import DetailStage
from worker.tools.synthetic import catalog_designs, render
from worker.vision.images import decode_image

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(4, seed=11)


@pytest.fixture
def settings(tmp_path, tiny_model_dir, amqp_url, s3_endpoint):
    return make_settings(
        tmp_path, tiny_model_dir, amqp={"url": amqp_url}, s3={"endpoint_url": s3_endpoint}
    )


@pytest.fixture
def catalog(s3):
    """Each design's catalog picture in the catalog bucket, and a copy in the scans bucket."""
    for design in DESIGNS:
        data = jpeg_bytes(render(design, 256))
        s3.put_object(Bucket=CATALOG_BUCKET, Key=f"{design.product_id}/front.jpg", Body=data)
        s3.put_object(Bucket=SCANS_BUCKET, Key=f"bag-{design.product_id}.jpg", Body=data)
    return s3


def product_event(design, images=("front",)) -> ProductUpserted:
    return ProductUpserted(
        product_id=design.product_id,
        sku=design.sku,
        name=design.name,
        category=design.kind,
        images=[
            {"image_id": image, "bucket": CATALOG_BUCKET, "key": f"{design.product_id}/{image}.jpg"}
            for image in images
        ],
    )


def scan_event(scan_id: str, key: str, **extra) -> BagPhotographed:
    return BagPhotographed(scan_id=scan_id, image={"bucket": SCANS_BUCKET, "key": key}, **extra)


def ingest_all(worker: WorkerHarness) -> None:
    for design in DESIGNS:
        worker.publish(topology.PRODUCT_CREATED, product_event(design))
    outcomes = worker.outcomes(len(DESIGNS))
    assert {o.status for o in outcomes} == {CatalogOutcomeStatus.applied}
    assert all(o.images_indexed == 1 for o in outcomes)


def test_ingested_products_match_a_scan_of_their_catalog_image(settings, catalog, tiny_embedder):
    with WorkerHarness(settings, tiny_embedder) as worker:
        ingest_all(worker)
        target = DESIGNS[2]
        worker.publish(
            topology.BAG_PHOTOGRAPHED, scan_event("scan-1", f"bag-{target.product_id}.jpg", top_k=3)
        )
        [result] = worker.results()
    assert result.scan_id == "scan-1"
    assert result.status is MatchStatus.matched
    assert len(result.matches) == 3
    best = result.matches[0]
    assert (best.rank, best.product_id, best.sku, best.image_id) == (
        1,
        target.product_id,
        target.sku,
        "front",
    )
    # the cosine of the very picture (1), plus the detail stage's bonus: it read the catalog
    # image from S3 and found every keypoint of the photo in it
    picture = decode_image(jpeg_bytes(render(target, 256)), settings.images)
    keypoints = len(DetailStage(enabled=True).extract(picture))
    assert keypoints > 20
    assert best.score == pytest.approx(1.0 + 0.02 * math.log1p(keypoints), abs=0.02)
    assert result.model.startswith("tiny-openclip-v")  # scan view differs from default
    assert {"fetch", "decode", "embed", "detail", "query"} <= set(result.timings_ms)


def test_redelivered_product_event_creates_no_duplicate(settings, catalog, tiny_embedder):
    with WorkerHarness(settings, tiny_embedder) as worker:
        for _ in range(3):
            worker.publish(topology.PRODUCT_CREATED, product_event(DESIGNS[0]))
        outcomes = worker.outcomes(3)
        assert worker.index.count() == 1
        assert [o.images_indexed for o in outcomes] == [1, 1, 1]  # the same outcome each time
        assert all(o.status is CatalogOutcomeStatus.applied for o in outcomes)


def test_product_update_replaces_catalog_images_and_payload(settings, catalog, tiny_embedder):
    design = DESIGNS[0]
    catalog.put_object(
        Bucket=CATALOG_BUCKET,
        Key=f"{design.product_id}/side.jpg",
        Body=jpeg_bytes(render(DESIGNS[1], 256).rotate(90)),
    )
    with WorkerHarness(settings, tiny_embedder) as worker:
        worker.publish(topology.PRODUCT_CREATED, product_event(design, ["front", "side"]))
        worker.outcomes(1)
        updated = product_event(design, ["side"]).model_copy(update={"sku": "NEW-SKU"})
        worker.publish(topology.PRODUCT_UPDATED, updated)
        [outcome] = worker.outcomes(1)
        stored = worker.index.product_images(design.product_id)
    assert outcome.status is CatalogOutcomeStatus.applied
    assert [(s.image_id, s.sku) for s in stored] == [("side", "NEW-SKU")]


def test_deleted_product_no_longer_matches(settings, catalog, tiny_embedder):
    with WorkerHarness(settings, tiny_embedder) as worker:
        ingest_all(worker)
        gone = DESIGNS[1]
        worker.publish(topology.PRODUCT_DELETED, {"product_id": gone.product_id})
        [outcome] = worker.outcomes(1)
        worker.publish(
            topology.BAG_PHOTOGRAPHED, scan_event("scan-2", f"bag-{gone.product_id}.jpg", top_k=5)
        )
        [result] = worker.results()
    assert outcome.status is CatalogOutcomeStatus.applied
    assert gone.product_id not in [m.product_id for m in result.matches]
    assert len(result.matches) == len(DESIGNS) - 1


@pytest.mark.parametrize(
    "key, body, bucket, reason",
    [
        (
            "corrupt.jpg",
            b"\xff\xd8\xff\xe0 this is not really a jpeg",
            SCANS_BUCKET,
            FailureReason.image_unreadable,
        ),
        ("missing.jpg", None, SCANS_BUCKET, FailureReason.image_not_found),
        ("any.jpg", None, "someone-elses-bucket", FailureReason.bucket_not_allowed),
    ],
)
def test_unusable_images_get_a_failed_result_with_a_reason(
    settings, catalog, tiny_embedder, key, body, bucket, reason
):
    if body is not None:
        catalog.put_object(Bucket=SCANS_BUCKET, Key=key, Body=body)
    with WorkerHarness(settings, tiny_embedder) as worker:
        ingest_all(worker)
        worker.publish(
            topology.BAG_PHOTOGRAPHED,
            BagPhotographed(scan_id="scan-bad", image={"bucket": bucket, "key": key}),
        )
        [result] = worker.results()
        assert worker.depth(topology.SCANS_QUEUE) == 0
        assert worker.depth(topology.DEAD_LETTER_QUEUE) == 0
    assert result.status is MatchStatus.failed
    assert result.reason is reason
    assert result.detail and result.matches == []


def test_malformed_json_is_dead_lettered_with_the_error(settings, catalog, tiny_embedder):
    with WorkerHarness(settings, tiny_embedder) as worker:
        worker.publish(topology.BAG_PHOTOGRAPHED, b'{"scan_id": "s-9", "image": ')
        worker.publish(topology.PRODUCT_CREATED, b"\xff\xfe not even utf-8")
        letters = worker.dead_letters(2)
        assert worker.depth(topology.RESULTS_QUEUE) == 0  # no scan id could be read
    by_key = {letter.routing_key: letter for letter in letters}
    assert set(by_key) == {topology.BAG_PHOTOGRAPHED, topology.PRODUCT_CREATED}
    scan_letter = by_key[topology.BAG_PHOTOGRAPHED]
    assert scan_letter.body == b'{"scan_id": "s-9", "image": '
    assert "Invalid JSON" in scan_letter.headers[topology.HEADER_ERROR]
    assert scan_letter.headers[topology.HEADER_EXCEPTION] == "InvalidMessage"
    assert scan_letter.headers[topology.HEADER_ORIGINAL_QUEUE] == topology.SCANS_QUEUE
    product_letter = by_key[topology.PRODUCT_CREATED]
    assert product_letter.body == b"\xff\xfe not even utf-8"  # kept byte for byte
    assert product_letter.headers[topology.HEADER_ORIGINAL_QUEUE] == topology.CATALOG_QUEUE


def test_scan_with_wrong_schema_is_answered_and_dead_lettered(settings, catalog, tiny_embedder):
    with WorkerHarness(settings, tiny_embedder) as worker:
        worker.publish(
            topology.BAG_PHOTOGRAPHED,
            {"scan_id": "scan-7", "image": "s3://scan-photos/a.jpg", "top_k": 999},
        )
        [result] = worker.results()
        [letter] = worker.dead_letters(1)
    assert result.status is MatchStatus.failed
    assert result.reason is FailureReason.invalid_message
    assert "top_k" in result.detail
    assert json.loads(letter.body)["scan_id"] == "scan-7"


def test_redelivered_scan_gets_the_same_answer(settings, catalog, tiny_embedder):
    with WorkerHarness(settings, tiny_embedder) as worker:
        ingest_all(worker)
        scan = scan_event("scan-3", f"bag-{DESIGNS[3].product_id}.jpg")
        worker.publish(topology.BAG_PHOTOGRAPHED, scan)
        first = worker.results(1)[0]
        worker.publish(topology.BAG_PHOTOGRAPHED, scan)
        second = worker.results(1)[0]
    assert second == first  # the same answer, produced_at included


def test_category_hint_filters_candidates(settings, catalog, tiny_embedder):
    kinds = {d.product_id: d.kind for d in DESIGNS}
    target = DESIGNS[0]
    other_kind = next(k for k in set(kinds.values()) if k != target.kind)
    with WorkerHarness(settings, tiny_embedder) as worker:
        ingest_all(worker)
        worker.publish(
            topology.BAG_PHOTOGRAPHED,
            scan_event("scan-4", f"bag-{target.product_id}.jpg", category=other_kind),
        )
        [result] = worker.results()
    assert result.matches and all(kinds[m.product_id] == other_kind for m in result.matches)


def test_confirmed_match_adds_the_scan_as_a_reference(settings, catalog, tiny_embedder):
    with WorkerHarness(settings, tiny_embedder) as worker:
        ingest_all(worker)
        worker.publish(
            topology.BAG_PHOTOGRAPHED, scan_event("scan-5", f"bag-{DESIGNS[0].product_id}.jpg")
        )
        worker.results(1)
        worker.publish(
            topology.MATCH_CONFIRMED, {"scan_id": "scan-5", "product_id": DESIGNS[1].product_id}
        )
        worker.publish(
            topology.MATCH_CONFIRMED, {"scan_id": "scan-404", "product_id": DESIGNS[1].product_id}
        )
        worker.publish(
            topology.MATCH_CONFIRMED, {"scan_id": "scan-5", "product_id": "no-such-product"}
        )
        applied, unknown_scan, unknown_product = worker.outcomes(3)
        stored = worker.index.product_images(DESIGNS[1].product_id)
    assert applied.status is CatalogOutcomeStatus.applied
    assert sorted((s.image_id, s.source, s.uri) for s in stored) == [
        ("front", "catalog", f"s3://{CATALOG_BUCKET}/{DESIGNS[1].product_id}/front.jpg"),
        ("scan:scan-5", "confirmed_scan", f"s3://{SCANS_BUCKET}/bag-{DESIGNS[0].product_id}.jpg"),
    ]
    assert unknown_scan.status is CatalogOutcomeStatus.rejected
    assert unknown_scan.problems[0].reason is FailureReason.unknown_scan
    assert unknown_product.problems[0].reason is FailureReason.unknown_product


def test_product_with_a_missing_image_is_partially_applied(settings, catalog, tiny_embedder):
    design = DESIGNS[0]
    with WorkerHarness(settings, tiny_embedder) as worker:
        worker.publish(topology.PRODUCT_CREATED, product_event(design, ["front", "lost"]))
        [outcome] = worker.outcomes(1)
    assert outcome.status is CatalogOutcomeStatus.partially_applied
    assert outcome.images_indexed == 1
    assert [(p.image_id, p.reason) for p in outcome.problems] == [
        ("lost", FailureReason.image_not_found)
    ]


def test_unreachable_s3_is_retried_then_answered_as_unavailable(
    tmp_path, tiny_model_dir, amqp_url, tiny_embedder
):
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        amqp={"url": amqp_url},
        s3={
            "endpoint_url": "http://127.0.0.1:9",
            "max_attempts": 1,
            "connect_timeout_seconds": 0.5,
        },
        ops={"max_attempts": 2},
    )
    with WorkerHarness(settings, tiny_embedder) as worker:
        worker.publish(topology.BAG_PHOTOGRAPHED, scan_event("scan-6", "bag.jpg"))
        [result] = worker.results(1, timeout=30)
        [letter] = worker.dead_letters(1)
    assert result.status is MatchStatus.failed
    assert result.reason is FailureReason.dependency_unavailable
    assert letter.headers[topology.HEADER_ATTEMPT] == 2
    assert "S3 unreachable" in letter.headers[topology.HEADER_ERROR]


def test_a_scan_too_close_to_call_is_no_confident_match_with_its_ranking(
    tmp_path, tiny_model_dir, amqp_url, s3_endpoint, catalog, tiny_embedder
):
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        amqp={"url": amqp_url},
        s3={"endpoint_url": s3_endpoint},
        matching={"min_margin": 5.0},
    )
    with WorkerHarness(settings, tiny_embedder) as worker:
        ingest_all(worker)
        worker.publish(
            topology.BAG_PHOTOGRAPHED,
            scan_event("scan-8", f"bag-{DESIGNS[1].product_id}.jpg", top_k=3),
        )
        [result] = worker.results()
    assert result.status is MatchStatus.no_confident_match
    assert result.reason is None
    assert [m.rank for m in result.matches] == [1, 2, 3]
    assert result.matches[0].product_id == DESIGNS[1].product_id


def test_a_confirmed_correction_makes_the_next_photo_of_that_product_rank_first(
    settings, catalog, tiny_embedder
):
    """The bag photo of product A looks more like product B: the first answer is wrong; once
    a person confirms A, the next photo of A ranks A first.

    Domain centring is off here: the tiny model's random weights have no photo domain to
    learn, and with it on, confirmed photos wait until enough scans teach it
    (tests/test_first_confirmation.py)."""
    import numpy as np
    from PIL import Image

    centring = settings.learning.centring.model_copy(update={"enabled": False})
    learning = settings.learning.model_copy(update={"centring": centring})
    settings = settings.model_copy(update={"learning": learning})

    def blocks(seed: int) -> Image.Image:
        pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        return Image.fromarray(pixels).resize((256, 256), Image.Resampling.NEAREST)

    a, b = blocks(1), blocks(2)
    for name, picture in {"block-a": a, "block-b": b}.items():
        catalog.put_object(Bucket=CATALOG_BUCKET, Key=f"{name}.jpg", Body=jpeg_bytes(picture))
    first_photo, second_photo = Image.blend(b, a, 0.30), Image.blend(b, a, 0.33)
    catalog.put_object(Bucket=SCANS_BUCKET, Key="bag-first.jpg", Body=jpeg_bytes(first_photo))
    catalog.put_object(Bucket=SCANS_BUCKET, Key="bag-again.jpg", Body=jpeg_bytes(second_photo))
    with WorkerHarness(settings, tiny_embedder) as worker:
        for name in ("block-a", "block-b"):
            worker.publish(
                topology.PRODUCT_CREATED,
                {
                    "product_id": name,
                    "sku": name,
                    "images": [{"image_id": "front", "uri": f"s3://{CATALOG_BUCKET}/{name}.jpg"}],
                },
            )
        worker.outcomes(2)
        worker.publish(topology.BAG_PHOTOGRAPHED, scan_event("scan-first", "bag-first.jpg"))
        [first] = worker.results()
        worker.publish(topology.MATCH_CONFIRMED, {"scan_id": "scan-first", "product_id": "block-a"})
        [confirmed] = worker.outcomes()
        worker.publish(topology.BAG_PHOTOGRAPHED, scan_event("scan-again", "bag-again.jpg"))
        [second] = worker.results()
    assert first.matches[0].product_id == "block-b"  # wrong: it looks more like B
    assert confirmed.status is CatalogOutcomeStatus.applied
    assert second.matches[0].product_id == "block-a"
    assert (second.matches[0].source, second.matches[0].image_id) == (
        "confirmed_scan",
        "scan:scan-first",
    )


def test_seed_demo_is_answered_by_a_running_worker(settings, s3, tiny_embedder):
    """`jewelmatch seed-demo` (what docker compose runs once) publishes as the PIM and a scan
    station through the project's client and reads every answer back."""
    from rich.console import Console

    from worker.tools.seed import seed_demo

    console = Console(record=True, width=200)
    with WorkerHarness(settings, tiny_embedder):
        right = seed_demo(settings, CATALOG_BUCKET, SCANS_BUCKET, 3, console, timeout=120)
    printed = console.export_text()
    assert "published 3 product.created events" in printed
    assert "catalog: 3 of 3 products answered, 3 indexed" in printed
    assert "published 3 bag.photographed events" in printed
    answers = re.findall(
        r"^demo-(p\d{3})-query_0-\d+: photo of (p\d{3}) → (p\d{3}) \((\w+)\)$", printed, re.M
    )
    assert sorted(photo for photo, *_ in answers) == ["p001", "p002", "p003"]
    assert all(
        in_id == photo and status in {"matched", "no_confident_match"}
        for in_id, photo, _, status in answers
    )
    assert right == sum(best == photo for _, photo, best, _ in answers)
    assert f"seed-demo: {right}/3 scans ranked the right product first" in printed
    for bucket, name in ((CATALOG_BUCKET, "catalog_0.png"), (SCANS_BUCKET, "query_0.jpg")):
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert sorted(keys) == [f"demo/p00{n}/{name}" for n in (1, 2, 3)]


def test_seed_demo_without_a_worker_says_so_and_ends(settings, s3):
    """The queues are there (a worker ran once) but no worker answers: neither the catalog
    nor the scans, each listed as unanswered once its wait is over, none counted as right."""
    from kombu import Connection
    from rich.console import Console

    from worker.amqp.broker import Topology
    from worker.tools.seed import seed_demo

    with Connection(settings.amqp.url.get_secret_value()) as connection:
        Topology.build(settings.amqp, settings.ops).declare(connection.channel())
    console = Console(record=True, width=200)
    right = seed_demo(settings, CATALOG_BUCKET, SCANS_BUCKET, 2, console, timeout=1)
    printed = console.export_text()
    assert right == 0
    assert "catalog: 0 of 2 products answered, 0 indexed" in printed
    assert len(re.findall(r"photo of p00[12] → None \(no answer\)$", printed, re.M)) == 2
    assert "seed-demo: 0/2 scans ranked the right product first" in printed
