"""Bounded resources: whatever a worker is sent, it stays inside its stated memory budget and
answers at once. A real worker process, a real RabbitMQ node and moto's S3 server."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from shared import topology
from shared.contract import BagPhotographed, FailureReason, MatchResult
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET
from tests.support.pictures import png_header_only
from tests.support.processes import WorkerProcess, worker_environment
from worker.amqp.client import JewelmatchClient

pytestmark = pytest.mark.integration

PEAK_GROWTH_BUDGET = 512 * 1024 * 1024
"""What docs/operations.md promises: a worker's peak memory grows by less than this above
the process at rest, whatever it is sent (measured 247 to 316 MiB; the process at rest, with
PyTorch loaded, took 0.86 to 1.05 GiB depending on the environment)."""


def declared_png(width: int, height: int) -> bytes:
    return png_header_only(width, height, colour_type=6)  # RGBA: the most bytes per pixel


def declared(fmt: str, width: int, height: int) -> bytes:
    """A real, highly compressed picture of width × height (a few kilobytes for 40 MP)."""
    buffer = io.BytesIO()
    options = {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
    Image.new("L", (width, height), 7).save(buffer, fmt, **options)
    return buffer.getvalue()


BOMBS = Path(__file__).parent / "data" / "bombs"
"""WebP bombs made once by Pillow (encoding them inside a process that holds torch crashed
libwebp here): 1.5 KB declaring 6300 × 6300, and a 4900 × 4900 one cut short."""


def declared_webp(width: int, height: int) -> bytes:
    return (BOMBS / "webp-6300x6300.webp").read_bytes()


def near_limit(fmt: str, side: int, cut: bool = True) -> bytes:
    """A lossless picture just under the pixel limit, cut short (the decoder allocates the
    whole picture before it finds out) or whole (decoded in full, then reduced)."""
    if fmt == "WEBP":
        return (BOMBS / "webp-4900x4900-cut.webp").read_bytes()
    buffer = io.BytesIO()
    options = {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
    Image.new("RGBA" if fmt == "PNG" else "RGB", (side, side), (40, 90, 160, 255)).save(
        buffer, fmt, **options
    )
    data = buffer.getvalue()
    return data[: len(data) * 9 // 10] if cut else data


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def test_thirty_two_bombs_in_one_batch_stay_inside_the_memory_budget(
    tmp_path, tiny_model_dir, amqp_url, s3_endpoint, s3
):
    side = 4900  # 24 megapixels: just under the default limit of 25
    makers = {
        "png": (declared_png, "PNG"),
        "gif": (lambda w, h: declared("GIF", w, h), "GIF"),
        "webp": (declared_webp, "WEBP"),
        "tiff": (lambda w, h: declared("TIFF", w, h), "TIFF"),
    }
    keys = []
    for name, (make, fmt) in makers.items():
        near = near_limit(fmt, side)
        for n in range(4):
            bomb = make(6_300 + n, 6_300)  # 40 megapixels, over the limit of 25
            s3.put_object(Bucket=SCANS_BUCKET, Key=f"{name}-declared-{n}", Body=bomb)
            s3.put_object(Bucket=SCANS_BUCKET, Key=f"{name}-near-{n}", Body=near)
            keys += [f"{name}-declared-{n}", f"{name}-near-{n}"]
    whole = []  # pictures just under the limit that decode in full, in the same batch
    for fmt in ("PNG", "GIF", "TIFF", "JPEG"):
        for n in range(2):
            key = f"whole-{fmt.lower()}-{n}"
            s3.put_object(Bucket=SCANS_BUCKET, Key=key, Body=near_limit(fmt, side, cut=False))
            whole.append(key)
    env = worker_environment(
        amqp_url=amqp_url,
        s3_endpoint=s3_endpoint,
        buckets=[CATALOG_BUCKET, SCANS_BUCKET],
        index_path=tmp_path / "index",
        model_dir=tiny_model_dir,
        JEWELMATCH_MODEL__BATCH_SIZE="40",
        JEWELMATCH_AMQP__SCAN_PREFETCH="40",
        JEWELMATCH_S3__FETCH_THREADS="40",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    peer = JewelmatchClient(amqp_url)
    try:
        worker.wait_ready()
        before = peak_rss(worker.process.pid)
        started = time.monotonic()
        for key in keys + whole:
            scan = BagPhotographed(scan_id=key, image={"bucket": SCANS_BUCKET, "key": key})
            peer.publish(topology.BAG_PHOTOGRAPHED, scan)
        answers = [
            MatchResult.model_validate_json(m.body)
            for m in peer.receive(topology.RESULTS_QUEUE, len(keys) + len(whole), timeout=120)
        ]
        seconds = time.monotonic() - started
        peak = peak_rss(worker.process.pid)
    finally:
        peer.close()
        worker.stop()
    by_scan = {answer.scan_id: answer for answer in answers}
    assert set(by_scan) == set(keys) | set(whole)
    assert [(k, by_scan[k].reason, by_scan[k].detail) for k in whole if by_scan[k].reason] == []
    for key in keys:
        answer = by_scan[key]
        expected = (
            FailureReason.image_too_large if "declared" in key else FailureReason.image_unreadable
        )
        assert answer.reason is expected, (key, answer.reason, answer.detail)
        assert answer.timings_ms.get("decode", 0) < 10_000  # at once, never retried
    print(f"peak RSS {peak / 2**20:.0f} MiB (ready: {before / 2**20:.0f} MiB), {seconds:.1f} s")
    assert peak - before < PEAK_GROWTH_BUDGET
