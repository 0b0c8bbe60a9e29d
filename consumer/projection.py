"""The fold: how one event changes the state of one stream. Pure; no I/O."""

from __future__ import annotations

from msgspec.structs import replace

from common.events import (
    AbortRequested,
    AnyEvent,
    FileCreated,
    FileDeleted,
    FileIdle,
    FileWritten,
    FinalizeRequested,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
    StreamFinalizing,
    UploadRetriggered,
    UploadStarted,
)
from common.state import PartRecord, StreamState


def apply(state: StreamState | None, event: AnyEvent) -> StreamState | None:
    """Return the stream's state after `event`; `state` is None before UploadStarted."""
    match event:
        case UploadStarted():
            if state is not None and state.stream_id == event.stream_id:
                return state
            return StreamState(
                stream_id=event.stream_id,
                path=event.path,
                s3_key=event.s3_key,
                upload_id=event.upload_id,
                status="active",
                size_bytes=event.size,
                inode=event.inode,
                device=event.device,
                created_at_ms=event.at_ms,
                updated_at_ms=event.at_ms,
            )
        case _ if state is None:
            return None
        case PartUploaded() if not state.terminal:
            record = PartRecord(event.offset, event.length, event.crc32, event.etag, event.ctime_ns)
            if state.parts.get(event.part_number) == record:
                return state  # a duplicate of a step already applied
            return replace(
                state,
                parts={**state.parts, event.part_number: record},
                size_bytes=max(state.size_bytes, event.file_size),
                updated_at_ms=max(state.updated_at_ms, event.at_ms),
            )
        case StreamFinalizing() if not state.terminal:
            return replace(
                state, status="finalizing", size_bytes=event.size, updated_at_ms=event.at_ms
            )
        case StreamCompleted() if not state.terminal:
            return replace(
                state,
                status="completed",
                size_bytes=event.size,
                etag=event.etag,
                mtime_ns=event.mtime_ns,
                completed_at_ms=event.at_ms,
                updated_at_ms=event.at_ms,
            )
        case StreamFailed() if not state.terminal:
            return replace(state, status="failed", reason=event.reason, updated_at_ms=event.at_ms)
        case StreamAborted() if not state.terminal:
            return replace(state, status="aborted", reason=event.reason, updated_at_ms=event.at_ms)
        case FileCreated() | FileWritten() | FileIdle() if not state.terminal:
            return replace(state, size_bytes=event.size, updated_at_ms=event.at_ms)
        case (
            FileCreated()
            | FileWritten()
            | FileIdle()
            | FileDeleted()
            | FinalizeRequested()
            | UploadRetriggered()
            | AbortRequested()
            | PartUploaded()
            | StreamFinalizing()
            | StreamCompleted()
            | StreamFailed()
            | StreamAborted()
        ):
            return state
