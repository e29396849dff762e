"""The production commands: run the worker, write the contract's schemas and the broker's
definitions, prepare the model, re-embed under a new model."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from worker.cli.help import OneLineSummaries
from worker.cli.output import plain_console, styled
from worker.errors import StartupError
from worker.observability.logs import load_settings

commands = typer.Typer()
console = plain_console()


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
    _reindex(load_settings(quiet=True), from_model, switch)


def _reindex(settings, from_model: str, switch: bool) -> None:
    """Re-embed the index of `from_model` with the configured model; with `switch`, then
    catch up with what changed meanwhile while every worker holds catalog work, and switch
    (`worker.amqp.catalog_gate`: nothing written to the old index is left behind)."""
    from worker.index import open_index
    from worker.vision.embedder import Embedder

    embedder = Embedder(settings.model)
    if embedder.model_id == from_model:
        raise typer.BadParameter("the configured model is the one in service: nothing to do")
    with _opened_index(settings, from_model) as source:
        target = open_index(settings.index, embedder.model_id, embedder.dim)
        try:
            report = _reindex_pass(settings, source, target, embedder, "re-embedding")
            console.print(_reindexed(report, embedder.model_id))
            if switch:
                _catch_up_and_switch(settings, source, target, embedder)
        finally:
            target.close()


def _reindex_pass(settings, source, target, embedder, title: str):
    from rich.progress import Progress

    from worker.service.reindex import reindex as run_reindex

    with Progress(console=console) as progress:
        task = progress.add_task(f"{title} for {target.model_id}", total=source.count())
        return run_reindex(
            source,
            target,
            image_store(settings),
            embedder,
            settings.images,
            settings.model.batch_size,
            on_progress=lambda done: progress.advance(task, done),
            fetch_threads=settings.s3.fetch_threads,
        )


def _catch_up_and_switch(settings, source, target, embedder) -> None:
    """Hold every worker's catalog work, embed what changed since the first pass, switch,
    and lift the hold. A batch a worker handled meanwhile is given back, not settled, and
    done again on the index in service."""
    import time

    from worker.index.edge import make_current
    from worker.index.server import WRITE_HOLD_SECONDS
    from worker.settings import IndexBackend

    hold = target.hold_writes()
    held_since = time.monotonic()
    try:
        report = _reindex_pass(settings, source, target, embedder, "catching up")
        # A hold's name keeps the second it was set, rounded down: workers may see it lapse
        # up to a second before this clock says it has.
        if time.monotonic() - held_since >= WRITE_HOLD_SECONDS - 1:
            raise typer.BadParameter(
                f"the catch-up outlasted the {WRITE_HOLD_SECONDS} s that workers hold catalog "
                "work for: not switched; run the command again (it only embeds what changed)"
            )
        if settings.index.backend is IndexBackend.qdrant:
            target.make_current()
        else:
            make_current(settings.index.path, embedder.model_id)
    finally:
        target.release_writes(hold)
    console.print(_reindexed(report, embedder.model_id) + "; now current")


def _reindexed(report, model_id: str) -> str:
    return (
        f"re-embedded {report.reindexed} of {report.images} images for {model_id} "
        f"({report.unchanged} already there, {report.skipped} skipped, {report.removed} "
        f"removed; {report.product_states} products' last events carried)"
    )


STOP_THE_OWNER = "stop the worker that owns it first"
"""What to do when a worker holds the embedded engine's directory."""


@contextmanager
def _opened_index(settings, model_id: str, when_locked: str = STOP_THE_OWNER):
    """The existing index of `model_id`, closed after use; `when_locked` says what to do when
    a worker holds the embedded engine's directory."""
    from worker.index import open_index, stored_dimension
    from worker.index.edge import IndexLockedError

    dim = stored_dimension(settings.index, model_id)
    if dim is None:
        raise typer.BadParameter(f"no index of model {model_id!r}")
    try:
        index = open_index(settings.index, model_id, dim)
    except IndexLockedError as error:
        raise typer.BadParameter(f"{error}: {when_locked}") from None
    try:
        yield index
    finally:
        index.close()


def index_in_service(settings, when_locked: str = STOP_THE_OWNER):
    """The index of the model in service, opened for the `with` block; a usage error when
    there is none (or when its worker holds the embedded engine's directory)."""
    from worker.index import current_index_model

    model_id = current_index_model(settings.index)
    if model_id is None:
        raise typer.BadParameter("no index in service (nothing ingested yet)")
    return _opened_index(settings, model_id, when_locked)


def image_store(settings):
    """The configured image store: S3, or local folders (`S3__BACKEND=local`)."""
    from worker.pipeline.storage import open_image_store

    return open_image_store(settings.s3, settings.images.max_bytes)


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
        styled(console, "yellow", f"{user}: no password set, cannot log in")
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


@commands.command()
def train(
    promote: Annotated[
        bool, typer.Option(help="Promote the new version if it passes the gate (reindexes).")
    ] = False,
    recent_share: Annotated[
        float, typer.Option(min=0.05, max=0.5, help="Latest confirmations held out for the gate.")
    ] = 0.2,
    product_share: Annotated[
        float,
        typer.Option(min=0.05, max=0.5, help="Confirmed products that never train (the gate)."),
    ] = 0.2,
    open_set: Annotated[
        int,
        typer.Option(min=1, help="Held-out products left out of the gate's catalog (open set)."),
    ] = 4,
) -> None:
    """Fine-tune the image towers on the confirmed matches of the index in service, judge the
    result on held-out confirmations against the model in service, and keep it as a model
    version (JEWELMATCH_TRAINING__*; docs/operations.md, "Training")."""
    from rich.progress import Progress

    from worker.tools.training.job import NothingToTrainOn, TrainOptions, train_version

    settings = load_settings(quiet=True)
    with index_in_service(settings) as index, Progress(console=console) as progress:
        store = image_store(settings)
        try:
            version, decision = train_version(
                settings,
                index,
                store,
                TrainOptions(recent_share, product_share, open_set),
                progress,
            )
        except NothingToTrainOn as error:
            styled(console, "yellow", str(error))
            raise typer.Exit(1) from None
    card = version.card
    console.print(
        f"version {version.version}: trained in {card['training']['seconds']:.0f} s on "
        f"{card['data']['train_photos']} photos; card {version.folder / 'card.json'}"
    )
    for side in ("current", "candidate"):
        console.print(f"{side}: " + json.dumps(decision.to_json()[side]))
    if not decision.passed:
        styled(console, "red", "not promoted:", " " + "; ".join(decision.reasons))
        raise typer.Exit(1)
    styled(
        console,
        "green",
        "passed the gate",
        f"; promote: jewelmatch model promote {version.version}",
    )
    if promote:
        _switch_version(settings, version.version)


model_commands = typer.Typer(
    cls=OneLineSummaries, help="Model versions made by `jewelmatch train`.", no_args_is_help=True
)
commands.add_typer(model_commands, name="model")


@model_commands.command("list")
def list_versions() -> None:
    """The versions of the configured model, and which one is current."""
    from worker.vision.versions import ModelVersions

    settings = load_settings(quiet=True)
    versions = ModelVersions(settings.model.cache_dir)
    promoted = versions.promoted(settings.model.name)
    folders = sorted(versions.root.glob("*/card.json")) if versions.root.is_dir() else []
    for path in folders:
        card = json.loads(path.read_text())
        state = (
            "current"
            if promoted and promoted[-1] == card["version"]
            else ("promoted before" if card["version"] in promoted else "")
        )
        gate = "passed" if card["gate"]["passed"] else "failed"
        console.print(f"{card['version']}  {card['created_at']}  gate {gate}  {state}")


@model_commands.command("promote")
def promote_version(version: Annotated[str, typer.Argument(help="A version that passed.")]) -> None:
    """Re-embed the catalog with a version (beside the index in service), then make it current."""
    _switch_version(load_settings(quiet=True), version)


@model_commands.command("rollback")
def rollback() -> None:
    """Return to the version promoted before the current one (or the configured weights):
    the index of that model is brought up to date from the one in service, then made current."""
    from worker.vision.versions import BASE, ModelVersions

    settings = load_settings(quiet=True)
    versions = ModelVersions(settings.model.cache_dir)
    promoted = versions.promoted(settings.model.name)
    if not promoted:
        raise typer.BadParameter("no promoted version to roll back")
    previous = promoted[-2] if len(promoted) > 1 else BASE
    _switch_to(settings, previous)
    versions.rollback(settings.model.name)
    console.print(f"current: {previous}")


def _switch_version(settings, version: str) -> None:
    from worker.vision.versions import ModelVersions

    versions = ModelVersions(settings.model.cache_dir)
    card = versions.get(version).card
    if not card["gate"]["passed"]:
        raise typer.BadParameter(f"version {version} did not pass its gate: not promoted")
    if card["base_model"] != settings.model.name:
        raise typer.BadParameter(
            f"version {version} is of {card['base_model']}, not of the configured model"
        )
    _switch_to(settings, version)
    versions.promote(settings.model.name, version)
    console.print(
        f"current: {version}; restart the workers to take it "
        "(kubectl rollout restart deployment/jewelmatch-worker)"
    )


def _switch_to(settings, version: str) -> None:
    """Re-embed the index in service with the model at `version`, then make that index
    current (the `reindex` command's steps)."""
    from worker.index import current_index_model

    model = settings.model.model_copy(update={"version": version})
    target = settings.model_copy(update={"model": model})
    in_service = current_index_model(settings.index)
    if in_service is None:
        raise typer.BadParameter("no index in service to re-embed")
    _reindex(target, in_service, switch=True)
