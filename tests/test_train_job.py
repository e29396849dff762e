"""`jewelmatch train` and `jewelmatch model`: the confirmed matches of the index in service
(moto's S3 server, the embedded engine) are split so that nothing judged ever trains, the
candidate is judged against the model in service and kept as a version with its card, and
only a version that passed can be promoted (reindexed, made current) and rolled back."""

from __future__ import annotations

import json
import math
import random
import time

import pytest
from typer.testing import CliRunner

from shared.contract import ProductUpserted
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes
from tests.support.tiny_model import write_tiny_efficientnet
from worker.cli import app
from worker.index import ScanRecord, current_index_model
from worker.matching.catalog import EmbeddedImage
from worker.service.app import opened
from worker.settings import Settings
from worker.tools.synthetic import catalog_designs, photograph, render
from worker.tools.training.export import held_out_product, held_out_roles
from worker.training.fine_tune import LabelledPicture
from worker.training.gate import judge
from worker.training.model import fine_tune_model, run_version
from worker.vectors import ImageKind
from worker.vision.embedder import Embedder
from worker.vision.versions import ModelVersions, read_trained_on, write_trained_on

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(8, seed=5)
PHOTOS = 5


@pytest.fixture
def deployment(tmp_path, s3, s3_endpoint, monkeypatch) -> Settings:
    """A deployment whose index holds 8 products, each with 5 confirmed bag photos."""
    model = write_tiny_efficientnet(tmp_path / "tiny-efficientnet")
    environment = {
        "JEWELMATCH_INDEX__PATH": str(tmp_path / "index"),
        "JEWELMATCH_S3__ENDPOINT_URL": s3_endpoint,
        "JEWELMATCH_S3__ALLOWED_BUCKETS": f"{CATALOG_BUCKET},{SCANS_BUCKET}",
        "JEWELMATCH_MODEL__NAME": f"local-dir:{model}",
        "JEWELMATCH_MODEL__CACHE_DIR": str(tmp_path / "cache"),
        "JEWELMATCH_MODEL__RUNTIME": "torch",
        "JEWELMATCH_MODEL__THREADS": "1",
        "JEWELMATCH_MODEL__SCAN_CROPS": "[1.0]",
        # catalog images whole, as the picture itself (conftest's WHOLE_CATALOG_VIEWS)
        "JEWELMATCH_MODEL__CATALOG_ZOOM": "0",
        "JEWELMATCH_MODEL__CATALOG_PARTS": "false",
        "JEWELMATCH_LEARNING__DETAIL__ENABLED": "false",
        "JEWELMATCH_TRAINING__EPOCHS": "2",
        "JEWELMATCH_TRAINING__VIEWS": "2",
        "JEWELMATCH_TRAINING__BATCH_SIZE": "8",
        "JEWELMATCH_LOG__FORMAT": "json",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    rng = random.Random(2)
    with opened(settings) as components:
        catalog, embedder = components.matcher.catalog(), components.embedder
        for design in DESIGNS:
            picture = render(design, 160)
            key = f"{design.product_id}.jpg"
            s3.put_object(Bucket=CATALOG_BUCKET, Key=key, Body=jpeg_bytes(picture))
            event = ProductUpserted(
                product_id=design.product_id,
                sku=design.sku,
                images=[{"image_id": "front", "bucket": CATALOG_BUCKET, "key": key}],
            )
            vector = embedder.embed([picture], ImageKind.catalog)[0]
            catalog.apply(event, catalog.plan(event), [EmbeddedImage(event.images[0], vector)])
            for n in range(PHOTOS):
                photo = photograph(picture, rng, 128)
                key = f"bag-{design.product_id}-{n}.jpg"
                s3.put_object(Bucket=SCANS_BUCKET, Key=key, Body=jpeg_bytes(photo))
                record = ScanRecord(
                    scan_id=f"{design.product_id}-{n}",
                    vector=embedder.embed([photo], ImageKind.scan)[0],
                    image_uri=f"s3://{SCANS_BUCKET}/{key}",
                    created_at=time.time() - 1000 + n,  # the later n, the more recent
                )
                components.matcher.scans.remember(record)
                assert components.matcher.scans.confirm(record, design.product_id)
    return settings


def test_train_keeps_a_judged_version_and_only_a_passed_one_is_promoted(deployment) -> None:
    runner = CliRunner()
    base_model = current_index_model(deployment.index)
    result = runner.invoke(app, ["train", "--open-set", "1"])
    assert result.exit_code in (0, 1), result.output
    versions = ModelVersions(deployment.model.cache_dir)
    [card_file] = versions.root.glob("*/card.json")
    card = json.loads(card_file.read_text())

    held_out = [d.product_id for d in DESIGNS if held_out_product(d.product_id, 0.2, 0)]
    trained_products = len(DESIGNS) - len(held_out)
    assert card["data"]["products_held_out"] == len(held_out)
    assert card["data"]["photos_of_held_out_products"] == PHOTOS * len(held_out)
    # one outside the judging run's catalog (--open-set 1), the larger half of the rest judged
    # as new products (their catalog image only); of the others' photos the latest fifth
    # judges, the rest are confirmed but never trained
    outside = card["data"]["held_out_products_outside_the_catalog"]
    as_new = card["data"]["held_out_products_judged_as_new"]
    assert outside == 1 and as_new == math.ceil((len(held_out) - 1) / 2)
    assert card["data"]["references_of_held_out_products"] == (PHOTOS - 1) * (
        len(held_out) - outside - as_new
    )
    # the latest fifth of the other products' confirmations is held out; the rest trains
    recent = round(0.2 * PHOTOS * trained_products)
    assert card["data"]["recent_photos_held_out"] == recent
    assert card["data"]["train_photos"] == PHOTOS * trained_products - recent
    [tower] = card["training"]["towers"].values()
    # catalog images of the trained products, and their photos but the recent ones
    assert tower["pictures"] <= trained_products + card["data"]["train_photos"]
    rejudged = judge(card["gate"]["current"], card["gate"]["candidate"])
    assert (rejudged.passed, rejudged.reasons) == (card["gate"]["passed"], card["gate"]["reasons"])
    # what each figure was measured on: every photo of the products outside the catalog and
    # of the brand-new ones, each product judged in both roles (a second run swaps them)
    candidate = card["gate"]["candidate"]
    assert candidate["new_queries"] == PHOTOS * (as_new + outside)
    assert candidate["open_set_queries"] == PHOTOS * (outside + as_new)
    assert candidate["confidence_origin"] == "prior" and candidate["min_margin"] is not None
    # each version decided as on its first day in service: the latest confirmations are labels
    # too, each photo decided by a confidence learned from the others (judged_labels.py)
    judged = candidate["judged_as_labels"]
    assert judged["judged_labels"] == candidate["confirmed_queries"] > 0
    assert judged["labels_for_the_others"] == candidate["labels"] + judged["judged_labels"]
    # the tower lists the photos it trained on by their URIs in the index: never labels
    trained_on = read_trained_on(card_file.parent / card["towers"][0])
    assert len(trained_on) == card["data"]["photos_trained_on"] > 0
    assert len(trained_on) <= card["data"]["train_photos"]
    assert all(uri.startswith(f"s3://{SCANS_BUCKET}/bag-") for uri in trained_on)
    assert not any(held.removeprefix("s3://") in uri for uri in trained_on for held in held_out)
    # the version carries its towers' ONNX exports: workers mount versions read-only
    [export] = card["exports"]
    assert (card_file.parent / export).is_file()
    assert export.startswith(f"{card['towers'][0]}/onnx/")
    assert (result.exit_code == 0) == card["gate"]["passed"]

    promoted = runner.invoke(app, ["model", "promote", card["version"]])
    if card["gate"]["passed"]:
        assert promoted.exit_code == 0, promoted.output
        assert versions.promoted(deployment.model.name) == [card["version"]]
    else:  # (with this seed, random weights lose on the products they never trained on)
        assert promoted.exit_code != 0
        assert "did not pass its gate" in promoted.output
        assert versions.promoted(deployment.model.name) == []
        assert current_index_model(deployment.index) == base_model


def test_a_photo_gone_from_the_store_or_corrupt_is_left_out_of_the_export_and_counted(
    deployment, s3, tmp_path
) -> None:
    """An object deleted or overwritten since it was confirmed is skipped, named in the log,
    and the rest exported: one bad photo never stops a training run."""
    from worker.pipeline.storage import open_image_store
    from worker.tools.training.export import export_confirmations

    gone = f"s3://{SCANS_BUCKET}/bag-{DESIGNS[0].product_id}-0.jpg"
    corrupt = f"s3://{SCANS_BUCKET}/bag-{DESIGNS[1].product_id}-0.jpg"
    s3.delete_object(Bucket=SCANS_BUCKET, Key=gone.rsplit("/", 1)[1])
    s3.put_object(Bucket=SCANS_BUCKET, Key=corrupt.rsplit("/", 1)[1], Body=b"not a jpeg")
    store = open_image_store(deployment.s3, deployment.images.max_bytes)
    with opened(deployment) as components:
        report = export_confirmations(
            components.index, store, deployment.images, tmp_path / "data", 0.2, 0.2, 0
        )
    assert report.skipped == 2
    assert gone not in report.uris.values() and corrupt not in report.uris.values()
    photos = [uri for uri in report.uris.values() if uri.startswith(f"s3://{SCANS_BUCKET}/")]
    assert len(photos) == len(DESIGNS) * PHOTOS - 2
    assert report.catalog_images == len(DESIGNS)


def test_a_promoted_version_serves_from_its_own_index_and_rolls_back(deployment) -> None:
    """The promotion's mechanics, on a version whose gate is taken as passed: reindexed from
    the index in service, made current, loaded by the embedder; rolled back to the weights as
    configured, whose index is brought up to date again."""
    versions = ModelVersions(deployment.model.cache_dir)
    pictures = [
        LabelledPicture(d.product_id, d.product_id, lambda d=d: render(d, 160), True)
        for d in DESIGNS
    ]
    training = deployment.training.model_copy(update={"epochs": 1})
    version = run_version(deployment.model, pictures, training)
    trained = fine_tune_model(
        deployment.model, pictures, training, versions.folder(version), version
    )
    trained_photo = f"s3://{SCANS_BUCKET}/bag-{DESIGNS[0].product_id}-0.jpg"
    write_trained_on(trained.folders[0], [trained_photo])  # as `jewelmatch train` lists it
    versions.write_card(
        version,
        {
            "version": version,
            "base_model": deployment.model.name,
            "towers": [folder.name for folder in trained.folders],
            "gate": {"passed": True},
        },
    )
    base_model = current_index_model(deployment.index)
    runner = CliRunner()
    promoted = runner.invoke(app, ["model", "promote", version])
    assert promoted.exit_code == 0, promoted.output
    assert versions.promoted(deployment.model.name) == [version]
    in_service = current_index_model(deployment.index)
    assert in_service != base_model and version in in_service
    assert Embedder(deployment.model).model_id == in_service  # what a restarted worker loads
    with opened(deployment) as components:  # every image re-embedded, none lost
        assert components.matcher.model_id == in_service
        assert components.index.count() == len(DESIGNS) * (1 + PHOTOS)
        # the photos its towers trained on are never the confidence's labels
        assert components.matcher.learner.trained_on == {trained_photo}

    # a second version promoted over it, then rolled back: the first is current again, then
    # the weights as configured
    reseeded = training.model_copy(update={"seed": 1})
    again = run_version(deployment.model, pictures, reseeded)
    trained = fine_tune_model(deployment.model, pictures, reseeded, versions.folder(again), again)
    versions.write_card(
        again, {**versions.get(version).card, "towers": [f.name for f in trained.folders]}
    )
    second = runner.invoke(app, ["model", "promote", again])
    assert second.exit_code == 0, second.output
    assert again in current_index_model(deployment.index)
    rolled_back = runner.invoke(app, ["model", "rollback"])
    assert rolled_back.exit_code == 0, rolled_back.output
    assert current_index_model(deployment.index) == in_service
    assert versions.promoted(deployment.model.name) == [version]

    rolled_back = runner.invoke(app, ["model", "rollback"])
    assert rolled_back.exit_code == 0, rolled_back.output
    assert current_index_model(deployment.index) == base_model
    assert versions.promoted(deployment.model.name) == []


def test_held_out_products_take_their_roles_by_the_seed_and_leave_one_in_the_catalog() -> None:
    products = [f"p{n:03d}" for n in range(12)]
    outside, new = held_out_roles(products, 4, seed=0)
    assert len(outside) == 4 and len(new) == 4 and not set(outside) & set(new)
    assert (outside, new) == held_out_roles(list(reversed(products)), 4, seed=0)  # stable
    assert held_out_roles(products, 4, seed=1) != (outside, new)
    assert held_out_roles(products[:1], 4, seed=0) == ([], products[:1])  # one stays in


def test_the_gate_asks_more_of_known_products_and_no_less_of_the_others() -> None:
    current = {
        "recall@1_confirmed_products": 0.80,
        "recall@1_new": 0.60,
        "no_confident_match_open_set": 0.90,
    }
    better = {**current, "recall@1_confirmed_products": 0.85}
    assert judge(current, better).passed
    assert not judge(current, current).passed  # it must beat the model in service
    assert not judge(current, {**better, "recall@1_new": 0.59}).passed
    refusing_less = judge(current, {**better, "no_confident_match_open_set": 0.85})
    assert not refusing_less.passed
    assert "outside the catalog" in refusing_less.reasons[0]
    unmeasured = judge(current, {**better, "recall@1_new": float("nan")})
    assert not unmeasured.passed and "not measured" in unmeasured.reasons[0]


def test_the_gate_says_how_many_photos_each_refusal_rests_on() -> None:
    current = {
        "recall@1_confirmed_products": 0.8,
        "confirmed_queries": 146,
        "recall@1_new": 0.625,
        "new_queries": 80,
        "no_confident_match_open_set": 0.9,
        "open_set_queries": 80,
    }
    assert judge(current, {**current, "recall@1_confirmed_products": 0.9}).passed
    decision = judge(current, {**current, "recall@1_new": 0.6})
    assert not decision.passed
    assert decision.reasons == [
        "recall@1 on the latest confirmations: 0.800 against 0.800 in service, of 146 photos "
        "(must be higher)",
        "recall@1 on products it never trained on: 0.600 against 0.625 in service, of 80 photos "
        "(must not be lower)",
    ]
