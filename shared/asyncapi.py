"""The contract as an AsyncAPI 3.0 document, generated from the models and names in `shared/`.

Integrators in any language point their AsyncAPI tools (code generators, documentation,
validators) at it: one channel per routing key on its exchange, the message with its JSON
Schema, whether the worker receives or sends it, and the AMQP bindings (the exchange, and as
the extension `x-queue` the queue the key is bound to with the queue's arguments, which a
consumer must match). Valid against the AsyncAPI 3.0.0 schema (tests/test_contract.py).
Depends on pydantic only.
"""

from __future__ import annotations

import copy

from shared import topology
from shared.contract import SCHEMA_VERSION
from shared.messages import EVENT_MODELS, RESULT_MODELS

QUEUE_OF = {
    topology.BAG_PHOTOGRAPHED: topology.SCANS_QUEUE,
    topology.PRODUCT_CREATED: topology.CATALOG_QUEUE,
    topology.PRODUCT_UPDATED: topology.CATALOG_QUEUE,
    topology.PRODUCT_DELETED: topology.CATALOG_QUEUE,
    topology.MATCH_CONFIRMED: topology.CATALOG_QUEUE,
    topology.MATCH_RESULT: topology.RESULTS_QUEUE,
    topology.CATALOG_OUTCOME: topology.CATALOG_OUTCOMES_QUEUE,
}

PUBLISHER = {
    topology.BAG_PHOTOGRAPHED: "scan stations (AMQP user `scan-station`)",
    topology.PRODUCT_CREATED: "the PIM (AMQP user `pim`)",
    topology.PRODUCT_UPDATED: "the PIM (AMQP user `pim`)",
    topology.PRODUCT_DELETED: "the PIM (AMQP user `pim`)",
    topology.MATCH_CONFIRMED: "the inventory system (AMQP user `inventory`)",
    topology.MATCH_RESULT: "the worker; read by the inventory system",
    topology.CATALOG_OUTCOME: "the worker; read by the PIM and the inventory system",
}


def _key(routing_key: str) -> str:
    return routing_key.replace(".", "_")


def _schema(model, mode: str) -> tuple[dict, dict]:
    """The model's JSON Schema with its `$defs` lifted out (AsyncAPI components)."""
    schema = copy.deepcopy(
        model.model_json_schema(mode=mode, ref_template="#/components/schemas/{model}")
    )
    return schema, schema.pop("$defs", {})


def asyncapi_document(queue_arguments: dict[str, dict] | None = None) -> dict:
    """The AsyncAPI 3.0 document of the contract. `queue_arguments` (queue name: arguments)
    adds each queue's declared arguments to its binding."""
    queue_arguments = queue_arguments or {}
    channels, operations, messages, schemas = {}, {}, {}, {}
    for routing_key, model in {**EVENT_MODELS, **RESULT_MODELS}.items():
        result = routing_key in RESULT_MODELS
        exchange = topology.RESULTS_EXCHANGE if result else topology.EVENTS_EXCHANGE
        queue = QUEUE_OF[routing_key]
        payload, defs = _schema(model, "serialization" if result else "validation")
        schemas.update(defs)
        name = _key(routing_key)
        messages[name] = {
            "name": routing_key,
            "title": model.__name__,
            "summary": (model.__doc__ or "").strip().split("\n\n")[0],
            "contentType": "application/json",
            "payload": payload,
            "bindings": {"amqp": {"contentEncoding": "utf-8", "bindingVersion": "0.3.0"}},
        }
        channels[name] = {
            "address": routing_key,
            "description": f"Routing key `{routing_key}` on `{exchange}`; "
            f"published by {PUBLISHER[routing_key]}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": "jewelmatch",
                    },
                    # the queue the key is bound to: an extension, as a routing-key channel
                    # binding names only its exchange (AMQP channel binding 0.3.0)
                    "x-queue": {
                        "name": queue,
                        "durable": True,
                        "exclusive": False,
                        "autoDelete": False,
                        "vhost": "jewelmatch",
                        **(
                            {"x-arguments": queue_arguments[queue]}
                            if queue in queue_arguments
                            else {}
                        ),
                    },
                    "bindingVersion": "0.3.0",
                }
            },
        }
        operations[("send_" if result else "receive_") + name] = {
            "action": "send" if result else "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": "0.3.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "jewelmatch",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "Identify unlabelled jewels from a photo: events in on "
            f"`{topology.EVENTS_EXCHANGE}`, answers out on `{topology.RESULTS_EXCHANGE}`. "
            "Operations are the worker's: it receives events and sends answers.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
