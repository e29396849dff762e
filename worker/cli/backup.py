"""`jewelmatch backup` and `jewelmatch restore`: the index's images and product events, kept
without vectors in a file or an S3 object, and an index of the configured model rebuilt from
them (`worker.service.backup`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from worker.cli.service import STOP_THE_OWNER, console, image_store, index_in_service
from worker.observability.logs import load_settings

commands = typer.Typer()

Location = Annotated[
    str, typer.Argument(help="A file, or an S3 object as s3://bucket/key (the S3 settings').")
]


@commands.command()
def backup(destination: Location) -> None:
    """Back up the index in service: which S3 object each reference image is (catalog images
    and confirmed photos) and each product's last event, without vectors, gzipped. `jewelmatch
    restore` rebuilds an index of any model from it."""
    from rich.progress import Progress

    from worker.service.backup import write_backup, write_backup_file

    settings = load_settings(quiet=True)
    if not destination.startswith("s3://") and not Path(destination).parent.is_dir():
        raise typer.BadParameter(f"no such directory: {Path(destination).parent}")
    running = f"{STOP_THE_OWNER}, or let it write its own backup (JEWELMATCH_INDEX__BACKUP_FILE)"
    with index_in_service(settings, running) as index, Progress(console=console) as progress:
        task = progress.add_task("backing up", total=index.count())

        def advance(images: int) -> None:
            progress.advance(task, images)

        if destination.startswith("s3://"):
            with _uploaded(settings, destination) as stream:
                summary = write_backup(index, stream, advance)
        else:
            summary = write_backup_file(index, Path(destination), advance)
    console.print(
        f"backed up {summary.images} images and {summary.products} products' last events "
        f"of {summary.model} to {destination}"
    )


@commands.command()
def restore(
    source: Location,
    switch: Annotated[bool, typer.Option(help="Make the restored index current.")] = True,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Only check the backup and that S3 still has each of its images (no index "
            "is touched, no model loaded).",
        ),
    ] = False,
) -> None:
    """Rebuild the configured model's index from a backup: its images re-embedded from S3,
    its products' last events carried, while every worker holds catalog work. A product the
    index was told of since keeps what it was told; nothing is removed. Exit status 1 when
    an image could not be read from S3 (named in the log)."""
    from worker.service.backup import BackupError, BackupFile

    settings = load_settings(quiet=True)
    with _read(settings, source) as path:
        try:
            backup = BackupFile(path)
        except BackupError as error:
            raise typer.BadParameter(str(error).replace(str(path), source)) from None
        if check:
            _check(settings, backup, source)
        else:
            _restore(settings, backup, switch)


def _check(settings, backup, source: str) -> None:
    from rich.progress import Progress

    from worker.service.backup import check_objects

    with Progress(console=console) as progress:
        task = progress.add_task("asking S3", total=backup.summary.images)
        report = check_objects(
            backup,
            image_store(settings),
            settings.s3.fetch_threads,
            on_progress=lambda n: progress.advance(task, n),
        )
    console.print(
        f"{source}: {report.images} images of {backup.summary.model}, "
        f"{len(report.unreadable)} unreadable, {report.replaced} replaced since; "
        f"{backup.summary.products} products' last events"
    )
    for uri, why in list(report.unreadable.items())[:20]:
        console.print(f"unreadable: {why}" if uri in why else f"unreadable: {uri}: {why}")
    if report.unreadable:
        raise typer.Exit(1)


def _restore(settings, backup, switch: bool) -> None:
    from rich.progress import Progress

    from worker.index import open_index
    from worker.index.edge import IndexLockedError, make_current
    from worker.service.backup import restore as restore_index
    from worker.settings import IndexBackend
    from worker.vision.embedder import Embedder

    embedder = Embedder(settings.model)
    try:
        target = open_index(settings.index, embedder.model_id, embedder.dim)
    except IndexLockedError as error:
        raise typer.BadParameter(f"{error}: {STOP_THE_OWNER}") from None
    try:
        with Progress(console=console) as progress:
            task = progress.add_task(f"restoring for {embedder.model_id}", total=None)
            report = restore_index(
                backup,
                target,
                image_store(settings),
                embedder,
                settings.images,
                settings.model.batch_size,
                on_progress=lambda n: progress.advance(task, n),
                on_total=lambda n: progress.update(task, total=n),
                fetch_threads=settings.s3.fetch_threads,
            )
        if switch and settings.index.backend is IndexBackend.qdrant:
            target.make_current()
        elif switch:
            make_current(settings.index.path, embedder.model_id)
    finally:
        target.close()
    console.print(
        f"restored {report.reindexed} of {backup.summary.images} images for "
        f"{embedder.model_id} ({report.unchanged} already there, {report.skipped} unreadable; "
        f"{report.product_states} products' last events)" + ("; now current" if switch else "")
    )
    if report.skipped:
        raise typer.Exit(1)


def _s3_object(location: str):
    from shared.contract import S3Object

    try:
        return S3Object.model_validate(location)
    except ValueError:
        raise typer.BadParameter(f"not an s3://bucket/key location: {location}") from None


@contextmanager
def _uploaded(settings, destination: str) -> Iterator:
    """A binary stream uploaded to the S3 object `destination` once it is whole."""
    from botocore.exceptions import BotoCoreError, ClientError

    from worker.pipeline.storage import s3_client

    target = _s3_object(destination)
    with tempfile.TemporaryFile() as stream:
        yield stream
        stream.seek(0)
        try:
            s3_client(settings.s3).upload_fileobj(stream, target.bucket, target.key)
        except (BotoCoreError, ClientError) as error:
            raise typer.BadParameter(f"cannot write {destination}: {error}") from None


@contextmanager
def _read(settings, location: str) -> Iterator[Path]:
    """The backup at `location` as a local file (an S3 object is downloaded first)."""
    if not location.startswith("s3://"):
        if not Path(location).is_file():
            raise typer.BadParameter(f"no such file: {location}")
        yield Path(location)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from worker.pipeline.storage import s3_client

    source = _s3_object(location)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "backup.jsonl.gz"
        try:
            s3_client(settings.s3).download_file(source.bucket, source.key, str(path))
        except (BotoCoreError, ClientError) as error:
            raise typer.BadParameter(f"cannot read {location}: {error}") from None
        yield path
