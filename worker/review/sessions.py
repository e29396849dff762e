"""Server-side sessions of the review desk: the signed cookie carries only a random session
id, and a session is valid while its row is here. Signing out, a name leaving the user list
(checked on every request) and the end of `session_hours` each end it for every copy of
the cookie, not just the browser's."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

from worker.review.history import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_person ON sessions (person);
"""


class SessionStore:
    """Thread-safe; its own table in the desk's SQLite file (sessions survive a restart
    when the session secret is configured)."""

    def __init__(self, path: Path, lifetime_seconds: float) -> None:
        self.lifetime = lifetime_seconds
        self._lock = threading.Lock()
        self._db = open_database(path, SCHEMA)

    def open(self, person: str) -> str:
        """A new session of `person`; returns its id (expired sessions are swept here)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock, self._db:
            self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            self._db.execute(
                "INSERT INTO sessions (session_id, person, expires_at) VALUES (?, ?, ?)",
                (session_id, person, now + self.lifetime),
            )
        return session_id

    def person(self, session_id: str) -> str | None:
        """Who holds this session, if it is still valid."""
        with self._lock:
            row = self._db.execute(
                "SELECT person FROM sessions WHERE session_id = ? AND expires_at > ?",
                (session_id, time.time()),
            ).fetchone()
        return row[0] if row else None

    def end(self, session_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
