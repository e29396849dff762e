"""The one ranking's own rules (`worker/matching/ranking.py`), on the in-memory index with a
plain re-ranking space: the runner-up read for the margin whatever `top_k`, and prototypes
that follow the index (what each stage does is in its own test file)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.contract import MatchStatus
from worker.index.base import ReferenceImage
from worker.index.memory import InMemoryIndex
from worker.matching.ranking import Prototypes, Snapshot, rank
from worker.matching.stages.centring import Centring, DomainMeans
from worker.matching.stages.new_products import NewProductsFirst
from worker.matching.stages.space import RerankSpace
from worker.vectors import SOURCE_CONFIRMED_SCAN, VectorLayout, part_image_id

DIM = 4
LAYOUT = VectorLayout(DIM)
PLAIN = RerankSpace("whitening", np.eye(DIM, dtype=np.float32), DomainMeans())


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def catalog_image(product_id: str, vector: np.ndarray, image_id: str = "front"):
    return ReferenceImage(product_id, image_id, f"SKU-{product_id}", vector)


def photo(product_id: str, vector: np.ndarray, n: int = 1):
    return ReferenceImage(
        product_id, f"scan:{n}", f"SKU-{product_id}", vector, source=SOURCE_CONFIRMED_SCAN
    )


@pytest.fixture
def index() -> InMemoryIndex:
    index = InMemoryIndex("memory", DIM)
    index.upsert(
        [
            catalog_image("a", unit(1, 0, 0, 0)),
            catalog_image("b", unit(0.8, 0.6, 0, 0)),
            catalog_image("c", unit(0, 0, 1, 0)),
        ]
    )
    return index


@pytest.mark.parametrize("space", [None, PLAIN], ids=["searched", "re-ranked"])
def test_one_product_asked_still_leads_by_its_margin_over_the_next(index, space):
    snapshot = Snapshot(layout=LAYOUT, space=space)
    scan = unit(1, 0, 0, 0)[None, :]
    [one] = rank(snapshot, index, Prototypes(index, LAYOUT), scan, top_k=1)
    [five] = rank(snapshot, index, Prototypes(index, LAYOUT), scan, top_k=5)
    assert [hit.product_id for hit in one.hits] == ["a"]
    assert one.evidence == pytest.approx((1.0, 0.8))
    assert (one.status, one.confidence) == (five.status, five.confidence)


def test_a_prototype_follows_the_index_after_its_ttl_or_when_its_product_is_forgotten(index):
    cached = Prototypes(index, LAYOUT, ttl=3600)
    before = cached.get("a", PLAIN, catalog_only=False).image
    index.upsert([photo("a", unit(1, 1, 0, 0))])
    assert np.allclose(cached.get("a", PLAIN, catalog_only=False).image, before)  # cached
    cached.forget(["b"])
    assert np.allclose(cached.get("a", PLAIN, catalog_only=False).image, before)
    cached.forget(["a"])
    after = cached.get("a", PLAIN, catalog_only=False).image
    assert not np.allclose(after, before)
    fresh = Prototypes(index, LAYOUT, ttl=0.0)  # expired at once: read on every ask
    fresh.get("c", PLAIN, catalog_only=False)
    index.upsert([photo("c", unit(0, 1, 1, 0))])
    assert fresh.get("c", PLAIN, catalog_only=False).image == pytest.approx(
        _mean(unit(0, 0, 1, 0), unit(0, 1, 1, 0))
    )


def _mean(*rows: np.ndarray) -> np.ndarray:
    m = np.mean(rows, axis=0)
    return m / np.linalg.norm(m)


def test_catalog_only_prototypes_leave_photos_out_unless_a_product_has_only_photos(index):
    prototypes = Prototypes(index, LAYOUT)
    index.upsert([photo("a", unit(1, 1, 0, 0)), photo("d", unit(0, 0, 0, 1))])
    assert prototypes.get("a", PLAIN, catalog_only=True).image == pytest.approx(unit(1, 0, 0, 0))
    assert prototypes.get("a", PLAIN, catalog_only=False).image == pytest.approx(
        _mean(unit(1, 0, 0, 0), unit(1, 1, 0, 0))
    )
    # a product known by its confirmed photo alone keeps it as its prototype
    assert prototypes.get("d", PLAIN, catalog_only=True).image == pytest.approx(unit(0, 0, 0, 1))


def test_before_the_photo_domain_is_known_confirmed_photos_wait_in_the_re_ranking_too(index):
    """Until the scans' mean is known the search keeps to catalog images; the prototypes that
    re-rank its candidates do too, or a confirmed photo would vouch for its product uncorrected
    (photos resemble photos more than catalog shots)."""
    scan = unit(1, 0.3, 0, 0)
    index.upsert([photo("b", scan)])
    waiting = Snapshot(layout=LAYOUT, space=PLAIN)
    assert waiting.centring.searchable_source() == "catalog"
    [ranking] = rank(waiting, index, Prototypes(index, LAYOUT), scan[None, :], top_k=3)
    assert [hit.product_id for hit in ranking.hits][:2] == ["a", "b"]
    # where confirmations count (here: no centring to wait for), the photo brings b first
    counting = Snapshot(layout=LAYOUT, space=PLAIN, centring=Centring(enabled=False))
    [ranking] = rank(counting, index, Prototypes(index, LAYOUT), scan[None, :], top_k=3)
    assert ranking.hits[0].product_id == "b"


def test_the_space_re_ranks_more_candidates_than_asked_for():
    """The search's order is only a shortlist: a product the plain search puts third is first
    in the space, with one product asked."""
    index = InMemoryIndex("memory", DIM)
    index.upsert(
        [
            catalog_image("a", unit(1, 0, 0, 0)),
            catalog_image("d", unit(0.1, 0, 0.1, 1)),
            catalog_image("e", unit(0.05, 0.1, 0, 1)),
        ]
    )
    scan = unit(1, 0, 0, 1)[None, :]
    plain = rank(Snapshot(layout=LAYOUT, centring=Centring(enabled=False)), index,
                 Prototypes(index, LAYOUT), scan, top_k=3)  # fmt: skip
    assert [hit.product_id for hit in plain[0].hits] == ["d", "e", "a"]
    without_the_fourth = RerankSpace("whitening", np.eye(DIM, 3, dtype=np.float32), DomainMeans())
    snapshot = Snapshot(layout=LAYOUT, space=without_the_fourth, centring=Centring(enabled=False))
    [ranking] = rank(snapshot, index, Prototypes(index, LAYOUT), scan, top_k=1)
    assert [hit.product_id for hit in ranking.hits] == ["a"]


def test_a_product_known_only_by_pieces_is_their_prototype():
    """A set's pieces stand beside its whole images; where only pieces are left, they are the
    product's image prototype."""
    index = InMemoryIndex("memory", DIM)
    pieces = [unit(1, 0, 0, 0), unit(0, 1, 0, 0)]
    index.upsert([catalog_image("set", v, part_image_id("front", n)) for n, v in enumerate(pieces)])
    prototype = Prototypes(index, LAYOUT).get("set", PLAIN, catalog_only=False)
    assert prototype.image == pytest.approx(_mean(*pieces))
    assert prototype.pieces is None


def test_before_the_photo_domain_is_known_no_product_is_new_and_none_is_doubted(index):
    """New-products-first sets products with confirmed photos apart from those without; while
    every ranking keeps to catalog images, none is apart, and an answer close to another
    product is not refused for it."""
    index.upsert([photo("a", unit(0, 0, 0, 1))])
    stage = NewProductsFirst(with_photos=frozenset({"a"}), doubt_within=0.25)
    scan = unit(1, 0.1, 0, 0)[None, :]
    waiting = Snapshot(layout=LAYOUT, new_products=stage)
    [ranking] = rank(waiting, index, Prototypes(index, LAYOUT), scan, top_k=2)
    assert ranking.hits[0].product_id == "a"
    assert (ranking.status, ranking.doubted) == (MatchStatus.matched, False)
    # once the photos count, b (no photo, as close on catalog terms) puts the answer in doubt
    counting = replace(waiting, centring=Centring(enabled=False))
    [ranking] = rank(counting, index, Prototypes(index, LAYOUT), scan, top_k=2)
    assert (ranking.status, ranking.doubted) == (MatchStatus.no_confident_match, True)


def test_an_index_of_references_keeps_their_image_ids_so_pieces_stay_pieces():
    """What a fold of labels ranks against (labels.py): the references as they are, a set's
    piece still a piece; without ids, one by position each, so none replaces another."""
    from worker.index.base import ReferenceSet

    vectors = np.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0)])
    products = np.array(["set", "set", "b"], dtype=object)
    sources = np.array(["catalog"] * 3, dtype=object)
    ids = np.array(["front", part_image_id("front", 0), "front"], dtype=object)
    kept = InMemoryIndex.of_references(ReferenceSet(vectors, products, sources, None, ids))
    back = kept.references()
    assert set(zip(back.product_ids, back.image_ids, strict=True)) == set(
        zip(products, ids, strict=True)
    )
    assert back.pieces().sum() == 1
    by_position = InMemoryIndex.of_references(ReferenceSet(vectors, products, sources))
    assert sorted(by_position.references().image_ids) == ["ref-0", "ref-1", "ref-2"]
