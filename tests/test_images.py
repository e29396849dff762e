import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from shared.contract import FailureReason
from tests.support.pictures import png_header_only
from worker.errors import PermanentError
from worker.settings import ImageSettings
from worker.vision import images as images_module
from worker.vision.images import MAX_LONG_SIDE, DecodeBudget, decode_image

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
    # our limit set above Pillow's (200 M pixels), Pillow's still holds
    lax = ImageSettings(max_pixels=500_000_000)
    with pytest.raises(PermanentError) as error:
        decode_image(png_header_only(20_000, 15_000), lax)
    assert error.value.reason is FailureReason.image_too_large


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


def test_the_pixel_and_side_limits_are_inclusive():
    square = encoded(Image.new("L", (2000, 2000)), "PNG")
    assert decode_image(square, LIMITS)  # exactly max_pixels
    one_fewer = LIMITS.model_copy(update={"max_pixels": 2000 * 2000 - 1})
    with pytest.raises(PermanentError, match="the limit is 3999999"):
        decode_image(square, one_fewer)
    assert decode_image(encoded(Image.new("RGB", (16, 400)), "PNG"), LIMITS).size == (16, 400)
    with pytest.raises(PermanentError, match="smaller than 16"):
        decode_image(encoded(Image.new("RGB", (15, 400)), "PNG"), LIMITS)


def test_every_kept_picture_is_near_the_models_scale():
    # twice the model's side on the shorter side is already halved
    square = decode_image(encoded(Image.new("RGB", (1300, 1300)), "PNG"), ImageSettings())
    assert square.size == (650, 650)
    # a long strip is reduced by its longer side, though its shorter one is small
    strip = decode_image(encoded(Image.new("RGB", (700, 8000)), "PNG"), ImageSettings())
    assert max(strip.size) <= MAX_LONG_SIDE and strip.size == (175, 2000)


class RecordedBudget(DecodeBudget):
    def __init__(self) -> None:
        super().__init__(ImageSettings().decode_budget_pixels)
        self.reserved: list[int] = []

    def reserve(self, pixels: int):
        self.reserved.append(pixels)
        return super().reserve(pixels)


def test_a_decode_reserves_the_pixels_it_holds(monkeypatch):
    budget = RecordedBudget()
    monkeypatch.setattr(images_module, "budget_for", lambda limits: budget)
    # a JPEG decodes at the scale it is drafted to: a quarter of its pixels here
    decode_image(encoded(Image.new("RGB", (3000, 2000), "gray"), "JPEG"), ImageSettings())
    # a palette picture is converted before it is reduced: two copies at once
    decode_image(encoded(Image.new("P", (1000, 1000)), "PNG"), ImageSettings())
    assert budget.reserved == [1500 * 1000, 2 * 1000 * 1000]


def test_a_decoder_out_of_memory_is_too_large(monkeypatch):
    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_memory)
    with pytest.raises(PermanentError) as error:
        decode_image(encoded(Image.new("RGB", (64, 64)), "PNG"), LIMITS)
    assert error.value.reason is FailureReason.image_too_large


def test_a_refusal_holds_no_frame_of_the_decode():
    """The decoder's frames hold the half-decoded picture: an error kept until its batch is
    answered must not keep them alive."""
    # over our limit (checked in the decode) and not a PNG (Pillow's own error)
    for data in (png_header_only(10_000, 10_000), b"\x89PNG\r\n\x1a\n" + b"\0" * 64):
        with pytest.raises(PermanentError) as error:
            decode_image(data, ImageSettings())
        frames, tb = [], error.value.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert frames[-1] == "decode_image" and "_decode" not in frames
        assert error.value.__context__ is None and error.value.__cause__ is None
