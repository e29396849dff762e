"""What each message means: the scan and the catalog handler behind one door that isolates
every message from its batch-mates.

Nothing here knows RabbitMQ. The consumer hands over batches of `Delivery` and carries out the
returned `Outcome`s in order. Whatever one message raises stays that message's own outcome
(`internal_error`, dead-lettered): the batch is handled again one message at a time, so its
batch-mates get their normal answers, and the worker lives on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from worker.matching.matcher import Matcher
from worker.observability.logs import get_logger
from worker.pipeline.catalog_handler import CatalogHandler
from worker.pipeline.embedding import Embeds
from worker.pipeline.image_loader import ImageLoader
from worker.pipeline.outcome import (
    Action,
    Delivery,
    FailurePolicy,
    Outcome,
    Timer,
    describe,
    identifier_in,
)
from worker.pipeline.receipts import Receipts
from worker.pipeline.scan_handler import ScanHandler
from worker.pipeline.storage import ImageStore
from worker.settings import Settings

log = get_logger(__name__)

# Re-exported: the consumer, the demo and the tests speak these words.
__all__ = ["Action", "Delivery", "Handlers", "Outcome"]


class Handlers:
    def __init__(
        self,
        settings: Settings,
        store: ImageStore,
        embedder: Embeds,
        matcher: Matcher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.matcher = matcher
        self.clock = clock
        self.loader = ImageLoader(settings.images, settings.s3.fetch_threads, store)
        matcher.read_references_with(self.loader.read_picture)  # the detail stage's
        receipts = Receipts(settings.matching.receipt_key)
        policy = FailurePolicy(settings.ops.max_attempts)
        self.scans = ScanHandler(receipts, self.loader, embedder, matcher, policy, clock)
        self.catalog_events = CatalogHandler(
            settings.amqp, receipts, self.loader, embedder, matcher, policy, clock
        )

    @property
    def catalog(self):
        return self.catalog_events.catalog

    def handle_scans(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return self._isolated(self.scans.handle, self._scan_failure, deliveries)

    def handle_catalog(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return self._isolated(self.catalog_events.handle, self._catalog_failure, deliveries)

    def _isolated(
        self,
        handle: Callable[[Sequence[Delivery]], list[Outcome]],
        on_error: Callable[[Delivery, BaseException], Outcome],
        deliveries: Sequence[Delivery],
    ) -> list[Outcome]:
        """The batch as a whole; if that raises, each message alone; if one message alone
        raises, that is its own failure."""
        try:
            outcomes = handle(deliveries)
            if len(outcomes) == len(deliveries):
                return outcomes
            error: BaseException = RuntimeError(
                f"{len(outcomes)} outcomes for {len(deliveries)} messages"
            )
        except Exception as raised:
            error = raised
        if len(deliveries) == 1:
            log.error("message.raised", error=describe(error), exception=type(error).__name__)
            return [on_error(deliveries[0], error)]
        log.warning("batch.raised", error=describe(error), size=len(deliveries))
        return [self._isolated(handle, on_error, [delivery])[0] for delivery in deliveries]

    def _scan_failure(self, delivery: Delivery, error: BaseException) -> Outcome:
        scan_id = identifier_in(delivery.body, "scan_id")
        if scan_id is None:
            return Outcome(
                Action.dead_letter,
                error=describe(error),
                exception=type(error).__name__,
                log={"status": "failed"},
            )
        return self.scans.failure(delivery, scan_id, error, Timer())

    def _catalog_failure(self, delivery: Delivery, error: BaseException) -> Outcome:
        product_id = identifier_in(delivery.body, "product_id")
        if product_id is None:
            return Outcome(
                Action.dead_letter,
                error=describe(error),
                exception=type(error).__name__,
                log={"status": "failed"},
            )
        return self.catalog_events.failure(delivery, product_id, error)

    # housekeeping -------------------------------------------------------------------

    def forget_old_scans(self) -> None:
        self.matcher.scans.forget_before(
            self.clock() - self.settings.matching.scan_memory_days * 86400
        )

    def close(self) -> None:
        self.loader.close()
