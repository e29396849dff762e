"""`jewelmatch seed-demo`: what a PIM and a scan station would send, against a running stack.

Generates the demo's jewelry catalog, uploads its images to the configured S3 store, publishes
`product.created` for each product, waits for the catalog's outcomes (the worker takes scans
first, so a scan sent earlier would be matched against part of the catalog), publishes
`bag.photographed` for each bag photo, then prints the answers read from the results queue
(the workers log each match too).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr
from rich.console import Console

from shared import topology
from shared.contract import (
    BagPhotographed,
    CatalogOutcome,
    CatalogOutcomeStatus,
    MatchResult,
)
from worker.amqp.client import JewelmatchClient, Received
from worker.errors import StartupError
from worker.pipeline.storage import s3_client
from worker.settings import S3Settings, Settings
from worker.tools.folders import read_folder_dataset
from worker.tools.synthetic import write_catalog


@dataclass(frozen=True)
class RoleUrls:
    """Each peer logs in as its own AMQP user: the broker lets each publish only its own
    events (and the inventory system read the answers)."""

    pim: str
    station: str
    inventory: str


def object_writer(s3: S3Settings) -> Callable[[str, str, bytes], None]:
    """`put(bucket, key, data)` into the configured store, whichever back end: an S3 store
    through boto3, or the local back end's folder per bucket. A store that refuses (no
    credentials, unreachable, no such bucket) is a one-line `StartupError`."""
    if s3.backend == "local":

        def put_file(bucket: str, key: str, data: bytes) -> None:
            path = s3.local_root / bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        return put_file

    client = s3_client(s3)

    def put_object(bucket: str, key: str, data: bytes) -> None:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as error:
            where = s3.endpoint_url or "AWS S3"
            raise StartupError(
                f"cannot upload to bucket {bucket!r} at {where}: {error} (JEWELMATCH_S3__*; "
                "JEWELMATCH_S3__BACKEND=local writes to a folder instead)"
            ) from None

    return put_object


INDEXED = (CatalogOutcomeStatus.applied, CatalogOutcomeStatus.partially_applied)


Answer = TypeVar("Answer", CatalogOutcome, MatchResult)


def _answers(
    client: JewelmatchClient,
    queue: str,
    kind: type[Answer],
    key: Callable[[Answer], str],
    wanted: set[str],
    timeout: float,
) -> dict[str, Answer]:
    """The answer to each of `wanted` (by `key`), read off `queue` until each has one or
    `timeout` is over (an answer that an earlier run left unread counts too)."""
    found: dict[str, Answer] = {}

    def note(message: Received) -> None:
        answer = message.parse(kind)
        if (wanted_key := key(answer)) in wanted:
            found[wanted_key] = answer

    with contextlib.suppress(TimeoutError):
        client.receive(queue, until=lambda _: wanted <= found.keys(), timeout=timeout, on_each=note)
    return found


def _client(settings: Settings, url: str) -> JewelmatchClient:
    return JewelmatchClient(settings.amqp.model_copy(update={"url": SecretStr(url)}))


def seed_demo(
    settings: Settings,
    catalog_bucket: str,
    scans_bucket: str,
    products: int,
    console: Console,
    urls: RoleUrls | None = None,
    timeout: float = 600.0,
) -> int:
    """Returns how many scans ranked the right product first."""
    put = object_writer(settings.s3)
    with tempfile.TemporaryDirectory(prefix="jewelmatch-seed-") as tmp:
        write_catalog(Path(tmp), products, scans_per_product=1)
        dataset = read_folder_dataset(Path(tmp))

        events, scans = [], {}
        for product in dataset.products:
            for path in product.catalog:
                put(catalog_bucket, product.object_key(path, "demo/"), path.read_bytes())
            events.append(product.catalog_event(catalog_bucket, "demo/"))
            for query in product.queries:
                key = product.object_key(query.path, "demo/")
                put(scans_bucket, key, query.path.read_bytes())
                scan_id = f"demo-{product.product_id}-{query.path.stem}-{int(time.time())}"
                scans[scan_id] = (product.product_id, key)
    default = settings.amqp.url.get_secret_value()
    urls = urls or RoleUrls(default, default, default)
    with _client(settings, urls.pim) as pim:
        for event in events:
            pim.publish(topology.PRODUCT_CREATED, event)
        console.print(f"published {len(events)} product.created events")
        # scans come first in the worker: the catalog must land before them
        landed = _answers(
            pim,
            topology.CATALOG_OUTCOMES_QUEUE,
            CatalogOutcome,
            lambda outcome: outcome.product_id,
            {event.product_id for event in events},
            timeout,
        )
    applied = [o for o in landed.values() if o.status in INDEXED]
    console.print(
        f"catalog: {len(landed)} of {len(events)} products answered, {len(applied)} indexed"
    )
    with _client(settings, urls.station) as station:
        for scan_id, (_, key) in scans.items():
            station.publish(
                topology.BAG_PHOTOGRAPHED,
                BagPhotographed(scan_id=scan_id, image={"bucket": scans_bucket, "key": key}),
            )
    console.print(f"published {len(scans)} bag.photographed events")
    # the demo stack has no inventory system: this reads the results in its place
    with _client(settings, urls.inventory) as inventory:
        answers = _answers(
            inventory,
            topology.RESULTS_QUEUE,
            MatchResult,
            lambda result: result.scan_id,
            set(scans),
            timeout,
        )
    right = 0
    for scan_id, (product_id, _) in scans.items():
        result = answers.get(scan_id)
        best = result.matches[0].product_id if result and result.matches else None
        right += best == product_id
        console.print(
            f"{scan_id}: photo of {product_id} → {best} "
            f"({result.status.value if result else 'no answer'})"
        )
    console.print(f"seed-demo: {right}/{len(scans)} scans ranked the right product first")
    return right
