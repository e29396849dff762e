"""`MODEL__INPUT_SCALE`: each tower reads a picture larger than its native input size, as if
its folder said that size; the scale is part of the model id, and 1.0 keeps today's ids."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.support.tiny_model import write_tiny_efficientnet
from worker.settings import ModelRuntime, ModelSettings
from worker.tools.synthetic import catalog_designs, render
from worker.vision.embedder import Embedder, ImageKind, model_id_for, scaled_size


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    """The tiny EfficientNet (64 px) and the same weights in a folder that says 96 px."""
    root = tmp_path_factory.mktemp("scale")
    native = write_tiny_efficientnet(root / "native")
    larger = root / "larger"
    shutil.copytree(native, larger)
    config = json.loads((larger / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["image_size"] = 96
    (larger / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{native}", f"local-dir:{larger}"


def _embedder(name: str, cache, runtime: ModelRuntime, **changes) -> Embedder:
    settings = ModelSettings(name=name, threads=1, batch_size=8, cache_dir=cache, runtime=runtime)
    return Embedder(settings.model_copy(update=changes))


@pytest.mark.parametrize("runtime", [ModelRuntime.torch, ModelRuntime.openvino])
def test_a_scaled_tower_reads_pictures_at_the_larger_size(folders, tmp_path, runtime):
    native, larger = folders
    pictures = [render(design, 150) for design in catalog_designs(3, seed=5)]
    at_native = _embedder(native, tmp_path, runtime)
    scaled = _embedder(native, tmp_path, runtime, input_scale=1.5)
    as_if_folder_said = _embedder(larger, tmp_path, runtime)
    assert at_native.image_size == (64, 64)
    assert scaled.image_size == as_if_folder_said.image_size == (96, 96)
    for kind in ImageKind:
        vectors = scaled.embed(pictures, kind)
        np.testing.assert_allclose(vectors, as_if_folder_said.embed(pictures, kind), atol=1e-5)
        assert not np.allclose(vectors, at_native.embed(pictures, kind), atol=1e-3)


def test_sizes_round_to_eight_pixels():
    assert scaled_size(240, 1.6) == (384, 384)
    assert scaled_size(260, 1.6) == (416, 416)
    assert scaled_size((260, 240), 1.33) == (344, 320)
    assert scaled_size(224, 1.0) == (224, 224)


def test_the_scale_is_part_of_the_model_id_and_one_keeps_todays():
    default = ModelSettings()
    assert model_id_for(default.model_copy(update={"input_scale": 1.6})) != model_id_for(default)
    assert model_id_for(default.model_copy(update={"input_scale": 1.0})) == (
        "efficientnet-lite1_efficientnet-lite2-v8b4403"
    )
