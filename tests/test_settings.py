from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.settings import IndexBackend, ModelSettings, Settings, container_cpu_limit
from worker.vision.embedder import model_id_for


def test_environment_variables_with_prefix_and_nested_delimiter(monkeypatch):
    monkeypatch.setenv("JEWELMATCH_AMQP__URL", "amqp://u:secret@rabbit:5672//")
    monkeypatch.setenv("JEWELMATCH_S3__ALLOWED_BUCKETS", "scans, catalog")
    monkeypatch.setenv("JEWELMATCH_INDEX__BACKEND", "qdrant")
    monkeypatch.setenv("JEWELMATCH_MATCHING__MIN_MARGIN", "0.02")
    monkeypatch.setenv("JEWELMATCH_OPS__RETRY_DELAYS_SECONDS", "[1, 5]")
    settings = Settings(_env_file=None)
    assert settings.amqp.url.get_secret_value() == "amqp://u:secret@rabbit:5672//"
    assert "u:secret@" not in repr(settings) and "u:secret@" not in str(settings.model_dump())
    assert settings.s3.allowed_buckets == ["scans", "catalog"]
    assert settings.index.backend is IndexBackend.qdrant
    assert settings.matching.min_margin == 0.02
    assert settings.ops.retry_delays_seconds == [1, 5]


def test_dotenv_file_is_read(tmp_path: Path):
    env = tmp_path / ".env"
    env.write_text('JEWELMATCH_MODEL__BATCH_SIZE=3\nJEWELMATCH_S3__ALLOWED_BUCKETS=["a-b"]\n')
    settings = Settings(_env_file=env)
    assert settings.model.batch_size == 3
    assert settings.s3.allowed_buckets == ["a-b"]


def test_invalid_values_fail_loudly(monkeypatch):
    monkeypatch.setenv("JEWELMATCH_INDEX__BACKEND", "sqlite")
    with pytest.raises(ValidationError, match="backend"):
        Settings(_env_file=None)


@pytest.mark.parametrize("url", ["localhost:8080", "file:///etc/passwd", "http://", "worker"])
def test_a_review_worker_url_must_be_http_with_a_host(monkeypatch, url):
    monkeypatch.setenv("JEWELMATCH_REVIEW__WORKER_URLS", f"http://worker:8080,{url}")
    with pytest.raises(ValidationError, match="not an http:// or https:// URL with a host"):
        Settings(_env_file=None)
    monkeypatch.setenv("JEWELMATCH_REVIEW__WORKER_URLS", "http://worker:8080,https://10.0.0.7")
    assert len(Settings(_env_file=None).review.worker_urls) == 2


def test_defaults_need_no_configuration():
    settings = Settings(_env_file=None)
    assert settings.model.name == "efficientnet-lite1+efficientnet-lite2"
    assert settings.index.backend is IndexBackend.edge
    assert settings.s3.allowed_buckets == []  # nothing is fetched until buckets are configured
    assert settings.model.threads == container_cpu_limit() >= 1


BEFORE_2026_12_04 = {"catalog_zoom": 0, "catalog_parts": False}
"""The view settings that were off by default until the catalog zoom and the pieces of sets
were turned on (2026-12-04)."""


@pytest.mark.parametrize(
    ("setting", "value", "other_value"),
    [
        ("catalog_zoom", 0.5, 0.4),
        ("catalog_parts", True, None),
        ("catalog_object_region", True, None),
        ("scene_subtraction", 0.5, 1.0),
    ],
)
def test_a_view_setting_is_part_of_the_model_id_and_off_keeps_todays(setting, value, other_value):
    """Vectors made another way never share an index; with the settings off, ids stay what
    they were (the id names every index built before the setting existed)."""
    earlier = ModelSettings(**BEFORE_2026_12_04)
    changed = model_id_for(earlier.model_copy(update={setting: value}))
    assert changed != model_id_for(earlier)
    if other_value is not None:
        assert changed != model_id_for(earlier.model_copy(update={setting: other_value}))
    assert model_id_for(earlier) == "efficientnet-lite1_efficientnet-lite2-v8b4403"


def test_the_default_zooms_scenes_and_cuts_sets():
    """The default views since 2026-12-04: another model id than the defaults before."""
    default = ModelSettings()
    assert default.catalog_zoom == 0.5
    assert default.catalog_parts is True
    assert model_id_for(default) == "efficientnet-lite1_efficientnet-lite2-v1ac62f"
    assert model_id_for(default.model_copy(update={"catalog_zoom": 0})) != model_id_for(default)


@pytest.mark.parametrize(
    ("url", "over_http", "refused"),
    [
        ("http://qdrant:6333", False, True),
        ("http://qdrant:6333", True, False),  # said out loud: a private network
        ("https://qdrant:6333", False, False),
    ],
)
def test_the_qdrant_api_key_never_travels_over_plain_http_unless_told(
    monkeypatch, url, over_http, refused
):
    monkeypatch.setenv("JEWELMATCH_INDEX__BACKEND", "qdrant")
    monkeypatch.setenv("JEWELMATCH_INDEX__URL", url)
    monkeypatch.setenv("JEWELMATCH_INDEX__API_KEY", "a-qdrant-api-key")
    monkeypatch.setenv("JEWELMATCH_INDEX__API_KEY_OVER_HTTP", str(over_http).lower())
    if refused:
        with pytest.raises(ValidationError, match="would travel over plain http://") as error:
            Settings(_env_file=None)
        assert "a-qdrant-api-key" not in str(error.value)
    else:
        assert Settings(_env_file=None).index.api_key.get_secret_value() == "a-qdrant-api-key"


def test_a_renamed_learning_setting_names_its_new_name(monkeypatch):
    monkeypatch.setenv("JEWELMATCH_LEARNING__WHITEN_DIM", "64")
    with pytest.raises(ValidationError, match="JEWELMATCH_LEARNING__WHITENING__DIM"):
        Settings(_env_file=None)
    monkeypatch.delenv("JEWELMATCH_LEARNING__WHITEN_DIM")
    monkeypatch.setenv("JEWELMATCH_LEARNING__WHITENING__DIM", "64")
    assert Settings(_env_file=None).learning.whitening.dim == 64


def test_image_formats_are_pillows_names_and_an_unknown_one_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("JEWELMATCH_IMAGES__FORMATS", "jpeg, png")
    assert Settings(_env_file=None).images.formats == ["JPEG", "PNG"]
    # `jpg` is no Pillow name: every photo would have been refused as corrupt
    monkeypatch.setenv("JEWELMATCH_IMAGES__FORMATS", "jpg,png")
    with pytest.raises(ValidationError, match="not an image format Pillow opens: JPG"):
        Settings(_env_file=None)
