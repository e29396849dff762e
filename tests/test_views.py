"""How a picture becomes a vector, where no other test looks: centred square crops; with
`flip`, each crop and its mirror image averaged, so that a jewel photographed the other way
round embeds the same; a model id that names its weights file, so that two files' vectors
never share an index; a model that is not there refused before open_clip is asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.support.tiny_model import tiny_settings
from worker.errors import StartupError
from worker.settings import ModelSettings
from worker.vision.embedder import (
    Embedder,
    ImageKind,
    centred_crops,
    check_model_available,
    member_id,
    model_id_for,
)


def test_crops_are_centred_squares_of_the_shorter_side():
    wide = Image.new("RGB", (200, 100))
    crops = centred_crops(wide, [1.0, 0.5])
    assert [crop.size for crop in crops] == [(100, 100), (50, 50)]
    # taken from the middle: a wide picture's ramp shows its middle columns
    ramp = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1)))
    middle = np.asarray(centred_crops(ramp, [0.5])[0])
    assert (middle[0, 0], middle[0, -1]) == (75, 124)
    assert centred_crops(Image.new("RGB", (3, 1)), [0.1])[0].size == (1, 1)


@pytest.mark.parametrize("flip", [True, False])
def test_with_flip_a_mirrored_picture_embeds_as_the_picture(tiny_model_dir, tmp_path, flip):
    # centred crops, so that a crop's mirror is the mirror's crop
    settings = tiny_settings(
        tiny_model_dir, tmp_path, colour_weight=0.0, flip=flip, catalog_crops=[1.0, 0.8]
    )
    embedder = Embedder(settings)
    # dark on the left, bright on the right: its mirror image is another picture
    ramp = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (128, 1))
    picture = Image.fromarray(ramp).convert("RGB")
    for kind in ImageKind:
        vectors = embedder.embed([picture, ImageOps.mirror(picture)], kind)
        distance = 1.0 - float(vectors[0] @ vectors[1])
        # float32 rounding: measured at most 1.2e-7 with flip; 0.012 without
        assert distance < 1e-5 if flip else distance > 1e-3


def test_a_model_id_names_the_weights_file_it_was_loaded_with():
    first = ModelSettings(name="ViT-B-32", pretrained="/models/shop-a.bin")
    second = first.model_copy(update={"pretrained": "/models/shop-b.bin"})
    assert model_id_for(first) != model_id_for(second)
    assert "shop-a" in model_id_for(first)


def test_a_member_id_is_a_file_name_made_of_the_model_name():
    assert member_id("local-dir:/models/-My Tower v2.-") == "my-tower-v2"
    assert member_id("hf-hub:Shop/Rings@main") == "hf-hub-shop-rings-main"
    assert member_id("???") == "model"


def test_a_model_that_is_not_there_is_refused_before_open_clip_is_asked(tmp_path):
    weights = tmp_path / "shop.bin"
    missing = [
        ModelSettings(name="ViT-B-32"),  # neither built in nor given weights: a download
        ModelSettings(name="ViT-B-32", pretrained=str(weights)),
        ModelSettings(name=f"local-dir:{tmp_path}"),
    ]
    for settings in missing:
        with pytest.raises(StartupError, match=r"nothing is downloaded|no model in"):
            check_model_available(settings)
    weights.write_bytes(b"weights")
    check_model_available(ModelSettings(name="ViT-B-32", pretrained=str(weights)))


def test_the_embedder_runs_torch_on_its_threads(tiny_model_dir, tmp_path):
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            Embedder(tiny_settings(tiny_model_dir, tmp_path, threads=threads))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
