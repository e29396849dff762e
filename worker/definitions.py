"""RabbitMQ definitions (for `load_definitions`) generated from the topology the worker
declares, so that a pre-declared broker and the worker always agree on names and arguments.

Users follow least privilege: the worker may declare and use `jewelmatch.*` only; scan
stations and the PIM may only publish events; the inventory system may only read results.
The passwords here are for the local stack; production defines users from secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from kombu import Queue

from shared import topology
from worker.broker import DEAD_LETTER, EVENTS, RESULTS, Topology
from worker.settings import AmqpSettings, OpsSettings

VHOST = "jewelmatch"
OWN = r"^jewelmatch\..*"


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _queue(queue: Queue) -> dict:
    return {
        "name": queue.name,
        "vhost": VHOST,
        "durable": True,
        "auto_delete": False,
        "arguments": dict(queue.queue_arguments or {}),
    }


def _bindings(queue: Queue) -> list[dict]:
    pairs = (
        [(b.exchange.name, b.routing_key) for b in queue.bindings]
        if queue.bindings
        else [(queue.exchange.name, queue.routing_key)]
    )
    return [
        {
            "source": exchange,
            "vhost": VHOST,
            "destination": queue.name,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": {},
        }
        for exchange, key in pairs
        if exchange
    ]  # the default exchange binds implicitly


USERS = {
    # name: (password for the local stack, tags, configure, write, read)
    "jewelmatch-worker": ("jewelmatch-worker", "", OWN, r"^(jewelmatch\..*|amq\.default)$", OWN),
    "scan-station": ("scan-station", "", "^$", rf"^{topology.EVENTS_EXCHANGE}$", "^$"),
    "pim": ("pim", "", "^$", rf"^{topology.EVENTS_EXCHANGE}$", "^$"),
    "inventory": (
        "inventory",
        "",
        "^$",
        rf"^{topology.EVENTS_EXCHANGE}$",
        rf"^({topology.RESULTS_QUEUE}|{topology.CATALOG_OUTCOMES_QUEUE})$",
    ),
    "admin": ("admin", "administrator", ".*", ".*", ".*"),
}


def definitions(amqp: AmqpSettings | None = None, ops: OpsSettings | None = None) -> dict:
    topo = Topology.build(amqp or AmqpSettings(), ops or OpsSettings())
    queues = topo.all_queues()
    users, permissions = [], []
    for n, (name, (password, tags, configure, write, read)) in enumerate(USERS.items()):
        salt = hashlib.sha256(f"jewelmatch-local-{n}".encode()).digest()[:4]  # reproducible
        users.append(
            {
                "name": name,
                "password_hash": password_hash(password, salt),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [tags] if tags else [],
            }
        )
        permissions.append(
            {"user": name, "vhost": VHOST, "configure": configure, "write": write, "read": read}
        )
    return {
        "rabbit_version": "3.13.0",
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": VHOST,
                "type": exchange.type,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for exchange in (EVENTS, RESULTS, DEAD_LETTER)
        ],
        "queues": [_queue(q) for q in queues],
        "bindings": sorted(
            (binding for q in queues for binding in _bindings(q)),
            key=lambda b: (b["destination"], b["source"], b["routing_key"]),
        ),
    }


def write_definitions(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(definitions(), indent=2) + "\n")
    return path
