"""Throwaway real servers for benchmarks and integration tests: a RabbitMQ node of its own
and moto's S3 server over HTTP.

A missing server binary is an error with a clear message (tests fail, never skip):
`scripts/dev-setup` installs Debian's `rabbitmq-server`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

RABBITMQ_SERVER = Path(
    os.environ.get("JEWELMATCH_TEST_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server")
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


TRANSIENT_CTL_EXITS = (69, 75, None)
"""rabbitmqctl's exits worth another try: 69 (node unavailable or still booting), 75 (a
temporary failure, e.g. a distribution link being set up), None (no answer in time)."""


class RabbitCtlError(RuntimeError):
    """rabbitmqctl failed; the message carries its own output."""


class RabbitNode:
    """A RabbitMQ node of its own (own ports, own data folder) that tests can stop and start."""

    def __init__(
        self,
        workdir: Path,
        config: str | None = None,
        credentials: str = "guest:guest",
        vhost: str = "",
    ) -> None:
        if not RABBITMQ_SERVER.exists():
            raise RuntimeError(
                f"{RABBITMQ_SERVER} not found: install Debian's rabbitmq-server "
                "(`apt-get install rabbitmq-server`, as .ci/run does)"
            )
        self.workdir = workdir
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"jewelmatch-test-{self.port}@localhost"
        self.process: subprocess.Popen | None = None
        self.config = config
        # for the readiness check (definitions may drop guest and the default vhost)
        self.credentials, self.vhost = credentials, vhost
        for folder in ("mnesia", "log"):
            (workdir / folder).mkdir(parents=True, exist_ok=True)
        (workdir / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "HOME": str(self.workdir),
        }
        if self.config is not None:  # rabbitmq.conf lines, e.g. load_definitions = ...
            (self.workdir / "rabbitmq.conf").write_text(self.config)
            env["RABBITMQ_CONFIG_FILE"] = str(self.workdir / "rabbitmq.conf")

        self.process = subprocess.Popen(
            [str(RABBITMQ_SERVER)],
            env=env,
            stdout=open(self.workdir / "server.out", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.workdir,  # Erlang writes crash dumps (MnesiaCore.*) to its working folder
        )
        wait_for_port(self.port, timeout, self.process)
        # the AMQP port opens before the node has finished booting (rabbitmqctl may still
        # answer "not running", exit 69): wait for the boot itself, then for a real login
        self.ctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
        self._wait_until_amqp_works(timeout)

    def _wait_until_amqp_works(self, timeout: float) -> None:
        from kombu import Connection

        deadline = time.monotonic() + timeout
        while True:
            try:
                url = f"amqp://{self.credentials}@127.0.0.1:{self.port}/{self.vhost}"

                with Connection(url, connect_timeout=2) as connection:
                    connection.ensure_connection(max_retries=1)
                    connection.channel().close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill the node hard (as a crash or an abrupt restart would)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
        # epmd may remember the node name for a moment
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.1)
            except OSError:
                break

    def ctl(self, *args: str, timeout: float = 60.0, attempts: int = 3) -> str:
        """Run `rabbitmqctl ARGS` against this node; a transient failure (the node still
        booting, a lost distribution link: exit 69 or 75) is tried again a few times, and a
        final failure says what rabbitmqctl said."""
        ctl = RABBITMQ_SERVER.with_name("rabbitmqctl")
        env = {**os.environ, "HOME": str(self.workdir)}
        command = [str(ctl), "-n", self.name, *args]
        for attempt in range(1, attempts + 1):
            try:
                done = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=timeout
                )
            except subprocess.TimeoutExpired as error:
                output, returncode = f"no answer within {timeout:.0f} s: {error}", None
            else:
                if done.returncode == 0:
                    return done.stdout
                output, returncode = (done.stdout + done.stderr).strip(), done.returncode
            if returncode not in TRANSIENT_CTL_EXITS or attempt == attempts:
                raise RabbitCtlError(
                    f"rabbitmqctl {' '.join(args)} on {self.name} failed "
                    f"(exit {returncode}, attempt {attempt} of {attempts}): {output[-2000:]}"
                )
            time.sleep(attempt)
        raise AssertionError("unreachable")

    def add_vhost(self, name: str) -> str:
        """A fresh virtual host (guest may use it); returns its AMQP URL."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{name}"

    def add_user(self, name: str, password: str, vhost: str = "/") -> str:
        """A broker user of its own with every permission on `vhost` (again: a new
        password); returns its AMQP URL."""
        # `--`: a password may start with `-` (secrets.token_urlsafe's alphabet), which
        # rabbitmqctl would otherwise take for an option
        try:
            self.ctl("add_user", "--", name, password)
        except RabbitCtlError as error:
            if "already exists" not in str(error):
                raise
            self.ctl("change_password", "--", name, password)
        self.ctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
        path = "/" if vhost == "/" else vhost
        return f"amqp://{name}:{password}@127.0.0.1:{self.port}/{path}"

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if not os.environ.get("JEWELMATCH_KEEP_BROKER_DATA"):  # kept for a post-mortem
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_moto_server():
    """moto's S3 server on a free local port (needs the `bench` or `dev` extra)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per request
    port = free_port()

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"
