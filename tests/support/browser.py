"""Headless Debian Chromium driven by Playwright (which cannot download a browser here), and
the review desk served by uvicorn in a thread."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import uvicorn
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Page

from worker.review.web import create_app
from worker.settings import Settings
from worker.tools.bench.servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def watch_policy_violations(context: BrowserContext) -> None:
    """Every page of `context` records what its Content-Security-Policy blocks (read with
    `policy_violations`)."""
    context.add_init_script(
        "window.policyViolations = [];"
        "document.addEventListener('securitypolicyviolation', function (event) {"
        "  window.policyViolations.push(event.violatedDirective + ' ' + event.blockedURI);"
        "});"
    )


def policy_violations(page: Page) -> list[str]:
    return page.evaluate("window.policyViolations")


def accessibility_problems(page: Page) -> list[str]:
    """What axe-core (the engine of Lighthouse's and browsers' accessibility audits) finds
    wrong with the page as it stands: WCAG A/AA and best-practice rules, e.g. text contrast
    below 4.5:1, a control without a name. One line per rule and element."""
    found = Axe().run(page).response["violations"]
    return [
        f"{rule['id']} ({rule['impact']}): {rule['help']} at {node['target']}"
        for rule in found
        for node in rule["nodes"]
    ]


class DeskServer:
    """`jewelmatch review` on a free local port, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self.server.run, name="review-desk", daemon=True)

    @property
    def desk(self):
        return self.app.state.desk

    def __enter__(self) -> DeskServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not (self.server.started and self.desk.feed.ready.is_set()):
            if time.monotonic() > deadline:
                raise TimeoutError("the review desk did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
