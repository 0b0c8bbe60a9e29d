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
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec

from cefmp4.common.checksums import s3_composite_crc32, whole_crc32
from cefmp4.common.completions import iso_time, object_parts
from cefmp4.common.config import Settings
from cefmp4.common.errors import FileChanged, StorageError
from cefmp4.common.files import open_inside
from cefmp4.common.s3 import Storage
from cefmp4.common.streamstate import StreamState
from cefmp4.common.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

SUFFIX = ".metadata.json"
FORMAT_VERSION = 1
FFPROBE_TIMEOUT_S = 20.0
PROBES_AT_ONCE = 2
PROBE_NICENESS = 10
DRAIN_S = 10.0  # at shutdown, how long sidecars still being written are waited for

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


async def probe(fd: int, timeout_s: float = FFPROBE_TIMEOUT_S) -> dict[str, Any] | None:
    """Duration, format, codecs and resolution by ffprobe; None when it cannot tell.

    ffprobe reads the open file `fd`, so it never follows a path of its own.
    """
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
        f"/dev/fd/{fd}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        pass_fds=(fd,),
        # At a lower CPU priority: uploads and completions first, the media fields after.
        preexec_fn=lambda: os.nice(PROBE_NICENESS),
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        logger.warning("ffprobe took more than %.0fs; media fields left out", timeout_s)
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


def metadata(state: StreamState, media: dict[str, Any] | None) -> dict[str, Any]:
    numbered = object_parts(state)
    parts = numbered.values()
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
            for n, p in numbered.items()
        ],
        "started_at": iso_time(state.created_at_ms),
        "completed_at": iso_time(state.completed_at_ms or state.updated_at_ms),
        "file_modified_at": iso_time(state.mtime_ns // 1_000_000),
    }
    if media is not None:
        document["media"] = media
    return document


class Sidecar:
    """Writes the sidecars of completed streams in the background; never fails a stream.

    ffprobe takes a CPU-bound moment a file: the pass that completed a recording does not
    wait for it (nor keeps its path busy), and PROBES_AT_ONCE run at a time, so a fleet of
    recordings ending together is not slowed by as many ffprobes.
    """

    def __init__(self, settings: Settings, storage: Storage, root: Path) -> None:
        self.enabled = settings.metadata_sidecar
        self.storage = storage
        self.root = root
        self._slots = asyncio.Semaphore(PROBES_AT_ONCE)
        self._pending: set[asyncio.Task[None]] = set()

    def publish_soon(self, state: StreamState) -> None:
        """Write `state`'s sidecar in the background (owned here, see `drain`)."""
        if not self.enabled:
            return
        task = asyncio.create_task(self.publish(state))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float = DRAIN_S) -> None:
        """Wait for the sidecars being written, then give up on those left (at shutdown)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        if self._pending:
            logger.warning("%d metadata sidecars not written: stopping", len(self._pending))
            await cancel_and_wait(set(self._pending))

    async def publish(self, state: StreamState) -> None:
        if not self.enabled:
            return
        key = state.s3_key + SUFFIX
        try:
            async with self._slots:
                media = await self._probe(state)
            body = msgspec.json.format(msgspec.json.encode(metadata(state, media)), indent=2)
            await self.storage.put_object(key, body)
        except (StorageError, OSError, ValueError) as exc:
            logger.warning("metadata sidecar %s not written: %s", key, exc)

    async def _probe(self, state: StreamState) -> dict[str, Any] | None:
        try:
            fd = open_inside(self.root, state.path, (state.inode, state.device))
        except (OSError, FileChanged):
            return None  # gone or replaced since it was completed
        try:
            return await probe(fd)
        finally:
            os.close(fd)
