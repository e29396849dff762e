"""What a vector of the index is made of, in numpy alone (no torch, no open_clip), so that
matching and learning never load the model's libraries.

A vector is the picture's image embedding (its first `view_dim` dimensions) and, with the
colour term on, a colour descriptor after it, weighted by `colour_weight`; the whole vector
has unit length (`worker.vision.embedder` makes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

SOURCE_CATALOG = "catalog"
"""A reference image from the PIM's catalog."""
SOURCE_CONFIRMED_SCAN = "confirmed_scan"
"""A bag photo that a person confirmed as the product's."""

PART_SEPARATOR = "~part-"
"""Between a catalog image's id and the number of a piece cut from it (`MODEL__CATALOG_PARTS`,
worker/vision/catalog_parts.py); `~` is no character of an `image_id` in the contract, so no
image of the PIM can be taken for a piece."""


def part_image_id(image_id: str, n: int) -> str:
    """The reference id of the `n`-th piece of a catalog image."""
    return f"{image_id}{PART_SEPARATOR}{n}"


def whole_image_id(image_id: str) -> str:
    """The catalog image a reference id belongs to: itself, or the image a piece was cut from."""
    return image_id.split(PART_SEPARATOR, 1)[0]


def is_part(image_id: str) -> bool:
    return PART_SEPARATOR in image_id


def with_pieces(
    image_id: str, vector: np.ndarray, pieces: np.ndarray | None
) -> list[tuple[str, np.ndarray]]:
    """A catalog image's reference ids and vectors: itself, then each piece cut from it."""
    pieces = [] if pieces is None else pieces
    return [(image_id, vector)] + [
        (part_image_id(image_id, n), piece) for n, piece in enumerate(pieces, start=1)
    ]


class ImageKind(StrEnum):
    """Which views a picture is embedded as (a clean catalog shot, or a scan of a bag)."""

    catalog = "catalog"
    scan = "scan"


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Vectors (rows, or one vector) scaled to unit length; zero vectors stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class VectorLayout:
    """Where the image embedding ends and the colour descriptor begins, and its weight."""

    view_dim: int
    colour_weight: float = 0.0

    def image_part(self, vectors: np.ndarray) -> np.ndarray:
        """The image embedding inside vectors (rows): its dimensions at unit length, the
        colour's set to zero (the same shape, so that means and projections apply to
        either)."""
        if self.view_dim >= vectors.shape[-1]:
            return vectors
        image_only = np.zeros_like(vectors)
        image_only[..., : self.view_dim] = unit_rows(vectors[..., : self.view_dim])
        return image_only

    def colour_part(self, vectors: np.ndarray) -> np.ndarray:
        """The colour descriptors inside vectors (unit rows; zero rows where a picture showed
        no colour, and no columns without the colour term)."""
        return unit_rows(vectors[..., self.view_dim :])
