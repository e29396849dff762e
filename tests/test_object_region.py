"""The piece's own region, found without weights (GrabCut from the middle)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.tools.synthetic import catalog_designs, render
from worker.vision.object_region import MIN_PIXELS, object_mask, object_region


def _lifestyle_shot() -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A 120 px jewel (on white) placed off-centre on a large grey-beige backdrop, and its box."""
    jewel = render(catalog_designs(1, seed=3)[0], 120)
    scene = Image.new("RGB", (600, 400), (190, 180, 165))
    left, top = 330, 170
    scene.paste(jewel, (left, top))
    return scene, (left, top, left + 120, top + 120)


def test_a_piece_on_a_plain_backdrop_is_cut_to_its_own_box():
    scene, (left, top, right, bottom) = _lifestyle_shot()
    region = object_region(scene)
    # a square around the piece with a margin: far smaller than the scene, and holding it
    assert region.width * region.height < 0.25 * scene.width * scene.height
    assert region.width >= right - left and region.height >= bottom - top
    # ...holding it: the white of the jewel's square lies inside the region
    assert _white(region) >= 0.95 * _white(scene) > 0
    assert object_region(scene).tobytes() == region.tobytes()  # deterministic


def _white(picture: Image.Image) -> int:
    return int((np.asarray(picture) > 240).all(axis=2).sum())


def test_a_picture_where_nothing_stands_out_is_kept_whole():
    blank = Image.new("RGB", (300, 200), (128, 128, 128))
    assert object_region(blank).size == blank.size
    tiny = Image.new("RGB", (5, 5), (10, 10, 10))
    assert object_region(tiny).size == tiny.size
    # a placeholder: flat but for a mark in a corner and a speck in the middle
    placeholder = np.full((200, 300, 3), 255, np.uint8)
    placeholder[:3, :3] = 0
    placeholder[100:106, 150:156] = (40, 160, 200)
    assert object_mask(Image.fromarray(placeholder)) is None


def test_a_small_piece_on_a_flat_backdrop_is_still_found():
    """The shortcut for flat pictures leaves a piece of MIN_PIXELS or more to GrabCut."""
    picture = np.full((200, 300, 3), 255, np.uint8)
    picture[:3, :3] = 0
    picture[96:104, 146:154] = (40, 160, 200)  # 64 px
    found = object_mask(Image.fromarray(picture))
    assert found is not None and MIN_PIXELS <= found.sum() <= 100
    assert found[96:104, 146:154].all()
