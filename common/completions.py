"""The public record of a completed recording: one entry of `<prefix>completed` per recording.

A contract other services read (README, "Completions stream"): version 1 has the fields of
`Completion`, each stored in the stream entry as text, and posted to NOTIFY_URL as one JSON
object with numbers as numbers. Later versions only add fields; a reader checks `v`.

`duration_s` is the wall-clock time the recording was being written, as cefmp4 saw it: from
the start of its stream (its first bytes seen) to the file's last modification. It is not
the media's duration (the sidecar's `media.duration_s` has that, where ffprobe runs).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from cefmp4.common.checksums import s3_composite_crc32
from cefmp4.common.errors import CorruptEvent
from cefmp4.common.eventlog import Redis
from cefmp4.common.keys import Keys
from cefmp4.common.streamstate import PartRecord, StreamState

VERSION = 1


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    v: int = VERSION
    event_id: str  # the log entry (in <prefix>events) of its StreamCompleted
    stream_id: str
    bucket: str
    key: str
    path: str
    size: int
    etag: str
    crc32: str  # S3's composite CRC32 of the multipart object, as HeadObject reports it
    duration_s: float
    started_at: str
    completed_at: str

    def fields(self) -> dict[str, str]:
        """The entry's fields in the stream: every value as text."""
        return {name: str(value) for name, value in msgspec.structs.asdict(self).items()}

    def json(self) -> bytes:
        return msgspec.json.encode(self)


class Publishing(NamedTuple):
    """Where completions are published: their objects' bucket, and how many entries to keep."""

    bucket: str
    max_entries: int


def iso_time(ms: int) -> str:
    """`ms` since the epoch as ISO 8601 in UTC, to the millisecond: `2026-11-30T21:05:01.250Z`."""
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def object_parts(state: StreamState) -> dict[int, PartRecord]:
    """The parts a completed stream's object is made of, by number, in order."""
    # Parts past the end, if any were sent before the file shrank, are not in the object.
    return {
        n: state.parts[n]
        for n in sorted(state.parts)
        if state.parts[n].offset + state.parts[n].length <= state.size_bytes
    }


def completion_of(state: StreamState, bucket: str) -> Completion:
    """The record of `state`, a stream just completed (by its `last_event_id`), whose object
    is in `bucket`."""
    parts = object_parts(state).values()
    last_write_ms = state.mtime_ns // 1_000_000
    return Completion(
        event_id=state.last_event_id,
        stream_id=state.stream_id,
        bucket=bucket,
        key=state.s3_key,
        path=state.path,
        size=state.size_bytes,
        etag=state.etag,
        crc32=s3_composite_crc32(parts),
        duration_s=round(max(0, last_write_ms - state.created_at_ms) / 1000, 3),
        started_at=iso_time(state.created_at_ms),
        completed_at=iso_time(state.completed_at_ms or state.updated_at_ms),
    )


async def last_published(redis: Redis, keys: Keys) -> str | None:
    """The log entry of the newest completion published, if the stream holds any."""
    newest: Any = await redis.xrevrange(keys.completed, count=1)
    if not newest:
        return None
    try:
        return parse(newest[0][1]).event_id or None
    except CorruptEvent:
        return None


def parse(fields: dict[bytes, bytes]) -> Completion:
    """A completion back from its stream entry; CorruptEvent if it is not one."""
    try:
        text = {key.decode(): value.decode() for key, value in fields.items()}
        return msgspec.convert(text, Completion, strict=False)
    except (UnicodeDecodeError, msgspec.ValidationError) as exc:
        raise CorruptEvent(f"not a completion entry: {exc}") from exc
