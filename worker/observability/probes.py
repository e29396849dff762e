"""What operators and Kubernetes probe: liveness, readiness and Prometheus metrics over HTTP."""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from worker.errors import StartupError
from worker.observability.prometheus import READY
from worker.settings import OpsSettings


class Health:
    """Shared state the consumer loop updates and the probes read."""

    def __init__(self, stall_seconds: float = 120.0) -> None:
        self.model_loaded = False
        self.broker_connected = False
        self.stopping = False
        self.catalog: Callable[[], list[dict]] | None = None  # set once the index is open
        self._last_beat = time.monotonic()
        self._stall_seconds = stall_seconds

    def beat(self) -> None:
        """Called by the consumer loop every turn: proves it is not stuck."""
        self._last_beat = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._last_beat < self._stall_seconds

    @property
    def ready(self) -> bool:
        ready = self.model_loaded and self.broker_connected and not self.stopping
        READY.set(1 if ready else 0)
        return ready


REQUEST_TIMEOUT_SECONDS = 5.0
"""A connection that sends nothing for this long is closed (it never blocks a probe)."""


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_SECONDS  # socket timeout of each connection

    def log_message(self, format, *args) -> None:  # probes every few seconds: no access log
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per connection, so that an idle or slow client never delays a probe."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        """A client that went silent or away is not an error worth a traceback."""


class CachedCatalog:
    """The product list /catalog serves, read from the index at most once per `max_age`
    seconds however often it is asked (one reader at a time)."""

    def __init__(self, read: Callable[[], list[dict]], max_age: float) -> None:
        self._read = read
        self._max_age = max_age
        self._lock = threading.Lock()
        self._body = b""
        self._read_at = -math.inf

    def body(self) -> bytes:
        with self._lock:
            if time.monotonic() - self._read_at >= self._max_age or not self._body:
                self._body = json.dumps({"products": self._read()}).encode()
                self._read_at = time.monotonic()
            return self._body


LOOPBACK = ("127.", "::1", "::ffff:127.")


def catalog_allowed(environ: dict, token: str | None) -> bool:
    """With a token, only a request bearing it; without, only a client on this machine."""
    if token is None:
        return str(environ.get("REMOTE_ADDR", "")).startswith(LOOPBACK)
    sent = environ.get("HTTP_AUTHORIZATION", "")
    return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


def serve_ops(health: Health, ops: OpsSettings) -> WSGIServer:
    """Serve /livez, /readyz, /metrics and /catalog (the products in this worker's index, for
    the review desk only: `catalog_allowed`) in a daemon thread; returns the server. A port
    already taken is a `StartupError` naming the setting."""
    metrics_app = make_wsgi_app()
    token = ops.catalog_token.get_secret_value() if ops.catalog_token else None
    # read through `health`, whose catalog is set once the index is open
    catalog = CachedCatalog(lambda: health.catalog(), ops.catalog_cache_seconds)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            ok = health.alive if path == "/livez" else health.ready
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [b"ok\n" if ok else b"not ready\n"]
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/catalog" and health.catalog is not None:
            if not catalog_allowed(environ, token):
                start_response("403 Forbidden", [("Content-Type", "text/plain")])
                return [b"the catalog is for the review desk (JEWELMATCH_OPS__CATALOG_TOKEN)\n"]
            if health.stopping:  # its index closes next: the desk asks another worker
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"stopping\n"]
            body = catalog.body()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    try:
        server = make_server(
            ops.http_host,
            ops.http_port,
            app,
            server_class=ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
    except OSError as error:
        raise StartupError(
            f"cannot serve the ops endpoint on {ops.http_host}:{ops.http_port}: "
            f"{error.strerror or error} (JEWELMATCH_OPS__HTTP_PORT, JEWELMATCH_OPS__HTTP_HOST)"
        ) from None
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server
