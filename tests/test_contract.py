import json
import subprocess
import sys

import jsonschema
import pytest

from shared import topology
from shared.contract import (
    BagPhotographed,
    FailureReason,
    MatchResult,
    MatchStatus,
    ProductUpserted,
    S3Object,
)
from shared.messages import EVENT_MODELS, InvalidMessage, json_schemas, parse_event


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


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"{not json", "Invalid JSON"),
        (b'{"image": "s3://scans/a.jpg"}', "scan_id: Field required"),
        (b'{"scan_id": "s1", "image": "http://x/a.jpg"}', "s3://bucket/key"),
        (b'{"scan_id": "s1", "image": "s3://scans/a.jpg", "top_k": 0}', "top_k"),
        (b'{"scan_id": "s1", "image": "s3://scans/a.jpg", "schema_version": 2}', "schema_version"),
        (b"[1, 2]", "Input should be"),
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
