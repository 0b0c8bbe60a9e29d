"""What a pass over one path does, decided from its latest stream and the file now. Pure.

Every file event (and every request of the stale checker or a user) asks for a pass over
its path: a SYNC pass sends the whole parts not sent yet; a FINAL pass also sends the tail,
checks every part against the file and completes the upload; a RETRY pass is a FINAL pass
that also starts again a failed recording that would otherwise wait. Before sending,
`decide` says what the pass does with the path's latest stream, given what the disk says.

A failed stream stands (nothing is sent) only while the file is as it was when it failed
and its retry time has not come; a failure no retry can mend stands until the file changes
or a user asks. So no passing fault leaves a recording failed for good.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from cefmp4.common.events import (
    NEVER,
    AbortRequested,
    AnyEvent,
    FileClosed,
    FileCreated,
    FileDeleted,
    FileIdle,
    FileWritten,
    FinalizeRequested,
    RetryRequested,
    UploadRetriggered,
)
from cefmp4.common.streamstate import StreamState


class Mode(IntEnum):
    """The kind of pass asked for; a stronger one includes a weaker one."""

    SYNC = 1
    FINAL = 2
    RETRY = 3


def mode_for(event: AnyEvent) -> Mode | None:
    """The pass an event asks for; None for events the uploaders only record."""
    match event:
        case RetryRequested(by_hand=True):
            return Mode.RETRY
        case FileIdle() | FileClosed() | FinalizeRequested() | RetryRequested():
            return Mode.FINAL
        case FileCreated() | FileWritten() | FileDeleted() | UploadRetriggered() | AbortRequested():
            return Mode.SYNC
        case _:
            return None


class FileFacts(NamedTuple):
    """What a pass needs to know of the file on disk."""

    inode: int
    device: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileFacts:
        return cls(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Leave:
    """Nothing to do: no file and no open stream, or a finished stream still stands."""


@dataclass(frozen=True)
class Fail:
    """The file is gone while its stream was open: abort the upload, fail the stream."""

    reason: str


@dataclass(frozen=True)
class Restart:
    """The file is not the one the open stream sends: abort that stream, start a new one."""

    reason: str


@dataclass(frozen=True)
class Start:
    """No open stream stands for the file: start one."""


@dataclass(frozen=True)
class Send:
    """The open stream stands for the file: send to it."""


Action = Leave | Fail | Restart | Start | Send


def decide(
    state: StreamState | None, file: FileFacts | None, now_ms: int, *, by_hand: bool = False
) -> Action:
    """What to do with the path's latest stream `state`, given `file` (None: no file).

    `by_hand`: a user asked to try a failed recording again, whatever its retry time.
    """
    open_stream = state is not None and not state.terminal
    if file is None:
        return Fail("file deleted while recording") if open_stream else Leave()
    if state is None:
        return Start()
    if open_stream:
        if (file.inode, file.device) != (state.inode, state.device):
            return Restart("file replaced by a new one")
        if file.size < state.sent_end:
            return Restart("file truncated")
        return Send()
    if state.status == "failed":
        return Start() if by_hand or may_retry(state, file, now_ms) else Leave()
    if state.status == "completed" and _same_file(state, file):
        return Leave()
    return Start()


def may_retry(state: StreamState, file: FileFacts, now_ms: int) -> bool:
    """Whether a failed stream's file may get a new stream now."""
    if not _same_file(state, file):
        return True  # changed, replaced or touched: another recording, as far as we know
    return state.retry_at_ms != NEVER and now_ms >= state.retry_at_ms


def _same_file(state: StreamState, file: FileFacts) -> bool:
    """Whether `file` is as the stream last saw it (an mtime of 0 is unknown)."""
    same = (state.inode, state.device, state.size_bytes) == (file.inode, file.device, file.size)
    return same and state.mtime_ns in (0, file.mtime_ns)
