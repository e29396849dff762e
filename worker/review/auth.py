"""Who is signed in to the review desk, what they may do, and CSRF protection.

People sign in with a name and password from the configured user list (scrypt hashes made by
`jewelmatch hash-password`), or a trusted reverse proxy names them in a header. The session
is a signed cookie (SameSite=Strict) that holds the name and a CSRF token; every POST must
carry that token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request

from worker.settings import ReviewRole, ReviewSettings

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


class Authenticator:
    def __init__(self, settings: ReviewSettings) -> None:
        self.settings = settings
        self.users = {user.name: user for user in settings.users}

    def sign_in(self, name: str, password: str) -> Person | None:
        user = self.users.get(name)
        if user is None or user.password_hash is None:
            hash_password(password)  # the same work either way: no timing hint of names
            return None
        if not password_matches(password, user.password_hash.get_secret_value()):
            return None
        return Person(user.name, user.role)

    def person(self, request: Request) -> Person | None:
        """The signed-in person of this request, if any."""
        header = self.settings.trusted_user_header
        name = request.headers.get(header, "").strip() if header else ""
        if not name:
            name = request.session.get("user") or ""
        if not name:
            return None
        user = self.users.get(name)
        if user is None and not header:
            return None  # a session of a user removed since
        return Person(name, user.role if user else ReviewRole.reviewer)


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def checked_form(request: Request):
    """The POSTed form, once its CSRF token is this session's; else 403."""
    form = await request.form()
    sent = form.get(CSRF_FIELD) or request.headers.get("x-csrf-token") or ""
    expected = request.session.get("csrf") or ""
    if not expected or not hmac.compare_digest(str(sent), expected):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
    return form
