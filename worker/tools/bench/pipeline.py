"""End-to-end latency and ingestion throughput through a real broker and a real S3 endpoint.

The production worker runs in this process (its own thread and connection) against a
RabbitMQ node and moto's S3 server that the benchmark starts (or ones given by URL); the
benchmark talks to it only through the broker, as a scan station and the PIM do.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
from pydantic import SecretStr
from rich.progress import Progress

from shared import topology
from shared.contract import MatchResult, ProductUpserted
from worker.amqp.client import JewelmatchClient
from worker.amqp.consumer import Worker
from worker.service.app import opened, wire_worker
from worker.settings import AmqpSettings, S3Settings, Settings
from worker.tools.bench.recall import percentiles
from worker.tools.bench.servers import RabbitNode, start_moto_server
from worker.tools.folders import QueryPhoto, read_folder_dataset
from worker.vision.embedder import ImageKind
from worker.vision.images import decode_image

CATALOG_BUCKET = "bench-catalog"
SCANS_BUCKET = "bench-scans"
STAGES = ("fetch", "decode", "embed", "detail", "query")


@dataclass
class Endpoints:
    amqp_url: str
    s3_endpoint: str


@contextmanager
def servers(amqp_url: str | None, s3_endpoint: str | None, workdir: Path) -> Iterator[Endpoints]:
    """The given endpoints, or a throwaway RabbitMQ node and moto S3 server."""
    node = moto = None
    try:
        if amqp_url is None:
            node = RabbitNode(workdir / "rabbitmq")
            node.start()
            amqp_url = node.url
        if s3_endpoint is None:
            moto, s3_endpoint = start_moto_server()
        yield Endpoints(amqp_url, s3_endpoint)
    finally:
        if node is not None:
            node.cleanup()
        if moto is not None:
            moto.stop()


@contextmanager
def running_worker(settings: Settings) -> Iterator[tuple[Worker, JewelmatchClient]]:
    """The production worker in a thread, and the client the benchmark talks to it with."""
    with opened(settings) as components:
        worker = wire_worker(settings, components)
        handlers = worker.handlers
        client = JewelmatchClient(settings.amqp)
        client.declare(worker.topology)
        thread = threading.Thread(target=worker.run, name="worker", daemon=True)
        thread.start()
        try:
            yield worker, client
        finally:
            client.close()
            worker.stop()
            thread.join(timeout=60)
            handlers.close()


def bench_s3(base: S3Settings, endpoint: str, buckets: list[str]) -> S3Settings:
    """S3 settings for a benchmark's moto server at `endpoint`, allowing `buckets`."""
    return base.model_copy(
        update={
            "backend": "s3",
            "endpoint_url": endpoint,
            "access_key_id": SecretStr("bench"),
            "secret_access_key": SecretStr("bench"),
            "allowed_buckets": buckets,
        }
    )


def _bench_settings(base: Settings, endpoints: Endpoints, workdir: Path) -> Settings:
    return base.model_copy(
        update={
            "amqp": AmqpSettings(url=SecretStr(endpoints.amqp_url)),
            "s3": bench_s3(base.s3, endpoints.s3_endpoint, [CATALOG_BUCKET, SCANS_BUCKET]),
            "index": base.index.model_copy(update={"path": workdir / "index"}),
            "ops": base.ops.model_copy(update={"http_port": 0}),
        }
    )


@contextmanager
def _bench_stack(base: Settings, amqp_url: str | None, s3_endpoint: str | None):
    """Settings for a benchmark run: the given servers or throwaway ones, and a fresh index
    in a temporary folder; all removed afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="jewelmatch-bench-") as tmp,
        servers(amqp_url, s3_endpoint, Path(tmp)) as endpoints,
    ):
        yield _bench_settings(base, endpoints, Path(tmp))


def s3_client(settings: S3Settings):
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def _upload_catalog(
    settings: Settings, data: Path, copies: int, progress: Progress
) -> list[ProductUpserted]:
    """Upload each catalog image and return `copies` product events per product."""
    s3 = s3_client(settings.s3)
    for bucket in (CATALOG_BUCKET, SCANS_BUCKET):
        s3.create_bucket(Bucket=bucket)
    dataset = read_folder_dataset(data)
    events = []
    products = [p for p in dataset.products if p.catalog]
    task = progress.add_task("uploading catalog", total=len(products))
    for product in products:
        for path in product.catalog:
            s3.put_object(
                Bucket=CATALOG_BUCKET, Key=product.object_key(path), Body=path.read_bytes()
            )
        for copy in range(copies):
            product_id = product.product_id if copy == 0 else f"{product.product_id}.copy{copy}"
            events.append(product.catalog_event(CATALOG_BUCKET, product_id=product_id))
        progress.advance(task)
    return events


def _ingest(
    client: JewelmatchClient, events: Sequence[ProductUpserted], progress: Progress, label: str
) -> float:
    """Publish all product events at once; seconds until every outcome came back."""
    task = progress.add_task(label, total=len(events))
    started = time.perf_counter()
    for event in events:
        client.publish(topology.PRODUCT_CREATED, event)
    outcomes = client.receive(
        topology.CATALOG_OUTCOMES_QUEUE,
        len(events),
        timeout=3600,
        on_each=lambda _: progress.advance(task),
    )
    return outcomes[-1].arrived - started


def run_latency(
    base: Settings,
    data: Path,
    scans: int,
    amqp_url: str | None,
    s3_endpoint: str | None,
    progress: Progress,
) -> dict:
    """Publish scans one at a time and time each until its result arrives."""
    with _bench_stack(base, amqp_url, s3_endpoint) as settings:
        events = _upload_catalog(settings, data, 1, progress)
        photos = read_folder_dataset(data).queries
        chosen: list[QueryPhoto] = list(
            itertools.islice(itertools.cycle(photos[:: max(1, len(photos) // scans)]), scans)
        )
        s3 = s3_client(settings.s3)
        for photo in {p.path: p for p in chosen}.values():
            s3.put_object(Bucket=SCANS_BUCKET, Key=photo.object_key(), Body=photo.path.read_bytes())
        with running_worker(settings) as (_, client):
            _ingest(client, events, progress, "ingesting catalog")
            for n, photo in enumerate(chosen[:5]):  # warm-up: first batches, caches
                _scan(client, f"warmup-{n}", photo)
            task = progress.add_task("scans, one at a time", total=scans)
            latencies, stages = [], {stage: [] for stage in STAGES}
            for n, photo in enumerate(chosen):
                seconds, result = _scan(client, f"scan-{n:05d}", photo)
                latencies.append(seconds * 1000)
                for stage in STAGES:
                    stages[stage].append(result.timings_ms.get(stage, 0.0))
                progress.advance(task)
    within = [sum(values) for values in zip(*stages.values(), strict=True)]
    return {
        "scans": scans,
        "end_to_end_ms": percentiles(latencies),
        "stages_ms": {stage: percentiles(values) for stage, values in stages.items()},
        "worker_stages_total_ms": percentiles(within),
        "broker_and_publish_ms": percentiles(
            [e - w for e, w in zip(latencies, within, strict=True)]
        ),
        "catalog_products": len(events),
        "model": base.model.name,
    }


def _scan(client: JewelmatchClient, scan_id: str, photo: QueryPhoto) -> tuple[float, MatchResult]:
    """Publish one scan; seconds until its result arrived, and the result."""
    started = time.perf_counter()
    client.publish(topology.BAG_PHOTOGRAPHED, photo.scan_event(scan_id, SCANS_BUCKET))
    [answer] = client.receive(topology.RESULTS_QUEUE, 1, timeout=120)
    result = answer.parse(MatchResult)
    if result.scan_id != scan_id:
        raise RuntimeError(f"expected the answer to {scan_id}, got {result.scan_id}")
    return answer.arrived - started, result


def run_throughput(
    base: Settings,
    data: Path,
    copies: int,
    amqp_url: str | None,
    s3_endpoint: str | None,
    progress: Progress,
) -> dict:
    """Catalog ingestion through the broker vs the raw forward pass on the same images."""
    with _bench_stack(base, amqp_url, s3_endpoint) as settings:
        events = _upload_catalog(settings, data, copies, progress)
        images = sum(len(event.images) for event in events)
        with running_worker(settings) as (worker, client):
            warmup = events[: min(8, len(events))]
            _ingest(
                client,
                [e.model_copy(update={"product_id": f"warmup-{e.product_id}"}) for e in warmup],
                progress,
                "warm-up",
            )
            seconds = _ingest(client, events, progress, "ingesting through the broker")
            embedder = worker.handlers.embedder
            raw = _raw_forward(embedder, settings, data, images, progress)
    pipeline_rate = images / seconds
    return {
        "images": images,
        "products": len(events),
        "pipeline_seconds": round(seconds, 2),
        "pipeline_images_per_second": pipeline_rate,
        "raw_forward_images_per_second": raw,
        "pipeline_over_raw": pipeline_rate / raw,
        "batch_size": settings.model.batch_size,
        "catalog_prefetch": settings.amqp.catalog_prefetch,
        "model": base.model.name,
    }


def _raw_forward(
    embedder, settings: Settings, data: Path, images: int, progress: Progress
) -> float:
    """Images per second of the model alone on decoded pictures (catalog view, same batch)."""
    paths = [p for product in read_folder_dataset(data).products for p in product.catalog]
    pictures = [decode_image(p.read_bytes(), settings.images) for p in paths]
    pictures = list(itertools.islice(itertools.cycle(pictures), images))
    task = progress.add_task("raw forward pass", total=len(pictures))
    started = time.perf_counter()
    for start in range(0, len(pictures), settings.model.batch_size):
        chunk = pictures[start : start + settings.model.batch_size]
        embedder.embed(chunk, ImageKind.catalog)
        progress.advance(task, len(chunk))
    return len(pictures) / (time.perf_counter() - started)


def summarize_stage_table(figures: dict) -> list[tuple[str, dict]]:
    rows = [("end to end", figures["end_to_end_ms"])]
    rows += [(stage, values) for stage, values in figures["stages_ms"].items()]
    rows.append(("broker, publish, remember", figures["broker_and_publish_ms"]))

    return rows
