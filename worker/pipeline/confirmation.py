"""Which scan a `match.confirmed` names: one this worker remembers answering with the same
photo, or one another replica answered, proven by its signed receipt (the photo is then
fetched and embedded again). Anything else is refused with a reason."""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.contract import FailureReason, MatchConfirmed
from worker.errors import PermanentError
from worker.index.base import ScanRecord
from worker.matching.scan_memory import ScanMemory
from worker.pipeline.embedding import Embeds
from worker.pipeline.image_loader import ImageLoader
from worker.pipeline.receipts import Receipts
from worker.vectors import ImageKind


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
