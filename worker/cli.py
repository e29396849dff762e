"""The `jewelmatch` command (also `python -m worker`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from worker.bench.cli import bench
from worker.logs import load_settings

app = typer.Typer(
    help="jewelmatch: identify unlabelled jewels from a photo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()
app.add_typer(bench, name="bench")


@app.command()
def worker() -> None:
    """Run the worker: consume scans and catalog events until SIGTERM."""
    from worker.app import ModelNotCurrent, run_worker

    try:
        run_worker(load_settings())
    except ModelNotCurrent as error:
        console.print(f"[red]refusing to start:[/red] {error}")
        raise typer.Exit(2) from None


@app.command()
def demo(
    images: Annotated[
        Path | None,
        typer.Option(
            help="A folder data set (one folder per product, catalog_* and query_* images). "
            "Default: a generated jewelry catalog."
        ),
    ] = None,
    products: Annotated[int, typer.Option(help="Products to generate.")] = 16,
    scans_per_product: Annotated[int, typer.Option(help="Bag photos per generated product.")] = 2,
    max_scans: Annotated[int | None, typer.Option(help="Scan at most this many photos.")] = None,
    split: Annotated[str | None, typer.Option(help="Only query photos of this split.")] = None,
    show: Annotated[int, typer.Option(help="Rows of the result table to print.")] = 40,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the worker's log.")
    ] = False,
) -> None:
    """Run the whole path in-process (in-memory broker, embedded Qdrant) and print matches."""
    from worker.demo import run_demo

    run_demo(
        load_settings(quiet=not verbose),
        images,
        products,
        scans_per_product,
        max_scans,
        split,
        console,
        show,
    )


@app.command()
def ingest(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A folder data set: <product_id>/catalog_* images (query_* files are skipped)."
        ),
    ],
) -> None:
    """Add every product of a folder to the configured index, with a progress bar."""
    from worker.terminal import ingest_folder

    count = ingest_folder(load_settings(quiet=True), folder, console)
    console.print(f"ingested {count} reference images")


@app.command()
def scan(
    image: Annotated[Path, typer.Argument(help="A photo to identify.")],
    top_k: Annotated[int, typer.Option(help="Products to list.")] = 5,
    category: Annotated[str | None, typer.Option(help="Only products of this category.")] = None,
) -> None:
    """Identify one photo against the configured index and print the ranked products."""
    from worker.terminal import scan_image

    ranking, model_id = scan_image(load_settings(quiet=True), image, top_k, category)
    table = Table(title=f"{image} — {ranking.status.value} ({model_id})")
    for column in ("rank", "product", "sku", "score", "image"):
        table.add_column(column)
    for match in ranking.ranked_products():
        table.add_row(
            str(match.rank), match.product_id, match.sku, f"{match.score:.4f}", match.image_id
        )
    console.print(table)


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schema files.")] = Path("schemas"),
) -> None:
    """Write the JSON Schema of every message and the AsyncAPI 3.0 document of the whole
    contract (asyncapi.json), for integrators that are not Python."""
    import json

    from shared.asyncapi import asyncapi_document
    from shared.messages import write_json_schemas
    from worker.broker import Topology

    for path in write_json_schemas(out):
        console.print(str(path))
    settings = load_settings()
    queues = Topology.build(settings.amqp, settings.ops).all_queues()
    arguments = {queue.name: dict(queue.queue_arguments or {}) for queue in queues}
    document = out / "asyncapi.json"
    document.write_text(json.dumps(asyncapi_document(arguments), indent=2) + "\n")
    console.print(str(document))


@app.command()
def reindex(
    from_model: Annotated[str, typer.Argument(help="Model id of the index in service now.")],
    switch: Annotated[bool, typer.Option(help="Make the new index current when done.")] = True,
) -> None:
    """Re-embed the catalog (and confirmed scans) of another model's index with the configured
    model, from S3, beside the old index; then switch to it atomically."""
    from rich.progress import Progress

    from worker.embedder import Embedder
    from worker.index import open_index, stored_dimension
    from worker.index.edge import IndexLockedError, make_current
    from worker.reindex import reindex as run_reindex
    from worker.settings import IndexBackend
    from worker.storage import open_image_store

    settings = load_settings(quiet=True)
    dim = stored_dimension(settings.index, from_model)
    if dim is None:
        raise typer.BadParameter(f"no index of model {from_model!r} to re-embed")
    embedder = Embedder(settings.model)
    if embedder.model_id == from_model:
        raise typer.BadParameter("the configured model is the one in service: nothing to do")
    try:
        source = open_index(settings.index, from_model, dim)
    except IndexLockedError as error:
        raise typer.BadParameter(f"{error}: stop the worker that owns it first") from None
    target = open_index(settings.index, embedder.model_id, embedder.dim)
    store = open_image_store(settings.s3, settings.images.max_bytes)
    with Progress(console=console) as progress:
        task = progress.add_task(f"re-embedding for {target.model_id}", total=source.count())
        report = run_reindex(
            source,
            target,
            store,
            embedder,
            settings.images,
            settings.model.batch_size,
            on_progress=lambda done: progress.advance(task, done),
        )
    if switch:
        if settings.index.backend is IndexBackend.qdrant:
            target.make_current()
        else:
            make_current(settings.index.path, embedder.model_id)
    source.close()
    target.close()
    console.print(
        f"re-embedded {report.reindexed} of {report.images} images for "
        f"{embedder.model_id} ({report.skipped} skipped, {report.removed} removed)"
        + ("; now current" if switch else "")
    )


@app.command("seed-demo")
def seed_demo(
    catalog_bucket: Annotated[
        str, typer.Option(help="Bucket for catalog images.")
    ] = "catalog-images",
    scans_bucket: Annotated[str, typer.Option(help="Bucket for bag photos.")] = "scan-photos",
    products: Annotated[int, typer.Option(help="Products to generate.")] = 12,
    pim_url: Annotated[
        str | None,
        typer.Option(envvar="JEWELMATCH_SEED_PIM_URL", help="AMQP URL of the PIM's user."),
    ] = None,
    station_url: Annotated[
        str | None,
        typer.Option(
            envvar="JEWELMATCH_SEED_STATION_URL", help="AMQP URL of a scan station's user."
        ),
    ] = None,
    inventory_url: Annotated[
        str | None,
        typer.Option(
            envvar="JEWELMATCH_SEED_INVENTORY_URL",
            help="AMQP URL of the inventory system's user (reads the answers).",
        ),
    ] = None,
) -> None:
    """Against a running stack: upload the demo catalog to S3, publish its events as the PIM
    and a scan station would (each as its own AMQP user; default: JEWELMATCH_AMQP__URL),
    and print the answers (docker compose runs this once)."""
    from worker.seed import RoleUrls
    from worker.seed import seed_demo as run_seed

    settings = load_settings()
    default = settings.amqp.url.get_secret_value()
    urls = RoleUrls(pim_url or default, station_url or default, inventory_url or default)
    run_seed(settings, catalog_bucket, scans_bucket, products, console, urls)


@app.command("rabbitmq-definitions")
def rabbitmq_definitions(
    out: Annotated[Path, typer.Option(help="Definitions file to write.")] = Path(
        "deploy/rabbitmq/definitions.json"
    ),
) -> None:
    """Write RabbitMQ definitions (exchanges, quorum queues, users and their permissions)
    matching the worker. Passwords come from JEWELMATCH_RABBITMQ_PASSWORD_<USER> variables;
    users without one are written without a password (no login until one is set)."""
    from worker.definitions import ROLES, passwords_from_environment, write_definitions

    passwords = passwords_from_environment()
    for user in sorted(set(ROLES) - set(passwords)):
        console.print(f"[yellow]{user}: no password set, cannot log in[/yellow]")
    console.print(str(write_definitions(out, passwords)))


@app.command("prepare-model")
def prepare_model() -> None:
    """Prepare the configured built-in model's open_clip folder (e.g. at image build time)."""
    from worker.embedder import Embedder

    embedder = Embedder(load_settings().model)
    console.print(f"{embedder.model_id}: {embedder.dim}-d, loaded in {embedder.load_seconds:.1f} s")


if __name__ == "__main__":
    app()
