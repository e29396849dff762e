"""Runs the real worker in a thread against a real broker, and talks to it like its peers do:
publishing events to the events exchange and reading the result and dead-letter queues."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from kombu import Connection
from pydantic import BaseModel

from shared import topology
from shared.contract import CatalogOutcome, MatchResult
from worker.app import build_components, wire_worker
from worker.broker import EVENTS, ConfirmedPublisher, Topology
from worker.consumer import raw_body
from worker.settings import Settings


@dataclass
class DeadLetter:
    body: bytes
    headers: dict
    routing_key: str


class WorkerHarness:
    def __init__(self, settings: Settings, embedder, store=None) -> None:
        self.settings = settings
        self.components = build_components(settings, embedder)
        self.worker = wire_worker(settings, self.components, store=store)
        self.handlers = self.worker.handlers
        self.topology = Topology.build(settings.amqp, settings.ops)
        self._thread: threading.Thread | None = None
        self._connection = Connection(
            settings.amqp.url.get_secret_value(), transport_options={"confirm_publish": True}
        )
        self._channel = self._connection.channel()
        self.topology.declare(self._channel)
        self._publisher = ConfirmedPublisher(self._connection.channel())

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
        self._connection.release()

    def __enter__(self) -> WorkerHarness:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # talking to it -----------------------------------------------------------------

    def publish(self, routing_key: str, body: BaseModel | dict | bytes | str) -> None:
        if isinstance(body, BaseModel):
            body = body.model_dump_json()
        elif isinstance(body, dict):
            body = json.dumps(body)
        # like a real client, it states its user (the broker checks it)
        self._publisher.publish(body, EVENTS, routing_key, user_id=self._connection.userid)

    def _read(self, queue: str, count: int, timeout: float) -> list:
        messages = []
        deadline = time.monotonic() + timeout
        while len(messages) < count:
            message = self._channel.basic_get(queue, no_ack=True)
            if message is not None:
                messages.append(message)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(messages)} of {count} messages on {queue} after {timeout} s"
                )
            time.sleep(0.05)
        return messages

    def results(self, count: int = 1, timeout: float = 30.0) -> list[MatchResult]:
        return [
            MatchResult.model_validate_json(m.body)
            for m in self._read(topology.RESULTS_QUEUE, count, timeout)
        ]

    def outcomes(self, count: int = 1, timeout: float = 30.0) -> list[CatalogOutcome]:
        return [
            CatalogOutcome.model_validate_json(m.body)
            for m in self._read(topology.CATALOG_OUTCOMES_QUEUE, count, timeout)
        ]

    def dead_letters(self, count: int = 1, timeout: float = 30.0) -> list[DeadLetter]:
        return [
            DeadLetter(raw_body(m), dict(m.headers or {}), m.delivery_info.get("routing_key", ""))
            for m in self._read(topology.DEAD_LETTER_QUEUE, count, timeout)
        ]

    def queue_depth(self, queue: str) -> int:
        return self._channel.queue_declare(queue, passive=True).message_count
