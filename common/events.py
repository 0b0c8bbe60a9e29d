"""Event schemas: everything that happens is one of these, appended to the log.

Each event is a frozen, tagged msgspec Struct; one module-level decoder turns a log
entry back into the right type. Paths are relative to WATCH_DIR with `/` separators.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec

from cefmp4.common.errors import CorruptEvent


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


class FileClosed(FileEvent, frozen=True, kw_only=True):
    """A writer closed the file, or it was renamed or moved in: it may be finished.

    Asks for the final pass at once, as FileIdle does. Not a promise that nobody writes
    to it again: a later change brings a new stream, as after any completion.
    """


class FileDeleted(Event, frozen=True, kw_only=True):
    path: str


FileChange = FileCreated | FileWritten | FileIdle | FileClosed | FileDeleted


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
    attempt: int = 0  # how many streams of this file failed before this one


# StreamFailed.retry_at_ms of a failure that no retry can mend (only `cefmp4 retry` does).
NEVER = -1


class PartUploaded(StreamEvent, frozen=True, kw_only=True):
    part_number: int
    offset: int
    length: int
    crc32: int
    etag: str
    file_size: int
    ctime_ns: int = 0  # see PartRecord.ctime_ns
    copied: bool = False  # made on the server from the previous object (consumer/regrowth.py)


class StreamFinalizing(StreamEvent, frozen=True, kw_only=True):
    size: int


class StreamCompleted(StreamEvent, frozen=True, kw_only=True):
    size: int
    etag: str
    mtime_ns: int
    ctime_ns: int = 0  # the file's, as completed: AFTER_UPLOAD removes it only while unchanged


class StreamFailed(StreamEvent, frozen=True, kw_only=True):
    reason: str
    # When the file, if it is still as it was (size, mtime_ns), may be tried again;
    # NEVER: only once it changed. size -1 and mtime_ns 0: the file was not there.
    retry_at_ms: int = 0
    size: int = -1
    mtime_ns: int = 0


class StreamAborted(StreamEvent, frozen=True, kw_only=True):
    reason: str


class StreamRecognized(StreamEvent, frozen=True, kw_only=True):
    """The file's object is already in S3, made from the file as it is now (its content tag
    says so): a new stream, completed at once, with nothing uploaded."""

    s3_key: str
    inode: int
    device: int
    size: int
    mtime_ns: int
    etag: str
    made_by: str  # the stream whose upload made the object


# --- what AFTER_UPLOAD did with a completed recording's file -------------------------------

LocalFileFate = Literal["deleted", "moved", "gone"]


class LocalFileRemoved(StreamEvent, frozen=True, kw_only=True):
    """The file of a completed, verified stream left WATCH_DIR: `deleted`, `moved` (to
    `moved_to`, under AFTER_UPLOAD_MOVE_DIR), or `gone` (it was not there any more when
    its time came: removed by someone else, or by a remover that died before saying so)."""

    how: LocalFileFate
    moved_to: str = ""


# --- what the stale checker (or a user) asked for ------------------------------------


class FinalizeRequested(StreamEvent, frozen=True, kw_only=True):
    pass


class UploadRetriggered(StreamEvent, frozen=True, kw_only=True):
    size: int


class AbortRequested(StreamEvent, frozen=True, kw_only=True):
    reason: str


class RetryRequested(StreamEvent, frozen=True, kw_only=True):
    """Try a failed recording again: when its retry time came, or by hand (`cefmp4 retry`)."""

    by_hand: bool = False


# --- what the pruner decided ----------------------------------------------------------


class StreamsPruned(Event, frozen=True, kw_only=True):
    """Finished streams past FINISHED_STREAM_RETENTION_SECONDS leave the state."""

    stream_ids: tuple[str, ...]


AnyEvent = (
    FileCreated
    | FileWritten
    | FileIdle
    | FileClosed
    | FileDeleted
    | UploadStarted
    | PartUploaded
    | StreamFinalizing
    | StreamCompleted
    | StreamFailed
    | StreamAborted
    | StreamRecognized
    | LocalFileRemoved
    | FinalizeRequested
    | UploadRetriggered
    | AbortRequested
    | RetryRequested
    | StreamsPruned
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
