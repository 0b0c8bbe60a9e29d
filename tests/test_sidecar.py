"""The metadata sidecar next to each completed recording."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cefmp4.common.checksums import crc32_combine, s3_composite_crc32, whole_crc32
from cefmp4.common.errors import StorageError
from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from cefmp4.common.streamstate import PartRecord
from cefmp4.consumer.sidecar import SUFFIX
from tests.conftest import Processes, eventually
from tests.test_pipeline import PART, wait_completed


def test_crc32_of_a_whole_is_combined_from_its_pieces() -> None:
    rng = random.Random(3)
    pieces = [rng.randbytes(n) for n in (0, 1, 7, 4096, 100_000, 0, 33)]
    records = [PartRecord(0, len(p), zlib.crc32(p), "") for p in pieces]

    assert whole_crc32(records) == zlib.crc32(b"".join(pieces))
    assert crc32_combine(zlib.crc32(b"abc"), zlib.crc32(b""), 0) == zlib.crc32(b"abc")


def test_s3_composite_checksum_is_the_crc32_of_part_crc32s() -> None:
    records = [PartRecord(0, 5, 0x01020304, ""), PartRecord(5, 5, 0xA0B0C0D0, "")]

    # CRC32 of bytes 01 02 03 04 a0 b0 c0 d0, base64, then "-<parts>".
    digest = zlib.crc32(bytes.fromhex("01020304a0b0c0d0")).to_bytes(4, "big")
    assert s3_composite_crc32(records) == f"{base64.b64encode(digest).decode()}-2"


async def sidecar_of(storage: Storage, key: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def written() -> bool:
        try:
            found.update(json.loads(await storage.read_object(key + SUFFIX)))
        except StorageError:
            return False
        return True

    await eventually(written, 30, f"{key}{SUFFIX} written")
    return found


def as_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
async def test_sidecar_describes_a_recording_and_a_non_media_file(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    processes.start("consumer")
    out = watch_dir / "cam" / "rec.mp4"
    out.parent.mkdir()
    recorder = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error",
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440",
        "-t", "4", "-c:v", "mpeg4", "-q:v", "1", "-c:a", "aac", str(out),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, errors = await recorder.communicate()
    assert recorder.returncode == 0, errors.decode()
    (watch_dir / "notes.mp4").write_bytes(os.urandom(3000))
    data = out.read_bytes()
    assert len(data) > PART

    state = await wait_completed(log, storage, watch_dir, "cam/rec.mp4")
    sidecar = await sidecar_of(storage, "cam/rec.mp4")

    media = sidecar.pop("media")
    assert media["duration_s"] == pytest.approx(4.0, abs=0.1)
    assert "mp4" in media["format"]
    assert (media["video_codec"], media["width"], media["height"]) == ("mpeg4", 1280, 720)
    assert media["frame_rate"] == "25/1"
    assert media["audio_codec"] == "aac"
    parts = sidecar.pop("parts")
    assert [p["number"] for p in parts] == sorted(state.parts) == list(range(1, len(parts) + 1))
    assert sum(p["size_bytes"] for p in parts) == len(data)
    for p in parts:
        piece = data[p["offset"] : p["offset"] + p["size_bytes"]]
        assert p["crc32"] == f"{zlib.crc32(piece):08x}"
    times = {name: sidecar.pop(name) for name in ("started_at", "completed_at")}
    assert as_ms(times["started_at"]) == state.created_at_ms
    assert as_ms(times["completed_at"]) == state.completed_at_ms
    assert as_ms(sidecar.pop("file_modified_at")) == out.stat().st_mtime_ns // 1_000_000
    assert sidecar == {
        "version": 1,
        "stream_id": state.stream_id,
        "path": "cam/rec.mp4",
        "s3_key": "cam/rec.mp4",
        "size_bytes": len(data),
        "etag": state.etag,
        "checksum": {
            "crc32": f"{zlib.crc32(data):08x}",
            "s3_checksum_crc32": s3_composite_crc32([state.parts[n] for n in sorted(state.parts)]),
        },
        "part_count": len(parts),
    }
    assert len(parts) >= 2

    await wait_completed(log, storage, watch_dir, "notes.mp4")
    plain = await sidecar_of(storage, "notes.mp4")

    assert "media" not in plain
    assert plain["size_bytes"] == 3000
    assert plain["part_count"] == 1
    assert plain["checksum"]["crc32"] == f"{zlib.crc32((watch_dir / 'notes.mp4').read_bytes()):08x}"


async def test_no_sidecar_when_turned_off(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    processes.start("consumer", METADATA_SIDECAR="false")
    (watch_dir / "a.mp4").write_bytes(os.urandom(1000))

    await wait_completed(log, storage, watch_dir, "a.mp4")

    async def completion_logged() -> bool:
        return "completed a.mp4" in processes.output()

    await eventually(completion_logged, 30, "the completion in the consumer's log")
    # A consumer that stops first writes the sidecars it has begun.
    assert processes.stop("consumer") == 0
    assert await storage.object_facts("a.mp4" + SUFFIX) is None
