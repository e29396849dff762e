"""jewelmatch's message contract: pydantic models and AMQP names, importable without torch."""

from shared.contract import (
    SCHEMA_VERSION,
    BagPhotographed,
    CatalogOutcome,
    CatalogOutcomeStatus,
    FailureReason,
    ImageProblem,
    MatchConfirmed,
    MatchResult,
    MatchStatus,
    ProductDeleted,
    ProductImage,
    ProductUpserted,
    RankedProduct,
    S3Object,
)
from shared.messages import EVENT_MODELS, RESULT_MODELS, parse_event

__all__ = [
    "EVENT_MODELS",
    "RESULT_MODELS",
    "SCHEMA_VERSION",
    "BagPhotographed",
    "CatalogOutcome",
    "CatalogOutcomeStatus",
    "FailureReason",
    "ImageProblem",
    "MatchConfirmed",
    "MatchResult",
    "MatchStatus",
    "ProductDeleted",
    "ProductImage",
    "ProductUpserted",
    "RankedProduct",
    "S3Object",
    "parse_event",
]
