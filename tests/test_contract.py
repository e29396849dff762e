import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from shared import topology
from shared.contract import (
    SCHEMA_VERSION,
    BagPhotographed,
    FailureReason,
    MatchResult,
    MatchStatus,
    ProductUpserted,
    S3Object,
)
from shared.messages import (
    EVENT_MODELS,
    RESULT_MODELS,
    InvalidMessage,
    json_schemas,
    parse_event,
)


def test_shared_imports_without_torch_boto3_or_qdrant():
    code = (
        "import sys, shared, shared.contract, shared.messages, shared.topology\n"
        "heavy = {'torch', 'boto3', 'qdrant_client', 'qdrant_edge', 'kombu', 'open_clip'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_image_reference_accepts_uri_or_bucket_and_key():
    a = BagPhotographed.model_validate({"scan_id": "s1", "image": "s3://scans/2026/a.jpg"})
    b = BagPhotographed.model_validate(
        {"scan_id": "s1", "image": {"bucket": "scans", "key": "2026/a.jpg"}}
    )
    c = BagPhotographed.model_validate({"scan_id": "s1", "image": {"uri": "s3://scans/2026/a.jpg"}})
    assert a.image == b.image == c.image == S3Object(bucket="scans", key="2026/a.jpg")
    assert a.image.uri == "s3://scans/2026/a.jpg"
    assert a.top_k == 5 and a.schema_version == 1
    d = BagPhotographed.model_validate(
        {"scan_id": "s1", "image": {"uri": "s3://scans/2026/a.jpg", "bucket": "scans"}}
    )
    assert d.image == a.image  # a uri that agrees with the bucket it is given


@pytest.mark.parametrize(
    "image",
    [
        {"uri": "s3://scans/a.jpg", "bucket": "catalog", "key": "a.jpg"},
        {"uri": "s3://scans/a.jpg", "key": "b.jpg"},
    ],
    ids=["other-bucket", "other-key"],
)
def test_a_uri_and_a_bucket_or_key_that_name_different_objects_are_refused(image):
    with pytest.raises(InvalidMessage, match="different objects"):
        parse_event(topology.BAG_PHOTOGRAPHED, json.dumps({"scan_id": "s1", "image": image}))


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"{not json", "Invalid JSON"),
        (b'{"image": "s3://scans/a.jpg"}', "scan_id: Field required"),
        (b'{"scan_id": "s1", "image": "http://x/a.jpg"}', "s3://bucket/key"),
        (b'{"scan_id": "s1", "image": "s3://scans/a.jpg", "top_k": 0}', "top_k"),
        (b'{"scan_id": "s1", "image": "s3://scans/a.jpg", "schema_version": 2}', "schema_version"),
        (b"[1, 2]", "<body>: Input should be"),
        (b'{"top_k": 0}', "scan_id: Field required; image: Field required; top_k: Input"),
    ],
)
def test_invalid_scans_are_rejected_with_a_readable_error(body, problem):
    with pytest.raises(InvalidMessage) as error:
        parse_event(topology.BAG_PHOTOGRAPHED, body)
    assert problem in str(error.value)


def test_unknown_routing_key_is_invalid():
    with pytest.raises(InvalidMessage, match="unknown routing key"):
        parse_event("bag.weighed", b"{}")


def test_product_image_ids_must_be_unique():
    body = {
        "product_id": "p1",
        "sku": "R-1",
        "images": [
            {"image_id": "front", "uri": "s3://cat/p1/a.jpg"},
            {"image_id": "front", "uri": "s3://cat/p1/b.jpg"},
        ],
    }
    with pytest.raises(InvalidMessage, match="unique"):
        parse_event(topology.PRODUCT_CREATED, json.dumps(body))


def test_unknown_fields_are_ignored_for_forward_compatibility():
    event = parse_event(topology.PRODUCT_DELETED, b'{"product_id": "p1", "reason": "eol"}')
    assert event.product_id == "p1"


def test_failed_result_needs_a_reason_and_only_failed_has_one():
    with pytest.raises(ValueError):
        MatchResult(scan_id="s", status=MatchStatus.failed, model="m")
    with pytest.raises(ValueError):
        MatchResult(
            scan_id="s",
            status=MatchStatus.matched,
            model="m",
            reason=FailureReason.image_unreadable,
        )


def test_a_result_carries_a_probability_as_its_confidence():
    result = MatchResult(
        scan_id="s",
        status=MatchStatus.matched,
        model="m",
        confidence=0.97,
        confidence_origin="labels",
    )
    assert json.loads(result.model_dump_json())["confidence"] == 0.97
    with pytest.raises(ValueError):
        MatchResult(scan_id="s", status=MatchStatus.matched, model="m", confidence=1.2)
    schema = json_schemas()["match.result.schema.json"]
    assert schema["properties"]["confidence"]["anyOf"][0]["maximum"] == 1.0


def test_every_message_has_a_json_schema_that_validates_a_real_message():
    schemas = json_schemas()
    assert set(schemas) == {
        f"{key}.schema.json"
        for key in [*EVENT_MODELS, topology.MATCH_RESULT, topology.CATALOG_OUTCOME]
    }
    product = ProductUpserted(
        product_id="p1", sku="R-1", images=[{"image_id": "front", "uri": "s3://cat/p1/a.jpg"}]
    )
    jsonschema.validate(
        json.loads(product.model_dump_json()), schemas["product.created.schema.json"]
    )
    result = MatchResult(
        scan_id="s",
        status=MatchStatus.failed,
        model="m",
        reason=FailureReason.image_not_found,
        detail="gone",
    )
    jsonschema.validate(json.loads(result.model_dump_json()), schemas["match.result.schema.json"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"scan_id": "s"}, schemas["bag.photographed.schema.json"])


TEN_MB = "x" * (10 * 1024 * 1024)
BAG, PRODUCT = topology.BAG_PHOTOGRAPHED, topology.PRODUCT_CREATED
CONFIRMED, DELETED = topology.MATCH_CONFIRMED, topology.PRODUCT_DELETED


@pytest.mark.parametrize(
    ("routing_key", "body"),
    [
        (BAG, {"scan_id": "s", "image": "s3://scan-photos/a.jpg", "station_id": TEN_MB}),
        (BAG, {"scan_id": "s", "image": "s3://scan-photos/a.jpg", "category": TEN_MB}),
        (PRODUCT, {"product_id": "p", "sku": "S", "name": TEN_MB}),
        (CONFIRMED, {"scan_id": "s", "product_id": "p", "confirmed_by": TEN_MB}),
        (BAG, {"scan_id": "s", "image": "s3://scan-photos/a.jpg", "top_k": "7"}),
        (BAG, {"scan_id": "s", "image": "s3://scan-photos/a.jpg", "top_k": True}),
        (BAG, {"scan_id": "s", "image": "s3://scan-photos/a.jpg", "top_k": 3.0}),
        (PRODUCT, {"product_id": "p", "sku": "S", "version": "12"}),
        (BAG, {"scan_id": "a\x1fb", "image": "s3://scan-photos/a.jpg"}),
        (PRODUCT, {"product_id": "p\x00q", "sku": "S"}),
        (BAG, {"scan_id": "s", "image": "s3://scan-photos/../secret.jpg"}),
        (BAG, {"scan_id": "s", "image": {"bucket": "scan-photos", "key": "/etc/passwd"}}),
        (BAG, {"scan_id": "s", "image": {"bucket": "Bad_Bucket", "key": "a.jpg"}}),
        (
            PRODUCT,
            {
                "product_id": "p",
                "sku": "S",
                "images": [{"image_id": "scan:s-1", "uri": "s3://catalog-images/a.jpg"}],
            },
        ),
    ],
    ids=[
        "huge-station",
        "huge-category",
        "huge-name",
        "huge-confirmed-by",
        "top-k-string",
        "top-k-bool",
        "top-k-float",
        "version-string",
        "separator-in-id",
        "nul-in-id",
        "dot-dot-key",
        "absolute-key",
        "bucket-name",
        "reserved-image-id",
    ],
)
def test_unbounded_strings_loose_types_and_ambiguous_ids_are_invalid(routing_key, body):
    with pytest.raises(InvalidMessage) as error:
        parse_event(routing_key, json.dumps(body))
    assert len(str(error.value)) < 500  # the error never echoes the input


def test_the_asyncapi_document_describes_every_message_and_resolves():
    from shared.asyncapi import asyncapi_document

    document = asyncapi_document({topology.SCANS_QUEUE: {"x-queue-type": "quorum"}})
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(EVENT_MODELS) | {topology.MATCH_RESULT, topology.CATALOG_OUTCOME}
    actions = {op["action"] for op in document["operations"].values()}
    assert actions == {"send", "receive"}
    scans = document["channels"]["bag_photographed"]["bindings"]["amqp"]
    assert scans["exchange"]["name"] == topology.EVENTS_EXCHANGE
    assert scans["x-queue"]["x-arguments"] == {"x-queue-type": "quorum"}

    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in set(refs(document)):
        target = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # every reference leads somewhere
    payload = document["components"]["messages"]["bag_photographed"]["payload"]
    jsonschema.validate(
        {"scan_id": "s-1", "image": {"bucket": "scan-photos", "key": "a.jpg"}},
        {**payload, "components": document["components"]},
    )


def test_each_channel_names_the_exchange_queue_and_binding_the_broker_is_given():
    """Integrators declare what the document says: it must be what the deployment's RabbitMQ
    definitions hold (the same exchange, queue and binding, with the queue's arguments)."""
    from shared.asyncapi import asyncapi_document
    from worker.amqp.definitions import definitions

    broker = definitions()
    exchanges = {exchange["name"]: exchange for exchange in broker["exchanges"]}
    queues = {queue["name"]: queue for queue in broker["queues"]}
    bound = {(b["source"], b["routing_key"], b["destination"]) for b in broker["bindings"]}
    document = asyncapi_document({name: queue["arguments"] for name, queue in queues.items()})
    for channel in document["channels"].values():
        amqp = channel["bindings"]["amqp"]
        exchange, queue = amqp["exchange"], amqp["x-queue"]
        assert (exchange["name"], channel["address"], queue["name"]) in bound
        declared = exchanges[exchange["name"]]
        assert [exchange[key] for key in ("type", "durable", "autoDelete", "vhost")] == [
            declared[key] for key in ("type", "durable", "auto_delete", "vhost")
        ]
        declared = queues[queue["name"]]
        assert [queue[key] for key in ("durable", "autoDelete", "vhost", "x-arguments")] == [
            declared[key] for key in ("durable", "auto_delete", "vhost", "arguments")
        ]
        assert queue["exclusive"] is False  # every worker replica and reader shares it


def test_the_worker_receives_the_events_and_sends_the_answers_persistent_and_routed():
    from shared.asyncapi import asyncapi_document

    document = asyncapi_document()
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        action = "send" if document["channels"][channel]["address"] in RESULT_MODELS else "receive"
        assert (name, operation["action"]) == (f"{action}_{channel}", action)
        amqp = operation["bindings"]["amqp"]  # as `Broker.publish` publishes
        assert (amqp["deliveryMode"], amqp["mandatory"]) == (2, True)
    assert document["info"]["version"].split(".")[0] == str(SCHEMA_VERSION)
    for message in document["components"]["messages"].values():
        model = {**EVENT_MODELS, **RESULT_MODELS}[message["name"]]
        assert (message["title"], message["contentType"]) == (model.__name__, "application/json")
        assert model.__doc__.strip().startswith(message["summary"])
        assert "\n\n" not in message["summary"]  # the docstring's first paragraph
        assert "$defs" not in message["payload"]  # lifted into the components


ASYNCAPI_SCHEMA = Path(__file__).parent / "data" / "asyncapi" / "3.0.0-without-id.json"


def test_the_asyncapi_document_is_valid_against_the_asyncapi_3_schema():
    """The schema AsyncAPI's own tools check a document against (tests/data/asyncapi): a
    channel binding that AsyncAPI Studio or a code generator would refuse fails here."""
    from shared.asyncapi import asyncapi_document

    validator = jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))
    document = asyncapi_document({topology.SCANS_QUEUE: {"x-queue-type": "quorum"}})
    assert [error.message for error in validator.iter_errors(document)] == []
    # ...and the check can fail: the queue as a routing-key channel's `queue` is refused
    binding = document["channels"]["bag_photographed"]["bindings"]["amqp"]
    binding["queue"] = binding.pop("x-queue")
    assert not validator.is_valid(document)


def test_schema_command_writes_each_schema_and_the_asyncapi_document_and_names_them(tmp_path):
    from typer.testing import CliRunner

    from worker.cli import app

    # folders that do not exist yet, with a name that is no markup, longer than a pipe's 80
    out = tmp_path / "contract [/b] [bold]" / ("v" * 80)
    result = CliRunner().invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(result.output.splitlines()) == sorted(
        str(out / name) for name in [*json_schemas(), "asyncapi.json"]
    )  # it names each file it wrote, each on one line, as it is
    for name, schema in json_schemas().items():
        text = (out / name).read_text()
        assert json.loads(text) == schema
        assert schema["x-routing-key"] == name.removesuffix(".schema.json")
        assert schema["$id"].endswith(f"/schemas/{schema['x-routing-key']}.json")
        # stable files: keys in order, a final newline, so that a committed copy diffs cleanly
        assert list(json.loads(text)) == sorted(schema) and text.endswith("}\n")
    document = json.loads((out / "asyncapi.json").read_text())
    results = document["channels"]["match_result"]["bindings"]["amqp"]["x-queue"]
    assert results["x-arguments"]["x-max-length"] == 1_000_000


def _scan(**fields) -> dict:
    return {"scan_id": "s", "image": "s3://scan-photos/a.jpg", **fields}


def _product(**fields) -> dict:
    return {"product_id": "p", "sku": "S", **fields}


def _images(n: int) -> list[dict]:
    return [{"image_id": f"i{k}", "uri": f"s3://catalog-images/{k}.jpg"} for k in range(n)]


# each bound of the contract: the last value it accepts, and the first it refuses
BOUNDS = [
    ("id of 200", BAG, _scan(scan_id="s" * 200), _scan(scan_id="s" * 201)),
    ("id's first character", PRODUCT, _product(product_id="p-1"), _product(product_id="-p1")),
    ("id's first character .", PRODUCT, _product(product_id="p.1"), _product(product_id=".p1")),
    ("text of 200", PRODUCT, _product(name="n" * 200), _product(name="n" * 201)),
    ("text without unit separator", PRODUCT, _product(name="a b"), _product(name="a\x1fb")),
    ("text without DEL", PRODUCT, _product(name="a~b"), _product(name="a\x7fb")),
    (
        "bucket of 63",
        BAG,
        _scan(image=f"s3://{'b' * 63}/a.jpg"),
        _scan(image=f"s3://{'b' * 64}/a.jpg"),
    ),
    ("bucket without _", BAG, _scan(image="s3://b-1.c/a.jpg"), _scan(image="s3://b_1c/a.jpg")),
    ("bucket of 3", BAG, _scan(image="s3://abc/a.jpg"), _scan(image="s3://ab/a.jpg")),
    (
        "key of 1024",
        BAG,
        _scan(image=f"s3://b1c/{'k' * 1024}"),
        _scan(image=f"s3://b1c/{'k' * 1025}"),
    ),
    (
        "key without unit separator",
        BAG,
        _scan(image="s3://b1c/a b.jpg"),
        _scan(image="s3://b1c/a\x1f.jpg"),
    ),
    ("key without DEL", BAG, _scan(image="s3://b1c/a~.jpg"), _scan(image="s3://b1c/a\x7f.jpg")),
    (
        "key without a . segment",
        BAG,
        _scan(image="s3://b1c/a/.b/c.jpg"),
        _scan(image="s3://b1c/a/./c.jpg"),
    ),
    ("top_k of 50", BAG, _scan(top_k=50), _scan(top_k=51)),
    ("top_k of 1", BAG, _scan(top_k=1), _scan(top_k=0)),
    ("50 images", PRODUCT, _product(images=_images(50)), _product(images=_images(51))),
    ("version 0", PRODUCT, _product(version=0), _product(version=-1)),
    (
        "deleted at version 0",
        DELETED,
        {"product_id": "p", "version": 0},
        {"product_id": "p", "version": -1},
    ),
    (
        "receipt of 32",
        CONFIRMED,
        {"scan_id": "s", "product_id": "p", "receipt": "a" * 32},
        {"scan_id": "s", "product_id": "p", "receipt": "a" * 33},
    ),
    (
        "receipt of no fewer than 32",
        CONFIRMED,
        {"scan_id": "s", "product_id": "p", "receipt": "a" * 32},
        {"scan_id": "s", "product_id": "p", "receipt": "a" * 31},
    ),
]


@pytest.mark.parametrize(
    ("routing_key", "last", "first_refused"), [b[1:] for b in BOUNDS], ids=[b[0] for b in BOUNDS]
)
def test_each_bound_accepts_its_last_value_and_refuses_the_next(routing_key, last, first_refused):
    parse_event(routing_key, json.dumps(last))
    with pytest.raises(InvalidMessage):
        parse_event(routing_key, json.dumps(first_refused))


def test_identifiers_and_texts_are_taken_without_surrounding_spaces():
    event = parse_event(PRODUCT, json.dumps(_product(product_id=" p1 ", sku=" S-1 ")))
    assert (event.product_id, event.sku) == ("p1", "S-1")


def test_an_updated_product_is_read_as_the_whole_product_like_a_created_one():
    body = _product(name="Ring", images=_images(2))
    updated = parse_event(topology.PRODUCT_UPDATED, json.dumps(body))
    assert updated == parse_event(PRODUCT, json.dumps(body))
    assert isinstance(updated, ProductUpserted) and len(updated.images) == 2
