"""A peer of the worker that survives broker restarts: publishes events with confirms and
reads result queues, reconnecting whenever the broker goes away."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable

from kombu import Connection
from pydantic import BaseModel

from worker.broker import EVENTS, ConfirmedPublisher
from worker.consumer import BROKER_ERRORS


class ResilientPeer:
    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Connection | None = None

    def _channel(self):
        if self._connection is None:
            self._connection = Connection(self.url, transport_options={"confirm_publish": True})
            self._connection.ensure_connection(max_retries=1)
            self._channel_cached = self._connection.channel()
            self._publisher = ConfirmedPublisher(self._connection.channel())
        return self._channel_cached

    def _reset(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(BROKER_ERRORS):
                self._connection.release()
        self._connection = None

    def _retrying(self, action: Callable, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return action()
            except BROKER_ERRORS:
                self._reset()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def publish(
        self, routing_key: str, body: BaseModel | dict | bytes | str, headers: dict | None = None
    ) -> None:
        if isinstance(body, BaseModel):
            body = body.model_dump_json()
        elif isinstance(body, dict):
            body = json.dumps(body)

        def send() -> None:
            self._channel()
            # like a real client, it states its user (the broker checks it)
            self._publisher.publish(
                body, EVENTS, routing_key, headers, user_id=self._connection.userid
            )

        self._retrying(send)

    def read(
        self,
        queue: str,
        count: int,
        timeout: float = 60.0,
        stop_when: Callable[[list], bool] | None = None,
    ) -> list:
        """Read (and ack) until `count` messages came, or `stop_when` holds; raw messages."""
        messages: list = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and not (stop_when and stop_when(messages)):
            message = self._retrying(lambda: self._channel().basic_get(queue, no_ack=True))
            if message is not None:
                messages.append(message)
            elif time.monotonic() > deadline:
                raise TimeoutError(f"{len(messages)} of {count} on {queue} after {timeout} s")
            else:
                time.sleep(0.05)
        return messages

    def depth(self, queue: str) -> int:
        return self._retrying(
            lambda: self._channel().queue_declare(queue, passive=True).message_count
        )

    def close(self) -> None:
        self._reset()
