import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from shared.contract import FailureReason
from tests.support.pictures import png_header_only
from worker.errors import PermanentError
from worker.settings import ImageSettings
from worker.vision.images import DecodeBudget, decode_image

LIMITS = ImageSettings(max_bytes=2_000_000, max_pixels=4_000_000, min_side=16)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


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


FUZZ_SAMPLES = sorted((Path(__file__).parent / "data" / "fuzz").glob("*.bin"))


@pytest.mark.parametrize("path", FUZZ_SAMPLES, ids=lambda path: path.name)
def test_saved_fuzz_samples_are_unreadable_not_unexpected(path):
    """Mutated images (found by fuzzing) whose decoders raised TypeError and struct.error:
    permanent at once, not retried as if a dependency were down."""
    with pytest.raises(PermanentError) as error:
        decode_image(path.read_bytes(), LIMITS)
    assert error.value.reason is FailureReason.image_unreadable


def test_a_format_outside_the_allowlist_is_unreadable_in_our_own_words():
    data = encoded(Image.new("RGB", (64, 64), "red"), "PCX")
    with pytest.raises(PermanentError) as error:
        decode_image(data, LIMITS)
    assert error.value.reason is FailureReason.image_unreadable
    assert "allowed format" in error.value.detail
    assert "0x" not in error.value.detail and "BytesIO" not in error.value.detail
    allowing = LIMITS.model_copy(update={"formats": ["PCX"]})
    assert decode_image(data, allowing).size == (64, 64)


def test_a_huge_png_is_refused_with_our_limit_not_pillows():
    with pytest.raises(PermanentError) as error:
        decode_image(png_header_only(20_000, 20_000), ImageSettings())
    assert error.value.reason is FailureReason.image_too_large
    assert str(ImageSettings().max_pixels) in error.value.detail


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "GIF", "BMP"])
def test_large_pictures_of_every_format_are_reduced_right_after_decoding(fmt):
    source = Image.new("RGB", (3000, 2000), (90, 120, 200))
    image = decode_image(encoded(source, fmt), ImageSettings())
    assert image.mode == "RGB"
    assert 640 <= min(image.size) < 1280
    assert image.size[0] > image.size[1]


def test_the_decode_budget_holds_concurrent_decodes_to_its_size():
    budget = DecodeBudget(100)
    inside, peak, lock = [0], [0], threading.Lock()

    def decode(pixels: int) -> None:
        with budget.reserve(pixels):
            with lock:
                inside[0] += pixels
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= pixels

    threads = [threading.Thread(target=decode, args=(60,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 60  # two of 60 never fit in 100 at once
