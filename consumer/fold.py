"""The fold: how events change the state of streams. Pure; no I/O.

`apply` folds one event into one stream's state. `Fold` folds a run of events into the
states of many streams and remembers what changed, so the projector writes only that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from msgspec.structs import replace

from cefmp4.common.events import (
    AbortRequested,
    AnyEvent,
    FileClosed,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileIdle,
    FileWritten,
    FinalizeRequested,
    LocalFileRemoved,
    PartUploaded,
    RetryRequested,
    StreamAborted,
    StreamCompleted,
    StreamEvent,
    StreamFailed,
    StreamFinalizing,
    StreamRecognized,
    StreamsPruned,
    UploadRetriggered,
    UploadStarted,
)
from cefmp4.common.streamstate import PartRecord, StreamState


def apply(state: StreamState | None, event: AnyEvent) -> StreamState | None:
    """Return the stream's state after `event`; `state` is None before UploadStarted (or
    StreamRecognized, which begins a stream that is completed already)."""
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
                attempt=event.attempt,
            )
        case StreamRecognized():
            if state is not None and state.stream_id == event.stream_id:
                return state
            return StreamState(
                stream_id=event.stream_id,
                path=event.path,
                s3_key=event.s3_key,
                upload_id="",
                status="completed",
                size_bytes=event.size,
                inode=event.inode,
                device=event.device,
                created_at_ms=event.at_ms,
                updated_at_ms=event.at_ms,
                completed_at_ms=event.at_ms,
                mtime_ns=event.mtime_ns,
                etag=event.etag,
                reason=f"already in S3, uploaded by stream {event.made_by}",
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
                ctime_ns=event.ctime_ns,
                completed_at_ms=event.at_ms,
                updated_at_ms=event.at_ms,
            )
        case StreamFailed() if not state.terminal:
            return replace(
                state,
                status="failed",
                reason=event.reason,
                retry_at_ms=event.retry_at_ms,
                size_bytes=event.size if event.size >= 0 else state.size_bytes,
                mtime_ns=event.mtime_ns or state.mtime_ns,
                updated_at_ms=event.at_ms,
            )
        case LocalFileRemoved() if state.status == "completed" and not state.local_file:
            return replace(state, local_file=event.how, updated_at_ms=event.at_ms)
        case StreamAborted() if not state.terminal:
            return replace(state, status="aborted", reason=event.reason, updated_at_ms=event.at_ms)
        case FileCreated() | FileWritten() | FileIdle() | FileClosed() if not state.terminal:
            return replace(state, size_bytes=event.size, updated_at_ms=event.at_ms)
        case (
            FileCreated()
            | FileWritten()
            | FileIdle()
            | FileClosed()
            | FileDeleted()
            | FinalizeRequested()
            | UploadRetriggered()
            | AbortRequested()
            | RetryRequested()
            | StreamsPruned()
            | PartUploaded()
            | StreamFinalizing()
            | StreamCompleted()
            | StreamFailed()
            | StreamAborted()
            | LocalFileRemoved()
        ):
            return state


class Changes(NamedTuple):
    """What a run of events changed: each stream with the numbers of its changed parts,
    the paths whose latest stream changed, the streams pruned (each with its path when
    it was the path's latest, so the path leaves the index too), and the streams that
    became completed, each as it stood then, in log order."""

    streams: list[tuple[StreamState, set[int]]]
    paths: dict[str, str]
    pruned: list[tuple[str, str | None]]
    completed: tuple[StreamState, ...] = ()


@dataclass
class Fold:
    """Streams touched by a run of events, with the parts each one changed.

    `paths` maps a path to its latest stream's id, or to None once that stream was pruned.
    `gone` holds the ids pruned in this fold, so nobody loads them back meanwhile.
    With `keep_completed`, the streams that become completed are kept for `take_changes`
    (the projector publishes them; a replay has no use for them).
    """

    keep_completed: bool = False

    streams: dict[str, StreamState] = field(default_factory=dict)
    paths: dict[str, str | None] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    changed_streams: set[str] = field(default_factory=set)
    changed_parts: dict[str, set[int]] = field(default_factory=dict)
    changed_paths: set[str] = field(default_factory=set)
    pruned: dict[str, str | None] = field(default_factory=dict)
    completed: list[StreamState] = field(default_factory=list)

    def stream_id_for(self, event: AnyEvent) -> str | None:
        """The stream an event is about, as far as this fold knows the paths."""
        match event:
            case StreamEvent(stream_id=stream_id):
                return stream_id
            case FileEvent(path=path):
                return self.paths.get(path)
            case _:
                return None

    def add(self, entry_id: bytes, event: AnyEvent) -> None:
        if isinstance(event, StreamsPruned):
            for pruned_id in event.stream_ids:
                self._prune(pruned_id)
            return
        stream_id = self.stream_id_for(event)
        if stream_id is None or stream_id in self.gone:
            return
        before = self.streams.get(stream_id)
        after = apply(before, event)
        if after is None or after is before:
            return
        after = replace(after, last_event_id=entry_id.decode())
        self.streams[stream_id] = after
        self.changed_streams.add(stream_id)
        if before is None:
            self.paths[after.path] = stream_id
            self.changed_paths.add(after.path)
        if isinstance(event, PartUploaded):
            self.changed_parts.setdefault(stream_id, set()).add(event.part_number)
        if (
            self.keep_completed
            and after.status == "completed"
            and (before is None or before.status != "completed")
        ):
            self.completed.append(after)

    def _prune(self, stream_id: str) -> None:
        state = self.streams.get(stream_id)
        if state is None or not state.terminal:
            return  # unknown (pruned before) or not finished: nothing to prune
        del self.streams[stream_id]
        self.gone.add(stream_id)
        self.changed_streams.discard(stream_id)
        self.changed_parts.pop(stream_id, None)
        latest = self.paths.get(state.path) == stream_id
        if latest:
            self.paths[state.path] = None
            self.changed_paths.discard(state.path)
        self.pruned[stream_id] = state.path if latest else None

    def take_changes(self) -> Changes:
        """What changed since the last call; then forgets it."""
        streams = [
            (self.streams[s], self.changed_parts.get(s, set())) for s in self.changed_streams
        ]
        paths = {path: self.paths[path] for path in self.changed_paths}
        changes = Changes(
            streams,
            {path: stream_id for path, stream_id in paths.items() if stream_id is not None},
            list(self.pruned.items()),
            tuple(self.completed),
        )
        self.completed.clear()
        self.changed_streams.clear()
        self.changed_parts.clear()
        self.changed_paths.clear()
        self.pruned.clear()
        return changes

    def kept_paths(self) -> dict[str, str]:
        """The paths index as it stands: every path with a kept latest stream."""
        return {path: stream_id for path, stream_id in self.paths.items() if stream_id is not None}
