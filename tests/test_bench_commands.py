"""The benchmark commands whose figures the docs quote (`jewelmatch bench latency`,
`throughput`, `scale`, `models`), run small on the tiny model: each measures what its table
and JSON file name. Their figures are the benchmarks' business, not these tests'."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.tiny_model import use_tiny_model
from worker.cli import app
from worker.tools.synthetic import write_catalog

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny(tmp_path, tiny_model_dir, monkeypatch):
    """The tiny model configured as a terminal would, and a three-product folder data set."""
    use_tiny_model(monkeypatch, tiny_model_dir)
    data = tmp_path / "data"
    write_catalog(data, count=3, scans_per_product=1)
    return data


def bench(*arguments: str) -> tuple[str, dict]:
    """Run `jewelmatch bench ...`; its printed output and the figures of its JSON file."""
    result = CliRunner().invoke(app, ["bench", *arguments])
    assert result.exit_code == 0, result.output
    out = arguments[arguments.index("--out") + 1]
    document = json.loads(Path(out).read_text())
    assert document["command"].startswith("jewelmatch ")
    return result.output, document["figures"]


def test_latency_times_each_scan_by_stage_on_each_runtime_asked(tiny, tmp_path):
    out = str(tmp_path / "latency.json")
    options = ["--data", str(tiny), "--scans", "4", "--runtimes", "torch,openvino"]
    started = time.monotonic()
    printed, figures = bench("latency", *options, "--out", out)
    elapsed_ms = (time.monotonic() - started) * 1000
    for runtime in ("torch", "openvino"):
        assert f"Scan latency on {runtime}, 4 scans one at a time (ms)" in printed
        run = figures["runtimes"][runtime]
        assert (run["scans"], run["catalog_products"]) == (4, 3)
        assert list(run["stages_ms"]) == ["fetch", "decode", "embed", "detail", "query"]
        embed = run["stages_ms"]["embed"]
        assert 0 < embed["p50"] <= embed["p95"] <= embed["p99"] <= embed["max"]
        # each scan's time end to end holds the worker's stages and the broker's share
        end_to_end, within = run["end_to_end_ms"], run["worker_stages_total_ms"]
        assert elapsed_ms > end_to_end["max"] >= within["max"] >= embed["max"]
        assert run["broker_and_publish_ms"]["p50"] > 0
        assert end_to_end["p50"] >= run["broker_and_publish_ms"]["p50"]
    assert re.search(r"embed p50 on openvino: \d+\.\d\d× torch's", printed)


def test_throughput_sets_the_pipeline_beside_the_raw_forward_pass(tiny, tmp_path):
    out = str(tmp_path / "throughput.json")
    started = time.monotonic()
    printed, figures = bench("throughput", "--data", str(tiny), "--copies", "2", "--out", out)
    elapsed = time.monotonic() - started
    assert "Catalog ingestion" in printed
    assert figures["images"] == 3 * 2 and figures["products"] == 3 * 2
    assert 0 < figures["pipeline_seconds"] < elapsed and figures["batch_size"] >= 1
    rate = figures["pipeline_images_per_second"]
    assert figures["images"] / rate == pytest.approx(figures["pipeline_seconds"], abs=0.006)
    assert figures["raw_forward_images_per_second"] > figures["images"] / elapsed
    assert figures["pipeline_images_per_second"] > 0
    assert figures["raw_forward_images_per_second"] > 0
    ratio = figures["pipeline_images_per_second"] / figures["raw_forward_images_per_second"]
    assert figures["pipeline_over_raw"] == pytest.approx(ratio, rel=1e-3)


def test_scale_measures_exact_and_hnsw_search_and_the_local_mode(tiny, tmp_path):
    out = str(tmp_path / "scale.json")
    options = ["--sizes", "300", "--kinds", "random,real", "--data", str(tiny)]
    options += ["--real-photos", "6", "--queries", "5", "--hnsw", "8:32", "--ef", "16"]
    options += ["--hnsw-max-size", "300", "--local-mode-max-size", "300", "--out", out]
    printed, figures = bench("scale", *options)
    assert "Grouped top-10 query on the embedded engine" in printed
    rows = {row["kind"]: row for row in figures["results"]}
    assert sorted(rows) == ["random", "real"] and {r["size"] for r in rows.values()} == {300}
    for row in rows.values():
        edge = row["edge"]
        assert edge["exact_query_ms"]["p50"] > 0 and edge["insert_points_per_second"] > 0
        [hnsw] = edge["hnsw"]
        assert hnsw["hnsw_ef"] == 16 and 0.0 <= hnsw["recall@10"] <= 1.0
        assert row["qdrant_client_local"]["query_ms"]["p50"] > 0


def test_models_compares_accuracy_and_speed_on_the_same_protocol(tiny, tmp_path, tiny_model_dir):
    out = str(tmp_path / "models.json")
    name = f"local-dir:{tiny_model_dir}"
    options = ["--data", str(tiny), "--names", name, "--confirmed", "0", "--split", ""]
    printed, figures = bench("models", *options, "--out", out)
    assert f"Models on {tiny}" in printed
    [row] = figures["models"]
    assert row["model"] == name and row["runtime"]
    [run] = row["runs"]
    assert run["confirmed_per_product"] == 0 and 0.0 <= run["recall@1"] <= 1.0
    assert row["scan_embed_ms"]["p50"] > 0 and row["catalog_images_per_second"] > 0


def test_throughput_ingests_each_copy_as_a_product_of_its_own(tmp_path, s3):
    """Copies share the catalog image but not the product: a product sent again with the
    images it has would be answered without embedding them, and the figure would be a
    broker's, not a worker's."""
    from rich.progress import Progress

    from worker.settings import Settings
    from worker.tools.bench.pipeline import CATALOG_BUCKET, _upload_catalog, bench_s3

    data = tmp_path / "data"
    write_catalog(data, count=2, scans_per_product=0)
    base = Settings(_env_file=None)
    endpoint = s3.meta.endpoint_url
    settings = base.model_copy(update={"s3": bench_s3(base.s3, endpoint, [CATALOG_BUCKET])})
    with Progress(disable=True) as progress:
        events = _upload_catalog(settings, data, 3, progress)
    ids = [event.product_id for event in events]
    assert ids == ["p001", "p001.copy1", "p001.copy2", "p002", "p002.copy1", "p002.copy2"]
    assert {event.images[0].key for event in events} == {"p001/catalog_0.png", "p002/catalog_0.png"}
    stored = s3.list_objects_v2(Bucket=CATALOG_BUCKET)["Contents"]
    assert sorted(o["Key"] for o in stored) == ["p001/catalog_0.png", "p002/catalog_0.png"]
