"""The desk's memory: the latest scans with their answers, and what became of each
confirmation, in one SQLite file (bounded: the oldest scans go first)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared.contract import CatalogOutcome, MatchResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_id TEXT NOT NULL UNIQUE,
    received_at REAL NOT NULL,
    station_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    result TEXT NOT NULL,
    search TEXT NOT NULL,
    confirmed_product TEXT,
    confirmed_by TEXT,
    confirmed_at REAL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS scans_received ON scans (received_at);
"""


@dataclass(frozen=True)
class ScanEntry:
    seq: int
    received_at: float
    result: MatchResult
    confirmed_product: str | None = None
    confirmed_by: str | None = None
    confirmed_at: float | None = None
    outcome: CatalogOutcome | None = None

    @property
    def scan_id(self) -> str:
        return self.result.scan_id


@dataclass(frozen=True)
class ScanFilter:
    status: str | None = None
    station: str | None = None
    since: float | None = None  # epoch seconds
    text: str | None = None  # a SKU or product id among the candidates or the confirmation
    limit: int = 50


class History:
    """Thread-safe: the feed writes from its thread while pages read."""

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # writing -------------------------------------------------------------------------

    def record_result(self, result: MatchResult, received_at: float | None = None) -> None:
        """A scan's answer; a later answer for the same scan (a replay) replaces it."""
        search = " ".join(
            [result.scan_id, *(f"{m.sku} {m.product_id}" for m in result.matches)]
        ).lower()
        with self._lock, self._db:
            self._db.execute(
                """INSERT INTO scans (scan_id, received_at, station_id, status, reason, result,
                                      search)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (scan_id) DO UPDATE SET received_at = excluded.received_at,
                       station_id = excluded.station_id, status = excluded.status,
                       reason = excluded.reason, result = excluded.result,
                       search = excluded.search""",
                (
                    result.scan_id,
                    received_at or time.time(),
                    result.station_id,
                    result.status.value,
                    result.reason.value if result.reason else None,
                    result.model_dump_json(),
                    search,
                ),
            )
            self._db.execute(
                "DELETE FROM scans WHERE seq <= (SELECT MAX(seq) FROM scans) - ?", (self.limit,)
            )

    def record_confirmation(self, scan_id: str, product_id: str, person: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                """UPDATE scans SET confirmed_product = ?, confirmed_by = ?, confirmed_at = ?,
                       outcome = NULL, search = search || ' ' || ?
                   WHERE scan_id = ?""",
                (product_id, person, time.time(), product_id.lower(), scan_id),
            )

    def forget_confirmation(self, scan_id: str) -> None:
        """A confirmation that could not be sent."""
        with self._lock, self._db:
            self._db.execute(
                """UPDATE scans SET confirmed_product = NULL, confirmed_by = NULL,
                       confirmed_at = NULL, outcome = NULL WHERE scan_id = ?""",
                (scan_id,),
            )

    def record_outcome(self, outcome: CatalogOutcome) -> bool:
        """The outcome of a confirmation; False when its scan is not in the history."""
        if outcome.scan_id is None:
            return False
        with self._lock, self._db:
            cursor = self._db.execute(
                "UPDATE scans SET outcome = ? WHERE scan_id = ?",
                (outcome.model_dump_json(), outcome.scan_id),
            )
        return cursor.rowcount > 0

    # reading -------------------------------------------------------------------------

    def scans(self, where: ScanFilter) -> list[ScanEntry]:
        clauses, values = [], []
        if where.status:
            clauses.append("status = ?")
            values.append(where.status)
        if where.station:
            clauses.append("station_id = ?")
            values.append(where.station)
        if where.since is not None:
            clauses.append("received_at >= ?")
            values.append(where.since)
        if where.text:
            clauses.append("search LIKE ? ESCAPE '\\'")
            escaped = where.text.lower().replace("\\", "\\\\").replace("%", "\\%")
            values.append("%" + escaped.replace("_", "\\_") + "%")
        sql = "SELECT * FROM scans"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq DESC LIMIT ?"
        values.append(where.limit)
        return [self._entry(row) for row in self._rows(sql, values)]

    def scan(self, scan_id: str) -> ScanEntry | None:
        rows = self._rows("SELECT * FROM scans WHERE scan_id = ?", [scan_id])
        return self._entry(rows[0]) if rows else None

    def stations(self) -> list[str]:
        rows = self._rows(
            "SELECT DISTINCT station_id FROM scans WHERE station_id IS NOT NULL ORDER BY 1", []
        )
        return [row["station_id"] for row in rows]

    def matched_products(self) -> set[str]:
        """Products named by a confident answer or a confirmation in the history."""
        found = {
            row["confirmed_product"]
            for row in self._rows(
                "SELECT confirmed_product FROM scans WHERE confirmed_product IS NOT NULL", []
            )
        }
        for row in self._rows("SELECT result FROM scans WHERE status = 'matched'", []):
            matches = json.loads(row["result"]).get("matches") or []
            if matches:
                found.add(matches[0]["product_id"])
        return found

    def count(self) -> int:
        return self._rows("SELECT COUNT(*) AS n FROM scans", [])[0]["n"]

    def _rows(self, sql: str, values: list) -> list[dict]:
        with self._lock:
            cursor = self._db.execute(sql, values)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @staticmethod
    def _entry(row: dict) -> ScanEntry:
        return ScanEntry(
            seq=row["seq"],
            received_at=row["received_at"],
            result=MatchResult.model_validate_json(row["result"]),
            confirmed_product=row["confirmed_product"],
            confirmed_by=row["confirmed_by"],
            confirmed_at=row["confirmed_at"],
            outcome=CatalogOutcome.model_validate_json(row["outcome"]) if row["outcome"] else None,
        )
