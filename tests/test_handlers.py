"""The handlers' decisions, fast: a folder image store, a temporary embedded index and the tiny
model, no servers. Each test sends deliveries as the consumer would and reads the outcomes."""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from shared import topology
from shared.contract import (
    BagPhotographed,
    CatalogOutcome,
    CatalogOutcomeStatus,
    FailureReason,
    MatchConfirmed,
    MatchResult,
    MatchStatus,
    ProductDeleted,
    ProductUpserted,
    S3Object,
)
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes, make_settings
from tests.support.pictures import design_folder, set_picture
from worker.errors import TransientError
from worker.observability.prometheus import count_index_when_scraped
from worker.pipeline.handlers import Action, Delivery, Handlers
from worker.pipeline.outcome import identifier_in
from worker.pipeline.storage import Blob, LocalImageStore
from worker.service.app import build_components
from worker.settings import ModelSettings
from worker.tools.synthetic import catalog_designs
from worker.vision.catalog_parts import piece_crops
from worker.vision.embedder import Embedder, ImageKind

DESIGNS = catalog_designs(4, seed=5)
INVENTORY = "inventory"


class FaultyStore(LocalImageStore):
    """A real folder store that raises an unexpected error for one key (fault injection)."""

    def fetch(self, ref: S3Object) -> Blob:
        if ref.key == "explodes.jpg":
            raise ZeroDivisionError("an error nobody planned for")
        if ref.key == "unreachable.jpg":
            raise TransientError(
                'Could not connect to the endpoint URL: "http://minio.internal.corp:9000/x"'
            )
        return super().fetch(ref)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = design_folder(tmp_path / "images", DESIGNS, 192)
    (root / SCANS_BUCKET / "explodes.jpg").write_bytes(b"whatever")
    return root


def _handlers(tmp_path, tiny_model_dir, tiny_embedder, images, **sections) -> Handlers:
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        s3={"backend": "local", "local_root": str(images)},
        amqp={"confirm_users": [INVENTORY]},
        **sections,
    )
    components = build_components(settings, tiny_embedder)
    store = FaultyStore(images, settings.s3.allowed_buckets, settings.images.max_bytes)
    handlers = Handlers(settings, store, components.embedder, components.matcher)
    return handlers


@pytest.fixture
def handlers(tmp_path, tiny_model_dir, tiny_embedder, images):
    handlers = _handlers(tmp_path, tiny_model_dir, tiny_embedder, images)
    yield handlers
    handlers.close()
    handlers.matcher.index.close()


def product(design, version: int | None = None, key: str | None = None) -> ProductUpserted:
    return ProductUpserted(
        product_id=design.product_id,
        sku=design.sku,
        images=[
            {
                "image_id": "front",
                "bucket": CATALOG_BUCKET,
                "key": key or f"{design.product_id}.jpg",
            }
        ],
        version=version,
    )


def delivery(routing_key: str, body, user_id: str | None = None, attempt: int = 1) -> Delivery:
    if not isinstance(body, bytes):
        body = (
            body.model_dump_json().encode()
            if hasattr(body, "model_dump_json")
            else (json.dumps(body).encode())
        )
    return Delivery(routing_key, body, attempt, user_id)


def scan(scan_id: str, key: str, **extra) -> Delivery:
    event = BagPhotographed(scan_id=scan_id, image={"bucket": SCANS_BUCKET, "key": key}, **extra)
    return delivery(topology.BAG_PHOTOGRAPHED, event)


def confirm(scan_id: str, product_id: str, user_id: str | None = INVENTORY, **extra) -> Delivery:
    event = MatchConfirmed(scan_id=scan_id, product_id=product_id, **extra)
    return delivery(topology.MATCH_CONFIRMED, event, user_id=user_id)


def results(outcome) -> list:
    return [result for _, result in outcome.results]


def only_result(outcome):
    [result] = results(outcome)
    return result


def problems_of(result) -> list[tuple[str | None, FailureReason]]:
    """Each problem of an outcome as (image id, reason)."""
    return [(problem.image_id, problem.reason) for problem in result.problems]


def ingest(handlers: Handlers) -> None:
    outcomes = handlers.handle_catalog(
        [delivery(topology.PRODUCT_CREATED, product(d)) for d in DESIGNS]
    )
    assert [only_result(o).status for o in outcomes] == [CatalogOutcomeStatus.applied] * 4


# --- isolation -------------------------------------------------------------------------


def test_a_message_that_raises_is_its_own_failure_and_its_batch_mates_are_answered(handlers):
    ingest(handlers)
    batch = [
        scan("good-1", f"bag-{DESIGNS[0].product_id}.jpg"),
        scan("boom", "explodes.jpg"),
        scan("good-2", f"bag-{DESIGNS[1].product_id}.jpg"),
    ]
    outcomes = handlers.handle_scans(batch)
    good_1, boom, good_2 = outcomes
    assert only_result(good_1).status is MatchStatus.matched
    assert only_result(good_2).status is MatchStatus.matched
    # too few confirmations to learn from: the prior's calibrated probability (its function
    # of the margin: test_matching_logic.py)
    assert only_result(good_1).confidence_origin == "prior"
    assert 0.0 < only_result(good_1).confidence < 1.0
    failed = only_result(boom)
    assert (failed.status, failed.reason) == (MatchStatus.failed, FailureReason.internal_error)
    assert failed.confidence is None
    assert boom.action is Action.dead_letter  # never retried, kept for operators
    assert "nobody planned" in boom.error  # the raw error for operators...
    assert "nobody planned" not in failed.detail  # ...never for consumers


def test_an_unreachable_store_is_retried_without_an_answer_until_the_last_attempt(handlers):
    body = scan("down", "unreachable.jpg").body
    [first] = handlers.handle_scans([Delivery(topology.BAG_PHOTOGRAPHED, body, 1)])
    assert (first.action, first.results) == (Action.retry, [])
    last = handlers.settings.ops.max_attempts
    [final] = handlers.handle_scans([Delivery(topology.BAG_PHOTOGRAPHED, body, last)])
    assert final.action is Action.dead_letter  # kept for operators
    assert only_result(final).reason is FailureReason.dependency_unavailable
    [missing] = handlers.handle_scans([scan("missing", "not-there.jpg")])
    assert missing.action is Action.ack  # the image's fault: answered, nothing for operators
    assert only_result(missing).reason is FailureReason.image_not_found


class _WrappedEmbedder:
    """The worker's embedder, everything but `embed` passed through as it is."""

    def __init__(self, embedder) -> None:
        self._embedder = embedder

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def embed(self, pictures, kind):
        return self._embedder.embed(pictures, kind)


class _PoisonedEmbedder(_WrappedEmbedder):
    """Raises an error nobody planned for on a picture 77 px wide: a fault that escapes the
    handler, so the whole batch raises."""

    def embed(self, pictures, kind):
        if any(picture.width == 77 for picture in pictures):
            raise RuntimeError("a poisoned batch")
        return super().embed(pictures, kind)


def test_a_batch_that_raises_is_handled_one_by_one_and_only_its_culprit_fails(handlers, images):
    from structlog.testing import capture_logs

    ingest(handlers)
    poison = Image.new("RGB", (77, 77), "red")
    (images / SCANS_BUCKET / "poison.jpg").write_bytes(jpeg_bytes(poison))
    handlers.scans.embedder = _PoisonedEmbedder(handlers.scans.embedder)
    batch = [
        scan("good-1", f"bag-{DESIGNS[0].product_id}.jpg"),
        scan("poisoned", "poison.jpg", station_id="station-7"),
        scan("good-2", f"bag-{DESIGNS[1].product_id}.jpg"),
    ]
    with capture_logs() as logs:
        good_1, poisoned, good_2 = handlers.handle_scans(batch)
    assert only_result(good_1).matches[0].product_id == DESIGNS[0].product_id
    assert only_result(good_2).matches[0].product_id == DESIGNS[1].product_id
    failed = only_result(poisoned)
    assert (failed.status, failed.reason) == (MatchStatus.failed, FailureReason.internal_error)
    # read again from the message: whoever looks at the failure sees its photo and station
    assert (failed.image.key, failed.station_id) == ("poison.jpg", "station-7")
    assert poisoned.action is Action.dead_letter and "poisoned batch" in poisoned.error
    raised = [entry["event"] for entry in logs if entry["event"].endswith(".raised")]
    assert raised == ["batch.raised", "message.raised"]


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"scan_id": " s-1 ", "image": 42}, "s-1"),
        ({"scan_id": "s" * 200}, "s" * 200),
        ({"scan_id": "s" * 201}, None),
        ({"scan_id": "   "}, None),
        ({"scan_id": 42}, None),
        ({"scan_id": ["s-1"]}, None),
        (["s-1"], None),
        (b"{not json", None),
    ],
)
def test_an_invalid_bodys_id_is_read_to_answer_it_when_it_is_1_to_200_characters(body, expected):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert identifier_in(raw, "scan_id") == expected


def test_a_scan_event_under_another_routing_key_is_refused_not_crashed_on(handlers):
    body = BagPhotographed(scan_id="s", image={"bucket": SCANS_BUCKET, "key": "x.jpg"})
    [outcome] = handlers.handle_scans([delivery(topology.PRODUCT_DELETED, body)])
    assert outcome.action is Action.dead_letter
    assert only_result(outcome).reason is FailureReason.invalid_message
    # a valid catalog event that reached the scans: refused, with no scan to answer
    ingest(handlers)
    deletion = ProductDeleted(product_id=DESIGNS[0].product_id)
    [outcome] = handlers.handle_scans([delivery(topology.PRODUCT_DELETED, deletion)])
    assert (outcome.action, outcome.results) == (Action.dead_letter, [])
    assert "product.deleted is not a scan event" in outcome.error
    assert len(handlers.matcher.index.product_images(DESIGNS[0].product_id)) == 1  # kept


# --- scan identity ---------------------------------------------------------------------


def test_the_same_scan_again_gets_the_same_answer_and_another_photo_is_refused(handlers):
    ingest(handlers)
    first_key = f"bag-{DESIGNS[0].product_id}.jpg"
    [first] = handlers.handle_scans([scan("s-1", first_key, station_id="st-1")])
    [again] = handlers.handle_scans([scan("s-1", first_key, station_id="st-1")])
    assert only_result(again) == only_result(first)
    [reused] = handlers.handle_scans(
        [scan("s-1", f"bag-{DESIGNS[1].product_id}.jpg", station_id="st-2")]
    )
    refusal = only_result(reused)
    assert refusal.reason is FailureReason.scan_id_reused
    assert refusal.image.key == f"bag-{DESIGNS[1].product_id}.jpg"  # says which photo
    assert refusal.matches == []  # never the first photo's ranking
    assert reused.action is Action.dead_letter
    [other_station] = handlers.handle_scans([scan("s-1", first_key, station_id="st-2")])
    assert only_result(other_station).reason is FailureReason.scan_id_reused


def test_an_invalid_body_with_an_answered_scan_id_publishes_no_second_answer(handlers):
    ingest(handlers)
    handlers.handle_scans([scan("s-2", f"bag-{DESIGNS[0].product_id}.jpg")])
    bad = delivery(topology.BAG_PHOTOGRAPHED, {"scan_id": "s-2", "image": 42})
    [outcome] = handlers.handle_scans([bad])
    assert outcome.results == []
    assert outcome.action is Action.dead_letter
    fresh = delivery(topology.BAG_PHOTOGRAPHED, {"scan_id": "never-seen", "image": 42})
    [outcome] = handlers.handle_scans([fresh])
    assert only_result(outcome).reason is FailureReason.invalid_message


# --- confirmations ---------------------------------------------------------------------


def test_a_confirmation_needs_an_answered_scan_and_an_authorized_sender(handlers):
    ingest(handlers)
    target = DESIGNS[2].product_id
    [made_up] = handlers.handle_catalog(
        [confirm("never-answered", target, image=f"s3://{SCANS_BUCKET}/bag-{target}.jpg")]
    )
    assert only_result(made_up).status is CatalogOutcomeStatus.rejected
    assert only_result(made_up).problems[0].reason is FailureReason.unknown_scan
    handlers.handle_scans([scan("s-3", f"bag-{DESIGNS[0].product_id}.jpg")])
    for user in (None, "scan-station"):
        [refused] = handlers.handle_catalog([confirm("s-3", target, user_id=user)])
        assert only_result(refused).problems[0].reason is FailureReason.not_authorized
    before = handlers.matcher.index.count()
    [accepted] = handlers.handle_catalog([confirm("s-3", target, confirmed_by="Ana")])
    assert only_result(accepted).status is CatalogOutcomeStatus.applied
    assert handlers.matcher.index.count() == before + 1


def test_a_confirmation_naming_a_photo_must_name_the_one_the_scan_was_answered_for(handlers):
    ingest(handlers)
    photo = f"bag-{DESIGNS[0].product_id}.jpg"
    handlers.handle_scans([scan("s-5", photo)])
    target = DESIGNS[0].product_id
    other_photo = f"s3://{SCANS_BUCKET}/bag-{DESIGNS[1].product_id}.jpg"
    [swapped] = handlers.handle_catalog([confirm("s-5", target, image=other_photo)])
    assert only_result(swapped).status is CatalogOutcomeStatus.rejected
    assert only_result(swapped).problems[0].reason is FailureReason.unknown_scan
    image = f"s3://{SCANS_BUCKET}/{photo}"
    [named] = handlers.handle_catalog([confirm("s-5", target, image=image)])
    assert only_result(named).status is CatalogOutcomeStatus.applied


def test_a_first_confirmation_checks_the_answer_for_ops_and_a_correction_does_not_again(
    handlers,
):
    from prometheus_client import REGISTRY
    from structlog.testing import capture_logs

    def checked(first: str) -> float:
        labels = {"status": "matched", "first": first}
        return REGISTRY.get_sample_value("jewelmatch_checked_answers_total", labels) or 0.0

    ingest(handlers)
    before = checked("right"), checked("wrong")
    for scan_id, design in (("c-1", DESIGNS[0]), ("c-2", DESIGNS[1])):
        [answered] = handlers.handle_scans([scan(scan_id, f"bag-{design.product_id}.jpg")])
        assert only_result(answered).status is MatchStatus.matched
        assert only_result(answered).matches[0].product_id == design.product_id
    with capture_logs() as logs:
        handlers.handle_catalog([confirm("c-1", DESIGNS[0].product_id)])  # as answered
        handlers.handle_catalog([confirm("c-2", DESIGNS[3].product_id)])  # another product
    assert (checked("right"), checked("wrong")) == (before[0] + 1, before[1] + 1)
    audits = [entry for entry in logs if entry["event"] == "confirmation"]
    fields = ("answered_status", "answered_first_product_id", "answer_right")
    assert [tuple(entry[field] for field in fields) for entry in audits] == [
        ("matched", DESIGNS[0].product_id, True),
        ("matched", DESIGNS[1].product_id, False),
    ]
    # a correction, or the same confirmation again, checks no answer a second time
    handlers.handle_catalog([confirm("c-2", DESIGNS[1].product_id)])
    handlers.handle_catalog([confirm("c-1", DESIGNS[0].product_id)])
    assert (checked("right"), checked("wrong")) == (before[0] + 1, before[1] + 1)


def test_another_replica_accepts_a_confirmation_only_with_the_answers_receipt(
    tmp_path, tiny_model_dir, tiny_embedder, images
):
    key = {"receipt_key": "shared-between-workers"}
    answering = _handlers(tmp_path / "a", tiny_model_dir, tiny_embedder, images, matching=key)
    other = _handlers(tmp_path / "b", tiny_model_dir, tiny_embedder, images, matching=key)
    try:
        for replica in (answering, other):
            ingest(replica)
        photo = f"bag-{DESIGNS[0].product_id}.jpg"
        [answered] = answering.handle_scans([scan("s-4", photo)])
        receipt = only_result(answered).receipt
        assert receipt
        image = f"s3://{SCANS_BUCKET}/{photo}"
        target = DESIGNS[0].product_id
        [forged] = other.handle_catalog([confirm("s-4", target, image=image, receipt="0" * 32)])
        assert only_result(forged).problems[0].reason is FailureReason.unknown_scan
        other_photo = f"s3://{SCANS_BUCKET}/bag-{DESIGNS[1].product_id}.jpg"
        [swapped] = other.handle_catalog(
            [confirm("s-4", target, image=other_photo, receipt=receipt)]
        )
        assert only_result(swapped).status is CatalogOutcomeStatus.rejected
        [proven] = other.handle_catalog([confirm("s-4", target, image=image, receipt=receipt)])
        assert only_result(proven).status is CatalogOutcomeStatus.applied
    finally:
        for replica in (answering, other):
            replica.close()
            replica.matcher.index.close()


# --- catalog versions and outcomes -----------------------------------------------------


def test_a_stale_update_or_a_late_update_after_a_delete_changes_nothing(handlers):
    design = DESIGNS[0]
    other_key = f"{DESIGNS[1].product_id}.jpg"
    [v2] = handlers.handle_catalog([delivery(topology.PRODUCT_UPDATED, product(design, 2))])
    assert only_result(v2).status is CatalogOutcomeStatus.applied
    [v1] = handlers.handle_catalog(
        [delivery(topology.PRODUCT_UPDATED, product(design, 1, key=other_key))]
    )
    assert only_result(v1).status is CatalogOutcomeStatus.stale
    [stored] = handlers.matcher.index.product_images(design.product_id)
    assert stored.uri.endswith(f"{design.product_id}.jpg")  # v1's image never went in
    deleted = ProductDeleted(product_id=design.product_id, version=3)
    handlers.handle_catalog([delivery(topology.PRODUCT_DELETED, deleted)])
    [late] = handlers.handle_catalog([delivery(topology.PRODUCT_UPDATED, product(design, 2))])
    assert only_result(late).status is CatalogOutcomeStatus.stale
    assert handlers.matcher.index.product_images(design.product_id) == []
    [recreated] = handlers.handle_catalog([delivery(topology.PRODUCT_CREATED, product(design, 4))])
    assert only_result(recreated).status is CatalogOutcomeStatus.applied
    late_delete = ProductDeleted(product_id=design.product_id, version=3)  # redelivered late
    [outcome] = handlers.handle_catalog([delivery(topology.PRODUCT_DELETED, late_delete)])
    assert only_result(outcome).status is CatalogOutcomeStatus.stale
    assert len(handlers.matcher.index.product_images(design.product_id)) == 1  # still there


class _CountingEmbedder(_WrappedEmbedder):
    """Notes how many catalog pictures each call embeds."""

    def __init__(self, embedder) -> None:
        super().__init__(embedder)
        self.catalog_batches: list[int] = []

    def embed(self, pictures, kind):
        if kind is ImageKind.catalog:
            self.catalog_batches.append(len(pictures))
        return super().embed(pictures, kind)


def test_distinct_products_share_an_embed_batch_and_a_products_second_event_waits(handlers):
    """Upserts of distinct products are embedded together; a product's second event waits for
    its first to be applied, so one behind a newer version is seen to be stale."""
    design, other = DESIGNS[0], DESIGNS[1]
    embedder = _CountingEmbedder(handlers.catalog_events.embedder)
    handlers.catalog_events.embedder = embedder
    batch = [
        delivery(topology.PRODUCT_UPDATED, product(design, 2)),
        delivery(topology.PRODUCT_UPDATED, product(other, 1)),
        delivery(topology.PRODUCT_UPDATED, product(design, 1, key=f"{other.product_id}.jpg")),
    ]
    outcomes = handlers.handle_catalog(batch)
    assert [only_result(o).status for o in outcomes] == [
        CatalogOutcomeStatus.applied,
        CatalogOutcomeStatus.applied,
        CatalogOutcomeStatus.stale,
    ]
    assert embedder.catalog_batches[0] == 2
    [stored] = handlers.matcher.index.product_images(design.product_id)
    assert stored.uri.endswith(f"{design.product_id}.jpg")


def test_a_product_whose_store_is_unreachable_is_retried_then_rejected(handlers):
    body = product(DESIGNS[0], key="unreachable.jpg").model_dump_json().encode()
    [first] = handlers.handle_catalog([Delivery(topology.PRODUCT_CREATED, body, 1)])
    assert (first.action, first.results) == (Action.retry, [])
    last = handlers.settings.ops.max_attempts
    [final] = handlers.handle_catalog([Delivery(topology.PRODUCT_CREATED, body, last)])
    result = only_result(final)
    assert result.status is CatalogOutcomeStatus.rejected
    assert [p.reason for p in result.problems] == [FailureReason.dependency_unavailable]
    assert "minio.internal.corp" in final.error  # for operators, not in the outcome
    assert handlers.matcher.index.product_images(DESIGNS[0].product_id) == []


def test_an_image_moved_to_a_missing_object_is_one_problem_and_leaves_the_index(handlers):
    design = DESIGNS[0]
    handlers.handle_catalog([delivery(topology.PRODUCT_CREATED, product(design))])
    moved = product(design, key="gone.jpg")  # the same image id, another object, none there
    [outcome] = handlers.handle_catalog([delivery(topology.PRODUCT_UPDATED, moved)])
    result = only_result(outcome)
    assert result.status is CatalogOutcomeStatus.rejected
    assert problems_of(result) == [("front", FailureReason.image_not_found)]
    assert result.images_indexed == 0
    # dead-lettered, its problems the error operators read there
    assert (outcome.action, outcome.error) == (Action.dead_letter, result.problems[0].detail)
    assert handlers.matcher.index.product_images(design.product_id) == []


def test_an_object_deleted_since_it_was_indexed_is_one_problem_and_leaves_the_index(
    handlers, images
):
    design, other = DESIGNS[0], DESIGNS[1]
    front = {"image_id": "front", "bucket": CATALOG_BUCKET, "key": f"{design.product_id}.jpg"}
    back = {"image_id": "back", "bucket": CATALOG_BUCKET, "key": f"{other.product_id}.jpg"}
    two_images = ProductUpserted(product_id=design.product_id, sku=design.sku, images=[front, back])
    handlers.handle_catalog([delivery(topology.PRODUCT_CREATED, two_images)])
    assert len(handlers.matcher.index.product_images(design.product_id)) == 2
    (images / CATALOG_BUCKET / f"{design.product_id}.jpg").unlink()  # gone from the store
    [outcome] = handlers.handle_catalog([delivery(topology.PRODUCT_UPDATED, two_images)])
    result = only_result(outcome)
    assert result.status is CatalogOutcomeStatus.partially_applied
    assert problems_of(result) == [("front", FailureReason.image_not_found)]
    assert result.images_indexed == 1
    stored = handlers.matcher.index.product_images(design.product_id)
    assert [image.image_id for image in stored] == ["back"]


def test_an_object_replaced_at_the_same_key_is_embedded_again(handlers, images):
    design = DESIGNS[0]
    path = images / CATALOG_BUCKET / f"{design.product_id}.jpg"
    handlers.handle_catalog([delivery(topology.PRODUCT_CREATED, product(design))])
    index = handlers.matcher.index
    before = index.references(design.product_id).vectors[0]
    data = jpeg_bytes(Image.new("RGB", (192, 192), (20, 160, 40)))
    path.write_bytes(data)  # another picture, same key
    replacement = Image.open(io.BytesIO(data)).convert("RGB")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    [outcome] = handlers.handle_catalog([delivery(topology.PRODUCT_UPDATED, product(design))])
    assert only_result(outcome).images_indexed == 1
    after = index.references(design.product_id).vectors[0]
    expected = handlers.embedder.embed([replacement], ImageKind.catalog)[0]
    assert not np.allclose(after, before)
    assert np.allclose(after, expected, atol=1e-4)


def test_every_catalog_event_gets_one_outcome_invalid_ones_included(handlers):
    too_many = product(DESIGNS[0]).model_dump(mode="json")
    too_many["images"] = [
        {"image_id": f"i{n}", "bucket": CATALOG_BUCKET, "key": "x.jpg"} for n in range(51)
    ]
    missing = product(DESIGNS[1], key="gone.jpg")
    outcomes = handlers.handle_catalog(
        [
            delivery(topology.PRODUCT_CREATED, too_many),
            delivery(topology.PRODUCT_CREATED, missing),
            delivery(topology.PRODUCT_CREATED, b"{not json"),
        ]
    )
    invalid, unusable, unreadable = outcomes
    assert only_result(invalid).status is CatalogOutcomeStatus.rejected
    assert only_result(invalid).problems[0].reason is FailureReason.invalid_message
    assert only_result(unusable).status is CatalogOutcomeStatus.rejected
    assert only_result(unusable).problems[0].reason is FailureReason.image_not_found
    assert unreadable.results == []  # no product id to answer: the dead letter is all
    assert {o.action for o in outcomes} == {Action.dead_letter}


def test_redelivered_product_event_reports_the_same_outcome(handlers):
    event = delivery(topology.PRODUCT_CREATED, product(DESIGNS[0]))
    first, second = (only_result(handlers.handle_catalog([event])[0]) for _ in range(2))
    assert isinstance(first, CatalogOutcome)
    assert (first.status, first.images_indexed) == (second.status, second.images_indexed)


def test_scans_make_the_next_timed_refit_due(handlers):
    ingest(handlers)
    learner = handlers.matcher.learner
    learner.refit()

    def scans(prefix: str) -> None:
        outcomes = handlers.handle_scans(
            [scan(f"{prefix}-{n}", f"bag-{DESIGNS[n % 4].product_id}.jpg") for n in range(30)]
        )
        assert all(isinstance(only_result(o), MatchResult) for o in outcomes)

    scans("first")  # enough to learn the photo domain, which the metric lacks: due at once
    assert learner.refit_in_background_if_due()
    learner.wait(timeout=30)  # the background refit, done
    assert learner.snapshot.centring.means.scan is not None
    scans("more")
    assert not learner.refit_in_background_if_due()  # scans alone: not before refit.seconds
    learner.snapshot = replace(
        learner.snapshot,
        fitted_at=learner.snapshot.fitted_at - handlers.settings.learning.refit.seconds,
    )
    assert learner.refit_in_background_if_due()  # but then, since they changed the statistics


def test_a_restarted_worker_ranks_at_once_with_what_its_index_already_teaches(
    tmp_path, tiny_model_dir, tiny_embedder, images
):
    first = _handlers(tmp_path, tiny_model_dir, tiny_embedder, images)
    ingest(first)
    first.handle_scans([scan(f"s-{n}", f"bag-{DESIGNS[n % 4].product_id}.jpg") for n in range(30)])
    first.close()
    first.matcher.index.close()
    # Without a fit at start, the photo domain (and so every confirmed photo) would wait
    # for enough new scans: the scans the index holds would not count.
    restarted = _handlers(tmp_path, tiny_model_dir, tiny_embedder, images)
    try:
        assert restarted.matcher.snapshot.centring.means.scan is not None
        assert not restarted.matcher.learner.refit_in_background_if_due()
    finally:
        restarted.close()
        restarted.matcher.index.close()


def scraped_index_size() -> float | None:
    return REGISTRY.get_sample_value("jewelmatch_index_reference_images")


def test_the_index_size_metric_follows_the_catalog(handlers):
    index = handlers.matcher.index
    assert scraped_index_size() == 0
    ingest(handlers)
    ingested = index.count()
    assert ingested >= len(DESIGNS)
    assert scraped_index_size() == ingested
    deletion = ProductDeleted(product_id=DESIGNS[0].product_id)
    handlers.handle_catalog([delivery(topology.PRODUCT_DELETED, deletion)])
    assert 0 < scraped_index_size() == index.count() < ingested


def test_an_index_that_cannot_be_counted_scrapes_as_unknown_not_as_an_error():
    def away() -> int:
        raise ConnectionError("qdrant is away")

    count_index_when_scraped(away)
    assert math.isnan(scraped_index_size())


def test_no_published_detail_carries_a_url_or_an_object_address(handlers, images):
    (images / SCANS_BUCKET / "garbage.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    last = handlers.settings.ops.max_attempts
    outcomes = handlers.handle_scans(
        [
            Delivery(topology.BAG_PHOTOGRAPHED, scan("down", "unreachable.jpg").body, last),
            scan("boom", "explodes.jpg"),
            scan("garbage", "garbage.jpg"),
            scan("missing", "not-there.jpg"),
        ]
    )
    details = [only_result(o).detail for o in outcomes]
    reasons = [only_result(o).reason for o in outcomes]
    assert reasons == [
        FailureReason.dependency_unavailable,
        FailureReason.internal_error,
        FailureReason.image_unreadable,
        FailureReason.image_not_found,
    ]
    for detail in details:
        assert "http" not in detail and "0x" not in detail and "object at" not in detail
    assert "minio.internal.corp" in outcomes[0].error  # operators still see it


def test_a_sets_picture_is_stored_with_its_pieces_and_a_piece_found_names_the_image(
    tmp_path, tiny_model_dir, images
):
    """`MODEL__CATALOG_PARTS`: the product event stores the picture and each of its pieces
    (the outcome counts the one image), and a scan of a piece alone (the very crop: with random
    weights only an identical view is reliably nearest) is answered with the set, naming the
    image it was cut from."""
    picture = set_picture()
    (images / CATALOG_BUCKET / "set.jpg").write_bytes(jpeg_bytes(picture))
    (images / SCANS_BUCKET / "earring.jpg").write_bytes(jpeg_bytes(piece_crops(picture)[1]))
    embedder = Embedder(
        ModelSettings(
            name=f"local-dir:{tiny_model_dir}",
            threads=1,
            batch_size=8,
            scan_crops=[1.0],
            colour_weight=0.0,
            catalog_parts=True,
        )
    )
    handlers = _handlers(tmp_path, tiny_model_dir, embedder, images)
    try:
        event = ProductUpserted(
            product_id="set-1",
            sku="SET-1",
            images=[{"image_id": "front", "bucket": CATALOG_BUCKET, "key": "set.jpg"}],
        )
        outcome = only_result(
            handlers.handle_catalog([delivery(topology.PRODUCT_CREATED, event)])[0]
        )
        assert (outcome.status, outcome.images_indexed) == (CatalogOutcomeStatus.applied, 1)
        stored = sorted(i.image_id for i in handlers.matcher.index.product_images("set-1"))
        assert stored == ["front", "front~part-1", "front~part-2", "front~part-3"]
        handlers.handle_catalog([delivery(topology.PRODUCT_CREATED, product(d)) for d in DESIGNS])
        handlers.matcher.refit()
        [answer] = results(handlers.handle_scans([scan("scan-earring", "earring.jpg")])[0])
        best = answer.matches[0]
        assert (best.product_id, best.image_id) == ("set-1", "front")
    finally:
        handlers.close()
        handlers.matcher.index.close()
