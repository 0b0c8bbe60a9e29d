"""S3 access against the real server: the checks cefmp4 relies on for integrity."""

from __future__ import annotations

import zlib

import pytest

from common.errors import StorageError
from common.s3 import SentPart, Storage


async def test_a_part_whose_bytes_do_not_match_its_crc32_is_refused(storage: Storage) -> None:
    # Payload signing is off, so this CRC32 is what guards each part on the way.
    upload_id = await storage.create_upload("damaged.mp4")
    body = b"recording bytes"

    with pytest.raises(StorageError) as refused:
        await storage.upload_part("damaged.mp4", upload_id, 1, body, zlib.crc32(body) ^ 1)

    assert not refused.value.retryable
    await storage.abort("damaged.mp4", upload_id)


async def test_a_part_sent_again_replaces_the_first(storage: Storage) -> None:
    upload_id = await storage.create_upload("again.mp4")
    await storage.upload_part("again.mp4", upload_id, 1, b"old", zlib.crc32(b"old"))
    etag = await storage.upload_part("again.mp4", upload_id, 1, b"new", zlib.crc32(b"new"))

    await storage.complete("again.mp4", upload_id, [SentPart(1, etag, zlib.crc32(b"new"))])

    assert await storage.read_object("again.mp4") == b"new"
    assert await storage.open_uploads() == []
