"""`jewelmatch review --demo`: the review desk on one machine, without Docker.

It starts a throwaway RabbitMQ node of its own (Debian's `rabbitmq-server`), keeps images in
a local folder (the `local` S3 back end), runs a real worker process on the default model,
serves the desk, and seeds the generated jewelry catalog and its bag photos as the PIM and a
scan station would. Each takes its own broker login, as in production. Ctrl-C stops it all
and removes the folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console
from rich.text import Text

from shared import topology
from shared.contract import BagPhotographed, ProductUpserted
from worker.amqp.client import JewelmatchClient
from worker.errors import StartupError
from worker.review.auth import hash_password
from worker.settings import Settings
from worker.tools.bench.servers import RABBITMQ_SERVER, RabbitNode, free_port
from worker.tools.seed import object_writer
from worker.tools.synthetic import catalog_designs, photograph, render

CATALOG_BUCKET, SCANS_BUCKET = "catalog-images", "scan-photos"
PRODUCTS, SCANS = 12, 18


@dataclass(frozen=True)
class DemoStack:
    workdir: Path
    node: RabbitNode
    worker: subprocess.Popen
    settings: Settings
    peer_url: str
    passwords: dict[str, str]


def start_stack(workdir: Path, console: Console, host: str, port: int) -> DemoStack:
    """The node, its logins, the worker process, and the desk's settings."""
    if not RABBITMQ_SERVER.exists():
        raise StartupError(
            f"the demo runs its own RabbitMQ node and needs {RABBITMQ_SERVER}: "
            "`apt-get install rabbitmq-server` (scripts/dev-setup does)"
        )
    console.print("starting a RabbitMQ node of its own …")
    node = RabbitNode(workdir / "rabbitmq")
    node.start()
    logins = {name: secrets.token_urlsafe(16) for name in ("jewelmatch-worker", "review-desk")}
    urls = {name: node.add_user(name, password) for name, password in logins.items()}
    peer_url = node.add_user("demo-peer", secrets.token_urlsafe(16))
    images = workdir / "images"
    catalog_token = secrets.token_urlsafe(32)
    ops_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("JEWELMATCH_")}
    env.update(
        JEWELMATCH_AMQP__URL=urls["jewelmatch-worker"],
        JEWELMATCH_S3__BACKEND="local",
        JEWELMATCH_S3__LOCAL_ROOT=str(images),
        JEWELMATCH_S3__ALLOWED_BUCKETS=f"{CATALOG_BUCKET},{SCANS_BUCKET}",
        JEWELMATCH_INDEX__PATH=str(workdir / "index"),
        JEWELMATCH_OPS__HTTP_HOST="127.0.0.1",
        JEWELMATCH_OPS__HTTP_PORT=str(ops_port),
        JEWELMATCH_OPS__CATALOG_TOKEN=catalog_token,
        JEWELMATCH_LOG__FORMAT="json",
    )
    console.print("starting a worker on the default model (a minute on a cold cache) …")
    log = (workdir / "worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker"], env=env, stdout=log, stderr=log
    )
    passwords = {"ops": secrets.token_urlsafe(9), "reviewer": secrets.token_urlsafe(9)}
    settings = Settings(
        _env_file=None,
        amqp={"url": urls["review-desk"]},
        s3={
            "backend": "local",
            "local_root": images,
            "allowed_buckets": [CATALOG_BUCKET, SCANS_BUCKET],
        },
        ops={"catalog_token": SecretStr(catalog_token)},
        review={
            "host": host,
            "port": port,
            "database": workdir / "review.sqlite3",
            "session_secret": secrets.token_urlsafe(48),
            "worker_urls": [f"http://127.0.0.1:{ops_port}"],
            "users": [
                {"name": name, "role": name, "password_hash": hash_password(password)}
                for name, password in passwords.items()
            ],
        },
    )
    return DemoStack(workdir, node, worker, settings, peer_url, passwords)


def wait_until_ready(stack: DemoStack, timeout: float = 600.0) -> None:
    url = f"{stack.settings.review.worker_urls[0]}/readyz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.worker.poll() is not None:
            tail = (stack.workdir / "worker.log").read_text(errors="replace")[-2000:]
            raise StartupError(f"the demo's worker stopped: {tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise StartupError(f"the demo's worker was not ready within {timeout:.0f} s")


def seed(stack: DemoStack, console: Console) -> None:
    """The PIM's products, then a scan station's bag photos (some of look-alike twins)."""
    import random

    put = object_writer(stack.settings.s3)
    designs = catalog_designs(PRODUCTS, seed=11)
    rng = random.Random(11)
    with JewelmatchClient(stack.peer_url) as peer:
        for design in designs:
            picture = render(design)
            put(CATALOG_BUCKET, f"{design.product_id}/front.png", _png(picture))
            event = ProductUpserted(
                product_id=design.product_id,
                sku=design.sku,
                name=design.name,
                images=[
                    {
                        "image_id": "front",
                        "bucket": CATALOG_BUCKET,
                        "key": f"{design.product_id}/front.png",
                    }
                ],
            )
            peer.publish(topology.PRODUCT_CREATED, event)
        peer.outcomes(len(designs), timeout=600)
        for n in range(SCANS):
            design = designs[n % len(designs)]
            key = f"bags/bag-{n:03d}.jpg"
            put(SCANS_BUCKET, key, _jpeg(photograph(render(design), rng)))
            peer.publish(
                topology.BAG_PHOTOGRAPHED,
                BagPhotographed(
                    scan_id=f"demo-bag-{n:03d}",
                    station_id=f"station-{1 + n % 3}",
                    image={"bucket": SCANS_BUCKET, "key": key},
                ),
            )
    console.print(f"seeded {len(designs)} products and {SCANS} bag photos")


def _png(picture) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(picture) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def run_review_demo(console: Console, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Until Ctrl-C (or SIGTERM); then everything it started is stopped and removed."""
    from worker.review.web import check_port_free, serve

    check_port_free(host, port)
    workdir = Path(tempfile.mkdtemp(prefix="jewelmatch-review-demo-"))
    console.print(f"demo data in {workdir} (removed at the end)")
    stack = None
    try:
        stack = start_stack(workdir, console, host, port)
        wait_until_ready(stack)
        threading.Thread(target=seed, args=(stack, console), daemon=True).start()
        console.print(
            Text.assemble(
                "\nreview desk on ",
                (f"http://{host}:{port}/", "bold"),
                "\n  sign in as ",
                ("reviewer", "bold"),
                f" / {stack.passwords['reviewer']}  or ",
                ("ops", "bold"),
                f" / {stack.passwords['ops']}\n  Ctrl-C stops the demo and removes its data\n",
            )
        )
        serve(stack.settings)
    finally:
        if stack is not None:
            stack.worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                stack.worker.wait(timeout=30)
            stack.node.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
