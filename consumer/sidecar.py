"""The metadata sidecar: `<key>.metadata.json` next to every completed recording.

It says what was uploaded (stream id, path, size, ETag, part count and sizes, start and
end times) and how to check it: the CRC32 of the whole object, combined from the
parts' CRC32s without reading the file again, and the composite CRC32 S3 computes for
a multipart upload. With `ffprobe` on PATH it adds the media's duration, codecs and
resolution; a missing ffprobe, a timeout or a file ffprobe cannot read leaves the
`media` object out. On by default; METADATA_SIDECAR=false turns it off.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from common.config import Settings
from common.errors import StorageError
from common.files import resolve_inside
from common.s3 import Storage
from common.state import PartRecord, StreamState

logger = logging.getLogger(__name__)

SUFFIX = ".metadata.json"
FORMAT_VERSION = 1
FFPROBE_TIMEOUT_S = 20.0

# --- CRC32 of a concatenation from the CRC32s of its pieces (zlib's crc32_combine) ---

_POLY = 0xEDB88320  # CRC-32, bit-reflected


def _multiply(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial, in the reflected representation."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multiply(table[-1], table[-1]))
    return table


_X_TO_2_TO_N = _powers()  # x^(2^n) modulo the polynomial


def _x_to_8n(n: int) -> int:
    """x^(8n) modulo the polynomial."""
    power = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            power = _multiply(_X_TO_2_TO_N[k & 31], power)
        n >>= 1
        k += 1
    return power


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC32 of A+B from CRC32(A), CRC32(B) and len(B)."""
    return _multiply(_x_to_8n(length2), crc1) ^ crc2


def whole_crc32(parts: list[PartRecord]) -> int:
    crc = 0
    for part in parts:
        crc = crc32_combine(crc, part.crc32, part.length)
    return crc


def s3_composite_crc32(parts: list[PartRecord]) -> str:
    """The checksum S3 reports for a multipart object: CRC32 of the parts' CRC32s, `-N`."""
    joined = b"".join(part.crc32.to_bytes(4, "big") for part in parts)
    digest = zlib.crc32(joined).to_bytes(4, "big")
    return f"{base64.b64encode(digest).decode()}-{len(parts)}"


# --- ffprobe ----------------------------------------------------------------------


class _ProbeStream(msgspec.Struct):
    codec_type: str = ""
    codec_name: str = ""
    width: int | None = None
    height: int | None = None
    avg_frame_rate: str = ""


class _ProbeFormat(msgspec.Struct):
    format_name: str = ""
    duration: str | None = None
    bit_rate: str | None = None


class _Probe(msgspec.Struct):
    streams: list[_ProbeStream] = msgspec.field(default_factory=list)
    format: _ProbeFormat | None = None


async def probe(path: Path, timeout_s: float = FFPROBE_TIMEOUT_S) -> dict[str, Any] | None:
    """Duration, format, codecs and resolution by ffprobe; None when it cannot tell."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    process = await asyncio.create_subprocess_exec(
        ffprobe,
        "-v",
        "error",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        logger.warning("ffprobe took more than %.0fs on %s; media fields left out", timeout_s, path)
        return None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        return None  # not a media file ffprobe knows
    try:
        found = msgspec.json.decode(output, type=_Probe)
    except msgspec.DecodeError:
        return None
    if found.format is None:
        return None
    media: dict[str, Any] = {"format": found.format.format_name}
    if found.format.duration is not None:
        media["duration_s"] = float(found.format.duration)
    if found.format.bit_rate is not None and found.format.bit_rate.isdigit():
        media["bit_rate"] = int(found.format.bit_rate)
    video = next((s for s in found.streams if s.codec_type == "video"), None)
    audio = next((s for s in found.streams if s.codec_type == "audio"), None)
    if video is not None:
        media["video_codec"] = video.codec_name
        if video.width and video.height:
            media["width"], media["height"] = video.width, video.height
        if video.avg_frame_rate and video.avg_frame_rate != "0/0":
            media["frame_rate"] = video.avg_frame_rate
    if audio is not None:
        media["audio_codec"] = audio.codec_name
    return media


# --- the sidecar --------------------------------------------------------------------


def _time(ms: int) -> str:
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def metadata(state: StreamState, media: dict[str, Any] | None) -> dict[str, Any]:
    # Parts past the end, if any were sent before the file shrank, are not in the object.
    numbers = [
        n
        for n in sorted(state.parts)
        if state.parts[n].offset + state.parts[n].length <= state.size_bytes
    ]
    parts = [state.parts[n] for n in numbers]
    document: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "stream_id": state.stream_id,
        "path": state.path,
        "s3_key": state.s3_key,
        "size_bytes": state.size_bytes,
        "etag": state.etag,
        "checksum": {
            "crc32": f"{whole_crc32(parts):08x}",
            "s3_checksum_crc32": s3_composite_crc32(parts),
        },
        "part_count": len(parts),
        "parts": [
            {"number": n, "offset": p.offset, "size_bytes": p.length, "crc32": f"{p.crc32:08x}"}
            for n, p in zip(numbers, parts, strict=True)
        ],
        "started_at": _time(state.created_at_ms),
        "completed_at": _time(state.completed_at_ms or state.updated_at_ms),
        "file_modified_at": _time(state.mtime_ns // 1_000_000),
    }
    if media is not None:
        document["media"] = media
    return document


class Sidecar:
    """Writes the sidecar of a completed stream; never fails the stream."""

    def __init__(self, settings: Settings, storage: Storage, root: Path) -> None:
        self.enabled = settings.metadata_sidecar
        self.storage = storage
        self.root = root

    async def publish(self, state: StreamState) -> None:
        if not self.enabled:
            return
        key = state.s3_key + SUFFIX
        try:
            full = resolve_inside(self.root, state.path)
            media = await probe(full) if full is not None else None
            body = msgspec.json.format(msgspec.json.encode(metadata(state, media)), indent=2)
            await self.storage.put_object(key, body, "application/json")
        except (StorageError, OSError, ValueError) as exc:
            logger.warning("metadata sidecar %s not written: %s", key, exc)
