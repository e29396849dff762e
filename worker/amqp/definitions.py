"""RabbitMQ definitions (for `load_definitions`) generated from the topology the worker
declares, so that a pre-declared broker and the worker always agree on names and arguments.

Users follow least privilege, one role per system, and each may publish only its own event
types (topic permissions on the routing key): scan stations `bag.photographed`, the PIM
`product.*` (and it reads catalog outcomes), the inventory system `match.confirmed` (and it
reads results and catalog outcomes), the review desk `match.confirmed` and replays of dead
letters (it reads its own copies of the results and the dead letters); the worker declares
and uses `jewelmatch.*` and publishes no event.

No password is ever committed: `jewelmatch rabbitmq-definitions` takes each user's password
from `JEWELMATCH_RABBITMQ_PASSWORD_<USER>` (e.g. `..._SCAN_STATION`); a user whose variable
is unset is written without a password, and cannot log in until one is set
(`rabbitmqctl change_password`). There is no administrator: operators bring their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kombu import Queue

from shared import topology
from worker.amqp.broker import DEAD_LETTER, EVENTS, RESULTS, Topology, review_queues
from worker.settings import AmqpSettings, OpsSettings, ReviewSettings

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


def exactly(*names: str) -> str:
    """A RabbitMQ permission regex matching exactly these names (dots escaped)."""
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


NOTHING = "^$"
EVERYTHING = ".*"
RESULT_KEYS = exactly(topology.MATCH_RESULT, topology.CATALOG_OUTCOME)
REVIEW_QUEUES = (topology.REVIEW_RESULTS_QUEUE, topology.REVIEW_OUTCOMES_QUEUE)


@dataclass(frozen=True)
class Role:
    """One system's rights: resource permissions (configure, write, read: regexes over
    exchange and queue names) and topic permissions (the routing keys it may publish to each
    topic exchange, which RabbitMQ checks on every publish)."""

    tags: str
    configure: str
    write: str
    read: str
    topics: dict[str, tuple[str, str]]
    """Topic exchange -> routing-key regexes this role may publish there, and bind a queue
    to there (write, read)."""


ROLES = {
    # The worker declares and uses its own resources, publishes answers and dead letters,
    # parks retries through the default exchange, and never publishes an event.
    "jewelmatch-worker": Role(
        "",
        OWN,
        r"^(jewelmatch\..*|amq\.default)$",
        OWN,
        {
            topology.EVENTS_EXCHANGE: (
                NOTHING,
                exactly(*topology.SCAN_ROUTING_KEYS, *topology.CATALOG_ROUTING_KEYS),
            ),
            topology.RESULTS_EXCHANGE: (RESULT_KEYS, RESULT_KEYS),
            topology.DEAD_LETTER_EXCHANGE: (EVERYTHING, EVERYTHING),
        },
    ),
    "scan-station": Role(
        "",
        NOTHING,
        exactly(topology.EVENTS_EXCHANGE),
        NOTHING,
        {topology.EVENTS_EXCHANGE: (exactly(topology.BAG_PHOTOGRAPHED), NOTHING)},
    ),
    "pim": Role(
        "",
        NOTHING,
        exactly(topology.EVENTS_EXCHANGE),
        exactly(topology.CATALOG_OUTCOMES_QUEUE),
        {
            topology.EVENTS_EXCHANGE: (
                exactly(
                    topology.PRODUCT_CREATED, topology.PRODUCT_UPDATED, topology.PRODUCT_DELETED
                ),
                NOTHING,
            )
        },
    ),
    "inventory": Role(
        "",
        NOTHING,
        exactly(topology.EVENTS_EXCHANGE),
        exactly(topology.RESULTS_QUEUE, topology.CATALOG_OUTCOMES_QUEUE),
        {topology.EVENTS_EXCHANGE: (exactly(topology.MATCH_CONFIRMED), NOTHING)},
    ),
    # The review desk declares and reads its own copies of the results, publishes
    # confirmations (and, for ops, replays any dead-lettered event), and reads the dead
    # letters to list, replay or discard them.
    "review-desk": Role(
        "",
        exactly(*REVIEW_QUEUES),
        exactly(topology.EVENTS_EXCHANGE, *REVIEW_QUEUES),
        exactly(topology.RESULTS_EXCHANGE, topology.DEAD_LETTER_QUEUE, *REVIEW_QUEUES),
        {
            topology.EVENTS_EXCHANGE: (
                exactly(*topology.SCAN_ROUTING_KEYS, *topology.CATALOG_ROUTING_KEYS),
                NOTHING,
            ),
            topology.RESULTS_EXCHANGE: (NOTHING, RESULT_KEYS),
        },
    ),
}


ADMINISTRATOR = Role("administrator", EVERYTHING, EVERYTHING, EVERYTHING, {})
"""For throwaway brokers in tests only: production brings its own operators."""


def password_variable(user: str) -> str:
    return "JEWELMATCH_RABBITMQ_PASSWORD_" + user.upper().replace("-", "_")


def passwords_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The passwords of the roles whose variable is set."""
    return {
        user: environ[password_variable(user)]
        for user in ROLES
        if environ.get(password_variable(user))
    }


def definitions(
    amqp: AmqpSettings | None = None,
    ops: OpsSettings | None = None,
    passwords: Mapping[str, str] | None = None,
    administrators: Mapping[str, str] | None = None,
) -> dict:
    """The definitions; users without a password in `passwords` get none (no login).
    `administrators` (name: password) adds full-rights users, for throwaway brokers."""
    topo = Topology.build(amqp or AmqpSettings(), ops or OpsSettings())
    queues = [*topo.all_queues(), *review_queues(ReviewSettings().queue_max_length)]
    roles = {**ROLES, **{name: ADMINISTRATOR for name in administrators or {}}}
    passwords = {**(passwords or {}), **(administrators or {})}
    users, permissions, topic_permissions = [], [], []
    for name, role in roles.items():
        password = passwords.get(name)
        users.append(
            {
                "name": name,
                "password_hash": password_hash(password, secrets.token_bytes(4))
                if password
                else "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [role.tags] if role.tags else [],
            }
        )
        permissions.append(
            {
                "user": name,
                "vhost": VHOST,
                "configure": role.configure,
                "write": role.write,
                "read": role.read,
            }
        )
        topic_permissions.extend(
            {"user": name, "vhost": VHOST, "exchange": exchange, "write": write, "read": read}
            for exchange, (write, read) in role.topics.items()
        )
    return {
        "rabbit_version": "3.13.0",
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
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


def write_definitions(path: Path, passwords: Mapping[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(definitions(passwords=passwords), indent=2) + "\n")
    return path
