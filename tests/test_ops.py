"""The ops endpoint keeps answering probes whatever its other clients do; its product list
is for the review desk only, and read from the index at most once per cache period."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from worker.errors import StartupError
from worker.observability.probes import Health, catalog_allowed, serve_ops
from worker.settings import OpsSettings
from worker.tools.bench.servers import free_port

TOKEN = "a-catalog-token-of-at-least-32-bytes-for-tests"


def ops_settings(port: int, **values) -> OpsSettings:
    return OpsSettings(http_host="127.0.0.1", http_port=port, **values)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=4) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_livez_answers_while_fifty_idle_connections_are_open():
    health = Health()
    port = free_port()
    server = serve_ops(health, ops_settings(port))
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
    server = serve_ops(Health(), ops_settings(port))
    try:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.settimeout(3)
            assert connection.recv(1) == b""  # the server hung up on the silent client
    finally:
        server.shutdown()


def test_ready_with_its_model_and_broker_until_it_stops_and_alive_while_its_loop_turns():
    from prometheus_client import REGISTRY

    health = Health(stall_seconds=1.0)
    port = free_port()
    server = serve_ops(health, ops_settings(port))

    def probe(path: str) -> tuple[int, bytes]:
        return get(f"http://127.0.0.1:{port}{path}")

    try:
        assert probe("/readyz") == (503, b"not ready\n")  # just started: neither yet
        for flag in ("model_loaded", "broker_connected"):  # one without the other
            one = Health()
            setattr(one, flag, True)
            assert not one.ready
        health.model_loaded = health.broker_connected = True
        assert probe("/readyz") == (200, b"ok\n")
        assert REGISTRY.get_sample_value("jewelmatch_ready") == 1
        health.stopping = True
        assert probe("/readyz")[0] == 503
        assert REGISTRY.get_sample_value("jewelmatch_ready") == 0
        health.beat()
        assert probe("/livez") == (200, b"ok\n")
        time.sleep(1.1)  # the consumer loop has not turned for longer than the stall
        assert probe("/livez")[0] == 503
        health.beat()
        assert probe("/livez")[0] == 200
        # the catalog before the index is open, and any other path
        assert probe("/catalog") == (404, b"not found\n")
        assert probe("/elsewhere") == (404, b"not found\n")
    finally:
        server.shutdown()


def test_a_catalog_cache_of_zero_seconds_reads_the_index_for_every_answer():
    reads = []
    health = Health()
    health.catalog = lambda: reads.append(1) or [{"product_id": "p1"}]
    port = free_port()
    server = serve_ops(health, ops_settings(port, catalog_cache_seconds=0))
    try:
        for _ in range(3):
            assert get(f"http://127.0.0.1:{port}/catalog")[0] == 200  # from this machine
        assert len(reads) == 3
    finally:
        server.shutdown()


def test_with_a_token_the_catalog_answers_only_its_bearer_and_is_read_once_per_period():
    reads = []
    health = Health()
    health.catalog = lambda: reads.append(1) or [{"product_id": "p1"}]
    port = free_port()
    server = serve_ops(health, ops_settings(port, catalog_token=TOKEN, catalog_cache_seconds=60))
    url = f"http://127.0.0.1:{port}/catalog"
    try:
        assert get(url)[0] == 403
        assert get(url, "not-the-token")[0] == 403
        for _ in range(5):
            status, body = get(url, TOKEN)
            assert status == 200 and b'"p1"' in body
        assert len(reads) == 1  # five answers, one read of the index
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 503  # probes need no token
        health.stopping = True  # its index is about to close: the desk asks another worker
        assert get(url, TOKEN)[0] == 503
    finally:
        server.shutdown()


def test_without_a_token_the_catalog_answers_this_machine_only():
    assert catalog_allowed({"REMOTE_ADDR": "127.0.0.1"}, None)
    assert catalog_allowed({"REMOTE_ADDR": "::1"}, None)
    assert not catalog_allowed({"REMOTE_ADDR": "10.1.2.3"}, None)
    assert not catalog_allowed({"REMOTE_ADDR": "10.1.2.3", "HTTP_AUTHORIZATION": "Bearer x"}, None)
    assert catalog_allowed(
        {"REMOTE_ADDR": "10.1.2.3", "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}, TOKEN
    )
    assert not catalog_allowed({"REMOTE_ADDR": "127.0.0.1"}, TOKEN)  # a token is always asked
    assert not catalog_allowed({"HTTP_AUTHORIZATION": "Bearer \u00e9"}, TOKEN)  # no exception


def test_a_short_catalog_token_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        OpsSettings(catalog_token="short")
    with pytest.raises(ValueError, match="placeholder"):
        OpsSettings(catalog_token="change-me-catalog-token-for-the-review-desk")


def test_a_taken_port_is_one_line_naming_the_setting():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match="JEWELMATCH_OPS__HTTP_PORT") as raised:
            serve_ops(Health(), ops_settings(port))
    assert "\n" not in str(raised.value)


def test_the_confidence_figures_are_served_on_metrics_and_read_back_by_the_desk():
    from worker.observability.prometheus import observe_confidence
    from worker.review.desk import confidence_figures

    learned = {
        "origin": "labels",
        "threshold": 0.95,
        "estimated_precision": 0.995,
        "estimated_coverage": 0.7,
        "estimated_unknown_refused": 0.92,
        "labels": 730,
    }

    def estimates(url: str) -> dict[str, float]:  # less what else this process counted
        figures = confidence_figures(url)
        others = ("checked", "observed", "backup_at")
        return {k: v for k, v in figures.items() if not k.startswith(others)}

    port = free_port()
    server = serve_ops(Health(), ops_settings(port))
    url = f"http://127.0.0.1:{port}"
    try:
        observe_confidence(learned)
        assert estimates(url) == {
            "learned": 1.0,
            "margin": 0.0,
            **{k: v for k, v in learned.items() if k != "origin"},
        }
        observe_confidence({"origin": "prior", "min_margin": 0.09})
        # the prior estimates nothing
        assert estimates(url) == {"learned": 0.0, "margin": 1.0, "min_margin": 0.09}
        observe_confidence({"origin": "labels+margin", "labels": 40, "min_margin": 0.12})
        # the first labels: learned, and the prior's margin (raised by them) still asked
        assert estimates(url) == {"learned": 1.0, "margin": 1.0, "labels": 40, "min_margin": 0.12}
    finally:
        server.shutdown()
    assert confidence_figures(url) == {}  # a worker gone: nothing, no error


def test_the_desk_reads_when_a_worker_last_wrote_its_own_backup():
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from worker.review.desk import confidence_figures

    registry = CollectorRegistry()  # a worker's own gauge, apart from this process's
    written = Gauge("jewelmatch_index_backup_timestamp_seconds", "", registry=registry)
    port = free_port()
    server, _ = start_http_server(port, "127.0.0.1", registry)
    url = f"http://127.0.0.1:{port}"
    try:
        assert "backup_at" not in confidence_figures(url)  # 0: no backup of its own
        written.set(1_796_540_000.0)
        assert confidence_figures(url)["backup_at"] == 1_796_540_000.0
    finally:
        server.shutdown()


def test_the_desk_reads_how_often_checked_matched_answers_were_right():
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    from worker.review.desk import confidence_figures

    registry = CollectorRegistry()  # a worker's own counter, apart from this process's
    checked = Counter("jewelmatch_checked_answers", "", ["status", "first"], registry=registry)
    port = free_port()
    server, _ = start_http_server(port, "127.0.0.1", registry)
    url = f"http://127.0.0.1:{port}"
    try:
        assert "observed_precision" not in confidence_figures(url)  # nothing checked yet
        checked.labels("no_confident_match", "right").inc(5)
        assert confidence_figures(url) == {"checked": 5.0, "checked_matched": 0.0}
        checked.labels("matched", "right").inc(97)
        checked.labels("matched", "wrong").inc(3)
        figures = confidence_figures(url)
        assert (figures["checked"], figures["checked_matched"]) == (105.0, 100.0)
        assert figures["observed_precision"] == pytest.approx(0.97)
    finally:
        server.shutdown()
    assert confidence_figures(url) == {}  # a worker gone: nothing, no error


# the desk's view of its workers -------------------------------------------------------------


def desk_of(tmp_path, worker_urls: list[str], **ops):
    from worker.review.desk import Desk
    from worker.settings import Settings

    settings = Settings(
        _env_file=None,
        amqp={"url": "memory://"},
        s3={"backend": "local", "local_root": str(tmp_path)},
        review={"database": tmp_path / "review.sqlite3", "worker_urls": worker_urls},
        ops=ops,
    )
    return Desk(settings)


def test_the_desk_tells_ready_not_ready_and_unreachable_workers_and_their_backups_age(tmp_path):
    from worker.observability.prometheus import INDEX_BACKUP_TIME

    ready, starting = Health(), Health()
    ready.model_loaded = ready.broker_connected = True
    ports = [free_port(), free_port(), free_port()]
    servers = [
        serve_ops(ready, ops_settings(ports[0])),
        serve_ops(starting, ops_settings(ports[1])),
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]  # the third: nobody listens
    desk = desk_of(tmp_path, urls)
    INDEX_BACKUP_TIME.set(time.time() - 2 * 3600)  # both serve this process's metrics
    try:
        states = desk.worker_states()
    finally:
        INDEX_BACKUP_TIME.set(0)
        desk.close()
        for server in servers:
            server.shutdown()
    assert [(s["url"], s["state"], s["code"]) for s in states] == [
        (urls[0], "ready", 200),
        (urls[1], "not ready", 503),
        (urls[2], "unreachable", None),
    ]
    assert [s["backup_hours"] for s in states[:2]] == [pytest.approx(2, abs=0.01)] * 2
    assert states[2]["backup_hours"] is None and states[2]["error"]


def test_the_desk_reads_the_catalog_from_the_first_worker_that_answers_with_its_token(tmp_path):
    products = [{"product_id": "p1"}]
    health = Health()
    health.catalog = lambda: products
    port = free_port()
    server = serve_ops(health, ops_settings(port, catalog_token=TOKEN, catalog_cache_seconds=0))
    gone = f"http://127.0.0.1:{free_port()}"
    desk = desk_of(tmp_path, [gone, f"http://127.0.0.1:{port}"], catalog_token=TOKEN)
    try:
        assert desk.catalog() == [{"product_id": "p1"}]  # past the worker that is gone
        products.append({"product_id": "p2"})
        assert len(desk.catalog()) == 1  # a copy younger than the cache period will do
        assert len(desk.catalog(max_age=0)) == 2  # an older one is read again
        server.shutdown()
        assert len(desk.catalog(max_age=0)) == 2  # no worker answers: the last copy
    finally:
        desk.close()
