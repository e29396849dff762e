"""Pictures the tests use: real photos where they lie beside the project, hostile headers,
and folders of rendered catalog designs."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

GROCERY = Path(__file__).resolve().parents[3] / "shared" / "data" / "grocery-store"
"""Real photos, read where they lie beside the project (never copied into it)."""


def png_header_only(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG that claims a size in its header but holds almost no data (colour type 2: RGB,
    6: RGBA)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def design_folder(root: Path, designs: Sequence, size: int) -> Path:
    """A folder image store: each design's render as `<catalog bucket>/<product>.jpg` and the
    same picture as `<scans bucket>/bag-<product>.jpg`."""
    from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes
    from worker.tools.synthetic import render

    for bucket in (CATALOG_BUCKET, SCANS_BUCKET):
        (root / bucket).mkdir(parents=True)
    for design in designs:
        data = jpeg_bytes(render(design, size))
        (root / CATALOG_BUCKET / f"{design.product_id}.jpg").write_bytes(data)
        (root / SCANS_BUCKET / f"bag-{design.product_id}.jpg").write_bytes(data)
    return root


SET_SHAPES = [(60, 40, 340, 150), (80, 220, 130, 280), (270, 220, 320, 280)]
"""A necklace across the top and two earrings below it, on a 400 × 300 white picture."""


def set_picture() -> Image.Image:
    picture = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(picture)
    draw.ellipse(SET_SHAPES[0], outline=(190, 140, 40), width=8)
    for earring in SET_SHAPES[1:]:
        draw.ellipse(earring, fill=(200, 60, 60))
    return picture
