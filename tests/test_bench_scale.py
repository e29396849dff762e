"""The scale benchmark's synthetic vectors, queries and recall: what its figures are measured
on and how its recall is counted (the run itself is in test_bench_commands)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.tools.bench.scale import HnswConfig, _queries, _recall, make_vectors

DIM, PER_PRODUCT = 32, 4


def _norms(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors, axis=1)


def _product_means(vectors: np.ndarray) -> np.ndarray:
    return vectors.reshape(-1, PER_PRODUCT, vectors.shape[1]).mean(axis=1)


def _within_and_across(vectors: np.ndarray) -> tuple[float, float]:
    """Mean cosine of two images of one product, and of two images of different products."""
    similarity = vectors @ vectors.T
    product = np.arange(len(vectors)) // PER_PRODUCT
    same = product[:, None] == product[None, :]
    np.fill_diagonal(same, False)
    different = product[:, None] != product[None, :]
    return float(similarity[same].mean()), float(similarity[different].mean())


@pytest.mark.parametrize("kind", ["random", "clustered", "real"])
def test_vectors_are_unit_and_of_the_size_asked(kind):
    real = np.random.default_rng(5).standard_normal((7, DIM)).astype(np.float32)
    vectors = make_vectors(kind, 64, DIM, PER_PRODUCT, np.random.default_rng(0), real)
    assert vectors.shape == (64, DIM) and vectors.dtype == np.float32
    assert np.allclose(_norms(vectors), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["clustered", "real"])
def test_a_product_s_images_are_near_duplicates_in_consecutive_runs(kind):
    real = np.random.default_rng(5).standard_normal((50, DIM)).astype(np.float32)
    vectors = make_vectors(kind, 160, DIM, PER_PRODUCT, np.random.default_rng(1), real)
    within, across = _within_and_across(vectors)
    assert within > 0.97 and across < 0.5  # measured, seeds 0–5: 0.978 within, 0.02–0.26 across


def test_random_vectors_are_independent_directions():
    vectors = make_vectors("random", 160, DIM, PER_PRODUCT, np.random.default_rng(1))
    within, across = _within_and_across(vectors)
    assert abs(within) < 0.1 and abs(across) < 0.1


def test_clustered_products_come_in_families_of_look_alikes():
    """40 products in 5 families: each product's nearest other product is much nearer than
    a product drawn at random."""
    vectors = make_vectors("clustered", 160, DIM, PER_PRODUCT, np.random.default_rng(2))
    means = _product_means(vectors)
    means /= _norms(means)[:, None]
    similarity = means @ means.T
    np.fill_diagonal(similarity, np.nan)
    nearest = np.nanmax(similarity, axis=1)
    assert nearest.min() > 0.8 and np.nanmean(similarity) < 0.4


def test_real_products_stay_near_the_real_vectors_they_were_drawn_from():
    real = np.random.default_rng(5).standard_normal((3, DIM)).astype(np.float32)
    vectors = make_vectors("real", 40, DIM, PER_PRODUCT, np.random.default_rng(3), real)
    unit_real = real / _norms(real)[:, None]
    assert (vectors @ unit_real.T).max(axis=1).min() > 0.95


def test_unknown_kinds_and_real_without_vectors_are_refused():
    with pytest.raises(ValueError, match="unknown kind 'grid'"):
        make_vectors("grid", 8, DIM, PER_PRODUCT, np.random.default_rng(0))
    with pytest.raises(AssertionError, match="--data"):
        make_vectors("real", 8, DIM, PER_PRODUCT, np.random.default_rng(0))


def test_queries_are_perturbed_copies_of_stored_images():
    vectors = make_vectors("random", 64, DIM, PER_PRODUCT, np.random.default_rng(4))
    queries = _queries(vectors, 10, np.random.default_rng(4))
    assert queries.shape == (10, DIM) and np.allclose(_norms(queries), 1.0, atol=1e-5)
    closest = (queries @ vectors.T).max(axis=1)
    assert closest.min() > 0.97 and closest.max() < 0.99  # near one image (0.98), not on it


def test_recall_is_the_share_of_the_exact_top_products_found():
    exact = [["a", "b", "c", "d"], ["e", "f"], []]
    assert _recall([["a", "b", "x", "y"], ["f", "e"], ["z"]], exact) == pytest.approx(0.75)
    assert _recall([["d", "c", "b", "a"], []], exact[:2]) == pytest.approx(0.5)
    assert np.isnan(_recall([[]], [[]]))


def test_a_configuration_is_named_by_its_graph_and_quantization():
    assert HnswConfig(16, 100).label == "hnsw m16/100"
    assert HnswConfig(32, 200, "int8").label == "hnsw m32/200 int8"
