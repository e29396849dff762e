"""The review desk holds against the probes of a hostile peer: who may act as whom (the proxy
header, forged and stale sessions), what a reviewer may see, what a flood of sign-ins costs,
odd input, and a prompt stop."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from PIL import Image
from pydantic import ValidationError
from starlette.testclient import TestClient

from worker.amqp.broker import Topology
from worker.amqp.client import JewelmatchClient
from worker.observability.probes import Health, serve_ops
from worker.review import auth as auth_module
from worker.review.auth import Authenticator, hash_password, password_matches
from worker.review.sessions import SessionStore
from worker.review.web import create_app
from worker.settings import AmqpSettings, OpsSettings, S3Settings, Settings
from worker.tools.bench.servers import free_port

SECRET = "a-review-desk-session-secret-of-48-bytes-for-tests"
PASSWORDS = {"rita": "rita-reviews-scans", "otto": "otto-runs-ops"}
USERS = [
    {"name": "rita", "role": "reviewer", "password_hash": hash_password(PASSWORDS["rita"])},
    {"name": "otto", "role": "ops", "password_hash": hash_password(PASSWORDS["otto"])},
]
PROXY = ("10.0.0.2", 40000)
ELSEWHERE = ("10.0.0.77", 40000)


def desk_settings(tmp_path, amqp_url: str | None = None, **review) -> Settings:
    values = {
        "database": tmp_path / "review.sqlite3",
        "session_secret": SECRET,
        "users": USERS,
        "worker_urls": [f"http://127.0.0.1:{free_port()}"],  # nothing listens
        **review,
    }
    amqp = {"url": amqp_url} if amqp_url else {}
    return Settings(_env_file=None, review=values, amqp=amqp, log={"format": "json"})


def form_token(html: str) -> str:
    return html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def sign_in(client: TestClient, name: str, password: str | None = None):
    token = form_token(client.get("/login").text)
    return client.post(
        "/login",
        data={"name": name, "password": password or PASSWORDS[name], "csrf_token": token},
        follow_redirects=False,
    )


def session_cookie(client: TestClient) -> dict:
    """What the desk's signed cookie in this client holds (its payload is plain base64)."""
    cookie = client.cookies.get("jewelmatch_review")
    return json.loads(base64.b64decode(cookie.split(".", 1)[0])) if cookie else {}


def signed_in_as(client: TestClient) -> str | None:
    page = client.get("/scans", follow_redirects=False)
    if page.status_code != 200:
        return None
    return page.text.split('<span id="person">', 1)[1].split("<", 1)[0]


# who is who -------------------------------------------------------------------------------


def header_desk(tmp_path) -> Settings:
    return desk_settings(
        tmp_path, trusted_user_header="X-Forwarded-User", trusted_proxies=["10.0.0.0/30"]
    )


def test_the_proxy_header_is_believed_from_the_trusted_proxies_only(tmp_path):
    app = create_app(header_desk(tmp_path))
    from_proxy = TestClient(app, client=PROXY)
    assert from_proxy.get("/scans", headers={"X-Forwarded-User": "otto"}).status_code == 200
    assert signed_in_as(TestClient(app, client=PROXY, headers={"X-Forwarded-User": "otto"})) == (
        "otto (ops)"
    )
    direct = TestClient(app, client=ELSEWHERE, headers={"X-Forwarded-User": "otto"})
    assert signed_in_as(direct) is None  # a client naming itself is nobody


def test_a_blank_proxy_header_or_a_peer_without_an_address_names_nobody(tmp_path):
    settings = header_desk(tmp_path)
    blank = TestClient(create_app(settings), client=PROXY, headers={"X-Forwarded-User": "  "})
    assert signed_in_as(blank) is None
    # a request whose peer has no address (a Unix socket) is no trusted proxy
    from starlette.requests import Request

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/scans",
        "headers": [(b"x-forwarded-user", b"otto")],
        "client": None,
        "session": {},
    }
    authenticator = Authenticator(settings.review, SessionStore(tmp_path / "s.sqlite3", 60))
    assert authenticator.person(Request(scope)) is None
    scope["client"] = ("testclient", 50000)  # a peer named, not addressed: no proxy either
    assert authenticator.person(Request(scope)) is None
    scope["client"] = PROXY
    assert authenticator.person(Request(scope)).name == "otto"


def test_a_repeated_proxy_header_names_nobody_and_is_logged(tmp_path):
    from structlog.testing import capture_logs

    app = create_app(header_desk(tmp_path))
    client = TestClient(app, client=PROXY)
    with capture_logs() as logs:
        twice = client.get(
            "/scans",
            headers=[("X-Forwarded-User", "otto"), ("X-Forwarded-User", "rita")],
            follow_redirects=False,
        )
    assert twice.status_code == 303 and twice.headers["location"].startswith("/login")
    repeated = [e for e in logs if e["event"] == "review.proxy_header_repeated"]
    assert [(e["header"], e["count"]) for e in repeated] == [("X-Forwarded-User", 2)]


@pytest.mark.parametrize(
    "review, warned",
    [
        ({"users": []}, True),
        ({"users": USERS}, False),
        ({"users": [], "trusted_user_header": "X-User", "trusted_proxies": ["10.0.0.2"]}, False),
    ],
    ids=["nobody", "passwords", "proxy"],
)
def test_a_desk_nobody_can_sign_in_to_says_so_and_a_taken_port_is_one_line(
    tmp_path, review, warned
):
    from structlog.testing import capture_logs

    from worker.errors import StartupError
    from worker.review.web import serve

    with socket.create_server(("127.0.0.1", 0)) as taken, capture_logs() as logs:
        port = taken.getsockname()[1]
        settings = desk_settings(tmp_path, host="127.0.0.1", port=port, **review)
        with pytest.raises(StartupError, match=f"review desk on 127.0.0.1:{port}: "):
            serve(settings)  # before uvicorn would start
    assert any(e["event"] == "review.nobody_can_sign_in" for e in logs) is warned


@pytest.mark.parametrize(
    "review, complaint",
    [
        ({"trusted_user_header": "X-Forwarded-User"}, "trusted_proxies"),
        ({"session_secret": "change-me-review-sessions-but-long-enough-to-pass"}, "placeholder"),
        ({"session_secret": "only-31-bytes-of-session-secret"}, "32 bytes"),
    ],
)
def test_the_desk_refuses_to_start_unsafe(tmp_path, review, complaint):
    with pytest.raises(ValidationError, match=complaint):
        desk_settings(tmp_path, **review)


def test_an_unsafe_desk_says_why_in_one_line_and_exits(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEWELMATCH_")}
    env["JEWELMATCH_REVIEW__SESSION_SECRET"] = "change-me-review-sessions"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "review"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "JEWELMATCH_REVIEW__SESSION_SECRET" in done.stderr
    assert "change-me-review-sessions" not in done.stderr  # the secret is never echoed


def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(tmp_path):
    app = create_app(desk_settings(tmp_path))
    browser = TestClient(app)
    assert sign_in(browser, "otto").status_code == 303
    copied = TestClient(app, cookies=dict(browser.cookies))
    assert signed_in_as(copied) == "otto (ops)"
    token = form_token(browser.get("/scans").text)
    assert browser.get("/logout").status_code == 405  # a link elsewhere signs nobody out
    assert signed_in_as(browser) == "otto (ops)"
    assert browser.post("/logout", data={"csrf_token": token}).status_code == 200
    assert signed_in_as(copied) is None
    assert signed_in_as(browser) is None
    assert "sid" not in session_cookie(browser)  # the browser keeps no session id either


def test_a_session_lasts_its_lifetime_and_expired_ones_are_swept(tmp_path, monkeypatch):
    import sqlite3
    from types import SimpleNamespace

    from worker.review import sessions as sessions_module

    now = [1_000_000.0]
    monkeypatch.setattr(sessions_module, "time", SimpleNamespace(time=lambda: now[0]))
    store = SessionStore(tmp_path / "desk.sqlite3", lifetime_seconds=8 * 3600)
    session = store.open("rita")
    now[0] += 8 * 3600 - 1
    assert store.person(session) == "rita"
    now[0] += 1
    assert store.person(session) is None  # session_hours are up
    store.open("otto")  # opening a session sweeps the expired ones out of the file
    with sqlite3.connect(tmp_path / "desk.sqlite3") as db:
        assert db.execute("SELECT person FROM sessions").fetchall() == [("otto",)]
    store.close()


def test_one_form_token_serves_every_page_of_a_session(tmp_path):
    """Two tabs of the desk: a form loaded in the first still posts after the second opened."""
    browser = TestClient(create_app(desk_settings(tmp_path)))
    assert sign_in(browser, "otto").status_code == 303
    first_tab = form_token(browser.get("/scans").text)
    assert form_token(browser.get("/worklist").text) == first_tab
    assert browser.post("/logout", data={"csrf_token": first_tab}).status_code == 200


def test_a_name_removed_from_the_user_list_is_signed_out(tmp_path):
    browser = TestClient(create_app(desk_settings(tmp_path)))
    assert sign_in(browser, "otto").status_code == 303
    cookie = dict(browser.cookies)
    restarted = create_app(desk_settings(tmp_path, users=USERS[:1]))  # otto left
    assert signed_in_as(TestClient(restarted, cookies=cookie)) is None
    kept = create_app(desk_settings(tmp_path))  # the same list: the session lives on
    assert signed_in_as(TestClient(kept, cookies=cookie)) == "otto (ops)"


def test_a_name_listed_without_a_password_signs_in_only_through_the_proxy(tmp_path):
    # otto moved to single sign-on: listed for his role, his password hash removed
    sso = [USERS[0], {"name": "otto", "role": "ops"}]
    browser = TestClient(create_app(desk_settings(tmp_path)))
    assert sign_in(browser, "otto").status_code == 303
    cookie = dict(browser.cookies)
    restarted = create_app(desk_settings(tmp_path, users=sso))
    assert signed_in_as(TestClient(restarted, cookies=cookie)) is None  # his session ends
    assert sign_in(TestClient(restarted), "otto").status_code == 401  # a password is refused


def test_signing_in_gives_a_fresh_form_token(tmp_path):
    browser = TestClient(create_app(desk_settings(tmp_path)))
    before = form_token(browser.get("/login").text)
    assert sign_in(browser, "rita").status_code == 303
    assert form_token(browser.get("/scans").text) != before


@pytest.mark.parametrize("secure", [False, True])
def test_the_session_cookie_stays_on_this_site_out_of_scripts_for_the_session_hours(
    tmp_path, secure
):
    settings = desk_settings(tmp_path, session_hours=3, secure_cookies=secure)
    browser = TestClient(create_app(settings), base_url="https://desk.example")
    cookie = sign_in(browser, "rita").headers["set-cookie"]
    name, *attributes = [part.strip().lower() for part in cookie.split(";")]
    assert name.startswith("jewelmatch_review=")
    assert "samesite=strict" in attributes  # no other site's form or link carries it
    assert "httponly" in attributes  # no script reads it
    assert "max-age=10800" in attributes  # what the server keeps the session for
    assert ("secure" in attributes) is secure  # over HTTPS only, behind TLS


def test_a_post_without_a_session_or_a_token_is_refused_behind_the_proxy(tmp_path):
    # the proxy names the person on every request, cookie or not: a cross-site form (no
    # SameSite=Strict cookie, so no session and no token) must still be refused
    app = create_app(header_desk(tmp_path))
    named = TestClient(app, client=PROXY, headers={"X-Forwarded-User": "otto"})
    assert named.post("/logout", data={}).status_code == 403
    assert named.post("/logout", data={"csrf_token": ""}).status_code == 403


def test_a_password_hash_of_another_scheme_or_another_digest_matches_nothing():
    stored = hash_password("rita-reviews-scans")
    assert password_matches("rita-reviews-scans", stored)
    assert not password_matches("rita-reviews-scans", stored.replace("scrypt:", "plain:", 1))
    scheme, n, r, p, salt, digest = stored.split(":")
    altered = base64.b64decode(digest)
    altered = base64.b64encode(altered[:-1] + bytes([altered[-1] ^ 1])).decode()
    assert not password_matches("rita-reviews-scans", ":".join([scheme, n, r, p, salt, altered]))
    assert not password_matches("rita-reviews-scans", "scrypt:not-a-hash")
    # a digest of another length (as other scrypt tools write) is checked at its length
    short = hashlib.scrypt(b"rita-reviews-scans", salt=b"salt", n=2**14, r=8, p=1, dklen=32)
    other_tool = f"scrypt:16384:8:1:{base64.b64encode(b'salt').decode()}:"
    assert password_matches("rita-reviews-scans", other_tool + base64.b64encode(short).decode())


def test_a_cookie_signed_for_an_invented_person_gets_nothing(tmp_path):
    from itsdangerous import TimestampSigner

    app = create_app(desk_settings(tmp_path))
    payload = base64.b64encode(json.dumps({"user": "otto", "sid": "guessed"}).encode())
    forged = TimestampSigner(SECRET).sign(payload).decode()
    client = TestClient(app, cookies={"jewelmatch_review": forged})
    assert signed_in_as(client) is None
    assert client.get("/ops", follow_redirects=False).status_code == 303


# what a reviewer may see ------------------------------------------------------------------


def test_reviewers_are_kept_off_the_ops_page(tmp_path):
    app = create_app(desk_settings(tmp_path))
    reviewer = TestClient(app)
    sign_in(reviewer, "rita")
    refused = reviewer.get("/ops")
    assert refused.status_code == 403
    assert "dead-letter" not in refused.text and "Queue" not in refused.text
    assert 'href="/ops"' not in reviewer.get("/scans").text


def test_no_other_site_may_frame_the_desk_and_only_its_own_script_runs(tmp_path):
    """On the sign-in page, a page behind it, its script, an error and a refused request."""
    client = TestClient(create_app(desk_settings(tmp_path)))
    sign_in(client, "rita")
    for path in ("/login", "/scans", "/static/review.js", "/nowhere", "/ops"):
        answer = client.get(path)
        policy = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
    templates = Path(create_app.__code__.co_filename).parent / "templates"
    inline = [
        (template.name, handler)
        for template in templates.glob("*.html")
        for handler in re.findall(r"<[^>]*\son[a-z]+\s*=", template.read_text())
    ]
    assert inline == []  # an inline event handler the policy would block


# sign-in floods ---------------------------------------------------------------------------


def test_failed_sign_ins_are_throttled_per_address_and_per_name(tmp_path):
    app = create_app(desk_settings(tmp_path, sign_in_attempts_per_minute=3))
    guesser = TestClient(app, client=ELSEWHERE)
    assert [sign_in(guesser, "otto", "guess").status_code for _ in range(4)] == [
        401,
        401,
        401,
        429,
    ]
    assert sign_in(guesser, "otto").status_code == 429  # even the right one, this minute
    assert sign_in(guesser, "rita").status_code == 429  # this address, another name
    other_address = TestClient(app, client=PROXY)
    assert sign_in(other_address, "otto").status_code == 429  # this name, another address
    assert sign_in(other_address, "rita").status_code == 303  # neither: fine


def test_password_checks_run_few_at_a_time(tmp_path, monkeypatch):
    running, peak, lock = 0, 0, threading.Lock()
    real = auth_module.hash_password

    def counted(password, salt=None):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return real(password, salt)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(auth_module, "hash_password", counted)
    app = create_app(desk_settings(tmp_path, sign_in_concurrency=2))
    clients = [TestClient(app, client=(f"10.1.0.{n}", 1000)) for n in range(12)]
    threads = [
        threading.Thread(target=sign_in, args=(client, f"nobody-{n}", "guess"))
        for n, client in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 2  # twelve at once, two scrypt hashes at a time (16 MiB each)


# odd input --------------------------------------------------------------------------------


@pytest.mark.parametrize("hours", ["²", "nan", "-1", "1e999", "abc", ""])
def test_an_odd_hours_filter_is_ignored(tmp_path, hours):
    client = TestClient(create_app(desk_settings(tmp_path)))
    sign_in(client, "rita")
    assert client.get("/scans", params={"hours": hours}).status_code == 200


def test_a_non_ascii_form_token_is_refused_not_a_crash(tmp_path):
    client = TestClient(create_app(desk_settings(tmp_path)), raise_server_exceptions=False)
    sign_in(client, "rita")
    refused = client.post("/logout", data={"csrf_token": "tökén"})
    assert refused.status_code == 403


def test_the_image_proxy_serves_images_only_and_says_why_it_does_not(tmp_path):
    """What a signed-in person's browser may ask `/image/...` for: a picture of an allowed
    bucket, served with its type; anything else a plain refusal, never the bytes."""
    buckets = tmp_path / "buckets"
    (buckets / "scan-photos").mkdir(parents=True)
    png = buckets / "scan-photos" / "bag.png"
    Image.new("RGB", (4, 4)).save(png)
    webp = buckets / "scan-photos" / "bag.webp"
    Image.new("RGB", (4, 4)).save(webp)
    (buckets / "scan-photos" / "notes.jpg").write_text("<script>alert(1)</script>")
    # a RIFF file, as WebP is, but a sound: RIFF, size, WAVE
    (buckets / "scan-photos" / "beep.webp").write_bytes(b"RIFF\x24\0\0\0WAVEfmt " + bytes(28))
    settings = desk_settings(tmp_path).model_copy(
        update={
            "s3": S3Settings(backend="local", local_root=buckets, allowed_buckets=["scan-photos"])
        }
    )
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    sign_in(client, "rita")
    served = client.get("/image/scan-photos/bag.png")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.content == png.read_bytes()
    served = client.get("/image/scan-photos/bag.webp")
    assert (served.status_code, served.headers["content-type"]) == (200, "image/webp")
    for not_an_image in ["notes.jpg", "beep.webp"]:
        assert client.get(f"/image/scan-photos/{not_an_image}").status_code == 415
    for path, why in [
        ("scan-photos/gone.jpg", "image_not_found"),
        ("catalog-images/bag.png", "bucket_not_allowed"),
        ("Not_A_Bucket/bag.png", "Not Found"),  # not a bucket name: never asked
    ]:
        refused = client.get(f"/image/{path}")
        assert (refused.status_code, why) == (404, why) and why in refused.text
    unreachable = desk_settings(tmp_path).model_copy(
        update={
            "s3": S3Settings(
                endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
                access_key_id="x",
                secret_access_key="y",
                connect_timeout_seconds=0.5,
                max_attempts=1,
                allowed_buckets=["scan-photos"],
            )
        }
    )
    client = TestClient(create_app(unreachable), raise_server_exceptions=False)
    sign_in(client, "rita")
    assert client.get("/image/scan-photos/bag.png").status_code == 503


def test_a_confirmation_of_an_unknown_scan_or_of_no_valid_product_sends_nothing(
    tmp_path, monkeypatch
):
    from shared.contract import MatchResult, MatchStatus, RankedProduct
    from worker.review import operations

    monkeypatch.setattr(operations, "PUBLISH_SECONDS", 1.0)
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}//"  # no broker, no worker listens
    app = create_app(desk_settings(tmp_path, nowhere))
    candidate = RankedProduct(
        rank=1, product_id="p-1", sku="S-1", score=0.9, image_id="front", source="catalog"
    )
    app.state.desk.history.record_result(
        MatchResult(scan_id="s-1", status=MatchStatus.matched, matches=[candidate], model="m")
    )
    client = TestClient(app, raise_server_exceptions=False)
    sign_in(client, "rita")
    token = form_token(client.get("/scans/s-1").text)

    def confirm(scan_id: str, product_id: str):
        form = {"csrf_token": token, "product_id": product_id}
        return client.post(f"/scans/{scan_id}/confirm", data=form, follow_redirects=False)

    unknown = confirm("never-scanned", "p-1")
    assert unknown.status_code == 404 and "not in the desk's history" in unknown.text
    for product_id in ("", " ", "p\x1f1", "p" * 201):
        refused = confirm("s-1", product_id)
        assert (refused.status_code, product_id) == (400, product_id)
        assert "not a valid product id" in refused.text
    assert app.state.desk.history.scan("s-1").confirmed_product is None
    # a candidate needs no catalog from the workers; the broker away, it is not recorded
    candidate_chosen = confirm("s-1", " p-1 ")
    assert candidate_chosen.status_code == 503 and "broker" in candidate_chosen.text
    assert app.state.desk.history.scan("s-1").confirmed_product is None


# the catalog the desk reads from the workers ---------------------------------------------


def test_the_desk_reads_the_workers_catalog_with_its_token_and_caches_it(tmp_path):
    token = "the-catalog-token-shared-by-desk-and-workers"
    reads = []
    health = Health()
    health.catalog = lambda: (
        reads.append(1)
        or [{"product_id": "p1", "sku": "RING-1", "name": "ring", "confirmed_photos": 0}]
    )
    port = free_port()
    server = serve_ops(health, OpsSettings(http_host="127.0.0.1", http_port=port))
    settings = desk_settings(tmp_path, worker_urls=[f"http://127.0.0.1:{port}"])
    try:
        # the worker without a token answers this machine only; with one, only its bearer
        client = TestClient(create_app(settings))
        sign_in(client, "rita")
        for _ in range(3):
            assert "RING-1" in client.get("/catalog").text
        assert len(reads) == 1  # three pages, one read: the desk's own cache
    finally:
        server.shutdown()
    secured = free_port()
    server = serve_ops(
        health, OpsSettings(http_host="127.0.0.1", http_port=secured, catalog_token=token)
    )
    try:
        without = desk_settings(tmp_path / "b", worker_urls=[f"http://127.0.0.1:{secured}"])
        client = TestClient(create_app(without))
        sign_in(client, "rita")
        assert "RING-1" not in client.get("/catalog").text  # refused: no token
        with_token = without.model_copy(update={"ops": OpsSettings(catalog_token=token)})
        client = TestClient(create_app(with_token))
        sign_in(client, "rita")
        assert "RING-1" in client.get("/catalog").text
    finally:
        server.shutdown()


# stopping ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_served_desk_believes_no_forwarded_address_keeps_its_port_and_stops_in_5_s(
    tmp_path, amqp_url
):
    """Served by uvicorn as in production: an address in X-Forwarded-For does not make a
    client a trusted proxy (uvicorn would take it from a local peer), and a second desk on
    the same port says so in one line."""
    with JewelmatchClient(amqp_url) as peer:  # as a worker would on start
        peer.declare(Topology.build(AmqpSettings(), OpsSettings()))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEWELMATCH_")}
    env.update(
        JEWELMATCH_AMQP__URL=amqp_url,
        JEWELMATCH_REVIEW__PORT=str(port),
        JEWELMATCH_REVIEW__DATABASE=str(tmp_path / "review.sqlite3"),
        JEWELMATCH_REVIEW__SESSION_SECRET=SECRET,
        JEWELMATCH_REVIEW__USERS=json.dumps(USERS),
        JEWELMATCH_REVIEW__TRUSTED_USER_HEADER="X-Forwarded-User",
        JEWELMATCH_REVIEW__TRUSTED_PROXIES='["10.0.0.0/30"]',
        JEWELMATCH_LOG__FORMAT="json",
    )
    log_path = tmp_path / "desk.log"
    with log_path.open("wb") as log:
        desk = subprocess.Popen(
            [sys.executable, "-m", "worker", "review"], env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while "review.feed.consuming" not in log_path.read_text():
                assert desk.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                assert reply.status == 200
            claimed = {"X-Forwarded-For": PROXY[0], "X-Forwarded-User": "otto"}
            scans = requests.get(
                f"http://127.0.0.1:{port}/scans", headers=claimed, allow_redirects=False
            )
            assert scans.headers["location"].startswith("/login")  # nobody
            second = subprocess.run(
                [sys.executable, "-m", "worker", "review"], env=env, capture_output=True, text=True
            )
            assert second.returncode == 2, second.stderr
            assert f"cannot serve the review desk on 127.0.0.1:{port}" in second.stderr
            started = time.monotonic()
            desk.send_signal(signal.SIGTERM)
            desk.wait(timeout=30)
            stopped_in = time.monotonic() - started
        finally:
            if desk.poll() is None:
                desk.kill()
    assert stopped_in < 5.0, log_path.read_text()
    assert f"http://127.0.0.1:{port}/" in log_path.read_text()  # it said where it served


# dead letters -----------------------------------------------------------------------------


@pytest.mark.integration
def test_looking_at_dead_letters_twenty_times_leaves_each_in_place(rabbit, amqp_url):
    from worker.amqp.broker import DEAD_LETTER, ConfirmedPublisher
    from worker.review.operations import DeskBroker

    with JewelmatchClient(amqp_url) as peer:
        peer.declare(Topology.build(AmqpSettings(), OpsSettings()))
    # a delivery limit, as RabbitMQ 4 applies to quorum queues by default (20): a queue that
    # counted each look would drop the letters after the 5th
    rabbit.ctl(
        "set_policy", "-p", "/", "--apply-to", "queues", "dead-letter-limit",
        r"^jewelmatch\.dead-letters$", '{"delivery-limit": 5}',
    )  # fmt: skip
    try:
        from kombu import Connection

        with Connection(amqp_url, transport_options={"confirm_publish": True}) as connection:
            publisher = ConfirmedPublisher(connection.channel())
            for n in range(3):
                publisher.publish(f'{{"n": {n}}}', DEAD_LETTER, "bag.photographed")
        desk = DeskBroker(AmqpSettings(url=amqp_url), shown=50)
        try:
            for _ in range(20):
                letters = desk.dead_letters(50)
                assert [letter.preview for letter in letters] == [
                    '{"n": 0}',
                    '{"n": 1}',
                    '{"n": 2}',
                ]  # all there, oldest first, every time
                assert all("x-delivery-count" not in letter.headers for letter in letters)
            desk.discard(letters[1].fingerprint, "otto")
            assert [letter.preview for letter in desk.dead_letters(50)] == ['{"n": 0}', '{"n": 2}']
        finally:
            desk.close()
    finally:
        rabbit.ctl("clear_policy", "-p", "/", "dead-letter-limit")


def test_the_worker_refuses_a_login_it_shares_with_confirming_users():
    from worker.errors import StartupError
    from worker.service.app import check_broker_login

    shared = AmqpSettings(url="amqp://guest:guest@127.0.0.1:5672//", confirm_users=["guest"])
    with pytest.raises(StartupError, match="login of its own"):
        check_broker_login(shared)
    implied = AmqpSettings(url="amqp://127.0.0.1:5672//", confirm_users=["guest"])
    with pytest.raises(StartupError):  # no user in the URL: kombu logs in as guest
        check_broker_login(implied)
    check_broker_login(AmqpSettings(url="amqp://jewelmatch-worker:pw@rabbit//"))
    check_broker_login(AmqpSettings(url="memory://"))


def test_a_worker_logged_in_as_guest_says_so_at_start(capsys):
    from worker.observability.logs import configure_logging
    from worker.service.app import check_broker_login
    from worker.settings import LogSettings

    configure_logging(LogSettings(format="json"))
    check_broker_login(AmqpSettings(url="amqp://guest:guest@127.0.0.1:5672//"))
    assert "broker.guest_login" in capsys.readouterr().err


# confirming a product typed by hand -------------------------------------------------------


NAMES = {7: "signet ring with a lion"}


def test_a_typed_product_id_is_checked_against_the_catalog_before_anything_is_sent(
    tmp_path, monkeypatch
):
    from tests.test_review_parts import result
    from worker.review import operations, scan_pages

    monkeypatch.setattr(operations, "PUBLISH_SECONDS", 1.0)

    health = Health()
    health.catalog = lambda: [
        {
            "product_id": f"p-{n}",
            "sku": f"RING-{n}",
            "name": NAMES.get(n, "ring"),
            "confirmed_photos": 0,
        }
        for n in range(100)
    ]
    port = free_port()
    server = serve_ops(health, OpsSettings(http_host="127.0.0.1", http_port=port))
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}//"  # no broker listens
    settings = desk_settings(tmp_path, nowhere, worker_urls=[f"http://127.0.0.1:{port}"])
    try:
        app = create_app(settings)
        app.state.desk.history.record_result(result("scan-1"))
        client = TestClient(app)
        sign_in(client, "rita")
        page = client.get("/scans/scan-1")
        assert "RING-42" not in page.text  # the product list is not in the page
        found = client.get("/products", params={"q": "ring-4"}).json()["products"]
        assert {p["sku"] for p in found} == {"RING-4", *(f"RING-4{n}" for n in range(10))}
        assert len(client.get("/products", params={"q": "ring"}).json()["products"]) == 20
        assert client.get("/products", params={"q": " "}).json()["products"] == []  # nothing typed
        by_name = client.get("/products", params={"q": "Lion"}).json()["products"]
        assert by_name == [{"product_id": "p-7", "sku": "RING-7", "name": NAMES[7]}]
        listed = client.get("/catalog", params={"q": " Ring-42 "}).text  # the catalog's search
        assert 'data-product-id="p-42"' in listed and 'data-product-id="p-41"' not in listed
        monkeypatch.setattr(scan_pages, "CATALOG_ROWS", 30)
        listed = client.get("/catalog").text  # a long catalog: the first rows, and a hint
        assert listed.count("data-product-id=") == 30 and "Showing 30 of 100" in listed
        token = form_token(page.text)
        typo = client.post(
            "/scans/scan-1/confirm", data={"product_id": "p-1000", "csrf_token": token}
        )
        assert typo.status_code == 400 and "no product 'p-1000'" in typo.text
        assert app.state.desk.history.scan("scan-1").confirmed_product is None
        known = client.post(
            "/scans/scan-1/confirm", data={"product_id": "p-7", "csrf_token": token}
        )
        assert known.status_code == 503 and "broker" in known.text  # checked, then sent
        app.state.desk.history.record_confirmation("scan-1", "p-7", "rita")  # sent after all
        again = client.post(
            "/scans/scan-1/confirm",
            data={"product_id": "p-7", "csrf_token": token},
            follow_redirects=False,
        )
        assert again.status_code == 303  # a second click: already sent, nothing sent again
    finally:
        server.shutdown()


@pytest.mark.integration
def test_the_ops_page_lists_the_oldest_dead_letters_it_is_told_and_acts_on_those_only(
    tmp_path, amqp_url
):
    from tests.test_dead_letters import dead_letter

    with JewelmatchClient(amqp_url) as peer:
        peer.declare(Topology.build(AmqpSettings(), OpsSettings()))
    for n in range(3):
        dead_letter(amqp_url, f'{{"n": {n}}}')
    app = create_app(desk_settings(tmp_path, amqp_url, dead_letters_shown=2))
    ops = TestClient(app, raise_server_exceptions=False)
    sign_in(ops, "otto")
    page = ops.get("/ops").text
    assert "Dead letters (3 waiting, oldest first)" in page
    assert page.count('class="dead-letter"') == 2
    assert "{&#34;n&#34;: 0}" in page and "{&#34;n&#34;: 1}" in page
    assert "{&#34;n&#34;: 2}" not in page
    *_, third = app.state.desk.broker.dead_letters(10)
    beyond = ops.post(
        f"/ops/dead-letters/{third.fingerprint}/discard",
        data={"csrf_token": form_token(page)},
        follow_redirects=False,
    )
    assert beyond.headers["location"] == "/ops?done=gone"  # not one the page lists
    assert len(app.state.desk.broker.dead_letters(10)) == 3
    app.state.desk.broker.close()


@pytest.mark.integration
def test_a_dead_letter_action_of_a_reviewer_without_a_form_token_or_undoable_is_refused(
    tmp_path, amqp_url, monkeypatch
):
    from structlog.testing import capture_logs

    from tests.test_dead_letters import dead_letter
    from worker.review import operations

    monkeypatch.setattr(operations, "PUBLISH_SECONDS", 1.0)
    monkeypatch.setattr(operations, "READ_SECONDS", 1.0)

    with JewelmatchClient(amqp_url) as peer:
        peer.declare(Topology.build(AmqpSettings(), OpsSettings()))
    dead_letter(amqp_url, '{"scan_id": "s1"}', routing_key="match.result")  # no worker's event
    app = create_app(desk_settings(tmp_path, amqp_url))
    ops = TestClient(app, raise_server_exceptions=False)
    sign_in(ops, "otto")
    token = form_token(ops.get("/ops").text)
    [letter] = app.state.desk.broker.dead_letters(10)

    def act(fingerprint: str, action: str):
        url = f"/ops/dead-letters/{fingerprint}/{action}"
        return ops.post(url, data={"csrf_token": token}, follow_redirects=False)

    assert act(letter.fingerprint, "burn").status_code == 404
    refused = act(letter.fingerprint, "replay")
    assert refused.status_code == 400 and "not an event the worker consumes" in refused.text
    gone = act("0" * len(letter.fingerprint), "discard")
    assert (gone.status_code, gone.headers["location"]) == (303, "/ops?done=gone")
    reviewer = TestClient(app, raise_server_exceptions=False)
    sign_in(reviewer, "rita")
    discard = f"/ops/dead-letters/{letter.fingerprint}/discard"
    reviewers_form = {"csrf_token": form_token(reviewer.get("/scans").text)}
    assert reviewer.post(discard, data=reviewers_form).status_code == 403  # ops only
    assert ops.post(discard, data={}).status_code == 403  # no form token: another site's form
    assert app.state.desk.broker.dead_letters(10) == [letter]  # still there
    with capture_logs() as logs:
        done = act(letter.fingerprint, "discard")
    assert (done.status_code, done.headers["location"]) == (303, "/ops?done=discard")
    assert app.state.desk.broker.dead_letters(10) == []
    [discarded] = [e for e in logs if e["event"] == "review.dead_letter.discarded"]
    assert discarded["person"] == "otto"  # who threw it away, for the record
    app.state.desk.broker.close()

    away = create_app(desk_settings(tmp_path, f"amqp://guest:guest@127.0.0.1:{free_port()}//"))
    ops = TestClient(away, raise_server_exceptions=False)
    sign_in(ops, "otto")
    token = form_token(ops.get("/ops").text)
    with capture_logs() as logs:
        unavailable = ops.post(discard, data={"csrf_token": token})
    assert unavailable.status_code == 503 and "the broker is unavailable" in unavailable.text
    assert [e["action"] for e in logs if e["event"] == "review.dead_letter_failed"] == ["discard"]
