"""Parts of any size: read in pieces, streamed from the file, checked by S3 against their CRC32."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cefmp4.common.errors import FileChanged, StorageError
from cefmp4.common.parts import MIB, Part
from cefmp4.common.s3 import SentPart, Storage
from cefmp4.consumer.partio import (
    CHECKSUM_MISMATCH_CODES,
    PartBuffer,
    PartFile,
    part_crc32,
    read_part,
    send_part,
)


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """An open file of 20 MiB of random bytes, and its bytes."""
    data = os.urandom(20 * MIB + 12345)
    path = tmp_path / "rec.mp4"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    yield fd, data
    os.close(fd)


def test_a_part_read_in_pieces_or_whole_has_the_crc32_of_its_bytes(
    recording: tuple[int, bytes],
) -> None:
    fd, data = recording
    part = Part(2, 3 * MIB + 7, 17 * MIB)  # three pieces of at most 8 MiB
    expected = zlib.crc32(data[part.offset : part.offset + part.length])

    assert part_crc32(fd, part) == expected
    buffer = PartBuffer(part.length)
    assert read_part(fd, part, buffer) == expected
    assert buffer.getvalue() == data[part.offset : part.offset + part.length]


def test_a_part_past_the_end_of_the_file_is_a_file_change(recording: tuple[int, bytes]) -> None:
    fd, data = recording
    part = Part(3, len(data) - MIB, 2 * MIB)

    with pytest.raises(FileChanged):
        part_crc32(fd, part)
    with pytest.raises(FileChanged):
        read_part(fd, part, PartBuffer(part.length))


def test_a_streamed_part_reads_its_range_in_small_reads_and_rewinds(
    recording: tuple[int, bytes],
) -> None:
    fd, data = recording
    part = Part(2, 5 * MIB, 6 * MIB + 1)
    body = PartFile(fd, part)

    chunks = []
    while chunk := body.read(64 * 1024):
        chunks.append(chunk)

    assert len(body) == part.length
    assert b"".join(chunks) == data[part.offset : part.offset + part.length]
    assert body.tell() == part.length
    assert body.seek(0) == 0
    assert body.read(5) == data[part.offset : part.offset + 5]
    assert body.seek(-1, os.SEEK_END) == part.length - 1
    assert body.read() == data[part.offset + part.length - 1 : part.offset + part.length]


async def test_a_streamed_part_is_stored_as_the_file_holds_it(
    storage: Storage, recording: tuple[int, bytes]
) -> None:
    fd, data = recording
    parts = [Part(1, 0, 7 * MIB), Part(2, 7 * MIB, len(data) - 7 * MIB)]
    upload_id = await storage.create_upload("streamed.mp4", "s1")

    sent = []
    for part in parts:
        crc = part_crc32(fd, part)
        etag = await send_part(storage, "streamed.mp4", upload_id, part, PartFile(fd, part), crc)
        sent.append(SentPart(part.number, etag, crc))
    await storage.complete("streamed.mp4", upload_id, sent)

    assert await storage.read_object("streamed.mp4") == data


async def test_a_part_changed_between_its_crc_and_its_send_is_a_file_change(
    storage: Storage, recording: tuple[int, bytes]
) -> None:
    fd, data = recording
    part = Part(1, 0, len(data))
    upload_id = await storage.create_upload("changed.mp4", "s1")
    crc = part_crc32(fd, part)
    os.pwrite(fd, b"rewritten", 10 * MIB)  # after the CRC pass, before the send

    with pytest.raises(FileChanged) as changed:
        await send_part(storage, "changed.mp4", upload_id, part, PartFile(fd, part), crc)

    refusal = changed.value.__cause__
    assert isinstance(refusal, StorageError) and refusal.code in CHECKSUM_MISMATCH_CODES
    # The next pass reads the part again and sends what the file holds now.
    crc = part_crc32(fd, part)
    etag = await send_part(storage, "changed.mp4", upload_id, part, PartFile(fd, part), crc)
    await storage.complete("changed.mp4", upload_id, [SentPart(1, etag, crc)])
    now = data[: 10 * MIB] + b"rewritten" + data[10 * MIB + 9 :]
    assert await storage.read_object("changed.mp4") == now


async def test_a_file_shrinking_under_a_streamed_part_fails_the_send_at_once(
    storage: Storage, recording: tuple[int, bytes]
) -> None:
    fd, data = recording
    part = Part(1, 0, len(data))
    upload_id = await storage.create_upload("shrunk.mp4", "s1")
    crc = part_crc32(fd, part)
    os.ftruncate(fd, 8 * MIB)

    with pytest.raises(FileChanged):
        await send_part(storage, "shrunk.mp4", upload_id, part, PartFile(fd, part), crc)
    await storage.abort("shrunk.mp4", upload_id)
