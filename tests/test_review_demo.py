"""`jewelmatch review --demo` shows the desk on one machine without Docker: its own broker
node, a real worker on the default model, seeded scans to review; Ctrl-C removes it all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.test_review_security import form_token
from worker.tools.bench.servers import free_port

pytestmark = pytest.mark.integration


def test_the_demo_desk_serves_seeded_scans_and_stops_clean_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEWELMATCH_")}
    env.update(JEWELMATCH_REVIEW__PORT=str(port), JEWELMATCH_LOG__FORMAT="json", COLUMNS="200")
    output = tmp_path / "demo.log"
    with output.open("wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "worker", "review", "--demo"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600
            while "seeded" not in output.read_text():
                assert demo.poll() is None, output.read_text()[-3000:]
                assert time.monotonic() < deadline, output.read_text()[-3000:]
                time.sleep(1)
            text = output.read_text()
            password = re.search(r"reviewer / (\S+)", text).group(1)
            workdir = Path(re.search(r"demo data in (\S+)", text).group(1))
            assert workdir.is_dir()
            desk = requests.Session()
            base = f"http://127.0.0.1:{port}"
            form = desk.get(f"{base}/login", timeout=10).text
            token = form_token(form)
            signed_in = desk.post(
                f"{base}/login",
                data={"name": "reviewer", "password": password, "csrf_token": token},
                timeout=30,
            )
            assert signed_in.status_code == 200 and "reviewer (reviewer)" in signed_in.text
            deadline = time.monotonic() + 120  # the worker answers the seeded scans
            while desk.get(f"{base}/scans", timeout=10).text.count('class="scan ') < 18:
                assert time.monotonic() < deadline
                time.sleep(1)
            # every scan answered against the whole catalog (seeded once it was indexed),
            # five candidates each, from the three stations
            scans = desk.get(f"{base}/scans", timeout=10).text
            assert scans.count('class="score"') == 18 * 5
            assert all(f"· station station-{n}" in scans for n in (1, 2, 3))
            # the desk reads the catalog from the worker
            catalog = desk.get(f"{base}/catalog", timeout=10).text
            assert catalog.count("<tr data-product-id=") == 12
            assert desk.get(f"{base}/ops", timeout=10).status_code == 403  # a reviewer
            listed = subprocess.run(["pgrep", "-P", str(demo.pid)], capture_output=True, text=True)
            children = [int(pid) for pid in listed.stdout.split()]
            assert len(children) >= 2  # the node and the worker
            demo.send_signal(signal.SIGINT)
            assert demo.wait(timeout=60) == 0, output.read_text()[-3000:]
        finally:
            if demo.poll() is None:
                demo.kill()
    assert not workdir.exists()  # broker data, images, index and history removed
    leftover = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True)
    assert leftover.stdout == ""  # no node or worker left running
    assert not [pid for pid in children if _running(pid)]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_demo_on_a_taken_port_stops_at_once_in_one_line(tmp_path):
    """Before a node or a worker is started (a minute's work)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEWELMATCH_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.update(JEWELMATCH_REVIEW__PORT=str(port))
        done = subprocess.run(
            [sys.executable, "-m", "worker", "review", "--demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"cannot serve the review desk on 127.0.0.1:{port}" in done.stderr
    assert "starting a RabbitMQ node" not in done.stdout + done.stderr
