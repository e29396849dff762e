"""The review desk's pages (Starlette, server-rendered with Jinja2, a little plain
JavaScript for live updates), served by uvicorn."""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from shared import topology
from shared.contract import MatchConfirmed, S3Object
from worker.amqp.broker import BROKER_ERRORS
from worker.errors import PermanentError, TransientError
from worker.observability.logs import get_logger
from worker.pipeline.storage import ImageStore, open_image_store
from worker.review.auth import Authenticator, Person, checked_form, csrf_token
from worker.review.feed import ResultFeed
from worker.review.history import History, ScanFilter
from worker.review.operations import DeadLetterGone, DeskBroker
from worker.settings import Settings

log = get_logger(__name__)

HERE = Path(__file__).parent
IMAGE_TYPES = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG": "image/png",
    b"RIFF": "image/webp",
    b"GIF8": "image/gif",
}
CATALOG_CACHE_SECONDS = 15.0
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


def replica_urls(url: str) -> list[str]:
    """The URL of each replica behind `url`: a host name with several IPv4 addresses (a
    compose service with replicas, a Kubernetes headless Service) stands for each of them."""
    parts = urlsplit(url)
    try:
        found = socket.getaddrinfo(
            parts.hostname, parts.port or 80, socket.AF_INET, socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        return [url]
    addresses = sorted({info[4][0] for info in found})
    if len(addresses) < 2:
        return [url]
    port = f":{parts.port}" if parts.port else ""
    return [urlunsplit(parts._replace(netloc=f"{address}{port}")) for address in addresses]


def when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else ""


class Desk:
    """What the pages use: the history, the broker, the image store, the workers."""

    def __init__(self, settings: Settings, store: ImageStore | None = None) -> None:
        self.settings = settings
        self.review = settings.review
        self.history = History(self.review.database, self.review.history_limit)
        self.broker = DeskBroker(settings.amqp)
        self.store = store or open_image_store(settings.s3, settings.images.max_bytes)
        self.auth = Authenticator(self.review)
        self.feed = ResultFeed(settings.amqp, self.history, self.review.queue_max_length)
        self._catalog: tuple[float, list[dict]] = (0.0, [])

    def start(self) -> None:
        self.feed.start()

    def close(self) -> None:
        self.feed.stop()
        self.broker.close()
        self.history.close()

    def worker_states(self) -> list[dict]:
        """Each worker replica's /readyz answer."""
        urls = [replica for url in self.review.worker_urls for replica in replica_urls(url)]

        def probe(url: str) -> dict:
            try:
                with urllib.request.urlopen(f"{url.rstrip('/')}/readyz", timeout=3) as answer:
                    return {"url": url, "state": "ready", "code": answer.status}
            except urllib.error.HTTPError as error:
                return {"url": url, "state": "not ready", "code": error.code}
            except OSError as error:
                return {"url": url, "state": "unreachable", "code": None, "error": str(error)}

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(probe, urls))

    def catalog(self, max_age: float = CATALOG_CACHE_SECONDS) -> list[dict]:
        """The products of the first worker that answers (a copy up to `max_age` seconds
        old will do)."""
        fetched_at, products = self._catalog
        if time.monotonic() - fetched_at < max_age and products:
            return products
        for url in self.review.worker_urls:
            try:
                with urllib.request.urlopen(f"{url.rstrip('/')}/catalog", timeout=5) as answer:
                    products = json.load(answer)["products"]
            except (OSError, ValueError, KeyError) as error:
                log.warning("review.catalog_unavailable", url=url, error=str(error))
                continue
            self._catalog = (time.monotonic(), products)
            return products
        return products


# ------------------------------------------------------------------------------------------


def create_app(settings: Settings, store: ImageStore | None = None) -> Starlette:
    desk = Desk(settings, store)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(image_url=image_url, when=when)

    def page(request: Request, name: str, person: Person | None, status_code: int = 200, **context):
        context.update(person=person, csrf=csrf_token(request), path=request.url.path)
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def signed_in(request: Request) -> Person:
        person = desk.auth.person(request)
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
        form = await checked_form(request)
        person = await run_in_threadpool(
            desk.auth.sign_in, str(form.get("name", "")), str(form.get("password", ""))
        )
        target = str(form.get("next") or "/scans")
        if not LOCAL_PATH.fullmatch(target):
            target = "/scans"  # no open redirect ("//host", "/\\host", "https://...")
        if person is None:
            log.warning("review.sign_in_refused", name=str(form.get("name", ""))[:64])
            error = "Unknown name or wrong password."
            return page(request, "login.html", None, 401, next=target, error=error)
        request.session.clear()
        request.session["user"] = person.name
        csrf_token(request)  # a fresh token for the new session
        log.info("review.signed_in", person=person.name, role=person.role.value)
        return RedirectResponse(target, 303)

    async def logout(request: Request) -> Response:
        await checked_form(request)
        request.session.clear()
        return RedirectResponse("/login", 303)

    # scans --------------------------------------------------------------------------------

    async def scans(request: Request) -> Response:
        person = signed_in(request)
        query = request.query_params
        hours = query.get("hours", "")
        where = ScanFilter(
            status=query.get("status") or None,
            station=query.get("station") or None,
            since=time.time() - float(hours) * 3600
            if hours.replace(".", "", 1).isdigit()
            else None,
            text=query.get("q") or None,
        )
        entries = await run_in_threadpool(desk.history.scans, where)
        if query.get("fragment"):  # the live refresh: the rows only
            return page(request, "_scan_rows.html", person, entries=entries, query=query)
        stations = await run_in_threadpool(desk.history.stations)
        return page(request, "scans.html", person, entries=entries, query=query, stations=stations)

    async def scan(request: Request) -> Response:
        person = signed_in(request)
        entry = await run_in_threadpool(desk.history.scan, request.path_params["scan_id"])
        if entry is None:
            raise HTTPException(404, "this scan is not in the desk's history")
        name = "_scan_detail.html" if request.query_params.get("fragment") else "scan.html"
        products = await run_in_threadpool(desk.catalog)
        return page(request, name, person, entry=entry, products=products)

    async def confirm(request: Request) -> Response:
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
        # recorded first: the worker's outcome may arrive before the publish returns
        await run_in_threadpool(
            desk.history.record_confirmation, scan_id, event.product_id, person.name
        )
        try:
            await run_in_threadpool(desk.broker.publish, topology.MATCH_CONFIRMED, event)
        except BROKER_ERRORS as error:
            await run_in_threadpool(desk.history.forget_confirmation, scan_id)
            log.error("review.confirm_failed", scan_id=scan_id, error=str(error))
            raise HTTPException(
                503, "the broker is unavailable: nothing was sent, try again"
            ) from None
        log.info(
            "review.confirmed", scan_id=scan_id, product_id=event.product_id, person=person.name
        )
        return RedirectResponse(f"/scans/{quote(scan_id)}", 303)

    # catalog -----------------------------------------------------------------------------

    async def catalog(request: Request) -> Response:
        person = signed_in(request)
        products = await run_in_threadpool(desk.catalog, 0.0)
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

    # ops ----------------------------------------------------------------------------------

    async def ops(request: Request) -> Response:
        person = signed_in(request)
        depths = await run_in_threadpool(desk.broker.depths)
        workers = await run_in_threadpool(desk.worker_states)
        try:
            letters = await run_in_threadpool(
                desk.broker.dead_letters, desk.review.dead_letters_shown
            )
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

    @asynccontextmanager
    async def lifespan(app: Starlette):
        desk.start()
        log.info(
            "review.started",
            users=len(desk.auth.users),
            trusted_user_header=desk.review.trusted_user_header,
        )
        try:
            yield
        finally:
            desk.close()

    secret = desk.review.session_secret
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/healthz", healthz),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/scans", scans),
            Route("/scans/{scan_id:path}/confirm", confirm, methods=["POST"]),
            Route("/scans/{scan_id:path}", scan),
            Route("/catalog", catalog),
            Route("/ops", ops),
            Route(
                "/ops/dead-letters/{fingerprint}/{action:str}",
                dead_letter_action,
                methods=["POST"],
            ),
            Route("/image/{bucket}/{key:path}", image),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
                session_cookie="jewelmatch_review",
                same_site="strict",
                https_only=desk.review.secure_cookies,
                max_age=12 * 3600,
            )
        ],
        lifespan=lifespan,
    )
    app.state.desk = desk
    return app


def serve(settings: Settings) -> None:
    """`jewelmatch review`: the desk on uvicorn until SIGTERM."""
    import uvicorn

    review = settings.review
    if not review.users and not review.trusted_user_header:
        log.warning(
            "review.nobody_can_sign_in",
            hint="set JEWELMATCH_REVIEW__USERS (see `jewelmatch hash-password`) or "
            "JEWELMATCH_REVIEW__TRUSTED_USER_HEADER",
        )
    uvicorn.run(
        create_app(settings),
        host=review.host,
        port=review.port,
        log_level="warning",
        proxy_headers=False,
    )
