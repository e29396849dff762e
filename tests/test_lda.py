"""The metric learned from confirmations (LDA): solved in the span of the references, it is the
full problem's projection, at a fraction of the cost."""

import numpy as np
import pytest

from worker.matching.stages import lda


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
