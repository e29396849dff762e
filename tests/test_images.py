import io
import struct
import time
import zlib

import pytest
from PIL import Image

from shared.contract import FailureReason
from worker.errors import PermanentError
from worker.images import decode_image
from worker.settings import ImageSettings

LIMITS = ImageSettings(max_bytes=2_000_000, max_pixels=4_000_000, min_side=16)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_any_format_pillow_reads_becomes_rgb(fmt):
    source = Image.new("RGB", (64, 48), (200, 30, 30))
    image = decode_image(encoded(source, fmt), LIMITS)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_exif_orientation_is_applied():
    source = Image.new("RGB", (80, 40), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = decode_image(encoded(source, "JPEG", exif=exif.tobytes()), LIMITS)
    assert image.size == (40, 80)


def test_transparent_areas_become_white_not_black():
    source = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    image = decode_image(encoded(source, "PNG"), LIMITS)
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_too_many_bytes_is_rejected_before_decoding():
    with pytest.raises(PermanentError) as error:
        decode_image(b"\xff" * (LIMITS.max_bytes + 1), LIMITS)
    assert error.value.reason is FailureReason.image_too_large


def test_decompression_bomb_is_rejected_from_its_header():
    bomb = png_header_only(50_000, 50_000)  # 2.5 gigapixels claimed in 100 bytes
    started = time.perf_counter()
    with pytest.raises(PermanentError) as error:
        decode_image(bomb, LIMITS)
    assert error.value.reason is FailureReason.image_too_large
    assert "pixels" in error.value.detail
    assert time.perf_counter() - started < 1.0


def test_fifty_megapixel_photo_is_too_large_under_default_limits():
    photo = encoded(Image.new("RGB", (8660, 5780), "gray"), "JPEG", quality=20)
    with pytest.raises(PermanentError) as error:
        decode_image(photo, ImageSettings())
    assert error.value.reason is FailureReason.image_too_large


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not an image",
        encoded(Image.new("RGB", (200, 200), "blue"), "JPEG")[:300],  # truncated JPEG
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 50,
    ],
)
def test_corrupt_or_truncated_input_is_unreadable(data):
    with pytest.raises(PermanentError) as error:
        decode_image(data, LIMITS)
    assert error.value.reason is FailureReason.image_unreadable


def test_tiny_images_are_refused():
    with pytest.raises(PermanentError, match="smaller than"):
        decode_image(encoded(Image.new("RGB", (4, 400)), "PNG"), LIMITS)


def test_large_jpeg_is_decoded_at_reduced_scale():
    photo = encoded(Image.new("RGB", (3000, 2000), "gray"), "JPEG")
    image = decode_image(photo, ImageSettings())
    assert 640 <= min(image.size) < 2000
