"""The production commands: run the worker, write the contract's schemas and the broker's
definitions, prepare the model, re-embed under a new model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from worker.errors import StartupError
from worker.observability.logs import load_settings

commands = typer.Typer()
console = Console()


@commands.command()
def worker() -> None:
    """Run the worker: consume scans and catalog events until SIGTERM.

    Settings come from JEWELMATCH_* environment variables (or a .env file); the ones most
    often set:

    \b
      JEWELMATCH_AMQP__URL            the broker, amqp://USER:PASSWORD@HOST:5672/VHOST
      JEWELMATCH_S3__ENDPOINT_URL     any S3-compatible store (unset: AWS)
      JEWELMATCH_S3__ALLOWED_BUCKETS  the only buckets ever fetched
      JEWELMATCH_MODEL__NAME          the image model (default: the built-in ensemble)
      JEWELMATCH_INDEX__BACKEND       `edge` (embedded, default) or `qdrant` (a server)
      JEWELMATCH_OPS__HTTP_PORT       probes and /metrics (8080)

    Every setting, its default and meaning: docs/settings.md."""
    from worker.service.app import run_worker

    run_worker(load_settings())


@commands.command()
def review(
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Try the desk on this machine, nothing else needed but Debian's "
            "rabbitmq-server: its own broker node, a worker, seeded scans; Ctrl-C stops it.",
        ),
    ] = False,
) -> None:
    """Run the review desk: a web app where the warehouse confirms or corrects matches and
    ops see dead letters, queue depths and each worker's readiness.

    Settings come from JEWELMATCH_* environment variables (or a .env file); the ones most
    often set:

    \b
      JEWELMATCH_REVIEW__USERS              who signs in: JSON list of name, role, password_hash
      JEWELMATCH_REVIEW__SESSION_SECRET     signs session cookies (32 bytes or more)
      JEWELMATCH_REVIEW__TRUSTED_USER_HEADER and JEWELMATCH_REVIEW__TRUSTED_PROXIES
                                            sign-in by a reverse proxy instead
      JEWELMATCH_REVIEW__HOST, __PORT       where it listens (127.0.0.1:8000)
      JEWELMATCH_REVIEW__WORKER_URLS        each worker's ops endpoint
      JEWELMATCH_AMQP__URL                  the broker, as the desk's own user

    Every setting, its default and meaning: docs/settings.md."""
    if demo:
        from worker.tools.review_demo import run_review_demo

        review = load_settings().review  # logging as configured; where to listen
        run_review_demo(console, review.host, review.port)
        return
    from worker.review.web import serve

    serve(load_settings())


def read_password() -> str:
    """From a prompt without echo, asked twice, on a terminal; else the first line of
    standard input (`echo ... | jewelmatch hash-password`). Never from the command line,
    where process lists and shell histories would keep it."""
    import getpass
    import sys

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise StartupError("the two passwords differ: nothing hashed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise StartupError("an empty password: nothing hashed")
    return password


@commands.command("hash-password")
def hash_password() -> None:
    """Hash a review desk password for JEWELMATCH_REVIEW__USERS (scrypt). It is read from a
    prompt (no echo, asked twice) or from standard input when that is not a terminal."""
    from worker.review.auth import hash_password as scrypt_hash

    print(scrypt_hash(read_password()))


@commands.command()
def schema(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schema files.")] = Path("schemas"),
) -> None:
    """Write the JSON Schema of every message and the AsyncAPI 3.0 document of the whole
    contract (asyncapi.json), for integrators that are not Python."""
    import json

    from shared.asyncapi import asyncapi_document
    from shared.messages import write_json_schemas
    from worker.amqp.broker import Topology

    for path in write_json_schemas(out):
        console.print(str(path))
    settings = load_settings()
    queues = Topology.build(settings.amqp, settings.ops).all_queues()
    arguments = {queue.name: dict(queue.queue_arguments or {}) for queue in queues}
    document = out / "asyncapi.json"
    document.write_text(json.dumps(asyncapi_document(arguments), indent=2) + "\n")
    console.print(str(document))


@commands.command()
def reindex(
    from_model: Annotated[str, typer.Argument(help="Model id of the index in service now.")],
    switch: Annotated[bool, typer.Option(help="Make the new index current when done.")] = True,
) -> None:
    """Re-embed the catalog (and confirmed scans) of another model's index with the configured
    model, from S3, beside the old index; then switch to it atomically."""
    from rich.progress import Progress

    from worker.index import open_index, stored_dimension
    from worker.index.edge import IndexLockedError, make_current
    from worker.pipeline.storage import open_image_store
    from worker.service.reindex import reindex as run_reindex
    from worker.settings import IndexBackend
    from worker.vision.embedder import Embedder

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


@commands.command("rabbitmq-definitions")
def rabbitmq_definitions(
    out: Annotated[Path, typer.Option(help="Definitions file to write.")] = Path(
        "deploy/rabbitmq/definitions.json"
    ),
) -> None:
    """Write RabbitMQ definitions (exchanges, quorum queues, users and their permissions)
    matching the worker. Passwords come from JEWELMATCH_RABBITMQ_PASSWORD_<USER> variables;
    users without one are written without a password (no login until one is set)."""
    from worker.amqp.definitions import ROLES, passwords_from_environment, write_definitions

    passwords = passwords_from_environment()
    for user in sorted(set(ROLES) - set(passwords)):
        console.print(f"[yellow]{user}: no password set, cannot log in[/yellow]")
    console.print(str(write_definitions(out, passwords)))


@commands.command("prepare-model")
def prepare_model() -> None:
    """Prepare the configured model: a built-in model's open_clip folder and, for the
    onnxruntime and openvino runtimes, its ONNX export (e.g. at image build time)."""
    from worker.vision.embedder import Embedder

    embedder = Embedder(load_settings().model)
    console.print(
        f"{embedder.model_id} on {embedder.runtime.value}: {embedder.dim}-d, "
        f"ready in {embedder.load_seconds:.1f} s"
    )
