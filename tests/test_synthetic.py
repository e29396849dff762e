"""The generated demo catalog: look-alike families that differ by one detail, signet twins
told apart by their engraving only, and bag photos of them; reproducible from a seed."""

from __future__ import annotations

import itertools
import random
from dataclasses import FrozenInstanceError, astuple

import numpy as np
import pytest
from PIL import Image

from worker.tools.folders import read_folder_dataset
from worker.tools.synthetic import (
    METALS,
    STONES,
    Design,
    catalog_designs,
    photograph,
    render,
    signet_twins,
    write_catalog,
)


def _details(design: Design) -> tuple:
    return astuple(design)[1:]


def _differences(one: Design, other: Design) -> int:
    return sum(a != b for a, b in zip(_details(one), _details(other), strict=True))


@pytest.mark.parametrize(("count", "seed"), [(16, 7), (40, 0), (8, 1)])
def test_designs_come_in_look_alike_families(count, seed):
    designs = catalog_designs(count, seed)
    assert [d.product_id for d in designs] == [f"p{n:03d}" for n in range(1, count + 1)]
    assert len({_details(d) for d in designs}) == count
    assert len({d.sku for d in designs}) == count
    for design in designs:
        assert design.kind in {"ring", "pendant"}
        assert design.metal in METALS and design.stone in STONES
        assert design.cut in {"round", "square", "drop"}
        assert (design.band, design.stones) in {(b, s) for b in (18, 34) for s in (1, 3)}
    # every design has a twin one detail away; only the last family may be cut to one design
    lonely = [d for d in designs if all(_differences(d, e) != 1 for e in designs if e != d)]
    assert lonely in ([], [designs[-1]])
    families = {d.product_id: [e for e in designs if _differences(d, e) == 1] for d in designs}
    assert sum(len(twins) >= 2 for twins in families.values()) >= count // 4


def test_designs_are_drawn_from_the_seed():
    assert catalog_designs(12, seed=3) == catalog_designs(12, seed=3)
    assert catalog_designs(12, seed=3) != catalog_designs(12, seed=4)
    assert catalog_designs(6, seed=3) == catalog_designs(12, seed=3)[:6]


def test_the_name_and_sku_say_the_detail():
    ring = Design("p001", "ring", "rose", "sapphire", "square", 34, 3)
    assert ring.sku == "RI-RO-SAP-SQ34-3"
    assert ring.name == "rose ring, square sapphire trilogy"
    assert ring.engraving == 0  # only signets are engraved
    with pytest.raises(FrozenInstanceError):
        ring.metal = "gold"  # type: ignore[misc]
    pendant = Design("p002", "pendant", "gold", "ruby", "drop", 18, 1)
    assert pendant.sku == "PE-GO-RUB-DR18-1"
    assert pendant.name == "gold pendant, drop ruby solitaire"


def test_signet_twins_differ_by_their_engraving_alone():
    twins = signet_twins(3, first=4, metal="gold")
    assert [t.product_id for t in twins] == ["s004", "s005", "s006"]
    assert [t.engraving for t in twins] == [4, 5, 6]
    assert [t.sku for t in twins] == ["SI-GO-E4", "SI-GO-E5", "SI-GO-E6"]
    assert twins[0].name == "gold signet ring, engraving no. 4"
    assert all(_differences(twins[0], t) == 1 for t in twins[1:])
    pictures = [np.asarray(render(t, 200)).astype(int) for t in twins]
    # the same disc on white: beyond the face every pixel agrees (the grooves reach the rim
    # at most), and in its middle the grooves differ
    yy, xx = np.mgrid[:200, :200]
    radius = np.hypot(yy - 99.5, xx - 99.5)
    face = 0.3 * 200
    for one, other in itertools.pairwise(pictures):
        assert np.array_equal(one[radius > face + 4], other[radius > face + 4])
        assert (np.abs(one - other).max(axis=2)[radius < 0.7 * face] > 30).mean() > 0.1
    assert (pictures[0][radius > face + 4] == 255).all()
    assert (pictures[0][radius < face - 4] != 255).any(axis=1).all()


def test_a_render_is_the_design_on_white_and_one_detail_changes_it():
    ring = Design("p001", "ring", "gold", "ruby", "round", 18, 1)
    picture = render(ring, 256)
    assert picture.size == (256, 256) and picture.mode == "RGB"
    pixels = np.asarray(picture)
    assert (pixels[:8, :8] == 255).all() and (pixels[-8:, -8:] == 255).all()
    assert np.array_equal(pixels, np.asarray(render(ring, 256)))
    assert (pixels != 255).any(axis=2).mean() > 0.05  # the jewel covers part of the picture
    # drawn in its own colours: the metal and its shaded body and rims, the stone and its
    # facet's highlight
    colours = {tuple(colour) for colour in pixels.reshape(-1, 3)}
    assert METALS["gold"] == (212, 175, 55) and STONES["ruby"] == (190, 20, 45)
    for colour in ((212, 175, 55), (167, 130, 10), (152, 115, 0), (190, 20, 45), (255, 110, 135)):
        assert colour in colours
    for detail in (
        {"metal": "silver"},
        {"stone": "emerald"},
        {"cut": "square"},
        {"band": 34},
        {"stones": 3},
        {"kind": "pendant"},
    ):
        variant = Design(**{**ring.__dict__, **detail})
        assert not np.array_equal(pixels, np.asarray(render(variant, 256))), detail


def test_a_photograph_is_a_new_look_at_the_same_jewel_and_repeats_from_its_seed():
    picture = render(Design("p001", "pendant", "silver", "sapphire", "round", 34, 3))
    photo = photograph(picture, random.Random(1), 240)
    assert photo.size == (240, 240) and photo.mode == "RGB"
    again = photograph(picture, random.Random(1), 240)
    assert np.array_equal(np.asarray(photo), np.asarray(again))
    other = photograph(picture, random.Random(2), 240)
    assert not np.array_equal(np.asarray(photo), np.asarray(other))
    # not the catalog image: the white background is gone under the bag
    pixels = np.asarray(photo).astype(int)
    assert (pixels.min(axis=2) > 240).mean() < 0.5
    catalog = np.asarray(picture.resize((240, 240))).astype(int)
    assert np.abs(pixels - catalog).mean() > 10


@pytest.mark.parametrize("seed", range(12))
def test_the_jewel_stays_in_the_photograph(seed):
    """However it is turned, scaled and shifted, the ruby is in the picture (measured: at
    least 223 ruby-red pixels of 480 × 480 over these seeds)."""
    ring = render(Design("p001", "ring", "gold", "ruby", "round", 18, 1))
    pixels = np.asarray(photograph(ring, random.Random(seed))).astype(int)
    assert pixels.shape == (480, 480, 3)
    red = pixels[..., 0] - np.maximum(pixels[..., 1], pixels[..., 2]) > 80
    assert red.sum() > 100


def test_write_catalog_writes_a_folder_data_set(tmp_path):
    tmp_path = tmp_path / "new" / "folder"
    write_catalog(tmp_path, count=2, scans_per_product=1, seed=5)
    designs = write_catalog(tmp_path, count=3, scans_per_product=2, seed=5)  # over the first
    assert designs == catalog_designs(3, seed=5)
    for design in designs:
        folder = tmp_path / design.product_id
        assert sorted(p.name for p in folder.iterdir()) == [
            "catalog_0.png",
            "query_0.jpg",
            "query_1.jpg",
        ]
        assert np.array_equal(
            np.asarray(Image.open(folder / "catalog_0.png")), np.asarray(render(design))
        )
    dataset = read_folder_dataset(tmp_path)
    assert sorted(p.product_id for p in dataset.products) == [d.product_id for d in designs]
    assert len(dataset.queries) == 6
    # each scan is photographed afresh, from one generator for the whole catalog
    scans = [np.asarray(Image.open(tmp_path / "p001" / f"query_{n}.jpg")) for n in (0, 1)]
    assert not np.array_equal(*scans)
