"""Which scan a `match.confirmed` names: one this worker remembers answering with the same
photo, or one another replica answered, proven by its signed receipt (the photo is then
fetched and embedded again). Anything else is refused with a reason. A confirmation also
checks the answer this worker gave the scan (`AnswerCheck`): the answers people have checked
are how ops see how often `matched` is right in production, not only as estimated."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from shared.contract import FailureReason, MatchConfirmed, MatchResult
from worker.errors import PermanentError
from worker.index.base import ScanRecord
from worker.matching.scan_memory import ScanMemory
from worker.observability.prometheus import CHECKED_ANSWERS
from worker.pipeline.embedding import Embeds
from worker.pipeline.image_loader import ImageLoader
from worker.pipeline.receipts import Receipts
from worker.vectors import ImageKind


@dataclass(frozen=True)
class AnswerCheck:
    """What a person's confirmation says of the answer the scan got: its status then, the
    product it ranked first, and whether that is the product confirmed."""

    status: str
    first_product_id: str | None
    right: bool

    @classmethod
    def of(cls, scan: ScanRecord, product_id: str) -> AnswerCheck | None:
        """The check of `scan`'s remembered answer; None when its answer is not kept here (a
        scan another replica answered, proven by its receipt)."""
        if not scan.result_json:
            return None
        try:
            answer = MatchResult.model_validate_json(scan.result_json)
        except ValidationError:
            return None
        first = answer.matches[0].product_id if answer.matches else None
        return cls(answer.status.value, first, first == product_id)

    @classmethod
    def counted(cls, scan: ScanRecord, product_id: str) -> AnswerCheck | None:
        """`of`, counted in `jewelmatch_checked_answers_total` (once per scan: at its first
        confirmation)."""
        check = cls.of(scan, product_id)
        if check is not None:
            CHECKED_ANSWERS.labels(check.status, "right" if check.right else "wrong").inc()
        return check

    def audit(self) -> dict:
        """Its fields for the `confirmation` audit line."""
        return {
            "answered_status": self.status,
            "answered_first_product_id": self.first_product_id,
            "answer_right": self.right,
        }


class ConfirmedScans:
    def __init__(
        self,
        scans: ScanMemory,
        receipts: Receipts,
        loader: ImageLoader,
        embedder: Embeds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scans, self.receipts, self.loader = scans, receipts, loader
        self.embedder, self.clock = embedder, clock

    def find(self, event: MatchConfirmed) -> ScanRecord:
        """The confirmed scan; raises PermanentError (unknown_scan, or the photo's own
        failure) when there is none to trust."""
        scan = self.scans.recall(event.scan_id)
        if scan is not None:
            if event.image is not None and scan.image_uri != event.image.uri:
                raise PermanentError(
                    FailureReason.unknown_scan,
                    "the confirmation's image is not the photo this scan was answered for",
                )
            return scan
        image = self.receipts.proven_image(event)
        if image is None:
            raise PermanentError(
                FailureReason.unknown_scan,
                f"scan {event.scan_id!r} was not answered by this replica and the "
                "confirmation carries no valid receipt and image",
            )
        loaded = self.loader.load(image)  # another replica's scan, embedded again
        vector = self.embedder.embed([loaded.picture], ImageKind.scan)[0]
        return ScanRecord(
            scan_id=event.scan_id, vector=vector, image_uri=image.uri, created_at=self.clock()
        )
