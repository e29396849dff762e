"""`jewelmatch bench train`: the whole training job, timed, on a deployment made from a folder
data set (moto's S3 server, a fresh embedded index, every photo a confirmed scan)."""

from __future__ import annotations

import json
import random
import time

import pytest
from typer.testing import CliRunner

from tests.support.tiny_model import write_tiny_efficientnet
from worker.cli import app
from worker.tools.synthetic import catalog_designs, photograph, render

pytestmark = pytest.mark.integration

PRODUCTS, PHOTOS = 8, 5


def test_bench_train_times_the_whole_job_and_leaves_nothing_behind(tmp_path, monkeypatch):
    rng = random.Random(3)
    data = tmp_path / "data"
    for number, design in enumerate(catalog_designs(PRODUCTS, seed=5)):
        folder = data / design.product_id
        folder.mkdir(parents=True)
        picture = render(design, 160)
        picture.save(folder / "catalog_0.png")
        # one photo more than confirmed, which stays out; the first product has just enough
        for n in range(PHOTOS + (number > 0)):
            photograph(picture, rng, 128).save(folder / f"query_train_{n}.jpg")
        photograph(picture, rng, 128).save(folder / "query_val_0.jpg")  # another split's
    lonely = data / "too-few-photos"  # fewer than asked: not a deployment's product
    lonely.mkdir()
    picture = render(catalog_designs(1, seed=9)[0], 160)
    picture.save(lonely / "catalog_0.png")
    for n in range(PHOTOS - 1):
        photograph(picture, rng, 128).save(lonely / f"query_train_{n}.jpg")
    cache = tmp_path / "cache"
    environment = {
        "JEWELMATCH_MODEL__NAME": f"local-dir:{write_tiny_efficientnet(tmp_path / 'tiny')}",
        "JEWELMATCH_MODEL__CACHE_DIR": str(cache),
        "JEWELMATCH_MODEL__RUNTIME": "torch",
        "JEWELMATCH_MODEL__THREADS": "1",
        "JEWELMATCH_MODEL__SCAN_CROPS": "[1.0]",
        "JEWELMATCH_LEARNING__DETAIL__ENABLED": "false",
        "JEWELMATCH_TRAINING__EPOCHS": "1",
        "JEWELMATCH_TRAINING__VIEWS": "2",
        "JEWELMATCH_TRAINING__BATCH_SIZE": "8",
        "JEWELMATCH_INDEX__PATH": str(tmp_path / "index-not-used"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "train.json"
    command = ["bench", "train", "--data", str(data), "--photos", str(PHOTOS), "--open-set", "1"]
    started = time.monotonic()
    result = CliRunner().invoke(app, [*command, "--out", str(out)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output

    figures = json.loads(out.read_text())["figures"]
    assert figures["products"] == PRODUCTS  # the product with no photos is not a deployment's
    assert figures["confirmed_photos"] == PRODUCTS * PHOTOS
    data_counts = figures["data"]
    assert (
        data_counts["train_photos"]
        + data_counts["recent_photos_held_out"]
        + data_counts["photos_of_held_out_products"]
        == PRODUCTS * PHOTOS
    )
    # confirmed in rounds, every product's first photo, then every product's second...: the
    # latest confirmations, held out of training (20 %: 6 of the 30 photos of the 6 products
    # not held out whole), take the last photo of each
    assert data_counts["confirmed_per_product_at_most"] == PHOTOS - 1
    assert 0 < figures["training_seconds"] < figures["seconds"] < elapsed
    assert set(figures["gate"]) >= {"passed", "reasons", "current", "candidate"}
    assert "train photos" in result.output
    # the deployment lived in temporary folders: no version, no index left behind
    assert not cache.exists() and not (tmp_path / "index-not-used").exists()
