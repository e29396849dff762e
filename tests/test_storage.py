"""Fetching image bytes (`worker/pipeline/storage.py`) from moto's S3 server over HTTP and
from a local folder: only allowed buckets, never more than the byte limit, and each S3
error classified where its meaning is known (permanent: the message's fault; transient: the
store's)."""

from __future__ import annotations

import contextlib
import json

import boto3
import pytest

from shared.contract import FailureReason, S3Object
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET
from worker.errors import PermanentError, TransientError
from worker.pipeline.storage import LocalImageStore, S3ImageStore
from worker.settings import S3Settings

LIMIT = 1000


def s3_store(endpoint: str, **settings) -> S3ImageStore:
    values = {
        "endpoint_url": endpoint,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "allowed_buckets": [CATALOG_BUCKET, SCANS_BUCKET],
        "max_attempts": 1,
        **settings,
    }
    return S3ImageStore(S3Settings(**values), LIMIT)


def at(key: str, bucket: str = SCANS_BUCKET) -> S3Object:
    return S3Object(bucket=bucket, key=key)


def reason(call) -> FailureReason:
    with pytest.raises(PermanentError) as error:
        call()
    return error.value.reason


def test_objects_up_to_the_limit_are_read_with_their_etag_and_larger_ones_refused(s3, s3_endpoint):
    s3.put_object(Bucket=SCANS_BUCKET, Key="fits.jpg", Body=b"x" * LIMIT)
    s3.put_object(Bucket=SCANS_BUCKET, Key="big.jpg", Body=b"x" * (LIMIT + 1))
    store = s3_store(s3_endpoint)
    blob = store.fetch(at("fits.jpg"))
    assert blob.data == b"x" * LIMIT
    assert blob.etag == store.etag(at("fits.jpg")) and blob.etag
    assert reason(lambda: store.fetch(at("big.jpg"))) is FailureReason.image_too_large


def test_a_bucket_outside_the_list_is_never_asked(s3, s3_endpoint):
    s3.create_bucket(Bucket="payroll")
    s3.put_object(Bucket="payroll", Key="a.jpg", Body=b"secret")
    store = s3_store(s3_endpoint)
    assert reason(lambda: store.fetch(at("a.jpg", "payroll"))) is FailureReason.bucket_not_allowed
    assert reason(lambda: store.etag(at("a.jpg", "payroll"))) is FailureReason.bucket_not_allowed


def test_missing_objects_and_buckets_are_permanent_a_store_out_of_reach_transient(s3, s3_endpoint):
    store = s3_store(s3_endpoint, allowed_buckets=[SCANS_BUCKET, "no-such-bucket"])
    assert reason(lambda: store.fetch(at("none.jpg"))) is FailureReason.image_not_found
    assert reason(lambda: store.etag(at("none.jpg"))) is FailureReason.image_not_found
    assert reason(lambda: store.fetch(at("a.jpg", "no-such-bucket"))) is (
        FailureReason.image_not_found
    )
    unreachable = s3_store("http://127.0.0.1:9", connect_timeout_seconds=1)
    with pytest.raises(TransientError):
        unreachable.fetch(at("a.jpg"))


def test_a_local_store_keeps_to_its_buckets_folders(tmp_path):
    (tmp_path / SCANS_BUCKET).mkdir()
    (tmp_path / SCANS_BUCKET / "a.jpg").write_bytes(b"x" * LIMIT)
    (tmp_path / SCANS_BUCKET / "big.jpg").write_bytes(b"x" * (LIMIT + 1))
    (tmp_path / "payroll").mkdir()
    (tmp_path / "payroll" / "a.jpg").write_bytes(b"secret")
    (tmp_path / SCANS_BUCKET / "link.jpg").symlink_to(tmp_path / "payroll" / "a.jpg")
    store = LocalImageStore(tmp_path, [SCANS_BUCKET], LIMIT)
    assert store.fetch(at("a.jpg")).data == b"x" * LIMIT
    assert store.fetch(at("a.jpg")).etag == store.etag(at("a.jpg"))
    assert reason(lambda: store.fetch(at("big.jpg"))) is FailureReason.image_too_large
    assert reason(lambda: store.fetch(at("a.jpg", "payroll"))) is FailureReason.bucket_not_allowed
    # a link out of the bucket's folder is not followed there
    assert reason(lambda: store.fetch(at("link.jpg"))) is FailureReason.image_not_found
    assert reason(lambda: store.fetch(at("nothing.jpg"))) is FailureReason.image_not_found


@contextlib.contextmanager
def iam_checked(endpoint: str, after: int):
    """The moto server checking every request against its IAM users once `after` more have
    gone by (`/moto-api/reset-auth`), and trusting all again afterwards (it is shared)."""
    import requests

    requests.post(f"{endpoint}/moto-api/reset-auth", data=str(after), timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


def test_an_object_the_credentials_may_not_read_is_permanent_access_denied(s3, s3_endpoint):
    """The worker's credentials may read the catalog bucket only: a photo in the other is
    refused by the store (AccessDenied, or a bare 403 to a HEAD) and never retried; keys
    the store does not know are refused the same way."""
    for bucket in (CATALOG_BUCKET, SCANS_BUCKET):
        s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"x")
    catalog_only = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": f"arn:aws:s3:::{CATALOG_BUCKET}/*",
            }
        ],
    }
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    with iam_checked(s3_endpoint, after=3):  # the three calls that make the worker's user
        iam.create_user(UserName="worker")
        iam.put_user_policy(
            UserName="worker", PolicyName="catalog-only", PolicyDocument=json.dumps(catalog_only)
        )
        key = iam.create_access_key(UserName="worker")["AccessKey"]
        store = s3_store(
            s3_endpoint, access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"]
        )
        assert store.fetch(at("a.jpg", CATALOG_BUCKET)).data == b"x"
        assert store.etag(at("a.jpg", CATALOG_BUCKET))
        assert reason(lambda: store.fetch(at("a.jpg"))) is FailureReason.image_access_denied
        assert reason(lambda: store.etag(at("a.jpg"))) is FailureReason.image_access_denied
        stranger = s3_store(s3_endpoint)  # keys no IAM user holds
        assert reason(lambda: stranger.fetch(at("a.jpg", CATALOG_BUCKET))) is (
            FailureReason.image_access_denied
        )
