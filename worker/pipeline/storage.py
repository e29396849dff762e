"""Fetching image bytes: from S3-compatible storage through boto3, or from a local folder.

Only configured buckets are ever fetched, and never more than the byte limit is read.
Errors are classified here, where their meaning is known: a missing object is permanent,
an unreachable store is transient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import boto3
import botocore.exceptions
from botocore.config import Config

from shared.contract import FailureReason, S3Object
from worker.errors import PermanentError, TransientError
from worker.settings import S3Settings

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
}


@dataclass(frozen=True)
class Blob:
    """An object's bytes and the version tag they had (S3's ETag), if the store has one."""

    data: bytes
    etag: str | None = None


class ImageStore(Protocol):
    def fetch(self, ref: S3Object) -> Blob:
        """Return the object's bytes; raise PermanentError or TransientError."""
        ...

    def etag(self, ref: S3Object) -> str | None:
        """The object's current version tag, without its bytes (None: the store has none)."""
        ...


def object_at(uri: str | None) -> S3Object:
    """The S3 object at a stored `s3://bucket/key` URI; PermanentError (`image_not_found`)
    where there is none, or one that is no such URI (a backup's line, say)."""
    try:
        return S3Object.model_validate(uri)
    except ValueError:
        raise PermanentError(FailureReason.image_not_found, f"no S3 location: {uri!r}") from None


def check_bucket_allowed(ref: S3Object, allowed: list[str]) -> None:
    if ref.bucket not in allowed:
        raise PermanentError(
            FailureReason.bucket_not_allowed,
            f"bucket {ref.bucket!r} is not one of the configured buckets",
        )


def _too_large(ref: S3Object, size: int, limit: int) -> PermanentError:
    return PermanentError(
        FailureReason.image_too_large,
        f"{ref.uri} is {size} bytes, the limit is {limit}",
    )


def s3_client(settings: S3Settings):
    """A boto3 S3 client with the settings' endpoint, credentials, short timeouts and boto's
    own standard retry mode."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=(
            settings.access_key_id.get_secret_value() if settings.access_key_id else None
        ),
        aws_secret_access_key=(
            settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
        ),
        config=Config(
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            max_pool_connections=max(10, settings.fetch_threads),
        ),
    )


class S3ImageStore:
    """boto3 client with short timeouts and boto's own standard retry mode."""

    def __init__(self, settings: S3Settings, max_bytes: int) -> None:
        self._allowed = list(settings.allowed_buckets)
        self._max_bytes = max_bytes
        self._client = s3_client(settings)

    def fetch(self, ref: S3Object) -> Blob:
        check_bucket_allowed(ref, self._allowed)
        with self._classified_errors(ref):
            response = self._client.get_object(Bucket=ref.bucket, Key=ref.key)
            size = response.get("ContentLength") or 0
            if size > self._max_bytes:
                response["Body"].close()
                raise _too_large(ref, size, self._max_bytes)
            data = response["Body"].read(self._max_bytes + 1)
            response["Body"].close()
        if len(data) > self._max_bytes:
            raise _too_large(ref, len(data), self._max_bytes)
        return Blob(data, response.get("ETag"))

    def etag(self, ref: S3Object) -> str | None:
        check_bucket_allowed(ref, self._allowed)
        with self._classified_errors(ref):
            return self._client.head_object(Bucket=ref.bucket, Key=ref.key).get("ETag")

    @contextmanager
    def _classified_errors(self, ref: S3Object) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise PermanentError(
                    FailureReason.image_not_found, f"{ref.uri} does not exist"
                ) from None
            if code in _DENIED:
                raise PermanentError(
                    FailureReason.image_access_denied, f"access to {ref.uri} denied ({code})"
                ) from None
            raise TransientError(f"S3 error fetching {ref.uri}: {code or error}") from None
        except botocore.exceptions.NoCredentialsError:
            # configuration, not the message: retried until an operator sets credentials
            raise TransientError(f"no S3 credentials configured to fetch {ref.uri}") from None
        except (botocore.exceptions.BotoCoreError, OSError) as error:
            # Connection refused, timeouts, truncated reads: the store may come back.
            raise TransientError(f"S3 unreachable fetching {ref.uri}: {error}") from None


class LocalImageStore:
    """Buckets are sub-folders of a root folder (demo and terminal use, no S3 needed)."""

    def __init__(self, root: Path, allowed_buckets: list[str], max_bytes: int) -> None:
        self._root = root.resolve()
        self._allowed = list(allowed_buckets)
        self._max_bytes = max_bytes

    def _path(self, ref: S3Object) -> Path:
        check_bucket_allowed(ref, self._allowed)
        bucket_dir = (self._root / ref.bucket).resolve()
        path = (bucket_dir / ref.key).resolve()
        if not path.is_relative_to(bucket_dir) or not path.is_file():
            raise PermanentError(FailureReason.image_not_found, f"{ref.uri} does not exist")
        return path

    def fetch(self, ref: S3Object) -> Blob:
        path = self._path(ref)
        size = path.stat().st_size
        if size > self._max_bytes:
            raise _too_large(ref, size, self._max_bytes)
        data = path.read_bytes()
        return Blob(data, _local_etag(path))

    def etag(self, ref: S3Object) -> str | None:
        return _local_etag(self._path(ref))


def _local_etag(path: Path) -> str:
    """A folder's stand-in for an ETag: changes when the file is rewritten."""
    stat = path.stat()
    return hashlib.sha1(
        f"{stat.st_size}:{stat.st_mtime_ns}".encode(), usedforsecurity=False
    ).hexdigest()


def open_image_store(settings: S3Settings, max_bytes: int) -> ImageStore:
    if settings.backend == "local":
        return LocalImageStore(settings.local_root, settings.allowed_buckets, max_bytes)
    return S3ImageStore(settings, max_bytes)
