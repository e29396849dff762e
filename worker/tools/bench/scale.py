"""Index scale: grouped-query latency, insert rate, memory, reopen time and HNSW recall.

Vectors of the model's dimension, of three kinds:
* `random`: independent Gaussian directions (the hardest case for HNSW);
* `clustered`: families of look-alike products, a few near-duplicate images each;
* `real`: real embeddings of a folder data set's photos, replicated with small
  perturbations to reach the size (needs `--data`).
Each product has `images_per_product` images; queries are perturbed copies of stored images.
Recall is grouped recall@10 against exact search: the share of the exact top-10 products that
the approximate search also returns.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from worker.index import ReferenceImage
from worker.index.edge import EdgeIndex
from worker.settings import IndexSettings
from worker.tools.bench.recall import percentiles

TOP_PRODUCTS = 10


@dataclass(frozen=True)
class HnswConfig:
    m: int
    ef_construct: int
    quantization: str = "none"

    @property
    def label(self) -> str:
        quantized = " int8" if self.quantization == "int8" else ""
        return f"hnsw m{self.m}/{self.ef_construct}{quantized}"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def make_vectors(
    kind: str,
    size: int,
    dim: int,
    images_per_product: int,
    rng: np.random.Generator,
    real: np.ndarray | None = None,
) -> np.ndarray:
    """`size` unit vectors, consecutive runs of `images_per_product` per product."""
    products = size // images_per_product
    if kind == "random":
        return _unit(rng.standard_normal((size, dim), dtype=np.float32))
    if kind == "clustered":
        families = max(1, products // 8)
        family = _unit(rng.standard_normal((families, dim), dtype=np.float32))
        product = _unit(
            family[rng.integers(0, families, products)]
            + 0.35 * _unit(rng.standard_normal((products, dim), dtype=np.float32))
        )
    elif kind == "real":
        assert real is not None and len(real), "real vectors need --data"
        product = _unit(
            real[rng.integers(0, len(real), products)]
            + 0.08 * _unit(rng.standard_normal((products, dim), dtype=np.float32))
        )
    else:
        raise ValueError(f"unknown kind {kind!r}")
    images = np.repeat(product, images_per_product, axis=0)
    for start in range(0, len(images), 65_536):  # in place, a block at a time: 1M x 1280 fits
        block = images[start : start + 65_536]
        block += 0.15 * _unit(rng.standard_normal(block.shape, dtype=np.float32))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return images


def _queries(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picked = vectors[rng.integers(0, len(vectors), count)]
    noise = _unit(rng.standard_normal(picked.shape, dtype=np.float32))
    return _unit(picked + 0.2 * noise)


def _timed_queries(index: EdgeIndex, queries: np.ndarray) -> tuple[list[list[str]], dict]:
    found, latencies = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(query[None, :], TOP_PRODUCTS)[0]
        latencies.append((time.perf_counter() - started) * 1000)
        found.append([hit.product_id for hit in hits])
    return found, percentiles(latencies, (50, 95))


def _recall(approximate: Sequence[list[str]], exact: Sequence[list[str]]) -> float:
    shares = [len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact, strict=True) if e]
    return float(np.mean(shares)) if shares else float("nan")


def _fill(
    index: EdgeIndex, vectors: np.ndarray, images_per_product: int, progress: Progress, label: str
) -> float:
    """Insert in batches; returns points per second."""
    task = progress.add_task(label, total=len(vectors))
    started = time.perf_counter()
    batch = 1000
    for start in range(0, len(vectors), batch):
        index.upsert(
            [
                ReferenceImage(
                    product_id=f"p{row // images_per_product}",
                    image_id=f"i{row}",
                    sku=f"p{row // images_per_product}",
                    vector=vectors[row],
                )
                for row in range(start, min(start + batch, len(vectors)))
            ]
        )
        progress.advance(task, min(batch, len(vectors) - start))
    return len(vectors) / (time.perf_counter() - started)


def measure_edge(
    vectors: np.ndarray,
    queries: np.ndarray,
    images_per_product: int,
    configs: Sequence[HnswConfig],
    efs: Sequence[int],
    hnsw: bool,
    progress: Progress,
    workdir: Path,
) -> dict:
    """One size × kind on the embedded engine: exact first, then each HNSW configuration."""
    dim = vectors.shape[1]
    rows: dict = {"hnsw": []}
    for n, config in enumerate(configs if hnsw else configs[:1]):
        settings = IndexSettings(
            path=workdir / f"edge-{n}",
            hnsw_m=config.m,
            hnsw_ef_construct=config.ef_construct,
            quantization=config.quantization,
            exact_search_max_points=len(vectors) + 1,
        )
        gc.collect()
        before = rss_mib()
        index = EdgeIndex(settings, "bench", dim)
        insert_rate = _fill(
            index, vectors, images_per_product, progress, f"insert {len(vectors)} ({config.label})"
        )
        if n == 0:
            rows["insert_points_per_second"] = insert_rate
            rows["rss_growth_mib"] = rss_mib() - before
            exact, rows["exact_query_ms"] = _timed_queries(index, queries)
            index.close()
            started = time.perf_counter()
            index = EdgeIndex(settings, "bench", dim)
            rows["reopen_seconds"] = time.perf_counter() - started
        if not hnsw:
            index.close()
            break
        started = time.perf_counter()
        index.optimize()
        build = time.perf_counter() - started
        index.close()
        index = EdgeIndex(settings.model_copy(update={"exact_search_max_points": 0}), "bench", dim)
        for ef in efs:
            index.configure_search(hnsw_ef=ef)
            approximate, latency = _timed_queries(index, queries)
            rows["hnsw"].append(
                {
                    "config": config.label,
                    "build_seconds": build,
                    "hnsw_ef": ef,
                    "query_ms": latency,
                    "recall@10": _recall(approximate, exact),
                }
            )
        index.close()
    return rows


def measure_qdrant_local(
    vectors: np.ndarray, queries: np.ndarray, images_per_product: int, progress: Progress
) -> dict:
    """The same grouped query through qdrant-client's local mode (the server's stand-in)."""
    from worker.index.server import QdrantServerIndex

    index = QdrantServerIndex(
        IndexSettings(backend="qdrant", url=":memory:"), "bench", vectors.shape[1]
    )
    rate = _fill(
        index,
        vectors,
        images_per_product,
        progress,  # type: ignore[arg-type]
        f"insert {len(vectors)} (qdrant-client local mode)",
    )
    _, latency = _timed_queries(index, queries)  # type: ignore[arg-type]
    index.close()
    return {"insert_points_per_second": rate, "query_ms": latency, "queries": len(queries)}


def run_scale(
    sizes: Sequence[int],
    kinds: Sequence[str],
    dim: int,
    images_per_product: int,
    query_count: int,
    configs: Sequence[HnswConfig],
    efs: Sequence[int],
    hnsw_max_size: int,
    local_mode_max_size: int,
    real: np.ndarray | None,
    progress: Progress,
    seed: int = 0,
) -> dict:
    results = []
    for size in sizes:
        for kind in kinds:
            rng = np.random.default_rng(seed)
            vectors = make_vectors(kind, size, dim, images_per_product, rng, real)
            queries = _queries(vectors, query_count, rng)
            with tempfile.TemporaryDirectory(prefix="jewelmatch-scale-") as tmp:
                row = {
                    "size": size,
                    "kind": kind,
                    "dim": dim,
                    "edge": measure_edge(
                        vectors,
                        queries,
                        images_per_product,
                        configs,
                        efs,
                        size <= hnsw_max_size,
                        progress,
                        Path(tmp),
                    ),
                }
            if size <= local_mode_max_size:
                row["qdrant_client_local"] = measure_qdrant_local(
                    vectors, queries[: max(5, query_count // 20)], images_per_product, progress
                )
            results.append(row)
            del vectors
            gc.collect()
    return {
        "top_products": TOP_PRODUCTS,
        "images_per_product": images_per_product,
        "queries": query_count,
        "results": results,
    }
