"""The throwaway servers that tests, benchmarks and `review --demo` run on: logins on the
node, rabbitmqctl's failures said once, and waiting for a port."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from kombu import Connection

from worker.tools.bench.servers import RabbitCtlError, free_port, wait_for_port

pytestmark = pytest.mark.integration


def _logs_in(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
            return True
    except Exception:
        return False


def test_a_user_added_again_takes_its_new_password(rabbit):
    """`review --demo` gives each peer a password from secrets.token_urlsafe, whose alphabet
    has `-`: one in 64 starts with it, which rabbitmqctl once took for an option (a flaky
    demo start)."""
    old = rabbit.add_user("servers-test-peer", "-EFhkVofRu99FiEk6JCAQg")
    assert old == f"amqp://servers-test-peer:-EFhkVofRu99FiEk6JCAQg@127.0.0.1:{rabbit.port}//"
    assert _logs_in(old)
    new = rabbit.add_user("servers-test-peer", "--also-a-password")
    assert _logs_in(new) and not _logs_in(old)


def test_a_user_of_another_virtual_host_gets_its_url(rabbit):
    guest_url = rabbit.add_vhost("servers-test")
    assert guest_url.endswith("/servers-test") and _logs_in(guest_url)
    url = rabbit.add_user("servers-test-vhost-user", "secret", vhost="servers-test")
    assert url == f"amqp://servers-test-vhost-user:secret@127.0.0.1:{rabbit.port}/servers-test"
    assert _logs_in(url)


def test_a_command_rabbitmqctl_refuses_fails_at_once_with_its_own_words(rabbit):
    with pytest.raises(RabbitCtlError) as refused:
        rabbit.ctl("delete_user", "servers-test-nobody")
    message = str(refused.value)
    assert f"rabbitmqctl delete_user servers-test-nobody on {rabbit.name} failed" in message
    assert "attempt 1 of 3" in message  # not a transient failure: no second try
    assert "servers-test-nobody" in message.split(": ", 1)[1]


def test_waiting_for_a_port_ends_with_what_happened():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        wait_for_port(listening.getsockname()[1], timeout=5)
    with pytest.raises(TimeoutError, match="nothing listens on port"):
        wait_for_port(free_port(), timeout=0.3)
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    gone.wait()
    with pytest.raises(RuntimeError, match="server exited with 3 before listening"):
        wait_for_port(free_port(), timeout=5, process=gone)
