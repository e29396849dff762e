"""Deliveries received but not yet handled: scans always before catalog work.

The consumer loop fills the inbox while a batch is being handled (bounded by the prefetch of
each queue), and takes the next batch from it: every waiting scan goes before any catalog
event, whatever arrived first, so a bulk import never delays a scan.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kombu.message import Message


@dataclass(frozen=True)
class Batch:
    kind: str
    """`scans` or `catalog`."""
    messages: list[Message]


class Inbox:
    def __init__(self, scan_batch: int, catalog_batch: int) -> None:
        self.scans: deque[Message] = deque()
        self.catalog: deque[Message] = deque()
        self._limits = {"scans": scan_batch, "catalog": catalog_batch}

    def pending(self) -> bool:
        return bool(self.scans or self.catalog)

    def next_batch(self) -> Batch:
        kind, buffer = ("scans", self.scans) if self.scans else ("catalog", self.catalog)
        count = min(self._limits[kind], len(buffer))
        return Batch(kind, [buffer.popleft() for _ in range(count)])

    def take_catalog(self) -> list[Message]:
        """Every catalog delivery waiting, taken out (to be given back to the broker)."""
        taken = list(self.catalog)
        self.catalog.clear()
        return taken

    def forget(self) -> None:
        """The connection died: its unacked deliveries come back from the broker anyway."""
        self.scans.clear()
        self.catalog.clear()

    def give_back(self) -> None:
        """On the way out, requeue what was received but not handled."""
        for buffer in (self.scans, self.catalog):
            while buffer:
                message = buffer.popleft()
                if not message.acknowledged:
                    message.reject(requeue=True)
