"""The benchmark's remembering embedder: a picture is embedded once per kind, and what it
remembers is keyed by the pixels, never by the object that holds them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from worker.tools.bench.loaded_models import RememberingEmbedder
from worker.vectors import ImageKind


class CountingEmbedder:
    """Stands in for the model: a picture's vector is its mean colour and its kind, and each
    call is written down."""

    dim = 4

    def __init__(self) -> None:
        self.calls: list[tuple[ImageKind, int]] = []

    def embed(self, images: Sequence[Image.Image], kind: ImageKind) -> np.ndarray:
        self.calls.append((kind, len(images)))
        flag = 1.0 if kind is ImageKind.scan else 0.0
        rows = [[*np.asarray(i.convert("RGB"), float).mean(axis=(0, 1)), flag] for i in images]
        return np.array(rows, dtype=np.float32).reshape(len(images), self.dim)


def _picture(colour: tuple[int, int, int], size=(4, 2)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_a_picture_is_embedded_once_per_kind():
    model = CountingEmbedder()
    remembering = RememberingEmbedder(model)
    red, blue = _picture((200, 0, 0)), _picture((0, 0, 200))
    first = remembering.embed([red, blue, _picture((200, 0, 0))], ImageKind.catalog)
    assert model.calls == [(ImageKind.catalog, 2)]  # the same pixels twice: embedded once
    assert np.array_equal(first[0], first[2]) and not np.array_equal(first[0], first[1])
    again = remembering.embed([blue, red])  # catalog is the default kind
    assert model.calls == [(ImageKind.catalog, 2)]
    assert np.array_equal(again, first[[1, 0]])
    as_scan = remembering.embed([red], ImageKind.scan)
    assert model.calls[-1] == (ImageKind.scan, 1) and as_scan[0, 3] == 1.0
    remembering.embed([red, _picture((0, 200, 0))], ImageKind.catalog)
    assert model.calls[-1] == (ImageKind.catalog, 1)  # only the new picture


def test_the_same_bytes_in_another_shape_or_mode_are_another_picture():
    model = CountingEmbedder()
    remembering = RememberingEmbedder(model)
    remembering.embed([_picture((9, 9, 9), (4, 2))], ImageKind.catalog)
    remembering.embed([_picture((9, 9, 9), (2, 4))], ImageKind.catalog)
    remembering.embed([Image.new("YCbCr", (4, 2), (9, 9, 9))], ImageKind.catalog)
    assert model.calls == [(ImageKind.catalog, 1)] * 3


def test_nothing_to_embed_and_the_model_s_attributes_are_the_model_s():
    model = CountingEmbedder()
    remembering = RememberingEmbedder(model)
    assert remembering.embed([], ImageKind.scan).shape == (0, 4)
    assert model.calls == [(ImageKind.scan, 0)]
    assert remembering.dim == 4
