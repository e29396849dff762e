"""The review desk's web app: its routes, session middleware and life cycle (Starlette,
server-rendered pages in `pages`, a little plain JavaScript for live updates), served by
uvicorn."""

from __future__ import annotations

import secrets
import socket
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from worker.errors import StartupError
from worker.observability.logs import get_logger
from worker.pipeline.storage import ImageStore
from worker.review import ops_pages, pages, scan_pages
from worker.review.desk import Desk, replica_urls
from worker.review.headers import SecurityHeaders
from worker.settings import Settings

log = get_logger(__name__)

HERE = Path(__file__).parent

ROUTES = [
    Route("/", pages.home),
    Route("/healthz", pages.healthz),
    Route("/login", pages.login_form, methods=["GET"]),
    Route("/login", pages.login, methods=["POST"]),
    Route("/logout", pages.logout, methods=["POST"]),
    Route("/worklist", scan_pages.worklist),
    Route("/worklist/count", scan_pages.worklist_count),
    Route("/scans", scan_pages.scans),
    Route("/scans/{scan_id:path}/confirm", scan_pages.confirm, methods=["POST"]),
    Route("/scans/{scan_id:path}/set-aside", scan_pages.set_aside, methods=["POST"]),
    Route("/scans/{scan_id:path}", scan_pages.scan),
    Route("/catalog", scan_pages.catalog),
    Route("/products", scan_pages.products),
    Route("/ops", ops_pages.ops),
    Route(
        "/ops/dead-letters/{fingerprint}/{action:str}",
        ops_pages.dead_letter_action,
        methods=["POST"],
    ),
    Route("/image/{bucket}/{key:path}", pages.image),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]

__all__ = ["create_app", "replica_urls", "serve"]


def create_app(settings: Settings, store: ImageStore | None = None) -> Starlette:
    desk = Desk(settings, store)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        desk.start()
        log.info(
            "review.started",
            url=f"http://{desk.review.host}:{desk.review.port}/",
            users=len(desk.auth.users),
            trusted_user_header=desk.review.trusted_user_header,
        )
        try:
            yield
        finally:
            desk.close()

    secret = desk.review.session_secret
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
                session_cookie="jewelmatch_review",
                same_site="strict",
                https_only=desk.review.secure_cookies,
                max_age=int(desk.review.session_hours * 3600),
            ),
            Middleware(SecurityHeaders),
        ],
        lifespan=lifespan,
    )
    app.state.desk = desk
    return app


def check_port_free(host: str, port: int) -> None:
    """A taken port as one line, before uvicorn would log it among its own lines."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise StartupError(
            f"cannot serve the review desk on {host}:{port}: {error.strerror or error} "
            "(JEWELMATCH_REVIEW__HOST, JEWELMATCH_REVIEW__PORT)"
        ) from None


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
    check_port_free(review.host, review.port)
    uvicorn.run(
        create_app(settings),
        host=review.host,
        port=review.port,
        log_level="warning",
        proxy_headers=False,
    )
