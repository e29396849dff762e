"""An ensemble model (`name` joining towers with `+`): each member embeds the views at its own
input size, and a picture's vector is the members' unit vectors side by side, at unit length."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.support.tiny_model import write_tiny_model
from worker.settings import ModelSettings
from worker.vision.embedder import Embedder, ImageKind


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("ensemble")
    return [f"local-dir:{write_tiny_model(root / f'tiny-{seed}', seed=seed)}" for seed in (0, 1)]


def _embedder(name: str, cache) -> Embedder:
    return Embedder(
        ModelSettings(
            name=name,
            threads=1,
            batch_size=8,
            scan_crops=[1.0, 0.5],
            colour_weight=0.0,  # the image towers' part alone (colour: tests/test_colour.py)
            cache_dir=cache,
        )
    )


def test_an_ensemble_vector_is_its_members_vectors_side_by_side(members, tmp_path):
    cache = tmp_path / "cache"
    first, second = (_embedder(member, cache) for member in members)
    ensemble = _embedder("+".join(members), cache)
    pictures = [
        Image.effect_noise((96, 80), 40 + 30 * n).convert("RGB").resize((120, 90)) for n in range(3)
    ]
    joined = ensemble.embed(pictures, ImageKind.scan)
    expected = np.concatenate(
        [first.embed(pictures, ImageKind.scan), second.embed(pictures, ImageKind.scan)], axis=1
    ) / np.sqrt(2)
    assert ensemble.dim == first.dim + second.dim == joined.shape[1]
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(joined, expected, atol=1e-5)


def test_an_ensemble_has_its_own_model_id(members, tmp_path):
    ids = {
        _embedder(name, tmp_path / "cache").model_id
        for name in [*members, "+".join(members), "+".join(reversed(members))]
    }
    assert len(ids) == 4  # no index is shared with a member, or with the members reordered


def test_an_ensemble_refuses_a_pretrained_weights_file(members, tmp_path):
    with pytest.raises(ValueError, match="ensemble"):
        Embedder(ModelSettings(name="+".join(members), pretrained="/models/w.bin"))
