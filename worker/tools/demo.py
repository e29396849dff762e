"""`jewelmatch demo`: the whole path on embedded defaults, nothing to install or run.

kombu's in-memory transport stands in for RabbitMQ, a folder for S3 and the embedded Qdrant
engine (in a temporary directory) for the index. The worker itself is the production one:
it consumes product.created events, then bag.photographed events, and publishes results
that the demo reads from the results queue and prints.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from shared import topology
from shared.contract import (
    MatchResult,
)
from worker.amqp.broker import RESULTS
from worker.amqp.client import JewelmatchClient, Received
from worker.service.app import opened, wire_worker
from worker.settings import AmqpSettings, IndexSettings, OpsSettings, S3Settings, Settings
from worker.tools.folders import FolderDataset, QueryPhoto, read_folder_dataset
from worker.tools.synthetic import write_catalog

CATALOG_BUCKET = "catalog"
SCANS_BUCKET = "scans"


@dataclass(frozen=True)
class DemoReport:
    results: list[tuple[QueryPhoto, MatchResult]]

    @property
    def correct(self) -> int:
        return sum(
            1
            for query, result in self.results
            if result.matches and result.matches[0].product_id == query.product_id
        )

    @property
    def last_line(self) -> str:
        return f"demo: {self.correct}/{len(self.results)} scans ranked the right product first"


def demo_settings(base: Settings, workdir: Path, dataset_root: Path) -> Settings:
    """Embedded defaults: in-memory broker, the data set folder as both buckets, a fresh index."""
    buckets = workdir / "buckets"
    buckets.mkdir(parents=True, exist_ok=True)
    for bucket in (CATALOG_BUCKET, SCANS_BUCKET):
        (buckets / bucket).symlink_to(dataset_root.resolve(), target_is_directory=True)
    return base.model_copy(
        update={
            "amqp": AmqpSettings(url=SecretStr("memory://"), heartbeat_seconds=0),
            "s3": S3Settings(
                backend="local", local_root=buckets, allowed_buckets=[CATALOG_BUCKET, SCANS_BUCKET]
            ),
            "index": base.index.model_copy(
                update={"path": workdir / "index", "backend": IndexSettings().backend}
            ),
            "ops": OpsSettings(http_port=0),
        }
    )


def _select_queries(
    dataset: FolderDataset, max_scans: int | None, split: str | None
) -> list[QueryPhoto]:
    """All queries, or `max_scans` of them taken round-robin over products."""
    per_product = [[q for q in p.queries if split in (None, "", q.split)] for p in dataset.products]
    chosen: list[QueryPhoto] = []
    depth = 0
    while any(depth < len(queries) for queries in per_product):
        for queries in per_product:
            if depth < len(queries):
                chosen.append(queries[depth])
        depth += 1
    return chosen[:max_scans] if max_scans else chosen


def _purge(connection, topo) -> None:
    """Empty the demo's queues first: the in-memory broker is the process's, and messages
    another run left there (its outcomes, its answers) would be counted as this one's."""
    with connection.channel() as channel:
        for queue in (topo.scans, topo.catalog, topo.results, topo.catalog_outcomes):
            channel.queue_purge(queue.name)


def _wait(
    client: JewelmatchClient,
    queue: str,
    count: int,
    progress: Progress,
    label: str,
    worker_thread: threading.Thread,
) -> list[Received]:
    """Take `count` answers off `queue`, with a progress bar; give up if the worker died."""
    task = progress.add_task(label, total=count)

    def worker_gone(taken: list[Received]) -> bool:
        if not worker_thread.is_alive():
            raise RuntimeError("the worker stopped before all answers arrived")
        return False

    return client.receive(
        queue,
        count,
        until=worker_gone,
        timeout=3600,
        on_each=lambda _: progress.advance(task),
    )


def run_demo(
    base: Settings,
    console: Console,
    images: Path | None = None,
    products: int = 16,
    scans_per_product: int = 2,
    max_scans: int | None = None,
    split: str | None = None,
    show: int = 40,
) -> DemoReport:
    with tempfile.TemporaryDirectory(prefix="jewelmatch-demo-") as tmp:
        workdir = Path(tmp)
        if images is None:
            images = workdir / "generated"
            write_catalog(images, products, scans_per_product)
            console.print(
                f"Generated a catalog of {products} look-alike rings and pendants, "
                f"{scans_per_product} bag photos each."
            )
        dataset = read_folder_dataset(images)
        queries = _select_queries(dataset, max_scans, split)
        settings = demo_settings(base, workdir, dataset.root)
        with opened(settings) as components:
            worker = wire_worker(settings, components)
            worker_thread = threading.Thread(target=worker.run, name="worker", daemon=True)
            with JewelmatchClient(settings.amqp) as client, Progress(console=console) as progress:
                client.declare(worker.topology)
                client.run(lambda connection: _purge(connection, worker.topology))
                worker_thread.start()
                catalog = [p for p in dataset.products if p.catalog]
                for product in catalog:
                    client.publish(topology.PRODUCT_CREATED, product.catalog_event(CATALOG_BUCKET))
                _wait(
                    client,
                    topology.CATALOG_OUTCOMES_QUEUE,
                    len(catalog),
                    progress,
                    "ingesting catalog",
                    worker_thread,
                )
                for n, query in enumerate(queries):
                    client.publish(
                        topology.BAG_PHOTOGRAPHED, query.scan_event(f"scan-{n:05d}", SCANS_BUCKET)
                    )
                answers = _wait(
                    client,
                    topology.RESULTS_QUEUE,
                    len(queries),
                    progress,
                    "matching scans",
                    worker_thread,
                )
            worker.stop()
            worker_thread.join(timeout=30)
            worker.handlers.close()
        results = {r.scan_id: r for r in (m.parse(MatchResult) for m in answers)}
        report = DemoReport([(q, results[f"scan-{n:05d}"]) for n, q in enumerate(queries)])
    _print_report(report, console, show, RESULTS.name)
    return report


def _print_report(report: DemoReport, console: Console, show: int, exchange: str) -> None:
    table = Table(title=f"Ranked matches (top 3 of 5) published on {exchange}")
    for column in ("#", "photo of", "answer", "1st", "2nd", "3rd", "right at"):
        table.add_column(column, overflow="fold")
    status = {"matched": "matched", "no_confident_match": "not sure", "failed": "failed"}
    for n, (query, result) in enumerate(report.results[:show], start=1):
        ranks = [m.product_id for m in result.matches]
        cells = [f"{m.product_id} {m.score:.2f}" for m in result.matches[:3]]
        cells += [""] * (3 - len(cells))
        at = ranks.index(query.product_id) + 1 if query.product_id in ranks else None
        right_at = Text("1 ✓", "green") if at == 1 else Text(str(at), "yellow")
        mark = right_at if at else Text("-", "red")
        table.add_row(str(n), query.product_id, status[result.status.value], *cells, mark)

    console.print(table)
    if len(report.results) > show:
        console.print(f"({len(report.results) - show} more scans not shown; --show N)")
    top5 = sum(
        1 for q, r in report.results if q.product_id in [m.product_id for m in r.matches[:5]]
    )
    console.print(f"right product in the top 5: {top5}/{len(report.results)}")
    console.print(report.last_line)
