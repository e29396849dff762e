"""Scans: from `bag.photographed` deliveries to `match.result` answers.

A scan is identified by its `scan_id` and fingerprinted by its photo and station: the same
scan delivered again gets the answer it got the first time, word for word; another photo
under an id already answered is refused (`scan_id_reused`), never answered with the first
photo's ranking. Every scan gets exactly one published answer, whatever goes wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from shared import topology
from shared.contract import BagPhotographed, FailureReason, MatchResult, MatchStatus
from shared.messages import InvalidMessage, parse_event
from worker.index import ScanRecord
from worker.matching.matcher import Matcher
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
from worker.vectors import ImageKind


@dataclass
class _Ready:
    position: int
    scan: BagPhotographed
    picture: Image.Image
    timer: Timer


def _readable_scan(delivery: Delivery) -> BagPhotographed | None:
    try:
        event = parse_event(delivery.routing_key, delivery.body)
    except InvalidMessage:
        return None
    return event if isinstance(event, BagPhotographed) else None


class ScanHandler:
    def __init__(
        self,
        receipts: Receipts,
        loader: ImageLoader,
        embedder: Embeds,
        matcher: Matcher,
        policy: FailurePolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.receipts = receipts
        self.loader = loader
        self.embedder = embedder
        self.matcher = matcher
        self.policy = policy
        self.clock = clock

    def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        fresh: dict[int, BagPhotographed] = {}
        for i, delivery in enumerate(deliveries):
            try:
                event = parse_event(delivery.routing_key, delivery.body)
            except InvalidMessage as error:
                outcomes[i] = self._invalid(delivery, error)
                continue
            if not isinstance(event, BagPhotographed):
                outcomes[i] = self._invalid(
                    delivery, InvalidMessage(f"{delivery.routing_key} is not a scan event")
                )
                continue
            known = self.matcher.scans.recall(event.scan_id)
            if known is None or not known.result_json:
                fresh[i] = event
            elif known.same_photo(event.image.uri, event.station_id):
                outcomes[i] = self._answered_before(known)
            else:
                outcomes[i] = self._reused_id(event)

        ready: list[_Ready] = []
        loaded = self.loader.load_all([scan.image for scan in fresh.values()])
        for (i, scan), item in zip(fresh.items(), loaded, strict=True):
            if isinstance(item, Exception):
                outcomes[i] = self.failure(deliveries[i], scan.scan_id, item, Timer(), scan)
            else:
                ready.append(_Ready(i, scan, item.picture, item.timer))
        if ready:
            self._match(ready, outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    # answers ------------------------------------------------------------------------

    def _answered_before(self, known: ScanRecord) -> Outcome:
        """A redelivery of a scan already answered: the same answer again."""
        result = MatchResult.model_validate_json(known.result_json or "")
        return Outcome(
            Action.ack,
            [(topology.MATCH_RESULT, result)],
            log=_scan_log(result, redelivered_answer=True),
        )

    def _reused_id(self, scan: BagPhotographed) -> Outcome:
        """Another photo (or station) under a scan id already answered: refused, and kept in
        the dead letters for the station's operators."""
        detail = (
            "this scan_id was already answered for another photo or station; "
            "a new photo needs a new scan_id"
        )
        result = self._failed(scan.scan_id, FailureReason.scan_id_reused, detail, Timer(), scan)
        return Outcome(
            Action.dead_letter,
            [(topology.MATCH_RESULT, result)],
            error=detail,
            exception="ScanIdReused",
            log=_scan_log(result),
        )

    def _invalid(self, delivery: Delivery, error: InvalidMessage) -> Outcome:
        """Dead-letter it; and if a scan id can be read that was never answered, the station
        still gets an answer. A known scan is never answered a second, different way."""
        scan_id = identifier_in(delivery.body, "scan_id")
        answered = scan_id is not None and self.matcher.scans.recall(scan_id) is not None
        results = []
        if scan_id and not answered:
            detail = f"the message is not a valid bag.photographed event: {error}"[:1000]
            result = self._failed(scan_id, FailureReason.invalid_message, detail, Timer())
            results.append((topology.MATCH_RESULT, result))
        return Outcome(
            Action.dead_letter,
            results,
            error=describe(error),
            exception=type(error).__name__,
            log={
                "scan_id": scan_id,
                "status": "failed",
                "reason": FailureReason.invalid_message.value,
                "answered_before": answered,
            },
        )

    def failure(
        self,
        delivery: Delivery,
        scan_id: str,
        error: BaseException,
        timer: Timer,
        scan: BagPhotographed | None = None,
    ) -> Outcome:
        """A scan that could not be answered: `failed` with its reason once that is final.
        `scan` is the parsed event where the caller has it (else it is read again)."""
        failure = self.policy.decide(delivery, error)
        if failure.final and failure.reason in (
            FailureReason.dependency_unavailable,
            FailureReason.internal_error,
        ):
            action = Action.dead_letter
        elif failure.final:
            action = Action.ack  # the image's fault: answered, nothing for operators
        else:
            action = failure.action
        results = []
        if failure.final:
            scan = scan or _readable_scan(delivery)
            result = self._failed(scan_id, failure.reason, failure.detail, timer, scan)
            results.append((topology.MATCH_RESULT, result))
        return Outcome(
            action,
            results,
            error=describe(error),
            exception=type(error).__name__,
            log={
                "scan_id": scan_id,
                "status": "failed" if results else "retrying",
                "reason": failure.reason.value,
                "timings_ms": timer.ms,
            },
        )

    def _failed(
        self,
        scan_id: str,
        reason: FailureReason,
        detail: str,
        timer: Timer,
        scan: BagPhotographed | None = None,
    ) -> MatchResult:
        """A `failed` answer; with the scan's photo and station where the event could be
        read, for whoever looks at the failure."""
        return MatchResult(
            scan_id=scan_id,
            status=MatchStatus.failed,
            reason=reason,
            detail=detail,
            image=scan.image if scan else None,
            station_id=scan.station_id if scan else None,
            model=self.matcher.model_id,
            timings_ms=timer.ms,
        )

    # matching -----------------------------------------------------------------------

    def _match(self, ready: list[_Ready], outcomes: list[Outcome | None]) -> None:
        started = time.perf_counter()
        vectors = self.embedder.embed([item.picture for item in ready], ImageKind.scan)
        embed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        details = self.matcher.scan_details([item.picture for item in ready])
        detail_seconds = time.perf_counter() - started
        # Scans asking for the same category and top_k are searched in one batch.
        groups: dict[tuple[str | None, int], list[int]] = {}
        for n, item in enumerate(ready):
            groups.setdefault((item.scan.category, item.scan.top_k), []).append(n)
        rankings = {}
        for (category, top_k), members in groups.items():
            started = time.perf_counter()
            found = self.matcher.rank(
                vectors[members],
                top_k,
                category,
                [details[n] for n in members] if details is not None else None,
            )
            query_seconds = time.perf_counter() - started
            for n, ranking in zip(members, found, strict=True):
                rankings[n] = (ranking, query_seconds)
        for n, item in enumerate(ready):
            ranking, query_seconds = rankings[n]
            scan, timer = item.scan, item.timer
            timer.add("embed", embed_seconds)
            if details is not None:
                timer.add("detail", detail_seconds)
            timer.add("query", query_seconds)
            result = MatchResult(
                scan_id=scan.scan_id,
                status=ranking.status,
                matches=ranking.ranked_products(),
                confidence=round(ranking.confidence, 4),
                confidence_origin=ranking.confidence_origin,
                image=scan.image,
                station_id=scan.station_id,
                receipt=self.receipts.sign(scan.scan_id, scan.image.uri),
                model=self.matcher.model_id,
                timings_ms=timer.ms,
            )
            record = ScanRecord(
                scan_id=scan.scan_id,
                vector=vectors[n],
                image_uri=scan.image.uri,
                station_id=scan.station_id,
                created_at=self.clock(),
                result_json=result.model_dump_json(),
            )
            timed(timer, "remember", self.matcher.scans.remember, record)
            outcomes[item.position] = Outcome(
                Action.ack, [(topology.MATCH_RESULT, result)], log=_scan_log(result)
            )


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
