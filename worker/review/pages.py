"""The review desk's pages, one function per endpoint: each takes the desk from the app
(`request.app.state.desk`) and renders a server-side template (Jinja2)."""

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
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from shared import topology
from shared.contract import MatchConfirmed, S3Object
from worker.amqp.broker import BROKER_ERRORS
from worker.errors import PermanentError, TransientError
from worker.observability.logs import get_logger
from worker.review.auth import Person, SignInThrottled, checked_form, csrf_token
from worker.review.desk import Desk
from worker.review.history import ScanFilter
from worker.review.operations import DeadLetterGone

log = get_logger(__name__)

HERE = Path(__file__).parent
IMAGE_TYPES = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG": "image/png",
    b"RIFF": "image/webp",
    b"GIF8": "image/gif",
}
CATALOG_ROWS = 500
"""Products listed at once on the catalog page (a search narrows them)."""
LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~%/?=&+-]*")
"""Where a sign-in may send its person on: a path of this site only."""


def image_url(ref: S3Object | str | None) -> str | None:
    """The desk's proxy URL of an image (the same bucket allowlist as the worker)."""
    if ref is None:
        return None
    if isinstance(ref, str):
        ref = S3Object.model_validate(ref)
    return f"/image/{quote(ref.bucket)}/{quote(ref.key)}"


def positive_number(text: str) -> float | None:
    """A query's number of hours, or None for anything else (`²`, `nan`, `-1`, `1e999`)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else ""


TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.globals.update(image_url=image_url, when=when)


def page(request: Request, name: str, person: Person | None, status_code: int = 200, **context):
    context.update(person=person, csrf=csrf_token(request), path=request.url.path)
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
        request, "login.html", None, next=request.query_params.get("next", "/scans"), error=None
    )


async def login(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    form = await checked_form(request)
    name = str(form.get("name", ""))
    address = request.client.host if request.client else ""
    target = str(form.get("next") or "/scans")
    if not LOCAL_PATH.fullmatch(target):
        target = "/scans"  # no open redirect ("//host", "/\\host", "https://...")
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


# scans --------------------------------------------------------------------------------


async def scans(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    query = request.query_params
    hours = positive_number(query.get("hours", ""))
    where = ScanFilter(
        status=query.get("status") or None,
        station=query.get("station") or None,
        since=time.time() - hours * 3600 if hours is not None else None,
        text=query.get("q") or None,
    )
    entries = await run_in_threadpool(desk.history.scans, where)
    if query.get("fragment"):  # the live refresh: the rows only
        return page(request, "_scan_rows.html", person, entries=entries, query=query)
    stations = await run_in_threadpool(desk.history.stations)
    return page(request, "scans.html", person, entries=entries, query=query, stations=stations)


async def scan(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    entry = await run_in_threadpool(desk.history.scan, request.path_params["scan_id"])
    if entry is None:
        raise HTTPException(404, "this scan is not in the desk's history")
    name = "_scan_detail.html" if request.query_params.get("fragment") else "scan.html"
    return page(request, name, person, entry=entry)


async def confirm(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    form = await checked_form(request)
    scan_id = request.path_params["scan_id"]
    entry = await run_in_threadpool(desk.history.scan, scan_id)
    if entry is None:
        raise HTTPException(404, "this scan is not in the desk's history")
    try:
        event = MatchConfirmed(
            scan_id=scan_id,
            product_id=str(form.get("product_id", "")).strip(),
            confirmed_by=person.name,
            image=entry.result.image,
            receipt=entry.result.receipt,
        )
    except ValidationError:
        raise HTTPException(400, "not a valid product id") from None
    if event.product_id not in {m.product_id for m in entry.result.matches}:
        await check_in_catalog(desk, event.product_id)
    # recorded first: the worker's outcome may arrive before the publish returns
    await run_in_threadpool(
        desk.history.record_confirmation, scan_id, event.product_id, person.name
    )
    try:
        await run_in_threadpool(desk.broker.publish, topology.MATCH_CONFIRMED, event)
    except BROKER_ERRORS as error:
        await run_in_threadpool(desk.history.forget_confirmation, scan_id)
        log.error("review.confirm_failed", scan_id=scan_id, error=str(error))
        raise HTTPException(503, "the broker is unavailable: nothing was sent, try again") from None
    log.info("review.confirmed", scan_id=scan_id, product_id=event.product_id, person=person.name)
    return RedirectResponse(f"/scans/{quote(scan_id)}", 303)


async def check_in_catalog(desk: Desk, product_id: str) -> None:
    """A typed product id (not one of the scan's candidates) must be in the catalog before
    anything is published: a typing mistake would otherwise become an ops dead letter."""
    products = await run_in_threadpool(desk.catalog)
    if not products:
        raise HTTPException(
            503, "the product list cannot be read from the workers: nothing was sent, try again"
        )
    if not any(p["product_id"] == product_id for p in products):
        raise HTTPException(400, f"no product {product_id!r} in the catalog: nothing was sent")


# catalog -----------------------------------------------------------------------------


async def catalog(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    products = await run_in_threadpool(desk.catalog)
    matched = await run_in_threadpool(desk.history.matched_products)
    text = request.query_params.get("q", "").strip().lower()
    shown = [
        p
        for p in products
        if not text or text in f"{p['sku']} {p['product_id']} {p.get('name') or ''}".lower()
    ]
    return page(
        request,
        "catalog.html",
        person,
        products=products,
        shown=shown[:CATALOG_ROWS],
        matching=len(shown),
        query=text,
        never_matched=[p for p in products if p["product_id"] not in matched],
        unconfirmed=[p for p in products if not p["confirmed_photos"]],
    )


PRODUCT_SUGGESTIONS = 20


async def products(request: Request) -> Response:
    """Up to 20 products whose SKU, id or name holds `q`, for the "none of these" field
    (the whole list never travels to the page)."""
    desk: Desk = request.app.state.desk
    signed_in(request)
    text = request.query_params.get("q", "").strip().lower()[:100]
    found = []
    if text:
        for p in await run_in_threadpool(desk.catalog):
            if text in f"{p['sku']} {p['product_id']} {p.get('name') or ''}".lower():
                found.append({k: p.get(k) for k in ("product_id", "sku", "name")})
                if len(found) == PRODUCT_SUGGESTIONS:
                    break
    return JSONResponse({"products": found})


# ops ----------------------------------------------------------------------------------


async def ops(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    if not person.is_ops:
        raise HTTPException(403, "the ops page is for ops")
    depths = await run_in_threadpool(desk.broker.depths)
    workers = await run_in_threadpool(desk.worker_states)
    try:
        letters = await run_in_threadpool(desk.broker.dead_letters, desk.review.dead_letters_shown)
        broker_error = None
    except BROKER_ERRORS as error:
        letters, broker_error = [], str(error)
    return page(
        request,
        "ops.html",
        person,
        depths=depths,
        workers=workers,
        letters=letters,
        done=request.query_params.get("done"),
        broker_error=broker_error,
    )


async def dead_letter_action(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    await checked_form(request)
    if not person.is_ops:
        raise HTTPException(403, "only ops may replay or discard dead letters")
    fingerprint = request.path_params["fingerprint"]
    action = request.path_params["action"]
    acts = {"replay": desk.broker.replay, "discard": desk.broker.discard}
    if action not in acts:
        raise HTTPException(404)
    act = acts[action]
    try:
        await run_in_threadpool(act, fingerprint, person.name)
    except DeadLetterGone:
        return RedirectResponse("/ops?done=gone", 303)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    except BROKER_ERRORS as error:
        log.error("review.dead_letter_failed", action=action, error=str(error))
        raise HTTPException(503, "the broker is unavailable: try again") from None
    return RedirectResponse(f"/ops?done={action}", 303)


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
    media_type = next(
        (kind for magic, kind in IMAGE_TYPES.items() if blob.data.startswith(magic)), None
    )
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
    return RedirectResponse("/scans", 303)
