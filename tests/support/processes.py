"""The worker as a real process (`python -m worker worker`), for faults only a process has:
being killed, receiving SIGTERM, serving its probes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from worker.tools.bench.servers import free_port


def worker_environment(
    *,
    amqp_url: str,
    s3_endpoint: str,
    buckets: list[str],
    index_path: Path,
    model_dir: Path,
    **extra: str,
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JEWELMATCH_")}
    env.update(
        {
            "JEWELMATCH_AMQP__URL": amqp_url,
            "JEWELMATCH_S3__ENDPOINT_URL": s3_endpoint,
            "JEWELMATCH_S3__ALLOWED_BUCKETS": ",".join(buckets),
            "JEWELMATCH_INDEX__PATH": str(index_path),
            "JEWELMATCH_MODEL__NAME": f"local-dir:{model_dir}",
            "JEWELMATCH_MODEL__SCAN_CROPS": "[1.0]",
            "JEWELMATCH_MODEL__THREADS": "1",
            "JEWELMATCH_MODEL__CACHE_DIR": str(Path(model_dir).parent / "cache"),
            "JEWELMATCH_MATCHING__MIN_MARGIN": "0",
            "JEWELMATCH_OPS__RETRY_DELAYS_SECONDS": "[1, 2]",
            "JEWELMATCH_LOG__FORMAT": "json",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, probes: bool = True) -> None:
        self.port = free_port() if probes else 0  # 0: no ops endpoint at all
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker"],
            env={**env, "JEWELMATCH_OPS__HTTP_PORT": str(self.port)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def probe(self, path: str) -> int | None:
        """HTTP status of /livez, /readyz or /metrics; None when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.probe("/readyz") != 200:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout} s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log.close()
