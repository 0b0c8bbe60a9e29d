"""Event schemas: everything that happens is one of these, appended to the log.

Each event is a frozen, tagged msgspec Struct; one module-level decoder turns a log
entry back into the right type. Paths are relative to WATCH_DIR with `/` separators.
"""

from __future__ import annotations

import time

import msgspec

from common.errors import CorruptEvent


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Event(msgspec.Struct, frozen=True, tag=True, kw_only=True, forbid_unknown_fields=False):
    at_ms: int = msgspec.field(default_factory=now_ms)


# --- what the producer sees on disk -------------------------------------------------


class FileEvent(Event, frozen=True, kw_only=True):
    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int


class FileCreated(FileEvent, frozen=True, kw_only=True):
    pass


class FileWritten(FileEvent, frozen=True, kw_only=True):
    pass


class FileIdle(FileEvent, frozen=True, kw_only=True):
    pass


class FileDeleted(Event, frozen=True, kw_only=True):
    path: str


FileChange = FileCreated | FileWritten | FileIdle | FileDeleted


# --- what the uploaders did -------------------------------------------------------


class StreamEvent(Event, frozen=True, kw_only=True):
    stream_id: str
    path: str


class UploadStarted(StreamEvent, frozen=True, kw_only=True):
    s3_key: str
    upload_id: str
    inode: int
    device: int
    size: int


class PartUploaded(StreamEvent, frozen=True, kw_only=True):
    part_number: int
    offset: int
    length: int
    crc32: int
    etag: str
    file_size: int
    ctime_ns: int = 0  # see PartRecord.ctime_ns


class StreamFinalizing(StreamEvent, frozen=True, kw_only=True):
    size: int


class StreamCompleted(StreamEvent, frozen=True, kw_only=True):
    size: int
    etag: str
    mtime_ns: int


class StreamFailed(StreamEvent, frozen=True, kw_only=True):
    reason: str


class StreamAborted(StreamEvent, frozen=True, kw_only=True):
    reason: str


# --- what the stale checker decided -----------------------------------------------


class FinalizeRequested(StreamEvent, frozen=True, kw_only=True):
    pass


class UploadRetriggered(StreamEvent, frozen=True, kw_only=True):
    size: int


class AbortRequested(StreamEvent, frozen=True, kw_only=True):
    reason: str


AnyEvent = (
    FileCreated
    | FileWritten
    | FileIdle
    | FileDeleted
    | UploadStarted
    | PartUploaded
    | StreamFinalizing
    | StreamCompleted
    | StreamFailed
    | StreamAborted
    | FinalizeRequested
    | UploadRetriggered
    | AbortRequested
)

FIELD = b"event"
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def decode(fields: dict[bytes, bytes]) -> AnyEvent:
    raw = fields.get(FIELD)
    if raw is None:
        raise CorruptEvent(f"entry has no {FIELD.decode()!r} field")
    try:
        event: AnyEvent = _decoder.decode(raw)
        return event
    except msgspec.DecodeError as exc:
        raise CorruptEvent(str(exc)) from exc
