"""`jewelmatch bench refit`'s vectors and rows: the deployment's shape it promises (products
with one catalog image and N confirmed photos each, unlabeled scans, the dimension asked)."""

from __future__ import annotations

import time

import numpy as np

from worker.settings import Settings
from worker.tools.bench.refit import _references, run_refit
from worker.vectors import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN


def test_each_product_is_a_catalog_image_and_its_confirmed_photos_around_one_direction():
    refs = _references(products=5, confirmed=3, dim=64, rng=np.random.default_rng(1))
    assert refs.vectors.shape == (20, 64) and refs.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(refs.vectors, axis=1), 1.0, atol=1e-6)
    assert list(refs.product_ids) == [f"p{n}" for n in range(5) for _ in range(4)]
    assert list(refs.sources) == ([SOURCE_CATALOG] + [SOURCE_CONFIRMED_SCAN] * 3) * 5
    # photos spread around their product's direction: each one's nearest other vector is
    # of its product, at a cosine of about a half (as far from the direction as it is long)
    similarity = refs.vectors @ refs.vectors.T
    np.fill_diagonal(similarity, -1.0)
    assert (refs.product_ids[similarity.argmax(axis=1)] == refs.product_ids).all()
    same = refs.product_ids[:, None] == refs.product_ids[None, :]
    np.fill_diagonal(same, False)
    assert 0.3 < similarity[same].mean() < 0.7
    assert abs(similarity[~same & (similarity > -1.0)].mean()) < 0.1


def test_a_row_per_number_of_confirmed_photos_in_the_shape_asked():
    settings = Settings(_env_file=None)
    started = time.perf_counter()
    rows = run_refit(
        settings, products=6, confirmed=[0, 2], scans=12, dim=24, colour_dim=4, repeats=2
    )
    elapsed = time.perf_counter() - started
    assert [row["confirmed_per_product"] for row in rows] == [0, 2]
    assert [row["references"] for row in rows] == [6, 18]
    for row in rows:
        assert (row["products"], row["scans"], row["dim"]) == (6, 12, 28)
        assert 0 <= row["seconds_median"] <= row["seconds_max"] <= elapsed + 0.005
        assert row["seconds_max"] == round(row["seconds_max"], 2)
        assert row["stages"] and all(isinstance(stage, str) for stage in row["stages"])
