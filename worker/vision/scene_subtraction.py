"""A picture's own scene taken out of its vector. A ring on a hand, a pendant on a tray: the
towers' vector of the whole picture is partly the hand or the tray, which vouches for other
pieces photographed the same way. The picture with its middle painted over in its median
colour is the scene alone; its vector's share is subtracted from the picture's (a weight of 1
leaves the picture's vector orthogonal to its scene's). Catalog images and scans alike, no
weights of its own (docs/benchmarks.md, "Jewelry")."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageStat

from worker.vectors import unit_rows

SCENE_VERSION = 1
"""Bumped whenever the rule below changes (another model id)."""

MIDDLE = 0.6
"""The painted-over middle, as a fraction of each side: where a photographed piece lies."""


def scene_only(picture: Image.Image) -> Image.Image:
    """`picture` with its middle `MIDDLE` of each side painted in its median colour."""
    scene = picture.convert("RGB")  # always a new image: `picture` is left as it is
    median = tuple(int(value) for value in ImageStat.Stat(scene).median)
    width, height = scene.size
    left, top = width * (1 - MIDDLE) / 2, height * (1 - MIDDLE) / 2
    ImageDraw.Draw(scene).rectangle((left, top, width - left, height - top), fill=median)
    return scene


def without_scene(views: np.ndarray, scenes: np.ndarray, weight: float) -> np.ndarray:
    """Unit rows of `views` less `weight` times their projection on their `scenes` (unit
    rows, one per view)."""
    along = np.sum(views * scenes, axis=1, keepdims=True)
    return unit_rows(views - weight * along * scenes).astype(np.float32)
