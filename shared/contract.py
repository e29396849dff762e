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

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

SCHEMA_VERSION = 1
"""The contract version this code reads and writes."""

_S3_URI = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")

IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+#=-]{0,199}$"

Identifier = Annotated[
    str,
    Field(
        pattern=IDENTIFIER_PATTERN,
        description="A stable identifier chosen by the publisher: 1 to 200 characters, "
        "letters, digits and . _ : / @ + # = -, starting with a letter or digit.",
    ),
]

Text = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Free text: 1 to 200 characters, no control characters.",
    ),
]

StrictCount = Annotated[int, Strict()]
"""An integer given as a JSON integer: `"7"`, `7.0` and `true` are refused, not coerced."""

RESERVED_IMAGE_PREFIX = "scan:"
"""Image ids of confirmed scan photos; catalog image ids may not start with it."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Contract version; only 1 exists."
    )


class S3Object(BaseModel):
    """Where an image lies: a bucket and a key, or an ``s3://bucket/key`` URI."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    bucket: str = Field(
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="An S3 bucket name."
    )
    key: str = Field(
        min_length=1,
        max_length=1024,
        description="The object key: no control characters, no leading `/`, no `.` or `..` "
        "path segments.",
    )

    @field_validator("key")
    @classmethod
    def _plain_key(cls, key: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise ValueError("the key holds control characters")
        if key.startswith("/") or any(part in (".", "..") for part in key.split("/")):
            raise ValueError("the key starts with '/' or has a '.' or '..' segment")
        return key

    @model_validator(mode="before")
    @classmethod
    def _from_uri(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _S3_URI.match(value)
            if not match:
                raise ValueError("expected an s3://bucket/key URI")
            return match.groupdict()
        if isinstance(value, dict) and "uri" in value:
            match = _S3_URI.match(str(value["uri"]))
            if not match:
                raise ValueError("expected an s3://bucket/key URI")
            given = {part: value[part] for part in ("bucket", "key") if part in value}
            if any(match[part] != named for part, named in given.items()):
                raise ValueError("the uri and the bucket or key name different objects")
            return {**value, **match.groupdict()}
        return value

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class ProductImage(S3Object):
    """One reference image of a product, with an id that stays the same across updates."""

    image_id: Identifier

    @field_validator("image_id")
    @classmethod
    def _not_reserved(cls, image_id: str) -> str:
        if image_id.startswith(RESERVED_IMAGE_PREFIX):
            raise ValueError(f"image ids starting with {RESERVED_IMAGE_PREFIX!r} are reserved")
        return image_id


class BagPhotographed(_Message):
    """A scan station photographed a jewel in its bag. Routing key ``bag.photographed``."""

    scan_id: Identifier
    image: S3Object
    station_id: Identifier | None = None
    top_k: StrictCount = Field(
        default=5, ge=1, le=50, description="How many ranked products to return."
    )
    category: Text | None = Field(
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
    sku: Text
    name: Text | None = None
    category: Text | None = None
    images: list[ProductImage] = Field(default_factory=list, max_length=50)
    version: StrictCount | None = Field(
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
    version: StrictCount | None = Field(
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
    confirmed_by: Text | None = Field(
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
        pattern=r"^[0-9a-f]{32}$",
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
    name: str | None = Field(default=None, description="The product's name, when the PIM gave one.")
    image: S3Object | None = Field(
        default=None, description="Where that reference image lies (to show it beside the scan)."
    )


class MatchResult(_Message):
    """The worker's answer to one scan. Routing key ``match.result``."""

    scan_id: str
    status: MatchStatus
    reason: FailureReason | None = None
    detail: str | None = Field(default=None, description="Human-readable detail of a failure.")
    matches: list[RankedProduct] = Field(default_factory=list)
    confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Probability that the first match is the right product, learned from this "
        "deployment's confirmations (`confidence_origin` 'labels' or 'labels+margin'; for "
        "scans that are their product's first as often as its confirmations were); with "
        "'prior', how often the first product was right at that margin before any "
        "confirmation, calibrated once on grocery photos with the default model: a guide "
        "where the towers or the photos differ. A "
        "`no_confident_match` can carry a high one: its first product, which has confirmed "
        "photos, was ahead only by them, a product without any being as close on catalog "
        "images (a new look-alike). Null when failed.",
    )
    confidence_origin: str | None = Field(
        default=None,
        description="'labels': `matched` at the threshold that keeps the target precision on "
        "held-out confirmations; 'labels+margin': the labels cannot promise it yet, the "
        "prior's margin decides and the labels refuse likely unknown jewels; 'prior': too "
        "few confirmations: the margin decides (raised, from the first few, until it refuses "
        "the asked share of simulated unknown jewels). Null when failed.",
    )
    image: S3Object | None = Field(default=None, description="The scan's photo, as received.")
    station_id: str | None = Field(default=None, description="The scan station, as received.")
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
