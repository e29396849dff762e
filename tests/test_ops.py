"""The ops endpoint keeps answering probes whatever its other clients do."""

from __future__ import annotations

import socket
import urllib.request

from worker.observability.probes import Health, serve_ops
from worker.tools.bench.servers import free_port


def test_livez_answers_while_fifty_idle_connections_are_open():
    health = Health()
    port = free_port()
    server = serve_ops(health, "127.0.0.1", port)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        for _ in range(3):  # a single-threaded server never answers: the idle ones hold it
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=4) as reply:
                assert reply.status == 200
    finally:
        for connection in idle:
            connection.close()
        server.shutdown()


def test_an_idle_connection_is_closed_after_the_request_timeout(monkeypatch):
    from worker.observability import probes as ops

    monkeypatch.setattr(ops._QuietHandler, "timeout", 0.3)
    port = free_port()
    server = serve_ops(Health(), "127.0.0.1", port)
    try:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.settimeout(3)
            assert connection.recv(1) == b""  # the server hung up on the silent client
    finally:
        server.shutdown()
