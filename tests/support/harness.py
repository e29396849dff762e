"""Runs the real worker in a thread against a real broker, and talks to it through the
project's one client (`worker.amqp.client`), as its peers do."""

from __future__ import annotations

import threading

from worker.amqp.broker import Topology
from worker.amqp.client import JewelmatchClient
from worker.service.app import build_components, wire_worker
from worker.settings import Settings


class WorkerHarness(JewelmatchClient):
    """A worker in a thread, and a client of it (publish, results, outcomes, dead letters)."""

    def __init__(self, settings: Settings, embedder, store=None) -> None:
        super().__init__(settings.amqp)
        self.settings = settings
        self.components = build_components(settings, embedder)
        self.worker = wire_worker(settings, self.components, store=store)
        self.handlers = self.worker.handlers
        self.topology = Topology.build(settings.amqp, settings.ops)
        self.declare(self.topology)
        self._thread: threading.Thread | None = None

    @property
    def index(self):
        return self.components.index

    def start(self) -> WorkerHarness:
        self._thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "worker did not stop"
        self.handlers.close()
        self.components.close()
        self.close()

    def __enter__(self) -> WorkerHarness:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
