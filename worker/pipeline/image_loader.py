"""Fetching and decoding the images of a batch, concurrently, each to a picture or its error.

Shared by the scan and the catalog handler: the only thing the two have in common. Fetching
waits on the network, so many fetches run at once (`s3.fetch_threads`); decoding is CPU
work, so it runs on a pool as wide as the CPUs the process may use. That also keeps large
decode buffers to a few threads: glibc gives every thread its own arena and keeps freed
memory there, so decoding on 40 threads would grow the process by far more than the decode
budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from shared.contract import S3Object
from worker.pipeline.outcome import Timer, timed
from worker.pipeline.storage import ImageStore
from worker.settings import ImageSettings, container_cpu_limit
from worker.vision.images import decode_image


@dataclass(frozen=True)
class LoadedImage:
    picture: Image.Image
    timer: Timer
    etag: str | None


class ImageLoader:
    def __init__(self, images: ImageSettings, fetch_threads: int, store: ImageStore) -> None:
        self.images = images
        self.store = store
        self._pool = ThreadPoolExecutor(fetch_threads, thread_name_prefix="fetch")
        self._decoders = ThreadPoolExecutor(container_cpu_limit(), thread_name_prefix="decode")

    def load(self, ref: S3Object) -> LoadedImage:
        timer = Timer()
        blob = timed(timer, "fetch", self.store.fetch, ref)
        picture = timed(timer, "decode", self._decode, blob.data)
        return LoadedImage(picture, timer, blob.etag)

    def read_picture(self, uri: str) -> Image.Image:
        """The decoded picture of the object at `uri` (`s3://bucket/key`)."""
        return self.load(S3Object.model_validate(uri)).picture

    def _decode(self, data: bytes):
        return self._decoders.submit(decode_image, data, self.images).result()

    def load_all(self, refs: Sequence[S3Object]) -> list[LoadedImage | Exception]:
        """Each entry is a picture with its timings, or the error (classified by the caller)."""

        def attempt(ref: S3Object):
            try:
                return self.load(ref)
            except Exception as error:
                return error

        return list(self._pool.map(attempt, refs))

    def etags(self, refs: Sequence[S3Object]) -> list[str | Exception | None]:
        """The current version tag of each object (None where the store has none)."""

        def attempt(ref: S3Object):
            try:
                return self.store.etag(ref)
            except Exception as error:
                return error

        return list(self._pool.map(attempt, refs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._decoders.shutdown(wait=True)
