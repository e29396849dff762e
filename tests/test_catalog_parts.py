"""A catalog image that shows a set (several separate pieces on a plain backdrop) is also stored
as each piece, so that a scan of one piece finds its set; the pieces follow their image through
every change of the catalog, and the ranking names the image, not the piece."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shared.contract import ProductUpserted
from tests.support.pictures import SET_SHAPES, set_picture
from tests.support.tiny_model import write_tiny_model
from worker.index import ScanRecord
from worker.index.memory import InMemoryIndex
from worker.matching.catalog import Catalog, EmbeddedImage, catalog_summary
from worker.matching.matcher import Matcher, MatchPolicy
from worker.settings import LearningSettings, ModelSettings
from worker.vectors import VectorLayout, unit_rows
from worker.vision.catalog_parts import piece_boxes, piece_crops
from worker.vision.embedder import Embedder, model_id_for


def _one_piece() -> Image.Image:
    picture = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(picture).ellipse(SET_SHAPES[0], outline=(190, 140, 40), width=8)
    return picture


def _set_in_a_scene() -> Image.Image:
    picture = set_picture()
    draw = ImageDraw.Draw(picture)
    for x in range(0, 400, 6):  # a weave up to the border
        draw.line((x, 0, x, 299), fill=(150, 110, 60), width=2)
    return picture


def test_each_piece_of_a_set_on_a_plain_backdrop_is_cut_out():
    boxes = piece_boxes(set_picture())
    assert len(boxes) == 3
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        square = right - left == pytest.approx(bottom - top, abs=3)
        assert square or bottom - top == 300  # square, unless larger than the picture is high
    for shape in SET_SHAPES:  # every piece lies whole in a box of its own
        centre = ((shape[0] + shape[2]) / 2, (shape[1] + shape[3]) / 2)
        holding = [b for b in boxes if b[0] <= shape[0] and b[2] >= shape[2] and b[1] <= shape[1]]
        assert any(b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3] for b in holding)
    crops = piece_crops(set_picture())
    assert sorted(crop.size for crop in crops) == sorted((r - le, b - t) for le, t, r, b in boxes)
    # one piece, a scene, an empty picture: the whole picture serves alone
    assert piece_boxes(_one_piece()) == []
    assert piece_boxes(_set_in_a_scene()) == []
    assert piece_boxes(Image.new("RGB", (300, 300), "white")) == []


SPOTS = [(75, 75), (225, 75), (375, 75), (525, 75), (75, 225), (225, 225), (375, 225)]


def _pieces(count: int) -> Image.Image:
    """`count` round pieces, 40 px across, apart on a white 600 x 300 picture."""
    picture = Image.new("RGB", (600, 300), "white")
    for x, y in SPOTS[:count]:
        ImageDraw.Draw(picture).ellipse((x - 20, y - 20, x + 20, y + 20), fill=(190, 140, 40))
    return picture


@pytest.mark.parametrize("count", range(1, 8))
def test_a_set_is_two_to_six_pieces(count):
    """A pair of rings is a set; seven pieces are a pattern or a display, not a set."""
    boxes = piece_boxes(_pieces(count))
    assert len(boxes) == (count if 2 <= count <= 6 else 0)
    in_reading_order = sorted(boxes, key=lambda box: (box[1], box[0]))
    for (left, top, right, bottom), (x, y) in zip(
        in_reading_order, SPOTS[: len(boxes)], strict=True
    ):
        assert 80 <= right - left == bottom - top < 100  # the piece, its dilation, a margin
        assert abs((left + right) / 2 - x) <= 3 and abs((top + bottom) / 2 - y) <= 3


def test_a_tiny_piece_keeps_a_fifth_of_the_picture_around_it():
    picture = Image.new("RGB", (300, 300), "white")
    for x, y in ((75, 75), (225, 225)):
        ImageDraw.Draw(picture).ellipse((x - 10, y - 10, x + 10, y + 10), fill=(190, 140, 40))
    assert piece_boxes(picture) == [(46, 46, 106, 106), (196, 196, 256, 256)]


def test_a_chain_of_links_is_one_piece_and_stripes_to_the_border_are_a_scene():
    chains = Image.new("RGB", (600, 300), "white")
    stripes = Image.new("RGB", (600, 300), "white")
    for row in (80, 220):  # two chains of six links, each 12 px, 18 px apart
        for link in range(6):
            x = 100 + 30 * link
            ImageDraw.Draw(chains).ellipse((x - 6, row - 6, x + 6, row + 6), fill=(190, 140, 40))
    for x in (75, 225, 375, 525):  # four stripes across the picture: a backdrop's pattern
        ImageDraw.Draw(stripes).line((x, 0, x, 299), fill=(150, 110, 60), width=6)
    assert len(piece_boxes(chains)) == 2
    assert piece_boxes(stripes) == []


def test_a_speck_beside_the_pieces_is_not_one():
    picture = _pieces(2)
    ImageDraw.Draw(picture).ellipse((520, 220, 526, 226), fill=(190, 140, 40))
    assert len(piece_boxes(picture)) == 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return f"local-dir:{write_tiny_model(tmp_path_factory.mktemp('parts') / 'tiny')}"


def test_the_embedder_adds_the_pieces_only_when_asked(tiny, tmp_path):
    settings = ModelSettings(name=tiny, threads=1, batch_size=8, cache_dir=tmp_path)
    cutting = Embedder(settings.model_copy(update={"catalog_parts": True}))
    plain = Embedder(settings.model_copy(update={"catalog_parts": False}))
    pictures = [set_picture(), _one_piece()]
    parts = cutting.embed_parts(pictures)
    assert [len(p) for p in parts] == [3, 0]
    np.testing.assert_allclose(parts[0], plain.embed(piece_crops(pictures[0])), atol=1e-5)
    assert [len(p) for p in plain.embed_parts(pictures)] == [0, 0]
    # the whole picture's vector is the same either way
    np.testing.assert_allclose(cutting.embed(pictures), plain.embed(pictures), atol=1e-6)
    default = ModelSettings()  # the pieces are cut by default
    assert default.catalog_parts
    without = default.model_copy(update={"catalog_parts": False})
    assert model_id_for(without) != model_id_for(default)


DIM = 16


def _event(*image_ids: str, key: str = "v1") -> ProductUpserted:
    images = [{"image_id": i, "bucket": "catalog", "key": f"{i}-{key}.jpg"} for i in image_ids]
    return ProductUpserted(product_id="set-1", sku="SET-1", images=images)


def _apply(catalog: Catalog, event: ProductUpserted, parts: dict[str, int]) -> None:
    rng = np.random.default_rng(len(parts))
    plan = catalog.plan(event)
    catalog.apply(
        event,
        plan,
        [
            EmbeddedImage(
                image,
                unit_rows(rng.normal(size=DIM)).astype(np.float32),
                parts=unit_rows(rng.normal(size=(parts.get(image.image_id, 0), DIM))),
            )
            for image in plan.to_embed
        ],
    )


def _stored(index: InMemoryIndex) -> list[str]:
    return sorted(image.image_id for image in index.product_images("set-1"))


def test_the_pieces_follow_their_image_through_every_change():
    index = InMemoryIndex("parts", DIM)
    catalog = Catalog(index)
    _apply(catalog, _event("front", "side"), {"front": 3})
    assert _stored(index) == ["front", "front~part-1", "front~part-2", "front~part-3", "side"]
    assert catalog_summary(index)[0]["catalog_images"] == 2  # the pieces are not images
    # the image replaced by one that shows two pieces: the third piece goes
    _apply(catalog, _event("front", "side", key="v2"), {"front": 2})
    assert _stored(index) == ["front", "front~part-1", "front~part-2", "side"]
    # by one that shows a single piece: no pieces left
    _apply(catalog, _event("front", "side", key="v3"), {})
    assert _stored(index) == ["front", "side"]
    _apply(catalog, _event("front", "side", key="v4"), {"side": 2})
    assert _stored(index) == ["front", "side", "side~part-1", "side~part-2"]
    # the image dropped from the product: its pieces with it
    _apply(catalog, _event("front", key="v4"), {})
    assert _stored(index) == ["front"]


def _best_for_an_earring(with_parts: bool, scans: int = 0):
    """The set's picture shows its earring small (the whole vector mostly necklace); another
    product looks somewhat like the earring. A scan of the earring alone. With `scans`
    unlabeled scans, candidates are re-scored in the scans' whitening, by prototypes."""
    index = InMemoryIndex("parts", DIM)
    learning = LearningSettings(whitening={"dim": 12, "min_scans": 100})
    matcher = Matcher(index, VectorLayout(DIM), "parts", MatchPolicy(), learning)
    rng = np.random.default_rng(5)
    basis, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    necklace, earring, lookalike = basis[:, 0], basis[:, 1], basis[:, 2]
    catalog = matcher.catalog()
    event = _event("front")
    whole = unit_rows(necklace + 0.3 * earring).astype(np.float32)
    parts = np.stack([necklace, earring, earring]).astype(np.float32) if with_parts else None
    catalog.apply(event, catalog.plan(event), [EmbeddedImage(event.images[0], whole, parts=parts)])
    other = ProductUpserted(
        product_id="ring-2",
        sku="RING-2",
        images=[{"image_id": "front", "bucket": "catalog", "key": "ring-2.jpg"}],
    )
    shape = unit_rows(0.75 * earring + 0.66 * lookalike).astype(np.float32)
    catalog.apply(other, catalog.plan(other), [EmbeddedImage(other.images[0], shape)])
    for n in range(scans):
        noise = unit_rows(rng.normal(size=DIM)).astype(np.float32)
        index.remember_scan(ScanRecord(f"scan-{n}", noise, "s3://scans/k.jpg", 0.0))
    matcher.refit()
    assert matcher.snapshot.report["whitened"] == (scans >= 100)
    scan = unit_rows(earring + 0.1 * lookalike)[None, :].astype(np.float32)
    return matcher.rank(scan, 2)[0].ranked_products()[0]


@pytest.mark.parametrize("scans", [0, 200], ids=["search", "whitened prototypes"])
def test_a_scan_of_one_piece_finds_its_set_and_is_told_the_image(scans):
    """In the search and where prototypes re-score the candidates alike: each piece competes
    on its own (in a prototype's mean, the necklace would outweigh the earring)."""
    best = _best_for_an_earring(with_parts=True, scans=scans)
    assert (best.product_id, best.image_id) == ("set-1", "front")  # the image, not "front~part-2"
    assert _best_for_an_earring(with_parts=False, scans=scans).product_id == "ring-2"
