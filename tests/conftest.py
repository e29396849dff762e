"""Shared fixtures: a tiny open_clip model, a real RabbitMQ node, moto's S3 server over HTTP."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import structlog
from PIL import Image

from tests.support.tiny_model import write_tiny_model
from worker.tools.bench.servers import RabbitNode, start_moto_server

CATALOG_BUCKET = "catalog-images"
SCANS_BUCKET = "scan-photos"
TEST_RETRY_DELAYS = [1, 2]


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, not from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("JEWELMATCH_"):
            monkeypatch.delenv(name)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")


@pytest.fixture(autouse=True)
def _structlog_as_before() -> Iterator[None]:
    """A command run in a test configures logging for the process (a quiet one filters out
    info): the next test starts from the configuration before it."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


WHOLE_CATALOG_VIEWS = {"catalog_zoom": 0.0, "catalog_parts": False}
"""The catalog views of the tiny random model in tests of the worker: each catalog image
embedded whole. With random weights only an identical view of the same picture is reliably
nearest, and the zoomed square and the pieces of sets are other views (tested on their own
in test_catalog_scene.py and test_catalog_parts.py, and with real weights on real photos by
the benchmarks)."""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-openclip")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):
    from worker.settings import ModelSettings
    from worker.vision.embedder import Embedder

    return Embedder(
        ModelSettings(
            name=f"local-dir:{tiny_model_dir}",
            threads=1,
            batch_size=8,
            scan_crops=[1.0],
            colour_weight=0.0,  # the image embedding alone: tests build its vectors by hand
            cache_dir=tiny_model_cache(tiny_model_dir),
            **WHOLE_CATALOG_VIEWS,
        )
    )


def tiny_model_cache(tiny_model_dir: Path) -> Path:
    """Where the tiny model's ONNX export is cached, shared by the session's tests."""
    return tiny_model_dir.parent / "cache"


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    node = RabbitNode(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    yield node
    node.cleanup()


@pytest.fixture
def amqp_url(rabbit: RabbitNode) -> str:
    """The broker's URL, with every jewelmatch queue deleted first (tests don't share state)."""
    from kombu import Connection

    from worker.amqp.broker import Topology, review_queues
    from worker.settings import AmqpSettings, OpsSettings

    if rabbit.process is None:  # a test stopped it
        rabbit.start()
    names = {
        queue.name
        for ops in (OpsSettings(), OpsSettings(retry_delays_seconds=TEST_RETRY_DELAYS))
        for queue in Topology.build(AmqpSettings(), ops).all_queues()
    } | {queue.name for queue in review_queues(1)}
    with Connection(rabbit.url) as connection:
        channel = connection.channel()
        for name in sorted(names):
            channel.queue_delete(name)
    return rabbit.url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server, endpoint = start_moto_server()
    yield endpoint
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str):
    """A boto3 client of the moto server, reset, with the two test buckets created."""
    import requests

    requests.post(f"{s3_endpoint}/moto-api/reset", timeout=10)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for bucket in (CATALOG_BUCKET, SCANS_BUCKET):
        client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture(params=["edge", "qdrant-local"])
def indexes(request, tmp_path: Path, models):
    """Two indexes of one deployment, of the module's two `models` (an old and a new one), on
    each back end: the embedded engine, and the server's code path in qdrant-client's local
    mode. Yields the back end's name, its settings and the pair."""
    from qdrant_client import QdrantClient

    from worker.index.edge import EdgeIndex
    from worker.index.server import QdrantServerIndex
    from worker.settings import IndexSettings

    old, new = models
    if request.param == "edge":
        settings = IndexSettings(path=tmp_path / "index")
        pair = (
            EdgeIndex(settings, old.model_id, old.dim),
            EdgeIndex(settings, new.model_id, new.dim),
        )
    else:
        settings = IndexSettings(backend="qdrant", url=":memory:")
        client = QdrantClient(location=":memory:")
        pair = (
            QdrantServerIndex(settings, old.model_id, old.dim, client=client),
            QdrantServerIndex(settings, new.model_id, new.dim, client=client),
        )
    yield request.param, settings, pair
    for index in pair:
        index.close()


def jpeg_bytes(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_settings(tmp_path: Path, tiny_model_dir: Path | None = None, **sections):
    """Settings for a test: embedded index under tmp_path, only the test buckets allowed."""
    from worker.settings import Settings

    values: dict = {
        "index": {"path": str(tmp_path / "index")},
        "s3": {"allowed_buckets": [CATALOG_BUCKET, SCANS_BUCKET]},
        "ops": {"http_port": 0, "retry_delays_seconds": TEST_RETRY_DELAYS, "max_attempts": 3},
        "log": {"format": "json"},
        # the test clients log in as guest
        "amqp": {"confirm_users": ["guest"]},
        # thresholds are calibrated for real weights; random ones get their own below
        "matching": {"min_margin": 0.0},
    }

    if tiny_model_dir is not None:
        # scans embedded as the full picture, like catalog images: with random weights only an
        # identical view of the same picture is reliably nearest
        values["model"] = {
            "name": f"local-dir:{tiny_model_dir}",
            "threads": 1,
            "batch_size": 8,
            "scan_crops": [1.0],
            "cache_dir": str(tiny_model_cache(tiny_model_dir)),
            **WHOLE_CATALOG_VIEWS,
        }
    for section, overrides in sections.items():
        values[section] = {**values.get(section, {}), **overrides}
    return Settings(_env_file=None, **values)
