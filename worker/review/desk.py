"""What the review desk's pages stand on: its history, sessions and sign-in, its broker
connection, the image store, and the workers it asks for readiness and the product list."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families

from worker.observability.logs import get_logger
from worker.pipeline.storage import ImageStore, open_image_store
from worker.review.auth import Authenticator
from worker.review.feed import ResultFeed
from worker.review.history import History
from worker.review.operations import DeskBroker
from worker.review.sessions import SessionStore
from worker.settings import Settings

log = get_logger(__name__)

CATALOG_CACHE_SECONDS = 15.0


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


class Desk:
    """What the pages use: the history, the broker, the image store, the workers."""

    def __init__(self, settings: Settings, store: ImageStore | None = None) -> None:
        self.settings = settings
        self.review = settings.review
        self.history = History(self.review.database, self.review.history_limit)
        self.broker = DeskBroker(settings.amqp, self.review.dead_letters_shown)
        self.store = store or open_image_store(settings.s3, settings.images.max_bytes)
        self.sessions = SessionStore(self.review.database, self.review.session_hours * 3600)
        self.auth = Authenticator(self.review, self.sessions)
        self.feed = ResultFeed(settings.amqp, self.history, self.review.queue_max_length)
        self._catalog: tuple[float, list[dict]] = (0.0, [])

    def start(self) -> None:
        self.feed.start()

    def close(self) -> None:
        self.feed.stop()
        self.broker.close()
        self.sessions.close()
        self.history.close()

    def worker_states(self) -> list[dict]:
        """Each worker replica's /readyz answer."""
        urls = [replica for url in self.review.worker_urls for replica in replica_urls(url)]

        def probe(url: str) -> dict:
            try:
                with urllib.request.urlopen(f"{url.rstrip('/')}/readyz", timeout=3) as answer:
                    state = {"url": url, "state": "ready", "code": answer.status}
            except urllib.error.HTTPError as error:
                state = {"url": url, "state": "not ready", "code": error.code}
            except OSError as error:
                return {
                    "url": url,
                    "state": "unreachable",
                    "code": None,
                    "error": str(error),
                    "backup_hours": None,
                }
            figures = confidence_figures(url)
            backup_at = figures.pop("backup_at", None)
            backup_hours = None if backup_at is None else (time.time() - backup_at) / 3600
            return {**state, "confidence": figures, "backup_hours": backup_hours}

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(probe, urls))

    def catalog(self, max_age: float = CATALOG_CACHE_SECONDS) -> list[dict]:
        """The products of the first worker that answers (a copy up to `max_age` seconds
        old will do)."""
        fetched_at, products = self._catalog
        if time.monotonic() - fetched_at < max_age and products:
            return products
        token = self.settings.ops.catalog_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        for url in self.review.worker_urls:
            request = urllib.request.Request(f"{url.rstrip('/')}/catalog", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    products = json.load(answer)["products"]
            except (OSError, ValueError, KeyError) as error:
                log.warning("review.catalog_unavailable", url=url, error=str(error))
                continue
            self._catalog = (time.monotonic(), products)
            return products
        return products


def confidence_figures(url: str) -> dict[str, float]:
    """A worker's confidence figures, read from its /metrics: the decision's estimates
    (`jewelmatch_confidence`) and, once people have checked answers of this worker
    (`jewelmatch_checked_answers_total`), how many (`checked`, `checked_matched`) and how often
    its `matched` answers were right (`observed_precision`); when it last wrote its own index
    backup (`backup_at`, seconds since the epoch; none without one); empty when it does not
    answer."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=3) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    figures: dict[str, float] = {}
    checked: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "jewelmatch_confidence" and not math.isnan(sample.value):
                figures[sample.labels["figure"]] = sample.value
            elif sample.name == "jewelmatch_checked_answers_total":
                checked[sample.labels["status"], sample.labels["first"]] = sample.value
            elif sample.name == "jewelmatch_index_backup_timestamp_seconds" and sample.value > 0:
                figures["backup_at"] = sample.value
    if checked:
        matched = checked.get(("matched", "right"), 0.0) + checked.get(("matched", "wrong"), 0.0)
        figures.update(checked=sum(checked.values()), checked_matched=matched)
        if matched:
            figures["observed_precision"] = checked.get(("matched", "right"), 0.0) / matched
    return figures
