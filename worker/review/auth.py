"""Who is signed in to the review desk, what they may do, and CSRF protection.

People sign in with a name and password from the configured user list (scrypt hashes made by
`jewelmatch hash-password`), or a reverse proxy names them in a header, believed only from
the configured proxy addresses and only when it comes once. The session is a signed cookie
(SameSite=Strict) that holds a server-side session id (`sessions.SessionStore`) and a CSRF
token; every POST must carry that token. Password checks are few at a time (scrypt takes
16 MiB each) and failed ones are rate-limited per address and per name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.exceptions import HTTPException
from starlette.requests import Request

from worker.observability.logs import get_logger
from worker.review.sessions import SessionStore
from worker.settings import ReviewRole, ReviewSettings

log = get_logger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
CSRF_FIELD = "csrf_token"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt:n:r:p:salt:hash` (base64), for JEWELMATCH_REVIEW__USERS (no `$`, which
    compose and shells would expand)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    encode = base64.b64encode
    return (
        f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{encode(salt).decode()}:{encode(digest).decode()}"
    )


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split(":")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Person:
    name: str
    role: ReviewRole

    @property
    def is_ops(self) -> bool:
        return self.role is ReviewRole.ops


class SignInThrottled(Exception):
    """Too many failed sign-ins from this address or for this name in the last minute."""


class Authenticator:
    def __init__(self, settings: ReviewSettings, sessions: SessionStore) -> None:
        self.settings = settings
        self.users = {user.name: user for user in settings.users}
        self.sessions = sessions
        self._password_checks = threading.BoundedSemaphore(settings.sign_in_concurrency)
        self._failures = MovingWindowRateLimiter(MemoryStorage())
        self._allowed_failures = RateLimitItemPerMinute(settings.sign_in_attempts_per_minute)

    def sign_in(self, name: str, password: str, address: str) -> Person | None:
        """The person, if the password is theirs. Raises `SignInThrottled` without checking
        anything once this address or name has failed too often in the last minute."""
        keys = (("address", address), ("name", name[:64]))
        if not all(self._failures.test(self._allowed_failures, *key) for key in keys):
            raise SignInThrottled(name)
        person = self._check_password(name, password)
        if person is None:
            for key in keys:
                self._failures.hit(self._allowed_failures, *key)
        return person

    def _check_password(self, name: str, password: str) -> Person | None:
        user = self.users.get(name)
        with self._password_checks:
            if user is None or user.password_hash is None:
                hash_password(password)  # the same work either way: no timing hint of names
                return None
            if not password_matches(password, user.password_hash.get_secret_value()):
                return None
        return Person(user.name, user.role)

    def person(self, request: Request) -> Person | None:
        """The signed-in person of this request, if any: named by a trusted proxy's header,
        or holding a live session of a name still in the user list."""
        name = self._proxy_named(request)
        if name:
            user = self.users.get(name)
            return Person(name, user.role if user else ReviewRole.reviewer)
        session_id = request.session.get("sid")
        name = self.sessions.person(session_id) if isinstance(session_id, str) else None
        user = self.users.get(name) if name else None
        if user is None or user.password_hash is None:
            return None  # signed out, expired, or a name removed from the list since
        return Person(user.name, user.role)

    def _proxy_named(self, request: Request) -> str | None:
        header = self.settings.trusted_user_header
        if not header or not self._from_trusted_proxy(request):
            return None
        values = request.headers.getlist(header)
        if len(values) != 1:
            if values:  # a client's copy passed on beside the proxy's: believe neither
                log.warning("review.proxy_header_repeated", header=header, count=len(values))
            return None
        return values[0].strip() or None

    def _from_trusted_proxy(self, request: Request) -> bool:
        if request.client is None:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in network for network in self.settings.trusted_proxies)

    def open_session(self, request: Request, person: Person) -> None:
        request.session.clear()  # the form token too: the next page makes a fresh one
        request.session["sid"] = self.sessions.open(person.name)

    def end_session(self, request: Request) -> None:
        session_id = request.session.get("sid")
        if isinstance(session_id, str):
            self.sessions.end(session_id)
        request.session.clear()


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def checked_form(request: Request):
    """The POSTed form, once its CSRF token is this session's; else 403."""
    form = await request.form()
    sent = form.get(CSRF_FIELD) or ""
    expected = request.session.get("csrf") or ""
    if not expected or not hmac.compare_digest(str(sent).encode(), str(expected).encode()):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
    return form
