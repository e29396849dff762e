"""The desk's memory: the latest scans with their answers, what became of each
confirmation, and who confirmed or corrected what when, in one SQLite file (bounded: the
oldest scans go first). The worklist is the scans that still need a person: those the
worker could not answer with confidence (or answered below the ops' score), oldest first,
until someone confirms or sets them aside."""

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
CREATE TABLE IF NOT EXISTS confirmations (
    scan_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    person TEXT NOT NULL,
    at REAL NOT NULL,
    correction INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS confirmations_at ON confirmations (at);
"""
ADDED_COLUMNS = {"set_aside_by": "TEXT", "set_aside_at": "REAL"}
"""Columns added since the first schema (an existing file gets them on open)."""

LOG_SECONDS = 31 * 24 * 3600
"""How long the per-person log of confirmations is kept."""

TOP_SCORE = "COALESCE(json_extract(result, '$.matches[0].score'), 0)"


@dataclass(frozen=True)
class PersonHour:
    """What one person did in one clock hour."""

    person: str
    hour: float  # epoch seconds of the hour's start
    confirmations: int
    corrections: int


@dataclass(frozen=True)
class ScanEntry:
    seq: int
    received_at: float
    result: MatchResult
    confirmed_product: str | None = None
    confirmed_by: str | None = None
    confirmed_at: float | None = None
    outcome: CatalogOutcome | None = None
    set_aside_by: str | None = None

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


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The desk's SQLite file (made with its folder if new), shared across threads (each
    user holds its own lock), in WAL mode, with `schema`'s tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    return db


class History:
    """Thread-safe: the feed writes from its thread while pages read."""

    def __init__(self, path: Path, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._db = open_database(path, SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(scans)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE scans ADD COLUMN {column} {kind}")

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

    def record_confirmation(self, scan_id: str, product_id: str, person: str) -> bool:
        """The scan's confirmation (a later one, a correction, replaces it); logged per person.
        Returns whether it corrected an earlier confirmation."""
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT confirmed_product FROM scans WHERE scan_id = ?", (scan_id,)
            ).fetchone()
            correction = bool(row and row[0] is not None)
            self._db.execute("DELETE FROM confirmations WHERE at < ?", (time.time() - LOG_SECONDS,))
            self._db.execute(
                "INSERT INTO confirmations (scan_id, product_id, person, at, correction)"
                " VALUES (?, ?, ?, ?, ?)",
                (scan_id, product_id, person, time.time(), int(correction)),
            )
            self._db.execute(
                """UPDATE scans SET confirmed_product = ?, confirmed_by = ?, confirmed_at = ?,
                       outcome = NULL, search = search || ' ' || ?
                   WHERE scan_id = ?""",
                (product_id, person, time.time(), product_id.lower(), scan_id),
            )
        return correction

    def forget_confirmation(self, scan_id: str, previous: ScanEntry) -> None:
        """A confirmation that could not be sent: the scan as it was before, and no log."""
        with self._lock, self._db:
            self._db.execute(
                """UPDATE scans SET confirmed_product = ?, confirmed_by = ?,
                       confirmed_at = ?, outcome = ? WHERE scan_id = ?""",
                (
                    previous.confirmed_product,
                    previous.confirmed_by,
                    previous.confirmed_at,
                    previous.outcome.model_dump_json() if previous.outcome else None,
                    scan_id,
                ),
            )
            self._db.execute(
                "DELETE FROM confirmations WHERE rowid = (SELECT MAX(rowid) FROM confirmations"
                " WHERE scan_id = ?)",
                (scan_id,),
            )

    def set_aside(self, scan_id: str, person: str) -> None:
        """Off the worklist without a confirmation (a failed scan photographed again)."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE scans SET set_aside_by = ?, set_aside_at = ? WHERE scan_id = ?",
                (person, time.time(), scan_id),
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

    def _needing(self, below_score: float | None) -> tuple[str, list]:
        """The WHERE clause of the worklist."""
        wanting = "status IN ('no_confident_match', 'failed')"
        values: list = []
        if below_score is not None:
            wanting = f"({wanting} OR (status = 'matched' AND {TOP_SCORE} < ?))"
            values.append(below_score)
        return (
            f"{wanting} AND confirmed_product IS NULL AND set_aside_by IS NULL",
            values,
        )

    def worklist(self, below_score: float | None, limit: int = 50) -> list[ScanEntry]:
        """The scans that need a person, oldest first."""
        where, values = self._needing(below_score)
        rows = self._rows(
            f"SELECT * FROM scans WHERE {where} ORDER BY seq LIMIT ?", [*values, limit]
        )
        return [self._entry(row) for row in rows]

    def worklist_count(self, below_score: float | None) -> int:
        where, values = self._needing(below_score)
        return self._rows(f"SELECT COUNT(*) AS n FROM scans WHERE {where}", values)[0]["n"]

    def worklist_neighbours(
        self, scan_id: str, below_score: float | None
    ) -> tuple[str | None, str | None]:
        """The worklist's scans before and after this one (which need not be on it now)."""
        where, values = self._needing(below_score)
        seq = self._rows("SELECT seq FROM scans WHERE scan_id = ?", [scan_id])
        if not seq:
            return None, None
        at = seq[0]["seq"]
        before = self._rows(
            f"SELECT scan_id FROM scans WHERE {where} AND seq < ? ORDER BY seq DESC LIMIT 1",
            [*values, at],
        )
        after = self._rows(
            f"SELECT scan_id FROM scans WHERE {where} AND seq > ? ORDER BY seq LIMIT 1",
            [*values, at],
        )
        return (
            before[0]["scan_id"] if before else None,
            after[0]["scan_id"] if after else None,
        )

    def work_per_person(self, since: float) -> list[PersonHour]:
        """Confirmations and corrections per person and clock hour since `since`, newest
        hour first."""
        rows = self._rows(
            """SELECT person, CAST(at / 3600 AS INTEGER) * 3600 AS hour,
                      SUM(1 - correction) AS confirmations, SUM(correction) AS corrections
               FROM confirmations WHERE at >= ? GROUP BY person, hour
               ORDER BY hour DESC, person""",
            [since],
        )
        return [PersonHour(**row) for row in rows]

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
            set_aside_by=row.get("set_aside_by"),
        )
