"""A picture's own scene (the picture with its middle painted over) is taken out of its
vector: with the full weight, the vector of a ring on a hand no longer leans toward the hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from worker.settings import ModelSettings
from worker.tools.synthetic import catalog_designs, render
from worker.vision.embedder import Embedder, ImageKind
from worker.vision.scene_subtraction import MIDDLE, scene_only, without_scene


def _on_a_weave(seed: int) -> Image.Image:
    """A piece in the middle of a textured surface that runs up to the border."""
    picture = Image.new("RGB", (320, 240), (170, 130, 80))
    draw = ImageDraw.Draw(picture)
    for x in range(0, 320, 8):
        draw.line((x, 0, x, 239), fill=(120, 90, 50), width=3)
    picture.paste(render(catalog_designs(1, seed=seed)[0], 120), (100, 60))
    return picture


def test_the_scene_keeps_the_border_and_paints_the_middle_in_the_median_colour():
    picture = _on_a_weave(3)
    scene = np.asarray(scene_only(picture))
    original = np.asarray(picture)
    height, width = scene.shape[:2]
    top, left = round(height * (1 - MIDDLE) / 2) - 1, round(width * (1 - MIDDLE) / 2) - 1
    for frame in (np.s_[:top], np.s_[-top:], np.s_[:, :left], np.s_[:, -left:]):
        np.testing.assert_array_equal(scene[frame], original[frame])  # the frame is the scene
    middle = scene[
        round(height * (1 - MIDDLE) / 2) + 1 : round(height * (1 + MIDDLE) / 2) - 1,
        round(width * (1 - MIDDLE) / 2) + 1 : round(width * (1 + MIDDLE) / 2) - 1,
    ]
    assert len(np.unique(middle.reshape(-1, 3), axis=0)) == 1  # one colour: the piece is gone
    assert not np.array_equal(np.asarray(picture)[120, 160], middle[0, 0])
    assert tuple(middle[0, 0]) == (170, 130, 80)  # the weave's own colour, not a blend


def test_a_vector_leaning_away_from_its_scene_is_left_orthogonal_to_it_too():
    scenes = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    views = np.array([[-0.6, 0.8, 0.0], [0.0, 0.6, 0.8]], np.float32)  # away, toward
    taken = without_scene(views, scenes, 1.0)
    np.testing.assert_allclose(taken, [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], atol=1e-6)
    half = without_scene(views, scenes, 0.5)
    np.testing.assert_allclose(half[0], np.array([-0.3, 0.8, 0.0]) / np.hypot(0.3, 0.8), atol=1e-6)
    assert taken.dtype == np.float32


def _embedder(name: str, cache, **changes) -> Embedder:
    settings = ModelSettings(name=name, threads=1, batch_size=8, cache_dir=cache, colour_weight=0)
    return Embedder(settings.model_copy(update=changes))


@pytest.mark.parametrize("kind", [ImageKind.catalog, ImageKind.scan])
def test_each_vector_loses_its_scenes_share(tiny_model_dir, tmp_path, kind):
    tiny, cache = f"local-dir:{tiny_model_dir}", tmp_path / "cache"
    plain = _embedder(tiny, cache)
    pictures = [_on_a_weave(seed) for seed in (3, 4)]
    vectors = plain.embed(pictures, kind)
    whole = _embedder(tiny, cache, catalog_zoom=0)  # a scene is one whole view
    scenes = whole.embed([scene_only(p) for p in pictures], ImageKind.catalog)
    leaning = np.sum(vectors * scenes, axis=1)
    assert np.all(leaning > 0.5)  # the weave is a good part of each vector
    for weight in (1.0, 0.5):
        taken = _embedder(tiny, cache, scene_subtraction=weight).embed(pictures, kind)
        expected = vectors - weight * leaning[:, None] * scenes
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(taken, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(taken, axis=1), 1.0, atol=1e-5)
    orthogonal = _embedder(tiny, cache, scene_subtraction=1.0).embed(pictures, kind)
    np.testing.assert_allclose(np.sum(orthogonal * scenes, axis=1), 0.0, atol=1e-4)
