"""Routing key → model mapping, parsing of raw bodies, and JSON Schema export."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from shared import topology
from shared.contract import (
    BagPhotographed,
    CatalogOutcome,
    MatchConfirmed,
    MatchResult,
    ProductDeleted,
    ProductUpserted,
)

EVENT_MODELS: dict[str, type[BaseModel]] = {
    topology.BAG_PHOTOGRAPHED: BagPhotographed,
    topology.PRODUCT_CREATED: ProductUpserted,
    topology.PRODUCT_UPDATED: ProductUpserted,
    topology.PRODUCT_DELETED: ProductDeleted,
    topology.MATCH_CONFIRMED: MatchConfirmed,
}
RESULT_MODELS: dict[str, type[BaseModel]] = {
    topology.MATCH_RESULT: MatchResult,
    topology.CATALOG_OUTCOME: CatalogOutcome,
}


class InvalidMessage(ValueError):
    """A body that is not JSON, or not a valid event for its routing key."""


def parse_event(routing_key: str, body: bytes | str) -> BaseModel:
    """Parse a raw event body for its routing key; raise InvalidMessage with a readable error."""
    model = EVENT_MODELS.get(routing_key)
    if model is None:
        raise InvalidMessage(f"unknown routing key {routing_key!r}")
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or '<body>'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise InvalidMessage(f"{routing_key}: {problems}") from None


def json_schemas() -> dict[str, dict]:
    """The JSON Schema of every message, keyed by a file name."""
    schemas = {}
    for routing_key, model in {**EVENT_MODELS, **RESULT_MODELS}.items():
        schema = model.model_json_schema(
            mode="serialization" if routing_key in RESULT_MODELS else "validation"
        )
        schema["$id"] = f"https://jewelmatch.invalid/schemas/{routing_key}.json"
        schema["x-routing-key"] = routing_key
        schemas[f"{routing_key}.schema.json"] = schema
    return schemas


def write_json_schemas(directory: Path) -> list[Path]:
    """Write one JSON Schema file per message into `directory`; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for path in write_json_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(path)
