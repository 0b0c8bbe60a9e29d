"""S3 access: the multipart calls cefmp4 makes, with botocore errors mapped to StorageError."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, BinaryIO, NamedTuple, TypeVar
from urllib.parse import urlencode

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
)

from cefmp4.common import metrics
from cefmp4.common.config import Settings
from cefmp4.common.content_types import content_type_for
from cefmp4.common.errors import ConfigError, StorageError
from cefmp4.common.ratelimit import SentBody

T = TypeVar("T")
logger = logging.getLogger(__name__)

# S3 user metadata (x-amz-meta-...) of every object cefmp4 uploads.
STREAM_ID_METADATA = "cefmp4-stream-id"

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


# What a key that may not do something is told (HEAD answers have no code, only 403).
_FORBIDDEN = frozenset({"AccessDenied", "403"})


class SentPart(NamedTuple):
    number: int
    etag: str
    crc32: int


class CopiedPart(NamedTuple):
    etag: str
    crc32: str  # the part's checksum as S3 reports it (base64); "" if it reports none


class ObjectFacts(NamedTuple):
    size: int
    etag: str
    stream_id: str  # the stream whose upload made the object; "" if not one of cefmp4's
    crc32: str  # the checksum S3 reports (multipart: composite, "<base64>-<parts>"); "" if none
    last_modified: datetime | None = None


class OpenUpload(NamedTuple):
    key: str
    upload_id: str
    initiated: datetime


def crc32_b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _storage_error(what: str, exc: Exception) -> StorageError:
    """The StorageError for a failed S3 call (counted), telling whether a retry can help."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retryable = code in _RETRYABLE_CODES or status >= 500 or status == 429
        metrics.count_s3_error(code or (str(status) if status else ""), exc)
        message = f"{what}: {code or status} {error.get('Message', '')}".strip()
        return StorageError(message, code=code or str(status), retryable=retryable)
    metrics.count_s3_error("", exc)
    # Connection trouble may pass; a request botocore refuses to build never will.
    retryable = not isinstance(exc, ParamValidationError | NoCredentialsError)
    return StorageError(f"{what}: {type(exc).__name__}", retryable=retryable)


def object_options(settings: Settings, key: str) -> dict[str, str]:
    """What every object cefmp4 writes is created with: its type, class, encryption, tags."""
    options = {"ContentType": content_type_for(key)}
    if settings.s3_storage_class:
        options["StorageClass"] = settings.s3_storage_class
    if settings.s3_sse:
        options["ServerSideEncryption"] = settings.s3_sse
    if settings.s3_sse_kms_key_id:
        options["SSEKMSKeyId"] = settings.s3_sse_kms_key_id.get_secret_value()
    if settings.s3_object_tags:
        options["Tagging"] = urlencode(settings.s3_object_tags)
    return options


async def _call(what: str, awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except (ClientError, BotoCoreError, OSError) as exc:
        raise _storage_error(what, exc) from exc


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
            s3={
                "payload_signing_enabled": False,
                "addressing_style": s.s3_addressing_style,
            },
        )
        async with session.client(
            "s3",
            endpoint_url=s.s3_endpoint_url,
            aws_access_key_id=s.s3_access_key_id.get_secret_value() if s.s3_access_key_id else None,
            aws_secret_access_key=(
                s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
            ),
            config=config,
            verify=str(s.s3_ca_bundle) if s.s3_ca_bundle else None,
        ) as client:
            yield client

    async def __aenter__(self) -> Storage:
        self._cm = self._open()
        try:
            self._client = await self._cm.__aenter__()
        except ValueError as exc:  # botocore refusing the endpoint or the region
            raise ConfigError(f"invalid setting S3_ENDPOINT_URL or S3_REGION_NAME: {exc}") from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing.

        Credentials limited to uploading (no s3:ListBucket, no s3:CreateBucket) are fine:
        the bucket is then taken to exist, and the first upload says if it does not.
        """
        if self._bucket_checked:
            return
        try:
            await _call("head bucket", self._client.head_bucket(Bucket=self.bucket))
        except StorageError as exc:
            if exc.code in _FORBIDDEN:
                logger.info("may not look at bucket %s (%s); taking it to exist", self.bucket, exc)
            elif exc.code not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            else:
                await self._create_bucket()
        self._bucket_checked = True

    async def _create_bucket(self) -> None:
        try:
            await _call("create bucket", self._client.create_bucket(Bucket=self.bucket))
        except StorageError as exc:
            if exc.code in _FORBIDDEN:
                logger.warning("may not create bucket %s (%s): create it", self.bucket, exc)
            elif exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    async def check_credentials(self) -> None:
        """ConfigError if S3 refuses the credentials themselves.

        A missing permission (keys that may only upload) or a missing bucket is fine here;
        an outage raises a retryable StorageError.
        """
        try:
            await _call(
                "check credentials", self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            )
        except StorageError as exc:
            if exc.code in {"InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                raise ConfigError(
                    f"S3 refuses the credentials S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY "
                    f"({exc.code})"
                ) from None
            if exc.retryable:
                raise

    async def create_upload(self, key: str, stream_id: str) -> str:
        """Start a multipart upload whose object will say which stream made it."""
        await self.ensure_bucket()
        response = await _call(
            f"create upload {key}",
            self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ChecksumAlgorithm="CRC32",
                Metadata={STREAM_ID_METADATA: stream_id},
                **object_options(self._settings, key),
            ),
        )
        return str(response["UploadId"])

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | BinaryIO | io.RawIOBase | SentBody,
        crc32: int,
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

    async def copy_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        source_key: str,
        source_etag: str,
        offset: int,
        length: int,
    ) -> CopiedPart:
        """Make part `number` of bytes [offset, offset + length) of the object `source_key`,
        on the server; refused (PreconditionFailed) unless that object's ETag is still
        `source_etag`."""
        response = await _call(
            f"copy part {number} of {key}",
            self._client.upload_part_copy(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source_key},
                CopySourceRange=f"bytes={offset}-{offset + length - 1}",
                CopySourceIfMatch=source_etag,
            ),
        )
        result = response.get("CopyPartResult", {})
        etag = str(result["ETag"])
        # Quoted, as UploadPart's ETags are (some servers, `weed` among them, leave it bare).
        etag = etag if etag.startswith('"') else f'"{etag}"'
        return CopiedPart(etag, str(result.get("ChecksumCRC32", "")))

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

    async def object_facts(self, key: str) -> ObjectFacts | None:
        """What HeadObject says of the object; None when there is none."""
        try:
            response = await _call(
                f"head {key}",
                self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"),
            )
        except StorageError as exc:
            if exc.code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return ObjectFacts(
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")),
            stream_id=str(response.get("Metadata", {}).get(STREAM_ID_METADATA, "")),
            crc32=str(response.get("ChecksumCRC32", "")),
            last_modified=response.get("LastModified"),
        )

    async def object_tags(self, key: str) -> dict[str, str]:
        """The object's tags (GetObjectTagging); StorageError when there is no object."""
        response = await _call(
            f"get tags of {key}", self._client.get_object_tagging(Bucket=self.bucket, Key=key)
        )
        return {str(t["Key"]): str(t["Value"]) for t in response.get("TagSet", [])}

    async def put_object_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the object's tags with `tags` (PutObjectTagging)."""
        tag_set = [{"Key": name, "Value": value} for name, value in tags.items()]
        await _call(
            f"put tags on {key}",
            self._client.put_object_tagging(
                Bucket=self.bucket, Key=key, Tagging={"TagSet": tag_set}
            ),
        )

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
        except (ClientError, BotoCoreError, OSError) as exc:
            error = _storage_error("list uploads", exc)
            if error.code == "NoSuchBucket":
                return []
            raise error from exc
        return found

    async def put_object(self, key: str, body: bytes) -> str:
        """Write a small object in one request, typed by its key; returns its ETag."""
        await self.ensure_bucket()
        options = object_options(self._settings, key)
        response = await _call(
            f"put {key}",
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, **options),
        )
        return str(response.get("ETag", ""))

    async def read_object(self, key: str) -> bytes:
        response = await _call(f"get {key}", self._client.get_object(Bucket=self.bucket, Key=key))
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data
