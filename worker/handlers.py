"""What each message means: from a delivered body to the results to publish and how to settle it.

Nothing here knows RabbitMQ. The consumer hands over batches of `Delivery` and carries out
the returned `Outcome`s in order: publish the results (confirmed by the broker), then ack,
retry later, or dead-letter the message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from PIL import Image
from pydantic import BaseModel

from shared import topology
from shared.contract import (
    BagPhotographed,
    CatalogOutcome,
    CatalogOutcomeStatus,
    FailureReason,
    ImageProblem,
    MatchConfirmed,
    MatchResult,
    MatchStatus,
    ProductDeleted,
    ProductImage,
    ProductUpserted,
    S3Object,
)
from shared.messages import InvalidMessage, parse_event
from worker.catalog import Catalog
from worker.embedder import ImageKind
from worker.errors import PermanentError, TransientError
from worker.images import decode_image
from worker.index import ScanRecord
from worker.matching import Matcher
from worker.settings import Settings
from worker.storage import ImageStore


class Action(StrEnum):
    ack = "ack"
    retry = "retry"
    dead_letter = "dead_letter"


@dataclass(frozen=True)
class Delivery:
    routing_key: str
    body: bytes
    attempt: int = 1


@dataclass
class Outcome:
    """How one delivery ends. `results` are published, confirmed, before it is settled."""

    action: Action
    results: list[tuple[str, BaseModel]] = field(default_factory=list)
    error: str | None = None
    exception: str | None = None
    log: dict = field(default_factory=dict)


class Timer:
    """Accumulates stage durations in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.ms[stage] = round(self.ms.get(stage, 0.0) + seconds * 1000, 2)


def _timed(timer: Timer, stage: str, function: Callable, *args):
    started = time.perf_counter()
    try:
        return function(*args)
    finally:
        timer.add(stage, time.perf_counter() - started)


def _scan_id_of(body: bytes) -> str | None:
    """The scan id of a body that failed validation, if one can be read, to answer it."""
    try:
        scan_id = json.loads(body).get("scan_id")
    except (ValueError, AttributeError):
        return None
    return scan_id.strip() if isinstance(scan_id, str) and scan_id.strip() else None


class Handlers:
    def __init__(
        self,
        settings: Settings,
        store: ImageStore,
        matcher: Matcher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.matcher = matcher
        self.catalog = Catalog(matcher.index, matcher.note_changes)

        self.clock = clock
        self._fetch_pool = ThreadPoolExecutor(settings.s3.fetch_threads, thread_name_prefix="fetch")

    # loading images -----------------------------------------------------------------

    def _load(self, ref: S3Object) -> tuple[Image.Image, Timer]:
        timer = Timer()
        data = _timed(timer, "fetch", self.store.fetch, ref)
        image = _timed(timer, "decode", decode_image, data, self.settings.images)
        return image, timer

    def _load_all(self, refs: Sequence[S3Object]) -> list[tuple[Image.Image, Timer] | Exception]:
        """Fetch and decode concurrently; each entry is a picture with timings, or the error."""

        def attempt(ref: S3Object):
            try:
                return self._load(ref)
            except Exception as error:  # classified by the caller
                return error

        return list(self._fetch_pool.map(attempt, refs))

    def _failed_attempt(self, delivery: Delivery, error: Exception) -> Action:
        """Transient (and unexpected) failures are retried until the attempts are spent."""
        if delivery.attempt < self.settings.ops.max_attempts:
            return Action.retry
        return Action.dead_letter

    # scans --------------------------------------------------------------------------

    def handle_scans(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        scans: dict[int, BagPhotographed] = {}
        for i, delivery in enumerate(deliveries):
            try:
                scan = parse_event(delivery.routing_key, delivery.body)
                assert isinstance(scan, BagPhotographed)
                scans[i] = scan
            except InvalidMessage as error:
                outcomes[i] = self._invalid_scan(delivery, error)

        fresh: dict[int, BagPhotographed] = {}
        for i, scan in scans.items():
            try:
                known = self.matcher.index.recall_scan(scan.scan_id)
            except Exception as error:
                outcomes[i] = self._scan_error(deliveries[i], scan.scan_id, error, Timer())
                continue
            if known is not None and known.result_json:
                # Redelivered after it was answered: the same answer again, never a second one.
                result = MatchResult.model_validate_json(known.result_json)
                outcomes[i] = Outcome(
                    Action.ack,
                    [(topology.MATCH_RESULT, result)],
                    log=_scan_log(result, redelivered_answer=True),
                )
            else:
                fresh[i] = scan

        loaded = self._load_all([scan.image for scan in fresh.values()])
        ready: list[tuple[int, BagPhotographed, Image.Image, Timer]] = []
        for (i, scan), item in zip(fresh.items(), loaded, strict=True):
            if isinstance(item, Exception):
                timer = Timer()
                outcomes[i] = self._scan_error(deliveries[i], scan.scan_id, item, timer)
            else:
                ready.append((i, scan, *item))
        if ready:
            try:
                self._match_scans(ready, outcomes)
            except Exception as error:
                for i, scan, _, timer in ready:
                    outcomes[i] = self._scan_error(deliveries[i], scan.scan_id, error, timer)
        return [outcome for outcome in outcomes if outcome is not None]

    def _match_scans(self, ready, outcomes: list[Outcome | None]) -> None:
        started = time.perf_counter()
        vectors = self.matcher.embed([image for _, _, image, _ in ready], ImageKind.scan)
        embed_seconds = time.perf_counter() - started
        # Scans asking for the same category and top_k are searched in one batch.
        groups: dict[tuple[str | None, int], list[int]] = {}
        for position, (_, scan, _, _) in enumerate(ready):
            groups.setdefault((scan.category, scan.top_k), []).append(position)
        rankings = {}
        for (category, top_k), positions in groups.items():
            started = time.perf_counter()
            found = self.matcher.rank(vectors[positions], top_k, category)
            query_seconds = time.perf_counter() - started
            for position, ranking in zip(positions, found, strict=True):
                rankings[position] = (ranking, query_seconds)
        for position, (i, scan, _, timer) in enumerate(ready):
            ranking, query_seconds = rankings[position]
            timer.add("embed", embed_seconds)
            timer.add("query", query_seconds)
            result = MatchResult(
                scan_id=scan.scan_id,
                status=ranking.status,
                matches=ranking.ranked_products(),
                image=scan.image,
                model=self.matcher.model_id,
                timings_ms=timer.ms,
            )
            _timed(
                timer,
                "remember",
                self.matcher.index.remember_scan,
                ScanRecord(
                    scan_id=scan.scan_id,
                    vector=vectors[position],
                    image_uri=scan.image.uri,
                    created_at=self.clock(),
                    result_json=result.model_dump_json(),
                ),
            )
            outcomes[i] = Outcome(
                Action.ack, [(topology.MATCH_RESULT, result)], log=_scan_log(result)
            )
        self.matcher.note_changes(count=0)  # new scans refine the scan statistics

    def _failed_result(
        self, scan_id: str, reason: FailureReason, detail: str, timer: Timer
    ) -> MatchResult:
        return MatchResult(
            scan_id=scan_id,
            status=MatchStatus.failed,
            reason=reason,
            detail=detail,
            model=self.matcher.model_id,
            timings_ms=timer.ms,
        )

    def _invalid_scan(self, delivery: Delivery, error: InvalidMessage) -> Outcome:
        """Dead-letter it; and if a scan id can be read, the station still gets an answer."""
        scan_id = _scan_id_of(delivery.body)
        results = []
        if scan_id:
            results.append(
                (
                    topology.MATCH_RESULT,
                    self._failed_result(
                        scan_id, FailureReason.invalid_message, str(error), Timer()
                    ),
                )
            )
        return Outcome(
            Action.dead_letter,
            results,
            error=str(error),
            exception=type(error).__name__,
            log={
                "scan_id": scan_id,
                "status": "failed",
                "reason": FailureReason.invalid_message.value,
            },
        )

    def _scan_error(
        self, delivery: Delivery, scan_id: str, error: Exception, timer: Timer
    ) -> Outcome:
        if isinstance(error, PermanentError):
            result = self._failed_result(scan_id, error.reason, error.detail, timer)
            return Outcome(Action.ack, [(topology.MATCH_RESULT, result)], log=_scan_log(result))
        action = self._failed_attempt(delivery, error)
        reason = (
            FailureReason.dependency_unavailable
            if isinstance(error, TransientError)
            else FailureReason.internal_error
        )
        results = []
        if action is Action.dead_letter:  # attempts spent: the station still gets an answer
            results.append(
                (topology.MATCH_RESULT, self._failed_result(scan_id, reason, str(error), timer))
            )
        return Outcome(
            action,
            results,
            error=str(error),
            exception=type(error).__name__,
            log={
                "scan_id": scan_id,
                "status": "failed" if results else "retrying",
                "reason": reason.value,
                "timings_ms": timer.ms,
            },
        )

    # catalog ------------------------------------------------------------------------

    def handle_catalog(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Apply catalog events in order; upserts of distinct products share one embed batch."""
        outcomes: list[Outcome] = []
        pending: list[tuple[Delivery, ProductUpserted]] = []

        def flush() -> None:
            outcomes.extend(self._upsert_products(pending))
            pending.clear()

        for delivery in deliveries:
            try:
                event = parse_event(delivery.routing_key, delivery.body)
            except InvalidMessage as error:
                flush()
                outcomes.append(
                    Outcome(
                        Action.dead_letter,
                        error=str(error),
                        exception=type(error).__name__,
                        log={"reason": FailureReason.invalid_message.value},
                    )
                )
                continue
            if isinstance(event, ProductUpserted):
                if any(e.product_id == event.product_id for _, e in pending):
                    flush()  # the second event of a product must see the first applied
                pending.append((delivery, event))
                continue
            flush()
            outcomes.append(self._guarded(delivery, event))
        flush()
        return outcomes

    def _guarded(self, delivery: Delivery, event: ProductDeleted | MatchConfirmed) -> Outcome:
        try:
            if isinstance(event, ProductDeleted):
                self.catalog.delete(event.product_id)
                outcome = self._catalog_outcome(
                    delivery, event.product_id, CatalogOutcomeStatus.applied
                )
            else:
                outcome = self._confirm(delivery, event)
        except Exception as error:
            return self._catalog_error(delivery, error, {"product_id": event.product_id})
        return outcome

    def _rejected_confirmation(
        self, delivery: Delivery, event: MatchConfirmed, reason: FailureReason, detail: str
    ) -> Outcome:
        return self._catalog_outcome(
            delivery,
            event.product_id,
            CatalogOutcomeStatus.rejected,
            scan_id=event.scan_id,
            problems=[ImageProblem(reason=reason, detail=detail)],
        )

    def _confirm(self, delivery: Delivery, event: MatchConfirmed) -> Outcome:
        index = self.matcher.index
        scan = index.recall_scan(event.scan_id)
        if scan is None and event.image is not None:
            try:
                scan = self._scan_from_image(event.scan_id, event.image)
            except PermanentError as error:
                return self._rejected_confirmation(delivery, event, error.reason, error.detail)
        if scan is None:
            return self._rejected_confirmation(
                delivery,
                event,
                FailureReason.unknown_scan,
                f"scan {event.scan_id!r} is not known here (answered by another replica, never "
                f"answered, or older than {self.settings.matching.scan_memory_days:g} days) and "
                "the confirmation carries no image",
            )
        if not self.catalog.confirm(event.product_id, scan):
            return self._rejected_confirmation(
                delivery,
                event,
                FailureReason.unknown_product,
                f"product {event.product_id!r} is not in the catalog",
            )
        index.remember_scan(scan)  # remembers where the photo went (a correction moves it)
        return self._catalog_outcome(
            delivery,
            event.product_id,
            CatalogOutcomeStatus.applied,
            scan_id=event.scan_id,
            images_indexed=1,
        )

    def _scan_from_image(self, scan_id: str, image: S3Object) -> ScanRecord:
        """A scan this worker does not remember, embedded again from its photo."""
        picture, _ = self._load(image)
        vector = self.matcher.embed([picture], ImageKind.scan)[0]
        return ScanRecord(
            scan_id=scan_id, vector=vector, image_uri=image.uri, created_at=self.clock()
        )

    def _upsert_products(self, batch: list[tuple[Delivery, ProductUpserted]]) -> list[Outcome]:
        if not batch:
            return []
        timer = Timer()
        plans: dict[int, object] = {}
        outcomes: dict[int, Outcome] = {}
        for n, (delivery, event) in enumerate(batch):
            try:
                plans[n] = _timed(timer, "plan", self.catalog.plan, event)
            except Exception as error:
                outcomes[n] = self._catalog_error(delivery, error, {"product_id": event.product_id})
        wanted = [(n, image) for n, plan in plans.items() for image in plan.to_embed]
        loaded = self._load_all([image for _, image in wanted])
        good: dict[int, list[tuple[ProductImage, Image.Image]]] = {n: [] for n in plans}
        problems: dict[int, list[ImageProblem]] = {n: [] for n in plans}
        transient: dict[int, Exception] = {}
        for (n, image), item in zip(wanted, loaded, strict=True):
            if isinstance(item, PermanentError):
                problems[n].append(
                    ImageProblem(image_id=image.image_id, reason=item.reason, detail=item.detail)
                )
            elif isinstance(item, Exception):
                transient[n] = item
            else:
                good[n].append((image, item[0]))
                for stage, ms in item[1].ms.items():
                    timer.add(stage, ms / 1000)
        try:
            flat = [
                (n, image, picture)
                for n in plans
                if n not in transient
                for image, picture in good[n]
            ]
            vectors = _timed(
                timer, "embed", self.matcher.embed, [p for _, _, p in flat], ImageKind.catalog
            )

            embedded: dict[int, list] = {n: [] for n in plans}
            for (n, image, _), vector in zip(flat, vectors, strict=True):
                embedded[n].append((image, vector))
        except Exception as error:
            transient = {n: error for n in plans}
            embedded = {}
        for n, plan in plans.items():
            delivery, event = batch[n]
            if n in transient:
                outcomes[n] = self._catalog_error(
                    delivery, transient[n], {"product_id": event.product_id}
                )
                continue
            try:
                _timed(timer, "index", self.catalog.apply, event, plan, embedded[n])
            except Exception as error:
                outcomes[n] = self._catalog_error(delivery, error, {"product_id": event.product_id})
                continue
            stored = len(embedded[n])
            status = (
                CatalogOutcomeStatus.applied
                if not problems[n]
                else CatalogOutcomeStatus.partially_applied
                if stored or len(problems[n]) < len(event.images)
                else CatalogOutcomeStatus.rejected
            )
            outcomes[n] = self._catalog_outcome(
                delivery,
                event.product_id,
                status,
                images_indexed=stored,
                problems=problems[n],
                timings_ms=timer.ms,
            )
        return [outcomes[n] for n in range(len(batch))]

    def _catalog_outcome(
        self,
        delivery: Delivery,
        product_id: str,
        status: CatalogOutcomeStatus,
        *,
        scan_id: str | None = None,
        images_indexed: int = 0,
        problems: Sequence[ImageProblem] = (),
        timings_ms: dict | None = None,
    ) -> Outcome:
        outcome = CatalogOutcome(
            event=delivery.routing_key,
            product_id=product_id,
            scan_id=scan_id,
            status=status,
            images_indexed=images_indexed,
            problems=list(problems),
            model=self.matcher.model_id,
            replica=self.settings.amqp.replica_id,
        )

        return Outcome(
            Action.ack,
            [(topology.CATALOG_OUTCOME, outcome)],
            log={
                "product_id": product_id,
                "scan_id": scan_id,
                "status": status.value,
                "images_indexed": images_indexed,
                "problems": [p.reason.value for p in problems],
                "timings_ms": timings_ms or {},
            },
        )

    def _catalog_error(self, delivery: Delivery, error: Exception, ids: dict) -> Outcome:
        if isinstance(error, PermanentError):
            return Outcome(
                Action.dead_letter,
                error=str(error),
                exception=type(error).__name__,
                log={**ids, "reason": error.reason.value},
            )
        return Outcome(
            self._failed_attempt(delivery, error),
            error=str(error),
            exception=type(error).__name__,
            log=dict(ids),
        )

    # housekeeping -------------------------------------------------------------------

    def forget_old_scans(self) -> None:
        self.matcher.index.forget_scans_before(
            self.clock() - self.settings.matching.scan_memory_days * 86400
        )

    def close(self) -> None:
        self._fetch_pool.shutdown(wait=True)


def _scan_log(result: MatchResult, **extra) -> dict:
    best = result.matches[0] if result.matches else None
    return {
        "scan_id": result.scan_id,
        "status": result.status.value,
        "reason": result.reason.value if result.reason else None,
        "top_product": best.product_id if best else None,
        "top_score": best.score if best else None,
        "timings_ms": result.timings_ms,
        **extra,
    }
