"""Receipts: a confirmation names a scan's photo on another replica's word only with the
receipt that the answering worker signed with the shared key."""

from __future__ import annotations

import hashlib

from pydantic import SecretStr

from shared.contract import MatchConfirmed
from worker.pipeline.receipts import Receipts

KEY = Receipts(SecretStr("a-receipt-key-shared-by-the-workers-only"))
PHOTO = "s3://scan-photos/2026/s1.jpg"


def confirmation(scan_id: str, uri: str, receipt: str | None) -> MatchConfirmed:
    return MatchConfirmed(scan_id=scan_id, product_id="p1", image=uri, receipt=receipt)


def test_a_receipt_signed_with_the_shared_key_proves_its_scan_and_photo():
    receipt = KEY.sign("s1", PHOTO)
    assert len(receipt) == 32
    assert KEY.proven_image(confirmation("s1", PHOTO, receipt)).uri == PHOTO


def test_a_receipt_proves_nothing_else():
    receipt = KEY.sign("s1", PHOTO)
    assert KEY.proven_image(confirmation("s2", PHOTO, receipt)) is None  # another scan
    assert KEY.proven_image(confirmation("s1", "s3://scan-photos/x.jpg", receipt)) is None
    altered = receipt[:-1] + ("0" if receipt[-1] != "0" else "1")
    assert KEY.proven_image(confirmation("s1", PHOTO, altered)) is None
    assert KEY.proven_image(confirmation("s1", PHOTO, None)) is None
    other_key = Receipts(SecretStr("another-deployments-receipt-key-of-its-own"))
    assert other_key.proven_image(confirmation("s1", PHOTO, receipt)) is None


def test_a_receipt_cannot_be_made_without_the_key():
    for message in (f"s1\x1f{PHOTO}", f"s1{PHOTO}"):
        guessed = hashlib.sha256(message.encode()).hexdigest()[:32]
        assert KEY.proven_image(confirmation("s1", PHOTO, guessed)) is None


def test_scan_and_photo_do_not_run_into_each_other():
    # "s" + "s3://bb1/s3://bb2/k" and "ss3://bb1/" + "s3://bb2/k" are the same characters
    receipt = KEY.sign("s", "s3://bb1/s3://bb2/k")
    assert KEY.proven_image(confirmation("ss3://bb1/", "s3://bb2/k", receipt)) is None


def test_without_a_key_nothing_is_signed_and_nothing_proven():
    keyless = Receipts(None)
    assert keyless.sign("s1", PHOTO) is None
    assert keyless.proven_image(confirmation("s1", PHOTO, KEY.sign("s1", PHOTO))) is None
