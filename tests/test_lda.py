"""The metric learned from confirmations (LDA): solved in the span of the references, it is the
full problem's projection, at a fraction of the cost."""

import zlib

import numpy as np
import pytest

from worker.index.base import ReferenceSet, draw_hash
from worker.matching.stages import lda
from worker.settings import LdaSettings
from worker.vectors import SOURCE_CONFIRMED_SCAN


def test_solving_in_the_references_span_gives_the_full_problems_metric(monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), 4)
    vectors = rng.normal(size=(120, 300))
    vectors[:, :5] += labels[:, None] * 0.3  # products differ in a few directions
    fast = lda.fit_lda(vectors, labels, 20, 0.3)
    monkeypatch.setattr(lda, "_span", lambda centred: np.eye(centred.shape[1]))
    full = lda.fit_lda(vectors, labels, 20, 0.3)
    queries = rng.normal(size=(10, 300))
    # the same similarities between references and queries (the basis within may turn)
    similarities = (vectors @ fast) @ (queries @ fast).T
    expected = (vectors @ full) @ (queries @ full).T
    assert similarities == pytest.approx(expected, abs=1e-3 * np.abs(expected).max())


def test_one_product_teaches_no_metric():
    assert lda.fit_lda(np.ones((3, 8)), np.array(["a", "a", "a"]), 4, 0.3) is None


def _confirmations(products: int, photos: int) -> ReferenceSet:
    rows = [
        (f"p{p:03d}", SOURCE_CONFIRMED_SCAN, [0.0, 1.0], f"s3://scans/{p}-{i}", f"scan-{p}-{i}")
        for p in range(products)
        for i in range(photos)
    ] + [(f"p{p:03d}", "catalog", [1.0, 0.0], None, f"img-{p}") for p in range(products)]
    return ReferenceSet.from_rows(rows, 2)


def _held_keys(refs: ReferenceSet, settings: LdaSettings) -> set[str]:
    return {refs.key(row) for row in np.flatnonzero(lda.held_out(refs, settings))}


def test_a_confirmation_stays_held_out_as_others_arrive():
    settings = LdaSettings()
    before = _confirmations(40, 5)
    after = _confirmations(40, 8)  # three more photos of every product
    held_before, held_after = _held_keys(before, settings), _held_keys(after, settings)
    assert held_before and held_before <= held_after
    assert all(key.split("/")[1].startswith("scan-") for key in held_after)
    share = len(held_after) / (40 * 8)
    assert 0.1 < share < 0.3


def test_the_cap_on_held_out_confirmations_does_not_take_the_first_products_by_name():
    capped = _held_keys(_confirmations(200, 5), LdaSettings(max_validation_queries=20))
    assert len(capped) == 20
    products = sorted({key.split("/")[0] for key in capped})
    assert products[-1] > "p100"  # the row order would have taken p000… only


def test_another_draw_seed_holds_out_other_confirmations_in_the_same_share():
    refs, settings = _confirmations(40, 8), LdaSettings()
    held = {seed: lda.held_out(refs, settings, seed) for seed in (0, 1, 2)}
    # seed 0 is the plain hash: the draw every earlier figure was measured with
    key = refs.key(0)
    assert draw_hash(key) == draw_hash(key, 0) == zlib.crc32(key.encode())
    assert draw_hash(key, 1) != draw_hash(key)
    assert np.array_equal(held[0], lda.held_out(refs, settings))
    assert np.array_equal(held[1], lda.held_out(refs, settings, 1))  # deterministic
    for seed in (1, 2):
        assert not np.array_equal(held[seed], held[0])
        assert 0.1 < held[seed].sum() / (40 * 8) < 0.3


def test_a_metric_needs_two_products_and_keeps_at_most_one_direction_fewer():
    vectors = np.random.default_rng(3).normal(size=(10, 16))
    assert lda.fit_lda(vectors[:3], np.array(["a"] * 3), 8, 0.3) is None
    pair = lda.fit_lda(vectors[:4], np.array(["a", "a", "b", "b"]), 8, 0.3)
    assert pair.shape == (16, 1)
    five = np.repeat(["a", "b", "c", "d", "e"], 2)
    assert lda.fit_lda(vectors, five, 8, 0.3).shape == (16, 4)
    assert lda.fit_lda(vectors, five, 2, 0.3).shape == (16, 2)
