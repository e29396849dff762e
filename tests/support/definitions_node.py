"""A throwaway RabbitMQ node loaded with the generated definitions: every role's user with a
known password (`<user>-password`) and an `admin` for the tests' own housekeeping."""

from __future__ import annotations

import json
from pathlib import Path

from worker.amqp.definitions import ROLES, VHOST, definitions
from worker.tools.bench.servers import RabbitNode


def definitions_node(folder: Path) -> RabbitNode:
    """Not started yet: `start()` it, `cleanup()` it."""
    path = folder / "definitions.json"
    passwords = {role: f"{role}-password" for role in ROLES}
    administrators = {"admin": "admin-password"}
    path.write_text(json.dumps(definitions(passwords=passwords, administrators=administrators)))
    return RabbitNode(
        folder / "node",
        config=f"load_definitions = {path}\n",
        credentials="admin:admin-password",
        vhost=VHOST,
    )


def role_url(node: RabbitNode, user: str) -> str:
    return f"amqp://{user}:{user}-password@127.0.0.1:{node.port}/{VHOST}"
