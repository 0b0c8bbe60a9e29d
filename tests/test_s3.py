"""S3 access against the real server: the checks cefmp4 relies on for integrity."""

from __future__ import annotations

import zlib

import pytest

from cefmp4.common.checksums import s3_composite_crc32
from cefmp4.common.config import Settings
from cefmp4.common.errors import StorageError
from cefmp4.common.s3 import SentPart, Storage, crc32_b64
from cefmp4.common.streamstate import PartRecord
from tests.conftest import Services
from tests.s3edge import s3_edge


async def test_a_part_whose_bytes_do_not_match_its_crc32_is_refused(storage: Storage) -> None:
    # Payload signing is off, so this CRC32 is what guards each part on the way.
    upload_id = await storage.create_upload("damaged.mp4", "s1")
    body = b"recording bytes"

    with pytest.raises(StorageError) as refused:
        await storage.upload_part("damaged.mp4", upload_id, 1, body, zlib.crc32(body) ^ 1)

    assert not refused.value.retryable
    await storage.abort("damaged.mp4", upload_id)


async def test_a_part_sent_again_replaces_the_first(storage: Storage) -> None:
    upload_id = await storage.create_upload("again.mp4", "s2")
    await storage.upload_part("again.mp4", upload_id, 1, b"old", zlib.crc32(b"old"))
    etag = await storage.upload_part("again.mp4", upload_id, 1, b"new", zlib.crc32(b"new"))

    await storage.complete("again.mp4", upload_id, [SentPart(1, etag, zlib.crc32(b"new"))])

    assert await storage.read_object("again.mp4") == b"new"
    assert await storage.open_uploads() == []


async def test_the_object_says_which_stream_made_it_and_its_composite_crc32(
    storage: Storage,
) -> None:
    first, second = b"a" * (5 * 1024 * 1024), b"tail"
    upload_id = await storage.create_upload("made.mp4", "stream-7")
    parts = []
    for number, body in enumerate((first, second), start=1):
        etag = await storage.upload_part("made.mp4", upload_id, number, body, zlib.crc32(body))
        parts.append(SentPart(number, etag, zlib.crc32(body)))
    await storage.complete("made.mp4", upload_id, parts)

    facts = await storage.object_facts("made.mp4")

    records = [
        PartRecord(0, len(first), zlib.crc32(first), ""),
        PartRecord(0, 4, zlib.crc32(second), ""),
    ]
    assert facts is not None
    assert (facts.stream_id, facts.size) == ("stream-7", len(first) + 4)
    assert facts.crc32 == s3_composite_crc32(records)
    assert await storage.object_facts("never.mp4") is None


async def test_the_edge_passes_everything_through_and_refuses_what_it_is_told(
    settings: Settings, services: Services
) -> None:
    async with s3_edge(services.s3_endpoint_url) as edge:
        through = settings.model_copy(update={"s3_endpoint_url": edge.url})
        async with Storage(through) as storage:
            upload_id = await storage.create_upload("edge.mp4", "s9")
            etag = await storage.upload_part("edge.mp4", upload_id, 1, b"abc", zlib.crc32(b"abc"))
            edge.refuse("CompleteMultipartUpload", "InvalidPart", 400, times=1)
            with pytest.raises(StorageError) as refused:
                await storage.complete(
                    "edge.mp4", upload_id, [SentPart(1, etag, zlib.crc32(b"abc"))]
                )
            await storage.complete("edge.mp4", upload_id, [SentPart(1, etag, zlib.crc32(b"abc"))])
            facts = await storage.object_facts("edge.mp4")

    assert refused.value.code == "InvalidPart"
    assert facts is not None and (facts.size, facts.stream_id) == (3, "s9")
    assert edge.count("CompleteMultipartUpload") == 2


async def test_a_part_copied_from_the_object_it_overwrites_holds_that_range(
    storage: Storage,
) -> None:
    part = 5 * 1024 * 1024
    old = bytes(range(256)) * (part // 256) + b"old tail"
    first = await storage.create_upload("grown.mp4", "s1")
    sent = []
    for number, body in ((1, old[:part]), (2, old[part:])):
        etag = await storage.upload_part("grown.mp4", first, number, body, zlib.crc32(body))
        sent.append(SentPart(number, etag, zlib.crc32(body)))
    await storage.complete("grown.mp4", first, sent)
    facts = await storage.object_facts("grown.mp4")
    assert facts is not None
    new = old[:part] + b"a longer tail than before"
    second = await storage.create_upload("grown.mp4", "s2")

    copied = await storage.copy_part("grown.mp4", second, 1, "grown.mp4", facts.etag, 0, part)
    tail = await storage.upload_part("grown.mp4", second, 2, new[part:], zlib.crc32(new[part:]))
    await storage.complete(
        "grown.mp4",
        second,
        [
            SentPart(1, copied.etag, zlib.crc32(new[:part])),
            SentPart(2, tail, zlib.crc32(new[part:])),
        ],
    )

    assert copied.crc32 in ("", crc32_b64(zlib.crc32(new[:part])))
    assert await storage.read_object("grown.mp4") == new


async def test_a_copy_from_an_object_that_changed_since_it_was_looked_at_is_refused(
    storage: Storage,
) -> None:
    await storage.put_object("moved.mp4", b"x" * 1024)
    facts = await storage.object_facts("moved.mp4")
    assert facts is not None
    await storage.put_object("moved.mp4", b"y" * 1024)
    upload_id = await storage.create_upload("moved.mp4", "s3")

    with pytest.raises(StorageError) as refused:
        await storage.copy_part("moved.mp4", upload_id, 1, "moved.mp4", facts.etag, 0, 1024)

    assert refused.value.code == "PreconditionFailed"
    await storage.abort("moved.mp4", upload_id)
