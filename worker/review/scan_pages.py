"""The warehouse's pages: the worklist, every scan, one scan to confirm or correct (or set
aside), and the catalog with its product search."""

from __future__ import annotations

import time
from urllib.parse import quote

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from shared import topology
from shared.contract import MatchConfirmed
from worker.amqp.broker import BROKER_ERRORS
from worker.observability.logs import get_logger
from worker.review.auth import checked_form
from worker.review.desk import Desk
from worker.review.history import ScanFilter
from worker.review.pages import page, positive_number, signed_in

log = get_logger(__name__)

CATALOG_ROWS = 500
"""Products listed at once on the catalog page (a search narrows them)."""
PRODUCT_SUGGESTIONS = 20


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


async def worklist(request: Request) -> Response:
    """The scans that need a person, oldest first."""
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    entries = await run_in_threadpool(desk.history.worklist, desk.review.review_below_score)
    done = await just_confirmed(request, desk)
    if request.query_params.get("fragment"):
        return page(request, "_scan_rows.html", person, entries=entries, query={})
    return page(request, "worklist.html", person, entries=entries, done=done)


async def worklist_count(request: Request) -> Response:
    """The number in the navigation, refreshed live."""
    desk: Desk = request.app.state.desk
    signed_in(request)
    count = await run_in_threadpool(desk.history.worklist_count, desk.review.review_below_score)
    return PlainTextResponse(str(count))


async def scan(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    scan_id = request.path_params["scan_id"]
    entry = await run_in_threadpool(desk.history.scan, scan_id)
    if entry is None:
        raise HTTPException(404, "this scan is not in the desk's history")
    previous, following = await run_in_threadpool(
        desk.history.worklist_neighbours, scan_id, desk.review.review_below_score
    )
    name = "_scan_detail.html" if request.query_params.get("fragment") else "scan.html"
    return page(
        request,
        name,
        person,
        entry=entry,
        previous=previous,
        following=following,
        done=await just_confirmed(request, desk),
    )


async def just_confirmed(request: Request, desk: Desk):
    """The scan confirmed just before this page (`?done=`), while it may still be changed."""
    done_id = request.query_params.get("done")
    if not done_id:
        return None
    done = await run_in_threadpool(desk.history.scan, done_id)
    if done is None or done.confirmed_at is None:
        return None
    return done if time.time() - done.confirmed_at <= desk.review.undo_seconds else None


async def set_aside(request: Request) -> Response:
    """Off the worklist without a confirmation (e.g. a failed scan photographed again)."""
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    await checked_form(request)
    scan_id = request.path_params["scan_id"]
    _, following = await run_in_threadpool(
        desk.history.worklist_neighbours, scan_id, desk.review.review_below_score
    )
    await run_in_threadpool(desk.history.set_aside, scan_id, person.name)
    log.info("review.set_aside", scan_id=scan_id, person=person.name)
    return RedirectResponse(f"/scans/{quote(following)}" if following else "/worklist", 303)


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
    _, following = await run_in_threadpool(
        desk.history.worklist_neighbours, scan_id, desk.review.review_below_score
    )
    # on to the next scan that needs a person; after the last, this one with its outcome
    then = (
        f"/scans/{quote(following)}?done={quote(scan_id)}"
        if following
        else f"/scans/{quote(scan_id)}"
    )
    if event.product_id == entry.confirmed_product:
        return RedirectResponse(then, 303)  # a second click: already sent
    if event.product_id not in {m.product_id for m in entry.result.matches}:
        await check_in_catalog(desk, event.product_id)
    # recorded first: the worker's outcome may arrive before the publish returns
    correction = await run_in_threadpool(
        desk.history.record_confirmation, scan_id, event.product_id, person.name
    )
    try:
        await run_in_threadpool(desk.broker.publish, topology.MATCH_CONFIRMED, event)
    except BROKER_ERRORS as error:
        await run_in_threadpool(desk.history.forget_confirmation, scan_id, entry)
        log.error("review.confirm_failed", scan_id=scan_id, error=str(error))
        raise HTTPException(503, "the broker is unavailable: nothing was sent, try again") from None
    log.info(
        "review.corrected" if correction else "review.confirmed",
        scan_id=scan_id,
        product_id=event.product_id,
        person=person.name,
    )
    return RedirectResponse(then, 303)


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


def holds_text(product: dict, text: str) -> bool:
    """Whether a product's SKU, id or name holds `text` (lower case), as the searches ask."""
    return text in f"{product['sku']} {product['product_id']} {product.get('name') or ''}".lower()


async def catalog(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    products = await run_in_threadpool(desk.catalog)
    matched = await run_in_threadpool(desk.history.matched_products)
    text = request.query_params.get("q", "").strip().lower()
    shown = [p for p in products if not text or holds_text(p, text)]
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


async def products(request: Request) -> Response:
    """Up to 20 products whose SKU, id or name holds `q`, for the "none of these" field
    (the whole list never travels to the page)."""
    desk: Desk = request.app.state.desk
    signed_in(request)
    text = request.query_params.get("q", "").strip().lower()[:100]
    found = []
    if text:
        for p in await run_in_threadpool(desk.catalog):
            if holds_text(p, text):
                found.append({k: p.get(k) for k in ("product_id", "sku", "name")})
                if len(found) == PRODUCT_SUGGESTIONS:
                    break
    return JSONResponse({"products": found})
