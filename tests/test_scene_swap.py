"""A catalog image's piece pasted on another product's scene, as a training view."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from worker.training.fine_tune import training_views
from worker.training.scene_swap import PieceMasks, SceneSwap

RED = (200, 30, 30)
WICKER = (150, 110, 60)


def _piece_on_white() -> Image.Image:
    """A red disc in the middle of a white studio shot."""
    picture = Image.new("RGB", (300, 300), (255, 255, 255))
    ImageDraw.Draw(picture).ellipse((110, 110, 190, 190), fill=RED)
    return picture


def _scene(colour: tuple[int, int, int]) -> Image.Image:
    """Another product's lifestyle shot: a textured scene of one colour, a piece in its middle."""
    noise = np.random.default_rng(0).integers(-20, 20, (400, 400, 3))
    picture = Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))
    ImageDraw.Draw(picture).ellipse((170, 170, 230, 230), fill=(20, 200, 20))
    return picture


def _swap(picture: Image.Image, backdrops: list) -> SceneSwap:
    """`picture` as the catalog image of product `ring-1`."""
    return SceneSwap(picture, "ring-1/catalog", "ring-1", backdrops, PieceMasks())


def _close(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 30) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(colour)).max() <= tolerance)


def test_the_piece_lands_on_a_corner_of_another_products_scene() -> None:
    picture = _piece_on_white()
    loads = {"own": 0, "other": 0}

    def load(name: str, image: Image.Image):
        def read() -> Image.Image:
            loads[name] += 1
            return image

        return read

    backdrops = [("ring-1", load("own", picture)), ("ring-2", load("other", _scene(WICKER)))]
    swapped = _swap(picture, backdrops)(random.Random(4))
    assert swapped is not None and swapped.size == picture.size
    pixels = np.asarray(swapped)
    assert _close(pixels[150, 150], RED)  # the piece is kept
    assert _close(pixels[10, 10], WICKER) and _close(pixels[290, 290], WICKER)  # the scene swapped
    # a corner of the other shot: its own piece (green, in its middle) is not pasted in
    assert not ((pixels[:, :, 1] > 150) & (pixels[:, :, 0] < 100)).any()
    assert loads == {"own": 0, "other": 1}  # never a backdrop of the piece's own product


def test_no_swap_without_another_product_or_a_piece() -> None:
    picture = _piece_on_white()
    alone = _swap(picture, [("ring-1", lambda: picture)])
    assert alone(random.Random(0)) is None
    blank = Image.new("RGB", (300, 300), (128, 128, 128))  # GrabCut finds nothing
    wicker = [("ring-2", lambda: _scene(WICKER))]
    assert _swap(blank, wicker)(random.Random(0)) is None

    def unreadable() -> Image.Image:
        raise OSError("truncated")

    assert _swap(picture, [("ring-2", unreadable)])(random.Random(0)) is None


def test_swapped_views_are_crops_of_the_swap_and_the_default_draws_the_same_views() -> None:
    picture = _piece_on_white()
    swap = _swap(picture, [("ring-2", lambda: _scene(WICKER))])
    views = training_views(picture, 8, random.Random(2), 0.5, 1.0, swap)
    assert views[0] is picture  # the whole picture stays as it is
    # every crop of a swapped view shows the scene, not the white studio backdrop
    assert all(not (np.asarray(view) > 240).all(axis=2).any() for view in views[1:])
    # with no swap asked, the views are those drawn before the setting existed
    plain = training_views(picture, 8, random.Random(2), 0.5)
    unswapped = training_views(picture, 8, random.Random(2), 0.5, 0.0, swap)
    assert [v.tobytes() for v in plain] == [v.tobytes() for v in unswapped]
    # nor with a swap asked but no scenes to swap to (a catalog without any)
    no_scenes = training_views(picture, 8, random.Random(2), 0.5, 1.0, None)
    assert [v.tobytes() for v in plain] == [v.tobytes() for v in no_scenes]


QUADRANTS = [(150, 110, 60), (60, 110, 150), (110, 150, 60), (150, 60, 110)]


def _quartered(width: int = 500, height: int = 300) -> Image.Image:
    """A textured scene wider than tall, each quarter of its own colour."""
    noise = np.random.default_rng(1).integers(-15, 15, (height, width, 3))
    colours = np.zeros((height, width, 3), int)
    for n, colour in enumerate(QUADRANTS):
        rows = slice(0, height // 2) if n < 2 else slice(height // 2, height)
        columns = slice(0, width // 2) if n % 2 == 0 else slice(width // 2, width)
        colours[rows, columns] = colour
    return Image.fromarray(np.clip(colours + noise, 0, 255).astype(np.uint8))


def test_each_backdrop_is_a_textured_corner_square_of_the_shorter_side() -> None:
    """A square of 0.4 of the shorter side, at a corner: within one quarter of the scene,
    every corner in turn, with the scene's texture (a crop, not a pixel stretched)."""
    picture = _piece_on_white()
    swap = _swap(picture, [("ring-2", _quartered)])
    rng = random.Random(5)
    corners = set()
    for _ in range(24):
        pixels = np.asarray(swap(rng)).astype(int)
        backdrop = pixels[:60].reshape(-1, 3)  # a band well away from the piece
        colour = min(QUADRANTS, key=lambda q: np.abs(backdrop.mean(axis=0) - q).max())
        assert all(_close(pixel, colour, 40) for pixel in backdrop[::97])  # one quarter only
        assert backdrop.std(axis=0).min() > 5  # its texture
        corners.add(colour)
    assert corners == set(QUADRANTS)


def test_the_piece_has_a_soft_edge() -> None:
    """Blended into the new scene over a few pixels all around, not cut out (measured: 2 716
    pixels partly piece around the disc of radius 40, 1 448 with half the blur, 0 without)."""
    mask = np.asarray(PieceMasks().of("ring-1/catalog", _piece_on_white()))
    assert (mask[150, 150], mask[5, 5]) == (255, 0)
    assert ((mask > 0) & (mask < 255)).sum() > 2000


def test_each_pictures_piece_is_found_once_and_an_unreadable_or_huge_backdrop_is_skipped(
    monkeypatch,
) -> None:
    from worker.training import scene_swap

    found = []
    monkeypatch.setattr(
        scene_swap, "object_mask", lambda picture: found.append(1) or np.ones((30, 30), bool)
    )
    masks = PieceMasks()
    picture = _piece_on_white()
    assert masks.of("ring-1/catalog", picture).size == picture.size
    assert masks.of("ring-1/catalog", picture) is not None and len(found) == 1

    def bomb() -> Image.Image:
        raise Image.DecompressionBombError("too many pixels")

    swap = SceneSwap(picture, "ring-1/catalog", "ring-1", [("ring-2", bomb)], masks)
    assert swap(random.Random(0)) is None  # this view keeps its own scene


def test_backdrops_are_drawn_from_every_other_product() -> None:
    picture = _piece_on_white()
    used = []

    def load(product_id: str):
        return lambda: used.append(product_id) or _scene(WICKER)

    others = [(f"ring-{n}", load(f"ring-{n}")) for n in range(2, 6)]
    swap = _swap(picture, [("ring-1", load("ring-1")), *others])
    rng = random.Random(7)
    for _ in range(20):
        swap(rng)
    assert set(used) == {product_id for product_id, _ in others}
