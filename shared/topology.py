"""Exchange, queue and routing-key names of the message contract.

The worker declares all of these itself on start (idempotently); `deploy/rabbitmq/`
holds the same topology as RabbitMQ definitions for operators who pre-declare it.
"""

from __future__ import annotations

from typing import Final

EVENTS_EXCHANGE: Final = "jewelmatch.events"
"""Topic exchange that scan stations, the PIM and the inventory system publish events to."""

RESULTS_EXCHANGE: Final = "jewelmatch.results"
"""Topic exchange the worker publishes its answers to."""

DEAD_LETTER_EXCHANGE: Final = "jewelmatch.dead-letter"
"""Topic exchange for messages that could not be handled (kept for operators)."""

# Routing keys of events (consumed).
BAG_PHOTOGRAPHED: Final = "bag.photographed"
PRODUCT_CREATED: Final = "product.created"
PRODUCT_UPDATED: Final = "product.updated"
PRODUCT_DELETED: Final = "product.deleted"
MATCH_CONFIRMED: Final = "match.confirmed"

# Routing keys of results (published).
MATCH_RESULT: Final = "match.result"
CATALOG_OUTCOME: Final = "catalog.outcome"

# Queues.
SCANS_QUEUE: Final = "jewelmatch.scans"
"""Bag photographed events. Served before the catalog queue."""

CATALOG_QUEUE: Final = "jewelmatch.catalog"
"""Product events and match confirmations: bulk work that must never delay a scan."""

RESULTS_QUEUE: Final = "jewelmatch.match-results"
"""Match results, read by the inventory system."""

CATALOG_OUTCOMES_QUEUE: Final = "jewelmatch.catalog-outcomes"
"""Catalog outcomes, read by the PIM (bounded: the oldest are dropped when nobody reads)."""

DEAD_LETTER_QUEUE: Final = "jewelmatch.dead-letters"
"""Everything that was dead-lettered, with the error in its headers, for operators."""

REVIEW_RESULTS_QUEUE: Final = "jewelmatch.review.match-results"
"""The review desk's own copy of the match results (bounded: the oldest are dropped)."""

REVIEW_OUTCOMES_QUEUE: Final = "jewelmatch.review.catalog-outcomes"
"""The review desk's own copy of the catalog outcomes (bounded)."""

SCAN_ROUTING_KEYS: Final = (BAG_PHOTOGRAPHED,)
CATALOG_ROUTING_KEYS: Final = (PRODUCT_CREATED, PRODUCT_UPDATED, PRODUCT_DELETED, MATCH_CONFIRMED)

# Headers the worker sets on dead-lettered and retried messages.
HEADER_ERROR: Final = "x-jewelmatch-error"
HEADER_EXCEPTION: Final = "x-jewelmatch-exception"
HEADER_ATTEMPT: Final = "x-jewelmatch-attempt"
HEADER_ORIGINAL_QUEUE: Final = "x-jewelmatch-original-queue"
HEADER_ORIGINAL_ROUTING_KEY: Final = "x-jewelmatch-original-routing-key"
HEADER_FAILED_AT: Final = "x-jewelmatch-failed-at"
"""When the worker sent the message on (epoch seconds): the dead letter's time."""


def catalog_queue_name(replica_id: str | None = None) -> str:
    """The catalog queue a worker consumes.

    Workers sharing one index (a Qdrant server) share `jewelmatch.catalog`. Workers that each
    keep their own embedded index are replicas: each consumes every catalog event from its
    own queue `jewelmatch.catalog.<replica_id>`, so that every copy of the index is complete.
    """
    return f"{CATALOG_QUEUE}.{replica_id}" if replica_id else CATALOG_QUEUE


def retry_queue_name(queue: str, delay_seconds: int) -> str:
    """Name of the delay queue that holds messages of `queue` for `delay_seconds`.

    A message to retry is published to it through the default exchange; when its time is up
    the broker dead-letters it back to `queue` (through the default exchange too).
    """
    return f"{queue}.retry.{delay_seconds}s"
