"""The message contract: every event the worker consumes and every result it publishes.

Bodies are JSON (``content_type=application/json``). Every message carries
``schema_version``; a message with a version this code does not know is rejected
rather than half-understood. Unknown extra fields are ignored so that publishers
can add fields before consumers learn them.

This module depends on pydantic only, so the inventory system and the PIM can
import it without torch, boto3 or qdrant-client.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
"""The contract version this code reads and writes."""

_S3_URI = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")

Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\s].*$",
        description="A stable identifier chosen by the publisher (no leading whitespace).",
    ),
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Contract version; only 1 exists."
    )


class S3Object(BaseModel):
    """Where an image lies: a bucket and a key, or an ``s3://bucket/key`` URI."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="before")
    @classmethod
    def _from_uri(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _S3_URI.match(value)
            if not match:
                raise ValueError("expected an s3://bucket/key URI")
            return match.groupdict()
        if isinstance(value, dict) and "uri" in value and "bucket" not in value:
            match = _S3_URI.match(str(value["uri"]))
            if not match:
                raise ValueError("expected an s3://bucket/key URI")
            return {**value, **match.groupdict()}
        return value

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class ProductImage(S3Object):
    """One reference image of a product, with an id that stays the same across updates."""

    image_id: Identifier


class BagPhotographed(_Message):
    """A scan station photographed a jewel in its bag. Routing key ``bag.photographed``."""

    scan_id: Identifier
    image: S3Object
    station_id: str | None = None
    top_k: int = Field(default=5, ge=1, le=50, description="How many ranked products to return.")
    category: str | None = Field(
        default=None, description="Optional hint: only products of this category are candidates."
    )
    photographed_at: datetime | None = None


class ProductUpserted(_Message):
    """A product was created or updated in the PIM.

    Routing keys ``product.created`` and ``product.updated`` carry the same body. ``images``
    is the product's complete list of catalog images: catalog images no longer listed are
    removed (an empty list leaves the product without catalog images), confirmed scan
    photos of the product are kept.
    """

    product_id: Identifier
    sku: str = Field(min_length=1, max_length=200)
    name: str | None = None
    category: str | None = None
    images: list[ProductImage] = Field(default_factory=list, max_length=50)
    version: int | None = Field(
        default=None,
        ge=0,
        description="The product's revision in the PIM (any number that grows with each "
        "change, e.g. updated_at in milliseconds). An event older than the last one applied "
        "changes nothing and is answered `stale`. Unversioned events are always applied.",
    )

    @field_validator("images")
    @classmethod
    def _unique_image_ids(cls, images: list[ProductImage]) -> list[ProductImage]:
        ids = [image.image_id for image in images]
        if len(ids) != len(set(ids)):
            raise ValueError("image_id values must be unique within a product")
        return images


class ProductDeleted(_Message):
    """A product was deleted in the PIM. Routing key ``product.deleted``."""

    product_id: Identifier
    version: int | None = Field(
        default=None,
        ge=0,
        description="The product's revision at deletion: a later-delivered older update "
        "does not bring the product back.",
    )


class MatchConfirmed(_Message):
    """A person confirmed (or corrected) which product a scan shows. Routing key
    ``match.confirmed``. The scan's photo becomes a reference image of that product."""

    scan_id: Identifier
    product_id: Identifier
    confirmed_by: str | None = Field(
        default=None,
        description="Who at the sender confirmed (a person's name, for the audit log only). "
        "The system that sent the confirmation is the broker-validated AMQP user_id.",
    )
    image: S3Object | None = Field(
        default=None,
        description="The scan's photo (as given in its match.result). With `receipt`, lets a "
        "worker that does not remember the scan (another replica) still use it.",
    )
    receipt: str | None = Field(
        default=None,
        max_length=64,
        description="The `receipt` of the scan's match.result, proof that this system answered "
        "that scan with that photo.",
    )


class MatchStatus(StrEnum):
    matched = "matched"
    no_confident_match = "no_confident_match"
    failed = "failed"


class FailureReason(StrEnum):
    """Machine-readable reasons of a ``failed`` scan or a rejected catalog event."""

    invalid_message = "invalid_message"
    bucket_not_allowed = "bucket_not_allowed"
    image_not_found = "image_not_found"
    image_access_denied = "image_access_denied"
    image_too_large = "image_too_large"
    image_unreadable = "image_unreadable"
    unknown_scan = "unknown_scan"
    scan_id_reused = "scan_id_reused"
    not_authorized = "not_authorized"
    unknown_product = "unknown_product"
    dependency_unavailable = "dependency_unavailable"
    internal_error = "internal_error"


class RankedProduct(BaseModel):
    model_config = ConfigDict(frozen=True)

    rank: int = Field(ge=1)
    product_id: str
    sku: str
    score: float = Field(description="Similarity of the best matching image, higher is closer.")
    image_id: str = Field(description="The reference image of the product that matched best.")
    source: str = Field(description="'catalog' or 'confirmed_scan'.")


class MatchResult(_Message):
    """The worker's answer to one scan. Routing key ``match.result``."""

    scan_id: str
    status: MatchStatus
    reason: FailureReason | None = None
    detail: str | None = Field(default=None, description="Human-readable detail of a failure.")
    matches: list[RankedProduct] = Field(default_factory=list)
    image: S3Object | None = Field(default=None, description="The scan's photo, as received.")
    receipt: str | None = Field(
        default=None,
        description="Proof that this system answered this scan with this photo, to send back "
        "in match.confirmed (set when workers share a receipt key).",
    )
    model: str = Field(description="Id of the model that embedded the scan.")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    produced_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _reason_iff_failed(self) -> MatchResult:
        if (self.status is MatchStatus.failed) != (self.reason is not None):
            raise ValueError("reason is set exactly when status is 'failed'")
        return self


class CatalogOutcomeStatus(StrEnum):
    applied = "applied"
    partially_applied = "partially_applied"
    rejected = "rejected"
    stale = "stale"


class ImageProblem(BaseModel):
    model_config = ConfigDict(frozen=True)

    image_id: str | None = None
    reason: FailureReason
    detail: str


class CatalogOutcome(_Message):
    """What became of one catalog-side event (product.* or match.confirmed).

    Routing key ``catalog.outcome``. Lets the PIM and the inventory system see that a
    product was indexed, or why an image or a confirmation was not used.
    """

    event: str = Field(description="Routing key of the event this answers.")
    product_id: str
    scan_id: str | None = None
    status: CatalogOutcomeStatus
    images_indexed: int = Field(
        default=0,
        description="How many of the event's images are in the index once it is handled "
        "(newly embedded or already there): the same number on every redelivery.",
    )
    problems: list[ImageProblem] = Field(default_factory=list)
    model: str
    replica: str | None = Field(
        default=None, description="The index replica that applied it (one outcome each)."
    )
    produced_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
