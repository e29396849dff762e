"""Decoding untrusted image bytes into upright RGB pictures, inside a stated memory budget.

Hostile input is expected: a few kilobytes can declare a 40 000-pixel-wide picture, and a
fuzzed file can make any decoder raise anything. So:

- only the formats in `images.formats` are opened (Pillow registers dozens, some of which
  run external programs);
- byte and pixel limits are checked from the header, before any pixel data is decoded;
- every decode takes its pixels from one process-wide `DecodeBudget`, so however many
  images a batch holds, the pictures being decoded at once never exceed it;
- right after decoding, a picture is reduced to what the model needs (its shorter side
  below 2 × `MODEL_SIDE`), so a batch of decoded pictures stays small;
- every failure of a decoder is permanent (`image_unreadable` or `image_too_large`) and
  described in our own words: the same bytes would fail the same way again.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageOps

from shared.contract import FailureReason
from worker.errors import PermanentError
from worker.settings import ImageSettings

# Our own pixel limit is checked first; Pillow's stays as a second line of defence.
Image.MAX_IMAGE_PIXELS = 200_000_000
Image.init()  # register every plugin, so that `formats` can name any of them

MODEL_SIDE = 640
"""Pictures are kept with their shorter side in [MODEL_SIDE, 2 × MODEL_SIDE) (or smaller if
they came smaller): the model sees 224 px crops of at least half the shorter side, so this
loses nothing. JPEGs are decoded at that scale directly (`draft`), others reduced after."""

MAX_LONG_SIDE = 4 * MODEL_SIDE
"""A very elongated picture is reduced further, so that no kept picture is large."""

BYTES_PER_PIXEL = 4
"""Decoded pixels are at most 4 bytes (RGBA, 32-bit grey) in the formats allowed."""


class DecodeBudget:
    """A process-wide budget of pixels being decoded at once (a weighted semaphore).

    A decode waits until its pixels fit; one picture alone may take the whole budget (it is
    never larger than `max_pixels`, which is at most the budget).
    """

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self._free = pixels
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.pixels)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            with self._changed:
                self._free += pixels
                self._changed.notify_all()


_budgets: dict[int, DecodeBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(limits: ImageSettings) -> DecodeBudget:
    """The process's budget for these settings (one per configured size)."""
    with _budgets_lock:
        return _budgets.setdefault(
            limits.decode_budget_pixels, DecodeBudget(limits.decode_budget_pixels)
        )


def decode_image(data: bytes, limits: ImageSettings) -> Image.Image:
    """Decode bytes of an allowed format into an upright RGB picture reduced for the model.

    Raises PermanentError (image_too_large or image_unreadable) for hostile or broken input.
    """
    if len(data) > limits.max_bytes:
        raise PermanentError(
            FailureReason.image_too_large,
            f"image is {len(data)} bytes, the limit is {limits.max_bytes}",
        )
    try:
        return _decode(data, limits)
    except PermanentError as error:
        failure = error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        failure = PermanentError(
            FailureReason.image_too_large, f"image declares more than {limits.max_pixels} pixels"
        )
    except MemoryError:
        failure = PermanentError(
            FailureReason.image_too_large, "image needs more memory to decode than allowed"
        )
    except Exception as error:  # any decoder failure: the same bytes fail the same way
        failure = PermanentError(FailureReason.image_unreadable, _unreadable_detail(error, limits))
    # Raised here, outside the handlers and without the decoder's traceback: that traceback's
    # frames hold the half-decoded picture, which would stay alive (outside the decode
    # budget) as long as the error is kept, i.e. until the whole batch is answered.
    raise failure.with_traceback(None)


def _decode(data: bytes, limits: ImageSettings) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=limits.formats)
        width, height = image.size
        _check_size(width, height, limits)
        image.draft("RGB", (MODEL_SIDE, MODEL_SIDE))  # no-op except for JPEG
        drafted = image.size[0] * image.size[1]  # a JPEG decodes at the drafted scale
        with budget_for(limits).reserve(drafted * _copies(image)):
            image.load()
            image = _reduce(image)
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)


def _check_size(width: int, height: int, limits: ImageSettings) -> None:
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


def _unreadable_detail(error: Exception, limits: ImageSettings) -> str:
    """Our own words: Pillow's messages can carry object addresses and internals."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return f"not an image in an allowed format ({', '.join(limits.formats)})"
    return "not a readable image: the data is corrupt or truncated"


def _reduce(image: Image.Image) -> Image.Image:
    """Reduce a decoded picture by an integer factor to what the model needs (cheap box
    filter, the same scale a JPEG draft gives)."""
    width, height = image.size
    factor = max(min(width, height) // MODEL_SIDE, -(-max(width, height) // MAX_LONG_SIDE))
    if factor < 2:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    return image.reduce(factor)


def _copies(image: Image.Image) -> int:
    """Full-size pictures a decode holds at once: palette and other modes that cannot be
    reduced directly are converted to RGB(A) first, which doubles it."""
    return 1 if image.mode in ("L", "LA", "RGB", "RGBA", "I", "F") else 2


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas composited on white (catalog cut-outs are often PNG)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
