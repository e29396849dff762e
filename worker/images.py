"""Decoding untrusted image bytes into RGB pictures, with limits checked before a full decode."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.contract import FailureReason
from worker.errors import PermanentError
from worker.settings import ImageSettings

# Our own pixel limit is checked first; Pillow's stays as a second line of defence.
Image.MAX_IMAGE_PIXELS = 200_000_000

DRAFT_SIDE = 640
"""JPEGs are decoded at a reduced scale no smaller than this (the model needs far less)."""


def decode_image(data: bytes, limits: ImageSettings) -> Image.Image:
    """Decode bytes of any format Pillow reads into an upright RGB image.

    Raises PermanentError (image_too_large or image_unreadable) for hostile or broken input:
    the byte and pixel limits are checked from the header, before pixel data is decoded.
    """
    if len(data) > limits.max_bytes:
        raise PermanentError(
            FailureReason.image_too_large,
            f"image is {len(data)} bytes, the limit is {limits.max_bytes}",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise PermanentError(
                    FailureReason.image_too_large,
                    f"image is {width}x{height} = {width * height} pixels, "
                    f"the limit is {limits.max_pixels}",
                )
            if min(width, height) < limits.min_side:
                raise PermanentError(
                    FailureReason.image_unreadable,
                    f"image is {width}x{height}, smaller than {limits.min_side} px on a side",
                )
            image.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))  # no-op except for JPEG
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except PermanentError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PermanentError(FailureReason.image_too_large, str(error)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise PermanentError(
            FailureReason.image_unreadable, f"not a readable image: {error}"
        ) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas composited on white (catalog cut-outs are often PNG)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
