"""A small generated jewelry catalog for the demo: drawn rings and pendants that differ in
small details (stone colour, stone cut, metal, band width, number of stones), and "scans" of
them re-photographed in a bag with rotation, scale, lighting, glare and blur.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

METALS = {"gold": (212, 175, 55), "silver": (196, 198, 204), "rose": (196, 126, 118)}
STONES = {
    "ruby": (190, 20, 45),
    "sapphire": (25, 60, 170),
    "emerald": (20, 140, 80),
    "diamond": (235, 240, 250),
    "amethyst": (130, 60, 160),
}


@dataclass(frozen=True)
class Design:
    product_id: str
    kind: str  # ring | pendant | signet
    metal: str
    stone: str
    cut: str  # round | square | drop
    band: int  # band or bail width in px at 512 px
    stones: int  # 1 or 3
    engraving: int = 0  # signets: the seed of the engraved pattern, all that tells them apart

    @property
    def sku(self) -> str:
        if self.kind == "signet":
            return f"SI-{self.metal[:2].upper()}-E{self.engraving}"
        return (
            f"{self.kind[:2].upper()}-{self.metal[:2].upper()}-{self.stone[:3].upper()}-"
            f"{self.cut[:2].upper()}{self.band}-{self.stones}"
        )

    @property
    def name(self) -> str:
        if self.kind == "signet":
            return f"{self.metal} signet ring, engraving no. {self.engraving}"
        stones = "solitaire" if self.stones == 1 else "trilogy"
        return f"{self.metal} {self.kind}, {self.cut} {self.stone} {stones}"


def catalog_designs(count: int = 16, seed: int = 7) -> list[Design]:
    """`count` designs in look-alike families: a base and two or three variants of it, each
    with another metal, stone or cut (band width and number of stones differ between
    families). A variant is drawn for every detail, used or not, so that a seed keeps giving
    the catalog that tests and figures were measured on."""
    rng = random.Random(seed)
    designs: list[Design] = []
    seen: set[tuple] = set()
    while len(designs) < count:
        base = (
            rng.choice(["ring", "pendant"]),
            rng.choice(list(METALS)),
            rng.choice(list(STONES)),
            rng.choice(["round", "square", "drop"]),
            rng.choice([18, 34]),
            rng.choice([1, 3]),
        )
        variants = [base]
        for position, options in (
            (1, list(METALS)),
            (2, list(STONES)),
            (3, ["round", "square", "drop"]),
            (4, [18, 34]),
            (5, [1, 3]),
        ):
            other = [o for o in options if o != base[position]]
            variant = list(base)
            variant[position] = rng.choice(other)
            variants.append(tuple(variant))
        for variant in variants[: rng.randint(3, 4)]:
            if variant not in seen and len(designs) < count:
                seen.add(variant)
                designs.append(Design(f"p{len(designs) + 1:03d}", *variant))
    return designs


def signet_twins(count: int = 4, first: int = 1, metal: str = "silver") -> list[Design]:
    """Signet rings alike in all but their engraving: the twins that only detail tells apart
    (product ids `s001`... from `first`)."""
    return [
        Design(f"s{first + n:03d}", "signet", metal, "none", "round", 18, 0, engraving=first + n)
        for n in range(count)
    ]


def _engraved_signet(draw: ImageDraw.ImageDraw, big: int, design: Design) -> None:
    """A signet's face seen from above: a metal disc with a rim, and fine grooves engraved
    in a pattern drawn from `design.engraving`."""
    rng = random.Random(design.engraving)
    metal = METALS[design.metal]
    centre, r = big / 2, big * 0.3
    draw.ellipse([centre - r, centre - r, centre + r, centre + r], fill=_shade(metal, 45))
    inner = r * 0.9
    draw.ellipse([centre - inner, centre - inner, centre + inner, centre + inner], fill=metal)
    for _ in range(14):
        x, y = centre + rng.uniform(-0.6, 0.6) * r, centre + rng.uniform(-0.6, 0.6) * r
        points = []
        for _ in range(rng.randint(2, 4)):
            x = min(max(x + rng.uniform(-0.35, 0.35) * r, centre - 0.7 * r), centre + 0.7 * r)
            y = min(max(y + rng.uniform(-0.35, 0.35) * r, centre - 0.7 * r), centre + 0.7 * r)
            points.append((x, y))
        if len(points) > 1:
            draw.line(points, fill=_shade(metal, 110), width=10, joint="curve")


def _shade(colour: tuple[int, int, int], darker: int) -> tuple[int, ...]:
    return tuple(max(0, c - darker) for c in colour)


def _stone(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, design: Design) -> None:
    color = STONES[design.stone]
    rim = _shade(METALS[design.metal], 60)
    if design.cut == "round":
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=rim)
        draw.ellipse([cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8], fill=color)
    elif design.cut == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=rim)
        draw.rectangle([cx - r * 0.78, cy - r * 0.78, cx + r * 0.78, cy + r * 0.78], fill=color)
    else:
        points = [
            (cx, cy - r * 1.3),
            (cx + r * 0.85, cy + r * 0.25),
            (cx, cy + r),
            (cx - r * 0.85, cy + r * 0.25),
        ]
        draw.polygon(points, fill=rim)
        inner = [(cx + (x - cx) * 0.78, cy + (y - cy) * 0.78) for x, y in points]
        draw.polygon(inner, fill=color)
    # facet highlight
    draw.ellipse(
        [cx - r * 0.35, cy - r * 0.55, cx - r * 0.05, cy - r * 0.25],
        fill=tuple(min(255, c + 90) for c in color),
    )


def render(design: Design, size: int = 512) -> Image.Image:
    """The clean catalog picture of a design on white (drawn at 2x, then downsampled)."""
    big = size * 2
    image = Image.new("RGB", (big, big), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    metal = METALS[design.metal]
    shade = _shade(metal, 45)
    band = design.band * 2
    centre = big / 2
    if design.kind == "signet":
        _engraved_signet(draw, big, design)
    elif design.kind == "ring":
        outer = big * 0.30
        draw.ellipse(
            [
                centre - outer,
                centre - outer * 0.72 + big * 0.08,
                centre + outer,
                centre + outer * 0.72 + big * 0.08,
            ],
            fill=shade,
        )
        draw.ellipse(
            [
                centre - outer + band,
                centre - outer * 0.72 + big * 0.08 + band * 0.72,
                centre + outer - band,
                centre + outer * 0.72 + big * 0.08 - band * 0.72,
            ],
            fill=(255, 255, 255),
        )
        draw.arc(
            [
                centre - outer,
                centre - outer * 0.72 + big * 0.08,
                centre + outer,
                centre + outer * 0.72 + big * 0.08,
            ],
            200,
            340,
            fill=metal,
            width=band // 2,
        )
        top = centre - outer * 0.72 + big * 0.08
        offsets = [0] if design.stones == 1 else [-1, 0, 1]
        for offset in offsets:
            r = big * (0.085 if offset == 0 else 0.055)
            _stone(
                draw,
                centre + offset * big * 0.12,
                top - r * 0.4 + abs(offset) * big * 0.03,
                r,
                design,
            )
    else:
        chain_y = big * 0.18
        for t in range(0, 41):
            angle = math.pi * t / 40
            x = centre + math.cos(angle) * big * 0.34
            y = chain_y + math.sin(angle) * big * 0.20
            draw.ellipse([x - 7, y - 7, x + 7, y + 7], outline=metal, width=4)
        bail_top = chain_y + big * 0.20
        draw.rounded_rectangle(
            [centre - band / 2, bail_top - 10, centre + band / 2, bail_top + big * 0.09],
            radius=band // 3,
            fill=metal,
        )
        r = big * 0.12
        cy = bail_top + big * 0.09 + r * 1.1
        _stone(draw, centre, cy, r, design)
        if design.stones == 3:
            for dx in (-1, 1):
                _stone(draw, centre + dx * r * 1.05, cy + r * 1.5, r * 0.45, design)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def photograph(picture: Image.Image, rng: random.Random, size: int = 480) -> Image.Image:
    """A hand-held photo of the jewel in a plastic bag: rotated, scaled, shifted, re-lit,
    with a bag tint and creases, glare, blur and JPEG compression."""
    background = (rng.randint(150, 215), rng.randint(150, 215), rng.randint(150, 210))
    scale = rng.uniform(0.65, 1.05)
    side = int(size * scale)
    rgb = np.asarray(picture.resize((side, side), Image.Resampling.BICUBIC))
    # the white catalog background becomes transparent, so the jewel lies on the table
    alpha = np.where((rgb > 240).all(axis=2), 0, 255).astype(np.uint8)
    jewel = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    jewel = jewel.rotate(rng.uniform(-35, 35), resample=Image.Resampling.BICUBIC, expand=True)
    photo = Image.new("RGB", (size, size), background)
    x = (size - jewel.width) // 2 + rng.randint(-size // 10, size // 10)
    y = (size - jewel.height) // 2 + rng.randint(-size // 10, size // 10)
    photo.paste(jewel, (x, y), jewel)
    # plastic bag: a milky tint and a few creases
    bag = Image.new("RGBA", (size, size), (255, 255, 255, rng.randint(25, 60)))
    draw = ImageDraw.Draw(bag)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randint(0, size), rng.randint(0, size)
        draw.line(
            [x0, y0, x0 + rng.randint(-size, size) // 2, y0 + rng.randint(-size, size) // 2],
            fill=(255, 255, 255, rng.randint(40, 90)),
            width=rng.randint(2, 6),
        )
    # glare: a soft bright blob
    gx, gy, gr = rng.randint(0, size), rng.randint(0, size), rng.randint(size // 14, size // 6)
    draw.ellipse(
        [gx - gr, gy - gr // 2, gx + gr, gy + gr // 2], fill=(255, 255, 255, rng.randint(90, 170))
    )
    photo = Image.alpha_composite(
        photo.convert("RGBA"), bag.filter(ImageFilter.GaussianBlur(6))
    ).convert("RGB")
    photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.75, 1.2))
    photo = ImageEnhance.Contrast(photo).enhance(rng.uniform(0.8, 1.15))
    photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6)))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=rng.randint(70, 92))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def write_catalog(
    directory: Path, count: int = 16, scans_per_product: int = 2, seed: int = 7
) -> list[Design]:
    """Write a folder data set: `<product_id>/catalog_0.png` and `query_<n>.jpg` files."""
    rng = random.Random(seed)
    designs = catalog_designs(count, seed)
    for design in designs:
        folder = directory / design.product_id
        folder.mkdir(parents=True, exist_ok=True)
        picture = render(design)
        picture.save(folder / "catalog_0.png")
        for n in range(scans_per_product):
            photograph(picture, rng).save(folder / f"query_{n}.jpg", quality=95)
    return designs
