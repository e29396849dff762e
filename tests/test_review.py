"""The review desk in a real browser (headless Debian Chromium driven by Playwright) against
a real RabbitMQ node, moto's S3 server over HTTP and a real worker process."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

import boto3
import pytest
from moto.server import ThreadedMotoServer
from playwright.sync_api import Page, expect, sync_playwright

from shared import topology
from shared.contract import BagPhotographed, MatchStatus, ProductUpserted
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes
from tests.support.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    DeskServer,
    accessibility_problems,
    policy_violations,
    watch_policy_violations,
)
from tests.support.processes import WorkerProcess, worker_environment
from worker.amqp.client import JewelmatchClient
from worker.review.auth import hash_password
from worker.settings import Settings
from worker.tools.bench.servers import start_moto_server
from worker.tools.synthetic import catalog_designs, photograph, render

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(6, seed=33)
PASSWORDS = {"rita": "rita-reviews-scans", "otto": "otto-runs-ops"}
SESSION_SECRET = "review-desk-test-session-key-of-forty-bytes"
ALL_LOADED = (
    "sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)"
)


@dataclass
class Stack:
    peer: JewelmatchClient
    worker: WorkerProcess
    desk: DeskServer
    s3_port: int
    s3_server: ThreadedMotoServer | None

    def stop_s3(self) -> None:
        self.s3_server.stop()
        self.s3_server = None

    def start_s3(self) -> None:  # moto keeps its objects in this process
        self.s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.s3_port)
        self.s3_server.start()

    def scan(self, scan_id: str, key: str, station: str = "station-7") -> None:
        self.peer.publish(
            topology.BAG_PHOTOGRAPHED,
            BagPhotographed(
                scan_id=scan_id,
                station_id=station,
                top_k=len(DESIGNS),
                image={"bucket": SCANS_BUCKET, "key": key},
            ),
        )


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def stack(tmp_path, tiny_model_dir, rabbit, amqp_url):
    server, endpoint = start_moto_server()
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for bucket in (CATALOG_BUCKET, SCANS_BUCKET):
        s3.create_bucket(Bucket=bucket)
    rng = random.Random(5)
    for design in DESIGNS:
        picture = render(design, 192)
        s3.put_object(
            Bucket=CATALOG_BUCKET, Key=f"{design.product_id}/front.jpg", Body=jpeg_bytes(picture)
        )
        bag = jpeg_bytes(photograph(picture, rng, 224))
        for copy in ("a", "b"):  # two stations photograph the same bag
            s3.put_object(Bucket=SCANS_BUCKET, Key=f"bag-{design.product_id}-{copy}.jpg", Body=bag)
    worker = WorkerProcess(
        worker_environment(
            amqp_url=amqp_url,
            s3_endpoint=endpoint,
            buckets=[CATALOG_BUCKET, SCANS_BUCKET],
            index_path=tmp_path / "index",
            model_dir=tiny_model_dir,
            # random weights: a confirmed photo is used at once, without domain statistics
            JEWELMATCH_LEARNING__CENTRING__ENABLED="false",
            JEWELMATCH_OPS__MAX_ATTEMPTS="2",
            JEWELMATCH_S3__MAX_ATTEMPTS="1",
            JEWELMATCH_S3__CONNECT_TIMEOUT_SECONDS="0.5",
            # its own index backup, written on its first idle round (the ops page shows when)
            JEWELMATCH_INDEX__BACKUP_FILE=str(tmp_path / "index.jsonl.gz"),
        ),
        tmp_path / "worker.log",
    )
    # the desk logs in as its own user, one the worker accepts confirmations from
    desk_url = rabbit.add_user("review-desk", "review-desk-password")
    settings = Settings(
        _env_file=None,
        amqp={"url": desk_url},
        s3={"endpoint_url": endpoint, "allowed_buckets": [CATALOG_BUCKET, SCANS_BUCKET]},
        review={
            "database": tmp_path / "review.sqlite3",
            # random weights: every answer goes to the worklist, as a low score would
            "review_below_score": 2.0,
            "session_secret": SESSION_SECRET,
            "worker_urls": [f"http://127.0.0.1:{worker.port}"],
            "users": [
                {
                    "name": "rita",
                    "role": "reviewer",
                    "password_hash": hash_password("rita-reviews-scans"),
                },
                {"name": "otto", "role": "ops", "password_hash": hash_password("otto-runs-ops")},
            ],
        },
        log={"format": "json"},
    )
    peer = JewelmatchClient(amqp_url)
    stack = Stack(peer, worker, None, int(endpoint.rsplit(":", 1)[1]), server)
    try:
        worker.wait_ready()
        with DeskServer(settings) as desk:
            stack.desk = desk
            for design in DESIGNS:
                peer.publish(topology.PRODUCT_CREATED, product_event(design))
            peer.outcomes(len(DESIGNS))
            yield stack
    finally:
        peer.close()
        worker.stop()
        if stack.s3_server is not None:
            stack.s3_server.stop()


def product_event(design) -> ProductUpserted:
    return ProductUpserted(
        product_id=design.product_id,
        sku=design.sku,
        name=f"{design.metal} {design.kind}",
        images=[
            {"image_id": "front", "bucket": CATALOG_BUCKET, "key": f"{design.product_id}/front.jpg"}
        ],
    )


def sign_in(browser, stack: Stack, name: str, width: int = 1280) -> Page:
    context = browser.new_context(viewport={"width": width, "height": 860})
    watch_policy_violations(context)
    page = context.new_page()
    page.goto(f"{stack.desk.url}/scans")
    expect(page).to_have_url(f"{stack.desk.url}/login?next=%2Fscans")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("button[type=submit]")
    expect(page.locator("#person")).to_contain_text(name)
    return page


def test_a_scan_appears_is_confirmed_and_the_next_photo_ranks_it_first(stack, browser):
    target = DESIGNS[2]
    page = sign_in(browser, stack, "rita")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    stack.scan("bag-0001", f"bag-{target.product_id}-a.jpg")
    row = page.locator('article[data-scan-id="bag-0001"]')
    expect(row).to_be_visible(timeout=30_000)  # arrives on the open page, no reload
    expect(row.locator("img")).to_have_count(6)  # the bag photo and the top 5
    page.wait_for_function(ALL_LOADED, arg='article[data-scan-id="bag-0001"] img')
    shown = row.locator(".candidates .sku").all_inner_texts()
    assert len(shown) == 5 and set(shown) <= {d.sku for d in DESIGNS}
    expect(row.locator(".meta")).to_contain_text("station-7")
    page.screenshot(path=SCREENSHOTS / "review-scans.png")
    assert accessibility_problems(page) == []  # axe-core, as for every page below

    row.locator("a.scan-id").click()
    page.wait_for_function(ALL_LOADED, arg=".detail img")
    page.locator(f'li[data-product-id="{target.product_id}"] button.confirm').click()
    expect(page.locator("#confirmation")).to_contain_text(
        f"Confirmed as {target.product_id} by rita"
    )
    expect(page.locator("#outcome")).to_contain_text("applied", timeout=30_000)
    page.screenshot(path=SCREENSHOTS / "review-confirmed.png")
    assert accessibility_problems(page) == []

    stack.scan("bag-0002", f"bag-{target.product_id}-b.jpg", station="station-9")
    page.goto(f"{stack.desk.url}/scans?station=station-9")
    second = page.locator('article[data-scan-id="bag-0002"]')
    expect(second).to_be_visible(timeout=30_000)
    expect(second.locator(".candidates .sku").first).to_have_text(target.sku)
    answer = stack.desk.desk.history.scan("bag-0002").result
    assert answer.matches[0].product_id == target.product_id
    assert answer.matches[0].source == "confirmed_scan"  # the confirmed bag photo found it
    expect(page.locator('article[data-scan-id="bag-0001"]')).to_have_count(0)  # filtered out

    page.goto(f"{stack.desk.url}/catalog")
    counts = page.locator(f'tr[data-product-id="{target.product_id}"] .confirmed-count')
    expect(counts).to_have_text("1")
    expect(page.locator("h2", has_text="without confirmations")).to_contain_text(
        f"({len(DESIGNS) - 1})"
    )
    assert accessibility_problems(page) == []
    page.fill("input[name=q]", target.sku.lower())
    page.click("form.filters button")
    expect(page.locator("#products tbody tr")).to_have_count(1)
    expect(page.locator("#products tbody tr")).to_have_attribute(
        "data-product-id", target.product_id
    )
    assert policy_violations(page) == []  # the desk's script ran, nothing was blocked


def test_ops_replay_a_dead_letter_that_is_then_answered_and_reviewers_cannot(stack, browser):
    stack.stop_s3()  # the worker cannot fetch the photo: retried, then dead-lettered
    stack.scan("bag-0100", f"bag-{DESIGNS[0].product_id}-a.jpg")
    deadline = time.monotonic() + 60
    while stack.peer.depth(topology.DEAD_LETTER_QUEUE) < 1:
        assert time.monotonic() < deadline, stack.worker.log_tail()
        time.sleep(0.2)
    stack.start_s3()

    reviewer = sign_in(browser, stack, "rita")
    row = reviewer.locator('article[data-scan-id="bag-0100"]')
    expect(row.locator(".badge.failed")).to_be_visible(timeout=30_000)
    expect(row.locator(".reason")).to_contain_text("unavailable")  # in words, not a code
    assert accessibility_problems(reviewer) == []  # the worklist with a failed scan
    expect(reviewer.locator('nav a[href="/ops"]')).to_have_count(0)
    looked = reviewer.request.get(f"{stack.desk.url}/ops")
    assert looked.status == 403 and "bag.photographed" not in looked.text()  # ops only
    fingerprint = stack.desk.desk.broker.dead_letters(10)[0].fingerprint
    token = reviewer.locator("form.who input[name=csrf_token]").input_value()
    replay_url = f"{stack.desk.url}/ops/dead-letters/{fingerprint}/replay"
    refused = reviewer.request.post(replay_url, form={"csrf_token": token})
    assert refused.status == 403 and "only ops" in refused.text()
    no_token = reviewer.request.post(
        f"{stack.desk.url}/scans/bag-0100/confirm", form={"product_id": DESIGNS[0].product_id}
    )
    assert no_token.status == 403 and "CSRF" in no_token.text()
    assert stack.desk.desk.history.scan("bag-0100").confirmed_product is None
    outside = reviewer.request.get(f"{stack.desk.url}/image/another-bucket/secret.jpg")
    assert outside.status == 404  # the worker's bucket allowlist applies to images too
    assert stack.peer.depth(topology.DEAD_LETTER_QUEUE) == 1

    ops = sign_in(browser, stack, "otto")
    ops.goto(f"{stack.desk.url}/ops")
    expect(ops.locator("#workers")).to_contain_text("ready (200)")
    # read from the worker's /metrics: too few confirmations yet, the prior decides
    # (the test worker's margin, JEWELMATCH_MATCHING__MIN_MARGIN, is 0)
    expect(ops.locator("#workers td.confidence")).to_have_text("prior (margin 0.000)")
    # the worker writes its own backup on its first idle round, in the background
    written = re.compile(r"^0\.\d h$")
    deadline = time.monotonic() + 30
    while not written.match(ops.locator("#workers td.backup").inner_text()):
        assert time.monotonic() < deadline, "the worker's backup never showed"
        time.sleep(0.5)
        ops.reload()
    expect(ops.locator('tr[data-queue="jewelmatch.dead-letters"] td.num')).to_have_text("1")
    html = ops.content()
    assert SESSION_SECRET not in html and "review-desk-password" not in html
    ops.screenshot(path=SCREENSHOTS / "review-ops.png")
    assert accessibility_problems(ops) == []  # with a dead letter and its buttons
    ops.locator("article.dead-letter button.replay").click()
    expect(ops.locator(".notice")).to_contain_text("Replayed")
    assert stack.peer.depth(topology.DEAD_LETTER_QUEUE) == 0

    ops.goto(f"{stack.desk.url}/scans")
    answered = ops.locator('article[data-scan-id="bag-0100"]')
    expect(answered.locator(".badge.matched, .badge.no_confident_match")).to_be_visible(
        timeout=30_000
    )
    answer = stack.desk.desk.history.scan("bag-0100").result
    assert answer.matches

    # a person confirms the answer's first product: the worker counts its answer checked
    ops.goto(f"{stack.desk.url}/scans/bag-0100")
    ops.locator(f'li[data-product-id="{answer.matches[0].product_id}"] button.confirm').click()
    expect(ops.locator("#outcome")).to_contain_text("applied", timeout=30_000)
    ops.goto(f"{stack.desk.url}/ops")
    seen = "100.0 % of 1" if answer.status is MatchStatus.matched else "–"
    expect(ops.locator("#workers td.observed")).to_have_text(seen)

    stack.peer.publish(topology.BAG_PHOTOGRAPHED, b"{not json")  # dead-lettered at once
    ops.goto(f"{stack.desk.url}/ops")
    letter = ops.locator("article.dead-letter")
    expect(letter).to_contain_text("JSON", timeout=5_000)
    expect(letter.locator("button.replay")).to_have_count(1)
    ops.once("dialog", lambda dialog: dialog.accept())  # "Discard this dead letter for good?"
    letter.locator("button.discard").click()
    expect(ops.locator(".notice")).to_contain_text("Discarded")
    assert stack.peer.depth(topology.DEAD_LETTER_QUEUE) == 0
    assert policy_violations(ops) == [] and policy_violations(reviewer) == []


WIDER_THAN_THE_SCREEN = "document.documentElement.scrollWidth - window.innerWidth"


@pytest.mark.parametrize("width", [390, 768, 1024, 1280])
def test_every_page_fits_a_phone_a_tablet_and_a_desk_screen(stack, browser, width):
    """Nothing wider than the screen; on a scan, all five candidates' buttons within it."""
    stack.scan("bag-0300", f"bag-{DESIGNS[1].product_id}-a.jpg")
    page = sign_in(browser, stack, "otto", width)
    expect(page.locator('article[data-scan-id="bag-0300"]')).to_be_visible(timeout=30_000)
    for path in ("/worklist", "/scans", "/catalog", "/ops", "/scans/bag-0300"):
        page.goto(f"{stack.desk.url}{path}")
        assert page.evaluate(WIDER_THAN_THE_SCREEN) <= 0, (width, path)
    buttons = page.locator("#candidates button.confirm")
    expect(buttons).to_have_count(5)
    for box in (buttons.nth(n).bounding_box() for n in range(5)):
        assert box["x"] >= 0 and box["x"] + box["width"] <= width


def test_another_site_cannot_frame_the_desk(stack, browser):
    """A click hijacked through a frame would confirm a wrong product: the browser refuses to
    show any desk page inside another page."""
    page = browser.new_page()
    page.set_content(f'<iframe src="{stack.desk.url}/login" width="600" height="400"></iframe>')
    frame = page.frames[-1]
    frame.wait_for_load_state()
    assert frame.locator("input[name=password]").count() == 0
    page.goto(f"{stack.desk.url}/login")  # the page itself is there, unframed
    expect(page.locator("input[name=password]")).to_have_count(1)


def test_sign_in_is_refused_without_the_password_or_the_form_token(stack, browser):
    page = browser.new_context().new_page()
    page.goto(f"{stack.desk.url}/login")
    page.fill("input[name=name]", "otto")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("wrong password")
    assert accessibility_problems(page) == []
    forged = page.request.post(
        f"{stack.desk.url}/login", form={"name": "otto", "password": PASSWORDS["otto"]}
    )
    assert forged.status == 403
    page.goto(f"{stack.desk.url}/ops")
    expect(page).to_have_url(f"{stack.desk.url}/login?next=%2Fops")


def test_a_warehouse_person_clears_the_worklist_with_the_keyboard(stack, browser):
    bags = {f"bag-w{n}": DESIGNS[n] for n in range(3)}
    for scan_id, design in bags.items():
        stack.scan(scan_id, f"bag-{design.product_id}-a.jpg")
    page = sign_in(browser, stack, "rita")
    page.goto(f"{stack.desk.url}/worklist")
    rows = page.locator("article.scan")
    expect(rows).to_have_count(3, timeout=30_000)
    assert [rows.nth(n).get_attribute("data-scan-id") for n in range(3)] == list(bags)  # oldest
    expect(page.locator("#to-review .count")).to_have_text("3")
    page.wait_for_function(ALL_LOADED, arg="article.scan img")
    page.screenshot(path=SCREENSHOTS / "review-worklist.png")

    def confirm_with_keys(scan_id: str) -> None:
        wanted = page.locator(f'#candidates li[data-product-id="{bags[scan_id].product_id}"]')
        page.keyboard.press(wanted.get_attribute("data-key"))
        expect(wanted).to_have_class(re.compile("selected"))
        page.keyboard.press("Enter")

    rows.first.locator("a.scan-id").click()
    expect(page).to_have_url(re.compile("/scans/bag-w0$"))
    page.wait_for_function(ALL_LOADED, arg=".detail img")
    page.screenshot(path=SCREENSHOTS / "review-scan.png")
    confirm_with_keys("bag-w0")
    expect(page).to_have_url(re.compile(r"/scans/bag-w1\?done=bag-w0$"))  # on to the next
    expect(page.locator("#done")).to_contain_text("Confirmed bag-w0")
    expect(page.locator("#to-review .count")).to_have_text("2")
    page.keyboard.press("j")
    expect(page).to_have_url(re.compile("/scans/bag-w2$"))
    page.keyboard.press("k")
    expect(page).to_have_url(re.compile("/scans/bag-w1$"))
    confirm_with_keys("bag-w1")
    expect(page).to_have_url(re.compile(r"/scans/bag-w2\?done=bag-w1$"))
    expect(page.locator("#to-review .count")).to_have_text("1")

    # a mis-click is changed, not lost: the buttons wait for "Change", then correct it
    page.goto(f"{stack.desk.url}/scans/bag-w0")
    expect(page.locator("#candidates button.confirm").first).to_be_disabled()
    page.click("#change")
    other = page.locator(
        f'#candidates li:not([data-product-id="{bags["bag-w0"].product_id}"]) button.confirm'
    ).first
    expect(other).to_be_enabled()
    corrected_to = other.locator("xpath=ancestor::li").get_attribute("data-product-id")
    other.click()
    expect(page).to_have_url(re.compile(r"/scans/bag-w2\?done=bag-w0$"))
    expect(page.locator("#done")).to_contain_text(f"Confirmed bag-w0 as {corrected_to}")
    work = stack.desk.desk.history.work_per_person(0)
    assert [(w.person, w.confirmations, w.corrections) for w in work] == [("rita", 2, 1)]
    page.goto(f"{stack.desk.url}/scans/bag-w0")
    expect(page.locator("#confirmation")).to_contain_text(f"Confirmed as {corrected_to}")
    expect(page.locator("#outcome")).to_contain_text("applied", timeout=30_000)


def test_a_scan_with_no_product_to_confirm_is_set_aside_and_leaves_the_worklist(stack, browser):
    stack.scan("bag-lost-1", "never-uploaded.jpg")  # failed: the photo is not in the store
    stack.scan("bag-lost-2", "never-uploaded-either.jpg")
    page = sign_in(browser, stack, "rita")
    page.goto(f"{stack.desk.url}/worklist")
    expect(page.locator("#to-review .count")).to_have_text("2", timeout=30_000)
    page.goto(f"{stack.desk.url}/scans/bag-lost-1")
    page.click("button.set-aside")
    expect(page).to_have_url(re.compile("/scans/bag-lost-2$"))  # on to the next
    expect(page.locator("#to-review .count")).to_have_text("1")
    page.click("button.set-aside")
    expect(page).to_have_url(re.compile("/worklist$"))  # nothing after it
    expect(page.locator("#to-review .count")).to_have_text("0")
    expect(page.locator("article.scan")).to_have_count(0)
    page.goto(f"{stack.desk.url}/scans/bag-lost-1")
    expect(page.locator(".detail")).to_contain_text("Set aside by rita.")
    expect(page.locator("button.set-aside")).to_have_count(0)
