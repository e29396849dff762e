"""What operators and Kubernetes probe: liveness, readiness and Prometheus metrics over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from worker.observability.prometheus import READY


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


def serve_ops(health: Health, host: str, port: int) -> WSGIServer:
    """Serve /livez, /readyz, /metrics and /catalog (the products in this worker's index, for
    the review desk) in a daemon thread; returns the server."""
    metrics_app = make_wsgi_app()

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
            body = json.dumps({"products": health.catalog()}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    server = make_server(
        host, port, app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server
