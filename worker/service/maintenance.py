"""What the service does while the queues are quiet: the learner's refit when due, the
index's search structures when due (both in the background: the consumer keeps serving), and
every hour a purge of expired scan records and, when configured, the index's backup if it is
due (in the background too). The consumer only says when it is idle."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from worker.index.base import VectorIndex
from worker.matching.learner import Learner
from worker.observability.logs import get_logger

log = get_logger(__name__)

HOUSEKEEPING_SECONDS = 3600.0


class Maintenance:
    def __init__(
        self,
        learner: Learner,
        index: VectorIndex,
        housekeeping: Callable[[], None],
        backup: Callable[[], None] | None = None,
    ) -> None:
        """`backup`: writes the index's backup if it is due (`INDEX__BACKUP_FILE`)."""
        self.learner, self.index, self.housekeeping = learner, index, housekeeping
        self._backup = backup
        self._optimizing: threading.Thread | None = None
        self._backing_up: threading.Thread | None = None
        self._last_housekeeping = -math.inf  # the first idle round does it, whatever the clock

    def on_idle(self) -> None:
        self.learner.refit_in_background_if_due()
        self._optimize_in_background_if_due()
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_SECONDS:
            return
        self._last_housekeeping = now
        try:
            self.housekeeping()
        except Exception as error:  # housekeeping must never stop the worker
            log.warning("housekeeping.failed", error=str(error))
        self._back_up_in_background()

    def _back_up_in_background(self) -> None:
        if self._backup is None or (self._backing_up and self._backing_up.is_alive()):
            return
        self._backing_up = threading.Thread(
            target=_backup_logging, args=(self._backup,), name="index-backup", daemon=True
        )
        self._backing_up.start()

    def wait(self, timeout: float) -> None:
        """Until the background work in progress is done, within `timeout` seconds in all: an
        index build and a refit both read the index, and closing it under them fails (the
        engine refuses to close a shard another thread is reading: the worker then exited 1
        on SIGTERM)."""
        deadline = time.monotonic() + timeout
        for thread in (self._optimizing, self._backing_up):
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.learner.wait(max(0.0, deadline - time.monotonic()))

    def _optimize_in_background_if_due(self) -> None:
        if self._optimizing is not None and self._optimizing.is_alive():
            return
        try:
            due = self.index.needs_optimizing()
        except Exception as error:
            log.warning("index.optimize_check_failed", error=str(error))
            return
        if due:
            self._optimizing = threading.Thread(
                target=_optimize_logging, args=(self.index,), name="index-optimize", daemon=True
            )
            self._optimizing.start()


def _optimize_logging(index: VectorIndex) -> None:
    started = time.monotonic()
    try:
        index.optimize()
    except Exception as error:  # the exact search keeps answering meanwhile
        log.warning("index.optimize_failed", error=str(error))
        return
    log.info(
        "index.optimized",
        reference_images=index.count(),
        seconds=round(time.monotonic() - started, 2),
    )


def _backup_logging(backup: Callable[[], None]) -> None:
    try:
        backup()
    except Exception as error:  # the index in service is unharmed; the old backup stays
        log.warning("index.backup_failed", error=str(error))
