"""Commands for trying the system and working with folder data sets: the in-process demo,
ingesting a folder, identifying one photo, seeding a running stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from worker.cli.output import plain_console
from worker.observability.logs import load_settings

commands = typer.Typer()
console = plain_console()
errors = plain_console(stderr=True)


@commands.command()
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
    from worker.tools.demo import run_demo

    run_demo(
        load_settings(quiet=not verbose),
        console,
        images,
        products,
        scans_per_product,
        max_scans,
        split,
        show,
    )


@commands.command()
def ingest(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A folder data set: <product_id>/catalog_* images (query_* files are skipped).",
            exists=True,
            file_okay=False,
        ),
    ],
) -> None:
    """Add every product of a folder to the configured index, with a progress bar. An image
    that does not decode is named and left out, the rest stored; the exit status is then 1."""
    from worker.tools.terminal import ingest_folder

    count, unreadable = ingest_folder(load_settings(quiet=True), folder, console)
    console.print(f"ingested {count} reference images")
    for path, why in unreadable.items():
        errors.print(f"left out {path}: {why}")
    if unreadable:
        errors.print(f"{len(unreadable)} images left out")
        raise typer.Exit(1)


@commands.command()
def scan(
    image: Annotated[
        Path, typer.Argument(help="A photo to identify.", exists=True, dir_okay=False)
    ],
    top_k: Annotated[int, typer.Option(help="Products to list.")] = 5,
    category: Annotated[str | None, typer.Option(help="Only products of this category.")] = None,
    folder: Annotated[
        Path | None,
        typer.Option(
            help="The folder `jewelmatch ingest` read: the detail stage compares the photo "
            "with its candidates' images there (without it, it does not act)."
        ),
    ] = None,
) -> None:
    """Identify one photo against the configured index and print the ranked products."""
    from worker.errors import PermanentError
    from worker.tools.terminal import scan_image

    try:
        ranking, model_id = scan_image(load_settings(quiet=True), image, top_k, category, folder)
    except PermanentError as error:
        errors.print(f"cannot scan {image}: {error.detail}")
        raise typer.Exit(1) from None
    table = Table(title=f"{image} — {ranking.status.value} ({model_id})")
    for column in ("rank", "product", "sku", "score", "image"):
        table.add_column(column)
    for match in ranking.ranked_products():
        table.add_row(
            str(match.rank), match.product_id, match.sku, f"{match.score:.4f}", match.image_id
        )
    console.print(table)


@commands.command("seed-demo")
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
    from worker.amqp.broker import BROKER_ERRORS, broker_address
    from worker.errors import StartupError
    from worker.tools.seed import RoleUrls
    from worker.tools.seed import seed_demo as run_seed

    settings = load_settings()
    default = settings.amqp.url.get_secret_value()
    urls = RoleUrls(pim_url or default, station_url or default, inventory_url or default)
    try:
        run_seed(settings, catalog_bucket, scans_bucket, products, console, urls)
    except BROKER_ERRORS as error:
        raise StartupError(
            f"cannot publish through the broker at {broker_address(settings.amqp)}: "
            f"{error or type(error).__name__} (JEWELMATCH_AMQP__URL, JEWELMATCH_SEED_*_URL)"
        ) from None
