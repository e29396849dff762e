"""Whether this worker may take catalog work now (product events, confirmations: the messages
that write the index).

Only the workers of the model in service write the catalog. After a switch or a promotion
(`jewelmatch reindex`, `jewelmatch model promote`, `rollback`), a worker still running the
model it replaced would write into an index out of service, and those writes would never
reach the one in service: such a worker gives its catalog work back to the broker and stops
taking it (it keeps answering scans until it is restarted on the model in service), and takes
it again if its model comes back (a rollback). While a switch catches the new index up with
the old one, every worker holds catalog work the same way (`VectorIndex.writes_held`), so
that the catch-up sees every write that was settled, and a batch handled meanwhile is given
back rather than settled: it is done again on the index in service.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.index import VectorIndex
from worker.observability.logs import get_logger

log = get_logger(__name__)

RECHECK_SECONDS = 2.0
"""How often a paused worker looks whether it may take catalog work again."""


def catalog_work_blocked(index: VectorIndex) -> str | None:
    """Why this worker must not write the catalog now, or None when it may."""
    current = index.current_model_id()
    if current not in (None, index.model_id):
        return (
            f"the index in service is {current!r}, this worker's is {index.model_id!r}: "
            "restart it to take the model in service"
        )
    if index.writes_held():
        return "a model switch is catching the new index up (writes held)"
    return None


class CatalogGate:
    def __init__(
        self, blocked: Callable[[], str | None], recheck_seconds: float = RECHECK_SECONDS
    ) -> None:
        self._blocked = blocked
        self._recheck_seconds = recheck_seconds
        self.paused_because: str | None = None
        self._checked_at = 0.0

    def check(self) -> str | None:
        """Why catalog work must wait now (None: it may go on). An index that cannot be
        asked does not block: the handlers meet the outage themselves and retry."""
        self._checked_at = time.monotonic()
        try:
            return self._blocked()
        except Exception as error:
            log.warning("catalog_gate.check_failed", error=str(error))
            return None

    def recheck_due(self) -> bool:
        return (
            self.paused_because is not None
            and time.monotonic() - self._checked_at >= self._recheck_seconds
        )
