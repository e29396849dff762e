"""The review desk's parts that need no browser: its bounded history, passwords, replicas."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest
from kombu import Connection
from pydantic import SecretStr
from starlette.testclient import TestClient

from shared.contract import (
    CatalogOutcome,
    FailureReason,
    MatchResult,
    MatchStatus,
    RankedProduct,
)
from tests.test_review_security import form_token
from worker.amqp.broker import RESULTS, ConfirmedPublisher
from worker.observability.probes import Health, serve_ops
from worker.review import feed as feed_module
from worker.review import history as history_module
from worker.review.auth import hash_password, password_matches
from worker.review.history import History, ScanFilter
from worker.review.web import create_app, replica_urls
from worker.settings import AmqpSettings, OpsSettings, Settings
from worker.tools.bench.servers import free_port


def result(scan_id: str, status=MatchStatus.matched, station="st-1", sku="RING-1") -> MatchResult:
    matches = [
        RankedProduct(
            rank=1, product_id=f"p-{sku}", sku=sku, score=0.9, image_id="front", source="catalog"
        )
    ]
    return MatchResult(
        scan_id=scan_id, status=status, matches=matches, model="m", station_id=station
    )


def test_history_keeps_the_latest_scans_only(tmp_path):
    history = History(tmp_path / "review.sqlite3", limit=10)
    for n in range(25):
        history.record_result(result(f"scan-{n:02d}"))
    assert history.count() == 10
    listed = [entry.scan_id for entry in history.scans(ScanFilter(limit=100))]
    assert listed == [f"scan-{n:02d}" for n in range(24, 14, -1)]  # newest first
    assert history.scan("scan-00") is None


def test_history_filters_and_a_replayed_answer_replaces_the_first(tmp_path):
    history = History(tmp_path / "review.sqlite3", limit=100)
    history.record_result(result("a", station="st-1", sku="RING-1"))
    history.record_result(result("b", status=MatchStatus.no_confident_match, station="st-2"))
    history.record_result(result("c", station="st-2", sku="PEND_9%"))
    assert [e.scan_id for e in history.scans(ScanFilter(station="st-2"))] == ["c", "b"]
    assert [e.scan_id for e in history.scans(ScanFilter(status="no_confident_match"))] == ["b"]
    assert [e.scan_id for e in history.scans(ScanFilter(text="pend_9%"))] == ["c"]
    history.record_result(result("d", sku="RINGX1"))
    assert history.scans(ScanFilter(text="ring_1")) == []  # LIKE wildcards taken literally
    history.record_result(result("b", status=MatchStatus.matched, station="st-2"))
    assert history.scan("b").result.status is MatchStatus.matched
    assert history.count() == 4


def test_a_confirmation_and_its_outcome_are_kept_with_the_scan(tmp_path):
    history = History(tmp_path / "review.sqlite3", limit=100)
    history.record_result(result("a"))
    history.record_confirmation("a", "p-RING-7", "rita")
    outcome = CatalogOutcome(
        event="match.confirmed", product_id="p-RING-7", scan_id="a", status="applied", model="m"
    )
    assert history.record_outcome(outcome)
    assert not history.record_outcome(outcome.model_copy(update={"scan_id": "unknown"}))
    entry = history.scan("a")
    assert (entry.confirmed_product, entry.confirmed_by) == ("p-RING-7", "rita")
    assert entry.outcome.status.value == "applied"
    assert [e.scan_id for e in history.scans(ScanFilter(text="p-ring-7"))] == ["a"]
    assert history.matched_products() == {"p-RING-1", "p-RING-7"}


def scored(scan_id: str, status: MatchStatus, score: float = 0.9) -> MatchResult:
    if status is MatchStatus.failed:
        return MatchResult(
            scan_id=scan_id, status=status, reason=FailureReason.image_unreadable, model="m"
        )
    first = result(scan_id, status).matches[0].model_copy(update={"score": score})
    return result(scan_id, status).model_copy(update={"matches": [first]})


def test_the_worklist_is_the_scans_that_still_need_a_person_oldest_first(tmp_path):
    history = History(tmp_path / "folder" / "made" / "review.sqlite3", limit=100)
    history.record_result(scored("unsure", MatchStatus.no_confident_match))
    history.record_result(scored("sure", MatchStatus.matched, 0.9))
    history.record_result(scored("failed", MatchStatus.failed))
    history.record_result(scored("low", MatchStatus.matched, 0.5))
    history.record_result(scored("at-the-score", MatchStatus.matched, 0.6))
    history.record_result(scored("done", MatchStatus.no_confident_match))
    history.record_result(scored("aside", MatchStatus.failed))
    history.record_confirmation("done", "p-RING-1", "rita")
    history.set_aside("aside", "rita")

    def listed(below_score):
        return [entry.scan_id for entry in history.worklist(below_score)]

    assert listed(None) == ["unsure", "failed"]
    # a confident answer below the ops' score needs a person too; one at it does not
    assert listed(0.6) == ["unsure", "failed", "low"]
    assert history.worklist_count(None) == 2 and history.worklist_count(0.6) == 3
    assert [entry.scan_id for entry in history.worklist(0.6, limit=2)] == ["unsure", "failed"]
    # its neighbours, from any scan (on the worklist or not), the scan itself never
    assert history.worklist_neighbours("failed", 0.6) == ("unsure", "low")
    assert history.worklist_neighbours("sure", None) == ("unsure", "failed")
    assert history.worklist_neighbours("unsure", None) == (None, "failed")
    assert history.worklist_neighbours("never-seen", None) == (None, None)


def test_a_second_confirmation_of_a_scan_is_a_correction_in_the_persons_log(tmp_path):
    history = History(tmp_path / "review.sqlite3", limit=100)
    history.record_result(result("a"))
    assert not history.record_confirmation("a", "p-RING-1", "rita")
    assert history.record_confirmation("a", "p-RING-2", "sam")
    assert not history.record_confirmation("not-in-the-history", "p-RING-1", "sam")
    hour = int(time.time() // 3600) * 3600
    assert {
        (h.person, h.hour, h.confirmations, h.corrections) for h in history.work_per_person(0)
    } == {
        ("rita", hour, 1, 0),
        ("sam", hour, 1, 1),
    }
    assert history.work_per_person(time.time() + 1) == []


def test_the_history_since_a_moment_includes_it_and_outcomes_need_a_scan(tmp_path):
    history = History(tmp_path / "review.sqlite3", limit=100)
    history.record_result(result("old"), received_at=1000.0)
    history.record_result(result("new"), received_at=2000.0)
    assert [e.scan_id for e in history.scans(ScanFilter(since=2000.0))] == ["new"]
    assert [e.scan_id for e in history.scans(ScanFilter(since=1000.0))] == ["new", "old"]
    catalog_only = CatalogOutcome(
        event="product.updated", product_id="p-RING-1", status="applied", model="m"
    )
    assert not history.record_outcome(catalog_only)  # a product event's: no scan to note


def test_passwords_are_salted_scrypt_hashes():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt:") and "$" not in first
    assert password_matches("correct horse", first)
    assert not password_matches("correct hors", first)
    assert not password_matches("correct horse", "not-a-hash")


def test_a_name_with_several_addresses_stands_for_each_replica(monkeypatch):
    def getaddrinfo(host, port, family=0, kind=0):
        addresses = {"worker": ["10.0.0.7", "10.0.0.5"], "single": ["10.0.0.9"]}[host]
        return [(socket.AF_INET, kind, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert replica_urls("http://worker:8080") == ["http://10.0.0.5:8080", "http://10.0.0.7:8080"]
    assert replica_urls("http://single:8080") == ["http://single:8080"]


def _behind_the_proxy(tmp_path, **review) -> Settings:
    """A desk that believes 127.0.0.1's X-Forwarded-User; otto is listed as ops, no password."""
    return Settings(
        _env_file=None,
        review={
            "database": tmp_path / "review.sqlite3",
            "trusted_user_header": "X-Forwarded-User",
            "trusted_proxies": ["127.0.0.1"],
            "users": [{"name": "otto", "role": "ops"}],
            **review,
        },
    )


def test_behind_a_trusted_proxy_the_header_names_the_person(tmp_path):
    # no lifespan: no broker needed for these pages; the request comes from the proxy
    client = TestClient(create_app(_behind_the_proxy(tmp_path)), client=("127.0.0.1", 50000))
    page = client.get("/scans", headers={"X-Forwarded-User": "otto"})
    assert page.status_code == 200 and "otto (ops)" in page.text
    page = client.get("/scans", headers={"X-Forwarded-User": "vera"})
    assert "vera (reviewer)" in page.text  # not listed: a reviewer
    anonymous = client.get("/scans", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    forged = client.post(
        "/scans/x/confirm", data={"product_id": "p1"}, headers={"X-Forwarded-User": "otto"}
    )
    assert forged.status_code == 403  # no CSRF token


def _proxied_desk(tmp_path, **review) -> TestClient:
    """The desk behind a trusted proxy that names otto on every request (no broker)."""
    app = create_app(_behind_the_proxy(tmp_path, **review))
    return TestClient(app, client=("127.0.0.1", 50000), headers={"X-Forwarded-User": "otto"})


def _listed(page) -> list[str]:
    return [part.split('"', 1)[0] for part in page.text.split('data-scan-id="')[1:]]


def test_the_scans_page_filters_by_status_station_text_and_hours(tmp_path, monkeypatch):
    client = _proxied_desk(tmp_path)
    history = client.app.state.desk.history
    then = time.time() - 2 * 3600
    with monkeypatch.context() as earlier:
        earlier.setattr(history_module, "time", SimpleNamespace(time=lambda: then))  # its clock
        history.record_result(result("scan-a", station="st-1", sku="RING-1"))
    history.record_result(result("scan-b", MatchStatus.no_confident_match, "st-2", "RING-2"))
    history.record_result(result("scan-c", station="st-2", sku="PENDANT-9"))
    assert sorted(_listed(client.get("/scans"))) == ["scan-a", "scan-b", "scan-c"]
    for query, shown in [
        ({"status": "no_confident_match"}, ["scan-b"]),
        ({"station": "st-2"}, ["scan-b", "scan-c"]),
        ({"q": "PENDANT-9"}, ["scan-c"]),
        ({"station": "st-2", "status": "matched"}, ["scan-c"]),
        ({"hours": "1.5"}, ["scan-b", "scan-c"]),
        ({"hours": "3"}, ["scan-a", "scan-b", "scan-c"]),
        ({"status": "", "station": "", "q": ""}, ["scan-a", "scan-b", "scan-c"]),  # a bare form
    ]:
        assert sorted(_listed(client.get("/scans", params=query))) == shown, query


def test_the_next_page_offers_to_change_the_scan_just_confirmed_for_a_while(tmp_path):
    client = _proxied_desk(tmp_path)
    history = client.app.state.desk.history
    for scan_id in ("scan-a", "scan-b"):
        history.record_result(result(scan_id, MatchStatus.no_confident_match))
    history.record_confirmation("scan-a", "p-RING-1", "otto")
    assert 'id="done"' in client.get("/scans/scan-b", params={"done": "scan-a"}).text
    assert 'id="done"' in client.get("/worklist", params={"done": "scan-a"}).text
    for not_confirmed in ("scan-b", "scan-z", ""):  # unconfirmed, unknown, none
        page = client.get("/worklist", params={"done": not_confirmed})
        assert page.status_code == 200 and 'id="done"' not in page.text
    later = _proxied_desk(tmp_path, undo_seconds=0)  # the same history, the moment gone
    assert 'id="done"' not in later.get("/worklist", params={"done": "scan-a"}).text


def test_the_catalog_page_names_new_products_and_products_never_matched(tmp_path):
    health = Health()
    health.catalog = lambda: [
        {"product_id": product, "sku": product.upper(), "name": None, "confirmed_photos": photos}
        for product, photos in (("p-A", 2), ("p-B", 0), ("p-C", 0))
    ]
    port = free_port()
    server = serve_ops(health, OpsSettings(http_host="127.0.0.1", http_port=port))
    try:
        client = _proxied_desk(tmp_path, worker_urls=[f"http://127.0.0.1:{port}"])
        history = client.app.state.desk.history
        history.record_result(result("scan-1", sku="A"))  # answered p-A
        history.record_result(result("scan-2", MatchStatus.no_confident_match, sku="B"))
        history.record_confirmation("scan-2", "p-C", "otto")  # a person named p-C
        sections = client.get("/catalog").text.split("<section>")[1:]
    finally:
        server.shutdown()
    chips = [section.split("</ul>", 1)[0].count('href="/catalog?q=') for section in sections]
    assert "without confirmations (2)" in sections[0] and chips[0] == 2
    assert "?q=p-B" in sections[0] and "?q=p-C" in sections[0]
    assert "Never matched in the desk's history (1)" in sections[1] and chips[1] == 1
    assert "?q=p-B" in sections[1]


@pytest.mark.integration
def test_a_desk_started_before_any_worker_waits_for_the_results_exchange(
    tmp_path, amqp_url, monkeypatch
):
    monkeypatch.setattr(feed_module, "RETRY_SECONDS", 0.2)
    with Connection(amqp_url) as connection:
        connection.channel().exchange_delete(RESULTS.name)  # no worker has ever started
    history = History(tmp_path / "review.sqlite3", limit=100)
    feed = feed_module.ResultFeed(AmqpSettings(url=SecretStr(amqp_url)), history, 1000).start()
    try:
        time.sleep(1)
        assert not feed.ready.is_set()
        with Connection(amqp_url, transport_options={"confirm_publish": True}) as connection:
            RESULTS(connection.channel()).declare()  # the first worker starts
            assert feed.ready.wait(10)
            publisher = ConfirmedPublisher(connection.channel())
            publisher.publish('{"scan_id": "not-an-answer"}', RESULTS, "match.result")
            publisher.publish(result("late").model_dump_json(), RESULTS, "match.result")
        _wait_for(lambda: history.scan("late") is not None, "the result")
        assert history.scan("not-an-answer") is None  # unreadable: dropped, not a stuck feed
        # of the catalog outcomes, only a confirmation's is kept with its scan
        outcome = CatalogOutcome(
            event="match.confirmed", product_id="p-RING-1", scan_id="late", status="applied",
            model="m",
        )  # fmt: skip
        product_event = outcome.model_copy(update={"event": "product.updated"})
        with Connection(amqp_url, transport_options={"confirm_publish": True}) as connection:
            publisher = ConfirmedPublisher(connection.channel())
            for published in (product_event, outcome, product_event):
                publisher.publish(published.model_dump_json(), RESULTS, "catalog.outcome")
        _wait_for(lambda: history.scan("late").outcome is not None, "the outcome")
        time.sleep(0.5)  # the product event's outcome after it changes nothing
        assert history.scan("late").outcome.event == "match.confirmed"
    finally:
        feed.stop()
    assert not feed._thread.is_alive()  # stopped within its STOP_SECONDS


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"the desk never recorded {what}")
        time.sleep(0.1)


def _desk_without_a_broker(tmp_path, monkeypatch):
    """The desk behind the proxy, its broker and workers unreachable (nothing listens), and
    its broker calls given up after a second."""
    from worker.review import operations

    monkeypatch.setattr(operations, "PUBLISH_SECONDS", 1.0)
    monkeypatch.setattr(operations, "READ_SECONDS", 1.0)
    settings = _behind_the_proxy(tmp_path, worker_urls=[f"http://127.0.0.1:{free_port()}"])
    away = AmqpSettings(url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    return create_app(settings.model_copy(update={"amqp": away}))


def test_without_a_broker_the_pages_say_so_and_nothing_is_recorded(tmp_path, monkeypatch):
    app = _desk_without_a_broker(tmp_path, monkeypatch)
    app.state.desk.history.record_result(result("scan-1"))
    named = {"X-Forwarded-User": "otto"}
    with TestClient(app, headers=named, client=("127.0.0.1", 50000)) as client:  # started
        ops = client.get("/ops")
        assert ops.status_code == 200
        assert "The broker cannot be reached" in ops.text and "unreachable" in ops.text
        page = client.get("/scans/scan-1")
        token = form_token(page.text)
        form = {"product_id": "p-1", "csrf_token": token}
        sent = client.post("/scans/scan-1/confirm", data=form)
        assert sent.status_code == 503 and "nothing was sent" in sent.text
        assert app.state.desk.history.scan("scan-1").confirmed_product is None
        assert app.state.desk.feed._thread.is_alive()  # it keeps trying to reach the broker
    assert not app.state.desk.feed._thread.is_alive()  # and stops with the desk


def test_the_ops_page_counts_each_persons_confirmations_of_the_last_day(tmp_path, monkeypatch):
    from worker.review import ops_pages

    now = [1_800_000_000.0]
    clock = SimpleNamespace(time=lambda: now[0])
    monkeypatch.setattr(history_module, "time", clock)
    monkeypatch.setattr(ops_pages, "time", clock)
    app = _desk_without_a_broker(tmp_path, monkeypatch)
    client = TestClient(app, client=("127.0.0.1", 50000), headers={"X-Forwarded-User": "otto"})
    for scan_id, person, hours_ago in [("a", "rita", 24.2), ("b", "vera", 23.8), ("c", "ida", 1)]:
        now[0] = 1_800_000_000.0 - hours_ago * 3600
        app.state.desk.history.record_result(result(scan_id))
        app.state.desk.history.record_confirmation(scan_id, "p-RING-1", person)
    now[0] = 1_800_000_000.0
    work = client.get("/ops").text.split('<table id="work">', 1)[1].split("</table>", 1)[0]
    assert [row.split('"', 1)[0] for row in work.split('data-person="')[1:]] == ["ida", "vera"]


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "https://evil.example"])
def test_sign_in_sends_people_only_to_pages_of_the_desk(tmp_path, target):
    from worker.review.auth import hash_password

    settings = Settings(
        _env_file=None,
        review={
            "database": tmp_path / "review.sqlite3",
            "users": [{"name": "ana", "password_hash": hash_password("pw-of-ana")}],
        },
    )
    client = TestClient(create_app(settings))
    form = client.get("/login").text
    token = form_token(form)
    signed_in = client.post(
        "/login",
        data={"name": "ana", "password": "pw-of-ana", "next": target, "csrf_token": token},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/worklist"
