"""Domain centring's own rules (its effect on rankings: test_first_confirmation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.index.base import ReferenceSet
from worker.matching.stages.centring import Centring, DomainMeans
from worker.vectors import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, unit_rows

MEANS = DomainMeans(catalog=np.array([1.0, 0, 0, 0]), scan=np.array([0, 1.0, 0, 0]))


def test_each_reference_is_centred_on_its_own_domains_mean_and_a_scan_on_the_scans():
    refs = ReferenceSet(
        np.array([[2.0, 0, 1, 0], [0, 2.0, 0, 1]]),
        np.array(["a", "b"], dtype=object),
        np.array([SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN], dtype=object),
        np.array(["s3://c/a.jpg", "s3://s/b.jpg"], dtype=object),
    )
    assert MEANS.centre_references(refs) == pytest.approx(
        unit_rows(np.array([[1.0, 0, 1, 0], [0, 1.0, 0, 1]]))
    )
    assert MEANS.for_source(SOURCE_CATALOG) is MEANS.catalog
    assert MEANS.for_source(SOURCE_CONFIRMED_SCAN) is MEANS.scan
    assert MEANS.centre_query(np.array([[0, 2.0, 1, 0]])) == pytest.approx(
        unit_rows(np.array([[0, 1.0, 1, 0]]))
    )


def test_until_the_photo_domains_mean_is_known_a_ranking_keeps_to_catalog_images():
    assert Centring().searchable_source() == SOURCE_CATALOG  # a fresh snapshot's
    assert Centring(means=MEANS).searchable_source() is None
    assert Centring(enabled=False).searchable_source() is None
