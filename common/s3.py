"""S3 access: the multipart calls cefmp4 makes, with botocore errors mapped to StorageError."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, BinaryIO, NamedTuple, TypeVar

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
)

from common import metrics
from common.config import Settings
from common.errors import StorageError

T = TypeVar("T")

_RETRYABLE_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "503",
    "500",
}


class SentPart(NamedTuple):
    number: int
    etag: str
    crc32: int


class OpenUpload(NamedTuple):
    key: str
    upload_id: str
    initiated: datetime


def crc32_b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


async def _call(what: str, awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retryable = code in _RETRYABLE_CODES or status >= 500 or status == 429
        metrics.count_s3_error(code or (str(status) if status else ""), exc)
        raise StorageError(
            f"{what}: {code or status} {error.get('Message', '')}".strip(),
            code=code,
            retryable=retryable,
        ) from exc
    except (BotoCoreError, OSError) as exc:
        metrics.count_s3_error("", exc)
        # Connection trouble may pass; a request botocore refuses to build never will.
        retryable = not isinstance(exc, ParamValidationError | NoCredentialsError)
        raise StorageError(f"{what}: {type(exc).__name__}", retryable=retryable) from exc


class Storage:
    """One bucket on one S3 endpoint; an async context manager holding the client."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket_name
        self._settings = settings
        self._client: Any = None
        self._bucket_checked = False

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Any]:
        s = self._settings
        session = aioboto3.Session()
        config = Config(
            region_name=s.s3_region_name,
            connect_timeout=5,
            read_timeout=120,
            # Retries are ours (common/retry.py): a retried part is read from the file
            # again, while botocore would rewind a body that aiohttp has closed.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(10, s.upload_concurrency * 2),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Every part carries its CRC32, which S3 checks, so hashing each body again
            # with SHA-256 for the signature (botocore does it over plain http) is waste.
            s3={"payload_signing_enabled": False},
        )
        async with session.client(
            "s3",
            endpoint_url=s.s3_endpoint_url,
            aws_access_key_id=s.s3_access_key_id.get_secret_value() if s.s3_access_key_id else None,
            aws_secret_access_key=(
                s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
            ),
            config=config,
        ) as client:
            yield client

    async def __aenter__(self) -> Storage:
        self._cm = self._open()
        self._client = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            await _call("head bucket", self._client.head_bucket(Bucket=self.bucket))
        except StorageError as exc:
            if exc.code not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            try:
                await _call("create bucket", self._client.create_bucket(Bucket=self.bucket))
            except StorageError as create_exc:
                if create_exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
        self._bucket_checked = True

    async def create_upload(self, key: str) -> str:
        await self.ensure_bucket()
        response = await _call(
            f"create upload {key}",
            self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32"
            ),
        )
        return str(response["UploadId"])

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | BinaryIO, crc32: int
    ) -> str:
        response = await _call(
            f"upload part {number} of {key}",
            self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm="CRC32",
                ChecksumCRC32=crc32_b64(crc32),
            ),
        )
        return str(response["ETag"])

    async def complete(self, key: str, upload_id: str, parts: list[SentPart]) -> str:
        response = await _call(
            f"complete {key}",
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [
                        {
                            "PartNumber": p.number,
                            "ETag": p.etag,
                            "ChecksumCRC32": crc32_b64(p.crc32),
                        }
                        for p in parts
                    ]
                },
            ),
        )
        return str(response.get("ETag", ""))

    async def abort(self, key: str, upload_id: str) -> None:
        try:
            await _call(
                f"abort {key}",
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
            )
        except StorageError as exc:
            if exc.code not in {"NoSuchUpload", "404"}:
                raise

    async def object_size(self, key: str) -> int | None:
        try:
            response = await _call(
                f"head {key}", self._client.head_object(Bucket=self.bucket, Key=key)
            )
        except StorageError as exc:
            if exc.code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(response["ContentLength"])

    async def open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        """Every multipart upload still open under `prefix`."""
        found: list[OpenUpload] = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(
                    OpenUpload(u["Key"], u["UploadId"], u["Initiated"])
                    for u in page.get("Uploads", [])
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return []
            raise StorageError(f"list uploads: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"list uploads: {type(exc).__name__}", retryable=True) from exc
        return found

    async def put_object(self, key: str, body: bytes, content_type: str) -> str:
        """Write a small object in one request; returns its ETag."""
        await self.ensure_bucket()
        response = await _call(
            f"put {key}",
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
            ),
        )
        return str(response.get("ETag", ""))

    async def read_object(self, key: str) -> bytes:
        response = await _call(f"get {key}", self._client.get_object(Bucket=self.bucket, Key=key))
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data
