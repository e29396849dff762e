"""Catalog work: `product.*` and `match.confirmed` deliveries to `catalog.outcome` answers.

Every catalog event gets exactly one outcome once it is done with: `applied`,
`partially_applied`, `stale` (an older version than the one applied, nothing changed) or
`rejected` (nothing usable; the event is also dead-lettered for operators). While a transient
failure is retried nothing is published yet. Upserts of distinct products share one embedding
batch; events of one product are applied in the order they came.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shared import topology
from shared.contract import (
    CatalogOutcome,
    CatalogOutcomeStatus,
    FailureReason,
    ImageProblem,
    MatchConfirmed,
    ProductDeleted,
    ProductImage,
    ProductUpserted,
)
from shared.messages import InvalidMessage, parse_event
from worker.errors import PermanentError
from worker.matching.catalog import EmbeddedImage, SyncPlan
from worker.matching.matcher import Matcher
from worker.observability.logs import get_logger
from worker.pipeline.confirmation import AnswerCheck, ConfirmedScans
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
    timed,
)
from worker.pipeline.receipts import Receipts
from worker.settings import AmqpSettings
from worker.vectors import ImageKind

log = get_logger(__name__)
audit = get_logger("jewelmatch.audit")


@dataclass
class _Upsert:
    delivery: Delivery
    event: ProductUpserted
    plan: SyncPlan | None = None
    problems: list[ImageProblem] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)
    embedded: list[EmbeddedImage] = field(default_factory=list)
    error: BaseException | None = None


class CatalogHandler:
    def __init__(
        self,
        amqp: AmqpSettings,
        receipts: Receipts,
        loader: ImageLoader,
        embedder: Embeds,
        matcher: Matcher,
        policy: FailurePolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.confirm_users = list(amqp.confirm_users)
        self.replica_id = amqp.replica_id
        self.loader = loader
        self.embedder = embedder
        self.matcher = matcher
        self.policy = policy
        self.clock = clock
        self.catalog = matcher.catalog()
        self.confirmed_scans = ConfirmedScans(matcher.scans, receipts, loader, embedder, clock)

    def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Apply catalog events in order; upserts of distinct products share one embed batch."""
        outcomes: list[Outcome] = []
        pending: list[_Upsert] = []

        def flush() -> None:
            outcomes.extend(self._upsert(pending))
            pending.clear()

        for delivery in deliveries:
            try:
                event = parse_event(delivery.routing_key, delivery.body)
            except InvalidMessage as error:
                flush()
                outcomes.append(self.invalid(delivery, error))
                continue
            if isinstance(event, ProductUpserted):
                if any(item.event.product_id == event.product_id for item in pending):
                    flush()  # the second event of a product must see the first applied
                pending.append(_Upsert(delivery, event))
                continue
            flush()
            if isinstance(event, ProductDeleted):
                outcomes.append(self._delete(delivery, event))
            elif isinstance(event, MatchConfirmed):
                outcomes.append(self._confirm(delivery, event))
            else:
                outcomes.append(
                    self.invalid(delivery, InvalidMessage(f"{delivery.routing_key}: not catalog"))
                )
        flush()
        return outcomes

    # outcomes -----------------------------------------------------------------------

    def outcome(
        self,
        delivery: Delivery,
        product_id: str,
        status: CatalogOutcomeStatus,
        *,
        scan_id: str | None = None,
        images_indexed: int = 0,
        problems: Sequence[ImageProblem] = (),
        timings_ms: dict | None = None,
        error: str | None = None,
    ) -> Outcome:
        """The event's one outcome; a `rejected` event is dead-lettered as well."""
        published = CatalogOutcome(
            event=delivery.routing_key,
            product_id=product_id,
            scan_id=scan_id,
            status=status,
            images_indexed=images_indexed,
            problems=list(problems),
            model=self.matcher.model_id,
            replica=self.replica_id,
        )
        rejected = status is CatalogOutcomeStatus.rejected
        return Outcome(
            Action.dead_letter if rejected else Action.ack,
            [(topology.CATALOG_OUTCOME, published)],
            error=(error or "; ".join(p.detail for p in problems)) if rejected else None,
            exception="Rejected" if rejected else None,
            log={
                "product_id": product_id,
                "scan_id": scan_id,
                "status": status.value,
                "images_indexed": images_indexed,
                "problems": [p.reason.value for p in problems],
                "timings_ms": timings_ms or {},
            },
        )

    def invalid(self, delivery: Delivery, error: InvalidMessage) -> Outcome:
        product_id = identifier_in(delivery.body, "product_id")
        if product_id is None:  # nobody to tell: the dead letter is the outcome
            return Outcome(
                Action.dead_letter,
                error=describe(error),
                exception=type(error).__name__,
                log={"reason": FailureReason.invalid_message.value},
            )
        detail = f"the message is not a valid {delivery.routing_key} event: {error}"[:1000]
        return self.outcome(
            delivery,
            product_id,
            CatalogOutcomeStatus.rejected,
            problems=[ImageProblem(reason=FailureReason.invalid_message, detail=detail)],
            error=describe(error),
        )

    def failure(self, delivery: Delivery, product_id: str, error: BaseException) -> Outcome:
        """An event that failed as a whole: retried while that may help, then `rejected`."""
        failure = self.policy.decide(delivery, error)
        if not failure.final:
            return Outcome(
                failure.action,
                error=describe(error),
                exception=type(error).__name__,
                log={"product_id": product_id, "status": "retrying", "reason": failure.reason},
            )
        outcome = self.outcome(
            delivery,
            product_id,
            CatalogOutcomeStatus.rejected,
            problems=[ImageProblem(reason=failure.reason, detail=failure.detail)],
            error=describe(error),
        )
        outcome.exception = type(error).__name__
        return outcome

    def _stale(self, delivery: Delivery, product_id: str) -> Outcome:
        return self.outcome(delivery, product_id, CatalogOutcomeStatus.stale)

    # product.deleted ----------------------------------------------------------------

    def _delete(self, delivery: Delivery, event: ProductDeleted) -> Outcome:
        try:
            if self.catalog.is_stale(event.product_id, event.version):
                return self._stale(delivery, event.product_id)
            self.catalog.delete(event)
        except Exception as error:
            return self.failure(delivery, event.product_id, error)
        return self.outcome(delivery, event.product_id, CatalogOutcomeStatus.applied)

    # product.created / product.updated ----------------------------------------------

    def _upsert(self, batch: list[_Upsert]) -> list[Outcome]:
        if not batch:
            return []
        timer = Timer()
        outcomes: dict[int, Outcome] = {}
        for n, item in enumerate(batch):
            try:
                if self.catalog.is_stale(item.event.product_id, item.event.version):
                    outcomes[n] = self._stale(item.delivery, item.event.product_id)
                    continue
                item.plan = timed(timer, "plan", self._plan, item)
            except Exception as error:
                outcomes[n] = self.failure(item.delivery, item.event.product_id, error)
        live = [item for n, item in enumerate(batch) if n not in outcomes]
        self._load_and_embed(live, timer)
        for n, item in enumerate(batch):
            if n not in outcomes:
                outcomes[n] = self._apply(item, timer)
        return [outcomes[n] for n in range(len(batch))]

    def _plan(self, item: _Upsert) -> SyncPlan:
        """What to embed: new images, moved ones, and objects replaced at the same URI."""
        stored = self.catalog.stored_images(item.event.product_id)
        unchanged = self.catalog.already_stored(item.event, stored)
        changed = set()
        for image, etag in zip(
            unchanged.values(), self.loader.etags(list(unchanged.values())), strict=True
        ):
            if isinstance(etag, PermanentError):
                self._problem(item, image, etag)
            elif isinstance(etag, Exception):
                raise etag
            elif etag != stored[image.image_id].etag:
                changed.add(image.image_id)
        return self.catalog.plan(item.event, changed, stored)

    @staticmethod
    def _problem(item: _Upsert, image: ProductImage, error: PermanentError) -> None:
        item.problems.append(
            ImageProblem(image_id=image.image_id, reason=error.reason, detail=error.detail)
        )
        item.unusable.append(image.image_id)

    def _load_and_embed(self, batch: list[_Upsert], timer: Timer) -> None:
        wanted = [(item, image) for item in batch for image in item.plan.to_embed]
        loaded = self.loader.load_all([image for _, image in wanted])
        good: list[tuple[_Upsert, ProductImage, object]] = []
        for (item, image), result in zip(wanted, loaded, strict=True):
            if isinstance(result, PermanentError):
                self._problem(item, image, result)
            elif isinstance(result, Exception):
                item.error = item.error or result
            else:
                good.append((item, image, result))
                for stage, ms in result.timer.ms.items():
                    timer.add(stage, ms / 1000)
        good = [entry for entry in good if entry[0].error is None]
        pictures = [r.picture for _, _, r in good]
        vectors = timed(timer, "embed", self.embedder.embed, pictures, ImageKind.catalog)
        parts = timed(timer, "embed", self.embedder.embed_parts, pictures)
        for (item, image, result), vector, pieces in zip(good, vectors, parts, strict=True):
            item.embedded.append(EmbeddedImage(image, vector, result.etag, pieces))

    def _apply(self, item: _Upsert, timer: Timer) -> Outcome:
        event = item.event
        if item.error is not None:
            return self.failure(item.delivery, event.product_id, item.error)
        try:
            timed(
                timer, "index", self.catalog.apply, event, item.plan, item.embedded, item.unusable
            )
        except Exception as error:
            return self.failure(item.delivery, event.product_id, error)
        indexed = len(event.images) - len(item.problems)
        if not item.problems:
            status = CatalogOutcomeStatus.applied
        elif indexed:
            status = CatalogOutcomeStatus.partially_applied
        else:
            status = CatalogOutcomeStatus.rejected
        return self.outcome(
            item.delivery,
            event.product_id,
            status,
            images_indexed=indexed,
            problems=item.problems,
            timings_ms=timer.ms,
        )

    # match.confirmed ----------------------------------------------------------------

    def _confirm(self, delivery: Delivery, event: MatchConfirmed) -> Outcome:
        check = None
        try:
            outcome, previous, check = self._confirm_or_refuse(delivery, event)
        except Exception as error:
            outcome, previous = self.failure(delivery, event.product_id, error), None
        final = outcome.results[0][1] if outcome.results else None
        audit.info(
            "confirmation",
            scan_id=event.scan_id,
            product_id=event.product_id,
            previous_product_id=previous,
            sender=delivery.user_id,
            confirmed_by=event.confirmed_by,
            status=final.status.value if final else "retrying",
            reason=final.problems[0].reason.value if final and final.problems else None,
            **(check.audit() if check else {}),
        )
        return outcome

    def _refuse(
        self, delivery: Delivery, event: MatchConfirmed, reason: FailureReason, detail: str
    ) -> Outcome:
        return self.outcome(
            delivery,
            event.product_id,
            CatalogOutcomeStatus.rejected,
            scan_id=event.scan_id,
            problems=[ImageProblem(reason=reason, detail=detail)],
        )

    def _confirm_or_refuse(
        self, delivery: Delivery, event: MatchConfirmed
    ) -> tuple[Outcome, str | None, AnswerCheck | None]:
        """The outcome, the product the scan was confirmed as before (a correction), and the
        check of the scan's answer (its first confirmation only: counted once)."""
        allowed = self.confirm_users
        if allowed and delivery.user_id not in allowed:
            detail = "confirmations are accepted only from the configured confirming users"
            return self._refuse(delivery, event, FailureReason.not_authorized, detail), None, None
        try:
            scan = self.confirmed_scans.find(event)
        except PermanentError as error:
            return self._refuse(delivery, event, error.reason, error.detail), None, None
        previous = scan.extra.get("confirmed_product_id")
        if not self.matcher.scans.confirm(scan, event.product_id):  # a correction moves it
            detail = f"product {event.product_id!r} is not in the catalog"
            refused = self._refuse(delivery, event, FailureReason.unknown_product, detail)
            return refused, previous, None
        check = AnswerCheck.counted(scan, event.product_id) if previous is None else None
        applied = self.outcome(
            delivery,
            event.product_id,
            CatalogOutcomeStatus.applied,
            scan_id=event.scan_id,
            images_indexed=1,
        )
        return applied, previous, check
