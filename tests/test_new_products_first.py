"""The new-products-first stage's rules, alone (its effect on rankings is in
test_first_confirmation.py and test_judged_labels.py)."""

from worker.matching.stages.new_products import NewProductsFirst

STAGE = NewProductsFirst(
    photo_match_stands=0.75, with_photos=frozenset({"old", "older"}), doubt_within=0.25
)


def test_it_applies_only_once_some_product_has_confirmed_photos():
    assert STAGE.applies
    assert not NewProductsFirst().applies
    assert not NewProductsFirst(enabled=False, with_photos=frozenset({"old"})).applies


def test_a_confirmed_photo_at_the_threshold_shows_the_very_item():
    assert STAGE.shows_same_item(0.75)
    assert not STAGE.shows_same_item(0.74)
    assert not STAGE.shows_same_item(None)


def test_a_scan_is_routed_when_a_new_product_is_closest_and_no_photo_shows_the_item():
    assert STAGE.routes("new", same_item=False)
    assert not STAGE.routes("new", same_item=True)
    assert not STAGE.routes("old", same_item=False)
    assert not STAGE.routes(None, same_item=False)


def test_an_answer_with_photos_is_doubted_when_a_new_product_is_as_close_on_catalog_terms():
    # exactly `doubt_within` behind the answer's own catalog score still doubts it
    assert STAGE.doubts("old", [("old", 0.75), ("new", 0.5)], same_item=False)
    assert not STAGE.doubts("old", [("old", 0.75), ("new", 0.49)], same_item=False)
    assert not STAGE.doubts("old", [("old", 0.75), ("new", 0.7)], same_item=True)
    # only the first `doubt_among` (2) of the catalog-only ranking count
    assert not STAGE.doubts("old", [("old", 0.75), ("older", 0.74), ("new", 0.74)], False)
    # an answer outside the catalog-only ranking is behind every product in it
    assert STAGE.doubts("old", [("new", -0.5), ("older", -0.6)], same_item=False)


def test_a_new_product_as_the_answer_is_never_doubted_for_being_new():
    assert not STAGE.doubts("new", [("other-new", 0.9), ("new", 0.89)], same_item=False)
    assert not NewProductsFirst(with_photos=frozenset({"old"}), doubt_within=None).doubts(
        "old", [("new", 0.9)], same_item=False
    )
