"""Parts of any allowed size are sent whole, in memory that does not grow with the part."""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from ops.bench.procstats import peak_rss_bytes
from tests.conftest import Processes, eventually
from tests.test_pipeline import MIB, assert_nothing_open, stream_of

GIB = 1024 * MIB
PIECE = 8 * MIB


def sparse_recording(path: Path, size: int, part_bytes: int) -> None:
    """A file of `size` bytes, mostly holes, with random bytes where reads are split:
    the start, around the first part boundary, around 2 GiB, and the end."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset in (0, part_bytes - 300_000, 2 * GIB - 300_000, size - 300_000):
            if 0 <= offset < size:
                f.seek(offset)
                f.write(os.urandom(min(600_000, size - offset)))


def file_crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while piece := f.read(PIECE):
            crc = zlib.crc32(piece, crc)
    return crc


async def object_crc32(storage: Storage, key: str) -> tuple[int, int]:
    """CRC32 and size of an object, streamed in pieces (it may not fit in memory)."""
    response = await storage._client.get_object(Bucket=storage.bucket, Key=key)
    body = response["Body"]
    crc = size = 0
    try:
        while piece := await body.read(PIECE):
            crc = zlib.crc32(piece, crc)
            size += len(piece)
    finally:
        body.close()
    return crc, size


PART_MIB = 2100  # Linux reads at most 2 GiB - 4 KiB at a time
FILE_BYTES = int(2.2 * GIB) + 12345
RSS_LIMIT_BYTES = 600 * MIB


@pytest.mark.timeout(600)
async def test_a_part_above_2_gib_is_sent_whole_in_bounded_memory(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    """A sparse file, so the test needs little disk beyond what S3 stores; about 35 s."""
    processes.start("producer", STREAM_CHUNK_SIZE_MB=str(PART_MIB))
    consumer = processes.start("consumer", STREAM_CHUNK_SIZE_MB=str(PART_MIB))
    staged = tmp_path / "big.mp4"
    await asyncio.to_thread(sparse_recording, staged, FILE_BYTES, PART_MIB * MIB)
    started = time.monotonic()
    staged.rename(watch_dir / "big.mp4")

    async def completed() -> bool:
        # Checked all along: a consumer holding whole parts would grow by gigabytes.
        assert peak_rss_bytes(consumer.pid) < RSS_LIMIT_BYTES
        state = await stream_of(log, "big.mp4")
        return state is not None and state.status == "completed"

    await eventually(completed, 300, "big.mp4 completed")
    seconds = time.monotonic() - started
    peak = peak_rss_bytes(consumer.pid)

    print(f"\n{FILE_BYTES} B, {PART_MIB} MiB parts: {seconds:.1f} s, peak RSS {peak / MIB:.0f} MiB")
    assert await object_crc32(storage, "big.mp4") == (
        await asyncio.to_thread(file_crc32, watch_dir / "big.mp4"),
        FILE_BYTES,
    )
    assert peak < RSS_LIMIT_BYTES
    assert "short read" not in processes.output()
    await assert_nothing_open(storage)
