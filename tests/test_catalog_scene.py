"""A catalog image that shows its piece small or in a scene is also embedded by its zoomed
middle; an iconic shot (the piece alone, filling the picture) stays whole."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from worker.settings import ModelSettings
from worker.tools.synthetic import catalog_designs, render
from worker.vision.backdrop import backdrop_colour, border_pixels
from worker.vision.catalog_scene import zoom_box
from worker.vision.embedder import Embedder, ImageKind


def _iconic() -> Image.Image:
    """A product filling a plain white picture, as grocery and many webshops shoot them."""
    picture = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(picture).rectangle((20, 15, 280, 290), fill=(200, 40, 30))
    return picture


JEWEL_AT = (330, 170, 450, 290)
"""Where `_small_on_backdrop` puts its jewel's 120 px picture."""


def _small_on_backdrop(at: tuple[int, int] = JEWEL_AT[:2]) -> Image.Image:
    """A 120 px jewel off-centre (at `at`) on a large plain grey-beige backdrop."""
    scene = Image.new("RGB", (600, 400), (190, 180, 165))
    scene.paste(render(catalog_designs(1, seed=3)[0], 120), at)
    return scene


def _in_a_scene() -> Image.Image:
    """A piece as large as the iconic one, on a textured surface (a weave) up to the border."""
    picture = _iconic()
    draw = ImageDraw.Draw(picture)
    for x in range(0, 300, 6):
        draw.line((x, 0, x, 299), fill=(150, 110, 60), width=2)
    draw.rectangle((20, 15, 280, 290), fill=(200, 40, 30))
    return picture


def _printed_to_the_edge() -> Image.Image:
    """A carton filling the picture, its striped print running off the right and bottom edges
    (two sides textured, two plain: a packshot, not a scene)."""
    picture = Image.new("RGB", (300, 300), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((40, 30, 299, 299), fill=(230, 230, 210))
    for x in range(40, 300, 5):
        draw.line((x, 30, x, 299), fill=(30, 60, 160), width=2)
    return picture


def _nearly_filling() -> Image.Image:
    """A product spanning 0.78 of a plain picture, as grocery's smallest packshots do."""
    picture = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(picture).ellipse((25, 30, 275, 270), fill=(170, 120, 60))
    return picture


def shows_piece_small(picture: Image.Image) -> bool:
    """Whether the catalog image gets a zoomed view at all."""
    return zoom_box(picture, 0.5) is not None


def test_small_pieces_and_scenes_are_told_from_iconic_shots():
    assert not shows_piece_small(_iconic())
    assert not shows_piece_small(_printed_to_the_edge())
    assert not shows_piece_small(_nearly_filling())
    assert shows_piece_small(_small_on_backdrop())
    assert shows_piece_small(_in_a_scene())
    open_above = _in_a_scene()  # a scene may have one plain side (a wall above it)
    ImageDraw.Draw(open_above).rectangle((0, 0, 299, 29), fill="white")
    assert shows_piece_small(open_above)
    assert not shows_piece_small(Image.new("RGB", (200, 200), (128, 128, 128)))  # nothing there


def test_the_zoom_is_centred_on_a_small_piece_and_a_scene_s_middle():
    """An off-centre piece is zoomed to a square around it, whole; a scene to its middle
    half; an iconic shot not at all."""
    left, top, right, bottom = zoom_box(_small_on_backdrop(), 0.5)
    assert right - left == bottom - top == 200  # half the shorter side: the piece is smaller
    jewel_left, jewel_top, jewel_right, jewel_bottom = JEWEL_AT
    assert left <= jewel_left and top <= jewel_top  # the whole jewel is in the square
    assert right >= jewel_right and bottom >= jewel_bottom
    assert zoom_box(_in_a_scene(), 0.5) == (75, 75, 225, 225)
    assert zoom_box(_iconic(), 0.5) is None
    # a piece larger than the zoom is kept whole, with its margin
    large = Image.new("RGB", (400, 400), "white")
    ImageDraw.Draw(large).ellipse((20, 80, 260, 320), fill=(180, 140, 40))  # 0.6, off-centre
    left, top, right, bottom = zoom_box(large, 0.5)
    assert left <= 20 and top <= 80 and right >= 260 and bottom >= 320
    assert right - left < 400


def test_the_zoom_holds_pieces_of_any_shape_in_a_square_inside_the_picture():
    bar = Image.new("RGB", (400, 400), "white")  # a bracelet across the picture: not small
    ImageDraw.Draw(bar).rectangle((20, 180, 380, 220), fill=(180, 140, 40))
    assert zoom_box(bar, 0.5) is None
    wide = Image.new("RGB", (600, 300), "white")  # wider, with its margin, than 300 px high
    ImageDraw.Draw(wide).rectangle((150, 100, 450, 160), fill=(180, 140, 40))
    assert zoom_box(wide, 0.5) == (150, 0, 450, 300)  # as large as the picture allows
    left, top, right, bottom = zoom_box(_small_on_backdrop(at=(470, 170)), 0.5)  # at the edge
    assert (right, right - left, bottom - top) == (600, 200, 200)  # moved inside, not cut
    assert left <= 470 and top <= 170 and bottom >= 290
    dusty = _small_on_backdrop()  # a speck on the backdrop does not move the square
    ImageDraw.Draw(dusty).rectangle((40, 40, 45, 45), fill=(20, 20, 20))
    assert zoom_box(dusty, 0.5) == zoom_box(_small_on_backdrop(), 0.5)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> str:
    return f"local-dir:{tiny_model_dir}"


def _embedder(name: str, cache, **changes) -> Embedder:
    settings = ModelSettings(name=name, threads=1, batch_size=8, cache_dir=cache)
    return Embedder(settings.model_copy(update=changes))


def _view(rows: np.ndarray, view_dim: int) -> np.ndarray:
    """The image part of vectors, at unit length."""
    part = rows[..., :view_dim]
    return part / np.linalg.norm(part, axis=-1, keepdims=True)


def test_only_small_pieces_and_scenes_are_embedded_with_the_zoomed_middle(tiny, tmp_path):
    cache = tmp_path / "cache"
    zooming = _embedder(tiny, cache, catalog_zoom=0.5)
    whole = _embedder(tiny, cache, catalog_zoom=0)  # no zoom
    always = _embedder(tiny, cache, catalog_zoom=0, catalog_crops=[1.0, 0.5])
    pictures = [_small_on_backdrop(), _iconic(), _in_a_scene()]
    mixed = zooming.embed(pictures, ImageKind.catalog)
    np.testing.assert_allclose(mixed[1], whole.embed(pictures[1:2])[0], atol=1e-5)
    np.testing.assert_allclose(mixed[2], always.embed(pictures[2:])[0], atol=1e-5)
    # the small piece: the whole picture's view and its piece's square, averaged
    small = pictures[0]
    own = _view(whole.embed([small, small.crop(zoom_box(small, 0.5))]), whole.view_dim)
    np.testing.assert_allclose(
        _view(mixed[0], whole.view_dim), _view(own.sum(axis=0), whole.view_dim), atol=1e-5
    )
    assert not np.allclose(mixed[0], whole.embed(pictures[:1])[0], atol=1e-3)
    # scans keep their own crops, whatever the picture
    np.testing.assert_allclose(
        zooming.embed(pictures, ImageKind.scan), whole.embed(pictures, ImageKind.scan), atol=1e-6
    )


def test_the_backdrop_is_read_from_the_border_frame_alone():
    """The border reading both cues share: the frame's pixels, however large the piece."""
    picture = np.asarray(_iconic(), dtype=np.float32)
    for width in (1, 10):
        border = border_pixels(picture, width)
        assert border.shape == (2 * width * (300 + 300), 3)
        assert backdrop_colour(border).tolist() == [255.0, 255.0, 255.0]
    framed = picture.copy()
    framed[:, :2] = (0, 0, 255)  # a blue strip down the left side: a quarter of a 1 px frame
    assert backdrop_colour(border_pixels(framed, 1)).tolist() == [255.0, 255.0, 255.0]
    assert (border_pixels(framed, 2) == (0, 0, 255)).all(axis=1).sum() == 2 * 300 + 2 * 2 * 2
