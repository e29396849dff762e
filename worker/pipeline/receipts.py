"""Receipts: a worker's signed proof that it answered a scan with a given photo. Workers that
share the key (`JEWELMATCH_MATCHING__RECEIPT_KEY`) check each other's, so a confirmation of a
scan that another replica answered is honoured without trusting its sender's word."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from shared.contract import MatchConfirmed, S3Object


class Receipts:
    def __init__(self, key: SecretStr | None) -> None:
        self._key = key.get_secret_value().encode() if key else None

    def sign(self, scan_id: str, image_uri: str) -> str | None:
        """Proof that this system answered `scan_id` with the photo at `image_uri`
        (HMAC-SHA256, hex, 32 characters); None without a key."""
        if self._key is None:
            return None
        message = f"{scan_id}\x1f{image_uri}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def proven_image(self, event: MatchConfirmed) -> S3Object | None:
        """The photo of a scan another replica answered, if the confirmation proves it with
        the receipt that the answering worker signed with the shared key."""
        if event.image is None or event.receipt is None:
            return None
        expected = self.sign(event.scan_id, event.image.uri)
        if expected is None:
            return None
        return event.image if hmac.compare_digest(expected, event.receipt) else None
