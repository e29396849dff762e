"""A throwaway RabbitMQ node configured as deploy/rabbitmq/rabbitmq.conf configures the
compose stack's broker, loaded with the generated definitions: every role's user with a
known password (`<user>-password`) and an `admin` for the tests' own housekeeping."""

from __future__ import annotations

import json
from pathlib import Path

from worker.amqp.definitions import ROLES, VHOST, definitions
from worker.tools.bench.servers import RabbitNode

DEPLOYED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "rabbitmq.conf"


def deployed_config(definitions_path: Path) -> str:
    """The committed rabbitmq.conf, its definitions read from `definitions_path`."""
    lines = DEPLOYED_CONFIG.read_text().splitlines()
    assert any(line.startswith("load_definitions = ") for line in lines)
    return "".join(
        f"load_definitions = {definitions_path}\n"
        if line.startswith("load_definitions = ")
        else line + "\n"
        for line in lines
    )


def definitions_node(folder: Path) -> RabbitNode:
    """Not started yet: `start()` it, `cleanup()` it."""
    path = folder / "definitions.json"
    passwords = {role: f"{role}-password" for role in ROLES}
    administrators = {"admin": "admin-password"}
    path.write_text(json.dumps(definitions(passwords=passwords, administrators=administrators)))
    return RabbitNode(
        folder / "node",
        config=deployed_config(path),
        credentials="admin:admin-password",
        vhost=VHOST,
    )


def role_url(node: RabbitNode, user: str) -> str:
    return f"amqp://{user}:{user}-password@127.0.0.1:{node.port}/{VHOST}"
