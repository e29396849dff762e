"""Wiring: settings → model, index, image store → handlers → consumer, with signals and probes."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass

from worker.amqp.broker import broker_user
from worker.amqp.catalog_gate import CatalogGate, catalog_work_blocked
from worker.amqp.consumer import Worker
from worker.errors import StartupError
from worker.index import VectorIndex, open_index
from worker.matching.catalog import catalog_summary
from worker.matching.matcher import Matcher, policy_from_settings
from worker.observability.logs import get_logger
from worker.observability.probes import Health, serve_ops
from worker.observability.prometheus import MODEL_LOAD_SECONDS, count_index_when_scraped
from worker.pipeline.handlers import Handlers
from worker.pipeline.storage import ImageStore, open_image_store
from worker.service.backup import scheduled_backup
from worker.service.maintenance import Maintenance
from worker.settings import AmqpSettings, Settings
from worker.vision.embedder import Embedder

log = get_logger(__name__)


@dataclass
class Components:
    embedder: Embedder
    index: VectorIndex
    matcher: Matcher
    maintenance: Maintenance | None = None  # set by wire_worker

    def close(self) -> None:
        self.index.close()


def build_components(settings: Settings, embedder: Embedder | None = None) -> Components:
    """Load the model (once) and open its index."""
    embedder = embedder or Embedder(settings.model)
    MODEL_LOAD_SECONDS.set(embedder.load_seconds)
    index = open_index(settings.index, embedder.model_id, embedder.dim)
    count_index_when_scraped(index.count)
    log.info(
        "index.opened",
        model=embedder.model_id,
        backend=settings.index.backend.value,
        reference_images=index.count(),
    )
    matcher = Matcher(
        index,
        embedder.layout,
        embedder.model_id,
        policy_from_settings(settings.matching),
        settings.learning,
        trained_on=embedder.trained_on,
    )
    matcher.refit()  # what the index already teaches (domain means, learned metric)
    return Components(embedder, index, matcher)


def wire_worker(
    settings: Settings,
    components: Components,
    health: Health | None = None,
    store: ImageStore | None = None,
) -> Worker:
    """The one place a worker is put together: the image store, the handlers over the
    loaded model and index, and the consumer loop (which owns the handlers: `worker.handlers`)."""
    store = store or open_image_store(settings.s3, settings.images.max_bytes)
    handlers = Handlers(settings, store, components.embedder, components.matcher)
    backup_file = settings.index.backup_file
    components.maintenance = Maintenance(
        components.matcher.learner,
        components.index,
        handlers.forget_old_scans,
        backup=scheduled_backup(components.index, backup_file, settings.index.backup_hours)
        if backup_file is not None
        else None,
    )
    gate = CatalogGate(lambda: catalog_work_blocked(components.index))
    return Worker(
        settings, handlers, health, on_idle=components.maintenance.on_idle, catalog_gate=gate
    )


class ModelNotCurrent(StartupError):
    """The worker's model is not the one whose index is in service."""


def ensure_model_is_current(settings: Settings, index: VectorIndex) -> None:
    """Refuse to serve from an index that is not the one in service: a worker started with
    another model (or other view settings) would answer from an empty or stale index."""
    current = index.current_model_id()
    if current in (None, index.model_id) or settings.index.serve_non_current_model:
        return
    raise ModelNotCurrent(
        f"the index in service is {current!r} but this worker's model is {index.model_id!r}: "
        "build its index with `jewelmatch reindex` and switch (docs/operations.md, "
        "'Changing the model safely'), or set JEWELMATCH_INDEX__SERVE_NON_CURRENT_MODEL=true"
    )


@contextmanager
def opened(settings: Settings, embedder: Embedder | None = None):
    components = build_components(settings, embedder)
    try:
        yield components
    finally:
        components.close()


def check_broker_login(amqp: AmqpSettings) -> None:
    """The worker honours its steering headers (attempts, original routing key) only on
    messages whose broker-validated user is its own login. Were that login also a confirming
    user, a confirmation could carry those headers and steer the worker (a `match.confirmed`
    turned into a deletion): refuse to start. `guest` is everybody's login on a fresh
    broker: allowed for trying things out, said loudly."""
    user = broker_user(amqp)
    if user is None:
        return
    if user in amqp.confirm_users:
        raise StartupError(
            f"the worker logs in to the broker as {user!r}, which is also one of the users "
            "whose match.confirmed it accepts (JEWELMATCH_AMQP__CONFIRM_USERS): give the "
            "worker a login of its own (deploy/rabbitmq, `jewelmatch rabbitmq-definitions`)"
        )
    if user == "guest":
        log.warning(
            "broker.guest_login",
            message="the worker logs in as 'guest': any publisher using 'guest' too could "
            "pass as the worker; give it a login of its own in production (deploy/rabbitmq)",
        )


def run_worker(settings: Settings) -> None:
    """The `jewelmatch worker` process: probes first, then the model, then consume."""
    check_broker_login(settings.amqp)
    health = Health()
    worker_box: list[Worker] = []

    def on_signal(signum, frame) -> None:
        # Plain assignments only: no logging, no locks (the interrupted code may hold them).
        health.stopping = True  # also while the model loads: the worker then never starts
        for worker in worker_box:
            worker.stop()

    # Before the probes answer: a SIGTERM sent once /livez does is never the default's kill.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ops_server = None
    if settings.ops.http_port:
        ops_server = serve_ops(health, settings.ops)
        log.info(
            "ops.listening",
            port=settings.ops.http_port,
            paths=["/livez", "/readyz", "/metrics", "/catalog"],
        )
    with opened(settings) as components:
        ensure_model_is_current(settings, components.index)
        health.catalog = lambda: catalog_summary(components.index)
        health.model_loaded = True
        worker = wire_worker(settings, components, health)
        worker_box.append(worker)
        if not health.stopping:
            worker.run()
        components.maintenance.wait(settings.ops.drain_seconds)  # the index closes next
        worker.handlers.close()
    if ops_server is not None:
        ops_server.shutdown()
    log.info("worker.stopped")
