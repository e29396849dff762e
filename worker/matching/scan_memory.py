"""The scans the worker answered, with one owner: what it saw (the photo's vector and URI)
and said (the answer), so that a redelivery gets the same answer, a reused scan id with
another photo is refused, and a confirmation turns the photo into a reference image without
fetching it again. Remembered scans are the learner's unlabeled statistics."""

from __future__ import annotations

from worker.index.base import ScanRecord, VectorIndex
from worker.matching.catalog import Catalog
from worker.matching.learner import Learner


class ScanMemory:
    def __init__(self, index: VectorIndex, catalog: Catalog, learner: Learner) -> None:
        self.index, self.catalog, self.learner = index, catalog, learner

    def remember(self, *records: ScanRecord) -> None:
        """Keep (or replace) these scans; the learner counts them for its statistics."""
        for record in records:
            self.index.remember_scan(record)
        self.learner.note_scans(len(records))

    def recall(self, scan_id: str) -> ScanRecord | None:
        return self.index.recall_scan(scan_id)

    def confirm(self, scan_id: str | ScanRecord, product_id: str) -> bool:
        """The scan's photo becomes a reference image of the product (a correction moves it
        from the product confirmed before); False, and nothing changed, when the scan or the
        product is unknown."""
        record = self.recall(scan_id) if isinstance(scan_id, str) else scan_id
        if record is None or not self.catalog.confirm(product_id, record):
            return False
        self.index.remember_scan(record)  # remembers where the photo went
        return True

    def forget_before(self, timestamp: float) -> None:
        self.index.forget_scans_before(timestamp)
