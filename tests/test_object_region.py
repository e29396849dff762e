"""The piece's own region, found without weights (GrabCut from the middle)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worker.tools.synthetic import catalog_designs, render
from worker.vision import object_region as object_region_module
from worker.vision.object_region import MIN_PIXELS, object_mask, object_region

BACKDROP = (190, 180, 165)


def _jewel() -> Image.Image:
    """A 120 px picture of a jewel on white."""
    return render(catalog_designs(1, seed=3)[0], 120)


def _on_backdrop(at: tuple[int, int], size: tuple[int, int] = (120, 120)) -> Image.Image:
    """A jewel's picture (on white), resized to `size`, at `at` on a 600 x 400 grey-beige
    backdrop."""
    scene = Image.new("RGB", (600, 400), BACKDROP)
    scene.paste(_jewel().resize(size), at)
    return scene


def _lifestyle_shot() -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A 120 px jewel placed off-centre on a large grey-beige backdrop, and its box."""
    left, top = 330, 170
    return _on_backdrop((left, top)), (left, top, left + 120, top + 120)


def test_a_piece_on_a_plain_backdrop_is_cut_to_its_own_box():
    scene, (left, top, right, bottom) = _lifestyle_shot()
    region = object_region(scene)
    # a square around the piece with a margin: far smaller than the scene, and holding it
    assert region.width * region.height < 0.25 * scene.width * scene.height
    assert region.width >= right - left and region.height >= bottom - top
    # ...holding it: the white of the jewel's square lies inside the region
    assert _white(region) >= 0.95 * _white(scene) > 0
    assert region.width == region.height  # a square around it, away from the edges
    assert object_region(scene).tobytes() == region.tobytes()  # deterministic


@pytest.mark.parametrize("size", [(240, 60), (60, 200)], ids=["wide", "tall"])
def test_the_square_holds_a_piece_of_any_shape(size):
    region = object_region(_on_backdrop((200, 120), size))
    assert region.width == region.height >= 1.1 * max(size)  # with its margin


def test_a_piece_on_a_mottled_backdrop_is_cut_to_its_own_box():
    """A real backdrop is never one colour: the shortcut for flat pictures does not take it."""
    mottled = np.asarray(BACKDROP) + np.random.default_rng(0).normal(0, 6, (400, 600, 3))
    scene = Image.fromarray(np.clip(mottled, 0, 255).astype(np.uint8))
    scene.paste(_jewel(), (330, 170))
    region = object_region(scene)
    assert 120 <= region.width == region.height < 200


@pytest.mark.parametrize("corner", [(440, 25), (40, 255)], ids=["top right", "bottom left"])
def test_the_square_stops_at_the_pictures_edges(corner):
    region = object_region(_on_backdrop(corner), margin=1.0)  # about 240 px, cut at two edges
    assert 120 < region.width < 235 and 120 < region.height < 235


def _white(picture: Image.Image) -> int:
    return int((np.asarray(picture) > 240).all(axis=2).sum())


def test_a_picture_where_nothing_stands_out_is_kept_whole(monkeypatch):
    blank = Image.new("RGB", (300, 200), (128, 128, 128))
    assert object_region(blank).size == blank.size
    strip = np.random.default_rng(0).integers(0, 255, (6, 300, 3), dtype=np.uint8)
    for tiny in (Image.new("RGB", (5, 5), (10, 10, 10)), Image.fromarray(strip)):
        assert object_region(tiny).size == tiny.size  # too small to cut
    # a placeholder: flat but for a mark in a corner and a speck in the middle
    placeholder = np.full((200, 300, 3), 255, np.uint8)
    placeholder[:3, :3] = 0
    placeholder[100:106, 150:156] = (40, 160, 200)
    assert object_mask(Image.fromarray(placeholder)) is None
    # ...without GrabCut, which takes seconds over such a picture
    monkeypatch.setattr(object_region_module.cv2, "grabCut", refuse_grabcut)
    for flat in (blank, Image.fromarray(placeholder)):
        assert object_mask(flat) is None


def refuse_grabcut(*args):
    raise AssertionError("GrabCut ran over a flat picture")


def test_a_small_piece_on_a_flat_backdrop_is_still_found():
    """The shortcut for flat pictures leaves a piece of MIN_PIXELS or more to GrabCut."""
    picture = np.full((200, 300, 3), 255, np.uint8)
    picture[:3, :3] = 0
    picture[96:104, 146:154] = (40, 160, 200)  # 64 px
    found = object_mask(Image.fromarray(picture))
    assert found is not None and MIN_PIXELS <= found.sum() <= 100
    assert found[96:104, 146:154].all()
