"""What every page of the review desk shares (rendering, who is signed in, the words it
shows for codes), and the pages of no one in particular: sign-in, images, health. Each
endpoint is a function that takes the desk from the app (`request.app.state.desk`);
`scan_pages` and `ops_pages` hold the others."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from shared.contract import S3Object
from worker.errors import PermanentError, TransientError
from worker.observability.logs import get_logger
from worker.review.auth import Person, SignInThrottled, checked_form, csrf_token
from worker.review.desk import Desk

log = get_logger(__name__)

HERE = Path(__file__).parent
IMAGE_TYPES = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG": "image/png",
    b"GIF8": "image/gif",
}
"""Media types by their files' first bytes (WebP, a kind of RIFF file: `image_media_type`)."""
LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~%/?=&+-]*")
"""Where a sign-in may send its person on: a path of this site only."""


def image_url(ref: S3Object | str | None) -> str | None:
    """The desk's proxy URL of an image (the same bucket allowlist as the worker)."""
    if ref is None:
        return None
    if isinstance(ref, str):
        ref = S3Object.model_validate(ref)
    return f"/image/{quote(ref.bucket)}/{quote(ref.key)}"


def image_media_type(data: bytes) -> str | None:
    """The media type of an image the desk shows, from its first bytes; None for anything
    else (a RIFF file that is not WebP, a WAV or an AVI, is not an image)."""
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in IMAGE_TYPES.items() if data.startswith(magic)), None)


def positive_number(text: str) -> float | None:
    """A query's number of hours, or None for anything else (`²`, `nan`, `-1`, `1e999`)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else ""


STATUS_LABELS = {
    "matched": "Matched",
    "no_confident_match": "Needs a person",
    "failed": "Failed",
}
REASON_LABELS = {
    "invalid_message": "the scan's message was not valid",
    "bucket_not_allowed": "the photo lies in a bucket the worker may not read",
    "image_not_found": "the photo is not in storage",
    "image_access_denied": "storage refused the photo",
    "image_too_large": "the photo is too large",
    "image_unreadable": "the photo cannot be read (damaged, or not a photo)",
    "unknown_scan": "unknown scan",
    "scan_id_reused": "this scan id was used before for another photo",
    "not_authorized": "the sender may not do this",
    "unknown_product": "no such product in the catalog",
    "dependency_unavailable": "storage or the index was unavailable: photograph it again",
    "internal_error": "an internal error (ops see it among the dead letters)",
}


def label(value) -> str:
    """A status or reason in the words of the people using the desk."""
    text = getattr(value, "value", value) or ""
    return STATUS_LABELS.get(text) or REASON_LABELS.get(text) or text.replace("_", " ")


def age(timestamp: float | None) -> str:
    """How long ago, in the largest unit that fits."""
    if not timestamp:
        return ""
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.globals.update(image_url=image_url, when=when, label=label, age=age)


def page(request: Request, name: str, person: Person | None, status_code: int = 200, **context):
    """A rendered template; every page of a signed-in person shows the worklist's count (not
    the `_fragment` templates of the live refresh, which have no navigation)."""
    desk: Desk = request.app.state.desk
    whole_page = person is not None and not name.startswith("_")
    to_review = desk.history.worklist_count(desk.review.review_below_score) if whole_page else 0
    context.update(
        person=person, csrf=csrf_token(request), path=request.url.path, to_review=to_review
    )
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)


def signed_in(request: Request) -> Person:
    person = request.app.state.desk.auth.person(request)
    if person is None:
        raise HTTPException(
            303, headers={"Location": "/login?" + urlencode({"next": request.url.path})}
        )
    return person


# sign-in ----------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    return page(
        request, "login.html", None, next=request.query_params.get("next", "/worklist"), error=None
    )


async def login(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    form = await checked_form(request)
    name = str(form.get("name", ""))
    address = request.client.host if request.client else ""
    target = str(form.get("next") or "/worklist")
    if not LOCAL_PATH.fullmatch(target):
        target = "/worklist"  # no open redirect ("//host", "/\\host", "https://...")
    try:
        person = await run_in_threadpool(
            desk.auth.sign_in, name, str(form.get("password", "")), address
        )
    except SignInThrottled:
        log.warning("review.sign_in_throttled", name=name[:64], address=address)
        error = "Too many failed sign-ins: wait a minute and try again."
        return page(request, "login.html", None, 429, next=target, error=error)
    if person is None:
        log.warning("review.sign_in_refused", name=name[:64], address=address)
        error = "Unknown name or wrong password."
        return page(request, "login.html", None, 401, next=target, error=error)
    await run_in_threadpool(desk.auth.open_session, request, person)
    log.info("review.signed_in", person=person.name, role=person.role.value)
    return RedirectResponse(target, 303)


async def logout(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    await checked_form(request)
    await run_in_threadpool(desk.auth.end_session, request)
    return RedirectResponse("/login", 303)


# images and health -------------------------------------------------------------------


async def image(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    signed_in(request)
    try:
        ref = S3Object(bucket=request.path_params["bucket"], key=request.path_params["key"])
    except ValidationError:
        raise HTTPException(404) from None
    try:
        blob = await run_in_threadpool(desk.store.fetch, ref)
    except PermanentError as error:
        raise HTTPException(404, error.reason.value) from None
    except TransientError:
        raise HTTPException(503, "image storage unavailable") from None
    media_type = image_media_type(blob.data)
    if media_type is None:
        raise HTTPException(415, "not an image")
    return Response(
        blob.data,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def home(request: Request) -> Response:
    return RedirectResponse("/worklist", 303)
